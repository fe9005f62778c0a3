//! NVRTC, the CUDA run-time compiler, loaded with `dlopen` from wherever it is: no CUDA
//! toolkit at build time. Searched in order: `TILESTREAM_NVRTC` (the library or its
//! folder), `$CUDA_PATH/lib64`, the loader's path (`libnvrtc.so.13`, `.so.12`), the usual
//! toolkit folders, and pip's `nvidia-cuda-nvrtc` packages (CUDA 13: `nvidia/cu13/lib`,
//! CUDA 12: `nvidia/cuda_nvrtc/lib`) under every Python found.

use std::ffi::{CStr, CString, c_char, c_int, c_void};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use crate::error::{Error, Result};

/// NVRTC options besides the architecture: IEEE f32 arithmetic.
const OPTIONS: [&str; 4] = ["--fmad=false", "--prec-div=true", "--prec-sqrt=true", "--ftz=false"];
/// Bump when the layout of the disk cache changes.
const CACHE_FORMAT: u32 = 1;

type Prog = *mut c_void;
type Status = c_int;
type CreateFn = unsafe extern "C" fn(*mut Prog, *const c_char, *const c_char, c_int, *const *const c_char, *const *const c_char) -> Status;
type CompileFn = unsafe extern "C" fn(Prog, c_int, *const *const c_char) -> Status;
type SizeFn = unsafe extern "C" fn(Prog, *mut usize) -> Status;
type BytesFn = unsafe extern "C" fn(Prog, *mut c_char) -> Status;
type DestroyFn = unsafe extern "C" fn(*mut Prog) -> Status;
type ErrorStringFn = unsafe extern "C" fn(Status) -> *const c_char;
type IntsFn = unsafe extern "C" fn(*mut c_int) -> Status;
type VersionFn = unsafe extern "C" fn(*mut c_int, *mut c_int) -> Status;

/// One NVRTC library, loaded.
pub(crate) struct Nvrtc {
    /// Where it was loaded from.
    pub path: PathBuf,
    /// (major, minor), e.g. (13, 0).
    pub version: (i32, i32),
    create: CreateFn,
    compile: CompileFn,
    log_size: SizeFn,
    log: BytesFn,
    cubin_size: SizeFn,
    cubin: BytesFn,
    destroy: DestroyFn,
    error_string: ErrorStringFn,
    num_archs: IntsFn,
    archs: IntsFn,
}

// SAFETY: the fields are function pointers into a library that is never unloaded; NVRTC's
// API is thread-safe for distinct programs.
unsafe impl Send for Nvrtc {}
// SAFETY: as above.
unsafe impl Sync for Nvrtc {}

/// Every candidate looked at, with what happened (for `tilestream devices` and errors).
static SEARCH: OnceLock<(Vec<Nvrtc>, String)> = OnceLock::new();

fn search() -> &'static (Vec<Nvrtc>, String) {
    SEARCH.get_or_init(|| {
        let mut found: Vec<Nvrtc> = Vec::new();
        let mut report = String::new();
        for cand in candidates() {
            match load(&cand) {
                Ok(lib) => {
                    // The same library reached twice (a link and its target) counts once.
                    if found.iter().any(|f| f.version == lib.version && same_file(&f.path, &lib.path)) {
                        continue;
                    }
                    report.push_str(&format!("  {}: NVRTC {}.{}\n", lib.path.display(), lib.version.0, lib.version.1));
                    found.push(lib);
                }
                Err(why) if cand.is_absolute() && !cand.exists() => {
                    let _ = why;
                }
                Err(why) => report.push_str(&format!("  {}: {why}\n", cand.display())),
            }
        }
        if found.is_empty() {
            report.push_str("  no NVRTC library found: install one with `pip install nvidia-cuda-nvrtc` (CUDA 13) or `nvidia-cuda-nvrtc-cu12`, or set TILESTREAM_NVRTC\n");
        }
        (found, report)
    })
}

