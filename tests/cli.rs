//! End-to-end tests of the `tilestream` command line against the spec in issue 2: JSON shapes,
//! exit codes, expressions, histograms, transforms (read back with the `safetensors` crate
//! and, where installed, numpy), fitted state, determinism across tile sizes and threads,
//! devices, broken pipes and `--help`. Random data comes from `tilestream gen` with a fresh
//! seed each run (printed; `TEST_SEED=N` replays one).

mod support;

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};

use half::{bf16, f16};
use safetensors::{Dtype, SafeTensors};
use serde_json::Value;
use support::{Run, TempDir, gpu_device, gpu_devices, numpy_available, python, run, run_with, seed, wait_limited};

/// The stat keys of one column, in the spec's order.
const STAT_KEYS: [&str; 9] = ["count", "nan_count", "inf_count", "sum", "mean", "min", "max", "var", "std"];

// ------------------------------------------------------------------ data helpers

/// One tensor read back from a safetensors file.
#[derive(Debug, Clone, PartialEq)]
struct Tensor {
    name: String,
    dtype: Dtype,
    shape: Vec<usize>,
    data: Vec<u8>,
}

/// Every tensor of a safetensors file, in data order, parsed by the `safetensors` crate.
fn read_st(path: &Path) -> Vec<Tensor> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let st = SafeTensors::deserialize(&bytes).unwrap_or_else(|e| panic!("{}: the safetensors crate rejects it: {e:?}", path.display()));
    // Data order; zero-size tensors share offsets, so ties keep the header's order.
    let header_len = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes")) as usize;
    let header: Value = serde_json::from_slice(&bytes[8..8 + header_len]).expect("header JSON");
    let mut order: Vec<(u64, String)> = header
        .as_object()
        .expect("header object")
        .iter()
        .filter(|(k, _)| *k != "__metadata__")
        .map(|(k, v)| (v["data_offsets"][0].as_u64().expect("offset"), k.clone()))
        .collect();
    order.sort_by_key(|(begin, _)| *begin);
    order
        .into_iter()
        .map(|(_, name)| {
            let t = st.tensor(&name).expect("tensor");
            Tensor { name: name.clone(), dtype: t.dtype(), shape: t.shape().to_vec(), data: t.data().to_vec() }
        })
        .collect()
}

fn names(ts: &[Tensor]) -> Vec<&str> {
    ts.iter().map(|t| t.name.as_str()).collect()
}

fn tensor<'a>(ts: &'a [Tensor], name: &str) -> &'a Tensor {
    ts.iter().find(|t| t.name == name).unwrap_or_else(|| panic!("no tensor {name} in {:?}", names(ts)))
}

fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes"))).collect()
}

fn u16s(bytes: &[u8]) -> Vec<u16> {
    bytes.chunks_exact(2).map(|c| u16::from_le_bytes(c.try_into().expect("2 bytes"))).collect()
}

fn le_bytes_f32(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Writes a safetensors file with the tensors laid out in the order given:
/// `(name, dtype as in the format, shape, little-endian bytes)`.
fn write_st(path: &Path, tensors: &[(&str, &str, Vec<u64>, Vec<u8>)]) {
    let mut header = String::from("{");
    let mut data = Vec::new();
    for (i, (name, dtype, shape, bytes)) in tensors.iter().enumerate() {
        if i > 0 {
            header.push(',');
        }
        let shape: Vec<String> = shape.iter().map(u64::to_string).collect();
        header += &format!(
            "{}:{{\"dtype\":\"{dtype}\",\"shape\":[{}],\"data_offsets\":[{},{}]}}",
            Value::String(name.to_string()),
            shape.join(","),
            data.len(),
            data.len() + bytes.len()
        );
        data.extend_from_slice(bytes);
    }
    header.push('}');
    while !header.len().is_multiple_of(8) {
        header.push(' ');
    }
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(&data);
    std::fs::write(path, out).expect("write test input");
}

/// A dataset from `tilestream gen`: f32 columns `f0..` and the u8 `key`.
struct Gen {
    path: String,
    rows: usize,
    f: Vec<Vec<f32>>,
    key: Vec<u8>,
}

fn gen_data(dir: &TempDir, name: &str, rows: usize, cols: usize, seed: u64) -> Gen {
    let path = dir.s(name);
    run(&["gen", &path, "--rows", &rows.to_string(), "--cols", &cols.to_string(), "--seed", &seed.to_string()]).ok();
    let ts = read_st(Path::new(&path));
    let mut expected: Vec<String> = (0..cols).map(|j| format!("f{j}")).collect();
    expected.push("key".into());
    assert_eq!(names(&ts), expected, "gen's columns");
    let f = (0..cols)
        .map(|j| {
            let t = tensor(&ts, &format!("f{j}"));
            assert_eq!((t.dtype, t.shape.as_slice()), (Dtype::F32, &[rows][..]));
            f32s(&t.data)
        })
        .collect();
    let k = tensor(&ts, "key");
    assert_eq!((k.dtype, k.shape.as_slice()), (Dtype::U8, &[rows][..]));
    Gen { path, rows, f, key: k.data.clone() }
}

/// A tiny seedable generator for test-side data.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn uniform(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

// ------------------------------------------------------------------ reference statistics

/// Naive two-pass f64 statistics of some values.
#[derive(Debug)]
struct Ref {
    count: u64,
    nan: u64,
    inf: u64,
    sum: f64,
    abs_sum: f64,
    mean: Option<f64>,
    min: Option<f64>,
    max: Option<f64>,
    var: Option<f64>,
}

fn reference(values: &[f64]) -> Ref {
    let vals: Vec<f64> = values.iter().copied().filter(|v| !v.is_nan()).collect();
    let n = vals.len();
    let sum: f64 = vals.iter().sum();
    let abs_sum: f64 = vals.iter().map(|v| v.abs()).sum();
    let mean = (n > 0).then(|| sum / n as f64);
    let var = mean.map(|m| vals.iter().map(|v| (v - m) * (v - m)).sum::<f64>() / n as f64);
    Ref {
        count: n as u64,
        nan: (values.len() - n) as u64,
        inf: vals.iter().filter(|v| v.is_infinite()).count() as u64,
        sum,
        abs_sum,
        mean,
        min: vals.iter().copied().reduce(f64::min),
        max: vals.iter().copied().reduce(f64::max),
        var,
    }
}

/// A JSON statistic as a number: null -> None, the strings for non-finite values included.
fn num(v: &Value) -> Option<f64> {
    match v {
        Value::Null => None,
        Value::Number(n) => n.as_f64(),
        Value::String(s) => match s.as_str() {
            "inf" => Some(f64::INFINITY),
            "-inf" => Some(f64::NEG_INFINITY),
            "nan" => Some(f64::NAN),
            other => panic!("unexpected string statistic {other:?}"),
        },
        other => panic!("unexpected statistic {other}"),
    }
}

fn close(got: f64, want: f64, tol: f64) -> bool {
    if want.is_nan() || got.is_nan() {
        return want.is_nan() && got.is_nan();
    }
    if want.is_infinite() || got.is_infinite() {
        return got == want;
    }
    (got - want).abs() <= tol
}

/// Checks one column's JSON statistics against the reference of its values.
fn check_stats(what: &str, got: &Value, values: &[f64], integer: bool) {
    let obj = got.as_object().unwrap_or_else(|| panic!("{what}: not an object: {got}"));
    let keys: Vec<&str> = obj.keys().map(String::as_str).collect();
    assert_eq!(keys, STAT_KEYS, "{what}: stat keys and their order");
    let r = reference(values);
    assert_eq!(got["count"].as_u64(), Some(r.count), "{what}: count");
    assert_eq!(got["nan_count"].as_u64(), Some(r.nan), "{what}: nan_count");
    assert_eq!(got["inf_count"].as_u64(), Some(r.inf), "{what}: inf_count");
    let sum = num(&got["sum"]).unwrap_or_else(|| panic!("{what}: sum is null"));
    assert!(close(sum, r.sum, 1e-9 * r.abs_sum + 1e-300), "{what}: sum {sum} vs {}", r.sum);
    match (num(&got["mean"]), r.mean) {
        (None, None) => {}
        (Some(g), Some(w)) => assert!(close(g, w, 1e-9 * r.abs_sum / r.count as f64 + 1e-300), "{what}: mean {g} vs {w}"),
        (g, w) => panic!("{what}: mean {g:?} vs {w:?}"),
    }
    for (key, want) in [("min", r.min), ("max", r.max)] {
        let v = &got[key];
        match want {
            None => assert!(v.is_null(), "{what}: {key} should be null, got {v}"),
            Some(w) => {
                if integer {
                    assert!(v.is_u64() || v.is_i64(), "{what}: {key} of an integer column must be a JSON integer, got {v}");
                } else {
                    assert!(v.is_f64() || v.is_string(), "{what}: {key} of a float column must be a JSON float, got {v}");
                }
                assert_eq!(num(v), Some(w), "{what}: {key}");
            }
        }
    }
    match (num(&got["var"]), r.var) {
        (None, None) => assert!(got["std"].is_null(), "{what}: std should be null"),
        (Some(g), Some(w)) => {
            assert!(close(g, w, 1e-6 * w.abs() + 1e-12), "{what}: var {g} vs {w}");
            let s = num(&got["std"]).expect("std");
            assert!(close(s, w.sqrt(), 1e-6 * w.sqrt() + 1e-12), "{what}: std {s} vs {}", w.sqrt());
        }
        (g, w) => panic!("{what}: var {g:?} vs {w:?}"),
    }
}

fn keys(v: &Value) -> Vec<&str> {
    v.as_object().map(|o| o.keys().map(String::as_str).collect()).unwrap_or_default()
}

fn f64s(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| f64::from(x)).collect()
}

/// Values of `v` at the selected rows.
fn pick<T: Copy>(v: &[T], sel: &[bool]) -> Vec<T> {
    v.iter().zip(sel).filter(|(_, s)| **s).map(|(x, _)| *x).collect()
}

// ------------------------------------------------------------------ npy helpers

#[derive(Debug)]
struct Npy {
    descr: String,
    fortran: bool,
    shape: Vec<usize>,
    data: Vec<u8>,
}

/// A minimal .npy reader for checking outputs.
fn read_npy(path: &Path) -> Npy {
    let b = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(b.starts_with(b"\x93NUMPY"), "{}: no npy magic", path.display());
    let (len, start) = match b[6] {
        1 => (u16::from_le_bytes([b[8], b[9]]) as usize, 10),
        2 | 3 => (u32::from_le_bytes(b[8..12].try_into().expect("4 bytes")) as usize, 12),
        v => panic!("{}: npy version {v}", path.display()),
    };
    let header = std::str::from_utf8(&b[start..start + len]).expect("npy header is text");
    assert!(header.ends_with('\n'), "npy header should end with a newline: {header:?}");
    let after = |key: &str| -> &str {
        let at = header.find(key).unwrap_or_else(|| panic!("npy header lacks {key}: {header}"));
        &header[at + key.len()..]
    };
    let descr = after("'descr': '").split('\'').next().expect("descr").to_string();
    let fortran = after("'fortran_order': ").starts_with("True");
    let shape_text = after("'shape': (").split(')').next().expect("shape");
    let shape = shape_text.split(',').map(str::trim).filter(|s| !s.is_empty()).map(|s| s.parse().expect("shape dim")).collect();
    Npy { descr, fortran, shape, data: b[start + len..].to_vec() }
}

/// Python that prints `{"shape": [...], "dtype": "<f4"}` for an .npy file and
/// `{"name": [shape...]}` for a safetensors file, reading it with numpy only.
const NUMPY_SHAPES: &str = r#"
import json, struct, sys
import numpy as np
p = sys.argv[1]
if p.endswith('.npy'):
    a = np.load(p)
    print(json.dumps({"shape": list(a.shape), "dtype": a.dtype.str}))
else:
    b = open(p, 'rb').read()
    n = struct.unpack('<Q', b[:8])[0]
    h = json.loads(b[8:8 + n].decode('utf-8'))
    data = b[8 + n:]
    m = {'F32': '<f4', 'F16': '<f2', 'BF16': '<u2', 'F64': '<f8', 'U8': '|u1', 'I8': '|i1', 'I16': '<i2', 'U16': '<u2',
         'I32': '<i4', 'U32': '<u4', 'I64': '<i8', 'U64': '<u8', 'BOOL': '|b1'}
    out = {}
    for k, v in h.items():
        if k == '__metadata__':
            continue
        s, e = v['data_offsets']
        out[k] = list(np.frombuffer(data[s:e], dtype=m[v['dtype']]).reshape(v['shape']).shape)
    print(json.dumps(out))
