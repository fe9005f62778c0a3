//! The generated CUDA kernels, run on the CPU under `tests/support/cuda_emu.h` (each GPU
//! thread an OS thread, barriers for `__syncthreads`, warp votes and shuffles exchanged
//! between threads), against the CPU backend on the same tiles: codegen, kernel templates
//! and the decoding of partials are checked without a GPU. Needs g++ (C++20); says why and
//! skips without it, and fails when `REQUIRE_CXX` is set (as CI sets it).

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::accum::BlockStats;
use crate::backend::cpu::Cpu;
use crate::backend::cuda_gen::{self, Kernel};
use crate::backend::{Backend, KeySlots, TileOut, TileResult};
use crate::dtype::DType;
use crate::exec::{self, BLOCK_ROWS, GROUP_BLOCK_ROWS};
use crate::ops::{Cmp, Op, VType};
use crate::program::{FusedProgram, HistSpec, Instr, OutSpec, Scale, Source, Value};
use crate::sink::table::{OutputColumn, OutputFormat, TableWriter};
use crate::source::Dataset;
use crate::synth::{Rng, test_seed};

const EMU: &str = include_str!("../../tests/support/cuda_emu.h");

const MAIN: &str = r#"
#include <cstdio>
#include <cstdlib>
static std::vector<unsigned char> slurp(const char* p, size_t n) {
    std::vector<unsigned char> v(n ? n : 1);
    FILE* f = fopen(p, "rb");
    if (!f || fread(v.data(), 1, n, f) != n) { perror(p); exit(3); }
    fclose(f);
    return v;
}
static void spill(const char* p, const void* d, size_t n) {
    FILE* f = fopen(p, "wb");
    if (!f || fwrite(d, 1, n, f) != n) { perror(p); exit(3); }
    fclose(f);
}
int main(int argc, char** argv) {
    if (argc != 10) return 2;
    size_t in_bytes = strtoull(argv[2], 0, 10), part_words = strtoull(argv[3], 0, 10);
    size_t hist_words = strtoull(argv[4], 0, 10), out_bytes = strtoull(argv[5], 0, 10);
    unsigned rows = strtoul(argv[6], 0, 10), gx = strtoul(argv[7], 0, 10), gy = strtoul(argv[8], 0, 10);
    long long base = strtoll(argv[9], 0, 10);
    std::vector<unsigned char> in = slurp(argv[1], in_bytes);
    std::vector<unsigned long long> part(part_words + 1, 0xdeadbeefdeadbeefull), hist(hist_words + 1, 0);
    std::vector<unsigned char> out(out_bytes + 1, 0xee);
    (void)base;
#ifdef ENTRY_GROUPBY
    emu_launch(gx, gy, 256, [&] { groupby(in.data(), part.data(), rows, base); });
#else
    emu_launch(gx, gy, 256, [&] { fused(in.data(), part.data(), hist.data(), out.data(), rows); });
#endif
    spill("part.bin", part.data(), part_words * 8);
    spill("hist.bin", hist.data(), hist_words * 8);
    spill("out.bin", out.data(), out_bytes);
    return 0;
}
"#;

fn have_cxx() -> bool {
    let ok = Command::new("g++").arg("--version").output().is_ok_and(|o| o.status.success());
    if !ok {
        assert!(std::env::var_os("REQUIRE_CXX").is_none(), "REQUIRE_CXX is set but g++ is not there");
        eprintln!("skipped: no g++ to run the CUDA kernels under the CPU emulation");
    }
    ok
}

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("tilestream-cuda-emu-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("scratch folder");
    d
}

/// Random values of every dtype, with NaN, ±inf, zeros, denormals and extremes mixed in.
fn column(rng: &mut Rng, d: DType, rows: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(rows * d.size());
    for _ in 0..rows {
        let r = rng.next_u64();
        let special = r.is_multiple_of(16);
        let x = rng.normal() * 100.0 + 1000.0;
        match d {
            DType::F32 | DType::F16 | DType::BF16 | DType::F64 => {
                let f = if special {
                    [f64::NAN, f64::INFINITY, f64::NEG_INFINITY, 0.0, -0.0, 1e-310, 3e38, -65504.0][(r >> 8) as usize % 8]
                } else {
                    x
                };
                match d {
                    DType::F32 => v.extend((f as f32).to_le_bytes()),
                    DType::F16 => v.extend(half::f16::from_f64(f).to_le_bytes()),
                    DType::BF16 => v.extend(half::bf16::from_f64(f).to_le_bytes()),
                    _ => v.extend(f.to_le_bytes()),
                }
            }
            DType::Bool => v.push((r >> 7) as u8 & 1),
            _ => {
                let bits = if special { [0, u64::MAX, 1u64 << 63, (1u64 << 63) - 1][(r >> 8) as usize % 4] } else { r >> ((r >> 58) & 63) };
                v.extend(&bits.to_le_bytes()[..d.size()]);
            }
        }
    }
    v
}