/// Where compiled kernels are kept between runs.
fn cache_dir() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("TILESTREAM_CACHE") {
        return Some(PathBuf::from(d).join("cuda"));
    }
    let base =
        std::env::var_os("XDG_CACHE_HOME").map(PathBuf::from).or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache")))?;
    Some(base.join("tilestream").join("cuda"))
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(x), Ok(y)) => x == y,
        _ => a == b,
    }
}

/// Every NVRTC library found, in search order.
pub(crate) fn all() -> &'static [Nvrtc] {
    &search().0
}

/// What the search found and why each other candidate was passed over.
pub(crate) fn search_report() -> String {
    search().1.clone()
}

/// The NVRTC to compile for a device of compute capability `arch` (e.g. 90) whose driver
/// runs CUDA `driver` (major, minor): the newest whose major version is not newer than the
/// driver's (a driver cannot load code from a newer major release) and that knows `arch`.
pub(crate) fn for_device(arch: i32, driver: (i32, i32)) -> Result<&'static Nvrtc> {
    let mut fit: Vec<&Nvrtc> = all().iter().filter(|l| l.version.0 <= driver.0 && l.supported_archs().contains(&arch)).collect();
    fit.sort_by_key(|l| std::cmp::Reverse((l.version.0 == driver.0 && l.version.1 <= driver.1, l.version)));
    fit.first().copied().ok_or_else(|| Error::BackendUnavailable {
        device: "cuda".to_string(),
        reason: format!(
            "no NVRTC fits this GPU (sm_{arch}) and driver (CUDA {}.{}); NVRTC search:\n{}",
            driver.0,
            driver.1,
            search_report().trim_end()
        ),
    })
}

fn candidates() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = Vec::new();
    let names = ["libnvrtc.so.13", "libnvrtc.so.12", "libnvrtc.so"];
    let in_dir = |v: &mut Vec<PathBuf>, dir: &Path| {
        for n in names {
            v.push(dir.join(n));
        }
    };
    if let Some(p) = std::env::var_os("TILESTREAM_NVRTC") {
        let p = PathBuf::from(p);
        if p.is_dir() { in_dir(&mut v, &p) } else { v.push(p) }
    }
    if let Some(p) = std::env::var_os("CUDA_PATH") {
        in_dir(&mut v, &Path::new(&p).join("lib64"));
        in_dir(&mut v, &Path::new(&p).join("lib"));
    }
    // Bare names: the loader's own search (LD_LIBRARY_PATH, ld.so.cache).
    for n in names {
        v.push(PathBuf::from(n));
    }
    in_dir(&mut v, Path::new("/usr/local/cuda/lib64"));
    for site in python_site_dirs() {
        v.push(site.join("nvidia/cu13/lib/libnvrtc.so.13"));
        v.push(site.join("nvidia/cuda_nvrtc/lib/libnvrtc.so.12"));
    }
    v
}

/// `site-packages` / `dist-packages` folders of the Pythons usually found on Linux.
fn python_site_dirs() -> Vec<PathBuf> {
    let mut prefixes: Vec<PathBuf> = vec!["/usr/local/lib".into(), "/usr/lib".into(), "/opt/conda/lib".into()];
    for var in ["VIRTUAL_ENV", "CONDA_PREFIX"] {
        if let Some(p) = std::env::var_os(var) {
            prefixes.push(Path::new(&p).join("lib"));
        }
    }
    if let Some(home) = std::env::var_os("HOME") {
        let home = PathBuf::from(home);
        prefixes.push(home.join(".local/lib"));
        if let Ok(rd) = std::fs::read_dir(home.join(".pyenv/versions")) {
            prefixes.extend(rd.flatten().map(|e| e.path().join("lib")));
        }
    }
    let mut out = Vec::new();
    for pre in prefixes {
        let Ok(rd) = std::fs::read_dir(&pre) else { continue };
        let mut pys: Vec<PathBuf> =
            rd.flatten().filter(|e| e.file_name().to_string_lossy().starts_with("python3")).map(|e| e.path()).collect();
        pys.sort();
        for py in pys {
            out.push(py.join("site-packages"));
            out.push(py.join("dist-packages"));
        }
    }
    out
}