"#;

fn numpy_shapes(path: &Path) -> Value {
    let out = python(NUMPY_SHAPES, &[&path.display().to_string()]);
    serde_json::from_str(out.trim()).expect("python prints JSON")
}

// ------------------------------------------------------------------ stats

#[test]
fn stats_json_shape_and_values() {
    let s = seed("stats_json_shape_and_values");
    let dir = TempDir::new("stats");
    let g = gen_data(&dir, "d.safetensors", 3001, 5, s);
    let v = run(&["stats", &g.path, "--json"]).json();
    assert_eq!(keys(&v), ["rows", "rows_selected", "columns"]);
    assert_eq!(v["rows"].as_u64(), Some(g.rows as u64));
    assert_eq!(v["rows_selected"].as_u64(), Some(g.rows as u64));
    assert_eq!(keys(&v["columns"]), ["f0", "f1", "f2", "f3", "f4", "key"], "all numeric columns in file order");
    for (j, col) in g.f.iter().enumerate() {
        check_stats(&format!("f{j}"), &v["columns"][format!("f{j}")], &f64s(col), false);
    }
    let key: Vec<f64> = g.key.iter().map(|&k| f64::from(k)).collect();
    check_stats("key", &v["columns"]["key"], &key, true);

    // --columns: exactly those columns, in the order asked, with the same numbers.
    let sub = run(&["stats", &g.path, "--columns", "f3,key", "--json"]).json();
    assert_eq!(keys(&sub["columns"]), ["f3", "key"]);
    assert_eq!(sub["columns"]["f3"], v["columns"]["f3"]);
    assert_eq!(sub["columns"]["key"], v["columns"]["key"]);
    let one = run(&["stats", &g.path, "--columns", "f1", "--json"]).json();
    assert_eq!(keys(&one["columns"]), ["f1"]);
    // A column listed twice is a usage error (the text table would show it twice, the JSON once).
    run(&["stats", &g.path, "--columns", "f1,f3,f1"]).fails_one_line(&["f1", "twice"]);
    run(&["stats", &g.path, "--columns", "f1", "--columns", "f1", "--json"]).fails_one_line(&["f1", "twice"]);

    // Plain text works too and mentions every column.
    let text = run(&["stats", &g.path]).ok().to_string();
    for c in ["f0", "f4", "key"] {
        assert!(text.contains(c), "text output lacks {c}: {text}");
    }
}

#[test]
fn stats_zero_and_one_row() {
    let dir = TempDir::new("rows01");
    let g0 = gen_data(&dir, "zero.safetensors", 0, 2, 1);
    let v = run(&["stats", &g0.path, "--json"]).json();
    assert_eq!((v["rows"].as_u64(), v["rows_selected"].as_u64()), (Some(0), Some(0)));
    for c in ["f0", "f1", "key"] {
        let s = &v["columns"][c];
        assert_eq!((s["count"].as_u64(), s["sum"].as_f64()), (Some(0), Some(0.0)), "{c}: the sum of no values is 0");
        for k in ["mean", "min", "max", "var", "std"] {
            assert!(s[k].is_null(), "{c}.{k} of no values must be null: {s}");
        }
    }
    let g = v["columns"].clone();
    let by = run(&["stats", &g0.path, "--by", "key", "--json"]).json();
    assert_eq!(by["groups"], Value::Array(vec![]), "no groups for no rows; {g}");
    run(&["hist", &g0.path, "--column", "f0"]).fails_one_line(&["f0"]);

    let g1 = gen_data(&dir, "one.safetensors", 1, 2, 1);
    let v = run(&["stats", &g1.path, "--json"]).json();
    check_stats("f1 (1 row)", &v["columns"]["f1"], &f64s(&g1.f[1]), false);
    assert_eq!(v["columns"]["f1"]["var"].as_f64(), Some(0.0));
}

#[test]
fn stats_by_key() {
    let s = seed("stats_by_key");
    let dir = TempDir::new("by");
    let g = gen_data(&dir, "d.safetensors", 20_000, 3, s);
    // key 3 is common in gen's data but left out by the filter: no group for it.
    let filter = "key != 3 and (f1 < 0.5 or key > 40)";
    let v = run(&["stats", &g.path, "--by", "key", "--where", filter, "--json"]).json();
    assert_eq!(keys(&v), ["rows", "rows_selected", "groups"]);
    let sel: Vec<bool> = (0..g.rows).map(|r| g.key[r] != 3 && (g.f[1][r] < 0.5 || g.key[r] > 40)).collect();
    let selected = sel.iter().filter(|s| **s).count();
    assert_eq!(v["rows"].as_u64(), Some(g.rows as u64));
    assert_eq!(v["rows_selected"].as_u64(), Some(selected as u64));

    let groups = v["groups"].as_array().expect("groups array");
    let mut expected_keys: Vec<u8> = pick(&g.key, &sel);
    expected_keys.sort_unstable();
    expected_keys.dedup();
    let got_keys: Vec<u64> = groups.iter().map(|gr| gr["key"].as_u64().expect("integer key")).collect();
    assert_eq!(got_keys, expected_keys.iter().map(|&k| u64::from(k)).collect::<Vec<_>>(), "groups sorted by key, none empty");
    assert!(!got_keys.contains(&3));
    let mut total = 0;
    for gr in groups {
        assert_eq!(keys(gr), ["key", "rows", "columns"]);
        let k = gr["key"].as_u64().expect("key") as u8;
        let rows: Vec<bool> = (0..g.rows).map(|r| sel[r] && g.key[r] == k).collect();
        let n = rows.iter().filter(|s| **s).count();
        assert!(n > 0);
        assert_eq!(gr["rows"].as_u64(), Some(n as u64), "rows of key {k}");
        total += n;
        assert_eq!(keys(&gr["columns"]), ["f0", "f1", "f2"], "the key column is not listed");
        for j in 0..3 {
            check_stats(&format!("key {k} f{j}"), &gr["columns"][format!("f{j}")], &f64s(&pick(&g.f[j], &rows)), false);
        }
    }
    assert_eq!(total, selected);

    // Grouping by a float column, or listing the key among the columns, is an error.
    run(&["stats", &g.path, "--by", "f0"]).fails(&["f0"]);
    run(&["stats", &g.path, "--by", "key", "--columns", "key,f0"]).fails(&["key"]);
}

// ------------------------------------------------------------------ expressions

/// A file with a 2-D tensor `x` [N, 3] (columns `x:0..x:2`) and an i32 column `k` that
/// holds integers f32 cannot tell apart.
fn expr_data(dir: &TempDir, s: u64) -> (String, Vec<[f32; 3]>, Vec<i32>) {
    let mut rng = Rng(s);
    let n: usize = 5000;
    let x: Vec<[f32; 3]> = (0..n)
        .map(|_| {
            let mut row = [0f32; 3];
            for v in &mut row {
                *v = if rng.uniform() < 0.05 { f32::NAN } else { (rng.uniform() * 2.0 - 1.0) as f32 };
            }
            row
        })
        .collect();
    let k: Vec<i32> = (0..n as i32).map(|i| [16_777_216, 16_777_217, 16_777_218, -5, i][(rng.next() % 5) as usize]).collect();
    let path = dir.s("x.safetensors");
    let xb: Vec<u8> = x.iter().flat_map(|r| r.iter().flat_map(|v| v.to_le_bytes())).collect();
    let kb: Vec<u8> = k.iter().flat_map(|v| v.to_le_bytes()).collect();
    write_st(Path::new(&path), &[("x", "F32", vec![n as u64, 3], xb), ("k", "I32", vec![n as u64], kb)]);
    (path, x, k)
}

#[test]
fn where_aliases_backticks_and_precedence() {
    let s = seed("where_aliases_backticks_and_precedence");
    let dir = TempDir::new("where");
    let (path, x, k) = expr_data(&dir, s);
    let info = run(&["info", &path, "--json"]).json();
    let cols: Vec<&str> = info["columns"].as_array().expect("columns").iter().filter_map(|c| c["name"].as_str()).collect();
    assert_eq!(cols, ["x:0", "x:1", "x:2", "k"]);

    let words = run(&["stats", &path, "--where", "`x:0` > 0 and not (`x:1` < 0.5 or isnan(`x:2`))", "--json"]).json();
    let symbols = run(&["stats", &path, "--where", "`x:0` > 0 && !(`x:1` < 0.5 || isnan(`x:2`))", "--json"]).json();
    assert_eq!(words, symbols, "`and or not` are aliases of `&& || !`");
    let sel: Vec<bool> = x.iter().map(|r| r[0] > 0.0 && !(r[1] < 0.5 || r[2].is_nan())).collect();
    assert_eq!(words["rows_selected"].as_u64(), Some(sel.iter().filter(|s| **s).count() as u64));
    let x2: Vec<f32> = x.iter().map(|r| r[2]).collect();
    check_stats("x:2 where", &words["columns"]["x:2"], &f64s(&pick(&x2, &sel)), false);

    let count = |filter: &str| -> u64 {
        run(&["stats", &path, "--where", filter, "--columns", "k", "--json"]).json()["rows_selected"].as_u64().expect("rows_selected")
    };
    // `!` binds looser than comparisons, and comparisons with NaN are false.
    assert_eq!(count("not `x:0` > 0"), x.iter().filter(|r| r[0].partial_cmp(&0.0) != Some(std::cmp::Ordering::Greater)).count() as u64);
    // `&&` binds tighter than `||`.
    assert_eq!(
        count("`x:0` > 0.5 or `x:1` > 0.5 and k < 0"),
        x.iter().zip(&k).filter(|(r, k)| r[0] > 0.5 || (r[1] > 0.5 && **k < 0)).count() as u64
    );
    // Integer columns compare as integers: no f32 rounding of 16777217.
    assert_eq!(count("k == 16777217"), k.iter().filter(|&&v| v == 16_777_217).count() as u64);
    assert_eq!(count("k >= 16777217 and k < 16777218"), k.iter().filter(|&&v| v == 16_777_217).count() as u64);
    assert_eq!(count("isnan(`x:1`)"), x.iter().filter(|r| r[1].is_nan()).count() as u64);
    assert_eq!(count("abs(`x:0`) <= 0.25 || false"), x.iter().filter(|r| r[0].abs() <= 0.25).count() as u64);
}

/// Checks the one-line error marks `position` in the echoed expression: `f0 > [>] 1`.
fn check_caret(stderr: &str, expr: &str) {
    assert_eq!(stderr.trim_end().lines().count(), 1, "one line: {stderr}");
    let first = stderr.lines().next().unwrap_or_default();
    assert!(first.starts_with("tilestream: "), "{stderr}");
    let at = first.find("position ").unwrap_or_else(|| panic!("no position in {first:?}"));
    let pos: usize = first[at + 9..].chars().take_while(char::is_ascii_digit).collect::<String>().parse().expect("position number");
    let next = expr[pos..].chars().next().map_or(pos, |c| pos + c.len_utf8());
    let marked = format!("{}[{}]{}", &expr[..pos], &expr[pos..next], &expr[next..]);
    assert!(first.ends_with(&marked), "position {pos} marked in `{marked}`: {stderr}");
}

#[test]
fn where_errors_show_the_position() {
    let dir = TempDir::new("wherebad");
    let g = gen_data(&dir, "d.safetensors", 100, 2, 3);
    for (expr, pos) in [("f0 > > 1", 5), ("f0 + ", 5), ("(f0 > 1", 7), ("f0 > 1 and", 10), ("f0 $ 1", 3)] {
        let r = run(&["stats", &g.path, "--where", expr]);
        let e = r.fails(&["position"]).to_string();
        check_caret(&e, expr);
        assert!(e.contains(&format!("position {pos}")), "{expr}: expected position {pos}: {e}");
    }
    // Type and name errors point into the text too.
    for expr in ["nosuchfn(f0) > 1", "f0 > 1 + (2 > 1)"] {
        let e = run(&["stats", &g.path, "--where", expr]).fails(&[]).to_string();
        assert!(e.contains("position"), "{expr}: {e}");
        check_caret(&e, expr);
    }
    // The same for --with in transform, and nothing is written.
    let out = dir.path("o.safetensors");
    run(&["transform", &g.path, "-o", &out.display().to_string(), "--with", "s=f0 * * 2"]).fails(&["position"]);
    assert!(!out.exists());
}

