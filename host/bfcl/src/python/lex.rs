//! The tokens of a Python expression: names, numbers (decimal, hex, octal, binary, floats,
//! imaginary), string literals with their prefixes and escapes (adjacent ones are joined by
//! the parser), operators; comments and line continuations skipped. Bytes and f-strings are
//! recognised but not read: BFCL's resolver rejects them.

#[derive(Debug, Clone, PartialEq)]
pub(super) enum Tok {
    Name(String),
    Int(i64),
    Float(f64),
    Imag,
    Str(String),
    /// An f-string or bytes literal: valid, not resolvable.
    OtherStr,
    Op(&'static str),
    End,
}

pub(super) const KEYWORDS: &[&str] = &[
    "False", "None", "True", "and", "as", "assert", "async", "await", "break", "class", "continue",
    "def", "del", "elif", "else", "except", "finally", "for", "from", "global", "if", "import",
    "in", "is", "lambda", "nonlocal", "not", "or", "pass", "raise", "return", "try", "while",
    "with", "yield",
];

const OPS: &[&str] = &[
    "**=", "//=", ">>=", "<<=", "...", "->", ":=", "**", "//", ">>", "<<", "<=", ">=", "==", "!=",
    "+=", "-=", "*=", "/=", "%=", "&=", "|=", "^=", "@=", "(", ")", "[", "]", "{", "}", ",", ":",
    ".", ";", "=", "+", "-", "*", "/", "%", "<", ">", "&", "|", "^", "~", "@", "!",
];

pub(super) struct Lexer<'a> {
    pub(super) src: &'a str,
    pub(super) pos: usize,
}

