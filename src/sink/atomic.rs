//! Files written under a temporary name and renamed over their target only on commit.
//!
//! A run that fails or is interrupted never leaves a half-written file at the target:
//! the data goes to `.{name}.tilestream-{pid}-{counter}.tmp` in the target's directory
//! (same file system, so the final rename is atomic) and is removed again when the
//! [`AtomicFile`] is dropped without [`AtomicFile::commit`]. Temporary files left by
//! runs that were killed are removed by the next run writing the same target.

use std::ffi::{CString, OsStr, OsString};
use std::fs::{self, File, OpenOptions};
use std::io::{self, ErrorKind};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::{Error, Result};

/// Distinguishes temporary files created by one process.
static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A file written under a temporary name beside its target and renamed over the target
/// only by [`commit`](AtomicFile::commit). Dropping it uncommitted deletes the temporary file.
#[derive(Debug)]
pub struct AtomicFile {
    file: File,
    temp: PathBuf,
    target: PathBuf,
    dir: PathBuf,
    force: bool,
    /// Set once the temporary file has been renamed away, so `Drop` leaves it alone.
    committed: bool,
}

impl AtomicFile {
    /// Creates the temporary file for `target` (read-write, mode 0644 before the umask).
    ///
    /// Fails if `target` exists (even as a dangling symlink) and `force` is false.
    /// Removes stale temporary files of the same target left by processes that no
    /// longer exist.
    pub fn create(target: &Path, force: bool) -> Result<AtomicFile> {
        let Some(file_name) = target.file_name() else {
            return Err(Error::io(target, io::Error::new(ErrorKind::InvalidInput, "output path has no file name")));
        };
        if !force && exists(target)? {
            return Err(already_exists(target));
        }
        let dir = match target.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let prefix = temp_prefix(file_name);
        remove_stale_temps(&dir, &prefix);

        let pid = std::process::id();
        loop {
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let mut name = prefix.clone();
            name.push(format!("{pid}-{n}.tmp"));
            let temp = dir.join(name);
            match OpenOptions::new().read(true).write(true).create_new(true).mode(0o644).open(&temp) {
                Ok(file) => {
                    return Ok(AtomicFile { file, temp, target: target.to_path_buf(), dir, force, committed: false });
                }
                // Left over from an earlier process that had our pid: take the next number.
                Err(e) if e.kind() == ErrorKind::AlreadyExists => continue,
                // Named by the path the user gave (the temporary name would only puzzle).
                Err(e) => return Err(Error::io(target, e)),
            }
        }
    }

    /// The open temporary file (read-write).
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Path of the temporary file.
    pub fn temp_path(&self) -> &Path {
        &self.temp
    }

    /// Path the file will have after [`commit`](AtomicFile::commit).
    pub fn target(&self) -> &Path {
        &self.target
    }

    /// Flushes the file to disk, renames it over the target and flushes the directory.
    ///
    /// Without `force`, a target that appeared after [`create`](AtomicFile::create) is not
    /// replaced (the rename fails with `AlreadyExists`). On failure the temporary file is
    /// removed and the target is left as it was.
    pub fn commit(self) -> Result<()> {
        self.commit_unless(None)
    }

    /// [`commit`](Self::commit), but returns [`Error::Interrupted`] and removes the temporary
    /// file instead of renaming it when `cancel` is set after the fsync.
    pub fn commit_unless(mut self, cancel: Option<&std::sync::atomic::AtomicBool>) -> Result<()> {
        self.file.sync_all().map_err(|e| Error::io(&self.target, e))?;
        if cancel.is_some_and(|c| c.load(std::sync::atomic::Ordering::SeqCst)) {
            return Err(Error::Interrupted);
        }
        if self.force {
            fs::rename(&self.temp, &self.target).map_err(|e| Error::io(&self.target, e))?;
        } else {
            rename_noreplace(&self.temp, &self.target)?;
        }
        self.committed = true;
        match File::open(&self.dir).and_then(|d| d.sync_all()) {
            Ok(()) => Ok(()),
            // Some file systems cannot fsync a directory; the rename itself has happened.
            Err(e) if e.kind() == ErrorKind::InvalidInput => Ok(()),
            Err(e) => Err(Error::io(&self.dir, e)),
        }
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if !self.committed {
            let _ = fs::remove_file(&self.temp);
        }
    }
}

