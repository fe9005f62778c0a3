//! The GPU backends (the wgpu adapter, and the CUDA device where there is one) against the
//! CPU backend (itself checked against the f64 reference in `equivalence.rs`): transforms
//! byte for byte where the contract says so, within the ulp bounds elsewhere; kernel
//! arithmetic (division, sqrt, conversions) bit for bit; reports that every tile ran on the
//! GPU. The wgpu tests run on any adapter, lavapipe in CI (`REQUIRE_GPU_ADAPTER=1`); the
//! CUDA ones print "skipped: no CUDA device" where there is none (`REQUIRE_CUDA=1` makes
//! that a failure, as the GPU check script sets it).

mod common;

use common::*;
use half::{bf16, f16};
use tilestream::plan::{Cols, SinkOptions, Transform};
use tilestream::synth::Rng;
use tilestream::{DType, Dataset, Device, RunOptions, all_stats, apply_fit, col, lit, parse_expr};

/// Row counts around the block (8192) and workgroup (256) sizes; odd counts leave u8
/// columns that are not a multiple of 4 bytes.
const SIZES: &[usize] = &[1, 2, 255, 257, 8191, 8193, 2 * 8192 + 3];

fn read_back(path: &std::path::Path) -> Vec<(String, Vec<u8>)> {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut v: Vec<(usize, String, Vec<u8>)> =
        st.tensors().into_iter().map(|(name, t)| (t.data().as_ptr() as usize - bytes.as_ptr() as usize, name, t.data().to_vec())).collect();
    v.sort_by_key(|c| c.0);
    v.into_iter().map(|(_, n, b)| (n, b)).collect()
}

fn small_tiles() -> RunOptions {
    RunOptions { memory_budget: 1, ..RunOptions::default() }
}

#[test]
fn exact_transforms_write_the_same_bytes_as_the_cpu() {
    for gpu in gpu_devices() {
        let seed = seed("exact_transforms_write_the_same_bytes_as_the_cpu");
        let mut rng = Rng::new(seed);
        let dir = TempDir::new("gpu-exact");
        for &rows in SIZES {
            let cols = mixed_columns(&mut rng, rows, 0.2);
            let path = dir.path(&format!("in{rows}.safetensors"));
            write_safetensors(&path, rows, &cols);
            let ds = Dataset::open(&path).unwrap();
            let filters =
                [None, Some(col("a").gt(lit(0.5)).or(col("flag").equals(lit(true)))), Some(parse_expr("k < 3 && i > -500").unwrap())];
            for filter in filters {
                for cast in [None, Some(DType::F16), Some(DType::BF16), Some(DType::F32)] {
                    let t = Transform {
                        clip: vec![("a".into(), -1.0, 2.5), ("d".into(), -50.0, 80.0)],
                        fill_nan: Some(-7.25),
                        cast,
                        ..Transform::default()
                    };
                    let what = format!("rows={rows} filter={filter:?} cast={cast:?}");
                    let mut files = Vec::new();
                    for (n, dev) in [Device::Cpu, gpu.clone()].iter().enumerate() {
                        let mut lf = ds.lazy();
                        if let Some(f) = &filter {
                            lf = lf.filter(f.clone());
                        }
                        let out = dir.path(&format!("o{rows}-{n}.safetensors"));
                        let opts = if n == 0 { RunOptions::default() } else { small_tiles() };
                        let (_, rep) = lf.transform(t.clone()).sink(&out, &SinkOptions { force: true }, dev, &opts).unwrap();
                        if n == 1 {
                            assert_eq!(rep.report.device, gpu.name(), "{what}: ran on {}", rep.report.device);
                            assert_eq!(rep.report.tiles, rows.div_ceil(8192) as u64, "{what}: one tile per block at a 1-byte budget");
                        }
                        files.push((std::fs::read(&out).unwrap(), rep.columns));
                    }
                    assert_eq!(files[0].1, files[1].1, "{what}: NaN/overflow counts");
                    if files[0].0 != files[1].0 {
                        let (a, b) = (
                            read_back(&dir.path(&format!("o{rows}-0.safetensors"))),
                            read_back(&dir.path(&format!("o{rows}-1.safetensors"))),
                        );
                        for ((name, x), (_, y)) in a.iter().zip(&b) {
                            let at = x.iter().zip(y).position(|(p, q)| p != q);
                            assert!(at.is_none(), "{what}: column {name} differs first at byte {at:?}");
                        }
                        panic!("{what}: files differ outside the columns");
                    }
                }
            }
        }
    }
}

