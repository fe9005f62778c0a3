//! Regression tests for bugs found in review: each test names the wrong behaviour it pins.

mod common;

use common::*;
use std::process::Command;
use tilestream::{Cols, DType, Dataset, Device, Fit, RunOptions, SinkOptions, Transform, all_stats, col, lit, parse_expr};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_tilestream"))
}

fn f32_col(name: &str, v: &[f32]) -> ColData {
    ColData { name: name.into(), dtype: DType::F32, bytes: bytemuck::cast_slice(v).to_vec() }
}

/// A filtered-out sentinel (3e38) at the start of a block must not become the shift of
/// the values the filter keeps.
#[test]
fn filtered_sentinel_does_not_spoil_variance() {
    let seed = seed("filtered_sentinel_does_not_spoil_variance");
    let mut rng = tilestream::synth::Rng::new(seed);
    let dir = TempDir::new("sentinel");
    let rows = 20_000;
    let x: Vec<f32> = (0..rows).map(|i| if i % 8192 == 0 { 3e38 } else { (5.0 + rng.normal()) as f32 }).collect();
    let path = dir.path("s.safetensors");
    write_safetensors(&path, rows, &[f32_col("x", &x)]);
    let ds = Dataset::open(&path).unwrap();
    let kept: Vec<f64> = x.iter().filter(|&&v| v < 1e38).map(|&v| v as f64).collect();
    let r = tilestream::reference::stats(&kept);
    let s = *ds.lazy().filter(col("x").lt(lit(1e38))).aggregate([all_stats(["x"])]).collect(&Device::Cpu).unwrap().column("x").unwrap();
    assert!((s.mean.unwrap() - r.mean).abs() < 1e-9 * r.mean.abs(), "mean {:?} vs {}", s.mean, r.mean);
    assert!((s.var.unwrap() - r.var).abs() < 1e-6 * r.var, "var {:?} vs {}", s.var, r.var);
    // The same per group: a huge value in one group must not shift another group's sums.
    let k: Vec<u8> = (0..rows).map(|i| (i % 8192 == 0) as u8).collect();
    write_safetensors(&path, rows, &[f32_col("x", &x), ColData { name: "k".into(), dtype: DType::U8, bytes: k }]);
    let ds = Dataset::open(&path).unwrap();
    let g = ds.lazy().group_by("k").aggregate([all_stats(["x"])]).collect(&Device::Cpu).unwrap();
    let g0 = &g.groups[0].columns[0].1;
    assert!((g0.var.unwrap() - r.var).abs() < 1e-6 * r.var, "group var {:?} vs {}", g0.var, r.var);
}

/// Variance that overflows f64 is not reported as 0 (nor as NaN, the contract's mark of
/// infinite values): the query is refused, naming the column.
#[test]
fn overflowing_variance_is_not_zero() {
    let dir = TempDir::new("overflow");
    let x: Vec<f64> = vec![1e300, 1.0, 2.0, 3.0];
    let path = dir.path("o.safetensors");
    write_safetensors(&path, 4, &[ColData { name: "x".into(), dtype: DType::F64, bytes: bytemuck::cast_slice(&x).to_vec() }]);
    let r = Dataset::open(&path).unwrap().lazy().aggregate([all_stats(["x"])]).collect(&Device::Cpu);
    let e = r.expect_err("the true variance (~1.9e599) overflows f64").to_string();
    assert!(e.contains("`x`") && e.contains("overflow"), "{e}");
}

/// `--where` sees raw values even when `--with` replaces the column it filters on.
#[test]
fn where_sees_raw_values_not_with_columns() {
    let dir = TempDir::new("rawwhere");
    let x: Vec<f32> = (0..1000).map(|i| i as f32 - 300.0).collect();
    let path = dir.path("i.safetensors");
    write_safetensors(&path, 1000, &[f32_col("f0", &x)]);
    let ds = Dataset::open(&path).unwrap();
    let t = Transform { with: vec![("f0".into(), parse_expr("-f0").unwrap())], ..Transform::default() };
    let out = dir.path("o.safetensors");
    let (_, rep) = ds
        .lazy()
        .filter(col("f0").gt(lit(0.0)))
        .transform(t)
        .sink(&out, &SinkOptions::default(), &Device::Cpu, &RunOptions::default())
        .unwrap();
    assert_eq!(rep.rows_written, 699, "raw f0 > 0 keeps 699 rows");
    // And a `with` column sees raw columns, not an earlier `with` of the same name.
    let t = Transform {
        with: vec![("a".into(), parse_expr("f0 * 2").unwrap()), ("b".into(), parse_expr("f0 + 1").unwrap())],
        select: Some(vec!["a".into(), "b".into()]),
        ..Transform::default()
    };
    let (_, rep) = ds.lazy().transform(t).sink(&out, &SinkOptions { force: true }, &Device::Cpu, &RunOptions::default()).unwrap();
    assert_eq!(rep.rows_written, 1000);
}

