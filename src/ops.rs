//! The op table: every operation a fused program can run, its types, and its CPU form.
//! The GPU backends add their WGSL and CUDA text for each op here, beside the CPU form.

/// The type of a value in a fused program's register.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum VType {
    /// 32-bit float: what every arithmetic expression computes in.
    F32,
    /// 64-bit signed integer: integer columns and literals, compared exactly.
    Int,
    /// Boolean, one byte 0/1.
    Bool,
}

/// A comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Cmp {
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `>`
    Gt,
    /// `>=`
    Ge,
    /// `==`
    Eq,
    /// `!=` (false when either side is NaN, like every comparison)
    Ne,
}

impl Cmp {
    /// The comparison with its operands swapped: `a < b` is `b > a`.
    pub fn flip(self) -> Cmp {
        match self {
            Cmp::Lt => Cmp::Gt,
            Cmp::Le => Cmp::Ge,
            Cmp::Gt => Cmp::Lt,
            Cmp::Ge => Cmp::Le,
            c => c,
        }
    }
}

/// An operation on registers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    /// f32 negation
    Neg,
    /// |x|
    Abs,
    /// square root
    Sqrt,
    /// e^x
    Exp,
    /// natural logarithm
    Log,
    /// ln(1 + x)
    Log1p,
    /// a + b
    Add,
    /// a - b
    Sub,
    /// a * b
    Mul,
    /// a / b
    Div,
    /// min(a, b), NaN if either is NaN
    Min,
    /// max(a, b), NaN if either is NaN
    Max,
    /// clip(x, lo, hi), NaN stays NaN
    Clip,
    /// float comparison
    CmpF(Cmp),
    /// integer comparison
    CmpI(Cmp),
    /// x is NaN
    IsNan,
    /// x is ±inf
    IsInf,
    /// x is neither NaN nor ±inf
    IsFinite,
    /// logical and
    And,
    /// logical or
    Or,
    /// logical not
    Not,
    /// integer to f32 (round to nearest)
    IntToF,
    /// bool to integer 0/1
    BoolToI,
}

impl Op {
    /// Argument types and result type.
    pub fn signature(self) -> (&'static [VType], VType) {
        use VType::*;
        match self {
            Op::Neg | Op::Abs | Op::Sqrt | Op::Exp | Op::Log | Op::Log1p => (&[F32], F32),
            Op::Add | Op::Sub | Op::Mul | Op::Div | Op::Min | Op::Max => (&[F32, F32], F32),
            Op::Clip => (&[F32, F32, F32], F32),
            Op::CmpF(_) => (&[F32, F32], Bool),
            Op::CmpI(_) => (&[Int, Int], Bool),
            Op::IsNan | Op::IsInf | Op::IsFinite => (&[F32], Bool),
            Op::And | Op::Or => (&[Bool, Bool], Bool),
            Op::Not => (&[Bool], Bool),
            Op::IntToF => (&[Int], F32),
            Op::BoolToI => (&[Bool], Int),
        }
    }
}

/// CPU forms. Each loop is written so that the compiler vectorizes it.
pub(crate) mod cpu {
    use super::{Cmp, Op};

    #[inline(always)]
    fn nan_min(a: f32, b: f32) -> f32 {
        if a.is_nan() || b.is_nan() {
            f32::NAN
        } else if b < a {
            b
        } else {
            a
        }
    }
    #[inline(always)]
    fn nan_max(a: f32, b: f32) -> f32 {
        if a.is_nan() || b.is_nan() {
            f32::NAN
        } else if b > a {
            b
        } else {
            a
        }
    }
    #[inline(always)]
    fn cmp_f(c: Cmp, a: f32, b: f32) -> bool {
        match c {
            Cmp::Lt => a < b,
            Cmp::Le => a <= b,
            Cmp::Gt => a > b,
            Cmp::Ge => a >= b,
            Cmp::Eq => a == b,
            Cmp::Ne => (a != b) & !a.is_nan() & !b.is_nan(),
        }
    }

    /// One f32 → f32 op over a slice.
    #[inline(always)]
    pub fn unary_f(op: Op, a: &[f32], out: &mut [f32]) {
        let out = &mut out[..a.len()];
        match op {
            Op::Neg => out.iter_mut().zip(a).for_each(|(o, &x)| *o = -x),
            Op::Abs => out.iter_mut().zip(a).for_each(|(o, &x)| *o = x.abs()),
            Op::Sqrt => out.iter_mut().zip(a).for_each(|(o, &x)| *o = x.sqrt()),
            Op::Exp => out.iter_mut().zip(a).for_each(|(o, &x)| *o = x.exp()),
            Op::Log => out.iter_mut().zip(a).for_each(|(o, &x)| *o = x.ln()),
            Op::Log1p => out.iter_mut().zip(a).for_each(|(o, &x)| *o = x.ln_1p()),
            _ => unreachable!("unary_f called with {op:?}; program.rs types every op before lowering"),
        }
    }

