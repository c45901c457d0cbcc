//! Rule conditions: a small expression language close to OTTL, compiled once.
//!
//! ```text
//! expr    := or
//! or      := and ("or" and)*
//! and     := unary ("and" unary)*
//! unary   := "not" unary | "(" expr ")" | call | cmp | "true" | "false"
//! cmp     := operand ("==" | "!=" | "<" | "<=" | ">" | ">=") operand
//! call    := "IsMatch" "(" operand "," string ")"
//! operand := path | string | number | "true" | "false" | "nil" | constant
//! path    := name | kind | status | duration | attributes["k"] | resource.attributes["k"]
//!            (each also with a "span." prefix; status.code = status)
//! number  := integer or decimal, optionally with a duration unit (ns us ms s m h: in ns)
//! constant:= SPAN_KIND_{UNSPECIFIED,INTERNAL,SERVER,CLIENT,PRODUCER,CONSUMER}
//!            STATUS_CODE_{UNSET,OK,ERROR}   (OTLP numbers)
//! ```
//! `duration` is in nanoseconds. Comparing values of different types is false (`!=`: true).
use regex::Regex;

use super::{AttrValue, SpanView};

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("at column {col}: {msg}")]
pub struct ParseError {
    /// 1-based column in the condition text.
    pub col: usize,
    pub msg: String,
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Str(String),
    Int(i64),
    Float(f64),
    LParen,
    RParen,
    LBracket,
    RBracket,
    Comma,
    Op(CmpOp),
}

/// A token as it is written, for error messages (`found ">"`, not `found Op(Gt)`).
impl std::fmt::Display for Tok {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Tok::Ident(s) => write!(f, "{s}"),
            Tok::Str(s) => write!(f, "{s:?}"),
            Tok::Int(v) => write!(f, "{v}"),
            Tok::Float(v) => write!(f, "{v}"),
            Tok::LParen => f.write_str("("),
            Tok::RParen => f.write_str(")"),
            Tok::LBracket => f.write_str("["),
            Tok::RBracket => f.write_str("]"),
            Tok::Comma => f.write_str(","),
            Tok::Op(op) => f.write_str(match op {
                CmpOp::Eq => "==",
                CmpOp::Ne => "!=",
                CmpOp::Lt => "<",
                CmpOp::Le => "<=",
                CmpOp::Gt => ">",
                CmpOp::Ge => ">=",
            }),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmpOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

fn err(col: usize, msg: impl Into<String>) -> ParseError {
    ParseError {
        col: col + 1,
        msg: msg.into(),
    }
}

fn lex(src: &str) -> Result<Vec<(usize, Tok)>, ParseError> {
    let chars: Vec<char> = src.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let start = i;
        match c {
            ' ' | '\t' | '\n' | '\r' => {
                i += 1;
                continue;
            }
            '(' => out.push((start, Tok::LParen)),
            ')' => out.push((start, Tok::RParen)),
            '[' => out.push((start, Tok::LBracket)),
            ']' => out.push((start, Tok::RBracket)),
            ',' => out.push((start, Tok::Comma)),
            '=' | '!' | '<' | '>' => {
                let next = chars.get(i + 1).copied();
                let (op, len) = match (c, next) {
                    ('=', Some('=')) => (CmpOp::Eq, 2),
                    ('!', Some('=')) => (CmpOp::Ne, 2),
                    ('<', Some('=')) => (CmpOp::Le, 2),
                    ('>', Some('=')) => (CmpOp::Ge, 2),
                    ('<', _) => (CmpOp::Lt, 1),
                    ('>', _) => (CmpOp::Gt, 1),
                    ('=', _) => return Err(err(start, "'=' is not an operator; use '=='")),
                    _ => return Err(err(start, "'!' is not an operator; use 'not' or '!='")),
                };
                out.push((start, Tok::Op(op)));
                i += len;
                continue;
            }
            '"' => {
                let mut s = String::new();
                i += 1;
                loop {
                    match chars.get(i) {
                        None => return Err(err(start, "unterminated string")),
                        Some('"') => break,
                        Some('\\') => {
                            match chars.get(i + 1) {
                                Some(&e @ ('"' | '\\')) => s.push(e),
                                Some('n') => s.push('\n'),
                                Some('t') => s.push('\t'),
                                _ => return Err(err(i, "bad escape in string")),
                            }
                            i += 2;
                        }
                        Some(&ch) => {
                            s.push(ch);
                            i += 1;
                        }
                    }
                }
                out.push((start, Tok::Str(s)));
            }
            c if c.is_ascii_digit()
                || (c == '-' && chars.get(i + 1).is_some_and(|d| d.is_ascii_digit())) =>
            {
                let mut j = i + 1;
                while j < chars.len() && (chars[j].is_ascii_digit() || chars[j] == '.') {
                    j += 1;
                }
                let num: String = chars[i..j].iter().collect();
                let mut k = j;
                while k < chars.len() && chars[k].is_ascii_alphabetic() {
                    k += 1;
                }
                let unit: String = chars[j..k].iter().collect();
                let scale: Option<f64> = match unit.as_str() {
                    "" => None,
                    "ns" => Some(1.0),
                    "us" => Some(1e3),
                    "ms" => Some(1e6),
                    "s" => Some(1e9),
                    "m" => Some(60e9),
                    "h" => Some(3600e9),
                    u => return Err(err(j, format!("unknown unit {u:?} (ns, us, ms, s, m, h)"))),
                };
                let tok = match (num.contains('.'), scale) {
                    (false, None) => Tok::Int(num.parse().map_err(|_| err(start, "bad number"))?),
                    (true, None) => Tok::Float(num.parse().map_err(|_| err(start, "bad number"))?),
                    (_, Some(s)) => {
                        let v: f64 = num.parse().map_err(|_| err(start, "bad number"))?;
                        Tok::Int((v * s).round() as i64)
                    }
                };
                out.push((start, tok));
                i = k;
                continue;
            }
            c if c.is_alphabetic() || c == '_' => {
                let mut j = i;
                while j < chars.len()
                    && (chars[j].is_alphanumeric() || chars[j] == '_' || chars[j] == '.')
                {
                    j += 1;
                }
                out.push((start, Tok::Ident(chars[i..j].iter().collect())));
                i = j;
                continue;
            }
            other => return Err(err(start, format!("unexpected character {other:?}"))),
        }
        i += 1;
    }
    Ok(out)
}

