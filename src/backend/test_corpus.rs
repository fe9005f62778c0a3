//! A corpus of fused programs covering every op, every input dtype, every statistic and
//! histogram domain and every kind of output, with and without a filter: every backend's
//! code generator is checked against it (naga validates the WGSL, NVRTC compiles the CUDA).

use crate::dtype::DType;
use crate::ops::{Cmp, Op, VType};
use crate::program::{FusedProgram, HistSpec, Instr, OutSpec, Scale, Source, Value};

/// A corpus covering every op, every input dtype, every statistic and histogram domain
/// and every kind of output, with and without a filter.
pub(crate) fn corpus() -> Vec<(FusedProgram, Vec<DType>)> {
    let mut v = Vec::new();
    let dtypes: Vec<DType> = DType::ALL.to_vec();
    let load_ty = |d: DType| match d {
        DType::Bool => VType::Bool,
        d if d.is_float() => VType::F32,
        _ => VType::Int,
    };
    // Every load, then every op on them.
    let mut instrs: Vec<Instr> = dtypes.iter().enumerate().map(|(slot, &d)| Instr::Load { slot, ty: load_ty(d) }).collect();
    let f = 0; // f32 register
    let i = 4; // i8 register (Int)
    let b = 12; // bool register
    instrs.push(Instr::Const(Value::F(1.5)));
    instrs.push(Instr::Const(Value::I(-7)));
    instrs.push(Instr::Const(Value::B(true)));
    let (kf, ki) = (13, 14);
    let mut ops = vec![
        (Op::Neg, vec![f]),
        (Op::Abs, vec![f]),
        (Op::Sqrt, vec![f]),
        (Op::Exp, vec![f]),
        (Op::Log, vec![f]),
        (Op::Log1p, vec![f]),
        (Op::Add, vec![f, kf]),
        (Op::Sub, vec![f, kf]),
        (Op::Mul, vec![f, kf]),
        (Op::Div, vec![f, kf]),
        (Op::Min, vec![f, kf]),
        (Op::Max, vec![f, kf]),
        (Op::Clip, vec![f, kf, kf]),
        (Op::IsNan, vec![f]),
        (Op::IsInf, vec![f]),
        (Op::IsFinite, vec![f]),
        (Op::And, vec![b, b]),
        (Op::Or, vec![b, b]),
        (Op::Not, vec![b]),
        (Op::IntToF, vec![i]),
        (Op::BoolToI, vec![b]),
    ];
    for c in [Cmp::Lt, Cmp::Le, Cmp::Gt, Cmp::Ge, Cmp::Eq, Cmp::Ne] {
        ops.push((Op::CmpF(c), vec![f, kf]));
        ops.push((Op::CmpI(c), vec![i, ki]));
    }
    for (op, a) in ops {
        let mut args = [0; 3];
        args[..a.len()].copy_from_slice(&a);
        instrs.push(Instr::Op { op, args });
    }
    let last_bool = instrs.len() - 2 - 4; // some comparison
    // The f64 column's order key, compared with an integer constant.
    instrs.push(Instr::LoadKey { slot: dtypes.iter().position(|&d| d == DType::F64).unwrap_or(0) });
    instrs.push(Instr::Op { op: Op::CmpI(Cmp::Ge), args: [instrs.len() - 1, ki, 0] });
    // An f32 and a bf16 column's order keys (widened to f64), compared with the f64's.
    for d in [DType::F32, DType::BF16] {
        instrs.push(Instr::LoadKey { slot: dtypes.iter().position(|&x| x == d).unwrap_or(0) });
        instrs.push(Instr::Op { op: Op::CmpI(Cmp::Lt), args: [instrs.len() - 1, instrs.len() - 3, 0] });
    }
    let base = FusedProgram { inputs: (0..dtypes.len()).collect(), instrs, ..FusedProgram::default() };
    let slot = |d: DType| dtypes.iter().position(|&x| x == d).unwrap_or(0);
    // Statistics over every domain (raw slots of every dtype, and registers).
    let mut p = base.clone();
    p.stats = (0..dtypes.len()).map(Source::Slot).chain([Source::Reg(f), Source::Reg(i), Source::Reg(b)]).collect();
    v.push((p.clone(), dtypes.clone()));
    p.mask = Some(last_bool);
    v.push((p, dtypes.clone()));
    // Histograms: small (workgroup memory) and large (global atomics).
    for bins in [10, 3000] {
        let mut p = base.clone();
        p.hists = [DType::F32, DType::F64, DType::I32, DType::U64]
            .iter()
            .map(|&d| HistSpec { source: Source::Slot(slot(d)), lo: -1.0, hi: 2.0, bins })
            .chain([HistSpec { source: Source::Reg(f), lo: 0.0, hi: 0.0, bins }])
            .collect();
        p.mask = Some(last_bool);
        v.push((p, dtypes.clone()));
    }
    // Outputs: raw copies of every size, computed floats with every scaling and cast.
    let out = |name: &str, source: Source, scale: Option<Scale>, fill_nan: Option<f64>, dtype: DType| OutSpec {
        name: name.to_string(),
        source,
        scale,
        fill_nan,
        dtype,
    };
    let mut outs: Vec<OutSpec> = dtypes.iter().enumerate().map(|(k, &d)| out(&format!("raw{k}"), Source::Slot(k), None, None, d)).collect();
    let std = Some(Scale::Standardize { mean: 10000.25, std: 2.0 });
    let mm = Some(Scale::MinMax { min: -3.0, max: 5.0 });
    let zero = Some(Scale::Standardize { mean: 1.0, std: 0.0 });
    let inf_mean = Some(Scale::Standardize { mean: f64::INFINITY, std: f64::NAN });
    for (k, &d) in dtypes.iter().enumerate() {
        if d == DType::Bool {
            continue;
        }
        for (j, sc) in [std, mm, zero, inf_mean, None].iter().enumerate() {
            for cast in [DType::F32, DType::F16, DType::BF16] {
                outs.push(out(&format!("c{k}_{j}_{cast}"), Source::Slot(k), *sc, Some(0.5), cast));
            }
        }
    }
    outs.push(out("f64fill", Source::Slot(slot(DType::F64)), None, Some(-1.0), DType::F64));
    outs.push(out("int", Source::Reg(i), None, None, DType::I64));
    outs.push(out("bool", Source::Reg(b), None, None, DType::Bool));
    outs.push(out("reg", Source::Reg(f), std, None, DType::F16));
    let mut p = base.clone();
    p.outputs = outs;
    v.push((p.clone(), dtypes.clone()));
    p.mask = Some(last_bool);
    v.push((p, dtypes.clone()));
    // Group-by over every statistic domain, with and without a filter, on 8-bit keys.
    for key in [DType::U8, DType::I8, DType::Bool] {
        let mut p = base.clone();
        p.key = Some(slot(key));
        p.stats = (0..dtypes.len()).map(Source::Slot).chain([Source::Reg(f), Source::Reg(i)]).collect();
        v.push((p.clone(), dtypes.clone()));
        p.mask = Some(last_bool);
        v.push((p, dtypes.clone()));
    }
    // Nothing but a count.
    v.push((FusedProgram::default(), Vec::new()));
    v
}

/// Sorted distinct keys for group-by kernels numbered by a key table: 302 i64 values over
/// the whole range (two sweeps of 256).
pub(crate) fn key_table() -> Vec<i64> {
    (0..300).map(|j| (j - 150) * 1_000_000_007).chain([i64::MIN, i64::MAX]).collect::<std::collections::BTreeSet<_>>().into_iter().collect()
}