/// A dataset with one column of every dtype (named after it), `rows` rows.
fn dataset(dir: &Path, rows: usize, seed: u64) -> Dataset {
    let mut rng = Rng::new(seed);
    let cols: Vec<OutputColumn> = DType::ALL.iter().map(|&d| OutputColumn { name: d.to_string(), dtype: d }).collect();
    let data: Vec<Vec<u8>> = DType::ALL.iter().map(|&d| column(&mut rng, d, rows)).collect();
    let path = dir.join("data.safetensors");
    let mut w = TableWriter::create(&path, OutputFormat::Safetensors, cols, rows as u64, true).expect("writer");
    let refs: Vec<&[u8]> = data.iter().map(|c| c.as_slice()).collect();
    w.write_tile(rows, &refs).expect("write");
    w.finish().expect("finish");
    Dataset::open(&path).expect("open")
}

/// Runs `prog` over all of `ds` as one tile under the emulation; returns the partials and
/// the output columns (block b's rows packed from row b * BLOCK_ROWS on: programs with
/// outputs have no key, so their unit is a block).
fn emulate(dir: &Path, prog: &FusedProgram, ds: &Dataset, keys: Option<KeySlots>) -> (TileResult, Vec<Vec<u8>>) {
    let rows = ds.rows();
    let dtypes: Vec<DType> = prog.inputs.iter().map(|&c| ds.columns()[c].dtype).collect();
    let k: Kernel = cuda_gen::generate(prog, &dtypes, rows, keys).expect("generate");
    let mut input = vec![0u8; k.in_bytes as usize];
    if let Some(KeySlots::Table(t)) = &k.group_keys {
        input[..t.len() * 8].copy_from_slice(bytemuck::cast_slice(t));
    }
    for (i, &c) in prog.inputs.iter().enumerate() {
        let span = ds.column_span(c, 0, rows);
        let at = k.in_offsets[i] as usize;
        input[at..at + span.len()].copy_from_slice(span);
    }
    std::fs::write(dir.join("in.bin"), &input).expect("write input");
    std::fs::write(dir.join("kernel.cu"), &k.source).expect("write kernel");
    std::fs::write(dir.join("emu.h"), EMU).expect("write emu");
    std::fs::write(dir.join("main.cpp"), MAIN).expect("write main");
    let entry = if k.group_keys.is_some() { "-DENTRY_GROUPBY" } else { "-DENTRY_FUSED" };
    let built = Command::new("g++")
        .current_dir(dir)
        .args(["-std=c++20", "-O1", "-ffp-contract=off", "-pthread", "-w", entry, "-include", "emu.h", "-include", "kernel.cu"])
        .args(["-x", "c++", "main.cpp", "-o", "kernel"])
        .output()
        .expect("run g++");
    assert!(built.status.success(), "g++ failed:\n{}", String::from_utf8_lossy(&built.stderr));
    let unit = exec::unit_rows(prog);
    let units = rows.div_ceil(unit);
    let part_words = units * k.part_words * if k.group_keys.is_some() { k.sweeps * cuda_gen::THREADS as u64 } else { 1 };
    let ran = Command::new(dir.join("kernel"))
        .current_dir(dir)
        .args([
            "in.bin".to_string(),
            k.in_bytes.to_string(),
            part_words.to_string(),
            k.hist_words.to_string(),
            k.out_bytes.to_string(),
            rows.to_string(),
            units.to_string(),
            k.sweeps.to_string(),
            match &k.group_keys {
                Some(KeySlots::Range(lo, _)) => lo.to_string(),
                _ => "0".to_string(),
            },
        ])
        .output()
        .expect("run kernel");
    assert!(ran.status.success(), "emulated kernel failed: {}", String::from_utf8_lossy(&ran.stderr));
    let words = |name: &str| -> Vec<u64> {
        std::fs::read(dir.join(name))
            .expect("read back")
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
            .collect()
    };
    let part = words("part.bin");
    let res = if k.group_keys.is_some() {
        cuda_gen::decode_groups(&k, units as usize, &part)
    } else {
        let bins: Vec<u32> = prog.hists.iter().map(|h| h.bins).collect();
        cuda_gen::decode(&k, units as usize, &part, &words("hist.bin"), &bins)
    };
    let out = std::fs::read(dir.join("out.bin")).expect("read outputs");
    let cols =
        prog.outputs.iter().enumerate().map(|(i, o)| out[k.out_offsets[i] as usize..][..rows as usize * o.dtype.size()].to_vec()).collect();
    (res, cols)
}