/// Standardizing an integer `with` column writes standardized f32, not raw integers.
#[test]
fn scaling_an_integer_with_column_gives_floats() {
    let dir = TempDir::new("intscale");
    let k: Vec<i32> = (0..100).collect();
    let path = dir.path("i.safetensors");
    write_safetensors(&path, 100, &[ColData { name: "k".into(), dtype: DType::I32, bytes: bytemuck::cast_slice(&k).to_vec() }]);
    let ds = Dataset::open(&path).unwrap();
    let t = Transform {
        with: vec![("k2".into(), parse_expr("k").unwrap())],
        select: Some(vec!["k2".into()]),
        standardize: Cols::List(vec!["k2".into()]),
        ..Transform::default()
    };
    let out = dir.path("o.safetensors");
    let (_, rep) = ds.lazy().transform(t).sink(&out, &SinkOptions::default(), &Device::Cpu, &RunOptions::default()).unwrap();
    assert_eq!(rep.columns[0].1, DType::F32);
    let r = Dataset::open(&out).unwrap().lazy().aggregate([all_stats(["k2"])]).collect(&Device::Cpu).unwrap();
    let s = r.column("k2").unwrap();
    assert!(s.mean.unwrap().abs() < 1e-6 && (s.std.unwrap() - 1.0).abs() < 1e-6, "{s:?}");
}

/// An expression whose registers outgrow the budget is refused instead of allocating.
#[test]
fn huge_expressions_respect_the_budget() {
    let dir = TempDir::new("hugeexpr");
    let x: Vec<f32> = (0..100).map(|i| i as f32).collect();
    let path = dir.path("i.safetensors");
    write_safetensors(&path, 100, &[f32_col("f1", &x)]);
    let ds = Dataset::open(&path).unwrap();
    let term = (0..120).map(|_| "f1").collect::<Vec<_>>().join(" + ");
    let text = (0..120).map(|_| format!("({term})")).collect::<Vec<_>>().join(" + ") + " > 0";
    let e = parse_expr(&text).unwrap();
    let err = ds
        .lazy()
        .filter(e)
        .aggregate([all_stats(["f1"])])
        .collect_with(&Device::Cpu, &RunOptions { memory_budget: 16 << 20, ..RunOptions::default() })
        .unwrap_err();
    assert!(err.to_string().contains("working memory"), "{err}");
}

/// `-(16777217)` is an exact integer literal.
#[test]
fn negated_integer_literals_compare_exactly() {
    let dir = TempDir::new("negint");
    let v: Vec<i64> = vec![-16_777_217, -16_777_216, -16_777_218];
    let path = dir.path("i.safetensors");
    write_safetensors(&path, 3, &[ColData { name: "neg".into(), dtype: DType::I64, bytes: bytemuck::cast_slice(&v).to_vec() }]);
    let ds = Dataset::open(&path).unwrap();
    let n = ds
        .lazy()
        .filter(parse_expr("neg == -(16777217)").unwrap())
        .aggregate([all_stats(["neg"])])
        .collect(&Device::Cpu)
        .unwrap()
        .rows_selected;
    assert_eq!(n, 1);
}

