//! Expression trees: column references, literals, arithmetic, comparisons, logic and
//! functions. Built in code with [`col`] and [`lit`], or parsed from text by
//! [`parse_expr`](crate::parse_expr).

use std::fmt;
use std::sync::Arc;

/// A literal value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Literal {
    /// A floating-point literal (computed in f32 like every float expression).
    Float(f64),
    /// An integer literal (compared exactly with integer columns).
    Int(i64),
    /// `true` or `false`.
    Bool(bool),
}

impl From<f64> for Literal {
    fn from(v: f64) -> Self {
        Literal::Float(v)
    }
}
impl From<f32> for Literal {
    fn from(v: f32) -> Self {
        Literal::Float(v as f64)
    }
}
impl From<i64> for Literal {
    fn from(v: i64) -> Self {
        Literal::Int(v)
    }
}
impl From<i32> for Literal {
    fn from(v: i32) -> Self {
        Literal::Int(v as i64)
    }
}
impl From<bool> for Literal {
    fn from(v: bool) -> Self {
        Literal::Bool(v)
    }
}

/// A binary operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BinOp {
    /// `+`
    Add,
    /// `-`
    Sub,
    /// `*`
    Mul,
    /// `/`
    Div,
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
    /// `!=`
    Ne,
    /// `&&`
    And,
    /// `||`
    Or,
}

impl BinOp {
    /// The operator's text.
    pub fn symbol(self) -> &'static str {
        match self {
            BinOp::Add => "+",
            BinOp::Sub => "-",
            BinOp::Mul => "*",
            BinOp::Div => "/",
            BinOp::Lt => "<",
            BinOp::Le => "<=",
            BinOp::Gt => ">",
            BinOp::Ge => ">=",
            BinOp::Eq => "==",
            BinOp::Ne => "!=",
            BinOp::And => "&&",
            BinOp::Or => "||",
        }
    }

    /// True for `< <= > >= == !=`.
    pub fn is_comparison(self) -> bool {
        matches!(self, BinOp::Lt | BinOp::Le | BinOp::Gt | BinOp::Ge | BinOp::Eq | BinOp::Ne)
    }
}

/// A built-in function.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Func {
    /// `abs(x)`
    Abs,
    /// `sqrt(x)`
    Sqrt,
    /// `exp(x)`
    Exp,
    /// `log(x)`, the natural logarithm
    Log,
    /// `log1p(x)` = ln(1 + x)
    Log1p,
    /// `isnan(x)`
    IsNan,
    /// `isinf(x)`
    IsInf,
    /// `isfinite(x)`
    IsFinite,
    /// `min(a, b)`; NaN if either is NaN
    Min,
    /// `max(a, b)`; NaN if either is NaN
    Max,
    /// `clip(x, lo, hi)`; NaN stays NaN
    Clip,
}

impl Func {
    /// Every function, in a fixed order.
    pub const ALL: [Func; 11] = [
        Func::Abs,
        Func::Sqrt,
        Func::Exp,
        Func::Log,
        Func::Log1p,
        Func::IsNan,
        Func::IsInf,
        Func::IsFinite,
        Func::Min,
        Func::Max,
        Func::Clip,
    ];

    /// The function's name in the expression language.
    pub fn name(self) -> &'static str {
        match self {
            Func::Abs => "abs",
            Func::Sqrt => "sqrt",
            Func::Exp => "exp",
            Func::Log => "log",
            Func::Log1p => "log1p",
            Func::IsNan => "isnan",
            Func::IsInf => "isinf",
            Func::IsFinite => "isfinite",
            Func::Min => "min",
            Func::Max => "max",
            Func::Clip => "clip",
        }
    }

    /// Looks a function up by name.
    pub fn from_name(name: &str) -> Option<Func> {
        Func::ALL.into_iter().find(|f| f.name() == name)
    }

    /// How many arguments it takes.
    pub fn arity(self) -> usize {
        match self {
            Func::Min | Func::Max => 2,
            Func::Clip => 3,
            _ => 1,
        }
    }
}

/// The shape of an expression node.
#[derive(Debug, Clone, PartialEq)]
pub enum ExprKind {
    /// A column by name.
    Col(String),
    /// A literal.
    Lit(Literal),
    /// Unary minus.
    Neg(Box<Expr>),
    /// Logical not.
    Not(Box<Expr>),
    /// A binary operation.
    Binary(BinOp, Box<Expr>, Box<Expr>),
    /// A function call.
    Call(Func, Vec<Expr>),
}

/// An expression node, with where it came from in a parsed text (for error messages).
#[derive(Debug, Clone, PartialEq)]
pub struct Expr {
    /// What the node is.
    pub kind: ExprKind,
    /// Byte position in `source` (0 for expressions built in code).
    pub pos: usize,
    /// The text it was parsed from, if any.
    pub source: Option<Arc<str>>,
}

