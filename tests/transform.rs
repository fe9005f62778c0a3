//! Transforms against an f64 reference: the fixed pipeline order, standardize/min-max
//! accuracy in ulps, exact clip / fill-NaN / casts, filters keeping row order, fitted state.

mod common;

use common::*;
use half::{bf16, f16};
use tilestream::reference;
use tilestream::synth::Rng;
use tilestream::{Cols, DType, Dataset, Device, Fit, RunOptions, SinkOptions, Transform, col, lit};

fn read_back(path: &std::path::Path) -> Vec<(String, String, Vec<u8>)> {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    // Tensors in data-offset order = column order.
    let mut v: Vec<(usize, String, String, Vec<u8>)> = st
        .tensors()
        .into_iter()
        .map(|(name, t)| {
            let off = t.data().as_ptr() as usize - bytes.as_ptr() as usize;
            (off, name, format!("{:?}", t.dtype()), t.data().to_vec())
        })
        .collect();
    // Order by the header's own order (serde_json keeps it), which is the column order.
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let order: Vec<&String> = header.keys().filter(|k| *k != "__metadata__").collect();
    v.sort_by_key(|t| order.iter().position(|k| **k == t.1));
    v.into_iter().map(|(_, n, d, b)| (n, d, b)).collect()
}

fn f32s(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}
fn f16s(b: &[u8]) -> Vec<f16> {
    b.chunks_exact(2).map(|c| f16::from_bits(u16::from_le_bytes([c[0], c[1]]))).collect()
}
fn bf16s(b: &[u8]) -> Vec<bf16> {
    b.chunks_exact(2).map(|c| bf16::from_bits(u16::from_le_bytes([c[0], c[1]]))).collect()
}

/// Reference standardization of the selected rows of a (clipped, log1p'd) f32 series.
fn ref_standardize(v: &[f64]) -> Vec<f64> {
    let s = reference::stats(v);
    let std = s.var.sqrt();
    v.iter()
        .map(|&x| {
            if x.is_nan() {
                f64::NAN
            } else if std == 0.0 {
                0.0
            } else {
                (x - s.mean) / std
            }
        })
        .collect()
}

