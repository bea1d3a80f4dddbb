//! Python's expression grammar (`ast.parse(text, mode="eval")`) as far as BFCL's answers
//! need it, into a small tree: constants, names, attributes, containers, calls with their
//! keyword arguments, operators and subscripts; what Python accepts but BFCL cannot resolve
//! (comparisons, boolean operators, comprehensions, lambdas, f-strings) is parsed and kept as
//! `Other`, so it fails an answer only where BFCL would look at it. `unparse` is
//! `ast.unparse`, close enough for BFCL's string comparison.

use super::lex::{KEYWORDS, Lexer, Tok};
use crate::value::Py;

/// A parsed expression; `Other` is syntax that is valid but that BFCL's resolver rejects.
#[derive(Debug, Clone)]
pub(super) enum Expr {
    Name(String),
    Const(Py),
    Ellipsis,
    Attr(Box<Expr>, String),
    List(Vec<Expr>),
    Tuple(Vec<Expr>),
    Set(Vec<Expr>),
    Dict(Vec<(Option<Expr>, Expr)>),
    Call {
        func: Box<Expr>,
        args: Vec<Expr>,
        /// `None`: `**mapping`.
        keywords: Vec<(Option<String>, Expr)>,
    },
    Unary(char, Box<Expr>),
    Bin(&'static str, Box<Expr>, Box<Expr>),
    Subscript(Box<Expr>, String),
    Lambda,
    /// Valid Python that BFCL cannot resolve; the text is its source.
    Other(&'static str, String),
}

struct Parser<'a> {
    src: &'a str,
    toks: Vec<(Tok, usize)>,
    at: usize,
}

pub(super) type R<T> = Result<T, String>;

impl Parser<'_> {
    fn peek(&self) -> &Tok {
        &self.toks[self.at].0
    }

    fn offset(&self) -> usize {
        self.toks[self.at].1
    }

    fn bump(&mut self) -> Tok {
        let t = self.toks[self.at].0.clone();
        if t != Tok::End {
            self.at += 1;
        }
        t
    }

    fn is_op(&self, op: &str) -> bool {
        matches!(self.peek(), Tok::Op(o) if *o == op)
    }

    fn is_kw(&self, kw: &str) -> bool {
        matches!(self.peek(), Tok::Name(n) if n == kw)
    }

    fn eat_op(&mut self, op: &str) -> bool {
        let yes = self.is_op(op);
        if yes {
            self.at += 1;
        }
        yes
    }

    fn eat_kw(&mut self, kw: &str) -> bool {
        let yes = self.is_kw(kw);
        if yes {
            self.at += 1;
        }
        yes
    }

    fn expect_op(&mut self, op: &str) -> R<()> {
        if self.eat_op(op) {
            Ok(())
        } else {
            Err(format!("expected `{op}` at offset {}", self.offset()))
        }
    }

    fn source_from(&self, start: usize) -> String {
        self.src[start..self.offset()].trim().to_string()
    }

    /// `test`: a conditional expression or a lambda.
    fn expr(&mut self) -> R<Expr> {
        if self.eat_kw("lambda") {
            // Parameters up to the colon, then the body.
            while !self.is_op(":") {
                if *self.peek() == Tok::End {
                    return Err("unfinished lambda".into());
                }
                self.bump();
            }
            self.bump();
            self.expr()?;
            return Ok(Expr::Lambda);
        }
        let start = self.offset();
        let e = self.or_test()?;
        if self.eat_kw("if") {
            self.or_test()?;
            if !self.eat_kw("else") {
                return Err("expected `else`".into());
            }
            self.expr()?;
            return Ok(Expr::Other(
                "conditional expression",
                self.source_from(start),
            ));
        }
        if self.eat_op(":=") {
            self.expr()?;
            return Ok(Expr::Other(
                "assignment expression",
                self.source_from(start),
            ));
        }
        Ok(e)
    }

    fn or_test(&mut self) -> R<Expr> {
        let start = self.offset();
        let mut e = self.and_test()?;
        while self.eat_kw("or") {
            self.and_test()?;
            e = Expr::Other("boolean operation", self.source_from(start));
        }
        Ok(e)
    }

    fn and_test(&mut self) -> R<Expr> {
        let start = self.offset();
        let mut e = self.not_test()?;
        while self.eat_kw("and") {
            self.not_test()?;
            e = Expr::Other("boolean operation", self.source_from(start));
        }
        Ok(e)
    }