/// A literal value.
#[derive(Debug, Clone, PartialEq)]
pub enum Lit {
    Str(String),
    Int(i64),
    Float(f64),
    Bool(bool),
    Nil,
}

/// Something a comparison reads.
#[derive(Debug)]
pub enum Operand {
    Name,
    Kind,
    Status,
    Duration,
    Attr(String),
    ResourceAttr(String),
    /// `trace_id`, `trace_id.string`: compared as bytes, or with a hex string.
    TraceId,
    /// `span_id`, `span_id.string`.
    SpanId,
    Lit(Lit),
}

/// A compiled condition.
#[derive(Debug)]
pub enum Expr {
    Or(Vec<Expr>),
    And(Vec<Expr>),
    Not(Box<Expr>),
    Cmp(Operand, CmpOp, Operand),
    IsMatch(Operand, Regex),
    Const(bool),
}

/// A value read from a span during evaluation (borrowed: no allocation).
#[derive(Debug, Clone, Copy)]
enum Val<'a> {
    Str(&'a str),
    Int(i64),
    Float(f64),
    Bool(bool),
    /// A trace (16 bytes) or span (first 8 bytes) id.
    Id([u8; 16], usize),
    Nil,
}

impl Operand {
    fn eval<'a, S: SpanView + ?Sized>(&'a self, s: &'a S) -> Val<'a> {
        let attr = |v: Option<AttrValue<'a>>| match v {
            Some(AttrValue::Str(x)) => Val::Str(x),
            Some(AttrValue::Int(x)) => Val::Int(x),
            Some(AttrValue::Float(x)) => Val::Float(x),
            Some(AttrValue::Bool(x)) => Val::Bool(x),
            None => Val::Nil,
        };
        match self {
            Operand::Name => Val::Str(s.name()),
            Operand::Kind => Val::Int(s.kind_code()),
            Operand::Status => Val::Int(s.status_code()),
            Operand::Duration => Val::Int(s.duration_ns().min(i64::MAX as u64) as i64),
            Operand::Attr(k) => attr(s.attribute(k)),
            Operand::ResourceAttr(k) => attr(s.resource_attribute(k)),
            Operand::TraceId => Val::Id(s.trace_id(), 16),
            Operand::SpanId => {
                let mut b = [0u8; 16];
                b[..8].copy_from_slice(&s.span_id());
                Val::Id(b, 8)
            }
            Operand::Lit(Lit::Str(x)) => Val::Str(x),
            Operand::Lit(Lit::Int(x)) => Val::Int(*x),
            Operand::Lit(Lit::Float(x)) => Val::Float(*x),
            Operand::Lit(Lit::Bool(x)) => Val::Bool(*x),
            Operand::Lit(Lit::Nil) => Val::Nil,
        }
    }
}

