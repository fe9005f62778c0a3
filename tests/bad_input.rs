//! The bad-input corpus: every file in `tests/corpus/` (written by `make_corpus.py`, listed
//! with its expected outcome in `manifest.json`) is run through `tilestream info --json` and
//! `tilestream stats --json`. A rejected file gives exit code 2 and exactly one stderr line
//! `tilestream: PATH: ...` containing the expected words; an accepted file gives the expected
//! rows, columns and statistics. Never a panic, a signal or a run over 10 s.

mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde_json::Value;
use support::{Run, run};

/// The stat keys of one column, in the order the spec prints them.
const STAT_KEYS: [&str; 9] = ["count", "nan_count", "inf_count", "sum", "mean", "min", "max", "var", "std"];

/// Statistics compared to a relative tolerance; the others must match exactly.
const APPROX_KEYS: [&str; 4] = ["sum", "mean", "var", "std"];

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests").join("corpus")
}

fn manifest() -> Vec<Value> {
    let path = corpus_dir().join("manifest.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    match serde_json::from_str::<Value>(&text) {
        Ok(Value::Array(cases)) => cases,
        other => panic!("{}: expected a JSON array, got {other:?}", path.display()),
    }
}

fn str_field<'a>(case: &'a Value, key: &str) -> &'a str {
    case[key].as_str().unwrap_or_else(|| panic!("manifest case {case}: `{key}` must be a string"))
}

fn str_list(case: &Value, key: &str) -> Vec<String> {
    case[key]
        .as_array()
        .unwrap_or_else(|| panic!("manifest case {case}: `{key}` must be an array"))
        .iter()
        .map(|v| v.as_str().unwrap_or_else(|| panic!("manifest case {case}: `{key}` must hold strings")).to_string())
        .collect()
}

/// One command of a case: `tilestream [args] CMD FILES... --json`.
fn command(case: &Value, cmd: &str) -> Vec<String> {
    let mut args = str_list(case, "args");
    args.push(cmd.into());
    args.extend(str_list(case, "files").iter().map(|f| corpus_dir().join(f).display().to_string()));
    args.push("--json".into());
    args
}

/// Compares an expected statistic with the CLI's, by the manifest's rules.
fn check_value(what: &str, key: &str, expected: &Value, got: &Value) -> Result<(), String> {
    let fail = || Err(format!("{what}.{key}: expected {expected}, got {got}"));
    match expected {
        Value::Null | Value::String(_) => {
            if got != expected {
                return fail();
            }
        }
        Value::Number(n) if n.is_i64() || n.is_u64() => {
            // Integers (counts, integer-column min/max) must be JSON integers, exactly equal.
            let as_i128 = |v: &Value| v.as_i64().map(i128::from).or_else(|| v.as_u64().map(i128::from));
            match (as_i128(expected), as_i128(got)) {
                (Some(e), Some(g)) if e == g => {}
                _ => return fail(),
            }
        }
        Value::Number(n) => {
            let e = n.as_f64().unwrap_or(f64::NAN);
            // A float statistic must be printed as a float, not as an integer.
            let Some(g) = got.as_f64().filter(|_| got.is_f64()) else { return fail() };
            let good = if APPROX_KEYS.contains(&key) { (g - e).abs() <= 1e-9 * e.abs() } else { g == e };
            if !good {
                return fail();
            }
        }
        _ => return Err(format!("{what}.{key}: bad expectation {expected} in the manifest")),
    }
    Ok(())
}

fn check_reject(case: &Value, r: &Run) -> Result<(), String> {
    let name = str_field(case, "name");
    let needle = str_field(case, "error");
    let file = corpus_dir().join(str_field(case, "error_file")).display().to_string();
    let ctx = || format!("{name}: {}\n  exit {:?}\n  stdout: {:?}\n  stderr: {:?}", r.cmd, r.code, r.stdout, r.stderr);
    if r.code != Some(2) {
        return Err(format!("expected exit code 2: {}", ctx()));
    }
    let e = &r.stderr;
    if !(e.starts_with("tilestream: ") && e.ends_with('\n') && e.matches('\n').count() == 1) {
        return Err(format!("stderr is not exactly one line starting with `tilestream: `: {}", ctx()));
    }
    if !e.contains(&file) {
        return Err(format!("the error does not name the file {file}: {}", ctx()));
    }
    if !e.contains(needle) {
        return Err(format!("the error lacks {needle:?}: {}", ctx()));
    }
    if !r.stdout.is_empty() {
        return Err(format!("stdout is not empty on an error: {}", ctx()));
    }
    // "One clear line": names from the file are shortened, not echoed whole.
    if e.len() > file.len() + 400 {
        return Err(format!("the error line is {} bytes long: {}", e.len(), ctx()));
    }
    Ok(())
}

fn parse_json(name: &str, r: &Run) -> Result<Value, String> {
    if r.code != Some(0) {
        return Err(format!("{name}: {}: expected success, exit {:?}\n  stderr: {:?}", r.cmd, r.code, r.stderr));
    }
    let lines = r.stdout.trim_end().lines().count();
    if lines != 1 {
        return Err(format!("{name}: {}: expected one JSON line, got {lines}", r.cmd));
    }
    serde_json::from_str::<Value>(r.stdout.trim_end()).map_err(|e| format!("{name}: {}: stdout is not JSON ({e}): {}", r.cmd, r.stdout))
}

