//! Every query kind on every available device against the naive f64 reference
//! (`tilestream::reference`), on random data (fresh seed each run, printed), awkward sizes
//! and NaN/±inf.

mod common;

use common::*;
use tilestream::expr::{BinOp, Expr, ExprKind, Func, Literal};
use tilestream::reference::{self, RefVal};
use tilestream::synth::Rng;
use tilestream::{DType, Dataset, Device, GroupStats, Number, RunOptions, all_stats, col, hist, lit};

/// Row counts around the block size (8192) and the workgroup-ish sizes.
const SIZES: &[usize] = &[0, 1, 2, 7, 255, 256, 257, 8191, 8192, 8193, 3 * 8192 + 5, 40_000, 2 * 65_536 + 77];

fn devices() -> Vec<Device> {
    all_devices()
}

/// Small budgets force many tiles: one block per tile at 1 byte.
fn budgets() -> Vec<RunOptions> {
    vec![
        RunOptions::default(),
        RunOptions { memory_budget: 1, threads: Some(1), ..RunOptions::default() },
        RunOptions { memory_budget: 300_000, threads: Some(3), ..RunOptions::default() },
    ]
}

fn rel_close(a: f64, b: f64, rel: f64, abs: f64) -> bool {
    if a.is_nan() || b.is_nan() {
        return a.is_nan() && b.is_nan();
    }
    if a.is_infinite() || b.is_infinite() {
        return a == b;
    }
    (a - b).abs() <= rel * a.abs().max(b.abs()) + abs
}

/// Compares engine stats with reference stats of the same values.
fn check_stats(what: &str, got: &tilestream::ColumnStats, values: &[f64]) {
    let r = reference::stats(values);
    assert_eq!(got.count, r.count, "{what}: count");
    assert_eq!(got.nan_count, r.nan, "{what}: nan_count");
    assert_eq!(got.inf_count, r.inf, "{what}: inf_count");
    if r.count == 0 {
        assert_eq!(got.sum, 0.0, "{what}: sum of nothing");
        assert!(
            got.mean.is_none() && got.min.is_none() && got.max.is_none() && got.var.is_none() && got.std.is_none(),
            "{what}: empty stats must be None: {got:?}"
        );
        return;
    }
    let min = got.min.map(Number::as_f64).unwrap_or(f64::NAN);
    let max = got.max.map(Number::as_f64).unwrap_or(f64::NAN);
    assert_eq!(min, r.min, "{what}: min");
    assert_eq!(max, r.max, "{what}: max");
    assert!(rel_close(got.sum, r.sum, 0.0, 1e-9 * r.abs_sum + 1e-300), "{what}: sum {} vs {}", got.sum, r.sum);
    let mean = got.mean.unwrap_or(f64::NAN);
    assert!(rel_close(mean, r.mean, 1e-9, 1e-9 * r.abs_sum / r.count as f64), "{what}: mean {mean} vs {}", r.mean);
    let var = got.var.unwrap_or(f64::NAN);
    // Relative 1e-6, plus the cancellation floor of f64 on data with a large mean.
    let floor = 1e-12 * r.mean * r.mean;
    assert!(rel_close(var, r.var, 1e-6, floor), "{what}: var {var} vs {}", r.var);
}

/// A random boolean expression over the mixed table's columns.
/// `a < b`, `<=`, `>`, `>=`, `==`, `!=` for k = 0..6.
fn cmp(a: Expr, b: Expr, k: usize) -> Expr {
    match k {
        0 => a.lt(b),
        1 => a.le(b),
        2 => a.gt(b),
        3 => a.ge(b),
        4 => a.equals(b),
        _ => a.not_equals(b),
    }
}

fn random_predicate(rng: &mut Rng, depth: u32) -> Expr {
    let pick = |rng: &mut Rng, n: usize| (rng.uniform() * n as f64) as usize % n;
    if depth > 0 && rng.uniform() < 0.4 {
        let a = random_predicate(rng, depth - 1);
        let b = random_predicate(rng, depth - 1);
        return match pick(rng, 3) {
            0 => a.and(b),
            1 => a.or(b),
            _ => !a,
        };
    }
    let k = pick(rng, 6);
    match pick(rng, 9) {
        0 => cmp(col("a"), lit(rng.normal() * 3.0 + 1.0), k),
        1 => cmp(col("k"), lit((rng.uniform() * 20.0) as i64), k),
        2 => cmp(col("k"), lit(rng.uniform() * 20.0), k),
        3 => cmp(col("i"), lit((rng.normal() * 1000.0) as i64), k),
        4 => cmp(col("e"), lit((1i64 << 40) + (rng.normal() * 1e6) as i64), k),
        5 => cmp(random_numeric(rng, 2), random_numeric(rng, 1), k),
        6 => match pick(rng, 3) {
            0 => col("c").is_nan(),
            1 => col("a").is_inf(),
            _ => col("d").is_finite(),
        },
        7 => col("flag").equals(lit(rng.uniform() < 0.5)),
        _ => cmp(col("s"), lit((rng.uniform() * 600.0 - 300.0) as i64), k),
    }
}

/// A random float expression.
fn random_numeric(rng: &mut Rng, depth: u32) -> Expr {
    let pick = |rng: &mut Rng, n: usize| (rng.uniform() * n as f64) as usize % n;
    if depth == 0 || rng.uniform() < 0.3 {
        return match pick(rng, 7) {
            0 => col("a"),
            1 => col("b"),
            2 => col("c"),
            3 => col("d"),
            4 => col("i"),
            5 => col("k"),
            _ => lit(rng.normal() * 10.0),
        };
    }
    let a = random_numeric(rng, depth - 1);
    let b = random_numeric(rng, depth - 1);
    match pick(rng, 12) {
        0 => a + b,
        1 => a - b,
        2 => a * b,
        3 => a / b,
        4 => a.abs(),
        5 => a.sqrt(),
        6 => a.min(b),
        7 => a.max(b),
        8 => a.clip(lit(-2.0), lit(3.0)),
        9 => -a,
        10 => a.abs().log1p(),
        _ => (a * lit(0.01)).exp(),
    }
}