fn compare(a: Val, op: CmpOp, b: Val) -> bool {
    use std::cmp::Ordering;
    let ord: Option<Ordering> = match (a, b) {
        (Val::Str(x), Val::Str(y)) => Some(x.cmp(y)),
        (Val::Int(x), Val::Int(y)) => Some(x.cmp(&y)),
        (Val::Int(x), Val::Float(y)) => (x as f64).partial_cmp(&y),
        (Val::Float(x), Val::Int(y)) => x.partial_cmp(&(y as f64)),
        (Val::Float(x), Val::Float(y)) => x.partial_cmp(&y),
        (Val::Bool(x), Val::Bool(y)) => {
            return match op {
                CmpOp::Eq => x == y,
                CmpOp::Ne => x != y,
                _ => false,
            }
        }
        (Val::Nil, Val::Nil) => Some(Ordering::Equal),
        (Val::Id(x, n), Val::Id(y, m)) if n == m => Some(x[..n].cmp(&y[..m])),
        (Val::Id(x, n), Val::Str(h)) => hex_cmp(&x[..n], h),
        (Val::Str(h), Val::Id(x, n)) => hex_cmp(&x[..n], h).map(Ordering::reverse),
        _ => None,
    };
    match (ord, op) {
        (None, CmpOp::Ne) => true,
        (None, _) => false,
        (Some(o), CmpOp::Eq) => o == Ordering::Equal,
        (Some(o), CmpOp::Ne) => o != Ordering::Equal,
        (Some(o), CmpOp::Lt) => o == Ordering::Less,
        (Some(o), CmpOp::Le) => o != Ordering::Greater,
        (Some(o), CmpOp::Gt) => o == Ordering::Greater,
        (Some(o), CmpOp::Ge) => o != Ordering::Less,
    }
}

/// Compares id bytes with their hex form (`trace_id.string == "4bf9..."`) without building a
/// string; a string that is not hex of the same length is simply unequal.
fn hex_cmp(id: &[u8], hex: &str) -> Option<std::cmp::Ordering> {
    if hex.len() != 2 * id.len() {
        return None;
    }
    let digits = hex.as_bytes();
    for (i, b) in id.iter().enumerate() {
        let hi = (digits[2 * i] as char).to_digit(16)?;
        let lo = (digits[2 * i + 1] as char).to_digit(16)?;
        let h = (hi * 16 + lo) as u8;
        if *b != h {
            return Some(b.cmp(&h));
        }
    }
    Some(std::cmp::Ordering::Equal)
}

impl Expr {
    pub fn eval<S: SpanView + ?Sized>(&self, s: &S) -> bool {
        match self {
            Expr::Or(v) => v.iter().any(|e| e.eval(s)),
            Expr::And(v) => v.iter().all(|e| e.eval(s)),
            Expr::Not(e) => !e.eval(s),
            Expr::Cmp(a, op, b) => compare(a.eval(s), *op, b.eval(s)),
            Expr::IsMatch(a, re) => match a.eval(s) {
                Val::Str(x) => re.is_match(x),
                _ => false,
            },
            Expr::Const(b) => *b,
        }
    }

    /// Compiles a condition.
    pub fn compile(src: &str) -> Result<Expr, ParseError> {
        let toks = lex(src)?;
        let mut p = Parser {
            toks,
            pos: 0,
            end: src.chars().count(),
        };
        let e = p.or()?;
        if let Some((col, t)) = p.toks.get(p.pos) {
            return Err(err(
                *col,
                format!("unexpected {:?} after a complete condition", t.to_string()),
            ));
        }
        Ok(e)
    }
}