#[test]
fn scaled_transforms_are_within_the_ulp_bounds() {
    for gpu in gpu_devices() {
        let seed = seed("scaled_transforms_are_within_the_ulp_bounds");
        let mut rng = Rng::new(seed);
        let dir = TempDir::new("gpu-ulp");
        for &rows in &[1usize, 8193, 40_000] {
            let mut cols = mixed_columns(&mut rng, rows, 0.05);
            // A large mean with a small spread, where a naive f32 (x - mean) / std fails.
            let big: Vec<f32> = (0..rows).map(|_| (10_000.0 + rng.normal()) as f32).collect();
            cols.push(ColData { name: "big".into(), dtype: DType::F32, bytes: bytemuck::cast_slice(&big).to_vec() });
            let path = dir.path(&format!("s{rows}.safetensors"));
            write_safetensors(&path, rows, &cols);
            let ds = Dataset::open(&path).unwrap();
            let names = ["a", "b", "c", "d", "i", "e", "s", "k", "big"];
            for cast in [None, Some(DType::F16), Some(DType::BF16)] {
                let t = Transform {
                    select: Some(names.iter().map(|s| s.to_string()).collect()),
                    standardize: Cols::List(vec!["a".into(), "b".into(), "e".into(), "big".into(), "s".into()]),
                    minmax: Cols::List(vec!["c".into(), "d".into(), "i".into(), "k".into()]),
                    cast,
                    ..Transform::default()
                };
                let what = format!("rows={rows} cast={cast:?}");
                // The same fitted parameters on both devices: the kernels are what is compared.
                let cpu_out = dir.path("cpu.safetensors");
                let (fit, _) =
                    ds.lazy().transform(t).sink(&cpu_out, &SinkOptions { force: true }, &Device::Cpu, &RunOptions::default()).unwrap();
                let gpu_out = dir.path("gpu.safetensors");
                apply_fit(&ds.lazy(), &fit, &gpu_out, &SinkOptions { force: true }, &gpu, &small_tiles()).unwrap();
                for ((name, x), (_, y)) in read_back(&cpu_out).iter().zip(read_back(&gpu_out).iter()) {
                    let n = x.len() / rows.max(1);
                    for r in 0..rows {
                        let (p, q) = (&x[r * n..(r + 1) * n], &y[r * n..(r + 1) * n]);
                        let ulps = match (n, cast) {
                            (4, _) => ulp_f32(f32::from_le_bytes(p.try_into().unwrap()), f32::from_le_bytes(q.try_into().unwrap())),
                            (2, Some(DType::BF16)) => ulp_bf16(bf16::from_le_bytes([p[0], p[1]]), bf16::from_le_bytes([q[0], q[1]])),
                            (2, _) => ulp_f16(f16::from_le_bytes([p[0], p[1]]), f16::from_le_bytes([q[0], q[1]])),
                            _ => u32::from(p != q) * 1000,
                        };
                        // The CPU is within 0.5 ulp of the exact value (f64 arithmetic); the GPU's
                        // double-f32 form within 1 ulp: together 2 ulp for f32, 1 for f16/bf16.
                        let bound = if n == 4 { 2 } else { 1 };
                        assert!(ulps <= bound, "{what} {name}[{r}]: {p:?} vs {q:?} ({ulps} ulp)");
                    }
                }
            }
        }
    }
}

/// f32 values that exercise rounding: random bits (all exponents, subnormals, NaN, inf)
/// and ordinary numbers.
fn awkward_f32(rng: &mut Rng) -> f32 {
    if rng.uniform() < 0.5 { f32::from_bits(rng.next_u64() as u32) } else { (rng.normal() * 10.0) as f32 }
}

