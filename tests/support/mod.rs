//! Helpers for the tests that run the `tilestream` binary: a run with a time limit, the
//! checks every error exit must pass, unique temp folders and the optional numpy checks.
#![allow(dead_code)]

use std::ffi::OsStr;
use std::io::Read;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long one run of the binary may take before the test fails.
pub const TIME_LIMIT: Duration = Duration::from_secs(10);

/// The binary under test.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_tilestream")
}

/// What one run of the binary did.
#[derive(Debug)]
pub struct Run {
    /// The command line, for messages.
    pub cmd: String,
    /// The exit code (`None` when killed by a signal).
    pub code: Option<i32>,
    /// The status as reported by the OS.
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    pub secs: f64,
}

impl Run {
    /// The exit code, failing the test on a signal.
    pub fn code(&self) -> i32 {
        match self.code {
            Some(c) => c,
            None => panic!("{}: killed by a signal ({:?})\nstderr: {}", self.cmd, self.status, self.stderr),
        }
    }

    /// Asserts exit code 0 and returns stdout.
    pub fn ok(&self) -> &str {
        assert_eq!(self.code(), 0, "{}: expected success\nstdout: {}\nstderr: {}", self.cmd, self.stdout, self.stderr);
        &self.stdout
    }

    /// Asserts exit code 0 and one JSON object on stdout.
    pub fn json(&self) -> serde_json::Value {
        let out = self.ok();
        match serde_json::from_str::<serde_json::Value>(out.trim_end()) {
            Ok(v) if v.is_object() => v,
            Ok(v) => panic!("{}: stdout is JSON but not an object: {v}", self.cmd),
            Err(e) => panic!("{}: stdout is not one JSON value ({e}): {out}", self.cmd),
        }
    }

    /// Asserts exit code 2 with an error on stderr that contains every needle; returns stderr.
    /// The first line must start with `tilestream: `; no panic text anywhere.
    pub fn fails(&self, needles: &[&str]) -> &str {
        assert_eq!(self.code(), 2, "{}: expected exit code 2\nstdout: {}\nstderr: {}", self.cmd, self.stdout, self.stderr);
        assert!(!self.stderr.contains("panicked"), "{}: panic text on stderr: {}", self.cmd, self.stderr);
        let starts = self.stderr.starts_with("tilestream: ") || self.stderr.starts_with("error: ");
        assert!(starts, "{}: stderr does not start with `tilestream: ` (or clap's `error: `): {:?}", self.cmd, self.stderr);
        for n in needles {
            assert!(self.stderr.contains(n), "{}: stderr lacks {n:?}: {}", self.cmd, self.stderr);
        }
        &self.stderr
    }

    /// [`Run::fails`], and the error is exactly one line starting with `tilestream: `.
    pub fn fails_one_line(&self, needles: &[&str]) -> &str {
        let e = self.fails(needles);
        assert!(e.starts_with("tilestream: "), "{}: stderr does not start with `tilestream: `: {e:?}", self.cmd);
        assert!(e.ends_with('\n') && e.matches('\n').count() == 1, "{}: stderr is not exactly one line: {e:?}", self.cmd);
        e
    }
}

fn reader(mut r: impl Read + Send + 'static) -> JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = r.read_to_end(&mut buf);
        buf
    })
}

/// Waits for `child` at most `limit`; kills it and fails the test when it takes longer.
pub fn wait_limited(child: &mut Child, limit: Duration, cmd: &str) -> ExitStatus {
    let start = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return status,
            Ok(None) => {}
            Err(e) => panic!("{cmd}: wait failed: {e}"),
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{cmd}: still running after {limit:?}; killed (a hang?)");
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Shell-like text of a command line, for messages.
pub fn show_cmd<S: AsRef<OsStr>>(args: &[S]) -> String {
    let mut s = String::from("tilestream");
    for a in args {
        let a = a.as_ref().to_string_lossy();
        if a.is_empty() || a.contains(|c: char| c.is_whitespace() || "`'\"|&<>()!*$;".contains(c)) {
            s += &format!(" '{a}'");
        } else {
            s += &format!(" {a}");
        }
    }
    s
}

/// Runs the binary with `args` (stdin closed) under [`TIME_LIMIT`].
pub fn run<S: AsRef<OsStr>>(args: &[S]) -> Run {
    run_with(args, |_| {})
}

/// [`run`] with the command first adjusted by `setup` (its environment, say).
pub fn run_with<S: AsRef<OsStr>>(args: &[S], setup: impl FnOnce(&mut Command)) -> Run {
    let cmd = show_cmd(args);
    let mut c = Command::new(bin());
    c.args(args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    setup(&mut c);
    let start = Instant::now();
    let mut child = c.spawn().unwrap_or_else(|e| panic!("{cmd}: cannot start {}: {e}", bin()));
    let out = reader(child.stdout.take().expect("stdout"));
    let err = reader(child.stderr.take().expect("stderr"));
    let status = wait_limited(&mut child, TIME_LIMIT, &cmd);
    let secs = start.elapsed().as_secs_f64();
    let stdout = String::from_utf8_lossy(&out.join().expect("stdout reader")).into_owned();
    let stderr = String::from_utf8_lossy(&err.join().expect("stderr reader")).into_owned();
    let code = status.code();
    if code == Some(101) {
        panic!("{cmd}: exit code 101 (a panic)\nstderr: {stderr}");
    }
    Run { cmd, code, status, stdout, stderr, secs }
}

// Seeds and temp folders are shared with the library-level tests.
#[path = "../common/mod.rs"]
mod common;
#[allow(unused_imports)]
pub use common::{TempDir, gpu_device, gpu_devices, seed};

/// Whether `python3` can import numpy. Without it the numpy checks are skipped (printed),
/// unless `REQUIRE_NUMPY=1`, which turns the skip into a failure.
pub fn numpy_available(test: &str) -> bool {
    let ok = Command::new("python3")
        .args(["-c", "import numpy"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        assert!(
            std::env::var("REQUIRE_NUMPY").as_deref() != Ok("1"),
            "{test}: numpy is required (REQUIRE_NUMPY=1) but `python3 -c 'import numpy'` fails"
        );
        eprintln!("{test}: skipped: numpy not installed");
    }
    ok
}

/// Runs a Python script (with numpy available) and returns its stdout; fails on an error.
pub fn python(script: &str, args: &[&str]) -> String {
    let mut c = Command::new("python3");
    c.arg("-c").arg(script).args(args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = c.spawn().expect("start python3");
    let out = reader(child.stdout.take().expect("stdout"));
    let err = reader(child.stderr.take().expect("stderr"));
    let status = wait_limited(&mut child, Duration::from_secs(60), "python3");
    let stdout = String::from_utf8_lossy(&out.join().expect("stdout")).into_owned();
    let stderr = String::from_utf8_lossy(&err.join().expect("stderr")).into_owned();
    assert!(status.success(), "python3 failed ({status:?}):\n{stderr}\nscript:\n{script}");
    stdout
}