#[test]
fn unknown_columns_exit_2_naming_them() {
    let dir = TempDir::new("unknown");
    let g = gen_data(&dir, "d.safetensors", 100, 2, 3);
    let out = dir.s("o.safetensors");
    let cases: Vec<Vec<&str>> = vec![
        vec!["stats", &g.path, "--columns", "f0,nope"],
        vec!["stats", &g.path, "--by", "nope"],
        vec!["stats", &g.path, "--where", "nope > 1"],
        vec!["hist", &g.path, "--column", "nope"],
        vec!["transform", &g.path, "-o", &out, "--standardize", "nope"],
        vec!["transform", &g.path, "-o", &out, "--select", "f0,nope"],
        vec!["transform", &g.path, "-o", &out, "--clip", "nope=0:1"],
        vec!["transform", &g.path, "-o", &out, "--with", "s=nope + 1"],
    ];
    for args in cases {
        run(&args).fails(&["nope"]);
        assert!(!Path::new(&out).exists(), "{args:?} left an output file");
    }
    // A missing input file is named too.
    let missing = dir.s("missing.safetensors");
    run(&["stats", &missing]).fails_one_line(&[&missing]);
}

/// `--threads` takes 1 to 1024: 0 was taken as 1 silently, and 100,000 threads aborted the
/// process (exit 134) while 20,000 ran for minutes on a one-row file.
#[test]
fn thread_counts_out_of_range_exit_2() {
    let dir = TempDir::new("threads");
    let g = gen_data(&dir, "d.safetensors", 10, 1, 5);
    for n in ["0", "1025", "100000", "many"] {
        run(&["--threads", n, "stats", &g.path]).fails(&["1 to 1024"]);
    }
    run(&["--quiet", "--threads", "1024", "stats", &g.path, "--json"]).json();
    // The library refuses as well.
    let ds = tilestream::Dataset::open(&g.path).unwrap();
    for n in [0, 1025] {
        let opts = tilestream::RunOptions { threads: Some(n), ..tilestream::RunOptions::default() };
        let e = ds
            .lazy()
            .aggregate([tilestream::all_stats(["f0"])])
            .collect_with(&tilestream::Device::Cpu, &opts)
            .expect_err("threads out of range");
        assert!(e.to_string().contains("1 to 1024"), "{e}");
    }
}

/// `--select` naming a column twice is refused like `--columns` (it was accepted silently),
/// and a fill value too large for the output type is named as given (1e39 was printed as
/// forty digits).
#[test]
fn transform_mistakes_name_what_was_given() {
    let dir = TempDir::new("tmistakes");
    let g = gen_data(&dir, "d.safetensors", 10, 2, 9);
    let out = dir.s("o.safetensors");
    run(&["transform", &g.path, "-o", &out, "--select", "f0,f1,f0"]).fails(&["`f0` twice"]);
    run(&["transform", &g.path, "-o", &out, "--fill-nan", "1e39"]).fails_one_line(&["1e39", "f32"]);
    run(&["transform", &g.path, "-o", &out, "--fill-nan", "65520", "--cast", "f16"]).fails_one_line(&["65520", "f16"]);
    assert!(!Path::new(&out).exists());
}

// ------------------------------------------------------------------ hist

/// The normative bin of x, or None when x is NaN / below / above.
fn bin_of(x: f64, lo: f64, hi: f64, bins: usize) -> Result<usize, &'static str> {
    if x.is_nan() {
        return Err("nan");
    }
    if x < lo {
        return Err("below");
    }
    if x > hi {
        return Err("above");
    }
    if hi == lo {
        return Ok(0);
    }
    let i = ((x - lo) * (bins as f64 / (hi - lo))).floor();
    Ok((i as usize).min(bins - 1))
}

fn check_hist(what: &str, v: &Value, values: &[f64], lo: f64, hi: f64, bins: usize) {
    assert_eq!(keys(v), ["column", "min", "max", "bins", "counts", "below", "above", "nan", "rows_selected"], "{what}");
    assert_eq!((v["min"].as_f64(), v["max"].as_f64()), (Some(lo), Some(hi)), "{what}: range");
    assert_eq!(v["bins"].as_u64(), Some(bins as u64), "{what}");
    let mut counts = vec![0u64; bins];
    let (mut below, mut above, mut nan) = (0u64, 0u64, 0u64);
    for &x in values {
        match bin_of(x, lo, hi, bins) {
            Ok(i) => counts[i] += 1,
            Err("below") => below += 1,
            Err("above") => above += 1,
            Err(_) => nan += 1,
        }
    }
    let got: Vec<u64> = v["counts"].as_array().expect("counts").iter().map(|c| c.as_u64().expect("integer count")).collect();
    assert_eq!(got, counts, "{what}: counts");
    assert_eq!((v["below"].as_u64(), v["above"].as_u64(), v["nan"].as_u64()), (Some(below), Some(above), Some(nan)), "{what}");
    assert_eq!(v["rows_selected"].as_u64(), Some(values.len() as u64), "{what}");
}

#[test]
fn hist_json_range_bins_and_where() {
    let s = seed("hist_json_range_bins_and_where");
    let dir = TempDir::new("hist");
    let g = gen_data(&dir, "d.safetensors", 10_000, 5, s);
    let f4 = f64s(&g.f[4]); // uniform in [-100, 100) with NaN
    let finite: Vec<f64> = f4.iter().copied().filter(|x| x.is_finite()).collect();
    let (lo, hi) = (finite.iter().copied().fold(f64::INFINITY, f64::min), finite.iter().copied().fold(f64::NEG_INFINITY, f64::max));

    let v = run(&["hist", &g.path, "--column", "f4", "--json"]).json();
    assert_eq!(v["column"], "f4");
    check_hist("default", &v, &f4, lo, hi, 256);

    let v = run(&["hist", &g.path, "--column", "f4", "--bins", "17", "--json"]).json();
    check_hist("17 bins", &v, &f4, lo, hi, 17);

    let v = run(&["hist", &g.path, "--column", "f4", "--bins", "100", "--range=-50:25.5", "--json"]).json();
    check_hist("range", &v, &f4, -50.0, 25.5, 100);

    let v = run(&["hist", &g.path, "--column", "f4", "--bins", "7", "--range=-1e2:1e1", "--where", "key < 10", "--json"]).json();
    let sel: Vec<bool> = g.key.iter().map(|&k| k < 10).collect();
    check_hist("where", &v, &pick(&f4, &sel), -100.0, 10.0, 7);

    // LO == HI: every value equal to LO goes to bin 0.
    let v = run(&["hist", &g.path, "--column", "key", "--bins", "4", "--range", "0:0", "--json"]).json();
    let key: Vec<f64> = g.key.iter().map(|&k| f64::from(k)).collect();
    check_hist("lo == hi", &v, &key, 0.0, 0.0, 4);

    for bad in [vec!["--range", "5:1"], vec!["--range", "a:b"], vec!["--range", "0:inf"], vec!["--bins", "0"], vec!["--bins", "-3"]] {
        let mut args = vec!["hist", g.path.as_str(), "--column", "f4"];
        args.extend(bad);
        run(&args).fails(&[]);
    }
}

/// Option values that start with `-`: `--range -5:5` (the parser's own example) and a
/// `--where` expression with a leading unary minus. clap must not read them as flags.
#[test]
fn option_values_starting_with_a_minus_sign() {
    let dir = TempDir::new("minus");
    let g = gen_data(&dir, "d.safetensors", 1000, 5, 1);
    let joined = run(&["hist", &g.path, "--column", "f4", "--bins", "10", "--range=-5:5", "--json"]).json();
    let separate = run(&["hist", &g.path, "--column", "f4", "--bins", "10", "--range", "-5:5", "--json"]).json();
    assert_eq!(joined, separate, "--range -5:5");
    let joined = run(&["stats", &g.path, "--where=-f0 > 0.5", "--json"]).json();
    let separate = run(&["stats", &g.path, "--where", "-f0 > 0.5", "--json"]).json();
    assert_eq!(joined, separate, "--where '-f0 > 0.5'");
    run(&["hist", &g.path, "--column", "f1", "--where", "-f0 > 0.5", "--json"]).json();
    let o = dir.s("o.safetensors");
    run(&["transform", &g.path, "-o", &o, "--where", "-f0 > 0.5"]).ok();
}

#[test]
fn hist_special_values() {
    let dir = TempDir::new("hist2");
    let path = dir.s("s.safetensors");
    let vals = [1.0f32, f32::INFINITY, -2.0, f32::NAN, f32::NEG_INFINITY, 3.0, 3.0, 0.5];
    let nan = [f32::NAN; 8];
    let konst = [3.0f32; 8];
    write_st(
        Path::new(&path),
        &[
            ("v", "F32", vec![8], le_bytes_f32(&vals)),
            ("n", "F32", vec![8], le_bytes_f32(&nan)),
            ("c", "F32", vec![8], le_bytes_f32(&konst)),
        ],
    );
    // Range from the finite min/max; -inf below, +inf above.
    let v = run(&["hist", &path, "--column", "v", "--bins", "5", "--json"]).json();
    check_hist("inf", &v, &f64s(&vals), -2.0, 3.0, 5);
    // A constant column: HI == LO, everything in bin 0.
    let v = run(&["hist", &path, "--column", "c", "--bins", "3", "--json"]).json();
    check_hist("constant", &v, &f64s(&konst), 3.0, 3.0, 3);
    // No finite value: exit 2.
    run(&["hist", &path, "--column", "n"]).fails_one_line(&["n"]);
    run(&["hist", &path, "--column", "v", "--where", "v > 100"]).fails_one_line(&[]);
}

// ------------------------------------------------------------------ transform

#[test]
fn transform_safetensors_values() {
    let s = seed("transform_safetensors_values");
    let dir = TempDir::new("tf");
    let g = gen_data(&dir, "d.safetensors", 4000, 3, s);
    let out = dir.path("o.safetensors");
    let r = run(&[
        "transform",
        &g.path,
        "-o",
        &out.display().to_string(),
        "--clip",
        "f1=0.25:0.75",
        "--fill-nan",
        "-1",
        "--cast",
        "f16",
        "--json",
    ]);
    let report = r.json();
    assert_eq!(r.stdout.trim_end().lines().count(), 1, "--json prints one line");
    assert_eq!(report["rows_written"].as_u64(), Some(g.rows as u64));
    let ts = read_st(&out);
    assert_eq!(names(&ts), ["f0", "f1", "f2", "key"]);
    for t in &ts[..3] {
        assert_eq!((t.dtype, t.shape.as_slice()), (Dtype::F16, &[g.rows][..]), "{}", t.name);
    }
    assert_eq!(tensor(&ts, "key").dtype, Dtype::U8);
    assert_eq!(tensor(&ts, "key").data, g.key, "integer columns pass through");
    let expect = |vals: &[f32], f: &dyn Fn(f32) -> f32| -> Vec<u16> {
        vals.iter().map(|&x| f(x)).map(|x| if x.is_nan() { -1.0 } else { x }).map(|x| f16::from_f32(x).to_bits()).collect()
    };
    assert_eq!(u16s(&tensor(&ts, "f0").data), expect(&g.f[0], &|x| x), "f0: fill-nan then f16");
    assert_eq!(u16s(&tensor(&ts, "f1").data), expect(&g.f[1], &|x| x.clamp(0.25, 0.75)), "f1: clip then f16");
    assert_eq!(u16s(&tensor(&ts, "f2").data), expect(&g.f[2], &|x| x), "f2: f16");

    // Filter + select: the right rows in order, untouched columns keep dtype and bits.
    let out2 = dir.path("filtered.safetensors");
    run(&["transform", &g.path, "-o", &out2.display().to_string(), "--where", "f1 > 0.5 and key != 0", "--select", "f1,key"]).ok();
    let sel: Vec<bool> = (0..g.rows).map(|r| g.f[1][r] > 0.5 && g.key[r] != 0).collect();
    let ts = read_st(&out2);
    assert_eq!(names(&ts), ["f1", "key"]);
    assert_eq!(tensor(&ts, "f1").dtype, Dtype::F32);
    assert_eq!(tensor(&ts, "f1").data, le_bytes_f32(&pick(&g.f[1], &sel)));
    assert_eq!(tensor(&ts, "key").data, pick(&g.key, &sel));

    // --with: a new column goes last (f32, computed in f32), a replaced one keeps its place.
    let out3 = dir.path("with.safetensors");
    run(&["transform", &g.path, "-o", &out3.display().to_string(), "--with", "s=f0 + f1 * 2", "--with", "f1=abs(f2 - 1)"]).ok();
    let ts = read_st(&out3);
    assert_eq!(names(&ts), ["f0", "f1", "f2", "key", "s"]);
    let s_exp: Vec<f32> = (0..g.rows).map(|r| g.f[0][r] + g.f[1][r] * 2.0).collect();
    let f1_exp: Vec<f32> = g.f[2].iter().map(|x| (x - 1.0).abs()).collect();
    assert_eq!(tensor(&ts, "s").dtype, Dtype::F32);
    assert_eq!(
        f32s(&tensor(&ts, "s").data).iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
        s_exp.iter().map(|x| x.to_bits()).collect::<Vec<_>>()
    );
    assert_eq!(f32s(&tensor(&ts, "f1").data), f1_exp);
    assert_eq!(tensor(&ts, "f0").data, le_bytes_f32(&g.f[0]), "a column no transform names passes through");

    // A filter that keeps nothing writes a valid empty file.
    let out4 = dir.path("empty.safetensors");
    run(&["transform", &g.path, "-o", &out4.display().to_string(), "--where", "f1 > 2"]).ok();
    let ts = read_st(&out4);
    assert!(ts.iter().all(|t| t.shape == [0]), "{ts:?}");

    if numpy_available("transform_safetensors_values") {
        for (p, n) in [(&out, g.rows), (&out4, 0)] {
            let shapes = numpy_shapes(p);
            for c in ["f0", "f1", "f2", "key"] {
                assert_eq!(shapes[c], serde_json::json!([n]), "{}: numpy sees {shapes}", p.display());
            }
        }
    }
}