#[test]
fn kernel_arithmetic_is_bit_exact() {
    for gpu in gpu_devices() {
        let seed = seed("kernel_arithmetic_is_bit_exact");
        let mut rng = Rng::new(seed);
        let dir = TempDir::new("gpu-arith");
        let rows = 20_000;
        let x: Vec<f32> = (0..rows).map(|_| awkward_f32(&mut rng)).collect();
        let y: Vec<f32> = (0..rows).map(|_| awkward_f32(&mut rng)).collect();
        let w: Vec<f64> =
            (0..rows).map(|_| if rng.uniform() < 0.5 { f64::from_bits(rng.next_u64()) } else { rng.normal() * 1e-39 }).collect();
        let n: Vec<i64> = (0..rows).map(|_| (rng.next_u64() as i64) >> (rng.next_u64() % 64)).collect();
        let h: Vec<u16> = (0..rows).map(|_| rng.next_u64() as u16).collect();
        let cols = vec![
            ColData { name: "x".into(), dtype: DType::F32, bytes: bytemuck::cast_slice(&x).to_vec() },
            ColData { name: "y".into(), dtype: DType::F32, bytes: bytemuck::cast_slice(&y).to_vec() },
            ColData { name: "w".into(), dtype: DType::F64, bytes: bytemuck::cast_slice(&w).to_vec() },
            ColData { name: "n".into(), dtype: DType::I64, bytes: bytemuck::cast_slice(&n).to_vec() },
            ColData { name: "h".into(), dtype: DType::F16, bytes: bytemuck::cast_slice(&h).to_vec() },
        ];
        let path = dir.path("arith.safetensors");
        write_safetensors(&path, rows, &cols);
        let ds = Dataset::open(&path).unwrap();
        // Correctly rounded on both devices: + - * / sqrt, min/max/clip/abs/neg, every
        // conversion (f64 -> f32, i64 -> f32, f16 -> f32, f32 -> f16/bf16).
        let exprs = [
            "x + y",
            "x - y",
            "x * y",
            "x / y",
            "sqrt(x)",
            "min(x, y)",
            "max(x, y)",
            "clip(x, y, 3)",
            "abs(x)",
            "-x",
            "w",
            "n",
            "h",
            "x - x",
            "x * 0",
        ];
        for cast in [None, Some(DType::F16), Some(DType::BF16)] {
            let t = Transform {
                select: Some(vec![]),
                with: exprs.iter().enumerate().map(|(i, e)| (format!("z{i}"), parse_expr(e).unwrap())).collect(),
                cast,
                ..Transform::default()
            };
            let mut outs = Vec::new();
            for (k, dev) in [Device::Cpu, gpu.clone()].iter().enumerate() {
                let out = dir.path(&format!("arith{k}.safetensors"));
                ds.lazy().transform(t.clone()).sink(&out, &SinkOptions { force: true }, dev, &RunOptions::default()).unwrap();
                outs.push(read_back(&out));
            }
            for (i, ((name, a), (_, b))) in outs[0].iter().zip(&outs[1]).enumerate() {
                let size = a.len() / rows;
                for r in 0..rows {
                    let (p, q) = (&a[r * size..(r + 1) * size], &b[r * size..(r + 1) * size]);
                    // NaN payloads may differ between devices; every other value must match bit for bit.
                    let nan = |v: &[u8]| match v.len() {
                        4 => f32::from_le_bytes(v.try_into().unwrap()).is_nan(),
                        _ if cast == Some(DType::BF16) => bf16::from_le_bytes([v[0], v[1]]).is_nan(),
                        _ => f16::from_le_bytes([v[0], v[1]]).is_nan(),
                    };
                    assert!(
                        p == q || (nan(p) && nan(q)),
                        "cast={cast:?} {name} = {} at row {r} (x={}, y={}): cpu {p:?} {} {q:?}",
                        exprs[i],
                        x[r],
                        y[r],
                        gpu.name()
                    );
                }
            }
        }
    }
}

