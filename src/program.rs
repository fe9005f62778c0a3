//! Lowering a plan to a [`FusedProgram`]: one SSA program per query that loads only the
//! referenced columns, ANDs every filter into one mask, and feeds every aggregate and
//! output column in the same pass.

use std::collections::HashMap;
use std::fmt::Write as _;

use crate::dtype::DType;
use crate::error::Result;
use crate::expr::{BinOp, Expr, ExprKind, Func, Literal};
use crate::ops::{Cmp, Op, VType};
use crate::source::Dataset;

/// Index of a register (the result of `instrs[reg]`).
pub type Reg = usize;

/// A constant value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Value {
    /// f32 constant.
    F(f32),
    /// integer constant.
    I(i64),
    /// boolean constant.
    B(bool),
}

/// One SSA instruction.
#[derive(Debug, Clone, PartialEq)]
pub enum Instr {
    /// Load input slot `slot` converted to `ty` (floats to f32, integers to i64, bool).
    Load {
        /// Input slot.
        slot: usize,
        /// Register type to convert to.
        ty: VType,
    },
    /// The order key of f64 input slot `slot` (`f64_order_key`): an integer register in which
    /// the column's values compare exactly as the f64 values do, so that comparisons of f64
    /// columns need no f32 rounding.
    LoadKey {
        /// Input slot: an f64 column, or an f32/f16/bf16 one widened to f64 (exactly).
        slot: usize,
    },
    /// A constant.
    Const(Value),
    /// An op over earlier registers (`args[..arity]`).
    Op {
        /// The operation.
        op: Op,
        /// Argument registers (the first `arity` are used).
        args: [Reg; 3],
    },
}

/// What an aggregate or output reads: a raw input column, or a computed f32 register.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Source {
    /// Input slot, read in its own dtype (integers keep exact min/max).
    Slot(usize),
    /// A register (f32, i64 or bool).
    Reg(Reg),
}

/// A histogram aggregate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HistSpec {
    /// What to bin.
    pub source: Source,
    /// Lower edge.
    pub lo: f64,
    /// Upper edge.
    pub hi: f64,
    /// Number of bins (≥ 1).
    pub bins: u32,
}

/// A fitted scaling applied in f64 before the cast.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Scale {
    /// (x - mean) / std; a zero std gives 0.
    Standardize {
        /// Fitted mean.
        mean: f64,
        /// Fitted population standard deviation.
        std: f64,
    },
    /// (x - min) / (max - min); max == min gives 0.
    MinMax {
        /// Fitted minimum.
        min: f64,
        /// Fitted maximum.
        max: f64,
    },
}

/// One output column of a transform.
#[derive(Debug, Clone, PartialEq)]
pub struct OutSpec {
    /// Output name.
    pub name: String,
    /// Where its values come from.
    pub source: Source,
    /// Optional fitted scaling.
    pub scale: Option<Scale>,
    /// Replace NaN by this value (float outputs only).
    pub fill_nan: Option<f64>,
    /// Output dtype.
    pub dtype: DType,
}

/// The fused program of one query.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct FusedProgram {
    /// Dataset column index of each input slot.
    pub inputs: Vec<usize>,
    /// SSA instructions; register `i` holds the result of `instrs[i]`.
    pub instrs: Vec<Instr>,
    /// The AND of every filter, if any.
    pub mask: Option<Reg>,
    /// Input slot of the group-by key.
    pub key: Option<usize>,
    /// Stats aggregates (per group when `key` is set).
    pub stats: Vec<Source>,
    /// Whether stats must also track the finite min/max (histogram ranges).
    pub finite_range: bool,
    /// Histogram aggregates.
    pub hists: Vec<HistSpec>,
    /// Output columns (a transform).
    pub outputs: Vec<OutSpec>,
}

impl FusedProgram {
    /// Type of a register.
    pub fn reg_type(&self, r: Reg) -> VType {
        match &self.instrs[r] {
            Instr::Load { ty, .. } => *ty,
            Instr::LoadKey { .. } => VType::Int,
            Instr::Const(Value::F(_)) => VType::F32,
            Instr::Const(Value::I(_)) => VType::Int,
            Instr::Const(Value::B(_)) => VType::Bool,
            Instr::Op { op, .. } => op.signature().1,
        }
    }

