//! The expression-language parser: text to [`Expr`].
//!
//! A hand-written lexer produces one token at a time (so the first error in the text is the one
//! reported) and a precedence-climbing parser builds the tree.

use std::sync::Arc;

use crate::expr::{BinOp, Expr, ExprKind, Func, Literal};
use crate::{Error, Result};

/// The greatest depth (longest root-to-leaf path, in nodes) of a tree [`parse_expr`] returns.
///
/// This keeps every recursive walk over a parsed tree (including dropping it) shallow, however
/// the depth arises: nesting, runs of unary operators, or long chains like `a + a + ... + a`.
pub const MAX_DEPTH: usize = 256;

/// The deepest nesting of parentheses and function-call arguments [`parse_expr`] accepts.
///
/// It bounds the parser's recursion, so that an input like 100 000 `(` is an error instead of a
/// stack overflow. It is twice [`MAX_DEPTH`] so that the fully parenthesized text that `Display`
/// prints for any tree `parse_expr` accepts (at most one more level of parentheses than the tree
/// has nodes) parses back.
pub const MAX_NESTING: usize = 2 * MAX_DEPTH;

/// Parses an expression.
///
/// Grammar (whitespace between tokens is ignored):
///
/// ```text
/// expr    = and_e { ( "||" | "or" ) and_e } ;
/// and_e   = not_e { ( "&&" | "and" ) not_e } ;
/// not_e   = ( "!" | "not" ) not_e | cmp ;
/// cmp     = sum [ ( "<" | "<=" | ">" | ">=" | "==" | "!=" ) sum ] ;   (* no chains *)
/// sum     = product { ( "+" | "-" ) product } ;
/// product = unary { ( "*" | "/" ) unary } ;
/// unary   = "-" unary | primary ;
/// primary = number | "true" | "false" | column
///         | ident "(" [ expr { "," expr } ] ")"                    (* function call *)
///         | "(" expr ")" ;
/// column  = ident | "`" char-but-backtick { char-but-backtick } "`" ;
/// ident   = ( letter | "_" ) { letter | digit | "_" } ;             (* ASCII; not a keyword *)
/// number  = digits                                                  (* Literal::Int *)
///         | ( digits "." [ digits ] | "." digits ) [ exponent ]     (* Literal::Float *)
///         | digits exponent | "inf" | "nan" ;
/// exponent = ( "e" | "E" ) [ "+" | "-" ] digits ;
/// ```
///
/// Binary operators are left-associative except comparisons, which do not chain (`a < b < c`
/// is an error; write `a < b && b < c`). `!`/`not` binds looser than comparisons, so `!x > 3`
/// is `!(x > 3)`; where an operand of arithmetic or of a comparison is negated it needs
/// parentheses: `a == (!b)`. The keywords `and or not true false inf nan` (lowercase only) are
/// reserved; a column with such a name is written in backticks. An identifier directly followed by
/// `(` is a call of a [`Func`] (with its exact arity); otherwise it names a column, so a column may
/// be called `abs`. `-` directly applied to a number literal gives a negative literal
/// (`-5` is `Lit(Int(-5))`, which is how `-9223372036854775808` fits in an `i64`); applied to
/// anything else, including a parenthesized literal, it gives [`ExprKind::Neg`].
///
/// Every node's `pos` is the byte offset of the token that makes it: the column name (or its
/// opening backtick), the literal (for a negative literal, its `-`), the unary operator, the binary
/// operator, or the function name. Parentheses make no node of their own. Every node's `source` is
/// the same `Arc` holding `text`.
///
/// Trees deeper than 256 levels and parentheses nested deeper than 512 are errors.
///
/// # Errors
///
/// [`Error::Expr`] with the byte position of the offending token and what is wrong there.
pub fn parse_expr(text: &str) -> Result<Expr> {
    parse(text).map_err(|e| *e)
}

/// Internal results box the error, which keeps the parser's recursive stack frames small.
type PResult<T> = std::result::Result<T, Box<Error>>;

fn parse(text: &str) -> PResult<Expr> {
    let mut parser = Parser::new(text)?;
    if parser.tok.tok == Tok::End {
        return Err(parser.error(0, "empty expression"));
    }
    let node = parser.expr(0)?;
    let t = parser.tok;
    match t.tok {
        Tok::End => Ok(*node.expr),
        Tok::RParen => Err(parser.error(t.pos, "unmatched `)`")),
        _ => Err(parser.error(t.pos, format!("unexpected {}; expected an operator or the end of the expression", parser.describe(t)))),
    }
}

/// A token's kind.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Tok<'a> {
    /// A bare identifier that is not a keyword.
    Ident(&'a str),
    /// The text between backticks.
    Quoted(&'a str),
    /// An integer literal without sign (a `-` is its own token); up to `u64::MAX` so that
    /// `-9223372036854775808` can be folded before the range check.
    Int(u64),
    /// A float literal, including `inf` and `nan`.
    Float(f64),
    Bool(bool),
    /// `&&` or `and`.
    And,
    /// `||` or `or`.
    Or,
    /// `!` or `not`.
    Not,
    Plus,
    Minus,
    Star,
    Slash,
    Cmp(BinOp),
    LParen,
    RParen,
    Comma,
    End,
}

/// A token and its byte span in the text.
#[derive(Debug, Clone, Copy)]
struct Token<'a> {
    tok: Tok<'a>,
    pos: usize,
    end: usize,
}

fn expr_error(text: &str, position: usize, message: impl Into<String>) -> Box<Error> {
    Box::new(Error::Expr { text: text.to_string(), position, message: message.into() })
}

fn is_ident_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// Splits the text into tokens, on demand.
struct Lexer<'a> {
    text: &'a str,
    /// Byte offset of the next unread byte; always on a char boundary.
    at: usize,
}

impl<'a> Lexer<'a> {
    fn peek_byte(&self, offset: usize) -> Option<u8> {
        self.text.as_bytes().get(self.at + offset).copied()
    }