#[test]
fn transform_npy_output() {
    let s = seed("transform_npy_output");
    let dir = TempDir::new("npy");
    let g = gen_data(&dir, "d.safetensors", 3000, 3, s);
    let out = dir.path("o.npy");
    run(&["transform", &g.path, "-o", &out.display().to_string(), "--select", "f2,f0"]).ok();
    let n = read_npy(&out);
    assert_eq!((n.descr.as_str(), n.fortran, n.shape.as_slice()), ("<f4", false, &[g.rows, 2][..]));
    // [N, F] in column order: the input's order (f0 before f2), row-major.
    let expected: Vec<f32> = (0..g.rows).flat_map(|r| [g.f[0][r], g.f[2][r]]).collect();
    assert_eq!(n.data, le_bytes_f32(&expected));

    let out16 = dir.path("o16.npy");
    run(&["transform", &g.path, "-o", &out16.display().to_string(), "--select", "f0,f1", "--cast", "f16", "--fill-nan", "0"]).ok();
    let n16 = read_npy(&out16);
    assert_eq!((n16.descr.as_str(), n16.shape.as_slice()), ("<f2", &[g.rows, 2][..]));
    let expected: Vec<u16> =
        (0..g.rows).flat_map(|r| [g.f[0][r], g.f[1][r]]).map(|x| f16::from_f32(if x.is_nan() { 0.0 } else { x }).to_bits()).collect();
    assert_eq!(u16s(&n16.data), expected);

    // Mixed dtypes (f32 and the u8 key) cannot be one npy matrix.
    let mixed = dir.path("mixed.npy");
    run(&["transform", &g.path, "-o", &mixed.display().to_string()]).fails(&[".safetensors"]);
    assert!(!mixed.exists(), "a refused npy output must leave no file");

    // Zero rows: a valid (0, F) array.
    let empty = dir.path("empty.npy");
    run(&["transform", &g.path, "-o", &empty.display().to_string(), "--select", "f0,f1", "--where", "key > 200"]).ok();
    assert_eq!(read_npy(&empty).shape, [0, 2]);

    if numpy_available("transform_npy_output") {
        assert_eq!(numpy_shapes(&out), serde_json::json!({"shape": [g.rows, 2], "dtype": "<f4"}));
        assert_eq!(numpy_shapes(&out16), serde_json::json!({"shape": [g.rows, 2], "dtype": "<f2"}));
        assert_eq!(numpy_shapes(&empty), serde_json::json!({"shape": [0, 2], "dtype": "<f4"}));
        let sum = python(
            "import sys, numpy as np; a = np.load(sys.argv[1]).astype(np.float64); print(repr(float(np.nansum(a[:, 1]))))",
            &[&out.display().to_string()],
        );
        let want: f64 = g.f[2].iter().filter(|x| !x.is_nan()).map(|&x| f64::from(x)).sum();
        let got: f64 = sum.trim().parse().expect("a float");
        assert!((got - want).abs() <= 1e-9 * want.abs().max(1.0), "numpy reads column 1 as f2: {got} vs {want}");
    }
}

#[test]
fn transform_refuses_existing_out_and_inputs() {
    let dir = TempDir::new("force");
    let g = gen_data(&dir, "d.safetensors", 500, 2, 9);
    let input_bytes = std::fs::read(&g.path).expect("input");
    let out = dir.path("o.safetensors");
    std::fs::write(&out, b"keep me").expect("write");
    let o = out.display().to_string();
    run(&["transform", &g.path, "-o", &o, "--standardize", "all"]).fails_one_line(&["o.safetensors"]);
    assert_eq!(std::fs::read(&out).expect("out"), b"keep me", "a refused run leaves OUT untouched");
    run(&["transform", &g.path, "-o", &o, "--standardize", "all", "--force"]).ok();
    assert_eq!(names(&read_st(&out)), ["f0", "f1", "key"]);

    // OUT equal to an input, however spelled, is refused even with --force.
    let dotted = dir.0.join(".").join("d.safetensors").display().to_string();
    let link = dir.path("link.safetensors");
    std::os::unix::fs::symlink(&g.path, &link).expect("symlink");
    for target in [g.path.clone(), dotted, link.display().to_string()] {
        run(&["transform", &g.path, "-o", &target, "--force"]).fails(&[]);
        assert_eq!(std::fs::read(&g.path).expect("input"), input_bytes, "-o {target} changed the input");
    }

    // gen does not overwrite without --force either.
    let existing = dir.path("exists.safetensors");
    std::fs::write(&existing, b"keep").expect("write");
    run(&["gen", &existing.display().to_string(), "--rows", "10"]).fails_one_line(&[]);
    assert_eq!(std::fs::read(&existing).expect("read"), b"keep");
}

#[test]
fn transform_second_input_as_out_is_refused() {
    let dir = TempDir::new("force2");
    let a = dir.path("a.npy");
    let b = dir.path("b.npy");
    let npy = |descr: &str, data: Vec<u8>, n: usize| -> Vec<u8> {
        let mut h = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': ({n},), }}");
        while !(10 + h.len() + 1).is_multiple_of(64) {
            h.push(' ');
        }
        h.push('\n');
        let mut out = b"\x93NUMPY\x01\x00".to_vec();
        out.extend_from_slice(&(h.len() as u16).to_le_bytes());
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(&data);
        out
    };
    std::fs::write(&a, npy("<f4", le_bytes_f32(&[1.0, 2.0, 3.0]), 3)).expect("a");
    std::fs::write(&b, npy("<f4", le_bytes_f32(&[4.0, 5.0, 6.0]), 3)).expect("b");
    let b_bytes = std::fs::read(&b).expect("b");
    let (a_s, b_s) = (a.display().to_string(), b.display().to_string());
    run(&["transform", &a_s, &b_s, "-o", &b_s, "--force"]).fails(&[]);
    assert_eq!(std::fs::read(&b).expect("b"), b_bytes);
    // Side by side into one safetensors file: columns a and b.
    let out = dir.path("ab.safetensors");
    run(&["transform", &a_s, &b_s, "-o", &out.display().to_string(), "--minmax", "all"]).ok();
    let ts = read_st(&out);
    assert_eq!(names(&ts), ["a", "b"]);
    assert_eq!(f32s(&tensor(&ts, "a").data), [0.0, 0.5, 1.0]);
    assert_eq!(f32s(&tensor(&ts, "b").data), [0.0, 0.5, 1.0]);
}

/// Distance in bf16 steps between two bf16 bit patterns (sign-magnitude ordered).
fn bf16_steps(a: u16, b: u16) -> i64 {
    let ord = |x: u16| if x & 0x8000 != 0 { -i64::from(x & 0x7fff) } else { i64::from(x) };
    (ord(a) - ord(b)).abs()
}

/// Population mean and std of the non-NaN values.
fn mean_std(v: &[f64]) -> (f64, f64) {
    let r = reference(v);
    (r.mean.expect("values"), r.var.expect("values").sqrt())
}

/// Checks `got` (bf16 bits) against the f64 results `want` (NaN means the fill value 0).
fn check_bf16(what: &str, got: &[u16], want: &[f64], abs: f64) {
    assert_eq!(got.len(), want.len(), "{what}: rows");
    let mut worst = 0;
    for (r, (&g, &w)) in got.iter().zip(want).enumerate() {
        let w = if w.is_nan() { 0.0 } else { w };
        let steps = bf16_steps(g, bf16::from_f64(w).to_bits());
        let gv = bf16::from_bits(g).to_f64();
        if steps > 1 && (gv - w).abs() > abs {
            panic!("{what}: row {r}: got {gv} ({g:#06x}), want {w} ({} bf16 steps)", steps);
        }
        worst = worst.max(steps);
    }
    eprintln!("{what}: worst {worst} bf16 steps");
}