    /// A text form of the program, used by `explain()` and as the cache key of compiled kernels.
    pub fn describe(&self, ds: &Dataset) -> String {
        let mut s = String::new();
        for (i, &c) in self.inputs.iter().enumerate() {
            let col = &ds.columns()[c];
            let _ = writeln!(s, "  in{i} = column `{}` ({}, stride {} B)", col.name, col.dtype, col.stride);
        }
        for (r, ins) in self.instrs.iter().enumerate() {
            let _ = match ins {
                Instr::Load { slot, ty } => writeln!(s, "  r{r}: {ty:?} = load in{slot}"),
                Instr::LoadKey { slot } => writeln!(s, "  r{r}: Int = order key of in{slot}"),
                Instr::Const(v) => writeln!(s, "  r{r}: {:?} = const {v:?}", self.reg_type(r)),
                Instr::Op { op, args } => {
                    let n = op.signature().0.len();
                    let a: Vec<String> = args[..n].iter().map(|a| format!("r{a}")).collect();
                    writeln!(s, "  r{r}: {:?} = {op:?}({})", self.reg_type(r), a.join(", "))
                }
            };
        }
        if let Some(m) = self.mask {
            let _ = writeln!(s, "  mask = r{m}");
        }
        if let Some(k) = self.key {
            let _ = writeln!(s, "  group by in{k}");
        }
        for st in &self.stats {
            let _ = writeln!(s, "  stats({})", source_text(st));
        }
        for h in &self.hists {
            let _ = writeln!(s, "  hist({}, lo={}, hi={}, bins={})", source_text(&h.source), h.lo, h.hi, h.bins);
        }
        for o in &self.outputs {
            let _ =
                writeln!(s, "  out `{}` = {} scale={:?} fill_nan={:?} as {}", o.name, source_text(&o.source), o.scale, o.fill_nan, o.dtype);
        }
        s
    }
}

fn source_text(s: &Source) -> String {
    match s {
        Source::Slot(i) => format!("in{i}"),
        Source::Reg(r) => format!("r{r}"),
    }
}

/// Builds a [`FusedProgram`] from typed expressions, sharing loads and constants.
pub struct Builder<'a> {
    ds: &'a Dataset,
    /// The program being built.
    pub prog: FusedProgram,
    slots: HashMap<usize, usize>,
    loads: HashMap<(usize, VType), Reg>,
    /// Columns defined by `with` expressions, visible to later expressions.
    named: HashMap<String, Reg>,
}

