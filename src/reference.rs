//! The test oracle: a naive, row-at-a-time evaluator in f64 that shares no code with the
//! op table, the program builder or the backends. Slow on purpose; tests only.

use crate::dtype::DType;
use crate::expr::{BinOp, Expr, ExprKind, Func, Literal};
use crate::source::Dataset;

/// A value in the reference evaluator.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RefVal {
    /// A float (always a value an f32 can hold, since expressions compute in f32).
    F(f64),
    /// An integer.
    I(i128),
    /// A boolean.
    B(bool),
}

/// The raw value of column `col` at `row`: floats exactly (f64), integers exactly.
pub fn raw(ds: &Dataset, col: usize, row: u64) -> RefVal {
    let c = &ds.columns()[col];
    let b = ds.column_span(col, row, row + 1);
    let le2 = |b: &[u8]| u16::from_le_bytes([b[0], b[1]]);
    match c.dtype {
        DType::F32 => RefVal::F(f32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f64),
        DType::F64 => RefVal::F(f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])),
        DType::F16 => RefVal::F(half::f16::from_bits(le2(b)).to_f64()),
        DType::BF16 => RefVal::F(f32::from_bits((le2(b) as u32) << 16) as f64),
        DType::I8 => RefVal::I(b[0] as i8 as i128),
        DType::U8 => RefVal::I(b[0] as i128),
        DType::I16 => RefVal::I(le2(b) as i16 as i128),
        DType::U16 => RefVal::I(le2(b) as i128),
        DType::I32 => RefVal::I(i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as i128),
        DType::U32 => RefVal::I(u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as i128),
        DType::I64 => RefVal::I(i64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as i128),
        DType::U64 => RefVal::I(u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as i128),
        DType::Bool => RefVal::B(b[0] != 0),
    }
}

/// The raw value as f64 (NaN for booleans).
pub fn raw_f64(ds: &Dataset, col: usize, row: u64) -> f64 {
    match raw(ds, col, row) {
        RefVal::F(f) => f,
        RefVal::I(i) => i as f64,
        RefVal::B(b) => b as u8 as f64,
    }
}

fn round32(x: f64) -> f64 {
    x as f32 as f64
}

fn as_float(v: RefVal) -> f64 {
    match v {
        RefVal::F(f) => f,
        RefVal::I(i) => round32(i as f64),
        RefVal::B(b) => b as u8 as f64,
    }
}