/// Fit files: "columns" is optional, steps must follow the pipeline, clip needs lo <= hi.
#[test]
fn fit_files_are_validated() {
    let ok = r#"{"format": "tilestream-fit", "version": 1, "steps": [{"column": "f0", "op": "clip", "params": {"lo": -1, "hi": 1}}], "fill_nan": null, "cast": null}"#;
    let fit = Fit::from_json_str(ok).unwrap();
    assert!(fit.columns.is_empty());
    let bad_order = r#"{"format": "tilestream-fit", "version": 1, "steps": [{"column": "f0", "op": "standardize", "params": {"mean": 0, "std": 1}}, {"column": "f0", "op": "clip", "params": {"lo": -1, "hi": 1}}]}"#;
    assert!(Fit::from_json_str(bad_order).unwrap_err().contains("order"));
    let bad_clip = r#"{"format": "tilestream-fit", "version": 1, "steps": [{"column": "f0", "op": "clip", "params": {"lo": 2, "hi": 1}}]}"#;
    assert!(Fit::from_json_str(bad_clip).unwrap_err().contains("lo <= hi"));
    // A fit without "columns" applies to every input column.
    let dir = TempDir::new("fitcols");
    let x: Vec<f32> = vec![-5.0, 0.5, 7.0];
    let path = dir.path("i.safetensors");
    write_safetensors(&path, 3, &[f32_col("f0", &x), f32_col("g", &x)]);
    let out = dir.path("o.safetensors");
    let rep = tilestream::apply_fit(
        &Dataset::open(&path).unwrap().lazy(),
        &fit,
        &out,
        &SinkOptions::default(),
        &Device::Cpu,
        &RunOptions::default(),
    )
    .unwrap();
    assert_eq!(rep.columns.iter().map(|c| c.0.as_str()).collect::<Vec<_>>(), ["f0", "g"]);
}