impl<'a> Lexer<'a> {
    fn rest(&self) -> &'a str {
        &self.src[self.pos..]
    }

    fn skip_blank(&mut self) -> Result<(), String> {
        loop {
            let r = self.rest();
            let Some(c) = r.chars().next() else {
                return Ok(());
            };
            if matches!(c, ' ' | '\t' | '\n' | '\r' | '\x0c') {
                self.pos += 1;
            } else if c == '#' {
                self.pos += r.find('\n').unwrap_or(r.len());
            } else if let Some(after) = r.strip_prefix('\\') {
                if after.starts_with('\n') {
                    self.pos += 2;
                } else if after.starts_with("\r\n") {
                    self.pos += 3;
                } else {
                    return Err("unexpected character after line continuation character".into());
                }
            } else {
                return Ok(());
            }
        }
    }

    pub(super) fn tokens(mut self) -> Result<Vec<(Tok, usize)>, String> {
        let mut out = vec![];
        loop {
            self.skip_blank()?;
            let start = self.pos;
            let r = self.rest();
            let Some(c) = r.chars().next() else {
                out.push((Tok::End, start));
                return Ok(out);
            };
            let tok = if c.is_ascii_digit()
                || (c == '.' && r[1..].starts_with(|d: char| d.is_ascii_digit()))
            {
                self.number()?
            } else if c == '"' || c == '\'' {
                self.string("")?
            } else if c == '_' || c.is_alphabetic() {
                let len = r
                    .find(|ch: char| !(ch == '_' || ch.is_alphanumeric()))
                    .unwrap_or(r.len());
                let word = &r[..len];
                let next = r[len..].chars().next();
                let prefix = word.to_ascii_lowercase();
                if matches!(next, Some('"' | '\''))
                    && matches!(
                        prefix.as_str(),
                        "r" | "u" | "b" | "f" | "br" | "rb" | "fr" | "rf"
                    )
                {
                    self.pos += len;
                    self.string(&prefix)?
                } else {
                    self.pos += len;
                    Tok::Name(word.to_string())
                }
            } else if let Some(op) = OPS.iter().find(|o| r.starts_with(**o)) {
                self.pos += op.len();
                Tok::Op(op)
            } else {
                return Err(format!("invalid character {c:?}"));
            };
            out.push((tok, start));
        }
    }

    fn number(&mut self) -> Result<Tok, String> {
        let r = self.rest();
        let lower = r.get(..2).map(|p| p.to_ascii_lowercase());
        let radix = match lower.as_deref() {
            Some("0x") => 16,
            Some("0o") => 8,
            Some("0b") => 2,
            _ => 10,
        };
        if radix != 10 {
            let len = 2 + r[2..]
                .find(|c: char| !(c.is_digit(radix) || c == '_'))
                .unwrap_or(r.len() - 2);
            let digits: String = r[2..len].chars().filter(|&c| c != '_').collect();
            self.pos += len;
            return i64::from_str_radix(&digits, radix)
                .map(Tok::Int)
                .map_err(|_| format!("invalid number {:?}", &r[..len]));
        }
        let bytes = r.as_bytes();
        let mut i = 0;
        let digits = |i: &mut usize| {
            while *i < bytes.len() && (bytes[*i].is_ascii_digit() || bytes[*i] == b'_') {
                *i += 1;
            }
        };
        digits(&mut i);
        let mut float = false;
        if i < bytes.len() && bytes[i] == b'.' {
            float = true;
            i += 1;
            digits(&mut i);
        }
        if i < bytes.len() && (bytes[i] == b'e' || bytes[i] == b'E') {
            let mut j = i + 1;
            if j < bytes.len() && (bytes[j] == b'+' || bytes[j] == b'-') {
                j += 1;
            }
            if j < bytes.len() && bytes[j].is_ascii_digit() {
                float = true;
                i = j;
                digits(&mut i);
            }
        }
        let text: String = r[..i].chars().filter(|&c| c != '_').collect();
        self.pos += i;
        if self.rest().starts_with(['j', 'J']) {
            self.pos += 1;
            return Ok(Tok::Imag);
        }
        if float {
            return text
                .parse::<f64>()
                .map(Tok::Float)
                .map_err(|_| format!("invalid number {text:?}"));
        }
        if text.len() > 1 && text.starts_with('0') && text.bytes().any(|b| b != b'0') {
            return Err("leading zeros in decimal integer literals are not permitted".into());
        }
        // Python's integers are unbounded; one past i64 is beyond any BFCL answer.
        text.parse::<i64>()
            .map(Tok::Int)
            .map_err(|_| format!("integer {text} is too large"))
    }

    fn string(&mut self, prefix: &str) -> Result<Tok, String> {
        let r = self.rest();
        let q = if r.starts_with("\"\"\"") {
            "\"\"\""
        } else if r.starts_with("'''") {
            "'''"
        } else {
            &r[..1]
        };
        let raw = prefix.contains('r');
        let mut out = String::new();
        let mut i = q.len();
        loop {
            let rest = &r[i..];
            if rest.starts_with(q) {
                i += q.len();
                break;
            }
            let Some(c) = rest.chars().next() else {
                return Err("unterminated string literal".into());
            };
            if c == '\n' && q.len() == 1 {
                return Err("unterminated string literal".into());
            }
            if c == '\\' {
                let Some(e) = rest[1..].chars().next() else {
                    return Err("unterminated string literal".into());
                };
                i += 1 + e.len_utf8();
                if raw {
                    out.push('\\');
                    out.push(e);
                    continue;
                }
                match e {
                    '\n' => {}
                    '\\' => out.push('\\'),
                    '\'' => out.push('\''),
                    '"' => out.push('"'),
                    'a' => out.push('\x07'),
                    'b' => out.push('\x08'),
                    'f' => out.push('\x0c'),
                    'n' => out.push('\n'),
                    'r' => out.push('\r'),
                    't' => out.push('\t'),
                    'v' => out.push('\x0b'),
                    '0'..='7' => {
                        let mut v = e.to_digit(8).expect("octal");
                        for _ in 0..2 {
                            match r[i..].chars().next().and_then(|d| d.to_digit(8)) {
                                Some(d) => {
                                    v = v * 8 + d;
                                    i += 1;
                                }
                                None => break,
                            }
                        }
                        out.push(char::from_u32(v).ok_or("invalid octal escape")?);
                    }
                    'x' | 'u' | 'U' => {
                        let n = match e {
                            'x' => 2,
                            'u' => 4,
                            _ => 8,
                        };
                        let hex = r.get(i..i + n).ok_or("truncated escape")?;
                        let v = u32::from_str_radix(hex, 16).map_err(|_| "truncated escape")?;
                        i += n;
                        out.push(char::from_u32(v).ok_or("invalid escape")?);
                    }
                    'N' => return Err("\\N{...} escapes are not read".into()),
                    other => {
                        // Python keeps an unknown escape as written (with a warning).
                        out.push('\\');
                        out.push(other);
                    }
                }
                continue;
            }
            out.push(c);
            i += c.len_utf8();
        }
        self.pos += i;
        if prefix.contains('b') || prefix.contains('f') {
            return Ok(Tok::OtherStr);
        }
        Ok(Tok::Str(out))
    }
}