/// True when the expression uses a function whose f32 result may differ by an ulp from the
/// correctly rounded f64 one (exp, log, log1p).
fn uses_libm(e: &Expr) -> bool {
    match &e.kind {
        ExprKind::Call(f, args) => matches!(f, Func::Exp | Func::Log | Func::Log1p) || args.iter().any(uses_libm),
        ExprKind::Neg(a) | ExprKind::Not(a) => uses_libm(a),
        ExprKind::Binary(_, a, b) => uses_libm(a) || uses_libm(b),
        ExprKind::Col(_) | ExprKind::Lit(_) => false,
    }
}

/// A group-by's keys, rows and statistics against the reference: `want` holds each key's
/// selected rows.
fn check_groups(what: &str, groups: &[GroupStats], want: &std::collections::BTreeMap<i128, Vec<u64>>, ds: &Dataset) {
    assert_eq!(groups.iter().map(|g| g.key).collect::<Vec<_>>(), want.keys().copied().collect::<Vec<_>>(), "{what}: keys");
    for grp in groups {
        let rows_k = &want[&grp.key];
        assert_eq!(grp.rows, rows_k.len() as u64, "{what}: group {} rows", grp.key);
        for (n, s) in &grp.columns {
            check_stats(&format!("{what} group={} col={n}", grp.key), s, &raw_values(ds, n, rows_k));
        }
    }
}

fn raw_values(ds: &Dataset, name: &str, rows: &[u64]) -> Vec<f64> {
    let c = ds.column_index(name).unwrap();
    rows.iter().map(|&r| reference::raw_f64(ds, c, r)).collect()
}

#[test]
fn stats_filters_and_groups_match_reference() {
    let seed = seed("stats_filters_and_groups_match_reference");
    let mut rng = Rng::new(seed);
    let dir = TempDir::new("equiv");
    for (si, &rows) in SIZES.iter().enumerate() {
        let mut cols = mixed_columns(&mut rng, rows, if si % 2 == 0 { 0.05 } else { 0.3 });
        // An i8 key with negative values and gaps (8-bit keys are their own group slots).
        let j: Vec<i8> = (0..rows).map(|_| [-128, -7, -1, 0, 3, 127][(rng.uniform() * rng.uniform() * 6.0) as usize]).collect();
        cols.push(ColData { name: "j".into(), dtype: DType::I8, bytes: bytemuck::cast_slice(&j).to_vec() });
        // 64-bit keys (the CPU's table of wide keys): w, 700 i64 values over the whole range
        // (its ends, -1 and 0 included); x, 300 u64 values, half of them at or above 2^63.
        // A third of the rows repeat the previous row's key (runs of one key).
        let wide_keys = |rng: &mut Rng, fixed: &[u64], n: usize, top: u64| -> Vec<u64> {
            let pick: Vec<u64> =
                (0..n).map(|i| fixed.get(i).copied().unwrap_or_else(|| rng.next_u64() >> (rng.next_u64() % 2) | top)).collect();
            let mut prev = pick[0];
            (0..rows)
                .map(|_| {
                    if rng.uniform() > 0.33 {
                        prev = pick[(rng.uniform() * rng.uniform() * n as f64) as usize];
                    }
                    prev
                })
                .collect()
        };
        let w = wide_keys(&mut rng, &[i64::MIN as u64, i64::MAX as u64, u64::MAX, 0], 700, 0);
        cols.push(ColData { name: "w".into(), dtype: DType::I64, bytes: bytemuck::cast_slice(&w).to_vec() });
        let x = wide_keys(&mut rng, &[u64::MAX, 1 << 63, 0, 1], 300, 0);
        cols.push(ColData { name: "x".into(), dtype: DType::U64, bytes: bytemuck::cast_slice(&x).to_vec() });
        let path = dir.path(&format!("t{rows}.safetensors"));
        write_safetensors(&path, rows, &cols);
        let ds = Dataset::open(&path).unwrap();
        let names = ["a", "b", "c", "d", "k", "i", "e", "s", "u", "nan"];
        for q in 0..4 {
            let pred = if q == 0 { None } else { Some(random_predicate(&mut rng, 2)) };
            let sel: Vec<u64> = match &pred {
                None => (0..rows as u64).collect(),
                Some(p) => reference::selected_rows(&ds, std::slice::from_ref(p), &[]),
            };
            let what = format!("rows={rows} filter={}", pred.as_ref().map_or("-".to_string(), |p| p.to_string()));
            // The selected rows of each group, by key column.
            let groups = |key: &str| {
                let kc = ds.column_index(key).unwrap();
                let mut by_key = std::collections::BTreeMap::<i128, Vec<u64>>::new();
                for &r in &sel {
                    let RefVal::I(k) = reference::raw(&ds, kc, r) else { panic!("{key} is an integer column") };
                    by_key.entry(k).or_default().push(r);
                }
                by_key
            };
            let by_key = [("k", groups("k")), ("j", groups("j")), ("s", groups("s")), ("w", groups("w")), ("x", groups("x"))];
            for dev in devices() {
                let mut first: Option<String> = None;
                for opts in budgets() {
                    let mut lf = ds.lazy();
                    if let Some(p) = &pred {
                        lf = lf.filter(p.clone());
                    }
                    let r = lf.clone().aggregate([all_stats(names)]).collect_with(&dev, &opts).unwrap();
                    assert_eq!(r.rows_selected, sel.len() as u64, "{what}: rows_selected");
                    for n in names {
                        check_stats(&format!("{what} col={n}"), r.column(n).unwrap(), &raw_values(&ds, n, &sel));
                    }
                    // Same backend, any tile size or thread count: bit-identical.
                    let text = format!("{:?}", r.columns);
                    match &first {
                        None => first = Some(text),
                        Some(f) => assert_eq!(f, &text, "{what}: results depend on the tile size or threads"),
                    }
                    // Group-by u8 keys, and on the CPU i8, i16, i64 and u64 keys (tests/gpu.rs
                    // groups the GPUs by wide keys; on the software adapter every key is slow).
                    let keys = if matches!(dev, Device::Cpu) { &by_key[..] } else { &by_key[..1] };
                    for (key, want) in keys {
                        let g = lf
                            .clone()
                            .group_by(*key)
                            .aggregate([all_stats(["a", "b", "c", "i", "e", "u"])])
                            .collect_with(&dev, &opts)
                            .unwrap();
                        check_groups(&format!("{what} on {dev:?} {opts:?} by {key}"), &g.groups, want, &ds);
                    }
                }
            }
        }
    }
}