    fn token(&mut self, tok: Tok<'a>, pos: usize, len: usize) -> Token<'a> {
        self.at = pos + len;
        Token { tok, pos, end: self.at }
    }

    fn next(&mut self) -> PResult<Token<'a>> {
        while self.peek_byte(0).is_some_and(|b| b.is_ascii_whitespace()) {
            self.at += 1;
        }
        let pos = self.at;
        let Some(b) = self.peek_byte(0) else {
            return Ok(Token { tok: Tok::End, pos, end: pos });
        };
        let second = self.peek_byte(1);
        let (tok, len) = match (b, second) {
            (b'+', _) => (Tok::Plus, 1),
            (b'-', _) => (Tok::Minus, 1),
            (b'*', _) => (Tok::Star, 1),
            (b'/', _) => (Tok::Slash, 1),
            (b'(', _) => (Tok::LParen, 1),
            (b')', _) => (Tok::RParen, 1),
            (b',', _) => (Tok::Comma, 1),
            (b'<', Some(b'=')) => (Tok::Cmp(BinOp::Le), 2),
            (b'<', _) => (Tok::Cmp(BinOp::Lt), 1),
            (b'>', Some(b'=')) => (Tok::Cmp(BinOp::Ge), 2),
            (b'>', _) => (Tok::Cmp(BinOp::Gt), 1),
            (b'=', Some(b'=')) => (Tok::Cmp(BinOp::Eq), 2),
            (b'!', Some(b'=')) => (Tok::Cmp(BinOp::Ne), 2),
            (b'!', _) => (Tok::Not, 1),
            (b'&', Some(b'&')) => (Tok::And, 2),
            (b'|', Some(b'|')) => (Tok::Or, 2),
            (b'=', _) => return Err(expr_error(self.text, pos, "`=` is not an operator; use == to compare")),
            (b'&', _) => return Err(expr_error(self.text, pos, "`&` is not an operator; use && (or `and`)")),
            (b'|', _) => return Err(expr_error(self.text, pos, "`|` is not an operator; use || (or `or`)")),
            (b'`', _) => return self.quoted(pos),
            (b'0'..=b'9', _) => return self.number(pos),
            (b'.', Some(b'0'..=b'9')) => return self.number(pos),
            (b, _) if b.is_ascii_alphabetic() || b == b'_' => return Ok(self.word(pos)),
            _ => {
                let c = self.text.get(pos..).and_then(|s| s.chars().next()).unwrap_or('?');
                let hint = if c.is_alphabetic() { "; write column names outside [A-Za-z0-9_] in backticks" } else { "" };
                return Err(expr_error(self.text, pos, format!("unexpected character `{c}`{hint}")));
            }
        };
        Ok(self.token(tok, pos, len))
    }

    /// A backticked column name starting at `pos`.
    fn quoted(&mut self, pos: usize) -> PResult<Token<'a>> {
        let body_start = pos + 1;
        let rest = self.text.get(body_start..).unwrap_or("");
        let Some(len) = rest.find('`') else {
            return Err(expr_error(self.text, pos, "unterminated backtick: a column name in backticks needs a closing `"));
        };
        if len == 0 {
            return Err(expr_error(self.text, pos, "empty column name in backticks"));
        }
        // `len` is the byte offset of the (ASCII) closing backtick: a char boundary in `rest`.
        Ok(self.token(Tok::Quoted(&rest[..len]), pos, len + 2))
    }

    /// An identifier or keyword starting at `pos`.
    fn word(&mut self, pos: usize) -> Token<'a> {
        // `pos` < len: the caller saw a letter there.
        let bytes = &self.text.as_bytes()[pos..];
        let len = bytes.iter().position(|&b| !is_ident_byte(b)).unwrap_or(bytes.len());
        // The word is ASCII, so `pos + len` is a char boundary.
        let word = &self.text[pos..pos + len];
        let tok = match word {
            "and" => Tok::And,
            "or" => Tok::Or,
            "not" => Tok::Not,
            "true" => Tok::Bool(true),
            "false" => Tok::Bool(false),
            "inf" => Tok::Float(f64::INFINITY),
            "nan" => Tok::Float(f64::NAN),
            _ => Tok::Ident(word),
        };
        self.token(tok, pos, len)
    }

    /// A number literal starting at `pos` (a digit, or `.` followed by a digit).
    fn number(&mut self, pos: usize) -> PResult<Token<'a>> {
        let bytes = self.text.as_bytes();
        let digits = |mut i: usize| {
            while bytes.get(i).is_some_and(u8::is_ascii_digit) {
                i += 1;
            }
            i
        };
        let mut end = digits(pos);
        let mut is_float = false;
        if bytes.get(end) == Some(&b'.') {
            is_float = true;
            end = digits(end + 1);
        }
        if matches!(bytes.get(end), Some(b'e' | b'E')) {
            let mut i = end + 1;
            if matches!(bytes.get(i), Some(b'+' | b'-')) {
                i += 1;
            }
            if bytes.get(i).is_some_and(u8::is_ascii_digit) {
                is_float = true;
                end = digits(i);
            }
        }
        if bytes.get(end).is_some_and(|&b| is_ident_byte(b) || b == b'.') {
            // `end` < len here, so `bytes[end..]` is in range.
            let bad_end = bytes[end..].iter().position(|&b| !(is_ident_byte(b) || b == b'.')).map_or(bytes.len(), |n| end + n);
            // Everything in pos..bad_end is ASCII, so the slice is on char boundaries.
            return Err(expr_error(self.text, pos, format!("malformed number `{}`", &self.text[pos..bad_end])));
        }
        // ASCII digits, `.`, `e`, sign: on char boundaries.
        let literal = &self.text[pos..end];
        let tok = if is_float {
            match literal.parse::<f64>() {
                Ok(v) if v.is_finite() => Tok::Float(v),
                Ok(_) => {
                    return Err(expr_error(self.text, pos, "float literal out of range (write `inf` for infinity)"));
                }
                Err(_) => return Err(expr_error(self.text, pos, format!("malformed number `{literal}`"))),
            }
        } else {
            match literal.parse::<u64>() {
                Ok(v) => Tok::Int(v),
                Err(_) => return Err(expr_error(self.text, pos, "integer literal out of range")),
            }
        };
        Ok(self.token(tok, pos, end - pos))
    }
}

/// A parsed subtree and its depth in nodes.
struct Node {
    expr: Box<Expr>,
    depth: usize,
}

/// Binding power of `!`/`not`: between `&&` and the comparisons.
const NOT_POWER: u8 = 3;