fn cpu(prog: &FusedProgram, ds: &Dataset) -> (TileResult, Vec<Vec<u8>>) {
    // Partials compare one by one: these programs have expressions or fewer rows than a
    // unit, so the CPU's units are the GPU's (`compare` checks their number).
    let cpu = Cpu::new(Some(1), 256 << 20).expect("cpu");
    let rows = ds.rows();
    let unit = cpu.unit_rows(prog, ds);
    let prep = cpu.prepare(prog, ds, rows.div_ceil(unit) * unit).expect("prepare");
    let mut out = TileOut { columns: prog.outputs.iter().map(|o| vec![0u8; rows as usize * o.dtype.size()]).collect() };
    let res = cpu.run_tile(&prep, ds, 0..rows, Some(&mut out)).expect("cpu tile");
    (res, out.columns)
}

/// Same counts, bounds and pivot; sums equal up to summation order. The finite bounds
/// only where the CPU computes them (`finite`).
fn same_stats(a: &BlockStats, b: &BlockStats, finite: bool, what: &str) {
    assert_eq!((a.count, a.nan, a.inf), (b.count, b.nan, b.inf), "{what}: counts");
    let same = |x: f64, y: f64| x.to_bits() == y.to_bits() || (x.is_nan() && y.is_nan()) || x == y;
    assert!(same(a.pivot, b.pivot), "{what}: pivot {} vs {}", a.pivot, b.pivot);
    for (x, y, f) in [(a.min, b.min, "min"), (a.max, b.max, "max"), (a.fmin, b.fmin, "fmin"), (a.fmax, b.fmax, "fmax")] {
        assert!(same(x, y) || (!finite && f.starts_with('f')), "{what}: {f} {x} vs {y}");
    }
    assert_eq!((a.imin, a.imax), (b.imin, b.imax), "{what}: integer bounds");
    // Rounding in a different order errs by a fraction of Σ|x - pivot|, not of the sum:
    // values of ±3e38 that cancel leave a small sum with a large error (bounded here by
    // count × the largest |x - pivot|; squares never cancel).
    let spread = (a.max - a.pivot).abs().max((a.min - a.pivot).abs());
    let sum_tol = if spread.is_finite() { 1e-12 * a.count as f64 * spread } else { 0.0 };
    for (x, y, f, tol) in [(a.sum_d, b.sum_d, "sum", sum_tol), (a.sum_d2, b.sum_d2, "sum of squares", 0.0)] {
        // With ±inf values the sum of squares only makes the variance NaN, whatever it is:
        // the CPU's blocks joined into a unit (`BlockStats::append`) may leave NaN where
        // one block leaves inf.
        if f == "sum of squares" && a.inf > 0 && !x.is_finite() && !y.is_finite() {
            continue;
        }
        let close = same(x, y) || (x - y).abs() <= 1e-9 * x.abs().max(y.abs()) + tol;
        assert!(close, "{what}: {f} {x} vs {y}");
    }
}

