//! Files that change under a running query: a file truncated while mapped must give a
//! clear error naming it (exit 2), never a SIGBUS.

mod common;

use common::*;
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};
use std::time::Duration;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_tilestream"))
}

#[test]
fn truncating_the_input_during_a_query_is_an_error_not_a_signal() {
    let dir = TempDir::new("truncate");
    let path = dir.path("t.safetensors");
    assert!(bin().args(["gen", &dir.s("t.safetensors"), "--rows", "6000000", "--quiet"]).status().unwrap().success());
    let len = std::fs::metadata(&path).unwrap().len();
    // A slow query (one thread, a group-by filtered by an expression of 24 exp/log1p calls
    // per row: about half a second on a 2-core Zen 5, where a plain group-by of these 6M
    // rows takes 20 ms) so that the truncation lands mid-run.
    let heavy: Vec<String> = (0..12).map(|j| format!("exp(f{} * 0.001) + log1p(abs(f{}))", j % 8, (j + 3) % 8)).collect();
    let filter = format!("{} > -1", heavy.join(" + "));
    for delay_ms in [80u64, 30, 200] {
        let copy = dir.path("run.safetensors");
        std::fs::copy(&path, &copy).unwrap();
        let child = bin()
            .args(["--threads", "1", "--memory-budget", "1MiB", "stats", &copy.display().to_string(), "--by", "key", "--where", &filter])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        let f = std::fs::OpenOptions::new().write(true).open(&copy).unwrap();
        f.set_len(len / 3).unwrap();
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.signal(), None, "killed by a signal: {stderr}");
        if out.status.code() == Some(0) {
            eprintln!("finished before the truncation at {delay_ms} ms; trying another delay");
            continue;
        }
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
        assert!(stderr.contains("run.safetensors") && (stderr.contains("truncated") || stderr.contains("changed")), "{stderr}");
        return;
    }
    panic!("the query always finished before the truncation; make it slower");
}

#[test]
fn a_file_changed_in_place_after_opening_is_reported() {
    let dir = TempDir::new("changed");
    let path = dir.path("c.safetensors");
    assert!(bin().args(["gen", &dir.s("c.safetensors"), "--rows", "1000", "--quiet"]).status().unwrap().success());
    let ds = tilestream::Dataset::open(&path).unwrap();
    // Same size, new contents and modification time (as another writer would leave it).
    std::thread::sleep(Duration::from_millis(20));
    let mut bytes = std::fs::read(&path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&path, &bytes).unwrap();
    let err = ds.lazy().aggregate([tilestream::all_stats(["f0"])]).collect(&tilestream::Device::Cpu).unwrap_err();
    assert!(err.to_string().contains("changed") && err.to_string().contains("c.safetensors"), "{err}");
}