struct Parser {
    toks: Vec<(usize, Tok)>,
    pos: usize,
    end: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos).map(|(_, t)| t)
    }

    fn col(&self) -> usize {
        self.toks.get(self.pos).map_or(self.end, |(c, _)| *c)
    }

    fn is_word(&self, w: &str) -> bool {
        matches!(self.peek(), Some(Tok::Ident(s)) if s == w)
    }

    fn expect(&mut self, t: Tok, what: &str) -> Result<(), ParseError> {
        if self.peek() == Some(&t) {
            self.pos += 1;
            Ok(())
        } else {
            Err(err(self.col(), format!("expected {what}")))
        }
    }

    fn or(&mut self) -> Result<Expr, ParseError> {
        let mut v = vec![self.and()?];
        while self.is_word("or") {
            self.pos += 1;
            v.push(self.and()?);
        }
        Ok(if v.len() == 1 {
            v.remove(0)
        } else {
            Expr::Or(v)
        })
    }

    fn and(&mut self) -> Result<Expr, ParseError> {
        let mut v = vec![self.unary()?];
        while self.is_word("and") {
            self.pos += 1;
            v.push(self.unary()?);
        }
        Ok(if v.len() == 1 {
            v.remove(0)
        } else {
            Expr::And(v)
        })
    }

    fn unary(&mut self) -> Result<Expr, ParseError> {
        if self.is_word("not") {
            self.pos += 1;
            return Ok(Expr::Not(Box::new(self.unary()?)));
        }
        if self.peek() == Some(&Tok::LParen) {
            self.pos += 1;
            let e = self.or()?;
            self.expect(Tok::RParen, "')'")?;
            return Ok(e);
        }
        if self.is_word("IsMatch") {
            let col = self.col();
            self.pos += 1;
            self.expect(Tok::LParen, "'(' after IsMatch")?;
            let target = self.operand()?;
            self.expect(Tok::Comma, "',' between IsMatch's arguments")?;
            let pat_col = self.col();
            let Some(Tok::Str(pat)) = self.peek().cloned() else {
                return Err(err(
                    pat_col,
                    "IsMatch's second argument must be a string (the regex)",
                ));
            };
            self.pos += 1;
            self.expect(Tok::RParen, "')' after IsMatch's arguments")?;
            let re = Regex::new(&pat).map_err(|e| err(pat_col, format!("bad regex: {e}")))?;
            let _ = col;
            return Ok(Expr::IsMatch(target, re));
        }
        let col = self.col();
        let left = self.operand()?;
        match self.peek() {
            Some(Tok::Op(op)) => {
                let op = *op;
                self.pos += 1;
                let right = self.operand()?;
                Ok(Expr::Cmp(left, op, right))
            }
            _ => match left {
                Operand::Lit(Lit::Bool(b)) => Ok(Expr::Const(b)),
                _ => Err(err(
                    col,
                    "expected a comparison (==, !=, <, <=, >, >=) or IsMatch(...)",
                )),
            },
        }
    }

    fn key(&mut self) -> Result<String, ParseError> {
        self.expect(Tok::LBracket, "'[' and a quoted key")?;
        let col = self.col();
        let Some(Tok::Str(k)) = self.peek().cloned() else {
            return Err(err(col, "expected a quoted attribute key"));
        };
        self.pos += 1;
        self.expect(Tok::RBracket, "']'")?;
        Ok(k)
    }

    fn operand(&mut self) -> Result<Operand, ParseError> {
        let col = self.col();
        let Some(t) = self.peek().cloned() else {
            return Err(err(col, "expected a value or a path, found the end"));
        };
        self.pos += 1;
        Ok(match t {
            Tok::Str(s) => Operand::Lit(Lit::Str(s)),
            Tok::Int(i) => Operand::Lit(Lit::Int(i)),
            Tok::Float(f) => Operand::Lit(Lit::Float(f)),
            Tok::Ident(id) => {
                let id = id.strip_prefix("span.").unwrap_or(&id).to_string();
                match id.as_str() {
                    "true" => Operand::Lit(Lit::Bool(true)),
                    "false" => Operand::Lit(Lit::Bool(false)),
                    "nil" => Operand::Lit(Lit::Nil),
                    "name" => Operand::Name,
                    "kind" => Operand::Kind,
                    "status" | "status.code" => Operand::Status,
                    "duration" => Operand::Duration,
                    "attributes" => Operand::Attr(self.key()?),
                    "resource.attributes" => Operand::ResourceAttr(self.key()?),
                    "trace_id" | "trace_id.string" | "traceID" => Operand::TraceId,
                    "span_id" | "span_id.string" | "spanID" => Operand::SpanId,
                    c => match constant(c) {
                        Some(v) => Operand::Lit(Lit::Int(v)),
                        None => {
                            return Err(err(
                                col,
                                format!(
                                    "unknown name {c:?} (paths: name, kind, status, duration, trace_id, span_id, attributes[\"k\"], resource.attributes[\"k\"])"
                                ),
                            ))
                        }
                    },
                }
            }
            other => {
                return Err(err(
                    col,
                    format!("expected a value or a path, found {:?}", other.to_string()),
                ))
            }
        })
    }
}