fn check_info(case: &Value, r: &Run) -> Result<(), String> {
    let name = str_field(case, "name");
    let v = parse_json(name, r)?;
    let rows = &case["rows"];
    if &v["rows"] != rows {
        return Err(format!("{name}: info rows {} != expected {rows}", v["rows"]));
    }
    let cols: Vec<&str> = v["columns"].as_array().map(|a| a.iter().filter_map(|c| c["name"].as_str()).collect()).unwrap_or_default();
    let expected = str_list(case, "columns");
    if cols != expected {
        return Err(format!("{name}: info columns {cols:?} != expected {expected:?}"));
    }
    let files = v["files"].as_array().map_or(0, Vec::len);
    if files != str_list(case, "files").len() {
        return Err(format!("{name}: info lists {files} files"));
    }
    Ok(())
}

fn check_stats(case: &Value, r: &Run) -> Result<(), String> {
    let name = str_field(case, "name");
    let v = parse_json(name, r)?;
    let Some(top) = v.as_object() else { return Err(format!("{name}: stats output is not an object")) };
    let keys: Vec<&str> = top.keys().map(String::as_str).collect();
    if keys != ["rows", "rows_selected", "columns"] {
        return Err(format!("{name}: stats keys {keys:?}"));
    }
    let rows = &case["rows"];
    if &v["rows"] != rows || &v["rows_selected"] != rows {
        return Err(format!("{name}: stats rows {} / rows_selected {} != {rows}", v["rows"], v["rows_selected"]));
    }
    let expected_cols = if case.get("stats_columns").is_some() { str_list(case, "stats_columns") } else { str_list(case, "columns") };
    let Some(columns) = v["columns"].as_object() else { return Err(format!("{name}: `columns` is not an object")) };
    let got_cols: Vec<&str> = columns.keys().map(String::as_str).collect();
    if got_cols != expected_cols {
        return Err(format!("{name}: stats columns {got_cols:?} != expected {expected_cols:?}"));
    }
    for (col, stats) in columns {
        let stat_keys: Vec<&str> = stats.as_object().map(|o| o.keys().map(String::as_str).collect()).unwrap_or_default();
        if stat_keys != STAT_KEYS {
            return Err(format!("{name}: column {col}: keys {stat_keys:?}"));
        }
    }
    let Some(expected) = case["stats"].as_object() else { return Ok(()) };
    for (col, want) in expected {
        let Some(got) = columns.get(col) else { return Err(format!("{name}: column {col} missing from stats")) };
        for (key, e) in want.as_object().into_iter().flatten() {
            check_value(&format!("{name}: {col}"), key, e, &got[key.as_str()])?;
        }
    }
    Ok(())
}

/// Every case of the manifest; all failures are collected and reported together.
#[test]
fn corpus() {
    let cases = manifest();
    assert!(cases.len() >= 40, "the corpus has only {} cases", cases.len());
    let mut failures = Vec::new();
    let (mut accepted, mut rejected) = (0, 0);
    for case in &cases {
        let name = str_field(case, "name");
        let info = run(&command(case, "info"));
        let stats = run(&command(case, "stats"));
        for r in [&info, &stats] {
            assert!(r.code.is_some(), "{name}: {}: killed by a signal ({:?})", r.cmd, r.status);
            assert!(!r.stderr.contains("panicked"), "{name}: {}: panic text: {}", r.cmd, r.stderr);
        }
        let results = match str_field(case, "expect") {
            "reject" => {
                rejected += 1;
                vec![check_reject(case, &info), check_reject(case, &stats)]
            }
            "accept" => {
                accepted += 1;
                vec![check_info(case, &info), check_stats(case, &stats)]
            }
            other => panic!("{name}: unknown expectation {other:?}"),
        };
        failures.extend(results.into_iter().filter_map(Result::err));
    }
    eprintln!("corpus: {} cases ({accepted} accepted, {rejected} rejected), {} failures", cases.len(), failures.len());
    assert!(failures.is_empty(), "{} corpus failures:\n\n{}", failures.len(), failures.join("\n\n"));
}

/// Every file in the corpus folder is used by some case, and every file stays tiny.
#[test]
fn manifest_covers_the_corpus() {
    let dir = corpus_dir();
    let mut on_disk = BTreeSet::new();
    let mut stack = vec![dir.clone()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).expect("read corpus dir") {
            let p = entry.expect("dir entry").path();
            if p.is_dir() {
                stack.push(p);
                continue;
            }
            let rel = p.strip_prefix(&dir).expect("inside corpus").to_string_lossy().replace('\\', "/");
            if rel == "manifest.json" || rel == "make_corpus.py" {
                continue;
            }
            let len = std::fs::metadata(&p).expect("metadata").len();
            assert!(len <= 64 << 10, "corpus file {rel} is {len} bytes; keep the corpus tiny");
            on_disk.insert(rel);
        }
    }
    let mut used = BTreeSet::new();
    let mut names = BTreeSet::new();
    for case in manifest() {
        assert!(names.insert(str_field(&case, "name").to_string()), "duplicate case name {}", case["name"]);
        used.extend(str_list(&case, "files"));
    }
    let unused: Vec<&String> = on_disk.difference(&used).collect();
    assert!(unused.is_empty(), "corpus files no case uses: {unused:?}");
    let missing: Vec<&String> = used.difference(&on_disk).filter(|f| !f.starts_with("does_not_exist")).collect();
    assert!(missing.is_empty(), "manifest names files that are not in the corpus: {missing:?}");
}