fn dl_error() -> String {
    // SAFETY: dlerror returns null or a NUL-terminated string valid until the next dl call.
    let e = unsafe { libc::dlerror() };
    if e.is_null() { "unknown dlopen error".to_string() } else { unsafe { CStr::from_ptr(e) }.to_string_lossy().into_owned() }
}

/// Loads one candidate. Its `libnvrtc-builtins` is loaded first from the same folder, so
/// that NVRTC finds it by name wherever it lives (pip's CUDA 13 library has no run path).
fn load(path: &Path) -> std::result::Result<Nvrtc, String> {
    if path.is_absolute() && !path.exists() {
        return Err("not there".to_string());
    }
    if let (true, Some(dir)) = (path.is_absolute(), path.parent())
        && let Ok(rd) = std::fs::read_dir(dir)
    {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with("libnvrtc-builtins.so.")
                && let Ok(c) = CString::new(e.path().as_os_str().as_encoded_bytes())
            {
                // SAFETY: loading a shared library by path; its initializers are NVIDIA's.
                unsafe { libc::dlopen(c.as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL) };
            }
        }
    }
    let c = CString::new(path.as_os_str().as_encoded_bytes()).map_err(|_| "bad path".to_string())?;
    // SAFETY: as above. The handle is never closed: the function pointers stay valid.
    let h = unsafe { libc::dlopen(c.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
    if h.is_null() {
        return Err(dl_error());
    }
    let sym = |name: &str| -> std::result::Result<*mut c_void, String> {
        let n = CString::new(name).map_err(|_| "bad symbol".to_string())?;
        // SAFETY: h is a live handle from dlopen.
        let p = unsafe { libc::dlsym(h, n.as_ptr()) };
        if p.is_null() { Err(format!("no symbol {name}: not an NVRTC library")) } else { Ok(p) }
    };
    // SAFETY: each symbol is NVRTC's documented C function of exactly this signature.
    let lib = unsafe {
        Nvrtc {
            path: path.to_path_buf(),
            version: (0, 0),
            create: std::mem::transmute::<*mut c_void, CreateFn>(sym("nvrtcCreateProgram")?),
            compile: std::mem::transmute::<*mut c_void, CompileFn>(sym("nvrtcCompileProgram")?),
            log_size: std::mem::transmute::<*mut c_void, SizeFn>(sym("nvrtcGetProgramLogSize")?),
            log: std::mem::transmute::<*mut c_void, BytesFn>(sym("nvrtcGetProgramLog")?),
            cubin_size: std::mem::transmute::<*mut c_void, SizeFn>(sym("nvrtcGetCUBINSize")?),
            cubin: std::mem::transmute::<*mut c_void, BytesFn>(sym("nvrtcGetCUBIN")?),
            destroy: std::mem::transmute::<*mut c_void, DestroyFn>(sym("nvrtcDestroyProgram")?),
            error_string: std::mem::transmute::<*mut c_void, ErrorStringFn>(sym("nvrtcGetErrorString")?),
            num_archs: std::mem::transmute::<*mut c_void, IntsFn>(sym("nvrtcGetNumSupportedArchs")?),
            archs: std::mem::transmute::<*mut c_void, IntsFn>(sym("nvrtcGetSupportedArchs")?),
        }
    };
    // SAFETY: as above.
    let version = unsafe { std::mem::transmute::<*mut c_void, VersionFn>(sym("nvrtcVersion")?) };
    let (mut major, mut minor) = (0, 0);
    // SAFETY: two valid out-pointers.
    if unsafe { version(&mut major, &mut minor) } != 0 {
        return Err("nvrtcVersion failed".to_string());
    }
    Ok(Nvrtc { version: (major, minor), ..lib })
}

/// Frees an NVRTC program when dropped.
struct Program<'a> {
    lib: &'a Nvrtc,
    prog: Prog,
}

impl Drop for Program<'_> {
    fn drop(&mut self) {
        // SAFETY: prog came from nvrtcCreateProgram and is destroyed once.
        unsafe { (self.lib.destroy)(&mut self.prog) };
    }
}