/// Group-bys whose statistics all read f32 columns (the CPU's row-wise kernels, which make
/// an 8-bit key's group slots 8,192 rows at a time), by u8 and i8 keys, with and without a
/// filter, against the reference, bit-identical across tile sizes and threads.
#[test]
fn f32_group_bys_by_8_bit_keys_match_reference() {
    let seed = seed("f32_group_bys_by_8_bit_keys_match_reference");
    let mut rng = Rng::new(seed);
    let dir = TempDir::new("equiv8");
    let names: Vec<String> = (0..9).map(|c| format!("x{c}")).collect();
    for rows in [1, 8191, 8193, 2 * 8192 + 5, 70_000] {
        let mut cols: Vec<ColData> = names
            .iter()
            .map(|n| {
                let v: Vec<f32> = (0..rows).map(|_| awkward(&mut rng, 0.02) as f32).collect();
                ColData { name: n.clone(), dtype: DType::F32, bytes: bytemuck::cast_slice(&v).to_vec() }
            })
            .collect();
        let k: Vec<u8> = (0..rows).map(|_| (rng.uniform() * rng.uniform() * 70.0) as u8).collect();
        cols.push(ColData { name: "k".into(), dtype: DType::U8, bytes: k });
        let j: Vec<i8> = (0..rows).map(|_| [-128, -7, -1, 0, 3, 127][(rng.uniform() * 6.0) as usize]).collect();
        cols.push(ColData { name: "j".into(), dtype: DType::I8, bytes: bytemuck::cast_slice(&j).to_vec() });
        let path = dir.path(&format!("g{rows}.safetensors"));
        write_safetensors(&path, rows, &cols);
        let ds = Dataset::open(&path).unwrap();
        for filtered in [false, true] {
            let pred = col("x0").gt(lit(0.5)).or(col("k").lt(lit(3)));
            let sel: Vec<u64> =
                if filtered { reference::selected_rows(&ds, std::slice::from_ref(&pred), &[]) } else { (0..rows as u64).collect() };
            for key in ["k", "j"] {
                let kc = ds.column_index(key).unwrap();
                let mut want = std::collections::BTreeMap::<i128, Vec<u64>>::new();
                for &r in &sel {
                    want.entry(reference::raw_f64(&ds, kc, r) as i128).or_default().push(r);
                }
                let what = format!("rows={rows} filtered={filtered} by {key}");
                for dev in devices().into_iter().filter(|d| key == "k" || matches!(d, Device::Cpu)) {
                    let mut first: Option<String> = None;
                    for opts in budgets() {
                        let mut lf = ds.lazy();
                        if filtered {
                            lf = lf.filter(pred.clone());
                        }
                        let g = lf.group_by(key).aggregate([all_stats(names.clone())]).collect_with(&dev, &opts).unwrap();
                        check_groups(&format!("{what} on {dev:?}"), &g.groups, &want, &ds);
                        let text = format!("{:?}", g.groups);
                        match &first {
                            None => first = Some(text),
                            Some(f) => assert_eq!(f, &text, "{what} on {dev:?}: results depend on the tile size or threads"),
                        }
                    }
                }
            }
        }
    }
}