fn constant(c: &str) -> Option<i64> {
    Some(match c {
        "SPAN_KIND_UNSPECIFIED" => 0,
        "SPAN_KIND_INTERNAL" => 1,
        "SPAN_KIND_SERVER" => 2,
        "SPAN_KIND_CLIENT" => 3,
        "SPAN_KIND_PRODUCER" => 4,
        "SPAN_KIND_CONSUMER" => 5,
        "STATUS_CODE_UNSET" => 0,
        "STATUS_CODE_OK" => 1,
        "STATUS_CODE_ERROR" => 2,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sampling::tests::TestSpan;

    fn eval(src: &str, s: &TestSpan) -> bool {
        Expr::compile(src)
            .unwrap_or_else(|e| panic!("{src}: {e}"))
            .eval(s)
    }

    #[test]
    fn conditions() {
        let s = TestSpan::new("GET /api/payment", 2, 2, 1_500_000_000)
            .attr("http.route", AttrValueOwned::Str("/api/payment".into()))
            .attr("http.response.status_code", AttrValueOwned::Int(503))
            .attr("user.tier", AttrValueOwned::Str("premium".into()))
            .resource("service.name", "checkout");
        assert!(eval(r#"name == "GET /api/payment""#, &s));
        assert!(eval(
            "kind == SPAN_KIND_SERVER and status == STATUS_CODE_ERROR",
            &s
        ));
        assert!(eval("duration > 1s and duration <= 1500ms", &s));
        assert!(eval("duration >= 1500000000", &s));
        assert!(eval(
            r#"attributes["http.response.status_code"] >= 500"#,
            &s
        ));
        assert!(eval(
            r#"attributes["user.tier"] == "premium" or attributes["x"] == 1"#,
            &s
        ));
        assert!(eval(r#"not (attributes["user.tier"] == "free")"#, &s));
        assert!(eval(
            r#"resource.attributes["service.name"] == "checkout""#,
            &s
        ));
        assert!(eval(
            r#"IsMatch(attributes["http.route"], "^/api/(payment|order)$")"#,
            &s
        ));
        assert!(!eval(r#"IsMatch(attributes["missing"], ".*")"#, &s));
        assert!(eval(r#"attributes["missing"] == nil"#, &s));
        assert!(eval(r#"attributes["missing"] != "x""#, &s));
        assert!(!eval(r#"attributes["user.tier"] > 5"#, &s));
        assert!(eval("span.status.code == 2 and true", &s));
        assert!(eval(
            r#"attributes["http.response.status_code"] > 499.5"#,
            &s
        ));
    }

    #[test]
    fn errors_have_columns() {
        let e = Expr::compile(r#"name = "x""#).unwrap_err();
        assert_eq!(e.col, 6, "{e}");
        let e = Expr::compile(r#"attributes["a"] == "x" and"#).unwrap_err();
        assert_eq!(e.col, 27, "{e}");
        let e = Expr::compile(r#"IsMatch(name, "(")"#).unwrap_err();
        assert!(e.msg.contains("bad regex"), "{e}");
        assert_eq!(e.col, 15);
        let e = Expr::compile("durtion > 5").unwrap_err();
        assert!(e.msg.contains("unknown name \"durtion\""), "{e}");
        assert_eq!(e.col, 1);
        assert!(Expr::compile("duration > 5parsecs").is_err());
        assert!(Expr::compile(r#"name == "unterminated"#).is_err());
        assert!(Expr::compile("name").is_err());
        assert!(Expr::compile("(name == \"a\"").is_err());
    }

    use crate::sampling::tests::AttrValueOwned;
}