fn compare(prog: &FusedProgram, emu: &(TileResult, Vec<Vec<u8>>), cpu: &(TileResult, Vec<Vec<u8>>), what: &str) {
    let (e, c) = (&emu.0, &cpu.0);
    assert_eq!(e.blocks.len(), c.blocks.len(), "{what}: blocks");
    let mut packed = Vec::new();
    for (b, (eb, cb)) in e.blocks.iter().zip(&c.blocks).enumerate() {
        assert_eq!(eb.selected, cb.selected, "{what}: block {b} selected");
        for (i, (x, y)) in eb.stats.iter().zip(&cb.stats).enumerate() {
            same_stats(x, y, prog.finite_range, &format!("{what}: block {b} stat {i} ({:?})", prog.stats[i]));
        }
        let mut cg: Vec<_> = cb.groups.iter().collect();
        cg.sort_by_key(|g| g.0);
        assert_eq!(eb.groups.iter().count(), cg.len(), "{what}: block {b} groups");
        for ((ek, en, es), &(ck, cn, cs)) in eb.groups.iter().zip(&cg) {
            assert_eq!((ek, en), (ck, cn), "{what}: block {b} group rows");
            for (i, (x, y)) in es.iter().zip(cs).enumerate() {
                same_stats(x, y, false, &format!("{what}: block {b} key {ek} stat {i}"));
            }
        }
        assert_eq!(eb.out_counts, cb.out_counts, "{what}: block {b} NaN/overflow counts");
        packed.push((b * BLOCK_ROWS as usize, eb.selected as usize));
    }
    for (h, (x, y)) in e.hists.iter().zip(&c.hists).enumerate() {
        assert_eq!((x.below, x.above, x.nan), (y.below, y.above, y.nan), "{what}: histogram {h} outside counts");
        assert_eq!(x.counts, y.counts, "{what}: histogram {h} bins");
    }
    for (k, spec) in prog.outputs.iter().enumerate() {
        let sz = spec.dtype.size();
        for &(from, n) in &packed {
            let (x, y) = (&emu.1[k][from * sz..(from + n) * sz], &cpu.1[k][from * sz..(from + n) * sz]);
            if x != y {
                let at = x.chunks(sz).zip(y.chunks(sz)).position(|(a, b)| a != b).unwrap_or(0);
                panic!(
                    "{what}: output `{}` ({}) differs at packed row {} of block at {from}: {:02x?} vs {:02x?}",
                    spec.name,
                    spec.dtype,
                    at,
                    &x[at * sz..][..sz],
                    &y[at * sz..][..sz]
                );
            }
        }
    }
}

/// Every register op, as instructions over the every-dtype dataset.
fn ops_program(ds: &Dataset) -> (FusedProgram, Vec<usize>) {
    let n = ds.columns().len();
    let load_ty = |d: DType| match d {
        DType::Bool => VType::Bool,
        d if d.is_float() => VType::F32,
        _ => VType::Int,
    };
    let mut instrs: Vec<Instr> = (0..n).map(|slot| Instr::Load { slot, ty: load_ty(ds.columns()[slot].dtype) }).collect();
    let slot = |d: DType| DType::ALL.iter().position(|&x| x == d).unwrap_or(0);
    let (f, h, g, i, u, b) = (slot(DType::F32), slot(DType::F16), slot(DType::F64), slot(DType::I32), slot(DType::U64), slot(DType::Bool));
    instrs.push(Instr::Const(Value::F(1000.5)));
    instrs.push(Instr::Const(Value::I(-7)));
    let (kf, ki) = (n, n + 1);
    let mut regs = Vec::new();
    let push = |instrs: &mut Vec<Instr>, op: Op, a: &[usize]| {
        let mut args = [0; 3];
        args[..a.len()].copy_from_slice(a);
        instrs.push(Instr::Op { op, args });
        instrs.len() - 1
    };
    for op in [Op::Neg, Op::Abs, Op::Sqrt, Op::Exp, Op::Log, Op::Log1p, Op::IsNan, Op::IsInf, Op::IsFinite] {
        regs.push(push(&mut instrs, op, &[f]));
    }
    for op in [Op::Add, Op::Sub, Op::Mul, Op::Div, Op::Min, Op::Max] {
        regs.push(push(&mut instrs, op, &[f, g]));
        regs.push(push(&mut instrs, op, &[h, kf]));
    }
    regs.push(push(&mut instrs, Op::Clip, &[f, kf, g]));
    let itof = push(&mut instrs, Op::IntToF, &[u]);
    regs.push(itof);
    let mut bools = Vec::new();
    instrs.push(Instr::LoadKey { slot: g });
    let key = instrs.len() - 1;
    // The order keys of an f32 and an f16 column (widened to f64).
    instrs.push(Instr::LoadKey { slot: f });
    let fkey = instrs.len() - 1;
    instrs.push(Instr::LoadKey { slot: h });
    let hkey = instrs.len() - 1;
    for c in [Cmp::Lt, Cmp::Le, Cmp::Gt, Cmp::Ge, Cmp::Eq, Cmp::Ne] {
        bools.push(push(&mut instrs, Op::CmpI(c), &[key, ki]));
        bools.push(push(&mut instrs, Op::CmpI(c), &[key, fkey]));
        bools.push(push(&mut instrs, Op::CmpI(c), &[hkey, key]));
        bools.push(push(&mut instrs, Op::CmpF(c), &[f, kf]));
        bools.push(push(&mut instrs, Op::CmpF(c), &[f, f]));
        bools.push(push(&mut instrs, Op::CmpI(c), &[i, ki]));
        bools.push(push(&mut instrs, Op::CmpI(c), &[u, i]));
    }
    let and = push(&mut instrs, Op::And, &[bools[0], b]);
    let or = push(&mut instrs, Op::Or, &[bools[2], bools[5]]);
    let not = push(&mut instrs, Op::Not, &[and]);
    bools.extend([and, or, not]);
    regs.push(push(&mut instrs, Op::BoolToI, &[or]));
    regs.extend(bools);
    (FusedProgram { inputs: (0..n).collect(), instrs, ..FusedProgram::default() }, regs)
}