#[test]
fn libm_functions_are_within_a_few_ulp() {
    for gpu in gpu_devices() {
        let seed = seed("libm_functions_are_within_a_few_ulp");
        let mut rng = Rng::new(seed);
        let dir = TempDir::new("gpu-libm");
        let rows = 20_000;
        let x: Vec<f32> = (0..rows)
            .map(|i| match i % 4 {
                0 => (rng.normal() * 20.0) as f32,
                1 => (rng.uniform() * 2.0 - 1.0) as f32,
                2 => (rng.uniform() * 1e-3) as f32,
                _ => awkward_f32(&mut rng),
            })
            .collect();
        let path = dir.path("libm.safetensors");
        write_safetensors(&path, rows, &[ColData { name: "x".into(), dtype: DType::F32, bytes: bytemuck::cast_slice(&x).to_vec() }]);
        let ds = Dataset::open(&path).unwrap();
        for e in ["exp(x)", "log(x)", "log1p(x)", "log(abs(x))"] {
            let t = Transform { select: Some(vec![]), with: vec![("z".into(), parse_expr(e).unwrap())], ..Transform::default() };
            let mut outs = Vec::new();
            for (k, dev) in [Device::Cpu, gpu.clone()].iter().enumerate() {
                let out = dir.path(&format!("libm{k}.safetensors"));
                ds.lazy().transform(t.clone()).sink(&out, &SinkOptions { force: true }, dev, &RunOptions::default()).unwrap();
                outs.push(read_back(&out).remove(0).1);
            }
            let (a, b): (Vec<f32>, Vec<f32>) = (bytemuck::pod_collect_to_vec(&outs[0]), bytemuck::pod_collect_to_vec(&outs[1]));
            for r in 0..rows {
                // Subnormal results may be flushed to zero by a GPU.
                let tiny = a[r].abs() < f32::MIN_POSITIVE && b[r].abs() < f32::MIN_POSITIVE;
                assert!(ulp_f32(a[r], b[r]) <= 4 || tiny, "{e} at x={}: cpu {} {} {}", x[r], a[r], gpu.name(), b[r]);
            }
        }
    }
}

#[test]
fn unsupported_queries_say_so() {
    let Some(gpu) = gpu_device() else { return };
    let dir = TempDir::new("gpu-unsup");
    // Group-by on more than 65,536 distinct keys.
    let many: Vec<i64> = (0..70_000i64).map(|j| j * 1_000_003 - (1 << 40)).collect();
    let one = [0f32; 70_000];
    write_safetensors(
        &dir.path("many.safetensors"),
        70_000,
        &[
            ColData { name: "k".into(), dtype: DType::I64, bytes: bytemuck::cast_slice(&many).to_vec() },
            ColData { name: "a".into(), dtype: DType::F32, bytes: bytemuck::cast_slice(&one).to_vec() },
        ],
    );
    let r = Dataset::open(dir.path("many.safetensors")).unwrap().lazy().group_by("k").aggregate([all_stats(["a"])]).collect(&gpu);
    assert!(matches!(r, Err(tilestream::Error::Unsupported(_))), "{r:?}");
    // u64 values at or above 2^63 cannot be summed exactly by the kernel: a typed error.
    let u: Vec<u64> = vec![u64::MAX - 5, 3];
    write_safetensors(
        &dir.path("big.safetensors"),
        2,
        &[ColData { name: "u".into(), dtype: DType::U64, bytes: bytemuck::cast_slice(&u).to_vec() }],
    );
    let ds = Dataset::open(dir.path("big.safetensors")).unwrap();
    let r = ds.lazy().aggregate([all_stats(["u"])]).collect(&gpu);
    assert!(matches!(r, Err(tilestream::Error::Unsupported(_))), "{r:?}");
}

fn close(a: f64, b: f64) -> bool {
    (a.is_nan() && b.is_nan()) || a == b || (a - b).abs() <= 1e-6 * a.abs().max(b.abs()) + 1e-9
}