#[test]
fn save_fit_and_apply_reproduce() {
    let s = seed("save_fit_and_apply_reproduce");
    let dir = TempDir::new("fit");
    let g = gen_data(&dir, "d.safetensors", 20_000, 4, s);
    let flags = [
        "--where",
        "key < 40",
        "--clip",
        "f0=-2:2",
        "--log1p",
        "f2",
        "--standardize",
        "f0,f3",
        "--minmax",
        "f2",
        "--fill-nan",
        "0",
        "--cast",
        "bf16",
    ];
    let (a, b, c) = (dir.s("a.safetensors"), dir.s("b.safetensors"), dir.s("c.safetensors"));
    let fit = dir.s("fit.json");
    let mut args = vec!["transform", g.path.as_str(), "-o", &a];
    args.extend(flags);
    run(&args).ok();
    let mut args = vec!["transform", g.path.as_str(), "-o", &b, "--save-fit", &fit];
    args.extend(flags);
    run(&args).ok();
    run(&["transform", &g.path, "-o", &c, "--apply", &fit, "--where", "key < 40"]).ok();
    let (ab, bb, cb) = (std::fs::read(&a).expect("a"), std::fs::read(&b).expect("b"), std::fs::read(&c).expect("c"));
    assert!(ab == bb, "--save-fit changes the output");
    assert!(bb == cb, "--apply FIT.json does not reproduce the fit+transform output byte for byte");

    // The fit file.
    let f: Value = serde_json::from_str(&std::fs::read_to_string(&fit).expect("fit")).expect("fit is JSON");
    assert_eq!(f["format"], "tilestream-fit");
    assert_eq!(f["version"], 1);
    assert_eq!(f["fill_nan"].as_f64(), Some(0.0));
    assert_eq!(f["cast"], "bf16");
    let steps = f["steps"].as_array().expect("steps");
    for st in steps {
        assert!(st["column"].is_string() && st["op"].is_string() && st["params"].is_object(), "step {st}");
    }
    let ops: Vec<(String, String)> =
        steps.iter().map(|st| (st["column"].as_str().unwrap_or("").to_string(), st["op"].as_str().unwrap_or("").to_string())).collect();
    for want in [("f0", "clip"), ("f0", "standardize"), ("f3", "standardize"), ("f2", "log1p"), ("f2", "minmax")] {
        assert!(ops.contains(&(want.0.to_string(), want.1.to_string())), "fit lacks {want:?}: {ops:?}");
    }

    // Values: fitted on the selected rows after clip / log1p; standardize within 1 bf16 step.
    let sel: Vec<bool> = g.key.iter().map(|&k| k < 40).collect();
    let f0: Vec<f64> = pick(&g.f[0], &sel).iter().map(|&x| f64::from(x.clamp(-2.0, 2.0))).collect();
    let f3: Vec<f64> = f64s(&pick(&g.f[3], &sel));
    let f2: Vec<f64> = pick(&g.f[2], &sel).iter().map(|&x| f64::from(x).ln_1p()).collect();
    let ts = read_st(Path::new(&a));
    assert_eq!(names(&ts), ["f0", "f1", "f2", "f3", "key"]);
    assert!(ts[..4].iter().all(|t| t.dtype == Dtype::BF16), "every float column is cast");
    assert_eq!(tensor(&ts, "key").data, pick(&g.key, &sel));
    let (m0, s0) = mean_std(&f0);
    let (m3, s3) = mean_std(&f3);
    let r2 = reference(&f2);
    let (lo2, hi2) = (r2.min.expect("min"), r2.max.expect("max"));
    check_bf16("f0", &u16s(&tensor(&ts, "f0").data), &f0.iter().map(|x| (x - m0) / s0).collect::<Vec<_>>(), 0.0);
    check_bf16("f3", &u16s(&tensor(&ts, "f3").data), &f3.iter().map(|x| (x - m3) / s3).collect::<Vec<_>>(), 0.0);
    check_bf16("f2", &u16s(&tensor(&ts, "f2").data), &f2.iter().map(|y| (y - lo2) / (hi2 - lo2)).collect::<Vec<_>>(), 1e-5);
    let f1: Vec<f64> = f64s(&pick(&g.f[1], &sel));
    check_bf16("f1", &u16s(&tensor(&ts, "f1").data), &f1, 0.0);

    // Applied to another file: the saved parameters, not a refit.
    let g2 = gen_data(&dir, "e.safetensors", 5000, 4, s.wrapping_add(1));
    let d = dir.s("applied.safetensors");
    run(&["transform", &g2.path, "-o", &d, "--apply", &fit]).ok();
    let ts = read_st(Path::new(&d));
    assert_eq!(ts[0].shape, [g2.rows]);
    let f3b: Vec<f64> = f64s(&g2.f[3]).iter().map(|x| (x - m3) / s3).collect();
    check_bf16("f3 applied", &u16s(&tensor(&ts, "f3").data), &f3b, 0.0);
    let f0b: Vec<f64> = g2.f[0].iter().map(|&x| (f64::from(x.clamp(-2.0, 2.0)) - m0) / s0).collect();
    check_bf16("f0 applied", &u16s(&tensor(&ts, "f0").data), &f0b, 0.0);
}

/// Values so large that the f64 arithmetic behind a statistic overflows (x - pivot, sums
/// of squares, a histogram's or min-max's width) are refused with the column named, never
/// reported as wrong numbers (a mean of -inf for [1e308, 1e308, -1e308] was); what f64 does
/// hold is still answered, and infinities in the data keep their contract.
#[test]
fn overflowing_statistics_are_refused() {
    let dir = TempDir::new("overflow");
    let f64s_le = |v: &[f64]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    let p = dir.s("o.safetensors");
    write_st(
        Path::new(&p),
        &[
            ("o", "F64", vec![3], f64s_le(&[1e308, 1e308, -1e308])),
            ("w", "F64", vec![3], f64s_le(&[1e200, -1e200, 0.0])),
            ("i", "F64", vec![3], f64s_le(&[f64::INFINITY, 1.0, 2.0])),
        ],
    );
    run(&["stats", &p, "--columns", "o", "--json"]).fails_one_line(&["`o`", "overflow"]);
    run(&["stats", &p, "--columns", "w", "--json"]).fails_one_line(&["`w`", "overflow"]);
    let v = run(&["stats", &p, "--columns", "o", "--where", "o > 0", "--json"]).json();
    assert_eq!(v["columns"]["o"]["sum"], "inf", "1e308 + 1e308 overflows, as IEEE says");
    assert_eq!(v["columns"]["o"]["mean"], 1e308);
    let v = run(&["stats", &p, "--columns", "i", "--json"]).json();
    assert_eq!((&v["columns"]["i"]["mean"], &v["columns"]["i"]["var"]), (&serde_json::json!("inf"), &serde_json::json!("nan")));
    run(&["hist", &p, "--column", "o", "--bins", "4"]).fails_one_line(&["`o`", "wider"]);
    run(&["hist", &p, "--column", "o", "--bins", "4", "--range=-1e308:1e308"]).fails_one_line(&["wider"]);
    let h = run(&["hist", &p, "--column", "o", "--bins", "4", "--range", "0:1e308", "--json"]).json();
    assert_eq!((&h["counts"], &h["below"]), (&serde_json::json!([0, 0, 0, 2]), &serde_json::json!(1)));
    for t in ["--minmax", "--standardize"] {
        let o = dir.s("t.safetensors");
        run(&["transform", &p, "-o", &o, t, "o"]).fails_one_line(&["`o`", "overflow"]);
        assert!(!Path::new(&o).exists(), "{t}: wrote a file");
    }
}