#[test]
fn emulated_cuda_kernels_match_the_cpu_backend() {
    if !have_cxx() {
        return;
    }
    let seed = test_seed();
    let dir = scratch("fused");
    // Two whole blocks and a ragged one.
    let ds = dataset(&dir, 2 * BLOCK_ROWS as usize + 77, seed);
    let slot = |d: DType| DType::ALL.iter().position(|&x| x == d).unwrap_or(0);
    let (base, regs) = ops_program(&ds);
    let mask = Some(regs[regs.len() - 3]); // (f32 < 1000.5) && bool

    // Statistics of every column and every register, with and without the filter.
    let mut p = base.clone();
    p.stats = (0..ds.columns().len()).map(Source::Slot).chain(regs.iter().map(|&r| Source::Reg(r))).collect();
    for (m, finite) in [(None, false), (mask, false), (mask, true)] {
        p.mask = m;
        p.finite_range = finite;
        compare(&p, &emulate(&dir, &p, &ds, None), &cpu(&p, &ds), &format!("stats, mask {m:?}, finite range {finite}"));
    }

    // Histograms: shared-memory counts and global counts.
    for bins in [16, 5000] {
        let mut p = base.clone();
        p.hists = [DType::F32, DType::F64, DType::I16, DType::U64, DType::BF16]
            .iter()
            .map(|&d| HistSpec { source: Source::Slot(slot(d)), lo: 900.0, hi: 1100.0, bins })
            .chain([
                HistSpec { source: Source::Reg(regs[0]), lo: -1e4, hi: 0.0, bins },
                HistSpec { source: Source::Reg(regs[1]), lo: 3.0, hi: 3.0, bins },
            ])
            .collect();
        p.mask = mask;
        compare(&p, &emulate(&dir, &p, &ds, None), &cpu(&p, &ds), &format!("histograms of {bins} bins"));
    }

    // Outputs: raw copies, every scaling, fill and cast, registers.
    let out = |name: String, source: Source, scale: Option<Scale>, fill_nan: Option<f64>, dtype: DType| OutSpec {
        name,
        source,
        scale,
        fill_nan,
        dtype,
    };
    let mut outs: Vec<OutSpec> =
        DType::ALL.iter().enumerate().map(|(k, &d)| out(format!("raw{k}"), Source::Slot(k), None, None, d)).collect();
    let scales = [
        Some(Scale::Standardize { mean: 1000.25, std: 99.5 }),
        Some(Scale::MinMax { min: -3.0, max: 5.0 }),
        Some(Scale::Standardize { mean: 1.0, std: 0.0 }),
        Some(Scale::Standardize { mean: 1e300, std: 1e-300 }),
        None,
    ];
    for (k, &d) in DType::ALL.iter().enumerate() {
        if d == DType::Bool {
            continue;
        }
        for (j, sc) in scales.iter().enumerate() {
            for cast in [DType::F32, DType::F16, DType::BF16] {
                outs.push(out(format!("c{k}_{j}_{cast}"), Source::Slot(k), *sc, if j % 2 == 0 { Some(-0.5) } else { None }, cast));
            }
        }
    }
    outs.push(out("f64fill".into(), Source::Slot(slot(DType::F64)), None, Some(-1.0), DType::F64));
    for (j, &r) in regs.iter().enumerate() {
        let dtype = match base.reg_type(r) {
            VType::F32 => DType::F16,
            VType::Int => DType::I64,
            VType::Bool => DType::Bool,
        };
        outs.push(out(format!("reg{j}"), Source::Reg(r), None, None, dtype));
        if base.reg_type(r) == VType::F32 {
            outs.push(out(format!("reg{j}f"), Source::Reg(r), None, Some(7.0), DType::F32));
        }
    }
    let mut p = base.clone();
    p.outputs = outs;
    for m in [None, mask] {
        p.mask = m;
        compare(&p, &emulate(&dir, &p, &ds, None), &cpu(&p, &ds), &format!("outputs, mask {m:?}"));
    }

    // Nothing but a count, on a filter.
    let mut p = base.clone();
    p.mask = mask;
    compare(&p, &emulate(&dir, &p, &ds, None), &cpu(&p, &ds), "count");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn emulated_cuda_group_by_matches_the_cpu_backend() {
    if !have_cxx() {
        return;
    }
    let seed = test_seed();
    let dir = scratch("groupby");
    // One whole unit and a ragged one.
    let ds = dataset(&dir, GROUP_BLOCK_ROWS as usize + 3000, seed);
    let slot = |d: DType| DType::ALL.iter().position(|&x| x == d).unwrap_or(0);
    let (base, regs) = ops_program(&ds);
    for key in [DType::U8, DType::I8, DType::Bool] {
        let mut p = base.clone();
        p.key = Some(slot(key));
        p.stats = [DType::F32, DType::F64, DType::BF16, DType::I64, DType::U64, DType::U16]
            .iter()
            .map(|&d| Source::Slot(slot(d)))
            .chain([Source::Reg(regs[2])])
            .collect();
        for m in [None, Some(regs[regs.len() - 3])] {
            p.mask = m;
            compare(&p, &emulate(&dir, &p, &ds, None), &cpu(&p, &ds), &format!("group by {key}, mask {m:?}"));
        }
    }
    // Many statistics: fewer rows staged at once (so that the stage fits in shared memory).
    let mut p = base.clone();
    p.key = Some(slot(DType::U8));
    p.stats = (0..ds.columns().len()).map(Source::Slot).chain(regs.iter().map(|&r| Source::Reg(r))).collect();
    p.mask = Some(regs[regs.len() - 3]);
    compare(&p, &emulate(&dir, &p, &ds, None), &cpu(&p, &ds), &format!("group by u8 with {} statistics", p.stats.len()));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn emulated_cuda_group_by_wide_keys() {
    if !have_cxx() {
        return;
    }
    let dir = scratch("widekeys");
    // A u16 key column with values in 0..700 (three sweeps of 256 keys by their range), and
    // an i64 one of 300 values over the whole i64 range, its ends included (a table of keys).
    let rows = 40_000usize;
    let mut rng = Rng::new(test_seed());
    let key: Vec<u8> = (0..rows).flat_map(|_| ((rng.next_u64() % 700) as u16).to_le_bytes()).collect();
    let pick: Vec<i64> = (0..300).map(|j| [i64::MIN, i64::MAX].get(j).copied().unwrap_or(rng.next_u64() as i64)).collect();
    let wide: Vec<u8> = (0..rows).flat_map(|_| pick[(rng.uniform() * rng.uniform() * 300.0) as usize].to_le_bytes()).collect();
    let val: Vec<u8> = (0..rows).flat_map(|_| (rng.normal() as f32).to_le_bytes()).collect();
    let path = dir.join("k.safetensors");
    let cols = vec![
        OutputColumn { name: "k".into(), dtype: DType::U16 },
        OutputColumn { name: "w".into(), dtype: DType::I64 },
        OutputColumn { name: "v".into(), dtype: DType::F32 },
    ];
    let mut w = TableWriter::create(&path, OutputFormat::Safetensors, cols, rows as u64, true).expect("writer");
    w.write_tile(rows, &[&key, &wide, &val]).expect("write");
    w.finish().expect("finish");
    let ds = Dataset::open(&path).expect("open");
    for (col, table) in [(0, false), (1, true)] {
        let keys = crate::backend::group_keys(&ds, col, cuda_gen::THREADS as u64, "cuda").expect("keys");
        assert_eq!(matches!(keys, KeySlots::Table(_)), table, "column {col}: {keys:?}");
        let p =
            FusedProgram { inputs: vec![col, 2], key: Some(0), stats: vec![Source::Slot(1), Source::Slot(0)], ..FusedProgram::default() };
        compare(&p, &emulate(&dir, &p, &ds, Some(keys)), &cpu(&p, &ds), &format!("keys of column {col}"));
    }
    let _ = std::fs::remove_dir_all(&dir);
}