/// `.{file_name}.tilestream-`: every temporary file of this target starts with it.
fn temp_prefix(file_name: &OsStr) -> OsString {
    let mut prefix = OsString::from(".");
    prefix.push(file_name);
    prefix.push(".tilestream-");
    prefix
}

fn already_exists(target: &Path) -> Error {
    Error::io(target, io::Error::new(ErrorKind::AlreadyExists, "output exists; pass --force to overwrite"))
}

/// True if anything (a dangling symlink included) is at `path`.
fn exists(path: &Path) -> Result<bool> {
    match fs::symlink_metadata(path) {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
        Err(e) => Err(Error::io(path, e)),
    }
}

/// Removes `{prefix}{pid}-{n}.tmp` files in `dir` whose process is gone. Best effort:
/// errors are ignored (creating the new temporary file reports a broken directory).
fn remove_stale_temps(dir: &Path, prefix: &OsStr) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    let prefix = prefix.as_bytes();
    let own_pid = std::process::id();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(rest) = name.as_bytes().strip_prefix(prefix) else {
            continue;
        };
        let Some(pid) = parse_temp_suffix(rest) else {
            continue;
        };
        if pid == own_pid || Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        let _ = fs::remove_file(entry.path());
    }
}

/// Parses `{pid}-{counter}.tmp` and returns the pid.
fn parse_temp_suffix(rest: &[u8]) -> Option<u32> {
    let rest = std::str::from_utf8(rest).ok()?.strip_suffix(".tmp")?;
    let (pid, counter) = rest.split_once('-')?;
    let all_digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !all_digits(pid) || !all_digits(counter) {
        return None;
    }
    pid.parse().ok()
}