/// A group-by by a key wider than 8 bits makes one partial per unit of 2^21 rows on the CPU,
/// read in blocks (of 262,144 rows, or 65,536 under a filter) whose groups join: f32 columns
/// (and f16, widened) accumulate row by row across the blocks, others join block partials
/// (`BlockStats::append`). Two units (one short), keys with few, sorted and 65,536 values,
/// columns of five dtypes with NaN/±inf: the reference's values, and the same bits for every
/// tile size and thread count.
#[test]
fn wide_key_group_bys_join_blocks_into_units() {
    let seed = seed("wide_key_group_bys_join_blocks_into_units");
    let mut rng = Rng::new(seed);
    let dir = TempDir::new("units");
    let rows = (1 << 21) + 70_001;
    let f32s = |rng: &mut Rng, rate: f64| -> Vec<u8> {
        let v: Vec<f32> = (0..rows).map(|_| awkward(rng, rate) as f32).collect();
        bytemuck::cast_slice(&v).to_vec()
    };
    let mut cols = vec![
        ColData { name: "a".into(), dtype: DType::F32, bytes: f32s(&mut rng, 0.01) },
        ColData { name: "b".into(), dtype: DType::F32, bytes: f32s(&mut rng, 0.0) },
    ];
    let h: Vec<u16> = (0..rows).map(|_| half::f16::from_f64(awkward(&mut rng, 0.01)).to_bits()).collect();
    cols.push(ColData { name: "h".into(), dtype: DType::F16, bytes: bytemuck::cast_slice(&h).to_vec() });
    let d: Vec<f64> = (0..rows).map(|_| awkward(&mut rng, 0.01) * 1e-3 + 1e8).collect();
    cols.push(ColData { name: "d".into(), dtype: DType::F64, bytes: bytemuck::cast_slice(&d).to_vec() });
    let i: Vec<i32> = (0..rows).map(|_| (rng.normal() * 1000.0) as i32).collect();
    cols.push(ColData { name: "i".into(), dtype: DType::I32, bytes: bytemuck::cast_slice(&i).to_vec() });
    // Keys: ~3,000 random i32 ids, i64 runs (sorted), every u16 value.
    let id: Vec<i32> = (0..rows).map(|_| (rng.uniform() * rng.uniform() * 3000.0) as i32 - 1500).collect();
    cols.push(ColData { name: "id".into(), dtype: DType::I32, bytes: bytemuck::cast_slice(&id).to_vec() });
    let t: Vec<i64> = (0..rows).map(|r| (r as i64 / 5000) * 1_000_000_007 - (1 << 40)).collect();
    cols.push(ColData { name: "t".into(), dtype: DType::I64, bytes: bytemuck::cast_slice(&t).to_vec() });
    let w: Vec<u16> = (0..rows).map(|_| (rng.next_u64() >> 48) as u16).collect();
    cols.push(ColData { name: "w".into(), dtype: DType::U16, bytes: bytemuck::cast_slice(&w).to_vec() });
    let path = dir.path("units.safetensors");
    write_safetensors(&path, rows, &cols);
    drop(cols);
    let ds = Dataset::open(&path).unwrap();
    let names = ["a", "b", "h", "d", "i"];
    let pred = col("b").gt(lit(0.0));
    for filtered in [false, true] {
        let sel: Vec<u64> =
            if filtered { reference::selected_rows(&ds, std::slice::from_ref(&pred), &[]) } else { (0..rows as u64).collect() };
        for key in ["id", "t", "w"] {
            let kc = ds.column_index(key).unwrap();
            let mut want = std::collections::BTreeMap::<i128, Vec<u64>>::new();
            for &r in &sel {
                want.entry(reference::raw_f64(&ds, kc, r) as i128).or_default().push(r);
            }
            let what = format!("filtered={filtered} by {key} ({} keys)", want.len());
            let mut first: Option<String> = None;
            for opts in [
                RunOptions::default(),
                RunOptions { memory_budget: 1, threads: Some(1), ..RunOptions::default() },
                RunOptions { memory_budget: 1 << 30, threads: Some(3), ..RunOptions::default() },
                // A tile of both units (the worst case, 65,536 groups each, would allow one),
                // each allowed ~48,000 groups: the ~3,000 ids and ~430 sorted keys fit, the
                // 65,536 u16 values do not, and their rows run again one unit at a time.
                RunOptions { memory_budget: 256 << 20, threads: Some(3), ..RunOptions::default() },
            ] {
                let mut lf = ds.lazy();
                if filtered {
                    lf = lf.filter(pred.clone());
                }
                let g = lf.group_by(key).aggregate([all_stats(names)]).collect_with(&Device::Cpu, &opts);
                if key == "w" && opts.memory_budget == 1 {
                    // 65,536 groups of these five columns hold ~90 MB per unit: more than
                    // half of the least budget a query is refused against (64 MiB).
                    let e = g.expect_err("65,536 groups under a tiny budget").to_string();
                    assert!(e.contains("a group-by unit") && e.contains("raise --memory-budget"), "{what}: {e}");
                    continue;
                }
                let g = g.unwrap();
                if opts.memory_budget == 256 << 20 && opts.threads == Some(3) {
                    let units = if key == "w" { 1 } else { 2 };
                    assert_eq!(g.report.tile_rows, units << 21, "{what}: the last tile's rows under a 256 MiB budget on 3 threads");
                }
                let text = format!("{:?}", g.groups);
                match &first {
                    Some(f) => assert_eq!(f, &text, "{what}: results depend on the tile size or threads ({opts:?})"),
                    None => {
                        check_groups(&what, &g.groups, &want, &ds);
                        first = Some(text);
                    }
                }
            }
        }
    }
}

/// The CPU computes statistics that read a column in place (no filter, no key) in tasks of
/// consecutive blocks: up to 16, fewer with more threads or smaller tiles, the tile's last
/// task and block often short. Every grouping must give the reference's values and the same
/// bits.
#[test]
fn in_place_statistics_do_not_depend_on_how_blocks_are_grouped() {
    let seed = seed("in_place_statistics_do_not_depend_on_how_blocks_are_grouped");
    let mut rng = Rng::new(seed);
    let dir = TempDir::new("grouped");
    // 74 blocks of 8,192 rows, the last 3 rows short: one thread runs the whole file as one
    // tile in tasks of 16 blocks and a last one of 10; two threads take 9, five 3, forty 1;
    // a 3 MiB budget makes tiles of 8 blocks (tasks of 2 on one thread).
    let rows = 74 * 8192 - 3;
    let cols = mixed_columns(&mut rng, rows, 0.02);
    let path = dir.path("g.safetensors");
    write_safetensors(&path, rows, &cols);
    let ds = Dataset::open(&path).unwrap();
    let names = ["a", "b", "c", "d", "k", "i", "e", "s", "u", "nan"];
    let all: Vec<u64> = (0..rows as u64).collect();
    let mut first: Option<String> = None;
    for threads in [1, 2, 5, 40] {
        for budget in [RunOptions::default().memory_budget, 3 << 20] {
            let opts = RunOptions { memory_budget: budget, threads: Some(threads), ..RunOptions::default() };
            let r = ds.lazy().aggregate([all_stats(names)]).collect_with(&Device::Cpu, &opts).unwrap();
            let text = format!("{:?}", r.columns);
            match &first {
                None => {
                    for n in names {
                        check_stats(&format!("col={n}"), r.column(n).unwrap(), &raw_values(&ds, n, &all));
                    }
                    first = Some(text);
                }
                Some(f) => assert_eq!(f, &text, "{threads} threads, budget {budget}: results depend on how blocks are grouped"),
            }
        }
    }
}