impl Nvrtc {
    fn status(&self, s: Status) -> String {
        // SAFETY: nvrtcGetErrorString returns a static NUL-terminated string for any code.
        let p = unsafe { (self.error_string)(s) };
        if p.is_null() { format!("NVRTC error {s}") } else { unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned() }
    }

    /// The `sm_XY` architectures this NVRTC compiles for, as XY numbers.
    pub(crate) fn supported_archs(&self) -> Vec<i32> {
        let mut n = 0;
        // SAFETY: valid out-pointer.
        if unsafe { (self.num_archs)(&mut n) } != 0 || n <= 0 {
            return Vec::new();
        }
        let mut v = vec![0; n as usize];
        // SAFETY: v holds exactly the n entries NVRTC reported.
        if unsafe { (self.archs)(v.as_mut_ptr()) } != 0 {
            return Vec::new();
        }
        v
    }

    /// Compiles `source` to a CUBIN for `sm_{arch}`, with IEEE f32 arithmetic (no fused
    /// multiply-add, correctly rounded division and square root, denormals kept). A compile
    /// error carries NVRTC's log and the source.
    pub(crate) fn compile(&self, source: &str, arch: i32) -> Result<Vec<u8>> {
        let src = CString::new(source)
            .map_err(|_| Error::Compile { device: "cuda".to_string(), message: "kernel source holds a NUL byte".to_string() })?;
        let mut prog: Prog = std::ptr::null_mut();
        // SAFETY: valid out-pointer and NUL-terminated strings; no headers.
        let s = unsafe { (self.create)(&mut prog, src.as_ptr(), c"tilestream.cu".as_ptr(), 0, std::ptr::null(), std::ptr::null()) };
        if s != 0 {
            return Err(Error::Compile { device: "cuda".to_string(), message: format!("nvrtcCreateProgram: {}", self.status(s)) });
        }
        let prog = Program { lib: self, prog };
        let opts: Vec<CString> = [
            format!("--gpu-architecture=sm_{arch}"),
            "--fmad=false".into(),
            "--prec-div=true".into(),
            "--prec-sqrt=true".into(),
            "--ftz=false".into(),
        ]
        .into_iter()
        .filter_map(|o| CString::new(o).ok())
        .collect();
        let ptrs: Vec<*const c_char> = opts.iter().map(|o| o.as_ptr()).collect();
        // SAFETY: ptrs holds opts.len() valid strings that outlive the call.
        let s = unsafe { (self.compile)(prog.prog, ptrs.len() as c_int, ptrs.as_ptr()) };
        if s != 0 {
            let log = self.log_of(&prog);
            return Err(Error::Compile {
                device: "cuda".to_string(),
                message: format!(
                    "NVRTC {}.{} ({}) for sm_{arch}: {}\n{log}\n--- generated source ---\n{source}",
                    self.version.0,
                    self.version.1,
                    self.path.display(),
                    self.status(s)
                ),
            });
        }
        let mut n = 0usize;
        // SAFETY: valid out-pointer.
        let s = unsafe { (self.cubin_size)(prog.prog, &mut n) };
        if s != 0 || n == 0 {
            return Err(Error::Compile { device: "cuda".to_string(), message: format!("nvrtcGetCUBINSize: {}", self.status(s)) });
        }
        let mut bin = vec![0u8; n];
        // SAFETY: bin holds the n bytes NVRTC reported.
        let s = unsafe { (self.cubin)(prog.prog, bin.as_mut_ptr().cast()) };
        if s != 0 {
            return Err(Error::Compile { device: "cuda".to_string(), message: format!("nvrtcGetCUBIN: {}", self.status(s)) });
        }
        Ok(bin)
    }