/// Renames `from` to `to` unless something exists at `to`.
///
/// Uses `renameat2(RENAME_NOREPLACE)`; where the file system does not support it, falls
/// back to an existence check followed by a plain rename.
fn rename_noreplace(from: &Path, to: &Path) -> Result<()> {
    let c_path = |p: &Path| {
        CString::new(p.as_os_str().as_bytes())
            .map_err(|_| Error::io(p, io::Error::new(ErrorKind::InvalidInput, "path contains a NUL byte")))
    };
    let c_from = c_path(from)?;
    let c_to = c_path(to)?;
    // SAFETY: both pointers are valid NUL-terminated strings that outlive the call;
    // renameat2 does not retain them.
    let rc = unsafe { libc::renameat2(libc::AT_FDCWD, c_from.as_ptr(), libc::AT_FDCWD, c_to.as_ptr(), libc::RENAME_NOREPLACE) };
    if rc == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EEXIST) => Err(already_exists(to)),
        Some(libc::EINVAL | libc::ENOSYS | libc::EOPNOTSUPP) => {
            if exists(to)? {
                return Err(already_exists(to));
            }
            fs::rename(from, to).map_err(|e| Error::io(to, e))
        }
        _ => Err(Error::io(to, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;

    /// A fresh, empty directory unique to one test.
    fn test_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("tilestream-atomic-{}-{}", std::process::id(), name));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        v.sort();
        v
    }

    #[test]
    fn commit_writes_target_and_removes_temp() {
        let dir = test_dir("commit");
        let target = dir.join("out.bin");
        let f = AtomicFile::create(&target, false).unwrap();
        let temp = f.temp_path().to_path_buf();
        let name = temp.file_name().unwrap().to_str().unwrap().to_owned();
        let pid = std::process::id();
        assert!(name.starts_with(&format!(".out.bin.tilestream-{pid}-")) && name.ends_with(".tmp"), "{name}");
        assert_eq!(f.target(), target);
        let mode = fs::metadata(&temp).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode & !0o644, 0, "mode {mode:o}");
        assert_eq!(mode & 0o600, 0o600, "mode {mode:o}");
        f.file().write_all(b"hello").unwrap();
        assert!(!target.exists());
        f.commit().unwrap();
        assert_eq!(fs::read(&target).unwrap(), b"hello");
        assert_eq!(names(&dir), vec!["out.bin".to_string()]);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn drop_removes_temp() {
        let dir = test_dir("drop");
        let target = dir.join("out.bin");
        {
            let f = AtomicFile::create(&target, false).unwrap();
            f.file().write_all(b"partial").unwrap();
            assert!(f.temp_path().exists());
        }
        assert!(names(&dir).is_empty());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn existing_target_refused_without_force() {
        let dir = test_dir("exists");
        let target = dir.join("out.bin");
        fs::write(&target, b"old").unwrap();
        let err = AtomicFile::create(&target, false).unwrap_err();
        match &err {
            Error::Io { path, source } => {
                assert_eq!(path, &target);
                assert_eq!(source.kind(), ErrorKind::AlreadyExists);
            }
            other => panic!("unexpected error {other:?}"),
        }
        assert!(err.to_string().contains("--force"), "{err}");
        assert_eq!(fs::read(&target).unwrap(), b"old");
        assert_eq!(names(&dir), vec!["out.bin".to_string()]);

        let f = AtomicFile::create(&target, true).unwrap();
        f.file().write_all(b"new").unwrap();
        f.commit().unwrap();
        assert_eq!(fs::read(&target).unwrap(), b"new");
        assert_eq!(names(&dir), vec!["out.bin".to_string()]);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn dangling_symlink_counts_as_existing() {
        let dir = test_dir("symlink");
        let target = dir.join("out.bin");
        std::os::unix::fs::symlink(dir.join("nowhere"), &target).unwrap();
        assert!(AtomicFile::create(&target, false).is_err());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn target_created_meanwhile_is_not_replaced_without_force() {
        let dir = test_dir("race");
        let target = dir.join("out.bin");
        let f = AtomicFile::create(&target, false).unwrap();
        f.file().write_all(b"mine").unwrap();
        fs::write(&target, b"theirs").unwrap();
        let err = f.commit().unwrap_err();
        assert!(err.to_string().contains("--force"), "{err}");
        assert_eq!(fs::read(&target).unwrap(), b"theirs");
        assert_eq!(names(&dir), vec!["out.bin".to_string()]);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn stale_temps_of_dead_processes_are_removed() {
        let dir = test_dir("stale");
        let target = dir.join("out.bin");
        let pid = std::process::id();
        // No pid is this large (pid_max is at most 2^22), so the process is gone.
        let dead = dir.join(".out.bin.tilestream-999999999-3.tmp");
        let alive = dir.join(format!(".out.bin.tilestream-{pid}-999999.tmp"));
        let other_target = dir.join(".other.bin.tilestream-999999999-0.tmp");
        let unrelated = dir.join(".out.bin.tilestream-notes.txt");
        for p in [&dead, &alive, &other_target, &unrelated] {
            fs::write(p, b"x").unwrap();
        }
        let f = AtomicFile::create(&target, false).unwrap();
        assert!(!dead.exists());
        assert!(alive.exists());
        assert!(other_target.exists());
        assert!(unrelated.exists());
        drop(f);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn missing_directory_names_the_target() {
        let dir = test_dir("nodir");
        let target = dir.join("missing").join("out.bin");
        let err = AtomicFile::create(&target, false).unwrap_err();
        match err {
            Error::Io { path, source } => {
                assert_eq!(source.kind(), ErrorKind::NotFound);
                assert!(path.starts_with(dir.join("missing")), "{}", path.display());
            }
            other => panic!("unexpected error {other:?}"),
        }
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn path_without_file_name_is_an_error() {
        assert!(AtomicFile::create(Path::new("/"), true).is_err());
        assert!(AtomicFile::create(Path::new("a/.."), true).is_err());
    }

    #[test]
    fn parse_suffix() {
        assert_eq!(parse_temp_suffix(b"12-0.tmp"), Some(12));
        assert_eq!(parse_temp_suffix(b"12-0.tm"), None);
        assert_eq!(parse_temp_suffix(b"-0.tmp"), None);
        assert_eq!(parse_temp_suffix(b"12-.tmp"), None);
        assert_eq!(parse_temp_suffix(b"1x-0.tmp"), None);
        assert_eq!(parse_temp_suffix(b"12-3-4.tmp"), None);
    }
}