#[test]
fn histograms_match_reference_exactly() {
    let seed = seed("histograms_match_reference_exactly");
    let mut rng = Rng::new(seed);
    let dir = TempDir::new("hist");
    for &rows in SIZES {
        let cols = mixed_columns(&mut rng, rows, 0.1);
        let path = dir.path(&format!("h{rows}.safetensors"));
        write_safetensors(&path, rows, &cols);
        let ds = Dataset::open(&path).unwrap();
        for name in ["a", "c", "d", "i", "k", "b", "nan"] {
            let bins = 1 + (rng.uniform() * 300.0) as u32;
            let vals = raw_values(&ds, name, &(0..rows as u64).collect::<Vec<_>>());
            let finite: Vec<f64> = vals.iter().copied().filter(|v| v.is_finite()).collect();
            for dev in devices() {
                let r = ds.lazy().aggregate([hist(name, bins)]).collect_with(&dev, &RunOptions::default());
                if finite.is_empty() {
                    assert!(matches!(r, Err(tilestream::Error::NoData(_))), "rows={rows} {name}: no finite value must be an error");
                    continue;
                }
                let h = &r.unwrap().histograms[0];
                let lo = finite.iter().copied().fold(f64::INFINITY, f64::min);
                let hi = finite.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                assert_eq!((h.lo, h.hi), (lo, hi), "rows={rows} {name}: range");
                let (counts, below, above, nan) = reference::histogram(&vals, lo, hi, bins);
                assert_eq!(h.counts, counts, "rows={rows} {name} bins={bins}");
                assert_eq!((h.below, h.above, h.nan), (below, above, nan), "rows={rows} {name}");
                // A fixed range with values outside it, and HI == LO.
                let (a, b) = (rng.normal(), rng.normal());
                let (lo, hi) = (a.min(b), a.max(b));
                let h =
                    &ds.lazy().aggregate([hist(name, bins).range(lo, hi)]).collect_with(&dev, &RunOptions::default()).unwrap().histograms
                        [0];
                assert_eq!(
                    (h.counts.clone(), h.below, h.above, h.nan),
                    reference::histogram(&vals, lo, hi, bins),
                    "rows={rows} {name} range"
                );
                let h =
                    &ds.lazy().aggregate([hist(name, bins).range(1.0, 1.0)]).collect_with(&dev, &RunOptions::default()).unwrap().histograms
                        [0];
                assert_eq!(
                    (h.counts.clone(), h.below, h.above, h.nan),
                    reference::histogram(&vals, 1.0, 1.0, bins),
                    "rows={rows} {name} lo==hi"
                );
            }
        }
    }
}

#[test]
fn computed_columns_match_reference() {
    let seed = seed("computed_columns_match_reference");
    let mut rng = Rng::new(seed);
    let dir = TempDir::new("with");
    for &rows in &[1usize, 257, 8193, 20_000] {
        let cols = mixed_columns(&mut rng, rows, 0.1);
        let path = dir.path(&format!("w{rows}.safetensors"));
        write_safetensors(&path, rows, &cols);
        let ds = Dataset::open(&path).unwrap();
        for _ in 0..25 {
            let e = random_numeric(&mut rng, 3);
            let with = vec![("z".to_string(), e.clone())];
            let vals: Vec<f64> = (0..rows as u64)
                .map(|r| match reference::eval(&ds, &col("z"), r, &with) {
                    RefVal::F(f) => f,
                    RefVal::I(i) => i as f32 as f64,
                    RefVal::B(b) => b as u8 as f64,
                })
                .collect();
            for dev in devices() {
                let what = format!("rows={rows} z={e} on {}", dev.name());
                let r = ds.lazy().with_column("z", e.clone()).aggregate([all_stats(["z"])]).collect_with(&dev, &RunOptions::default());
                // The GPU's f32 squares overflow beyond |x - pivot| ~ 1.8e19: it must refuse
                // such values (typed error), and only those.
                if dev != Device::Cpu && matches!(r, Err(tilestream::Error::Unsupported(_))) {
                    let big = vals.iter().filter(|v| v.is_finite()).any(|v| v.abs() > 1e18);
                    assert!(big, "{what}: refused without values beyond 1e18: {r:?}");
                    continue;
                }
                let r = r.unwrap();
                let got = r.column("z").unwrap();
                if uses_libm(&e) {
                    // exp/log/log1p in f32 may differ from the rounded f64 result by an ulp.
                    let rs = reference::stats(&vals);
                    assert!(got.count.abs_diff(rs.count) <= rows as u64 / 100 + 1, "{what}: count {} vs {}", got.count, rs.count);
                } else {
                    check_stats(&what, got, &vals);
                }
            }
        }
    }
}