/// A reference to the column `name`.
pub fn col(name: impl Into<String>) -> Expr {
    Expr::new(ExprKind::Col(name.into()))
}

/// A literal: `lit(0.5)`, `lit(32)`, `lit(true)`.
pub fn lit(value: impl Into<Literal>) -> Expr {
    Expr::new(ExprKind::Lit(value.into()))
}

impl Expr {
    /// A node built in code (no source text).
    pub fn new(kind: ExprKind) -> Expr {
        Expr { kind, pos: 0, source: None }
    }

    /// The text of a float literal parsed from text, as written (`-1.50e3`): its decimal
    /// digits may say more than its f64 does (`9007199254740993.0`), which integer columns
    /// compare with exactly.
    pub(crate) fn float_literal_text(&self) -> Option<&str> {
        let (ExprKind::Lit(Literal::Float(v)), Some(src)) = (&self.kind, &self.source) else { return None };
        if !v.is_finite() {
            return None;
        }
        let text = src.get(self.pos..)?;
        let b = text.as_bytes();
        let mut i = (b.first() == Some(&b'-')) as usize;
        let digits = |mut i: usize| {
            while b.get(i).is_some_and(u8::is_ascii_digit) {
                i += 1;
            }
            i
        };
        i = digits(i);
        if b.get(i) == Some(&b'.') {
            i = digits(i + 1);
        }
        if matches!(b.get(i), Some(b'e' | b'E')) {
            let j = if matches!(b.get(i + 1), Some(b'+' | b'-')) { i + 2 } else { i + 1 };
            if b.get(j).is_some_and(u8::is_ascii_digit) {
                i = digits(j);
            }
        }
        // Only a text that is this literal (it parses to the same value).
        let t = &text[..i];
        (t.parse::<f64>().ok() == Some(*v)).then_some(t)
    }

    fn binary(self, op: BinOp, rhs: Expr) -> Expr {
        let (pos, source) = (self.pos, self.source.clone());
        Expr { kind: ExprKind::Binary(op, Box::new(self), Box::new(rhs)), pos, source }
    }

    fn call(self, func: Func, mut rest: Vec<Expr>) -> Expr {
        let (pos, source) = (self.pos, self.source.clone());
        rest.insert(0, self);
        Expr { kind: ExprKind::Call(func, rest), pos, source }
    }

    /// `self > rhs`
    pub fn gt(self, rhs: Expr) -> Expr {
        self.binary(BinOp::Gt, rhs)
    }
    /// `self >= rhs`
    pub fn ge(self, rhs: Expr) -> Expr {
        self.binary(BinOp::Ge, rhs)
    }
    /// `self < rhs`
    pub fn lt(self, rhs: Expr) -> Expr {
        self.binary(BinOp::Lt, rhs)
    }
    /// `self <= rhs`
    pub fn le(self, rhs: Expr) -> Expr {
        self.binary(BinOp::Le, rhs)
    }
    /// `self == rhs`
    pub fn equals(self, rhs: Expr) -> Expr {
        self.binary(BinOp::Eq, rhs)
    }
    /// `self != rhs`
    pub fn not_equals(self, rhs: Expr) -> Expr {
        self.binary(BinOp::Ne, rhs)
    }
    /// `self && rhs`
    pub fn and(self, rhs: Expr) -> Expr {
        self.binary(BinOp::And, rhs)
    }
    /// `self || rhs`
    pub fn or(self, rhs: Expr) -> Expr {
        self.binary(BinOp::Or, rhs)
    }
    /// `abs(self)`
    pub fn abs(self) -> Expr {
        self.call(Func::Abs, vec![])
    }
    /// `sqrt(self)`
    pub fn sqrt(self) -> Expr {
        self.call(Func::Sqrt, vec![])
    }
    /// `exp(self)`
    pub fn exp(self) -> Expr {
        self.call(Func::Exp, vec![])
    }
    /// `log(self)`
    pub fn log(self) -> Expr {
        self.call(Func::Log, vec![])
    }
    /// `log1p(self)`
    pub fn log1p(self) -> Expr {
        self.call(Func::Log1p, vec![])
    }
    /// `isnan(self)`
    pub fn is_nan(self) -> Expr {
        self.call(Func::IsNan, vec![])
    }
    /// `isinf(self)`
    pub fn is_inf(self) -> Expr {
        self.call(Func::IsInf, vec![])
    }
    /// `isfinite(self)`
    pub fn is_finite(self) -> Expr {
        self.call(Func::IsFinite, vec![])
    }
    /// `min(self, other)`
    pub fn min(self, other: Expr) -> Expr {
        self.call(Func::Min, vec![other])
    }
    /// `max(self, other)`
    pub fn max(self, other: Expr) -> Expr {
        self.call(Func::Max, vec![other])
    }
    /// `clip(self, lo, hi)`
    pub fn clip(self, lo: Expr, hi: Expr) -> Expr {
        self.call(Func::Clip, vec![lo, hi])
    }