/// Fit files: one saved without `--select` applies to every column of the file it runs
/// on, in that file's order; with `--select` it keeps the chosen columns. Fitted parameters
/// must be there and make sense; a fit file that cannot be written leaves no output; a fill
/// value the output type cannot hold is refused; errors name the paths the user gave.
#[test]
fn fit_files_apply_to_any_file_and_are_checked() {
    let dir = TempDir::new("fitfiles");
    let a = dir.s("a.safetensors");
    write_st(
        Path::new(&a),
        &[("x", "F32", vec![3], le_bytes_f32(&[1.0, 2.0, 3.0])), ("z", "F32", vec![3], le_bytes_f32(&[5.0, 6.0, 7.0]))],
    );
    let fit = dir.s("fit.json");
    run(&["transform", &a, "-o", &dir.s("a1.safetensors"), "--standardize", "x", "--save-fit", &fit]).ok();
    let saved: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&fit).expect("fit")).expect("JSON");
    assert!(saved["columns"].is_null(), "no --select, no column list: {saved}");
    // Another file with an extra column, in another order.
    let b = dir.s("b.safetensors");
    write_st(
        Path::new(&b),
        &[
            ("extra", "F32", vec![2], le_bytes_f32(&[9.0, 8.0])),
            ("z", "F32", vec![2], le_bytes_f32(&[1.0, 1.0])),
            ("x", "F32", vec![2], le_bytes_f32(&[2.0, 4.0])),
        ],
    );
    let out = dir.s("b1.safetensors");
    run(&["transform", &b, "-o", &out, "--apply", &fit]).ok();
    let names: Vec<String> = read_st(Path::new(&out)).iter().map(|t| t.name.clone()).collect();
    assert_eq!(names, ["extra", "z", "x"], "every column, in the file's order");
    let x = tensor(&read_st(Path::new(&out)), "x").data.clone();
    let std = (2.0f64 / 3.0).sqrt();
    assert_eq!(x, le_bytes_f32(&[0.0, (2.0 / std) as f32]), "x standardized with a's mean and std");
    // With --select the columns are kept, and only those are written.
    let fit_sel = dir.s("fit_sel.json");
    run(&["transform", &a, "-o", &dir.s("a2.safetensors"), "--select", "x", "--standardize", "x", "--save-fit", &fit_sel]).ok();
    let out2 = dir.s("b2.safetensors");
    run(&["transform", &b, "-o", &out2, "--apply", &fit_sel]).ok();
    let names: Vec<String> = read_st(Path::new(&out2)).iter().map(|t| t.name.clone()).collect();
    assert_eq!(names, ["x"]);
    // Fitted parameters left out or impossible: refused, nothing written.
    let mut no_mean = saved.clone();
    no_mean["steps"][0]["params"].as_object_mut().expect("params").remove("mean");
    let mut negative_std = saved.clone();
    negative_std["steps"][0]["params"]["std"] = serde_json::json!(-1.0);
    let mut upside_down = saved.clone();
    upside_down["steps"][0]["op"] = serde_json::json!("minmax");
    upside_down["steps"][0]["params"] = serde_json::json!({"min": 2.0, "max": 1.0});
    for (what, v) in [("no mean", no_mean), ("negative std", negative_std), ("min > max", upside_down)] {
        let bad = dir.s("bad.json");
        std::fs::write(&bad, v.to_string()).expect("write");
        let o = dir.s("bad.safetensors");
        run(&["transform", &b, "-o", &o, "--apply", &bad]).fails_one_line(&["bad.json"]);
        assert!(!Path::new(&o).exists(), "{what}: wrote a file");
    }
    let text = std::fs::read_to_string(&fit).expect("fit");
    let v2 = dir.s("v2.json");
    std::fs::write(&v2, text.replace(r#""version": 1"#, r#""version": 2"#)).expect("write");
    let e = run(&["transform", &b, "-o", &dir.s("v2.safetensors"), "--apply", &v2]).fails_one_line(&["version 2"]).to_string();
    assert!(!e.contains("Some("), "{e}");
    // A fit file that cannot be written: no output either.
    let o = dir.s("nofit.safetensors");
    run(&["transform", &a, "-o", &o, "--standardize", "x", "--save-fit", &dir.s("missing/fit.json")]).fails(&["missing"]);
    assert!(!Path::new(&o).exists(), "an output without its fit file");
    // A write pass that fails (here: a fill value f16 cannot hold) leaves an existing fit
    // file as it was, even with --force.
    let before = std::fs::read(&fit).expect("fit");
    let o = dir.s("force.safetensors");
    run(&["transform", &a, "-o", &o, "--minmax", "x", "--fill-nan", "1e6", "--cast", "f16", "--save-fit", &fit, "--force"])
        .fails(&["--fill-nan"]);
    assert_eq!(std::fs::read(&fit).expect("fit"), before, "the old fit file was replaced");
    assert!(!Path::new(&o).exists());
    // An output in a missing folder: the error names it, not a temporary file.
    let e = run(&["transform", &a, "-o", &dir.s("missing/o.safetensors")]).fails_one_line(&["missing/o.safetensors"]).to_string();
    assert!(!e.contains(".tmp"), "{e}");
    // Fill values the output type cannot hold.
    // (65520, halfway between f16's largest value and 2^16, rounds to inf; 65519.999 is
    // rounded once, to 65504, though f32 would round it to 65520 on the way.)
    for (v, cast) in [("1e300", "f32"), ("1e6", "f16"), ("65520", "f16"), ("1e39", "bf16")] {
        let o = dir.s("fill.safetensors");
        run(&["transform", &a, "-o", &o, "--fill-nan", v, "--cast", cast]).fails_one_line(&["--fill-nan", cast]);
        assert!(!Path::new(&o).exists());
    }
    run(&["transform", &a, "-o", &dir.s("fill_ok.safetensors"), "--fill-nan", "65504", "--cast", "f16"]).ok();
    run(&["transform", &a, "-o", &dir.s("fill_ok2.safetensors"), "--fill-nan", "65519.999", "--cast", "f16"]).ok();
}

#[test]
fn transform_usage_errors() {
    let dir = TempDir::new("usage");
    let g = gen_data(&dir, "d.safetensors", 300, 2, 5);
    let fit = dir.s("fit.json");
    let o = dir.s("o.safetensors");
    run(&["transform", &g.path, "-o", &o, "--standardize", "f0", "--save-fit", &fit]).ok();
    std::fs::remove_file(&o).expect("rm");
    let with_apply: [&[&str]; 7] = [
        &["--standardize", "f0"],
        &["--minmax", "f1"],
        &["--cast", "f16"],
        &["--fill-nan", "1"],
        &["--clip", "f0=0:1"],
        &["--with", "s=f0"],
        &["--select", "f0"],
    ];
    for extra in with_apply {
        let mut args = vec!["transform", g.path.as_str(), "-o", &o, "--apply", &fit];
        args.extend(extra);
        run(&args).fails(&["--apply"]);
        assert!(!Path::new(&o).exists(), "--apply with {extra:?} wrote a file");
    }
    // Broken or foreign fit files.
    let bad = dir.path("bad.json");
    std::fs::write(&bad, "{not json").expect("write");
    run(&["transform", &g.path, "-o", &o, "--apply", &bad.display().to_string()]).fails_one_line(&["bad.json"]);
    std::fs::write(&bad, r#"{"format": "something-else", "version": 1, "steps": []}"#).expect("write");
    run(&["transform", &g.path, "-o", &o, "--apply", &bad.display().to_string()]).fails_one_line(&["bad.json"]);
    let other = dir.s("other.safetensors"); // f0 is missing
    write_st(Path::new(&other), &[("g", "F32", vec![2], le_bytes_f32(&[1.0, 2.0]))]);
    run(&["transform", &other, "-o", &o, "--apply", &fit]).fails(&["f0"]);
    assert!(!Path::new(&o).exists());

    // Standardize and minmax on one column; bad cast; bad clip.
    for extra in [
        &["--standardize", "f0", "--minmax", "f0"][..],
        &["--standardize", "all", "--minmax", "f1"][..],
        &["--cast", "f64"][..],
        &["--cast", "i8"][..],
        &["--clip", "f0"][..],
        &["--clip", "f0=1"][..],
        &["--with", "=f0"][..],
    ] {
        let mut args = vec!["transform", g.path.as_str(), "-o", &o];
        args.extend(extra);
        run(&args).fails(&[]);
        assert!(!Path::new(&o).exists(), "{extra:?} wrote a file");
    }
    // Flags that would silently do nothing, or only the last of two.
    for (extra, needle) in [
        (&["--standardize", ""][..], "--standardize"),
        (&["--minmax", ","][..], "--minmax"),
        (&["--log1p", " "][..], "--log1p"),
        (&["--clip", "f0=0:1", "--clip", "f0=-1:2"][..], "twice"),
        (&["--with", "s=f0", "--with", "s=f1"][..], "twice"),
    ] {
        let mut args = vec!["transform", g.path.as_str(), "-o", &o];
        args.extend(extra);
        run(&args).fails_one_line(&[needle]);
        assert!(!Path::new(&o).exists(), "{extra:?} wrote a file");
    }
}

#[test]
fn constant_column_scales_to_zero() {
    let dir = TempDir::new("const");
    let p = dir.s("c.safetensors");
    let c = [5.0f32, 5.0, f32::NAN, 5.0];
    write_st(Path::new(&p), &[("c", "F32", vec![4], le_bytes_f32(&c)), ("d", "F32", vec![4], le_bytes_f32(&c))]);
    let o = dir.s("o.safetensors");
    run(&["transform", &p, "-o", &o, "--standardize", "c", "--minmax", "d"]).ok();
    let ts = read_st(Path::new(&o));
    for name in ["c", "d"] {
        let v = f32s(&tensor(&ts, name).data);
        assert_eq!(v[0], 0.0, "{name}: {v:?}");
        assert_eq!(v[1], 0.0, "{name}: {v:?}");
        assert!(v[2].is_nan(), "{name}: NaN propagates: {v:?}");
        assert_eq!(v[3], 0.0, "{name}: {v:?}");
    }
}

// ------------------------------------------------------------------ determinism

#[test]
fn memory_budget_and_threads_do_not_change_results() {
    let s = seed("memory_budget_and_threads_do_not_change_results");
    let dir = TempDir::new("determinism");
    // More rows than two of the CPU's group-by units (262,144 rows), so that the small
    // budgets split the group-by into several tiles.
    let g = gen_data(&dir, "d.safetensors", 600_000, 4, s);
    let p = g.path.as_str();
    let configs: [&[&str]; 3] = [&[], &["--memory-budget", "1MiB", "--threads", "1"], &["--memory-budget", "300KiB", "--threads", "2"]];
    let queries: [&[&str]; 5] = [
        &["stats", p, "--json"],
        &["stats", p, "--where", "f0 > 0 or isnan(f0)", "--json"],
        &["stats", p, "--by", "key", "--json"],
        &["hist", p, "--column", "f2", "--json"],
        &["hist", p, "--column", "f3", "--bins", "1000", "--where", "key < 20", "--json"],
    ];
    for q in queries {
        let outs: Vec<String> = configs
            .iter()
            .map(|c| {
                let mut args: Vec<&str> = c.to_vec();
                args.extend(q);
                run(&args).ok().to_string()
            })
            .collect();
        assert!(outs.iter().all(|o| *o == outs[0]), "{q:?}: output depends on --memory-budget / --threads:\n{}", outs.join("\n"));
    }
    // Output files too (global options after the command this time).
    let mut files = Vec::new();
    for (i, c) in configs.iter().enumerate() {
        let o = dir.s(&format!("o{i}.safetensors"));
        let n = dir.s(&format!("o{i}.npy"));
        let mut args = vec!["transform", p, "-o", &o, "--where", "f1 < 0.7", "--log1p", "f2", "--standardize", "all", "--cast", "f16"];
        args.extend(c.iter());
        run(&args).ok();
        let mut args = vec!["transform", p, "-o", &n, "--select", "f0,f3", "--minmax", "all"];
        args.extend(c.iter());
        run(&args).ok();
        files.push((std::fs::read(&o).expect("o"), std::fs::read(&n).expect("n")));
    }
    assert!(files.iter().all(|f| f.0 == files[0].0), "safetensors output depends on --memory-budget / --threads");
    assert!(files.iter().all(|f| f.1 == files[0].1), "npy output depends on --memory-budget / --threads");
}

// ------------------------------------------------------------------ devices and options

#[test]
fn devices_and_global_options() {
    let dir = TempDir::new("devices");
    let g = gen_data(&dir, "d.safetensors", 1000, 2, 4);
    let cpu = run(&["stats", &g.path, "--device", "cpu", "--json"]).json();
    let auto = run(&["--device", "auto", "stats", &g.path, "--json"]).json();
    assert_eq!(cpu, auto);
    let no_cuda = tilestream::Device::from_name("cuda").is_err();
    for dev in ["cuda", "cuda:0", "wgpu:99"] {
        if dev.starts_with("cuda") && !no_cuda {
            continue;
        }
        run(&["stats", &g.path, "--device", dev]).fails(&["not available"]);
    }
    run(&["stats", &g.path, "--device", "bogus"]).fails(&["bogus"]);
    for budget in ["lots", "5XB", "0", "-1MiB", "", "1.5.2MiB"] {
        run(&["stats", &g.path, "--memory-budget", budget]).fails(&[]);
    }
    for budget in ["512KiB", "64MiB", "1GiB", "3000000"] {
        assert_eq!(run(&["stats", &g.path, "--memory-budget", budget, "--json"]).json(), cpu, "--memory-budget {budget}");
    }
    assert_eq!(run(&["--quiet", "--threads", "1", "stats", &g.path, "--json"]).json(), cpu);
    let d = run(&["devices"]);
    assert!(d.ok().contains("cpu"), "devices lists cpu: {}", d.stdout);
    assert!(d.stdout.contains("cuda"), "devices says where CUDA stands: {}", d.stdout);
}

/// On a headless machine (no display, no `XDG_RUNTIME_DIR`) looking for GPUs prints
/// nothing on stderr: Mesa's Vulkan device-select layer, which would complain about the
/// missing display, is off (CI installs Mesa's Vulkan drivers, and with them the layer).
#[test]
fn headless_device_probing_is_quiet() {
    let d = run_with(&["devices"], |c| {
        for var in ["XDG_RUNTIME_DIR", "WAYLAND_DISPLAY", "DISPLAY", "NODEVICE_SELECT"] {
            c.env_remove(var);
        }
    });
    d.ok();
    assert_eq!(d.stderr, "", "devices wrote to stderr");
}

/// Numbers of two `stats --json` outputs agree: counts exactly, floats within 1e-6 relative.
fn stats_json_close(a: &Value, b: &Value, what: &str) {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            assert_eq!(x.keys().collect::<Vec<_>>(), y.keys().collect::<Vec<_>>(), "{what}: keys");
            for (k, v) in x {
                stats_json_close(v, &y[k], &format!("{what}.{k}"));
            }
        }
        (Value::Array(x), Value::Array(y)) => {
            assert_eq!(x.len(), y.len(), "{what}: lengths");
            for (i, (p, q)) in x.iter().zip(y).enumerate() {
                stats_json_close(p, q, &format!("{what}[{i}]"));
            }
        }
        (Value::Number(x), Value::Number(y)) if x.is_f64() || y.is_f64() => {
            let (p, q) = (x.as_f64().unwrap_or(f64::NAN), y.as_f64().unwrap_or(f64::NAN));
            assert!((p - q).abs() <= 1e-6 * p.abs().max(q.abs()) + 1e-12, "{what}: {p} vs {q}");
        }
        _ => assert_eq!(a, b, "{what}"),
    }
}

/// The `--device` argument of a GPU (`wgpu:N`, `cuda:N`).
fn device_arg(gpu: &tilestream::Device) -> String {
    match gpu {
        tilestream::Device::Wgpu(i) => format!("wgpu:{i}"),
        tilestream::Device::Cuda(i) => format!("cuda:{i}"),
        other => unreachable!("gpu_devices returns GPUs, not {other:?}"),
    }
}

#[test]
fn gpus_give_the_cpus_answers() {
    for gpu in gpu_devices() {
        gpu_gives_the_cpus_answers(&gpu);
    }
}

fn gpu_gives_the_cpus_answers(gpu: &tilestream::Device) {
    let dev = device_arg(gpu);
    let dir = TempDir::new(&format!("cli-{}", dev.replace(':', "-")));
    let g = gen_data(&dir, "g.safetensors", 30_001, 3, seed("gpu_gives_the_cpus_answers"));
    let d = run(&["devices"]);
    assert!(d.ok().contains(&format!("{dev} ")), "devices lists {dev}: {}", d.stdout);
    for args in [vec!["stats"], vec!["stats", "--where", "f0 > 0.2 && key < 30"], vec!["stats", "--by", "key", "--where", "f1 < 0.7"]] {
        let mut a = args.clone();
        a.extend([g.path.as_str(), "--json"]);
        let cpu = run(&[&a[..], &["--device", "cpu"]].concat()).json();
        let wgpu = run(&[&a[..], &["--device", &dev, "--memory-budget", "64KiB"]].concat()).json();
        stats_json_close(&cpu, &wgpu, &format!("{args:?}"));
    }
    // Histograms: exactly.
    let h = |d: &str| run(&["hist", &g.path, "--column", "f2", "--bins", "37", "--json", "--device", d]).json();
    assert_eq!(h("cpu"), h(&dev));
    // Transforms: the same file bytes for filter + clip + fill-nan + cast; the JSON report
    // names the device and counts its tiles.
    let mut files = Vec::new();
    for d in ["cpu", dev.as_str()] {
        let out = dir.s(&format!("t-{}.safetensors", d.replace(':', "_")));
        let j = run(&[
            "transform",
            &g.path,
            "-o",
            &out,
            "--where",
            "key != 3",
            "--clip",
            "f1=0.1:0.9",
            "--fill-nan",
            "0",
            "--cast",
            "bf16",
            "--json",
            "--device",
            d,
            "--memory-budget",
            "100KiB",
        ])
        .json();
        assert!(j["device"].as_str().is_some_and(|s| s.starts_with(d)), "{d}: {j}");
        assert!(j["tiles"].as_u64().is_some_and(|t| t >= 2), "{d}: several tiles: {j}");
        files.push(std::fs::read(&out).unwrap_or_default());
    }
    assert!(!files[0].is_empty() && files[0] == files[1], "transform output differs between cpu and {dev}");
    // A query the wgpu kernel cannot run: with an explicit device, an error (exit 2).
    if dev.starts_with("wgpu") {
        run(&["hist", &g.path, "--column", "f0", "--bins", "100000", "--device", &dev]).fails(&["unsupported", "bins"]);
    }
}