/// Evaluates `e` at `row`. `with` holds computed columns, visible by name.
pub fn eval(ds: &Dataset, e: &Expr, row: u64, with: &[(String, Expr)]) -> RefVal {
    match &e.kind {
        ExprKind::Col(name) => {
            if let Some(pos) = with.iter().rposition(|(n, _)| n == name) {
                return eval(ds, &with[pos].1, row, &with[..pos]);
            }
            let c = ds.column_index(name).expect("reference: unknown column");
            match raw(ds, c, row) {
                RefVal::F(f) => RefVal::F(round32(f)),
                v => v,
            }
        }
        ExprKind::Lit(Literal::Float(v)) => RefVal::F(round32(*v)),
        ExprKind::Lit(Literal::Int(v)) => RefVal::I(*v as i128),
        ExprKind::Lit(Literal::Bool(v)) => RefVal::B(*v),
        ExprKind::Neg(a) => RefVal::F(-as_float(eval(ds, a, row, with))),
        ExprKind::Not(a) => RefVal::B(!matches!(eval(ds, a, row, with), RefVal::B(true))),
        ExprKind::Binary(op, a, b)
            if op.is_comparison()
                && let Some(ord) = exact_f64_comparison(ds, a, b, row, with) =>
        {
            RefVal::B(ord.is_some_and(|o| cmp_holds(*op, o)))
        }
        ExprKind::Binary(op, a, b) => {
            let (x, y) = (eval(ds, a, row, with), eval(ds, b, row, with));
            match op {
                BinOp::And => RefVal::B(x == RefVal::B(true) && y == RefVal::B(true)),
                BinOp::Or => RefVal::B(x == RefVal::B(true) || y == RefVal::B(true)),
                BinOp::Add => RefVal::F(round32(as_float(x) + as_float(y))),
                BinOp::Sub => RefVal::F(round32(as_float(x) - as_float(y))),
                BinOp::Mul => RefVal::F(round32(as_float(x) * as_float(y))),
                BinOp::Div => RefVal::F(round32(as_float(x) / as_float(y))),
                cmp => {
                    let ord = match (x, y) {
                        (RefVal::I(i), RefVal::I(j)) => Some(i.cmp(&j)),
                        (RefVal::B(i), RefVal::B(j)) => Some(i.cmp(&j)),
                        // A literal by its exact value (its text's, `program::exact_real`).
                        (RefVal::I(i), RefVal::F(_)) if let Some(c) = crate::program::exact_real(b) => cmp_int_exact(i, c),
                        (RefVal::F(_), RefVal::I(j)) if let Some(c) = crate::program::exact_real(a) => {
                            cmp_int_exact(j, c).map(|o| o.reverse())
                        }
                        _ => as_float(x).partial_cmp(&as_float(y)),
                    };
                    RefVal::B(ord.is_some_and(|o| cmp_holds(*cmp, o)))
                }
            }
        }
        ExprKind::Call(f, args) => {
            let v: Vec<f64> = args.iter().map(|a| as_float(eval(ds, a, row, with))).collect();
            match f {
                Func::Abs => RefVal::F(v[0].abs()),
                Func::Sqrt => RefVal::F(round32(v[0].sqrt())),
                Func::Exp => RefVal::F(round32(v[0].exp())),
                Func::Log => RefVal::F(round32(v[0].ln())),
                Func::Log1p => RefVal::F(round32(v[0].ln_1p())),
                Func::IsNan => RefVal::B(v[0].is_nan()),
                Func::IsInf => RefVal::B(v[0].is_infinite()),
                Func::IsFinite => RefVal::B(v[0].is_finite()),
                Func::Min => RefVal::F(if v[0].is_nan() || v[1].is_nan() { f64::NAN } else { v[0].min(v[1]) }),
                Func::Max => RefVal::F(if v[0].is_nan() || v[1].is_nan() { f64::NAN } else { v[0].max(v[1]) }),
                Func::Clip => RefVal::F(if v[0].is_nan() {
                    f64::NAN
                } else if v[0] < v[1] {
                    v[1]
                } else if v[0] > v[2] {
                    v[2]
                } else {
                    v[0]
                }),
            }
        }
    }
}

/// Whether comparison `op` holds for operands in order `o`.
fn cmp_holds(op: BinOp, o: std::cmp::Ordering) -> bool {
    match op {
        BinOp::Lt => o.is_lt(),
        BinOp::Le => o.is_le(),
        BinOp::Gt => o.is_gt(),
        BinOp::Ge => o.is_ge(),
        BinOp::Eq => o.is_eq(),
        _ => o.is_ne(),
    }
}

/// The order of a comparison of an f64 column (not a `with` name) with a numeric literal or
/// another float column at `row`, compared exactly in f64 as the engine does (`None` inside:
/// a NaN); `None`: any other comparison.
fn exact_f64_comparison(ds: &Dataset, a: &Expr, b: &Expr, row: u64, with: &[(String, Expr)]) -> Option<Option<std::cmp::Ordering>> {
    let float_column = |e: &Expr| -> Option<usize> {
        let ExprKind::Col(name) = &e.kind else { return None };
        if with.iter().any(|(n, _)| n == name) {
            return None;
        }
        let c = ds.column_index(name).ok()?;
        ds.columns()[c].dtype.is_float().then_some(c)
    };
    let column = |e: &Expr| float_column(e).filter(|&c| ds.columns()[c].dtype == DType::F64);
    fn literal(e: &Expr) -> Option<RefVal> {
        match &e.kind {
            ExprKind::Lit(Literal::Float(v)) => Some(RefVal::F(*v)),
            ExprKind::Lit(Literal::Int(v)) => Some(RefVal::I(*v as i128)),
            ExprKind::Neg(inner) => match literal(inner)? {
                RefVal::F(v) => Some(RefVal::F(-v)),
                RefVal::I(v) => Some(RefVal::I(-v)),
                RefVal::B(_) => None,
            },
            _ => None,
        }
    }
    let with_literal = |x: f64, l: RefVal| match l {
        RefVal::F(v) => x.partial_cmp(&v),
        RefVal::I(i) => cmp_int_real(i, x).map(|o| o.reverse()),
        RefVal::B(_) => None,
    };
    let value = |c: usize| raw_f64(ds, c, row);
    // An f64 column with another float column (of any width): both exactly.
    if let (Some(ca), Some(cb)) = (float_column(a), float_column(b))
        && (column(a).is_some() || column(b).is_some())
    {
        return Some(value(ca).partial_cmp(&value(cb)));
    }
    match (column(a), column(b)) {
        (Some(ca), Some(cb)) => Some(value(ca).partial_cmp(&value(cb))),
        (Some(ca), None) => Some(with_literal(value(ca), literal(b)?)),
        (None, Some(cb)) => Some(with_literal(value(cb), literal(a)?).map(|o| o.reverse())),
        (None, None) => None,
    }
}