    /// Column names this expression reads, in first-use order, without repeats.
    pub fn columns(&self) -> Vec<String> {
        let mut out = Vec::new();
        self.visit_columns(&mut |name| {
            if !out.iter().any(|n: &String| n == name) {
                out.push(name.to_string());
            }
        });
        out
    }

    fn visit_columns(&self, f: &mut dyn FnMut(&str)) {
        match &self.kind {
            ExprKind::Col(name) => f(name),
            ExprKind::Lit(_) => {}
            ExprKind::Neg(e) | ExprKind::Not(e) => e.visit_columns(f),
            ExprKind::Binary(_, a, b) => {
                a.visit_columns(f);
                b.visit_columns(f);
            }
            ExprKind::Call(_, args) => args.iter().for_each(|a| a.visit_columns(f)),
        }
    }

    /// An [`Error::Expr`](crate::Error::Expr) pointing at this node.
    pub(crate) fn error(&self, message: impl Into<String>) -> crate::Error {
        let text = self.source.as_deref().unwrap_or("").to_string();
        let position = if text.is_empty() { 0 } else { self.pos };
        let message = if text.is_empty() { format!("{} (in `{self}`)", message.into()) } else { message.into() };
        crate::Error::Expr { text, position, message }
    }
}

impl std::ops::Add for Expr {
    type Output = Expr;
    fn add(self, rhs: Expr) -> Expr {
        self.binary(BinOp::Add, rhs)
    }
}
impl std::ops::Sub for Expr {
    type Output = Expr;
    fn sub(self, rhs: Expr) -> Expr {
        self.binary(BinOp::Sub, rhs)
    }
}
impl std::ops::Mul for Expr {
    type Output = Expr;
    fn mul(self, rhs: Expr) -> Expr {
        self.binary(BinOp::Mul, rhs)
    }
}
impl std::ops::Div for Expr {
    type Output = Expr;
    fn div(self, rhs: Expr) -> Expr {
        self.binary(BinOp::Div, rhs)
    }
}
impl std::ops::Neg for Expr {
    type Output = Expr;
    fn neg(self) -> Expr {
        let (pos, source) = (self.pos, self.source.clone());
        Expr { kind: ExprKind::Neg(Box::new(self)), pos, source }
    }
}
impl std::ops::Not for Expr {
    type Output = Expr;
    fn not(self) -> Expr {
        let (pos, source) = (self.pos, self.source.clone());
        Expr { kind: ExprKind::Not(Box::new(self)), pos, source }
    }
}

/// True when `name` can be written without backticks.
pub(crate) fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !matches!(name, "and" | "or" | "not" | "true" | "false" | "inf" | "nan")
}

impl fmt::Display for Literal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Literal::Float(v) if v.is_nan() => f.write_str("nan"),
            Literal::Float(v) if v.is_infinite() => f.write_str(if v > 0.0 { "inf" } else { "-inf" }),
            // Integers in full below 1e20 (beyond i64, where integer columns compare the same
            // with any of them): the shortest form, 1.152921504606847e18 for 2^60, would read
            // back as another integer.
            Literal::Float(v) if v == v.trunc() && v.abs() < 1e20 => write!(f, "{v:.1}"),
            Literal::Float(v) => write!(f, "{v:?}"),
            Literal::Int(v) => write!(f, "{v}"),
            Literal::Bool(v) => write!(f, "{v}"),
        }
    }
}

/// Prints in the expression language, parenthesized so that it parses back to the same tree.
impl fmt::Display for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            ExprKind::Col(name) if is_identifier(name) => f.write_str(name),
            ExprKind::Col(name) => write!(f, "`{name}`"),
            ExprKind::Lit(_) if let Some(t) = self.float_literal_text() => {
                if t.starts_with('-') {
                    write!(f, "({t})")
                } else {
                    f.write_str(t)
                }
            }
            ExprKind::Lit(l) => match l {
                Literal::Float(v) if v.is_sign_negative() && !v.is_nan() => write!(f, "({l})"),
                Literal::Int(v) if *v < 0 => write!(f, "({l})"),
                _ => write!(f, "{l}"),
            },
            // `-` directly before a number literal parses as a negative literal, so a negated
            // number literal keeps its own parentheses: `(-(5))`, not `(-5)`.
            ExprKind::Neg(e) if matches!(e.kind, ExprKind::Lit(Literal::Int(_) | Literal::Float(_))) => {
                write!(f, "(-({e}))")
            }
            ExprKind::Neg(e) => write!(f, "(-{e})"),
            ExprKind::Not(e) => write!(f, "(!{e})"),
            ExprKind::Binary(op, a, b) => write!(f, "({a} {} {b})", op.symbol()),
            ExprKind::Call(func, args) => {
                write!(f, "{}(", func.name())?;
                for (i, a) in args.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{a}")?;
                }
                f.write_str(")")
            }
        }
    }
}