/// A binary operator token's operator and binding power (higher binds tighter).
fn binding_power(tok: Tok<'_>) -> Option<(BinOp, u8)> {
    match tok {
        Tok::Or => Some((BinOp::Or, 1)),
        Tok::And => Some((BinOp::And, 2)),
        Tok::Cmp(op) => Some((op, 4)),
        Tok::Plus => Some((BinOp::Add, 5)),
        Tok::Minus => Some((BinOp::Sub, 5)),
        Tok::Star => Some((BinOp::Mul, 6)),
        Tok::Slash => Some((BinOp::Div, 6)),
        _ => None,
    }
}

/// A precedence-climbing parser. Its recursion is kept to a few small frames per nesting level
/// (boxed errors, built in separate functions), so that [`MAX_NESTING`] levels fit in a 2 MiB
/// thread stack even in unoptimized builds (about 1.5 MiB in the worst case; the tests check it).
struct Parser<'a> {
    text: &'a str,
    source: Arc<str>,
    lexer: Lexer<'a>,
    /// The current (not yet consumed) token.
    tok: Token<'a>,
    /// Current depth of nested parentheses and call arguments.
    nesting: usize,
}

impl<'a> Parser<'a> {
    fn new(text: &'a str) -> PResult<Self> {
        let mut lexer = Lexer { text, at: 0 };
        let tok = lexer.next()?;
        Ok(Parser { text, source: Arc::from(text), lexer, tok, nesting: 0 })
    }

    fn error(&self, position: usize, message: impl Into<String>) -> Box<Error> {
        expr_error(self.text, position, message)
    }

    /// How a token is named in messages.
    fn describe(&self, t: Token<'a>) -> String {
        match t.tok {
            Tok::End => "end of expression".to_string(),
            _ => format!("`{}`", self.word(t)),
        }
    }

    /// A token's text.
    fn word(&self, t: Token<'a>) -> &'a str {
        self.text.get(t.pos..t.end).unwrap_or("")
    }

    /// Consumes the current token and returns it.
    fn bump(&mut self) -> PResult<Token<'a>> {
        let next = self.lexer.next()?;
        Ok(std::mem::replace(&mut self.tok, next))
    }

    /// Goes one nesting level deeper (undone by `leave`); `pos` is the token that opens the level.
    fn enter(&mut self, pos: usize) -> PResult<()> {
        if self.nesting >= MAX_NESTING {
            return Err(self.too_deep(pos, "nested too deeply", MAX_NESTING));
        }
        self.nesting += 1;
        Ok(())
    }

    fn leave(&mut self) {
        self.nesting -= 1;
    }

    #[cold]
    #[inline(never)]
    fn too_deep(&self, pos: usize, what: &str, limit: usize) -> Box<Error> {
        self.error(pos, format!("expression {what} (more than {limit} levels)"))
    }

    fn node(&self, kind: ExprKind, pos: usize, depth: usize) -> PResult<Node> {
        if depth > MAX_DEPTH {
            return Err(self.too_deep(pos, "too deep", MAX_DEPTH));
        }
        Ok(Node { expr: Box::new(Expr { kind, pos, source: Some(self.source.clone()) }), depth })
    }

    fn leaf(&self, kind: ExprKind, pos: usize) -> PResult<Node> {
        self.node(kind, pos, 1)
    }

    /// An expression whose binary operators all bind at least as tightly as `min_power`.
    ///
    /// This, [`Parser::operators`], [`Parser::operand`], [`Parser::atom`] and [`Parser::call`] are
    /// the only recursive functions; what else they need is done in helpers that return before
    /// recursing, which keeps the stack used per nesting level small.
    fn expr(&mut self, min_power: u8) -> PResult<Node> {
        // `!` applies to a comparison or anything tighter. Where the context binds tighter than
        // `!` (an operand of arithmetic or of a comparison) it is an error: see `not_an_operand`.
        let nots = if min_power <= NOT_POWER { self.prefixes(Tok::Not)? } else { Vec::new() };
        let operand = self.operand()?;
        if nots.is_empty() {
            return self.operators(operand, min_power);
        }
        let negated = self.operators(operand, NOT_POWER)?;
        let negated = self.wrap(negated, nots, ExprKind::Not)?;
        self.operators(negated, min_power)
    }

    /// Extends `lhs` with the binary operators that follow, as long as they bind at least as
    /// tightly as `min_power`.
    fn operators(&mut self, mut lhs: Node, min_power: u8) -> PResult<Node> {
        while let Some((op, pos, power)) = self.take_operator(min_power)? {
            // Left-associative: the right operand only takes tighter operators.
            let rhs = self.expr(power + 1)?;
            lhs = self.binary_node(op, pos, lhs, rhs)?;
        }
        Ok(lhs)
    }

    /// Consumes the current token if it is a binary operator binding at least as tightly as
    /// `min_power`; returns it, its position and its binding power.
    fn take_operator(&mut self, min_power: u8) -> PResult<Option<(BinOp, usize, u8)>> {
        match binding_power(self.tok.tok) {
            Some((op, power)) if power >= min_power => Ok(Some((op, self.bump()?.pos, power))),
            _ => Ok(None),
        }
    }

    fn binary_node(&self, op: BinOp, pos: usize, lhs: Node, rhs: Node) -> PResult<Node> {
        if op.is_comparison() && matches!(self.tok.tok, Tok::Cmp(_)) {
            return Err(self.error(self.tok.pos, "comparisons cannot be chained; use && (e.g. `a < b && b < c`)"));
        }
        let depth = lhs.depth.max(rhs.depth) + 1;
        self.node(ExprKind::Binary(op, lhs.expr, rhs.expr), pos, depth)
    }

    /// An operand of arithmetic or a comparison: unary minuses, then an atom.
    fn operand(&mut self) -> PResult<Node> {
        let mut minuses = self.prefixes(Tok::Minus)?;
        let folded = match minuses.last() {
            Some(&pos) => self.negated_literal(pos)?,
            None => None,
        };
        let inner = match folded {
            Some(literal) => {
                minuses.pop();
                literal
            }
            None => self.atom()?,
        };
        self.wrap(inner, minuses, ExprKind::Neg)
    }

    /// Consumes a run of `tok` (`!` or `-`) and returns their positions.
    fn prefixes(&mut self, tok: Tok<'a>) -> PResult<Vec<usize>> {
        let mut positions = Vec::new();
        while self.tok.tok == tok {
            if positions.len() == MAX_DEPTH {
                return Err(self.too_deep(self.tok.pos, "too deep", MAX_DEPTH));
            }
            positions.push(self.bump()?.pos);
        }
        Ok(positions)
    }