    /// [`compile`](Nvrtc::compile) through a cache on disk (`$TILESTREAM_CACHE`, else
    /// `$XDG_CACHE_HOME/tilestream` or `~/.cache/tilestream`): a large kernel takes NVRTC
    /// seconds, and the same query is often run again. An entry is used only when its stored
    /// source equals `source`; a cache that cannot be read or written is skipped.
    pub(crate) fn compile_cached(&self, source: &str, arch: i32) -> Result<Vec<u8>> {
        self.compile_in(cache_dir(), source, arch)
    }

    fn compile_in(&self, dir: Option<PathBuf>, source: &str, arch: i32) -> Result<Vec<u8>> {
        use std::hash::{Hash, Hasher};
        let Some(dir) = dir else { return self.compile(source, arch) };
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (CACHE_FORMAT, source, arch, OPTIONS, self.version, &self.path).hash(&mut h);
        let stem = dir.join(format!("{:016x}-sm_{arch}-nvrtc{}.{}", h.finish(), self.version.0, self.version.1));
        let (src_path, bin_path) = (stem.with_extension("cu"), stem.with_extension("cubin"));
        if std::fs::read(&src_path).is_ok_and(|s| s == source.as_bytes())
            && let Ok(bin) = std::fs::read(&bin_path)
            && bin.starts_with(b"\x7fELF")
        {
            return Ok(bin);
        }
        let bin = self.compile(source, arch)?;
        // A name no other writer (thread or process) uses at the same time.
        static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp = stem.with_extension(format!("tmp{}-{n}", std::process::id()));
        let stored = std::fs::create_dir_all(&dir).is_ok()
            && std::fs::write(&tmp, &bin).is_ok()
            && std::fs::rename(&tmp, &bin_path).is_ok()
            && std::fs::write(&tmp, source).is_ok()
            && std::fs::rename(&tmp, &src_path).is_ok();
        if !stored {
            let _ = std::fs::remove_file(&tmp);
        }
        Ok(bin)
    }

    fn log_of(&self, prog: &Program) -> String {
        let mut n = 0usize;
        // SAFETY: valid out-pointer.
        if unsafe { (self.log_size)(prog.prog, &mut n) } != 0 || n == 0 {
            return String::new();
        }
        let mut buf = vec![0u8; n];
        // SAFETY: buf holds the n bytes NVRTC reported.
        if unsafe { (self.log)(prog.prog, buf.as_mut_ptr().cast()) } != 0 {
            return String::new();
        }
        String::from_utf8_lossy(&buf).trim_end_matches('\0').to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compiled_kernels_are_cached_on_disk_and_checked() {
        let Some(lib) = all().first() else {
            eprintln!("skipped: no NVRTC library found:\n{}", search_report());
            return;
        };
        let dir = std::env::temp_dir().join(format!("tilestream-nvrtc-cache-{}", std::process::id()));
        let src = "extern \"C\" __global__ void k(float* x) { x[threadIdx.x] = __fdiv_rn(x[0], 3.0f); }\n";
        let first = lib.compile_in(Some(dir.clone()), src, 90).expect("compile");
        let files: Vec<PathBuf> = std::fs::read_dir(&dir).expect("cache folder").flatten().map(|e| e.path()).collect();
        assert_eq!(files.len(), 2, "a CUBIN and its source: {files:?}");
        let bin = files.iter().find(|p| p.extension().is_some_and(|e| e == "cubin")).expect("cubin");
        // A hit returns the stored bytes (marked here), not a fresh compile.
        let mut marked = first.clone();
        marked.push(0xab);
        std::fs::write(bin, &marked).expect("mark");
        assert_eq!(lib.compile_in(Some(dir.clone()), src, 90).expect("hit"), marked);
        // A stored source that differs (a hash collision) is not trusted.
        let cu = files.iter().find(|p| p.extension().is_some_and(|e| e == "cu")).expect("source");
        std::fs::write(cu, "something else").expect("corrupt");
        assert_eq!(lib.compile_in(Some(dir.clone()), src, 90).expect("recompile"), first);
        // A compile error carries NVRTC's log and the source.
        let err = lib.compile("__global__ void k() { undefined_symbol(); }", 90).expect_err("must fail").to_string();
        assert!(err.contains("undefined_symbol") && err.contains("generated source"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