#[test]
fn integer_comparisons_are_exact() {
    let dir = TempDir::new("intcmp");
    let rows = 5;
    let ids: Vec<i64> = vec![16_777_216, 16_777_217, 16_777_218, -3, i64::MAX];
    let path = dir.path("ids.safetensors");
    write_safetensors(
        &path,
        rows,
        &[ColData { name: "id".into(), dtype: tilestream::DType::I64, bytes: bytemuck::cast_slice(&ids).to_vec() }],
    );
    let ds = Dataset::open(&path).unwrap();
    let count = |e: Expr| ds.lazy().filter(e).aggregate([all_stats(["id"])]).collect(&Device::Cpu).unwrap().rows_selected;
    assert_eq!(count(col("id").equals(lit(16_777_217i64))), 1);
    assert_eq!(count(col("id").gt(lit(16_777_216i64))), 3);
    assert_eq!(count(col("id").lt(lit(-2.5))), 1);
    assert_eq!(count(col("id").le(lit(-3.0))), 1);
    assert_eq!(count(col("id").equals(lit(16_777_217.5))), 0);
    assert_eq!(count(col("id").not_equals(lit(16_777_217.5))), 5);
    assert_eq!(count(col("id").lt(lit(f64::INFINITY))), 5);
    assert_eq!(count(col("id").gt(lit(1e300))), 0);
    assert_eq!(count(col("id").ge(lit(f64::NAN))), 0);
    let r = ds.lazy().aggregate([all_stats(["id"])]).collect(&Device::Cpu).unwrap();
    assert_eq!(r.column("id").unwrap().max, Some(Number::Int(i64::MAX as i128)));
}

/// Comparisons of f64 columns with literals and with each other are exact (as numpy
/// compares f64 arrays), on every device: `ts > 1700000000.5` must not round the column to
/// f32. Values around timestamps, tiny and huge, ±0, NaN of both signs, ±inf and integers
/// past 2^53; float literals at and beside the values, integer literals no f64 equals.
#[test]
fn f64_comparisons_are_exact() {
    let seed = seed("f64_comparisons_are_exact");
    let mut rng = Rng::new(seed);
    let dir = TempDir::new("f64cmp");
    let two53 = 9_007_199_254_740_992.0f64;
    let picks = [
        1.7e9,
        1.7e9 + 0.5,
        1.7e9 + 63.0,
        1.7e9 - 2.4e-7,
        1e-300,
        -1e-300,
        5e-324,
        -5e-324,
        0.0,
        -0.0,
        f64::NAN,
        -f64::NAN,
        f64::INFINITY,
        f64::NEG_INFINITY,
        two53,
        two53 + 2.0,
        -two53 - 2.0,
        f64::MAX,
        f64::MIN,
        9.3e18,
        -9.3e18,
        0.1,
        1.0,
    ];
    let floats: Vec<f64> = picks.iter().flat_map(|&v| [v, v.next_up(), v.next_down()]).filter(|v| !v.is_nan()).collect();
    let ints = [1_700_000_000i64, 9_007_199_254_740_993, -9_007_199_254_740_993, i64::MAX, i64::MIN + 1, 0, -1, 1 << 62];
    // x cmp k exactly for an integer k: by the floor of x, which fits i64 below 2^63.
    let vs_int = |x: f64, k: i64| -> Option<std::cmp::Ordering> {
        if x.is_nan() {
            None
        } else if x >= 2f64.powi(63) {
            Some(std::cmp::Ordering::Greater)
        } else if x < -(2f64.powi(63)) {
            Some(std::cmp::Ordering::Less)
        } else {
            let fl = x.floor();
            Some((fl as i64).cmp(&k).then(if x > fl { std::cmp::Ordering::Greater } else { std::cmp::Ordering::Equal }))
        }
    };
    let holds =
        |k: usize, o: Option<std::cmp::Ordering>| o.is_some_and(|o| [o.is_lt(), o.is_le(), o.is_gt(), o.is_ge(), o.is_eq(), o.is_ne()][k]);
    for rows in [70usize, 70_000] {
        let pick = |rng: &mut Rng| picks[(rng.uniform() * picks.len() as f64) as usize % picks.len()];
        let t: Vec<f64> = (0..rows).map(|_| pick(&mut rng)).collect();
        let u: Vec<f64> = (0..rows).map(|_| pick(&mut rng)).collect();
        let path = dir.path(&format!("t{rows}.safetensors"));
        write_safetensors(
            &path,
            rows,
            &[
                ColData { name: "t".into(), dtype: DType::F64, bytes: bytemuck::cast_slice(&t).to_vec() },
                ColData { name: "u".into(), dtype: DType::F64, bytes: bytemuck::cast_slice(&u).to_vec() },
                ColData { name: "one".into(), dtype: DType::F32, bytes: bytemuck::cast_slice(&vec![1f32; rows]).to_vec() },
            ],
        );
        let ds = Dataset::open(&path).unwrap();
        for dev in devices() {
            // (Statistics of `one`: the GPUs refuse sums of values like f64::MAX.)
            let count = |e: Expr| ds.lazy().filter(e).aggregate([all_stats(["one"])]).collect(&dev).unwrap().rows_selected;
            for k in 0..6 {
                let what =
                    |lit: &str| format!("seed {seed} rows={rows} on {}: t {} {lit}", dev.name(), ["<", "<=", ">", ">=", "==", "!="][k]);
                // A sample of the literals (every one on the CPU).
                let every = matches!(dev, Device::Cpu);
                for &v in floats.iter().filter(|_| every || rng.uniform() < 0.15) {
                    let want = t.iter().filter(|&&x| holds(k, x.partial_cmp(&v))).count() as u64;
                    assert_eq!(count(cmp(col("t"), lit(v), k)), want, "{}", what(&format!("{v:e}")));
                    // The literal on the left.
                    let want = t.iter().filter(|&&x| holds(k, v.partial_cmp(&x))).count() as u64;
                    assert_eq!(count(cmp(lit(v), col("t"), k)), want, "{} (literal first)", what(&format!("{v:e}")));
                }
                for &v in &ints {
                    let want = t.iter().filter(|&&x| holds(k, vs_int(x, v))).count() as u64;
                    assert_eq!(count(cmp(col("t"), lit(v), k)), want, "{}", what(&v.to_string()));
                }
                let want = t.iter().zip(&u).filter(|&(&x, &y)| holds(k, x.partial_cmp(&y))).count() as u64;
                assert_eq!(count(cmp(col("t"), col("u"), k)), want, "{}", what("u"));
            }
        }
    }
}