    /// Applies the prefix operators at `positions` to `inner`, innermost (last) first.
    fn wrap(&self, mut inner: Node, positions: Vec<usize>, make: fn(Box<Expr>) -> ExprKind) -> PResult<Node> {
        for &pos in positions.iter().rev() {
            let depth = inner.depth + 1;
            inner = self.node(make(inner.expr), pos, depth)?;
        }
        Ok(inner)
    }

    /// If the current token is a number literal, consumes it and returns it negated, as the
    /// literal written with the `-` at `pos`.
    fn negated_literal(&mut self, pos: usize) -> PResult<Option<Node>> {
        let literal = match self.tok.tok {
            // `-i128::from(v)` cannot overflow since v < 2^64; it fits in i64 for v <= 2^63.
            Tok::Int(v) => match i64::try_from(-i128::from(v)) {
                Ok(v) => Literal::Int(v),
                Err(_) => return Err(self.error(pos, "integer literal out of range")),
            },
            Tok::Float(v) => Literal::Float(-v),
            _ => return Ok(None),
        };
        self.bump()?;
        self.leaf(ExprKind::Lit(literal), pos).map(Some)
    }

    /// A literal, column, call or parenthesized expression.
    fn atom(&mut self) -> PResult<Node> {
        let t = self.tok;
        match t.tok {
            Tok::Ident(name) => {
                self.bump()?;
                if self.tok.tok == Tok::LParen { self.call(name, t.pos) } else { self.leaf_of(t) }
            }
            Tok::LParen => {
                self.bump()?;
                self.enter(t.pos)?;
                let inner = self.expr(0)?;
                self.leave();
                self.close_paren(t.pos)?;
                Ok(inner)
            }
            _ => {
                self.bump_operand(t)?;
                self.leaf_of(t)
            }
        }
    }

    /// Consumes the token `t` (the current one) if it can start an operand, else fails.
    fn bump_operand(&mut self, t: Token<'a>) -> PResult<()> {
        match t.tok {
            Tok::Int(_) | Tok::Float(_) | Tok::Bool(_) | Tok::Quoted(_) => {
                self.bump()?;
                Ok(())
            }
            _ => Err(self.not_an_operand(t)),
        }
    }

    /// The leaf node for the token `t`: a literal or a column.
    fn leaf_of(&self, t: Token<'a>) -> PResult<Node> {
        let kind = match t.tok {
            Tok::Int(v) => match i64::try_from(v) {
                Ok(v) => ExprKind::Lit(Literal::Int(v)),
                Err(_) => return Err(self.error(t.pos, "integer literal out of range")),
            },
            Tok::Float(v) => ExprKind::Lit(Literal::Float(v)),
            Tok::Bool(v) => ExprKind::Lit(Literal::Bool(v)),
            Tok::Ident(name) | Tok::Quoted(name) => ExprKind::Col(name.to_string()),
            _ => return Err(self.not_an_operand(t)),
        };
        self.leaf(kind, t.pos)
    }

    /// Consumes the `)` that closes the `(` at `open`.
    fn close_paren(&mut self, open: usize) -> PResult<()> {
        if self.tok.tok != Tok::RParen {
            return Err(self.unclosed_paren(open));
        }
        self.bump()?;
        Ok(())
    }

    #[cold]
    #[inline(never)]
    fn unclosed_paren(&self, open: usize) -> Box<Error> {
        let found = self.describe(self.tok);
        self.error(self.tok.pos, format!("expected `)` to close the `(` at position {open}, found {found}"))
    }

    /// The error for a token `t` where an operand must start.
    #[cold]
    #[inline(never)]
    fn not_an_operand(&self, t: Token<'a>) -> Box<Error> {
        let word = self.word(t);
        let message = match t.tok {
            Tok::End => "unexpected end of expression".to_string(),
            Tok::Not => format!(
                "`{word}` binds looser than comparisons and arithmetic; put the negated operand in parentheses, \
                 e.g. `a == ({word} b)`"
            ),
            Tok::And | Tok::Or if word.starts_with(|c: char| c.is_ascii_alphabetic()) => {
                format!("expected a value, found the keyword `{word}`; write `` `{word}` `` for a column of that name")
            }
            _ => format!("expected a value, a column, a function call or `(`, found {}", self.describe(t)),
        };
        self.error(t.pos, message)
    }

    /// A call of `name`, at `pos`; the current token is its `(`.
    fn call(&mut self, name: &str, pos: usize) -> PResult<Node> {
        let Some(func) = Func::from_name(name) else {
            return Err(self.unknown_function(name, pos));
        };
        self.bump()?; // the `(`
        let mut args: Vec<Expr> = Vec::new();
        let mut depth = 0;
        if self.tok.tok == Tok::RParen {
            self.bump()?;
        } else {
            loop {
                self.enter(pos)?;
                let arg = self.expr(0)?;
                self.leave();
                depth = depth.max(arg.depth);
                args.push(*arg.expr);
                match self.tok.tok {
                    Tok::Comma => self.bump()?,
                    Tok::RParen => {
                        self.bump()?;
                        break;
                    }
                    _ => return Err(self.bad_argument_separator(name)),
                };
            }
        }
        if args.len() != func.arity() {
            return Err(self.wrong_arity(func, args.len(), pos));
        }
        self.node(ExprKind::Call(func, args), pos, depth + 1)
    }

    #[cold]
    #[inline(never)]
    fn unknown_function(&self, name: &str, pos: usize) -> Box<Error> {
        let known: Vec<&str> = Func::ALL.iter().map(|f| f.name()).collect();
        self.error(pos, format!("unknown function `{name}`; known functions: {}", known.join(", ")))
    }

    #[cold]
    #[inline(never)]
    fn bad_argument_separator(&self, name: &str) -> Box<Error> {
        let found = self.describe(self.tok);
        self.error(self.tok.pos, format!("expected `,` or `)` in the arguments of `{name}`, found {found}"))
    }