impl<'a> Builder<'a> {
    /// A builder over a dataset.
    pub fn new(ds: &'a Dataset) -> Builder<'a> {
        Builder { ds, prog: FusedProgram::default(), slots: HashMap::new(), loads: HashMap::new(), named: HashMap::new() }
    }

    /// The input slot of a dataset column (added on first use).
    pub fn slot(&mut self, col: usize) -> usize {
        *self.slots.entry(col).or_insert_with(|| {
            self.prog.inputs.push(col);
            self.prog.inputs.len() - 1
        })
    }

    /// The input slot of a column by name.
    pub fn slot_by_name(&mut self, name: &str) -> Result<usize> {
        let c = self.ds.column_index(name)?;
        Ok(self.slot(c))
    }

    fn push(&mut self, ins: Instr) -> Reg {
        if let Instr::Const(v) = &ins
            && let Some(r) = self.prog.instrs.iter().position(|i| matches!(i, Instr::Const(w) if w == v && !is_nan_value(v)))
        {
            return r;
        }
        self.prog.instrs.push(ins);
        self.prog.instrs.len() - 1
    }

    /// A constant register.
    pub fn constant(&mut self, v: Value) -> Reg {
        self.push(Instr::Const(v))
    }

    fn op(&mut self, op: Op, args: &[Reg]) -> Reg {
        let mut a = [0; 3];
        a[..args.len()].copy_from_slice(args);
        self.push(Instr::Op { op, args: a })
    }

    /// Makes `name` refer to register `r` in later expressions (a `with` column).
    pub fn define(&mut self, name: &str, r: Reg) {
        self.named.insert(name.to_string(), r);
    }

    /// Loads a dataset column in its natural register type.
    pub fn load_column(&mut self, col: usize) -> Reg {
        let ty = match self.ds.columns()[col].dtype {
            d if d.is_float() => VType::F32,
            DType::Bool => VType::Bool,
            _ => VType::Int,
        };
        let slot = self.slot(col);
        if let Some(&r) = self.loads.get(&(slot, ty)) {
            return r;
        }
        let r = self.push(Instr::Load { slot, ty });
        self.loads.insert((slot, ty), r);
        r
    }

    /// Converts a numeric register to f32.
    pub fn to_f32(&mut self, r: Reg, e: &Expr) -> Result<Reg> {
        match self.prog.reg_type(r) {
            VType::F32 => Ok(r),
            // A constant is converted here (the same rounding as IntToF), so that
            // `column cmp literal` stays a comparison with a constant.
            VType::Int => match self.prog.instrs[r] {
                Instr::Const(Value::I(v)) => Ok(self.constant(Value::F(v as f32))),
                _ => Ok(self.op(Op::IntToF, &[r])),
            },
            VType::Bool => Err(e.error("expected a number, found a boolean")),
        }
    }

    /// An f32 op on registers converted to f32.
    pub fn float_op(&mut self, op: Op, args: &[Reg], e: &Expr) -> Result<Reg> {
        let mut a = Vec::with_capacity(args.len());
        for &r in args {
            a.push(self.to_f32(r, e)?);
        }
        Ok(self.op(op, &a))
    }

    /// Lowers a typed expression; returns its register.
    pub fn expr(&mut self, e: &Expr) -> Result<Reg> {
        match &e.kind {
            ExprKind::Col(name) => {
                if let Some(&r) = self.named.get(name) {
                    return Ok(r);
                }
                let c = self.ds.column_index(name).map_err(|err| e.error(err.to_string()))?;
                Ok(self.load_column(c))
            }
            ExprKind::Lit(Literal::Float(v)) => Ok(self.constant(Value::F(*v as f32))),
            ExprKind::Lit(Literal::Int(v)) => Ok(self.constant(Value::I(*v))),
            ExprKind::Lit(Literal::Bool(v)) => Ok(self.constant(Value::B(*v))),
            ExprKind::Neg(a) => {
                // `-(5)` is the integer -5, so it still compares exactly with integer columns.
                if let ExprKind::Lit(Literal::Int(v)) = a.kind
                    && let Some(neg) = v.checked_neg()
                {
                    return Ok(self.constant(Value::I(neg)));
                }
                let r = self.expr(a)?;
                self.float_op(Op::Neg, &[r], a)
            }
            ExprKind::Not(a) => {
                let r = self.expr(a)?;
                self.expect_bool(r, a, "`!` needs a boolean")?;
                Ok(self.op(Op::Not, &[r]))
            }
            ExprKind::Binary(op, a, b) => self.binary(*op, a, b, e),
            ExprKind::Call(f, args) => {
                if args.len() != f.arity() {
                    return Err(e.error(format!("{} takes {} arguments, got {}", f.name(), f.arity(), args.len())));
                }
                let mut regs = Vec::with_capacity(args.len());
                for a in args {
                    let r = self.expr(a)?;
                    if self.prog.reg_type(r) == VType::Bool {
                        return Err(a.error(format!("{} needs a number, found a boolean", f.name())));
                    }
                    regs.push(r);
                }
                let op = match f {
                    Func::Abs => Op::Abs,
                    Func::Sqrt => Op::Sqrt,
                    Func::Exp => Op::Exp,
                    Func::Log => Op::Log,
                    Func::Log1p => Op::Log1p,
                    Func::IsNan => Op::IsNan,
                    Func::IsInf => Op::IsInf,
                    Func::IsFinite => Op::IsFinite,
                    Func::Min => Op::Min,
                    Func::Max => Op::Max,
                    Func::Clip => Op::Clip,
                };
                self.float_op(op, &regs, e)
            }
        }
    }

    fn expect_bool(&self, r: Reg, e: &Expr, msg: &str) -> Result<()> {
        if self.prog.reg_type(r) == VType::Bool { Ok(()) } else { Err(e.error(msg)) }
    }

    fn binary(&mut self, op: BinOp, a: &Expr, b: &Expr, e: &Expr) -> Result<Reg> {
        if matches!(op, BinOp::And | BinOp::Or) {
            let (ra, rb) = (self.expr(a)?, self.expr(b)?);
            self.expect_bool(ra, a, "`&&`/`||` need booleans on both sides")?;
            self.expect_bool(rb, b, "`&&`/`||` need booleans on both sides")?;
            return Ok(self.op(if op == BinOp::And { Op::And } else { Op::Or }, &[ra, rb]));
        }
        if !op.is_comparison() {
            let ra = self.expr(a)?;
            let ra = self.to_f32(ra, a)?;
            let rb = self.expr(b)?;
            let rb = self.to_f32(rb, b)?;
            let o = match op {
                BinOp::Add => Op::Add,
                BinOp::Sub => Op::Sub,
                BinOp::Mul => Op::Mul,
                _ => Op::Div,
            };
            return self.float_op(o, &[ra, rb], e);
        }
        let cmp = match op {
            BinOp::Lt => Cmp::Lt,
            BinOp::Le => Cmp::Le,
            BinOp::Gt => Cmp::Gt,
            BinOp::Ge => Cmp::Ge,
            BinOp::Eq => Cmp::Eq,
            _ => Cmp::Ne,
        };
        if let Some(r) = self.f64_comparison(cmp, a, b) {
            return Ok(r);
        }
        let (ra, rb) = (self.expr(a)?, self.expr(b)?);
        let (ta, tb) = (self.prog.reg_type(ra), self.prog.reg_type(rb));
        match (ta, tb) {
            (VType::Int, VType::Int) => Ok(self.op(Op::CmpI(cmp), &[ra, rb])),
            (VType::Bool, VType::Bool) if matches!(cmp, Cmp::Eq | Cmp::Ne) => {
                let (ia, ib) = (self.op(Op::BoolToI, &[ra]), self.op(Op::BoolToI, &[rb]));
                Ok(self.op(Op::CmpI(cmp), &[ia, ib]))
            }
            (VType::Bool, _) | (_, VType::Bool) => Err(e.error("cannot compare a boolean with a number")),
            (VType::Int, VType::F32) if let Some(c) = exact_real(b) => Ok(self.int_vs_real(ra, cmp, c)),
            (VType::F32, VType::Int) if let Some(c) = exact_real(a) => Ok(self.int_vs_real(rb, cmp.flip(), c)),
            _ => self.float_op(Op::CmpF(cmp), &[ra, rb], e),
        }
    }

    /// Dataset column `e` names when it is an f64 column (not a `with` column).
    fn f64_column(&self, e: &Expr) -> Option<usize> {
        self.float_column(e).filter(|&c| self.ds.columns()[c].dtype == DType::F64)
    }

    /// Dataset column `e` names when it is a float column of any width (not a `with` one).
    fn float_column(&self, e: &Expr) -> Option<usize> {
        let ExprKind::Col(name) = &e.kind else { return None };
        if self.named.contains_key(name) {
            return None;
        }
        let c = self.ds.column_index(name).ok()?;
        self.ds.columns()[c].dtype.is_float().then_some(c)
    }

    /// The order key of a float column, as an f64 (one load per column).
    fn load_key(&mut self, col: usize) -> Reg {
        let slot = self.slot(col);
        if let Some(r) = self.prog.instrs.iter().position(|i| *i == Instr::LoadKey { slot }) {
            return r;
        }
        self.push(Instr::LoadKey { slot })
    }

    /// `key cmp k` for the order key of a column, false for NaN values: their keys lie
    /// outside those of -inf..=inf, which bound a comparison where it could reach them.
    fn key_cmp(&mut self, key: Reg, cmp: Cmp, k: Reg) -> Reg {
        let c = self.op(Op::CmpI(cmp), &[key, k]);
        let (lo, hi) = self.key_bounds(key);
        match cmp {
            Cmp::Lt | Cmp::Le => self.op(Op::And, &[c, lo]),
            Cmp::Gt | Cmp::Ge => self.op(Op::And, &[c, hi]),
            Cmp::Eq => c,
            Cmp::Ne => {
                let not_nan = self.op(Op::And, &[lo, hi]);
                self.op(Op::And, &[c, not_nan])
            }
        }
    }

    /// Whether an order key is at least -inf's and at most +inf's: both, for a value that is
    /// not NaN.
    fn key_bounds(&mut self, key: Reg) -> (Reg, Reg) {
        let above_nan = self.constant(Value::I(f64_order_key(f64::NEG_INFINITY)));
        let below_nan = self.constant(Value::I(f64_order_key(f64::INFINITY)));
        (self.op(Op::CmpI(Cmp::Ge), &[key, above_nan]), self.op(Op::CmpI(Cmp::Le), &[key, below_nan]))
    }

    /// A comparison of an f64 column with a literal or another f64 column, exactly (as
    /// numpy compares f64 arrays): on the columns' order keys rather than on f32 values
    /// (`ts > 1700000000.5` must not round the column to f32), and so does an f64 column
    /// with one of f32, f16 or bf16 values (`d == f` was true for 1.00000001 and 1.0, both
    /// rounded to f32). `None`: not such a comparison.
    fn f64_comparison(&mut self, cmp: Cmp, a: &Expr, b: &Expr) -> Option<Reg> {
        let (ca, cb) = (self.f64_column(a), self.f64_column(b));
        let (fa, fb) = (self.float_column(a), self.float_column(b));
        let pair = match (ca, cb) {
            (Some(ca), Some(cb)) => Some((ca, cb)),
            (Some(ca), None) => fb.map(|cb| (ca, cb)),
            (None, Some(cb)) => fa.map(|ca| (ca, cb)),
            (None, None) => None,
        };
        if let Some((ca, cb)) = pair {
            let (ka, kb) = (self.load_key(ca), self.load_key(cb));
            // `key_cmp` keeps NaN values of a out (those of b too but where they could pass).
            let c = self.key_cmp(ka, cmp, kb);
            let (lo, hi) = self.key_bounds(kb);
            let b_ok = self.op(Op::And, &[lo, hi]);
            return Some(self.op(Op::And, &[c, b_ok]));
        }
        let (col, cmp, lit) = match (ca, cb) {
            (Some(c), None) => (c, cmp, literal_value(b)?),
            (None, Some(c)) => (c, cmp.flip(), literal_value(a)?),
            _ => return None,
        };
        // `x cmp v` as `x cmp' k` with k an f64: an integer v that no f64 equals lies
        // strictly between two f64s, lo < v < hi.
        let (cmp, k) = match lit {
            Exact::F(v) if v.is_nan() => return Some(self.constant(Value::B(false))),
            Exact::F(v) => (cmp, v),
            Exact::I(v) if (v as f64) as i128 == v as i128 && (v as f64) != 9_223_372_036_854_775_808.0 => (cmp, v as f64),
            Exact::I(v) => {
                let d = v as f64;
                let (lo, hi) = if d as i128 > v as i128 { (d.next_down(), d) } else { (d, d.next_up()) };
                match cmp {
                    Cmp::Lt | Cmp::Le => (Cmp::Le, lo),
                    Cmp::Gt | Cmp::Ge => (Cmp::Ge, hi),
                    Cmp::Eq => return Some(self.constant(Value::B(false))),
                    // Every value but NaN.
                    Cmp::Ne => (Cmp::Le, f64::INFINITY),
                }
            }
        };
        let key = self.load_key(col);
        let kr = self.constant(Value::I(f64_order_key(k)));
        Some(self.key_cmp(key, cmp, kr))
    }

    /// `x cmp c` for an integer register and a real literal, exactly, as an integer comparison.
    fn int_vs_real(&mut self, x: Reg, cmp: Cmp, c: ExactReal) -> Reg {
        let ExactReal::Finite { floor, ceil } = c else {
            return self.constant(Value::B(false));
        };
        // `x < k` etc. with k an integer that may fall outside i64.
        let (cmp, k) = match cmp {
            Cmp::Lt | Cmp::Ge => (cmp, ceil),
            Cmp::Le | Cmp::Gt => (cmp, floor),
            Cmp::Eq | Cmp::Ne if floor != ceil => return self.constant(Value::B(cmp == Cmp::Ne)),
            Cmp::Eq | Cmp::Ne => (cmp, floor),
        };
        let Ok(k) = i64::try_from(k) else {
            return self.constant(Value::B(if k > 0 {
                matches!(cmp, Cmp::Lt | Cmp::Le | Cmp::Ne)
            } else {
                matches!(cmp, Cmp::Gt | Cmp::Ge | Cmp::Ne)
            }));
        };
        let kr = self.constant(Value::I(k));
        self.op(Op::CmpI(cmp), &[x, kr])
    }

    /// Adds a filter: ANDs it into the mask.
    pub fn filter(&mut self, e: &Expr) -> Result<()> {
        let r = self.expr(e)?;
        self.expect_bool(r, e, "a filter must be a boolean expression (e.g. `x > 0`)")?;
        self.prog.mask = Some(match self.prog.mask {
            None => r,
            Some(m) => self.op(Op::And, &[m, r]),
        });
        Ok(())
    }
}

fn is_nan_value(v: &Value) -> bool {
    matches!(v, Value::F(f) if f.is_nan())
}

/// A literal's exact value.
enum Exact {
    F(f64),
    I(i64),
}

/// The value of a numeric literal, also under unary minus.
fn literal_value(e: &Expr) -> Option<Exact> {
    match &e.kind {
        ExprKind::Lit(Literal::Float(v)) => Some(Exact::F(*v)),
        ExprKind::Lit(Literal::Int(v)) => Some(Exact::I(*v)),
        ExprKind::Neg(inner) => match literal_value(inner)? {
            Exact::F(v) => Some(Exact::F(-v)),
            Exact::I(v) => Some(v.checked_neg().map_or(Exact::F(-(v as f64)), Exact::I)),
        },
        _ => None,
    }
}

/// An i64 in which f64 values compare as the floats do (±0 equal, -inf lowest, +inf
/// highest; NaN keys lie outside those of -inf..=inf): the bits, the magnitude bits
/// reversed for negative values, and -0 made 0.
pub(crate) fn f64_order_key(x: f64) -> i64 {
    let b = x.to_bits() as i64;
    if b >= 0 {
        b
    } else if b == i64::MIN {
        0
    } else {
        b ^ i64::MAX
    }
}

/// A real literal's exact value, as integers compare with it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum ExactReal {
    /// NaN: no comparison holds.
    Nan,
    /// Finite or infinite: the integers just below and above (equal for an integer),
    /// saturated far beyond i64 for large values and ±inf.
    Finite { floor: i128, ceil: i128 },
}