#[test]
fn group_by_on_wide_keys_matches_the_cpu() {
    for gpu in gpu_devices() {
        let seed = seed("group_by_on_wide_keys_matches_the_cpu");
        let mut rng = Rng::new(seed);
        let dir = TempDir::new("gpu-groups");
        for &rows in &[1usize, 8193, 70_000] {
            let mut cols = mixed_columns(&mut rng, rows, 0.1);
            // Keys the GPU kernels find in a table of distinct keys: w, 300 i64 values over
            // the whole i64 range (its ends included); v, 40 u16 values over 0..65535 (a
            // table of one sweep instead of 256); x, i32 multiples of 7919 over ~8 million.
            let pick: Vec<i64> = (0..300)
                .map(|j| {
                    if j == 0 {
                        i64::MIN
                    } else if j == 1 {
                        i64::MAX
                    } else {
                        rng.next_u64() as i64
                    }
                })
                .collect();
            let w: Vec<i64> = (0..rows).map(|_| pick[(rng.uniform() * rng.uniform() * 300.0) as usize]).collect();
            let v: Vec<u16> = (0..rows).map(|_| (rng.uniform() * 40.0) as u16 * 1680 + 7).collect();
            let x: Vec<i32> = (0..rows).map(|_| (rng.normal() * 300.0) as i32 * 7919).collect();
            cols.push(ColData { name: "w".into(), dtype: DType::I64, bytes: bytemuck::cast_slice(&w).to_vec() });
            cols.push(ColData { name: "v".into(), dtype: DType::U16, bytes: bytemuck::cast_slice(&v).to_vec() });
            cols.push(ColData { name: "x".into(), dtype: DType::I32, bytes: bytemuck::cast_slice(&x).to_vec() });
            let path = dir.path(&format!("g{rows}.safetensors"));
            write_safetensors(&path, rows, &cols);
            let ds = Dataset::open(&path).unwrap();
            // s: i16 over 600 values (3 sweeps of 256 keys); i: i32 over thousands; k: u8.
            for key in ["s", "i", "k", "w", "v", "x"] {
                for filter in [None, Some(parse_expr("a > 0 || c < 1").unwrap())] {
                    let run = |d: &Device| {
                        let mut lf = ds.lazy();
                        if let Some(f) = &filter {
                            lf = lf.filter(f.clone());
                        }
                        lf.group_by(key).aggregate([all_stats(["a", "b", "d", "u"])]).collect_with(d, &small_tiles())
                    };
                    let what = format!("{} rows={rows} key={key} filter={filter:?}", gpu.name());
                    let (c, g) = (run(&Device::Cpu).unwrap(), run(&gpu).unwrap());
                    assert_eq!(
                        c.groups.iter().map(|x| (x.key, x.rows)).collect::<Vec<_>>(),
                        g.groups.iter().map(|x| (x.key, x.rows)).collect::<Vec<_>>(),
                        "{what}"
                    );
                    for (x, y) in c.groups.iter().zip(&g.groups) {
                        for ((name, p), (_, q)) in x.columns.iter().zip(&y.columns) {
                            let w = format!("{what} group {} {name}", x.key);
                            assert_eq!(
                                (p.count, p.nan_count, p.inf_count, p.min, p.max),
                                (q.count, q.nan_count, q.inf_count, q.min, q.max),
                                "{w}"
                            );
                            assert!(close(p.sum, q.sum), "{w}: sum {} vs {}", p.sum, q.sum);
                            assert!(close(p.var.unwrap_or(0.0), q.var.unwrap_or(0.0)), "{w}: var {:?} vs {:?}", p.var, q.var);
                        }
                    }
                }
            }
        }
    }
}

/// Without a CUDA driver (CI, most machines): a typed error naming the reason, never a
/// panic; `auto` does not pick CUDA; `devices` says why. With one: `cuda` names device 0.
#[test]
fn cuda_is_found_or_refused_with_its_reason() {
    let survey = Device::survey();
    let line = survey.iter().find(|(name, _)| name.starts_with("cuda")).expect("devices has a cuda line");
    match Device::from_name("cuda") {
        Ok(d) => {
            assert_eq!(d, Device::Cuda(0));
            assert!(line.0 == "cuda:0", "{line:?}");
            assert!(matches!(Device::from_name("cuda:9999"), Err(tilestream::Error::BackendUnavailable { .. })));
        }
        Err(tilestream::Error::BackendUnavailable { device, reason }) => {
            eprintln!("skipped: no CUDA device ({reason})");
            assert_eq!(device, "cuda");
            assert!(!reason.is_empty() && line.1.contains(&reason), "devices says why: {line:?} vs {reason}");
            assert!(!matches!(Device::auto(), Device::Cuda(_)), "auto never picks a CUDA device that is not there");
            let r = Dataset::open(std::env::temp_dir().join("no-such-file.safetensors")).err();
            assert!(r.is_some());
        }
        Err(e) => panic!("expected BackendUnavailable, got {e}"),
    }
}