#[test]
fn auto_reruns_on_the_cpu_what_the_gpu_cannot_run() {
    let Some(tilestream::Device::Wgpu(i)) = gpu_device() else { return };
    let dir = TempDir::new("cli-auto");
    // Over GPU_MIN_BYTES, so that `auto` takes the GPU (pinned by TILESTREAM_AUTO_GPU).
    let g = gen_data(&dir, "big.safetensors", 2_200_000, 8, 3);
    let cpu = run(&["hist", &g.path, "--column", "f0", "--bins", "100000", "--json", "--device", "cpu"]).json();
    let mut cmd = Command::new(support::bin());
    cmd.args(["hist", &g.path, "--column", "f0", "--bins", "100000", "--json"]).env("TILESTREAM_AUTO_GPU", format!("wgpu:{i}"));
    let o = cmd.output().expect("run tilestream");
    let (stdout, stderr) = (String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert_eq!(o.status.code(), Some(0), "auto must fall back: {stderr}");
    assert!(stderr.contains("running it again on the CPU") && stderr.contains("bins"), "auto says why it fell back: {stderr}");
    assert_eq!(serde_json::from_str::<Value>(stdout.trim()).expect("JSON"), cpu, "the CPU's answer");
}

/// A GPU that fails mid-run (a failure injected at tile 1 through `TILESTREAM_GPU_FAULT`):
/// under `auto` the whole query reruns on the CPU with a note on stderr and writes the CPU's
/// bytes; with the device named it exits 2 and leaves nothing at OUT. A device out of memory
/// at the start gets smaller tiles and finishes.
#[test]
fn gpu_faults_fall_back_or_fail_cleanly() {
    for gpu in gpu_devices() {
        let dev = device_arg(&gpu);
        let dir = TempDir::new(&format!("cli-fault-{}", dev.replace(':', "-")));
        // Over GPU_MIN_BYTES, so that `auto` takes the GPU (pinned by TILESTREAM_AUTO_GPU).
        let g = gen_data(&dir, "big.safetensors", 2_200_000, 8, 5);
        let args = |out: &str| -> Vec<String> {
            ["transform", &g.path, "-o", out, "--where", "f0 > 0.3", "--clip", "f1=0.1:0.9", "--fill-nan", "0", "--cast", "bf16", "--json"]
                .iter()
                .map(|s| s.to_string())
                .collect()
        };
        let cpu_out = dir.s("cpu.safetensors");
        run(&[&args(&cpu_out)[..], &["--device".to_string(), "cpu".to_string()]].concat()).ok();
        let want = std::fs::read(&cpu_out).expect("cpu output");
        let with_fault = |out: &str, extra: &[&str], fault: &str| {
            let mut cmd = Command::new(support::bin());
            cmd.args(args(out)).args(extra).env("TILESTREAM_AUTO_GPU", &dev).env("TILESTREAM_GPU_FAULT", fault);
            let o = cmd.output().expect("run tilestream");
            (o.status.code(), String::from_utf8_lossy(&o.stdout).into_owned(), String::from_utf8_lossy(&o.stderr).into_owned())
        };
        // auto: the failure is reported and the CPU's answer written.
        let out = dir.s("auto.safetensors");
        let (code, _, err) = with_fault(&out, &["--memory-budget", "8MiB"], "tile:1");
        assert_eq!(code, Some(0), "{dev}: auto must fall back: {err}");
        assert!(err.contains("injected failure") && err.contains("running it again on the CPU"), "{dev}: auto says why: {err}");
        assert!(std::fs::read(&out).is_ok_and(|b| b == want), "{dev}: auto wrote the CPU's bytes");
        // The device named: exit 2 with the reason, nothing at OUT.
        let bad = dir.s("explicit.safetensors");
        let (code, _, err) = with_fault(&bad, &["--memory-budget", "8MiB", "--device", &dev], "tile:1");
        assert_eq!(code, Some(2), "{dev}: {err}");
        assert!(err.contains("injected failure") && err.lines().count() == 1, "{dev}: one line with the reason: {err}");
        assert!(!std::path::Path::new(&bad).exists(), "{dev}: nothing at OUT after a failure");
        // Out of memory for tiles over 65,536 rows: smaller tiles, the same bytes.
        let small = dir.s("oom.safetensors");
        let (code, stdout, err) = with_fault(&small, &["--memory-budget", "64MiB", "--device", &dev], "oom:65536");
        assert_eq!(code, Some(0), "{dev}: out of memory at the start must shrink the tiles: {err}");
        let j: Value = serde_json::from_str(stdout.trim()).expect("JSON");
        assert!(j["tiles"].as_u64().is_some_and(|t| t >= 2_200_000 / 65_536), "{dev}: tiles of at most 65,536 rows: {j}");
        assert!(std::fs::read(&small).is_ok_and(|b| b == want), "{dev}: smaller tiles wrote the CPU's bytes");
    }
}

#[test]
fn help_for_every_subcommand() {
    let top = run(&["--help"]);
    let text = top.ok().to_string();
    let subs = ["info", "stats", "hist", "transform", "gen", "demo", "bench", "devices"];
    for s in subs {
        assert!(text.contains(s), "--help lists {s}");
        let r = run(&[s, "--help"]);
        assert!(r.ok().contains("Usage"), "{s} --help: {}", r.stdout);
        run(&["help", s]).ok();
    }
    assert!(run(&["--version"]).ok().contains("tilestream"));
    // Usage errors are exit 2 (no command at all prints the help on stderr).
    assert_eq!(run::<&str>(&[]).code(), 2);
    run(&["nosuchcommand"]).fails(&[]);
    run(&["stats"]).fails(&[]);
    run(&["stats", "x.safetensors", "--no-such-flag"]).fails(&[]);
}

/// Spawns a command, reads a few bytes of its stdout, closes the pipe and waits.
fn close_pipe_early(args: &[&str]) -> Run {
    let mut child =
        Command::new(support::bin()).args(args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn");
    let mut out = child.stdout.take().expect("stdout");
    let mut first = [0u8; 10];
    out.read_exact(&mut first).expect("some output");
    drop(out);
    let mut err_pipe = child.stderr.take().expect("stderr");
    let cmd = support::show_cmd(args);
    let status = wait_limited(&mut child, support::TIME_LIMIT, &cmd);
    let mut stderr = String::new();
    let _ = err_pipe.read_to_string(&mut stderr);
    Run { cmd, code: status.code(), status, stdout: String::from_utf8_lossy(&first).into_owned(), stderr, secs: 0.0 }
}

#[test]
fn broken_pipe_exits_0() {
    let dir = TempDir::new("pipe");
    let g = gen_data(&dir, "d.safetensors", 30_000, 8, 2);
    for args in [
        vec!["hist", g.path.as_str(), "--column", "f1", "--bins", "100000", "--json"],
        vec!["hist", g.path.as_str(), "--column", "f1", "--bins", "100000"],
        vec!["stats", g.path.as_str(), "--by", "key", "--json"],
        vec!["stats", g.path.as_str(), "--by", "key"],
    ] {
        let r = close_pipe_early(&args);
        assert_eq!(r.code, Some(0), "{}: a closed stdout must exit 0 (status {:?}, stderr {:?})", r.cmd, r.status, r.stderr);
        assert!(!r.stderr.contains("tilestream:"), "{}: no error message for a broken pipe: {}", r.cmd, r.stderr);
    }
}

#[test]
fn group_by_key_values_and_limits() {
    let dir = TempDir::new("groups");
    // Negative and large i64 keys, sorted numerically.
    let p = dir.s("k.safetensors");
    let k: [i64; 6] = [-3, 1 << 40, 0, -3, 7, 1 << 40];
    let v = [1.0f32, 2.0, 3.0, 4.0, f32::NAN, 6.0];
    write_st(
        Path::new(&p),
        &[("v", "F32", vec![6], le_bytes_f32(&v)), ("k", "I64", vec![6], k.iter().flat_map(|x| x.to_le_bytes()).collect())],
    );
    let r = run(&["stats", &p, "--by", "k", "--json"]).json();
    let groups = r["groups"].as_array().expect("groups");
    let got: Vec<(i64, u64)> =
        groups.iter().map(|g| (g["key"].as_i64().expect("integer key"), g["rows"].as_u64().expect("rows"))).collect();
    assert_eq!(got, [(-3, 2), (0, 1), (7, 1), (1 << 40, 2)]);
    check_stats("k=-3", &groups[0]["columns"]["v"], &[1.0, 4.0], false);
    check_stats("k=7", &groups[2]["columns"]["v"], &[f64::NAN], false);
    check_stats("k=2^40", &groups[3]["columns"]["v"], &[2.0, 6.0], false);

    // 65,536 distinct values work; 65,537 are refused.
    let n = 65_537usize;
    let ok: Vec<u8> = (0..n).flat_map(|i| ((i % 65_536) as u16).to_le_bytes()).collect();
    let too_many: Vec<u8> = (0..n).flat_map(|i| (i as i32 - 10).to_le_bytes()).collect();
    let p2 = dir.s("many.safetensors");
    write_st(Path::new(&p2), &[("ok", "U16", vec![n as u64], ok), ("many", "I32", vec![n as u64], too_many)]);
    let r = run(&["stats", &p2, "--by", "ok", "--columns", "many", "--json"]).json();
    let groups = r["groups"].as_array().expect("groups");
    assert_eq!(groups.len(), 65_536);
    assert_eq!((groups[0]["key"].as_u64(), groups[0]["rows"].as_u64()), (Some(0), Some(2)));
    assert_eq!((groups[65_535]["key"].as_u64(), groups[65_535]["rows"].as_u64()), (Some(65_535), Some(1)));
    run(&["stats", &p2, "--by", "many", "--columns", "ok"]).fails_one_line(&["65"]);
    // ... unless a filter leaves few enough.
    let r = run(&["stats", &p2, "--by", "many", "--where", "many < 100", "--columns", "ok", "--json"]).json();
    assert_eq!(r["groups"].as_array().map(Vec::len), Some(110));
    assert_eq!(r["groups"][0]["key"].as_i64(), Some(-10));
}

#[test]
fn integer_literals_out_of_the_column_range() {
    let dir = TempDir::new("intlit");
    let g = gen_data(&dir, "d.safetensors", 3000, 1, 8);
    let count = |filter: &str| -> u64 {
        run(&["stats", &g.path, "--where", filter, "--columns", "f0", "--json"]).json()["rows_selected"].as_u64().expect("rows_selected")
    };
    let n = g.rows as u64;
    let by = |f: &dyn Fn(u8) -> bool| g.key.iter().filter(|&&k| f(k)).count() as u64;
    assert_eq!(count("key == 300"), 0, "300 must not wrap to 44 in a u8 column");
    assert_eq!(count("key != 300"), n);
    assert_eq!(count("key < 256"), n);
    assert_eq!(count("key > -1"), n, "-1 must not wrap to 255");
    assert_eq!(count("key >= -1000000"), n);
    assert_eq!(count("key < 2.5"), by(&|k| k < 3));
    assert_eq!(count("key == 2.5"), 0);
    assert_eq!(count("key <= 4294967297"), n);
    assert_eq!(count("key + 1 > 5"), by(&|k| k > 4));
    assert_eq!(count("0 - key < -10"), by(&|k| k > 10));
    assert_eq!(count("(-key) < -10"), by(&|k| k > 10));
    // A where clause that is not a condition is a type error, with a position.
    let e = run(&["stats", &g.path, "--where", "f0 + 1"]).fails(&["position"]).to_string();
    check_caret(&e, "f0 + 1");
}

#[test]
fn transform_json_report_counts() {
    let s = seed("transform_json_report_counts");
    let dir = TempDir::new("report");
    let g = gen_data(&dir, "d.safetensors", 5000, 5, s);
    let o = dir.s("o.safetensors");
    let r =
        run(&["transform", &g.path, "-o", &o, "--select", "f4", "--with", "big=f2 * 10000", "--log1p", "f4", "--cast", "f16", "--json"])
            .json();
    assert_eq!(r["rows_written"].as_u64(), Some(g.rows as u64));
    assert_eq!(keys(&r["columns"]), ["f4", "big"]);
    let ts = read_st(Path::new(&o));
    assert_eq!(names(&ts), ["f4", "big"], "--select keeps f4 only; --with may read an unselected column");
    let f4: Vec<f32> = g.f[4].iter().map(|&x| x.ln_1p()).collect();
    let nan4 = f4.iter().filter(|x| x.is_nan()).count() as u64;
    assert_eq!(r["columns"]["f4"]["nan_count"].as_u64(), Some(nan4), "NaN written to f4 (NaN in, and log1p of x < -1)");
    let out4 = u16s(&tensor(&ts, "f4").data);
    assert_eq!(out4.iter().filter(|&&b| f16::from_bits(b).is_nan()).count() as u64, nan4);
    let big: Vec<f32> = g.f[2].iter().map(|&x| x * 10000.0).collect();
    let overflow = big.iter().filter(|x| x.is_finite() && f16::from_f32(**x).is_infinite()).count() as u64;
    assert!(overflow > 0, "the test needs some overflow");
    assert_eq!(r["columns"]["big"]["overflow_count"].as_u64(), Some(overflow));
    assert_eq!(u16s(&tensor(&ts, "big").data), big.iter().map(|&x| f16::from_f32(x).to_bits()).collect::<Vec<_>>());
}

#[test]
fn transform_bad_outputs_leave_nothing() {
    let dir = TempDir::new("badout");
    let g = gen_data(&dir, "d.safetensors", 100, 1, 8);
    let missing_dir = dir.path("no/such/dir/o.safetensors");
    run(&["transform", &g.path, "-o", &missing_dir.display().to_string()]).fails_one_line(&["o.safetensors"]);
    let csv = dir.path("o.csv");
    run(&["transform", &g.path, "-o", &csv.display().to_string()]).fails_one_line(&["o.csv"]);
    assert!(!csv.exists());
    let as_dir = dir.path("adir.safetensors");
    std::fs::create_dir(&as_dir).expect("mkdir");
    run(&["transform", &g.path, "-o", &as_dir.display().to_string(), "--force"]).fails_one_line(&[]);
    assert!(as_dir.is_dir());
    // Nothing but the input and the folder is left behind (no temporary files).
    let left: Vec<String> =
        std::fs::read_dir(&dir.0).expect("ls").map(|e| e.expect("entry").file_name().to_string_lossy().into_owned()).collect();
    let mut left = left;
    left.sort();
    assert_eq!(left, ["adir.safetensors", "d.safetensors"]);
}

/// Starts a command, sends SIGINT after `after`, and returns its run.
fn interrupt_after(args: &[&str], after: std::time::Duration) -> Run {
    let cmd = support::show_cmd(args);
    let mut child =
        Command::new(support::bin()).args(args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn");
    std::thread::sleep(after);
    let pid = i32::try_from(child.id()).expect("pid");
    // SAFETY: plain kill(2) on the child we started and have not waited for yet.
    unsafe { libc::kill(pid, libc::SIGINT) };
    let status = wait_limited(&mut child, support::TIME_LIMIT, &cmd);
    let mut stderr = String::new();
    let _ = child.stderr.take().expect("stderr").read_to_string(&mut stderr);
    Run { cmd, code: status.code(), status, stdout: String::new(), stderr, secs: 0.0 }
}

fn dir_listing(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> =
        std::fs::read_dir(dir).expect("ls").map(|e| e.expect("entry").file_name().to_string_lossy().into_owned()).collect();
    v.sort();
    v
}

#[test]
fn sigint_exits_130_and_leaves_no_output() {
    let dir = TempDir::new("sigint");
    // gen of ~180 MB: interrupted long before it ends.
    let big = dir.s("big.safetensors");
    let r = interrupt_after(&["gen", &big, "--rows", "20000000", "--cols", "2"], std::time::Duration::from_millis(150));
    if r.code == Some(0) {
        eprintln!("sigint: gen finished before the signal; skipped");
    } else {
        assert_eq!(r.code, Some(130), "{}: SIGINT must exit 130 ({:?}, stderr {:?})", r.cmd, r.status, r.stderr);
        assert!(dir_listing(&dir.0).is_empty(), "an interrupted gen left {:?}", dir_listing(&dir.0));
    }
    // A transform with two passes over a 20M-row file and tiny tiles.
    run(&["gen", &big, "--rows", "20000000", "--cols", "2", "--force"]).ok();
    let out = dir.s("out.safetensors");
    let args =
        ["transform", big.as_str(), "-o", &out, "--standardize", "all", "--cast", "f16", "--memory-budget", "64KiB", "--threads", "1"];
    let r = interrupt_after(&args, std::time::Duration::from_millis(100));
    if r.code == Some(0) {
        eprintln!("sigint: transform finished before the signal; skipped");
    } else {
        assert_eq!(r.code, Some(130), "{}: SIGINT must exit 130 ({:?}, stderr {:?})", r.cmd, r.status, r.stderr);
        assert_eq!(r.stderr, "tilestream: interrupted\n");
        assert_eq!(dir_listing(&dir.0), ["big.safetensors"], "an interrupted transform leaves nothing at OUT and no temporary file");
    }
}

/// A Ctrl-C while the output is blocked on a full pipe (the reader, in the same terminal,
/// got the signal too and closes its end) exits 130, not 0 as an early-closing reader
/// would.
#[test]
fn sigint_while_printing_exits_130() {
    let dir = TempDir::new("sigint-print");
    let data = dir.s("d.safetensors");
    run(&["gen", &data, "--rows", "20000"]).ok();
    // About 4 MB of JSON, far more than a pipe holds.
    let args = ["hist", data.as_str(), "--column", "f0", "--bins", "2000000", "--json"];
    let cmd = support::show_cmd(&args);
    let mut child =
        Command::new(support::bin()).args(args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn");
    // The first byte of output: the run is printing (and soon blocked on the full pipe).
    let mut stdout = child.stdout.take().expect("stdout");
    let mut first = [0u8; 1];
    stdout.read_exact(&mut first).expect("output starts");
    std::thread::sleep(std::time::Duration::from_millis(100));
    let pid = i32::try_from(child.id()).expect("pid");
    // SAFETY: plain kill(2) on the child we started and have not waited for yet.
    unsafe { libc::kill(pid, libc::SIGINT) };
    std::thread::sleep(std::time::Duration::from_millis(100));
    drop(stdout);
    let status = wait_limited(&mut child, support::TIME_LIMIT, &cmd);
    let mut stderr = String::new();
    let _ = child.stderr.take().expect("stderr").read_to_string(&mut stderr);
    assert_eq!(status.code(), Some(130), "{cmd}: SIGINT while printing ({status:?}, stderr {stderr:?})");
    assert_eq!(stderr, "tilestream: interrupted\n");
    // Without the signal, a reader that stops early is no error (exit 0).
    let mut child =
        Command::new(support::bin()).args(args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::null()).spawn().expect("spawn");
    let mut stdout = child.stdout.take().expect("stdout");
    stdout.read_exact(&mut first).expect("output starts");
    drop(stdout);
    assert_eq!(wait_limited(&mut child, support::TIME_LIMIT, &cmd).code(), Some(0), "{cmd}: a closed pipe");
}

#[test]
fn transform_strided_and_fortran_inputs() {
    let dir = TempDir::new("strided");
    // A 2-D safetensors tensor [N, 3] next to a 1-D column.
    let n = 1000usize;
    let x: Vec<f32> = (0..n * 3).map(|i| (i as f32) * 0.5 - 7.0).collect();
    let y: Vec<f32> = (0..n).map(|i| i as f32).collect();
    let p = dir.s("x.safetensors");
    write_st(Path::new(&p), &[("y", "F32", vec![n as u64], le_bytes_f32(&y)), ("x", "F32", vec![n as u64, 3], le_bytes_f32(&x))]);
    let o = dir.s("o.safetensors");
    run(&["transform", &p, "-o", &o, "--where", "y >= 10 and y < 20", "--with", "s=`x:2` - `x:0`"]).ok();
    let ts = read_st(Path::new(&o));
    assert_eq!(names(&ts), ["y", "x:0", "x:1", "x:2", "s"], "one 1-D tensor per column");
    for j in 0..3 {
        let want: Vec<f32> = (10..20).map(|r| x[r * 3 + j]).collect();
        assert_eq!(f32s(&tensor(&ts, &format!("x:{j}")).data), want, "x:{j}");
    }
    assert_eq!(f32s(&tensor(&ts, "s").data), vec![1.0f32; 10]);

    // A Fortran-order npy [4, 3]: column j is a[:, j].
    let a = [[1.0f32, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0], [10.0, 11.0, 12.0]];
    let column_major: Vec<f32> = (0..3).flat_map(|c| a.iter().map(move |row| row[c])).collect();
    let mut h = "{'descr': '<f4', 'fortran_order': True, 'shape': (4, 3), }".to_string();
    while !(10 + h.len() + 1).is_multiple_of(64) {
        h.push(' ');
    }
    h.push('\n');
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    bytes.extend_from_slice(&(h.len() as u16).to_le_bytes());
    bytes.extend_from_slice(h.as_bytes());
    bytes.extend_from_slice(&le_bytes_f32(&column_major));
    let f = dir.path("m.npy");
    std::fs::write(&f, bytes).expect("write");
    let o2 = dir.path("m_out.npy");
    run(&["transform", &f.display().to_string(), "-o", &o2.display().to_string()]).ok();
    let out = read_npy(&o2);
    assert_eq!((out.descr.as_str(), out.fortran, out.shape.as_slice()), ("<f4", false, &[4, 3][..]));
    assert_eq!(f32s(&out.data), a.iter().flatten().copied().collect::<Vec<_>>(), "C-order output of a Fortran-order input");
    let v = run(&["stats", &f.display().to_string(), "--json"]).json();
    assert_eq!(v["columns"]["m:1"]["sum"].as_f64(), Some(26.0));
    if numpy_available("transform_strided_and_fortran_inputs") {
        let same = python(
            "import sys, numpy as np; print(bool(np.array_equal(np.load(sys.argv[1]), np.load(sys.argv[2]))))",
            &[&f.display().to_string(), &o2.display().to_string()],
        );
        assert_eq!(same.trim(), "True", "numpy sees the same matrix");
    }
}

#[test]
fn cast_rounding_and_special_values() {
    let dir = TempDir::new("cast");
    let mut v: Vec<f32> = vec![
        0.0,
        -0.0,
        1.0,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::NAN,
        1e-45,
        -1e-40,
        6.0e-8,
        2.9802322e-8,
        65504.0,
        65519.996,
        65520.0,
        -70000.0,
        3.4e38,
        f32::MIN_POSITIVE,
        1.0 + 2f32.powi(-11),
        1.0 + 3.0 * 2f32.powi(-11),
        1.0 + 2f32.powi(-8),
        1.0 + 3.0 * 2f32.powi(-8),
        0.1,
        -123.456,
    ];
    let mut rng = Rng(42);
    v.extend((0..1000).map(|_| f32::from_bits(rng.next() as u32)));
    let p = dir.s("v.safetensors");
    write_st(Path::new(&p), &[("v", "F32", vec![v.len() as u64], le_bytes_f32(&v))]);
    for (cast, conv) in [("f16", (|x: f32| f16::from_f32(x).to_bits()) as fn(f32) -> u16), ("bf16", |x: f32| bf16::from_f32(x).to_bits())] {
        let o = dir.s(&format!("o_{cast}.safetensors"));
        run(&["transform", &p, "-o", &o, "--cast", cast]).ok();
        let got = u16s(&read_st(Path::new(&o))[0].data);
        for (i, (&g, &x)) in got.iter().zip(&v).enumerate() {
            let want = conv(x);
            let nan = |b: u16| if cast == "f16" { f16::from_bits(b).is_nan() } else { bf16::from_bits(b).is_nan() };
            if x.is_nan() {
                assert!(nan(g), "{cast}: row {i}: NaN must stay NaN, got {g:#06x}");
            } else {
                assert_eq!(g, want, "{cast}: row {i}: {x:e} ({:#010x}) should round to {want:#06x}, got {g:#06x}", x.to_bits());
            }
        }
    }
}

/// u64 keys at or above 2^63 are distinct groups with their own key values.
#[test]
fn group_by_u64_keys_above_i64_max() {
    let dir = TempDir::new("u64keys");
    let p = dir.s("u.safetensors");
    let u: [u64; 4] = [u64::MAX, 0, 1 << 63, u64::MAX];
    let v = [1.0f32, 2.0, 3.0, 4.0];
    write_st(
        Path::new(&p),
        &[("u", "U64", vec![4], u.iter().flat_map(|x| x.to_le_bytes()).collect()), ("v", "F32", vec![4], le_bytes_f32(&v))],
    );
    let r = run(&["stats", &p, "--by", "u", "--json"]).json();
    let got: Vec<(u64, u64)> = r["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .map(|g| (g["key"].as_u64().expect("integer key"), g["rows"].as_u64().expect("rows")))
        .collect();
    assert_eq!(got, [(0, 1), (1 << 63, 1), (u64::MAX, 2)]);
}