    #[cold]
    #[inline(never)]
    fn wrong_arity(&self, func: Func, got: usize, pos: usize) -> Box<Error> {
        let arity = func.arity();
        let plural = if arity == 1 { "" } else { "s" };
        self.error(pos, format!("{} takes {arity} argument{plural}, got {got}", func.name()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::expr::{col, lit};

    /// The tree's shape as an S-expression, ignoring `pos` and `source`. Floats print with `{:?}`
    /// (exact, and tells -0.0 from 0.0); every NaN prints as `nan`, since the language has one NaN.
    fn shape(e: &Expr) -> String {
        match &e.kind {
            ExprKind::Col(name) => format!("col({name})"),
            ExprKind::Lit(Literal::Int(v)) => format!("{v}i"),
            ExprKind::Lit(Literal::Float(v)) if v.is_nan() => "nan".to_string(),
            ExprKind::Lit(Literal::Float(v)) => format!("{v:?}f"),
            ExprKind::Lit(Literal::Bool(v)) => format!("{v}"),
            ExprKind::Neg(a) => format!("(neg {})", shape(a)),
            ExprKind::Not(a) => format!("(not {})", shape(a)),
            ExprKind::Binary(op, a, b) => format!("({} {} {})", op.symbol(), shape(a), shape(b)),
            ExprKind::Call(f, args) => {
                let args: Vec<String> = args.iter().map(shape).collect();
                format!("({} {})", f.name(), args.join(" "))
            }
        }
    }

    fn parse(text: &str) -> Expr {
        match parse_expr(text) {
            Ok(e) => e,
            Err(e) => panic!("{text:?} should parse: {e}"),
        }
    }

    /// Asserts `text` parses to the same shape as `expected`.
    fn same(text: &str, expected: Expr) {
        assert_eq!(shape(&parse(text)), shape(&expected), "parsing {text:?}");
    }

    /// Asserts `text` is an error at `position` whose message contains `needle`.
    fn fails(text: &str, position: usize, needle: &str) {
        match parse_expr(text) {
            Ok(e) => panic!("{text:?} should fail, parsed as {}", shape(&e)),
            Err(Error::Expr { text: t, position: p, message }) => {
                assert_eq!(t, text);
                assert!(message.contains(needle), "{text:?}: message {message:?} lacks {needle:?}");
                assert_eq!(p, position, "{text:?}: wrong position for {message:?}");
            }
            Err(other) => panic!("{text:?}: wrong error kind {other:?}"),
        }
    }

    fn neg(e: Expr) -> Expr {
        -e
    }

    fn call(f: Func, args: Vec<Expr>) -> Expr {
        Expr::new(ExprKind::Call(f, args))
    }

    #[test]
    fn leaves() {
        same("a", col("a"));
        same("_x9", col("_x9"));
        same("`x:0`", col("x:0"));
        same("`my col`", col("my col"));
        same("`and`", col("and"));
        same("`é`", col("é"));
        same("AND", col("AND"));
        same("True", col("True"));
        same("abs", col("abs"));
        same("123", lit(123));
        same("0", lit(0));
        same("007", lit(7));
        same("9223372036854775807", lit(i64::MAX));
        same("1.5", lit(1.5));
        same(".5", lit(0.5));
        same("5.", lit(5.0));
        same("1e3", lit(1000.0));
        same("2.5E-4", lit(2.5e-4));
        same("1e+2", lit(100.0));
        same("5.e1", lit(50.0));
        same("1e-400", lit(0.0));
        same("inf", lit(f64::INFINITY));
        same("nan", lit(f64::NAN));
        same("true", lit(true));
        same("false", lit(false));
        same("  \t a \n", col("a"));
    }

    #[test]
    fn negative_literals_fold() {
        same("-5", lit(-5));
        same("x > -5", col("x").gt(lit(-5)));
        same("- 5", lit(-5));
        same("-1.5", lit(-1.5));
        same("-inf", lit(f64::NEG_INFINITY));
        same("-nan", lit(-f64::NAN));
        same("-0.0", lit(-0.0));
        same("-0", lit(0));
        same("-9223372036854775808", lit(i64::MIN));
        same("x * -9223372036854775808", col("x") * lit(i64::MIN));
        same("--5", neg(lit(-5)));
        same("-(5)", neg(lit(5)));
        same("-x", neg(col("x")));
        same("-true", neg(lit(true)));
        same("-abs(x)", neg(col("x").abs()));
        same("a - -1", col("a") - lit(-1));
        same("a-1", col("a") - lit(1));
        same("-2 * x", lit(-2) * col("x"));
    }

    #[test]
    fn precedence_and_associativity() {
        let (a, b, c, d) = (|| col("a"), || col("b"), || col("c"), || col("d"));
        same("a + b * c", a() + b() * c());
        same("a * b + c", a() * b() + c());
        same("a - b - c", (a() - b()) - c());
        same("a / b / c", (a() / b()) / c());
        same("a - b + c", (a() - b()) + c());
        same("a * b / c * d", ((a() * b()) / c()) * d());
        same("a - (b - c)", a() - (b() - c()));
        same("(a + b) * c", (a() + b()) * c());
        same("-a * b", neg(a()) * b());
        same("-a - -b", neg(a()) - neg(b()));
        same("a + b < c * d", (a() + b()).lt(c() * d()));
        same("a <= b", a().le(b()));
        same("a >= b", a().ge(b()));
        same("a == b", a().equals(b()));
        same("a != b", a().not_equals(b()));
        same("a < b && c > d", a().lt(b()).and(c().gt(d())));
        same("a || b && c", a().or(b().and(c())));
        same("a && b || c", a().and(b()).or(c()));
        same("a || b || c", a().or(b()).or(c()));
        same("a && b && c", a().and(b()).and(c()));
        same("a or b and c", a().or(b().and(c())));
        same("!x > 3", !(col("x").gt(lit(3))));
        same("not x > 3", !(col("x").gt(lit(3))));
        same("!a && b", (!a()).and(b()));
        same("!a || !b", (!a()).or(!b()));
        same("a && !b", a().and(!b()));
        same("!!a", !!a());
        same("not not a", !!a());
        same("!(a && b)", !(a().and(b())));
        same("a == (!b)", a().equals(!b()));
        same("(a < b) < c", a().lt(b()).lt(c()));
        same("a < (b < c)", a().lt(b().lt(c())));
        same("((a))", a());
        same("abs(a) + sqrt(b) * exp(c)", a().abs() + b().sqrt() * c().exp());
        same("log(a) - log1p(b)", a().log() - b().log1p());
        same("isnan(a) || isinf(b) && isfinite(c)", a().is_nan().or(b().is_inf().and(c().is_finite())));
        same("min(a, b) + max(c, d)", a().min(b()) + c().max(d()));
        same("clip(a + 1, -1, 2.5)", (a() + lit(1)).clip(lit(-1), lit(2.5)));
        same("clip(a,b,c)", call(Func::Clip, vec![a(), b(), c()]));
        same("min(a > b, !c)", a().gt(b()).min(!c()));
        same("abs ( a )", a().abs());
        same("a+b*c-d/a", (a() + b() * c()) - d() / a());
    }

    /// A node's own label: its operator, function name or leaf shape.
    fn label(e: &Expr) -> String {
        match &e.kind {
            ExprKind::Col(_) | ExprKind::Lit(_) => shape(e),
            ExprKind::Neg(_) => "neg".to_string(),
            ExprKind::Not(_) => "not".to_string(),
            ExprKind::Binary(op, ..) => op.symbol().to_string(),
            ExprKind::Call(f, _) => f.name().to_string(),
        }
    }

    /// Every node's label and `pos` in pre-order; asserts that each shares the `source` Arc.
    fn positions(e: &Expr, source: &Arc<str>, out: &mut Vec<(String, usize)>) {
        assert!(e.source.as_ref().is_some_and(|s| Arc::ptr_eq(s, source)), "{} must share the source", shape(e));
        out.push((label(e), e.pos));
        match &e.kind {
            ExprKind::Neg(a) | ExprKind::Not(a) => positions(a, source, out),
            ExprKind::Binary(_, a, b) => {
                positions(a, source, out);
                positions(b, source, out);
            }
            ExprKind::Call(_, args) => args.iter().for_each(|a| positions(a, source, out)),
            ExprKind::Col(_) | ExprKind::Lit(_) => {}
        }
    }

    fn positions_of(text: &str) -> Vec<(String, usize)> {
        let e = parse(text);
        let Some(source) = e.source.clone() else { panic!("{text:?}: root has no source") };
        assert_eq!(&*source, text);
        let mut out = Vec::new();
        positions(&e, &source, &mut out);
        out
    }

    fn labelled(items: &[(&str, usize)]) -> Vec<(String, usize)> {
        items.iter().map(|&(l, p)| (l.to_string(), p)).collect()
    }

    #[test]
    fn positions_and_source() {
        assert_eq!(
            positions_of("a + -5 * abs(`b c`) > (!x)"),
            labelled(&[
                (">", 20),
                ("+", 2),
                ("col(a)", 0),
                ("*", 7),
                ("-5i", 4),
                ("abs", 9),
                ("col(b c)", 13),
                ("not", 23),
                ("col(x)", 24),
            ])
        );
        assert_eq!(
            positions_of("-x || not - (y) or clip(1, 2.5, true)"),
            labelled(&[
                ("||", 16),
                ("||", 3),
                ("neg", 0),
                ("col(x)", 1),
                ("not", 6),
                ("neg", 10),
                ("col(y)", 13),
                ("clip", 19),
                ("1i", 24),
                ("2.5f", 27),
                ("true", 32),
            ])
        );
        // Parentheses make no node: the inner node keeps its own position.
        assert_eq!(parse("((x))").pos, 2);
        assert_eq!(parse(" -(1)").pos, 1);
        assert_eq!(parse("(a)-b").pos, 3);
    }

    #[test]
    fn lexical_errors() {
        fails("a = b", 2, "use == to compare");
        fails("a & b", 2, "use &&");
        fails("a | b", 2, "use ||");
        fails("a &", 2, "use &&");
        fails("a ^ b", 2, "unexpected character `^`");
        fails("a > 1 ; b", 6, "unexpected character `;`");
        fails("é > 1", 0, "unexpected character `é`");
        fails("a + é", 4, "backticks");
        fails("a .", 2, "unexpected character `.`");
        fails("`abc", 0, "unterminated backtick");
        fails("a + `abc", 4, "unterminated backtick");
        fails("``", 0, "empty column name");
        fails("a + `` ", 4, "empty column name");
        fails("9223372036854775808", 0, "integer literal out of range");
        fails("x > 9223372036854775808", 4, "integer literal out of range");
        fails("-9223372036854775809", 0, "integer literal out of range");
        fails("x < -99999999999999999999", 5, "integer literal out of range");
        fails("-(9223372036854775808)", 2, "integer literal out of range");
        fails("1e400", 0, "float literal out of range");
        fails("1.2.3", 0, "malformed number `1.2.3`");
        fails("a + 12x", 4, "malformed number `12x`");
        fails("1e", 0, "malformed number `1e`");
        fails("1e+", 0, "malformed number");
        fails("5..", 0, "malformed number");
        // The first error in the text wins, whether lexical or syntactic.
        fails(") = 1", 0, "found `)`");
        fails("a b = 1", 2, "unexpected `b`");
    }

    #[test]
    fn syntax_errors() {
        fails("", 0, "empty expression");
        fails("   ", 0, "empty expression");
        fails("a < b < c", 6, "comparisons cannot be chained; use &&");
        fails("a == b != c", 7, "cannot be chained");
        fails("1 < x <= 2", 6, "cannot be chained");
        fails("a +", 3, "unexpected end of expression");
        fails("(a", 2, "expected `)` to close the `(` at position 0, found end of expression");
        fails("(a b", 3, "expected `)`");
        fails("a)", 1, "unmatched `)`");
        fails("a b", 2, "unexpected `b`; expected an operator");
        fails("a > 1 true", 6, "unexpected `true`");
        fails("()", 1, "found `)`");
        fails("* a", 0, "found `*`");
        fails("a * * b", 4, "found `*`");
        fails("a && || b", 5, "found `||`");
        fails("-", 1, "unexpected end of expression");
        fails("!", 1, "unexpected end of expression");
        fails("a > !b", 4, "`!` binds looser than comparisons");
        fails("a + not b", 4, "`not` binds looser");
        fails("-!a", 1, "binds looser");
        fails("and > 1", 0, "write `` `and` `` for a column");
        fails("x or or", 5, "keyword `or`");
        fails("x not", 2, "unexpected `not`");
        fails("inf(x)", 3, "unexpected `(`");
        fails("`abs`(x)", 5, "unexpected `(`");
        fails("a,b", 1, "unexpected `,`");
    }

    #[test]
    fn call_errors() {
        fails("clip(x, 1)", 0, "clip takes 3 arguments, got 2");
        fails("a + abs(x, y)", 4, "abs takes 1 argument, got 2");
        fails("min(x)", 0, "min takes 2 arguments, got 1");
        fails("sqrt()", 0, "sqrt takes 1 argument, got 0");
        fails("foo(x)", 0, "unknown function `foo`");
        fails("1 + Abs(x)", 4, "known functions: abs, sqrt, exp, log, log1p, isnan, isinf, isfinite, min, max, clip");
        fails("min(a, )", 7, "found `)`");
        fails("min(a b)", 6, "expected `,` or `)` in the arguments of `min`, found `b`");
        fails("min(a, b", 8, "expected `,` or `)`");
        fails("abs(", 4, "unexpected end of expression");
    }

    #[test]
    fn error_display_has_caret() {
        let Err(e) = parse_expr("a = b") else { panic!("must fail") };
        assert_eq!(e.to_string(), "expression error at position 2: `=` is not an operator; use == to compare: a [=] b");
    }

    /// Runs `f` on a thread with a 2 MiB stack (the default for spawned threads and tests), to
    /// show the limits keep the parser within it even in unoptimized builds.
    fn on_small_stack(f: impl FnOnce() + Send + 'static) {
        let thread = std::thread::Builder::new().stack_size(2 << 20).spawn(f);
        match thread.map(|t| t.join()) {
            Ok(Ok(())) => {}
            Ok(Err(panic)) => std::panic::resume_unwind(panic),
            Err(e) => panic!("cannot spawn a thread: {e}"),
        }
    }

    fn nested(open: &str, inner: &str, close: &str, n: usize) -> String {
        format!("{}{inner}{}", open.repeat(n), close.repeat(n))
    }

    #[test]
    fn nesting_limit() {
        on_small_stack(|| {
            same(&nested("(", "x", ")", MAX_NESTING), col("x"));
            fails(&nested("(", "x", ")", MAX_NESTING + 1), MAX_NESTING, "nested too deeply");
            fails(&"(".repeat(100_000), MAX_NESTING, "nested too deeply");
            fails(&"abs(".repeat(100_000), 4 * MAX_NESTING, "nested too deeply");
            fails(&"!(".repeat(100_000), 2 * MAX_NESTING + 1, "nested too deeply");
            fails(&"!abs(".repeat(100_000), 5 * MAX_NESTING + 1, "nested too deeply");
            fails(&"-abs(".repeat(100_000), 5 * MAX_NESTING + 1, "nested too deeply");
            fails(&"a*(".repeat(100_000), 3 * MAX_NESTING + 2, "nested too deeply");
            fails(&"a&&(".repeat(100_000), 4 * MAX_NESTING + 3, "nested too deeply");
            fails(&"a==(".repeat(100_000), 4 * MAX_NESTING + 3, "nested too deeply");
            fails(&"min(a,".repeat(100_000), 6 * MAX_NESTING, "nested too deeply");
        });
    }

    #[test]
    fn depth_limit() {
        on_small_stack(|| {
            // Runs of unary operators.
            assert!(parse_expr(&nested("-", "x", "", MAX_DEPTH - 1)).is_ok());
            fails(&nested("-", "x", "", MAX_DEPTH), 0, "expression too deep");
            assert!(parse_expr(&nested("-", "5", "", MAX_DEPTH)).is_ok()); // the last `-` folds
            assert!(parse_expr(&nested("!", "x", "", MAX_DEPTH - 1)).is_ok());
            fails(&nested("!", "x", "", MAX_DEPTH), 0, "expression too deep");
            fails(&"-".repeat(100_000), MAX_DEPTH, "expression too deep");
            fails(&"!".repeat(100_000), MAX_DEPTH, "expression too deep");
            // Calls and parenthesized unary operators.
            assert!(parse_expr(&nested("abs(", "x", ")", MAX_DEPTH - 1)).is_ok());
            fails(&nested("abs(", "x", ")", MAX_DEPTH), 0, "expression too deep");
            assert!(parse_expr(&nested("-(", "x", ")", MAX_DEPTH - 1)).is_ok());
            fails(&nested("-(", "x", ")", MAX_DEPTH), 0, "expression too deep");
            // A long flat chain makes a deep tree with shallow recursion; a chain of n terms is
            // n deep, and the error points at the operator that makes it too deep.
            let chain = |n: usize| vec!["a"; n].join("+");
            assert!(parse_expr(&chain(MAX_DEPTH)).is_ok());
            fails(&chain(MAX_DEPTH + 1), 2 * MAX_DEPTH - 1, "expression too deep");
            fails(&chain(100_000), 2 * MAX_DEPTH - 1, "expression too deep");
            let ors = (0..1000).map(|i| format!("a == {i}")).collect::<Vec<_>>().join(" || ");
            let at = ors.match_indices("||").nth(MAX_DEPTH - 2).map_or(0, |(i, _)| i);
            fails(&ors, at, "expression too deep");
        });
    }

    #[test]
    fn display_of_deepest_trees_parses_back() {
        on_small_stack(|| {
            // Display's worst case: one more level of parentheses than the tree has nodes.
            let texts = [
                format!("--5{}", "+a".repeat(MAX_DEPTH - 2)),
                nested("abs(", "--5", ")", MAX_DEPTH - 2),
                nested("-(", "x", ")", MAX_DEPTH - 1),
                nested("!", "x", "", MAX_DEPTH - 1),
                format!("{}-9223372036854775808", "-".repeat(MAX_DEPTH - 1)),
            ];
            for text in texts {
                let e = parse(&text);
                let printed = e.to_string();
                assert_eq!(shape(&parse(&printed)), shape(&e), "{printed}");
            }
        });
    }

    /// SplitMix64: a tiny seeded generator for the random round-trip test.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
        fn pick<T: Copy>(&mut self, items: &[T]) -> T {
            items[self.below(items.len())]
        }
    }

    fn random_literal(rng: &mut Rng) -> Literal {
        match rng.below(6) {
            0 => Literal::Int(rng.pick(&[0, 1, -1, 7, -42, 1 << 40, i64::MAX, i64::MIN, i64::MIN + 1])),
            1 => Literal::Int(rng.next() as i64),
            2 => Literal::Float(rng.pick(&[
                0.0,
                -0.0,
                0.5,
                -1.5,
                3.0,
                -3.0,
                0.1,
                1e15,
                -1e15,
                1e16,
                123456789.25,
                1e-7,
                2.5e-4,
                5e-324,
                f64::MAX,
                f64::MIN,
                f64::MIN_POSITIVE,
                f64::EPSILON,
                f64::INFINITY,
                f64::NEG_INFINITY,
                f64::NAN,
                -f64::NAN,
            ])),
            3 => Literal::Float(f64::from_bits(rng.next())),
            4 => Literal::Float((rng.next() as i64 >> rng.below(64)) as f64 / 8.0),
            _ => Literal::Bool(rng.below(2) == 0),
        }
    }

    fn random_expr(rng: &mut Rng, depth: usize) -> Expr {
        if depth == 0 || rng.below(4) == 0 {
            return match rng.below(3) {
                0 => col(rng.pick(&["a", "b", "x:0", "my col", "abs", "and", "_9"])),
                _ => Expr::new(ExprKind::Lit(random_literal(rng))),
            };
        }
        match rng.below(8) {
            0 => -random_expr(rng, depth - 1),
            1 => !random_expr(rng, depth - 1),
            2 => {
                let f = rng.pick(&Func::ALL);
                let args = (0..f.arity()).map(|_| random_expr(rng, depth - 1)).collect();
                call(f, args)
            }
            _ => {
                let ops = [
                    BinOp::Add,
                    BinOp::Sub,
                    BinOp::Mul,
                    BinOp::Div,
                    BinOp::Lt,
                    BinOp::Le,
                    BinOp::Gt,
                    BinOp::Ge,
                    BinOp::Eq,
                    BinOp::Ne,
                    BinOp::And,
                    BinOp::Or,
                ];
                let op = rng.pick(&ops);
                let (a, b) = (random_expr(rng, depth - 1), random_expr(rng, depth - 1));
                Expr::new(ExprKind::Binary(op, Box::new(a), Box::new(b)))
            }
        }
    }

    fn check_round_trip(seed: u64, count: usize) {
        println!("round-trip seed: {seed} (set PARSE_SEED={seed} to rerun)");
        let mut rng = Rng(seed);
        for i in 0..count {
            let e = random_expr(&mut rng, 1 + i % 6);
            let text = e.to_string();
            match parse_expr(&text) {
                Ok(back) => assert_eq!(shape(&back), shape(&e), "seed {seed}, tree {i}: {text}"),
                Err(err) => panic!("seed {seed}, tree {i}: {text} does not parse: {err}"),
            }
        }
    }

    #[test]
    fn display_round_trips_fixed_seed() {
        check_round_trip(0x5EED_0001, 3000);
    }

    #[test]
    fn display_round_trips_random_seed() {
        let seed = match std::env::var("PARSE_SEED") {
            Ok(s) => s.parse().unwrap_or_else(|_| panic!("PARSE_SEED must be a u64, got {s:?}")),
            Err(_) => std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64),
        };
        check_round_trip(seed, 3000);
    }

    /// Prints `e` with only the parentheses the grammar needs, with random spacing and random
    /// spelling of the logical operators, so that parsing it back tests precedence and
    /// associativity on random trees. `min` is the binding power the context requires: 0 for any
    /// expression, then `||` 1, `&&` 2, `!` 3, comparisons 4, `+ -` 5, `* /` 6, unary `-` 7, and 8
    /// for an atom.
    fn print_minimal(e: &Expr, min: u8, rng: &mut Rng) -> String {
        let space = |rng: &mut Rng| if rng.below(2) == 0 { " " } else { "" };
        let (text, power) = match &e.kind {
            ExprKind::Col(_) => (e.to_string(), 8),
            ExprKind::Lit(l) => (l.to_string(), 8),
            // A `-` before a number literal would fold into it, so such an operand needs `(...)`.
            ExprKind::Neg(a) if matches!(a.kind, ExprKind::Lit(Literal::Int(_) | Literal::Float(_))) => {
                (format!("-{}({a})", space(rng)), 7)
            }
            ExprKind::Neg(a) => (format!("-{}{}", space(rng), print_minimal(a, 7, rng)), 7),
            ExprKind::Not(a) => {
                let op = if rng.below(2) == 0 { "!".to_string() } else { "not ".to_string() };
                (format!("{op}{}", print_minimal(a, NOT_POWER, rng)), NOT_POWER)
            }
            ExprKind::Binary(op, a, b) => {
                let (symbol, power) = match op {
                    BinOp::Or => (if rng.below(2) == 0 { " or " } else { "||" }, 1),
                    BinOp::And => (if rng.below(2) == 0 { " and " } else { "&&" }, 2),
                    op if op.is_comparison() => (op.symbol(), 4),
                    BinOp::Add | BinOp::Sub => (op.symbol(), 5),
                    _ => (op.symbol(), 6),
                };
                let left_min = if op.is_comparison() { power + 1 } else { power };
                let left = print_minimal(a, left_min, rng);
                let right = print_minimal(b, power + 1, rng);
                (format!("{left}{}{symbol}{}{right}", space(rng), space(rng)), power)
            }
            ExprKind::Call(f, args) => {
                let args: Vec<String> = args.iter().map(|a| print_minimal(a, 0, rng)).collect();
                (format!("{}({})", f.name(), args.join(",")), 8)
            }
        };
        if power < min { format!("({text})") } else { text }
    }

    #[test]
    fn minimal_parentheses_round_trip() {
        let seed = 0x5EED_0002;
        let mut rng = Rng(seed);
        for i in 0..3000 {
            let e = random_expr(&mut rng, 1 + i % 6);
            let text = print_minimal(&e, 0, &mut rng);
            match parse_expr(&text) {
                Ok(back) => assert_eq!(shape(&back), shape(&e), "seed {seed}, tree {i}: {text}"),
                Err(err) => panic!("seed {seed}, tree {i}: {text} does not parse: {err}"),
            }
        }
    }

    #[test]
    fn display_round_trips_edge_cases() {
        let cases = [
            neg(lit(5)),
            neg(lit(0)),
            neg(lit(1.5)),
            neg(lit(f64::INFINITY)),
            neg(lit(f64::NAN)),
            neg(lit(-5)),
            neg(lit(i64::MIN)),
            neg(lit(-0.0)),
            neg(neg(lit(2))),
            lit(-0.0),
            lit(i64::MIN),
            lit(f64::NEG_INFINITY),
            col("a") - lit(-1),
            col("not"),
            col("x:0").gt(lit(-2.5)),
            !(!col("a")),
            col("a").equals(!col("b")),
        ];
        for e in cases {
            let text = e.to_string();
            assert_eq!(shape(&parse(&text)), shape(&e), "{text}");
        }
    }
}