    fn not_test(&mut self) -> R<Expr> {
        if self.eat_kw("not") {
            return Ok(Expr::Unary('!', Box::new(self.not_test()?)));
        }
        self.comparison()
    }

    fn comparison(&mut self) -> R<Expr> {
        let start = self.offset();
        let mut e = self.binary(0)?;
        loop {
            let op = ["<", ">", "==", ">=", "<=", "!="]
                .iter()
                .any(|o| self.is_op(o));
            if op || self.is_kw("in") || self.is_kw("is") {
                self.bump();
                self.eat_kw("not");
            } else if self.is_kw("not") {
                self.bump();
                if !self.eat_kw("in") {
                    return Err("expected `in` after `not`".into());
                }
            } else {
                return Ok(e);
            }
            self.binary(0)?;
            e = Expr::Other("comparison", self.source_from(start));
        }
    }

    /// Binary operators by precedence level, lowest first.
    fn binary(&mut self, level: usize) -> R<Expr> {
        const LEVELS: &[&[&str]] = &[
            &["|"],
            &["^"],
            &["&"],
            &["<<", ">>"],
            &["+", "-"],
            &["*", "/", "//", "%", "@"],
        ];
        if level == LEVELS.len() {
            return self.factor();
        }
        let mut e = self.binary(level + 1)?;
        loop {
            let Some(op) = LEVELS[level].iter().find(|o| self.is_op(o)) else {
                return Ok(e);
            };
            self.bump();
            let rhs = self.binary(level + 1)?;
            e = Expr::Bin(op, Box::new(e), Box::new(rhs));
        }
    }

    fn factor(&mut self) -> R<Expr> {
        for (op, c) in [("-", '-'), ("+", '+'), ("~", '~')] {
            if self.eat_op(op) {
                return Ok(Expr::Unary(c, Box::new(self.factor()?)));
            }
        }
        self.power()
    }

    fn power(&mut self) -> R<Expr> {
        let start = self.offset();
        let awaited = self.eat_kw("await");
        let e = self.primary()?;
        let e = if awaited {
            Expr::Other("await", self.source_from(start))
        } else {
            e
        };
        if self.eat_op("**") {
            let rhs = self.factor()?;
            return Ok(Expr::Bin("**", Box::new(e), Box::new(rhs)));
        }
        Ok(e)
    }

    fn primary(&mut self) -> R<Expr> {
        let mut e = self.atom()?;
        loop {
            if self.eat_op(".") {
                match self.bump() {
                    Tok::Name(n) if !KEYWORDS.contains(&n.as_str()) => {
                        e = Expr::Attr(Box::new(e), n)
                    }
                    _ => return Err("expected a name after `.`".into()),
                }
            } else if self.is_op("(") {
                self.bump();
                e = self.call(e)?;
            } else if self.is_op("[") {
                let open = self.offset();
                self.bump();
                self.subscript_body()?;
                let inner = self.src[open + 1..self.offset()].trim().to_string();
                self.expect_op("]")?;
                e = Expr::Subscript(Box::new(e), inner);
            } else {
                return Ok(e);
            }
        }
    }

    fn subscript_body(&mut self) -> R<()> {
        loop {
            if self.is_op("]") {
                return Ok(());
            }
            if !self.is_op(":") && !self.is_op(",") {
                self.expr()?;
            }
            if !(self.eat_op(":") || self.eat_op(",")) {
                return Ok(());
            }
        }
    }

    /// `for ... in ... [if ...]` clauses after a comprehension's element.
    fn comprehension(&mut self) -> R<()> {
        while self.eat_kw("for") || (self.eat_kw("async") && self.eat_kw("for")) {
            self.target_list()?;
            if !self.eat_kw("in") {
                return Err("expected `in` in a comprehension".into());
            }
            self.or_test()?;
            while self.eat_kw("if") {
                self.or_test()?;
            }
        }
        Ok(())
    }

    fn target_list(&mut self) -> R<()> {
        loop {
            self.eat_op("*");
            self.binary(0)?;
            if !self.eat_op(",") || self.is_kw("in") {
                return Ok(());
            }
        }
    }