/// Exact comparison of an integer with a real literal.
fn cmp_int_exact(i: i128, c: crate::program::ExactReal) -> Option<std::cmp::Ordering> {
    match c {
        crate::program::ExactReal::Nan => None,
        crate::program::ExactReal::Finite { floor, ceil } if floor == ceil => Some(i.cmp(&floor)),
        crate::program::ExactReal::Finite { floor, .. } => {
            Some(if i <= floor { std::cmp::Ordering::Less } else { std::cmp::Ordering::Greater })
        }
    }
}

/// Exact comparison of an integer with a real number.
fn cmp_int_real(i: i128, c: f64) -> Option<std::cmp::Ordering> {
    if c.is_nan() {
        return None;
    }
    if c.is_infinite() {
        return Some(if c > 0.0 { std::cmp::Ordering::Less } else { std::cmp::Ordering::Greater });
    }
    let fl = c.floor();
    let fi = fl as i128;
    Some(match i.cmp(&fi) {
        std::cmp::Ordering::Equal if c > fl => std::cmp::Ordering::Less,
        o => o,
    })
}

/// Rows where every filter is true.
pub fn selected_rows(ds: &Dataset, filters: &[Expr], with: &[(String, Expr)]) -> Vec<u64> {
    (0..ds.rows()).filter(|&r| filters.iter().all(|f| eval(ds, f, r, with) == RefVal::B(true))).collect()
}

/// Reference statistics of a set of values (two-pass, compensated).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RefStats {
    /// Non-NaN values.
    pub count: u64,
    /// NaN values.
    pub nan: u64,
    /// ±inf values.
    pub inf: u64,
    /// Sum.
    pub sum: f64,
    /// Σ|x|.
    pub abs_sum: f64,
    /// Mean.
    pub mean: f64,
    /// Minimum.
    pub min: f64,
    /// Maximum.
    pub max: f64,
    /// Population variance.
    pub var: f64,
}

/// Statistics of `values`, NaN skipped, in f64 with a compensated sum and two passes.
pub fn stats(values: &[f64]) -> RefStats {
    let vals: Vec<f64> = values.iter().copied().filter(|v| !v.is_nan()).collect();
    let n = vals.len();
    let (mut s, mut c) = (0.0f64, 0.0f64);
    for &x in &vals {
        let y = x - c;
        let t = s + y;
        c = (t - s) - y;
        s = t;
    }
    let sum = if vals.iter().any(|v| v.is_infinite()) { vals.iter().sum() } else { s };
    let mean = sum / n as f64;
    let var = vals.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / n as f64;
    RefStats {
        count: n as u64,
        nan: (values.len() - n) as u64,
        inf: vals.iter().filter(|v| v.is_infinite()).count() as u64,
        sum: if n == 0 { 0.0 } else { sum },
        abs_sum: vals.iter().map(|v| v.abs()).sum(),
        mean,
        min: vals.iter().copied().fold(f64::INFINITY, f64::min),
        max: vals.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        var,
    }
}

/// Histogram of `values` by the normative formula, computed independently.
pub fn histogram(values: &[f64], lo: f64, hi: f64, bins: u32) -> (Vec<u64>, u64, u64, u64) {
    let mut counts = vec![0u64; bins as usize];
    let (mut below, mut above, mut nan) = (0, 0, 0);
    for &x in values {
        if x.is_nan() {
            nan += 1;
        } else if x < lo {
            below += 1;
        } else if x > hi {
            above += 1;
        } else if hi == lo {
            counts[0] += 1;
        } else {
            let i = ((x - lo) * (bins as f64 / (hi - lo))).floor();
            counts[if i >= bins as f64 { bins as usize - 1 } else { i as usize }] += 1;
        }
    }
    (counts, below, above, nan)
}