#[test]
fn large_mean_small_spread_variance() {
    let seed = seed("large_mean_small_spread_variance");
    let mut rng = Rng::new(seed);
    let dir = TempDir::new("var");
    let rows = 1_000_000;
    let x: Vec<f32> = (0..rows).map(|_| (10_000.0 + rng.normal()) as f32).collect();
    let path = dir.path("v.safetensors");
    write_safetensors(
        &path,
        rows,
        &[ColData { name: "x".into(), dtype: tilestream::DType::F32, bytes: bytemuck::cast_slice(&x).to_vec() }],
    );
    let ds = Dataset::open(&path).unwrap();
    let v: Vec<f64> = x.iter().map(|&v| v as f64).collect();
    let mean = v.iter().sum::<f64>() / rows as f64;
    let var = v.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / rows as f64;
    for dev in devices() {
        let s = *ds.lazy().aggregate([all_stats(["x"])]).collect(&dev).unwrap().column("x").unwrap();
        let got = s.var.unwrap();
        assert!((got - var).abs() <= 1e-6 * var, "var {got} vs two-pass {var}");
        assert!((s.std.unwrap() - var.sqrt()).abs() <= 1e-6 * var.sqrt());
    }
}

#[test]
fn sum_of_1e8_rows_is_within_1e9_of_abs_sum() {
    let seed = seed("sum_of_1e8_rows_is_within_1e9_of_abs_sum");
    let mut rng = Rng::new(seed);
    let dir = TempDir::new("sum");
    let rows = 100_000_000usize;
    let x: Vec<f32> = (0..rows).map(|_| (rng.normal() * 100.0 + 3.0) as f32).collect();
    let (mut s, mut c, mut abs) = (0.0f64, 0.0f64, 0.0f64);
    for &v in &x {
        let v = v as f64;
        abs += v.abs();
        let y = v - c;
        let t = s + y;
        c = (t - s) - y;
        s = t;
    }
    let path = dir.path("big.safetensors");
    write_safetensors(
        &path,
        rows,
        &[ColData { name: "x".into(), dtype: tilestream::DType::F32, bytes: bytemuck::cast_slice(&x).to_vec() }],
    );
    drop(x);
    let ds = Dataset::open(&path).unwrap();
    let got = ds.lazy().aggregate([all_stats(["x"])]).collect(&Device::Cpu).unwrap().column("x").unwrap().sum;
    assert!((got - s).abs() <= 1e-9 * abs, "sum {got} vs compensated {s} (abs sum {abs})");
}

#[test]
fn expressions_type_errors_point_at_position() {
    let dir = TempDir::new("types");
    let mut rng = Rng::new(3);
    let cols = mixed_columns(&mut rng, 10, 0.0);
    let path = dir.path("t.safetensors");
    write_safetensors(&path, 10, &cols);
    let ds = Dataset::open(&path).unwrap();
    let run = |text: &str| ds.lazy().filter(tilestream::parse_expr(text).unwrap()).aggregate([all_stats(["a"])]).collect(&Device::Cpu);
    match run("a > 1 && (flag + 1 > 2)") {
        Err(tilestream::Error::Expr { position, message, .. }) => {
            assert_eq!(position, 10, "{message}");
            assert!(message.contains("boolean"), "{message}");
        }
        other => panic!("expected a type error, got {other:?}"),
    }
    match run("a + 1") {
        Err(tilestream::Error::Expr { message, .. }) => assert!(message.contains("boolean"), "{message}"),
        other => panic!("expected a type error, got {other:?}"),
    }
    match run("nope > 1") {
        Err(tilestream::Error::Expr { position, message, .. }) => {
            assert_eq!(position, 0);
            assert!(message.contains("unknown column `nope`"), "{message}");
        }
        other => panic!("expected an unknown-column error, got {other:?}"),
    }
    let _ = (BinOp::Add, Literal::Int(0));
}

/// Random bytes of `rows` values of `dtype`, with NaN and ±inf among the floats.
fn random_bytes(rng: &mut Rng, dtype: DType, rows: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(rows * dtype.size());
    for _ in 0..rows {
        let v = awkward(rng, 0.05);
        match dtype {
            DType::U8 => out.push((rng.uniform() * 256.0) as u8),
            DType::F16 => out.extend_from_slice(&half::f16::from_f64(v).to_le_bytes()),
            DType::BF16 => out.extend_from_slice(&half::bf16::from_f64(v).to_le_bytes()),
            DType::F32 => out.extend_from_slice(&(v as f32).to_le_bytes()),
            DType::I32 => out.extend_from_slice(&((rng.normal() * 1e6) as i32).to_le_bytes()),
            DType::F64 => out.extend_from_slice(&v.to_le_bytes()),
            DType::I64 => out.extend_from_slice(&(rng.next_u64() as i64 >> 3).to_le_bytes()),
            other => unreachable!("no generator for {other:?}"),
        }
    }
    out
}