#[test]
fn standardize_is_within_ulps_and_pipeline_order_holds() {
    let seed = seed("standardize_is_within_ulps_and_pipeline_order_holds");
    let mut rng = Rng::new(seed);
    let dir = TempDir::new("tf");
    for &rows in &[0usize, 1, 2, 8191, 8192, 8193, 30_000] {
        // x: N(10000, 1), the hard case for a one-pass variance; y: skewed with NaN; z: int.
        let x: Vec<f32> = (0..rows).map(|_| (10_000.0 + rng.normal()) as f32).collect();
        let y: Vec<f32> = (0..rows).map(|_| if rng.uniform() < 0.05 { f32::NAN } else { (rng.normal() * 2.0).exp() as f32 }).collect();
        let z: Vec<i32> = (0..rows).map(|_| (rng.normal() * 50.0) as i32).collect();
        let k: Vec<u8> = (0..rows).map(|_| (rng.uniform() * 4.0) as u8).collect();
        let path = dir.path(&format!("in{rows}.safetensors"));
        write_safetensors(
            &path,
            rows,
            &[
                ColData { name: "x".into(), dtype: DType::F32, bytes: bytemuck::cast_slice(&x).to_vec() },
                ColData { name: "y".into(), dtype: DType::F32, bytes: bytemuck::cast_slice(&y).to_vec() },
                ColData { name: "z".into(), dtype: DType::I32, bytes: bytemuck::cast_slice(&z).to_vec() },
                ColData { name: "k".into(), dtype: DType::U8, bytes: k.clone() },
            ],
        );
        let ds = Dataset::open(&path).unwrap();
        let sel: Vec<usize> = (0..rows).filter(|&r| k[r] != 2).collect();
        for cast in [None, Some(DType::F16), Some(DType::BF16)] {
            let t = Transform {
                clip: vec![("y".into(), 0.0, 50.0)],
                log1p: Cols::List(vec!["y".into()]),
                standardize: Cols::List(vec!["x".into(), "y".into()]),
                minmax: Cols::List(vec!["z".into()]),
                cast,
                ..Transform::default()
            };
            let out = dir.path(&format!("out{rows}-{cast:?}.safetensors"));
            let (_fit, rep) = ds
                .lazy()
                .filter(col("k").not_equals(lit(2)))
                .transform(t)
                .sink(&out, &SinkOptions::default(), &Device::Cpu, &RunOptions::default())
                .unwrap();
            assert_eq!(rep.rows_written, sel.len() as u64);
            let cols = read_back(&out);
            assert_eq!(cols.iter().map(|c| c.0.as_str()).collect::<Vec<_>>(), ["x", "y", "z", "k"], "column order kept");
            // Reference values of the selected rows.
            let xs: Vec<f64> = sel.iter().map(|&r| x[r] as f64).collect();
            let ys: Vec<f64> = sel.iter().map(|&r| ((y[r].clamp(0.0, 50.0)).ln_1p()) as f64).collect();
            let zs: Vec<f64> = sel.iter().map(|&r| z[r] as f64).collect();
            let rx = ref_standardize(&xs);
            let ry = ref_standardize(&ys);
            let zr = reference::stats(&zs);
            let rz: Vec<f64> = zs.iter().map(|&v| if zr.max == zr.min { 0.0 } else { (v - zr.min) / (zr.max - zr.min) }).collect();
            for (name, want, bytes) in [("x", &rx, &cols[0].2), ("y", &ry, &cols[1].2), ("z", &rz, &cols[2].2)] {
                match cast {
                    None => {
                        let got = f32s(bytes);
                        for (i, (&g, &w)) in got.iter().zip(want.iter()).enumerate() {
                            assert!(ulp_f32(g, w as f32) <= 2, "rows={rows} {name}[{i}]: {g} vs {w}");
                        }
                    }
                    Some(DType::F16) => {
                        for (i, (&g, &w)) in f16s(bytes).iter().zip(want.iter()).enumerate() {
                            assert!(ulp_f16(g, f16::from_f64(w)) <= 1, "rows={rows} f16 {name}[{i}]: {g} vs {w}");
                        }
                    }
                    _ => {
                        for (i, (&g, &w)) in bf16s(bytes).iter().zip(want.iter()).enumerate() {
                            assert!(ulp_bf16(g, bf16::from_f64(w)) <= 1, "rows={rows} bf16 {name}[{i}]: {g} vs {w}");
                        }
                    }
                }
            }
            // The key passes through untouched, filtered, in input order.
            assert_eq!(cols[3].2, sel.iter().map(|&r| k[r]).collect::<Vec<u8>>(), "rows={rows}: pass-through key");
        }
    }
}

#[test]
fn clip_fill_nan_and_casts_are_exact() {
    let seed = seed("clip_fill_nan_and_casts_are_exact");
    let mut rng = Rng::new(seed);
    let dir = TempDir::new("exact");
    let rows = 20_001;
    let a: Vec<f32> = (0..rows).map(|_| awkward(&mut rng, 0.2) as f32).collect();
    let b: Vec<f64> = (0..rows).map(|_| awkward(&mut rng, 0.2) * 1e5).collect();
    let path = dir.path("in.safetensors");
    write_safetensors(
        &path,
        rows,
        &[
            ColData { name: "a".into(), dtype: DType::F32, bytes: bytemuck::cast_slice(&a).to_vec() },
            ColData { name: "b".into(), dtype: DType::F64, bytes: bytemuck::cast_slice(&b).to_vec() },
        ],
    );
    let ds = Dataset::open(&path).unwrap();
    let t = Transform { clip: vec![("a".into(), -1.5, 2.25)], fill_nan: Some(-7.0), cast: Some(DType::F16), ..Transform::default() };
    let out = dir.path("o.safetensors");
    let (_, rep) = ds.lazy().transform(t).sink(&out, &SinkOptions::default(), &Device::Cpu, &RunOptions::default()).unwrap();
    let cols = read_back(&out);
    let ga = f16s(&cols[0].2);
    let gb = f16s(&cols[1].2);
    for i in 0..rows {
        let want_a = if a[i].is_nan() { -7.0f32 } else { a[i].clamp(-1.5, 2.25) };
        assert_eq!(ga[i].to_bits(), f16::from_f32(want_a).to_bits(), "a[{i}] = {}", a[i]);
        let want_b = if b[i].is_nan() { -7.0 } else { b[i] };
        // f64 → f32 → f16 (what the contract allows: within an ulp of direct rounding).
        assert!(ulp_f16(gb[i], f16::from_f64(want_b)) <= 1, "b[{i}] = {}", b[i]);
    }
    let overflow_b = b.iter().filter(|v| v.is_finite() && f16::from_f64(**v).is_infinite()).count() as u64;
    let (_, _, nan_a, _) = rep.columns[0];
    let (_, _, nan_b, ovf_b) = rep.columns[1];
    assert_eq!((nan_a, nan_b), (0, 0), "fill-nan leaves no NaN");
    assert!(ovf_b.abs_diff(overflow_b) <= rows as u64 / 1000, "overflow count {ovf_b} vs {overflow_b}");
    assert!(ovf_b > 0, "this data overflows f16");
}