    fn call(&mut self, func: Expr) -> R<Expr> {
        let (mut args, mut keywords) = (vec![], vec![]);
        while !self.is_op(")") {
            let start = self.offset();
            if self.eat_op("**") {
                keywords.push((None, self.expr()?));
            } else if self.eat_op("*") {
                self.expr()?;
                args.push(Expr::Other("starred", self.source_from(start)));
            } else if let (Tok::Name(n), Some((Tok::Op("="), _))) =
                (self.peek().clone(), self.toks.get(self.at + 1))
            {
                if KEYWORDS.contains(&n.as_str()) {
                    return Err(format!("`{n}` cannot be a keyword argument"));
                }
                self.at += 2;
                keywords.push((Some(n), self.expr()?));
            } else {
                let e = self.expr()?;
                if self.is_kw("for") || self.is_kw("async") {
                    // Only a call's sole argument may be a bare generator.
                    if !args.is_empty() || !keywords.is_empty() {
                        return Err("generator expression must be parenthesized".into());
                    }
                    self.comprehension()?;
                    args.push(Expr::Other("generator", self.source_from(start)));
                    if !self.is_op(")") {
                        return Err("generator expression must be parenthesized".into());
                    }
                    continue;
                }
                if !keywords.is_empty() {
                    return Err("positional argument follows keyword argument".into());
                }
                args.push(e);
            }
            if !self.eat_op(",") {
                break;
            }
        }
        self.expect_op(")")?;
        Ok(Expr::Call {
            func: Box::new(func),
            args,
            keywords,
        })
    }

    /// Items up to `close`; `Err` on a comprehension (handled by the caller's check).
    fn items(&mut self, close: &str) -> R<(Vec<Expr>, bool, bool)> {
        let mut items = vec![];
        let mut trailing_comma = false;
        let mut comp = false;
        while !self.is_op(close) {
            let start = self.offset();
            let e = if self.eat_op("*") {
                self.binary(0)?;
                Expr::Other("starred", self.source_from(start))
            } else {
                self.expr()?
            };
            if items.is_empty() && (self.is_kw("for") || self.is_kw("async")) {
                self.comprehension()?;
                comp = true;
                break;
            }
            items.push(e);
            trailing_comma = self.eat_op(",");
            if !trailing_comma {
                break;
            }
        }
        self.expect_op(close)?;
        Ok((items, trailing_comma, comp))
    }

    fn atom(&mut self) -> R<Expr> {
        let start = self.offset();
        match self.bump() {
            Tok::Name(n) => match n.as_str() {
                "True" => Ok(Expr::Const(Py::Bool(true))),
                "False" => Ok(Expr::Const(Py::Bool(false))),
                "None" => Ok(Expr::Const(Py::None)),
                k if KEYWORDS.contains(&k) => Err(format!("unexpected keyword `{k}`")),
                _ => Ok(Expr::Name(n)),
            },
            Tok::Int(i) => Ok(Expr::Const(Py::Int(i))),
            Tok::Float(f) => Ok(Expr::Const(Py::Float(f))),
            Tok::Imag => Ok(Expr::Other("complex number", self.source_from(start))),
            Tok::Str(s) => {
                // Adjacent literals are one string; mixing in an f-string makes it one too.
                let mut s = s;
                let mut other = false;
                loop {
                    match self.peek().clone() {
                        Tok::Str(t) => {
                            s.push_str(&t);
                            self.bump();
                        }
                        Tok::OtherStr => {
                            other = true;
                            self.bump();
                        }
                        _ => break,
                    }
                }
                Ok(if other {
                    Expr::Other("f-string or bytes", self.source_from(start))
                } else {
                    Expr::Const(Py::Str(s))
                })
            }
            Tok::OtherStr => {
                while matches!(self.peek(), Tok::Str(_) | Tok::OtherStr) {
                    self.bump();
                }
                Ok(Expr::Other("f-string or bytes", self.source_from(start)))
            }
            Tok::Op("...") => Ok(Expr::Ellipsis),
            Tok::Op("(") => {
                if self.eat_op(")") {
                    return Ok(Expr::Tuple(vec![]));
                }
                let (items, trailing, comp) = self.items(")")?;
                if comp {
                    return Ok(Expr::Other("generator", self.source_from(start)));
                }
                if items.len() == 1 && !trailing {
                    return Ok(items.into_iter().next().expect("one"));
                }
                Ok(Expr::Tuple(items))
            }
            Tok::Op("[") => {
                let (items, _, comp) = self.items("]")?;
                if comp {
                    return Ok(Expr::Other("list comprehension", self.source_from(start)));
                }
                Ok(Expr::List(items))
            }
            Tok::Op("{") => self.braces(start),
            Tok::End => Err("unexpected end of input".into()),
            t => Err(format!("unexpected {t:?} at offset {start}")),
        }
    }