/// `--save-fit` never overwrites an input, and is not left behind when the run fails.
#[test]
fn save_fit_is_checked_and_written_last() {
    let dir = TempDir::new("savefit");
    let input = dir.path("in.safetensors");
    let st = bin().args(["gen", input.to_str().unwrap(), "--rows", "1000"]).status().unwrap();
    assert!(st.success());
    let before = std::fs::read(&input).unwrap();
    let out = dir.path("out.safetensors");
    let r = bin()
        .args([
            "transform",
            input.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
            "--standardize",
            "f0",
            "--save-fit",
            input.to_str().unwrap(),
            "--force",
        ])
        .output()
        .unwrap();
    assert_eq!(r.status.code(), Some(2), "{}", String::from_utf8_lossy(&r.stderr));
    assert_eq!(std::fs::read(&input).unwrap(), before, "input untouched");
    // Output exists and no --force: the run fails and leaves no fit file.
    std::fs::write(&out, b"keep").unwrap();
    let fit = dir.path("fit.json");
    let r = bin()
        .args([
            "transform",
            input.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
            "--standardize",
            "f0",
            "--save-fit",
            fit.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert_eq!(r.status.code(), Some(2));
    assert!(!fit.exists(), "no fit file after a failed run");
    assert_eq!(std::fs::read(&out).unwrap(), b"keep");
}

/// A BOOL byte other than 0 and 1 (numpy reads it as true) made stats count its value
/// (sum 5 for [2, 2, 0, 1]): such a column is now refused by
/// every query that reads it, naming the file, column and row; one that holds only 0 and 1
/// is read as before.
#[test]
fn bool_bytes_other_than_0_and_1_are_refused() {
    let dir = TempDir::new("bools");
    let path = dir.path("b.safetensors");
    let rows = 20_000;
    let x: Vec<f32> = (0..rows).map(|i| i as f32).collect();
    let mut flag: Vec<u8> = (0..rows).map(|i| (i % 3 == 0) as u8).collect();
    let k: Vec<u8> = (0..rows).map(|i| (i % 5) as u8).collect();
    let cols = |flag: &[u8]| {
        [
            f32_col("x", &x),
            ColData { name: "flag".into(), dtype: DType::Bool, bytes: flag.to_vec() },
            ColData { name: "k".into(), dtype: DType::U8, bytes: k.clone() },
        ]
    };
    write_safetensors(&path, rows, &cols(&flag));
    let ds = Dataset::open(&path).unwrap();
    for dev in all_devices() {
        let s = *ds.lazy().aggregate([all_stats(["flag"])]).collect(&dev).unwrap().column("flag").unwrap();
        assert_eq!(s.sum, (rows as f64 / 3.0).ceil(), "{dev:?}: valid bools");
    }
    flag[12_345] = 2;
    write_safetensors(&path, rows, &cols(&flag));
    let ds = Dataset::open(&path).unwrap();
    for dev in all_devices() {
        let queries = [
            ds.lazy().aggregate([all_stats(["flag"])]),
            ds.lazy().filter(col("flag")).aggregate([all_stats(["x"])]),
            ds.lazy().group_by("k").aggregate([all_stats(["flag"])]),
        ];
        for (i, q) in queries.iter().enumerate() {
            let e = q.collect(&dev).expect_err("byte 2 is no BOOL").to_string();
            assert!(e.contains("b.safetensors") && e.contains("`flag`") && e.contains("byte 2 at row 12345"), "{dev:?} query {i}: {e}");
        }
        // A query that does not read the column is not concerned.
        assert!(ds.lazy().aggregate([all_stats(["x"])]).collect(&dev).is_ok());
    }
    let out = bin().args(["stats", path.to_str().unwrap(), "--columns", "flag"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("a BOOL is 0 or 1"), "{}", String::from_utf8_lossy(&out.stderr));
}

/// A file without columns (a `{}` header) beside another made the dataset's row count the
/// first file's: `empty a` was an error and `a empty` was not. Either order now opens the
/// same dataset.
#[test]
fn a_file_without_columns_may_stand_anywhere_side_by_side() {
    let dir = TempDir::new("nocols");
    let a = dir.path("a.safetensors");
    write_safetensors(&a, 5, &[f32_col("x", &[1.0, 2.0, 3.0, 4.0, 5.0])]);
    let empty = dir.path("empty.safetensors");
    let header = b"{}      ";
    std::fs::write(&empty, [&(header.len() as u64).to_le_bytes()[..], header].concat()).unwrap();
    for paths in [[&a, &empty], [&empty, &a]] {
        let ds = Dataset::open_many(&paths, tilestream::FileKind::Auto).unwrap_or_else(|e| panic!("{paths:?}: {e}"));
        assert_eq!((ds.rows(), ds.columns().len()), (5, 1), "{paths:?}");
        let s = *ds.lazy().aggregate([all_stats(["x"])]).collect(&Device::Cpu).unwrap().column("x").unwrap();
        assert_eq!(s.sum, 15.0, "{paths:?}");
    }
}

/// A group-by's state is held within the memory budget or the query is refused, naming
/// the budget: a unit's groups of eight f32 columns grew to 1.5 GiB under a 64 MiB budget
/// (10,000 keys x 1,000 columns), and the merged result beyond it.
#[test]
fn group_by_state_beyond_the_budget_is_refused() {
    let dir = TempDir::new("groupbudget");
    let path = dir.path("g.safetensors");
    let mut rng = tilestream::synth::Rng::new(seed("group_by_state_beyond_the_budget_is_refused"));
    // Two rows per key; 8 f32 columns hold ~1.3 KB per group while a unit runs and ~1.7 KB
    // in the result (`exec::group_bytes`, `exec::group_result_bytes`).
    let mut run = |keys: usize, budget: u64| {
        let rows = 2 * keys;
        let mut cols: Vec<ColData> =
            (0..8).map(|c| f32_col(&format!("f{c}"), &(0..rows).map(|_| rng.normal() as f32).collect::<Vec<_>>())).collect();
        let k: Vec<i32> = (0..rows).map(|i| (i % keys) as i32 * 3 - 7).collect();
        cols.push(ColData { name: "k".into(), dtype: DType::I32, bytes: bytemuck::cast_slice(&k).to_vec() });
        write_safetensors(&path, rows, &cols);
        let ds = Dataset::open(&path).unwrap();
        let names: Vec<String> = (0..8).map(|c| format!("f{c}")).collect();
        let opts = RunOptions { memory_budget: budget, threads: Some(1), ..RunOptions::default() };
        ds.lazy().group_by("k").aggregate([all_stats(names)]).collect_with(&Device::Cpu, &opts).map(|r| r.groups.len())
    };
    // 64 MiB: half for a unit's groups (~25,000 of them), half for the result (~19,000).
    let e = run(30_000, 64 << 20).expect_err("a unit of 30,000 groups needs ~39 MB").to_string();
    assert!(e.contains("a group-by unit") && e.contains("30000 groups") && e.contains("raise --memory-budget"), "{e}");
    let e = run(22_000, 64 << 20).expect_err("a result of 22,000 groups needs ~38 MB").to_string();
    assert!(e.contains("group-by's result") && e.contains("raise --memory-budget"), "{e}");
    // A smaller budget only sizes tiles: refusals are measured against 64 MiB.
    assert!(run(22_000, 1).is_err());
    assert_eq!(run(17_000, 1).ok(), Some(17_000));
    assert_eq!(run(30_000, 128 << 20).ok(), Some(30_000));
}

/// A decimal literal compares with an integer column by its exact value, not rounded to an
/// f64 first: `id == 9007199254740993.0` matched the row holding 2^53, not those of 2^53 + 1.
#[test]
fn integer_columns_compare_with_the_exact_decimal_literal() {
    let dir = TempDir::new("declit");
    let ids: Vec<i64> = vec![1 << 53, (1 << 53) + 1, (1 << 53) + 1, 16_777_217, -5, i64::MIN, i64::MAX];
    let path = dir.path("ids.safetensors");
    let v: Vec<f32> = (0..ids.len()).map(|i| i as f32).collect();
    let id = ColData { name: "id".into(), dtype: DType::I64, bytes: bytemuck::cast_slice(&ids).to_vec() };
    write_safetensors(&path, ids.len(), &[id, f32_col("v", &v)]);
    let ds = Dataset::open(&path).unwrap();
    let cases: &[(&str, u64)] = &[
        ("id == 9007199254740993.0", 2),
        ("id == 9.007199254740993e15", 2),
        ("id == 90071992547409930e-1", 2),
        ("id < 9007199254740992.9", 4),
        ("id <= 9007199254740992.9", 4),
        ("id > 9007199254740992.9", 3),
        ("id >= 9007199254740993.00000000000000000001", 1),
        ("id > -5.5", 6),
        ("id < -5.5", 1),
        ("id == -5.0e0", 1),
        ("-5.000000000000000000001 < id", 6),
        ("-(9007199254740993.0) > id", 1),
        ("id != 16777217.5", 7),
        ("id == 1e-400", 0),
        ("id >= 1e-400", 5),
        ("id < 9.3e18", 7),
        ("id > -9.3e18", 7),
    ];
    for dev in all_devices() {
        for &(text, want) in cases {
            let r = ds.lazy().filter(parse_expr(text).unwrap()).aggregate([all_stats(["v"])]).collect(&dev).unwrap();
            assert_eq!(r.rows_selected, want, "{text} on {dev:?}");
        }
    }
    // Printed (as a fit file stores `--with` expressions), a literal keeps its digits: the
    // f64's shortest form, 9007199254740992.0, would compare with another integer.
    for &(text, want) in cases {
        let printed = parse_expr(text).unwrap().to_string();
        let r = ds.lazy().filter(parse_expr(&printed).unwrap()).aggregate([all_stats(["v"])]).collect(&Device::Cpu).unwrap();
        assert_eq!(r.rows_selected, want, "{text} printed as {printed}");
    }
    assert_eq!(
        parse_expr("id == 9007199254740993.0 && v < -1.50e3").unwrap().to_string(),
        "((id == 9007199254740993.0) && (v < (-1.50e3)))"
    );
    // A literal built in code prints its f64 in full where it is an integer column's value.
    assert_eq!(col("id").equals(lit(2f64.powi(60))).to_string(), "(id == 1152921504606846976.0)");
}

/// A u64 value above i64::MAX cannot enter an expression, which computes integers in i64:
/// `--with v=u` wrote i64::MAX for 2^64 - 1 and 2^63 (overflow count 0), and a filter
/// compared i64::MAX. Such a query is refused, naming the row; statistics and group-bys of
/// the column, which read it exactly, still run.
#[test]
fn u64_values_beyond_i64_are_refused_in_expressions() {
    let dir = TempDir::new("u64expr");
    let big: Vec<u64> = vec![5, u64::MAX, 1 << 63, (1 << 63) - 1];
    let small: Vec<u64> = vec![5, 7, (1 << 63) - 1, 0];
    let path = dir.path("u.safetensors");
    let u64_col = |name: &str, v: &[u64]| ColData { name: name.into(), dtype: DType::U64, bytes: bytemuck::cast_slice(v).to_vec() };
    write_safetensors(&path, 4, &[u64_col("u", &big), u64_col("s", &small), f32_col("f", &[1.0, 2.0, 3.0, 4.0])]);
    let ds = Dataset::open(&path).unwrap();
    for dev in all_devices() {
        let e = ds.lazy().filter(parse_expr("u > 3").unwrap()).aggregate([all_stats(["f"])]).collect(&dev).expect_err("u > 3").to_string();
        assert!(e.contains("`u`") && e.contains("18446744073709551615 at row 1"), "{dev:?}: {e}");
        let t = Transform { with: vec![("v".into(), parse_expr("u").unwrap())], ..Transform::default() };
        let out = dir.path("o.safetensors");
        let e = ds.lazy().transform(t).sink(&out, &SinkOptions::default(), &dev, &RunOptions::default()).expect_err("--with v=u");
        assert!(e.to_string().contains("at row 1"), "{dev:?}: {e}");
        assert!(!out.exists(), "{dev:?}: a refused transform left {}", out.display());
        // Values within i64 pass; the column's own statistics stay exact.
        let r = ds.lazy().filter(parse_expr("s > 6").unwrap()).aggregate([all_stats(["f"])]).collect(&dev).unwrap();
        assert_eq!(r.rows_selected, 2, "{dev:?}");
    }
    let r = ds.lazy().aggregate([all_stats(["u"])]).collect(&Device::Cpu).unwrap();
    assert_eq!(r.column("u").unwrap().max, Some(tilestream::Number::Int(u64::MAX as i128)));
}

/// An f64 column cast to f16 or bf16 is rounded once, to its own nearest value: it went
/// through f32 (two roundings to nearest), so a value just above the midpoint of two f16s
/// that f32 rounds onto the midpoint fell to the even one (162.68749623224357 gave 162.75,
/// numpy 162.625; the `half` crate's `from_f64` does the same). Every value here is such a
/// hazard, with its right answer by construction, and every device writes those bits.
#[test]
fn f64_columns_cast_to_f16_and_bf16_round_once() {
    let s = seed("f64_columns_cast_to_f16_and_bf16_round_once");
    let mut rng = tilestream::synth::Rng::new(s);
    let dir = TempDir::new("castonce");
    // Midpoints of neighbouring f16 (or bf16) values, nudged by a quarter of an f32 ulp
    // towards the odd one: the right answer, where a tie through f32 goes to the even one.
    let hazards = |value: fn(u16) -> f64, top: u16, rng: &mut tilestream::synth::Rng| -> (Vec<f64>, Vec<u16>) {
        let (mut xs, mut want) = (Vec::new(), Vec::new());
        while xs.len() < 4000 {
            let h = (rng.next_u64() % top as u64) as u16;
            let mid = (value(h) + value(h + 1)) / 2.0;
            let ulp = f32::from_bits((mid as f32).to_bits() + 1) as f64 - mid;
            let (x, odd) = if h.is_multiple_of(2) { (mid + ulp / 4.0, h + 1) } else { (mid - ulp / 4.0, h) };
            let negative = rng.next_u64().is_multiple_of(2);
            xs.push(if negative { -x } else { x });
            want.push(odd | if negative { 0x8000 } else { 0 });
        }
        (xs, want)
    };
    let (mut f16s, mut f16_want) = hazards(|h| half::f16::from_bits(h).to_f64(), 0x7bff, &mut rng);
    // The two values QA found (numpy's answers).
    f16s.extend([162.68749623224357, 0.9226074134592537]);
    f16_want.extend([0x5915, 0x3b61]);
    let (mut bf16s, mut bf16_want) = hazards(|h| half::bf16::from_bits(h).to_f64(), 0x7f7f, &mut rng);
    bf16s.extend([0.0, 0.0]);
    bf16_want.extend([0, 0]);
    // Through f32 every one of them lands on the other neighbour.
    assert!(f16s.iter().zip(&f16_want).all(|(&x, &w)| half::f16::from_f32(x as f32).to_bits() != w || x == 0.0));
    let path = dir.path("d.safetensors");
    let col = |name: &str, v: &[f64]| ColData { name: name.into(), dtype: DType::F64, bytes: bytemuck::cast_slice(v).to_vec() };
    write_safetensors(&path, f16s.len(), &[col("a", &f16s), col("b", &bf16s)]);
    let ds = Dataset::open(&path).unwrap();
    for (dtype, name, want) in [(DType::F16, "a", &f16_want), (DType::BF16, "b", &bf16_want)] {
        for dev in all_devices() {
            let out = dir.path("o.safetensors");
            let t = Transform { select: Some(vec![name.into()]), cast: Some(dtype), ..Transform::default() };
            ds.lazy().transform(t).sink(&out, &SinkOptions { force: true }, &dev, &RunOptions::default()).unwrap();
            let bytes = std::fs::read(&out).unwrap();
            let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
            let got: Vec<u16> = st.tensor(name).unwrap().data().chunks_exact(2).map(|b| u16::from_le_bytes([b[0], b[1]])).collect();
            let wrong: Vec<_> = got.iter().zip(want.iter()).enumerate().filter(|(_, (g, w))| g != w).take(3).collect();
            assert!(wrong.is_empty(), "{dtype:?} on {dev:?}: not rounded once (row, got, want): {wrong:?}");
        }
    }
}

/// An f64 column compared with an f32, f16 or bf16 column compares exactly in f64, as numpy
/// does: both were rounded to f32, so `d == f` held for d = 1.00000001 and f = 1.
#[test]
fn f64_columns_compare_exactly_with_narrower_float_columns() {
    let s = seed("f64_columns_compare_exactly_with_narrower_float_columns");
    let mut rng = tilestream::synth::Rng::new(s);
    let dir = TempDir::new("mixedcmp");
    let rows = 3000;
    // f, h, b: values of each width; d: the f32 value itself, or one just beside it, or
    // special values, so that every order occurs and f32 rounding would decide wrongly.
    let f: Vec<f32> = (0..rows).map(|_| awkward(&mut rng, 0.05) as f32).collect();
    let h: Vec<half::f16> = f.iter().map(|&x| half::f16::from_f32(x)).collect();
    let b: Vec<half::bf16> = f.iter().map(|&x| half::bf16::from_f32(x)).collect();
    let d: Vec<f64> = f
        .iter()
        .map(|&x| match rng.next_u64() % 5 {
            0 => x as f64,
            1 => (x as f64) * (1.0 + 1e-12),
            2 => (x as f64) - 1e-9,
            3 => half::f16::from_f32(x).to_f64(),
            _ => half::bf16::from_f32(x).to_f64() + 1e-12,
        })
        .collect();
    let path = dir.path("m.safetensors");
    let cols = [
        ColData { name: "d".into(), dtype: DType::F64, bytes: bytemuck::cast_slice(&d).to_vec() },
        f32_col("f", &f),
        ColData { name: "h".into(), dtype: DType::F16, bytes: bytemuck::cast_slice(&h).to_vec() },
        ColData { name: "b".into(), dtype: DType::BF16, bytes: bytemuck::cast_slice(&b).to_vec() },
    ];
    write_safetensors(&path, rows, &cols);
    let ds = Dataset::open(&path).unwrap();
    let other: [(&str, Vec<f64>); 3] = [
        ("f", f.iter().map(|&x| x as f64).collect()),
        ("h", h.iter().map(|x| x.to_f64()).collect()),
        ("b", b.iter().map(|x| x.to_f64()).collect()),
    ];
    for dev in all_devices() {
        for (name, values) in &other {
            for (op, holds) in [
                ("<", (|a: f64, b: f64| a < b) as fn(f64, f64) -> bool),
                ("<=", |a, b| a <= b),
                (">", |a, b| a > b),
                (">=", |a, b| a >= b),
                ("==", |a, b| a == b),
                ("!=", |a, b| a != b && !a.is_nan() && !b.is_nan()),
            ] {
                for text in [format!("d {op} {name}"), format!("{name} {op} d")] {
                    let want =
                        d.iter().zip(values).filter(|&(&x, &y)| if text.starts_with('d') { holds(x, y) } else { holds(y, x) }).count()
                            as u64;
                    let r = ds.lazy().filter(parse_expr(&text).unwrap()).aggregate([all_stats(["f"])]).collect(&dev).unwrap();
                    assert_eq!(r.rows_selected, want, "{text} on {dev:?}");
                }
            }
        }
    }
}