    /// One (f32, f32) → f32 op over slices.
    #[inline(always)]
    pub fn binary_f(op: Op, a: &[f32], b: &[f32], out: &mut [f32]) {
        let n = a.len();
        let (b, out) = (&b[..n], &mut out[..n]);
        match op {
            Op::Add => (0..n).for_each(|i| out[i] = a[i] + b[i]),
            Op::Sub => (0..n).for_each(|i| out[i] = a[i] - b[i]),
            Op::Mul => (0..n).for_each(|i| out[i] = a[i] * b[i]),
            Op::Div => (0..n).for_each(|i| out[i] = a[i] / b[i]),
            Op::Min => (0..n).for_each(|i| out[i] = nan_min(a[i], b[i])),
            Op::Max => (0..n).for_each(|i| out[i] = nan_max(a[i], b[i])),
            _ => unreachable!("binary_f called with {op:?}; program.rs types every op before lowering"),
        }
    }

    /// clip(x, lo, hi): NaN stays NaN; a NaN bound leaves that side open.
    #[inline(always)]
    pub fn clip(x: &[f32], lo: &[f32], hi: &[f32], out: &mut [f32]) {
        let n = x.len();
        let (lo, hi, out) = (&lo[..n], &hi[..n], &mut out[..n]);
        for i in 0..n {
            let v = x[i];
            let v = if v < lo[i] { lo[i] } else { v };
            out[i] = if v > hi[i] { hi[i] } else { v };
        }
    }

    /// `out[i] = a[i] cmp b[i]` as 0/1 bytes, one loop per operator (the match outside the
    /// loops, so that each vectorizes); `ne` is the element type's inequality.
    #[inline(always)]
    fn compare_each<T: PartialOrd + Copy>(c: Cmp, a: &[T], b: &[T], out: &mut [u8], ne: impl Fn(T, T) -> bool) {
        let n = a.len();
        let (b, out) = (&b[..n], &mut out[..n]);
        match c {
            Cmp::Lt => (0..n).for_each(|i| out[i] = (a[i] < b[i]) as u8),
            Cmp::Le => (0..n).for_each(|i| out[i] = (a[i] <= b[i]) as u8),
            Cmp::Gt => (0..n).for_each(|i| out[i] = (a[i] > b[i]) as u8),
            Cmp::Ge => (0..n).for_each(|i| out[i] = (a[i] >= b[i]) as u8),
            Cmp::Eq => (0..n).for_each(|i| out[i] = (a[i] == b[i]) as u8),
            Cmp::Ne => (0..n).for_each(|i| out[i] = ne(a[i], b[i]) as u8),
        }
    }

    /// Float comparison into 0/1 bytes (`!=` is false when either side is NaN).
    #[inline(always)]
    pub fn compare_f(c: Cmp, a: &[f32], b: &[f32], out: &mut [u8]) {
        compare_each(c, a, b, out, |x, y| cmp_f(Cmp::Ne, x, y));
    }

    /// Float comparison with a constant into 0/1 bytes.
    #[inline(always)]
    pub fn compare_f_const(c: Cmp, a: &[f32], k: f32, out: &mut [u8]) {
        let out = &mut out[..a.len()];
        match c {
            Cmp::Lt => out.iter_mut().zip(a).for_each(|(o, &x)| *o = (x < k) as u8),
            Cmp::Le => out.iter_mut().zip(a).for_each(|(o, &x)| *o = (x <= k) as u8),
            Cmp::Gt => out.iter_mut().zip(a).for_each(|(o, &x)| *o = (x > k) as u8),
            Cmp::Ge => out.iter_mut().zip(a).for_each(|(o, &x)| *o = (x >= k) as u8),
            Cmp::Eq => out.iter_mut().zip(a).for_each(|(o, &x)| *o = (x == k) as u8),
            Cmp::Ne => out.iter_mut().zip(a).for_each(|(o, &x)| *o = cmp_f(Cmp::Ne, x, k) as u8),
        }
    }

    /// Integer comparison into 0/1 bytes.
    #[inline(always)]
    pub fn compare_i(c: Cmp, a: &[i64], b: &[i64], out: &mut [u8]) {
        compare_each(c, a, b, out, |x, y| x != y);
    }

    /// isnan / isinf / isfinite into 0/1 bytes.
    #[inline(always)]
    pub fn classify(op: Op, a: &[f32], out: &mut [u8]) {
        let out = &mut out[..a.len()];
        match op {
            Op::IsNan => out.iter_mut().zip(a).for_each(|(o, &x)| *o = x.is_nan() as u8),
            Op::IsInf => out.iter_mut().zip(a).for_each(|(o, &x)| *o = x.is_infinite() as u8),
            Op::IsFinite => out.iter_mut().zip(a).for_each(|(o, &x)| *o = x.is_finite() as u8),
            _ => unreachable!("classify called with {op:?}; program.rs types every op before lowering"),
        }
    }

    /// and / or / not on 0/1 bytes.
    #[inline(always)]
    pub fn logic(op: Op, a: &[u8], b: &[u8], out: &mut [u8]) {
        let n = a.len();
        let out = &mut out[..n];
        match op {
            Op::And => (0..n).for_each(|i| out[i] = a[i] & b[i]),
            Op::Or => (0..n).for_each(|i| out[i] = a[i] | b[i]),
            Op::Not => (0..n).for_each(|i| out[i] = a[i] ^ 1),
            _ => unreachable!("logic called with {op:?}; program.rs types every op before lowering"),
        }
    }
}