/// The columns of a row-major matrix (here a raw file; `.npy` matrices and 2-D safetensors
/// tensors are read the same way) give the same statistics, bit for bit, as the same values
/// stored column by column: the block gather, which reads a matrix's rows once for all its
/// columns (and transposes eight columns side by side at a time), drops or moves
/// nothing, for every element size, at row counts around its 64-row chunks, 8-row steps
/// and 8,192-row blocks, with any budget and thread count, for all columns and a subset.
#[test]
fn matrix_columns_match_the_same_values_stored_column_by_column() {
    let mut rng = Rng::new(seed("matrix_columns"));
    let dir = TempDir::new("matrix");
    let k = 13;
    for dtype in [DType::U8, DType::F16, DType::BF16, DType::F32, DType::I32, DType::F64, DType::I64] {
        for rows in [1usize, 63, 64, 65, 8191, 8193, 20_000] {
            let cols: Vec<ColData> =
                (0..k).map(|j| ColData { name: format!("c{j}"), dtype, bytes: random_bytes(&mut rng, dtype, rows) }).collect();
            write_safetensors(&dir.path("apart.safetensors"), rows, &cols);
            let size = dtype.size();
            let mut raw = vec![0u8; rows * k * size];
            for r in 0..rows {
                for (j, c) in cols.iter().enumerate() {
                    raw[(r * k + j) * size..][..size].copy_from_slice(&c.bytes[r * size..][..size]);
                }
            }
            std::fs::write(dir.path("m.bin"), &raw).unwrap();
            let apart = Dataset::open(dir.path("apart.safetensors")).unwrap();
            let matrix = Dataset::open_many(&[dir.path("m.bin")], tilestream::FileKind::Raw { dtype, cols: k as u64 }).unwrap();
            // All 13 columns (one run of eight side by side, five more), and 3..=11.
            for which in [0..k, 3..12] {
                for opts in budgets() {
                    let a = apart
                        .lazy()
                        .aggregate([all_stats(which.clone().map(|j| format!("c{j}")))])
                        .collect_with(&Device::Cpu, &opts)
                        .unwrap();
                    let m = matrix
                        .lazy()
                        .aggregate([all_stats(which.clone().map(|j| format!("m:{j}")))])
                        .collect_with(&Device::Cpu, &opts)
                        .unwrap();
                    for j in which.clone() {
                        // Debug prints each f64 as the shortest text that reads back to it
                        // (NaN and -0.0 included), so equal text is equal bits.
                        let (x, y) = (a.column(&format!("c{j}")).unwrap(), m.column(&format!("m:{j}")).unwrap());
                        assert_eq!(format!("{x:?}"), format!("{y:?}"), "{dtype:?} rows={rows} column {j} of {which:?} {opts:?}");
                    }
                }
            }
        }
    }
}

/// The columns of a wide row-major matrix are gathered into blocks of fewer rows (a block's
/// working buffers stay within 8 MiB a thread, `cpu::BLOCK_SCRATCH_BYTES`; 65,536 rows of
/// [N, 768] f32 took 200 MB a thread), whose groups an 8-bit key's unit joins: statistics,
/// filtered or grouped by 8- and 32-bit keys, over a [70,001, 300] f32 tensor with NaN/±inf
/// give the reference's values, and the same bits for every tile size and thread count.
#[test]
fn wide_matrices_are_read_in_smaller_blocks() {
    let seed = seed("wide_matrices_are_read_in_smaller_blocks");
    let mut rng = Rng::new(seed);
    let dir = TempDir::new("widematrix");
    let (rows, k) = (70_001usize, 300usize);
    let x: Vec<f32> = (0..rows * k).map(|_| awkward(&mut rng, 0.002) as f32).collect();
    let k8: Vec<u8> = (0..rows).map(|_| (rng.uniform() * rng.uniform() * 40.0) as u8).collect();
    let k32: Vec<i32> = (0..rows).map(|_| (rng.uniform() * 900.0) as i32 - 450).collect();
    let path = dir.path("wide.safetensors");
    write_safetensors_tensors(
        &path,
        &[
            ("x", DType::F32, vec![rows, k], bytemuck::cast_slice(&x).to_vec()),
            ("k8", DType::U8, vec![rows], k8),
            ("k32", DType::I32, vec![rows], bytemuck::cast_slice(&k32).to_vec()),
        ],
    );
    drop(x);
    let ds = Dataset::open(&path).unwrap();
    let some: Vec<String> = (0..k).step_by(7).map(|j| format!("x:{j}")).collect();
    let pred = col("x:1").gt(lit(0.0));
    let all_rows: Vec<u64> = (0..rows as u64).collect();
    let kept = reference::selected_rows(&ds, std::slice::from_ref(&pred), &[]);
    let opts = [
        RunOptions::default(),
        RunOptions { memory_budget: 1, threads: Some(1), ..RunOptions::default() },
        RunOptions { memory_budget: 1 << 30, threads: Some(3), ..RunOptions::default() },
    ];
    for (what, filtered, key, names) in [
        ("stats of every column", false, None, (0..k).map(|j| format!("x:{j}")).collect::<Vec<_>>()),
        ("filtered stats", true, None, some.clone()),
        ("by k8", false, Some("k8"), some.clone()),
        ("filtered by k8", true, Some("k8"), some.clone()),
        ("by k32", false, Some("k32"), some.clone()),
    ] {
        let sel = if filtered { &kept } else { &all_rows };
        let mut first: Option<String> = None;
        for o in &opts {
            let mut lf = ds.lazy();
            if filtered {
                lf = lf.filter(pred.clone());
            }
            let text = match key {
                None => {
                    let r = lf.aggregate([all_stats(names.clone())]).collect_with(&Device::Cpu, o).unwrap();
                    if first.is_none() {
                        for (n, s) in &r.columns {
                            check_stats(&format!("{what}: {n}"), s, &raw_values(&ds, n, sel));
                        }
                    }
                    format!("{:?}", r.columns)
                }
                Some(key) => {
                    let g = lf.group_by(key).aggregate([all_stats(names.clone())]).collect_with(&Device::Cpu, o).unwrap();
                    if first.is_none() {
                        let kc = ds.column_index(key).unwrap();
                        let mut want = std::collections::BTreeMap::<i128, Vec<u64>>::new();
                        for &r in sel {
                            want.entry(reference::raw_f64(&ds, kc, r) as i128).or_default().push(r);
                        }
                        check_groups(what, &g.groups, &want, &ds);
                    }
                    format!("{:?}", g.groups)
                }
            };
            match &first {
                Some(f) => assert_eq!(f, &text, "{what}: results depend on the tile size or threads ({o:?})"),
                None => first = Some(text),
            }
        }
    }
}