/// The exact value of a float literal, also under unary minus: from the text it was parsed
/// from, whose decimal digits an f64 may not hold (`id == 9007199254740993.0` rounded the
/// literal to 2^53 and matched the wrong rows), else from its f64.
pub(crate) fn exact_real(e: &Expr) -> Option<ExactReal> {
    let Exact::F(v) = literal_value(e)? else { return None };
    if v.is_nan() {
        return Some(ExactReal::Nan);
    }
    let from_f64 = ExactReal::Finite { floor: v.floor() as i128, ceil: v.ceil() as i128 };
    // The literal's own node: `-1.5` parses to one literal, `-(1.5)` to a negation of one.
    let (node, negate) = match &e.kind {
        ExprKind::Neg(inner) => (&**inner, true),
        _ => (e, false),
    };
    let Some(exact) = node.float_literal_text().and_then(decimal_floor_ceil) else { return Some(from_f64) };
    Some(if negate { ExactReal::Finite { floor: -exact.1, ceil: -exact.0 } } else { ExactReal::Finite { floor: exact.0, ceil: exact.1 } })
}

/// The floor and ceiling of a decimal literal's text (`[-]digits[.digits][(e|E)[+-]digits]`,
/// `Expr::float_literal_text`), exactly; magnitudes beyond 10^30 saturate there.
fn decimal_floor_ceil(text: &str) -> Option<(i128, i128)> {
    const LIMIT: i128 = 1_000_000_000_000_000_000_000_000_000_000;
    let (neg, t) = text.strip_prefix('-').map_or((false, text), |t| (true, t));
    let (mantissa, exp) = t.split_once(['e', 'E']).unwrap_or((t, "0"));
    // An exponent too long for i64 saturates (any beyond ±2^40 gives the same answer).
    let exp = exp.parse::<i64>().unwrap_or(if exp.starts_with('-') { i64::MIN } else { i64::MAX }).clamp(-(1 << 40), 1 << 40);
    let (whole, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let digits: Vec<u8> = whole.bytes().chain(frac.bytes()).map(|b| b.wrapping_sub(b'0')).collect();
    if digits.is_empty() || digits.iter().any(|&d| d > 9) {
        return None;
    }
    // value = digits * 10^(exp - frac): the integer part is the digits before `point`.
    let point = whole.len() as i64 + exp;
    let split = point.clamp(0, digits.len() as i64) as usize;
    let (int_digits, rest) = digits.split_at(split);
    let zeros = (point - split as i64).clamp(0, 40) as usize;
    let mut int: i128 = 0;
    for d in int_digits.iter().copied().chain(std::iter::repeat_n(0, zeros)) {
        int = (int * 10 + d as i128).min(LIMIT);
    }
    let fraction = rest.iter().any(|&d| d != 0);
    let (floor, ceil) = (int, int + fraction as i128);
    Some(if neg { (-ceil, -floor) } else { (floor, ceil) })
}