    fn braces(&mut self, start: usize) -> R<Expr> {
        if self.eat_op("}") {
            return Ok(Expr::Dict(vec![]));
        }
        // A dict if its first item is `k: v` or `**m`, else a set.
        let mut pairs = vec![];
        let mut set = vec![];
        let mut is_dict = None;
        loop {
            if self.is_op("}") {
                break;
            }
            if self.eat_op("**") {
                if is_dict == Some(false) {
                    return Err("invalid syntax in a set".into());
                }
                is_dict = Some(true);
                pairs.push((None, self.binary(0)?));
            } else {
                let k = self.expr()?;
                if self.eat_op(":") {
                    if is_dict == Some(false) {
                        return Err("invalid syntax in a set".into());
                    }
                    is_dict = Some(true);
                    let v = self.expr()?;
                    if pairs.is_empty() && (self.is_kw("for") || self.is_kw("async")) {
                        self.comprehension()?;
                        self.expect_op("}")?;
                        return Ok(Expr::Other("dict comprehension", self.source_from(start)));
                    }
                    pairs.push((Some(k), v));
                } else {
                    if is_dict == Some(true) {
                        return Err("expected `:` in a dict".into());
                    }
                    is_dict = Some(false);
                    if set.is_empty() && (self.is_kw("for") || self.is_kw("async")) {
                        self.comprehension()?;
                        self.expect_op("}")?;
                        return Ok(Expr::Other("set comprehension", self.source_from(start)));
                    }
                    set.push(k);
                }
            }
            if !self.eat_op(",") {
                break;
            }
        }
        self.expect_op("}")?;
        Ok(if is_dict == Some(false) {
            Expr::Set(set)
        } else {
            Expr::Dict(pairs)
        })
    }
}

pub(super) fn parse_expr(src: &str) -> R<Expr> {
    let toks = Lexer { src, pos: 0 }.tokens()?;
    let mut p = Parser { src, toks, at: 0 };
    let e = p.expr()?;
    // `mode="eval"` takes one expression; a bare tuple `a, b` is one too.
    if p.is_op(",") {
        let mut items = vec![e];
        while p.eat_op(",") {
            if *p.peek() == Tok::End {
                break;
            }
            items.push(p.expr()?);
        }
        if *p.peek() != Tok::End {
            return Err(format!("invalid syntax at offset {}", p.offset()));
        }
        return Ok(Expr::Tuple(items));
    }
    if *p.peek() != Tok::End {
        return Err(format!("invalid syntax at offset {}", p.offset()));
    }
    Ok(e)
}

/// `ast.unparse`, close enough for BFCL's string comparison (which drops spaces, commas and
/// quotes' kind).
pub(super) fn unparse(e: &Expr) -> String {
    match e {
        Expr::Name(n) => n.clone(),
        Expr::Const(v) => v.repr(),
        Expr::Ellipsis => "...".into(),
        Expr::Attr(v, n) => format!("{}.{n}", unparse(v)),
        Expr::List(v) => format!("[{}]", unparse_all(v)),
        Expr::Tuple(v) if v.len() == 1 => format!("({},)", unparse(&v[0])),
        Expr::Tuple(v) => format!("({})", unparse_all(v)),
        Expr::Set(v) => format!("{{{}}}", unparse_all(v)),
        Expr::Dict(kv) => {
            let items: Vec<String> = kv
                .iter()
                .map(|(k, v)| match k {
                    Some(k) => format!("{}: {}", unparse(k), unparse(v)),
                    None => format!("**{}", unparse(v)),
                })
                .collect();
            format!("{{{}}}", items.join(", "))
        }
        Expr::Call {
            func,
            args,
            keywords,
        } => {
            let mut parts: Vec<String> = args.iter().map(unparse).collect();
            parts.extend(keywords.iter().map(|(k, v)| match k {
                Some(k) => format!("{k}={}", unparse(v)),
                None => format!("**{}", unparse(v)),
            }));
            format!("{}({})", unparse(func), parts.join(", "))
        }
        Expr::Unary(op, v) => match op {
            '!' => format!("not {}", unparse(v)),
            c => format!("{c}{}", unparse(v)),
        },
        Expr::Bin(op, a, b) => format!("{} {op} {}", unparse(a), unparse(b)),
        Expr::Subscript(v, s) => format!("{}[{s}]", unparse(v)),
        Expr::Lambda => "lambda".into(),
        Expr::Other(_, src) => src.clone(),
    }
}

fn unparse_all(v: &[Expr]) -> String {
    v.iter().map(unparse).collect::<Vec<_>>().join(", ")
}