#[test]
fn fit_saved_and_applied_reproduces_output() {
    let seed = seed("fit_saved_and_applied_reproduces_output");
    let mut rng = Rng::new(seed);
    let dir = TempDir::new("fit");
    let rows = 12_345;
    let cols = mixed_columns(&mut rng, rows, 0.05);
    let path = dir.path("in.safetensors");
    write_safetensors(&path, rows, &cols);
    let ds = Dataset::open(&path).unwrap();
    let t = Transform {
        select: Some(vec!["a".into(), "c".into(), "k".into(), "i".into()]),
        with: vec![("z".into(), tilestream::parse_expr("a * 2 + `c`").unwrap())],
        standardize: Cols::All,
        log1p: Cols::None,
        fill_nan: Some(0.0),
        cast: Some(DType::BF16),
        ..Transform::default()
    };
    let out1 = dir.path("o1.safetensors");
    let (fit, _) = ds.lazy().transform(t).sink(&out1, &SinkOptions::default(), &Device::Cpu, &RunOptions::default()).unwrap();
    assert_eq!(fit.columns, ["a", "c", "k", "i", "z"]);
    let fit_path = dir.path("fit.json");
    fit.save(&fit_path, false).unwrap();
    let loaded = Fit::load(&fit_path).unwrap();
    assert_eq!(loaded.to_json(), fit.to_json());
    let out2 = dir.path("o2.safetensors");
    tilestream::apply_fit(
        &ds.lazy(),
        &loaded,
        &out2,
        &SinkOptions::default(),
        &Device::Cpu,
        &RunOptions { memory_budget: 1, ..RunOptions::default() },
    )
    .unwrap();
    assert_eq!(std::fs::read(&out1).unwrap(), std::fs::read(&out2).unwrap(), "apply of the saved fit is byte-identical");
    // Bad fit files are clear errors.
    std::fs::write(&fit_path, r#"{"format": "tilestream-fit", "version": 7}"#).unwrap();
    assert!(Fit::load(&fit_path).unwrap_err().to_string().contains("version"));
}

#[test]
fn outputs_do_not_depend_on_budget_or_threads() {
    let seed = seed("outputs_do_not_depend_on_budget_or_threads");
    let mut rng = Rng::new(seed);
    let dir = TempDir::new("det");
    let rows = 50_000;
    let cols = mixed_columns(&mut rng, rows, 0.05);
    let path = dir.path("in.safetensors");
    write_safetensors(&path, rows, &cols);
    let ds = Dataset::open(&path).unwrap();
    let mut outputs = Vec::new();
    for (i, opts) in [
        RunOptions::default(),
        RunOptions { memory_budget: 1, threads: Some(1), ..RunOptions::default() },
        RunOptions { memory_budget: 100_000, threads: Some(2), ..RunOptions::default() },
    ]
    .into_iter()
    .enumerate()
    {
        let t = Transform { standardize: Cols::All, minmax: Cols::None, cast: Some(DType::F16), ..Transform::default() };
        let out = dir.path(&format!("o{i}.safetensors"));
        ds.lazy().filter(col("a").gt(lit(0.0))).transform(t).sink(&out, &SinkOptions::default(), &Device::Cpu, &opts).unwrap();
        outputs.push(std::fs::read(&out).unwrap());
    }
    assert!(outputs.windows(2).all(|w| w[0] == w[1]), "output bytes differ between budgets/threads");
}
