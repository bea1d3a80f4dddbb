//! The calculator's arithmetic, apart from the plugin's exports so the benchmark can compile
//! it natively as the peer of the sandboxed tool.

/// The longest expression read, in bytes.
const MAX_LEN: usize = 1000;
/// The deepest nesting of parentheses and unary signs: recursion depth stays bounded.
const MAX_DEPTH: usize = 64;

/// The value of `expr`, or what is wrong with it.
pub fn evaluate(expr: &str) -> Result<f64, String> {
    if expr.len() > MAX_LEN {
        return Err(format!(
            "the expression is longer than {MAX_LEN} characters"
        ));
    }
    let mut p = Parser {
        s: expr.as_bytes(),
        at: 0,
        depth: 0,
    };
    let v = p.sum()?;
    p.skip_space();
    if p.at < p.s.len() {
        return Err(format!(
            "unexpected `{}` at position {}",
            expr[p.at..].chars().next().unwrap_or(' '),
            p.at
        ));
    }
    if !v.is_finite() {
        return Err("the result is not a finite number".into());
    }
    Ok(v)
}

/// A whole number without a decimal point; others with up to 12 significant digits.
pub fn format_number(v: f64) -> String {
    if v == v.trunc() && v.abs() < 1e15 {
        return format!("{}", v as i64);
    }
    let s = format!("{:.*e}", 11, v);
    let parsed: f64 = s.parse().unwrap_or(v);
    let mut out = format!("{parsed}");
    if out.contains('e') {
        return out;
    }
    if out.contains('.') {
        while out.ends_with('0') {
            out.pop();
        }
    }
    out
}

struct Parser<'a> {
    s: &'a [u8],
    at: usize,
    depth: usize,
}

impl Parser<'_> {
    fn skip_space(&mut self) {
        while self.at < self.s.len() && self.s[self.at].is_ascii_whitespace() {
            self.at += 1;
        }
    }

    fn peek(&mut self) -> Option<u8> {
        self.skip_space();
        self.s.get(self.at).copied()
    }

    fn deeper(&mut self) -> Result<(), String> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(format!("nested deeper than {MAX_DEPTH} levels"));
        }
        Ok(())
    }

    fn sum(&mut self) -> Result<f64, String> {
        let mut v = self.product()?;
        while let Some(op @ (b'+' | b'-')) = self.peek() {
            self.at += 1;
            let r = self.product()?;
            v = if op == b'+' { v + r } else { v - r };
        }
        Ok(v)
    }

    fn product(&mut self) -> Result<f64, String> {
        let mut v = self.power()?;
        loop {
            let op = match self.peek() {
                Some(b'*') if self.s.get(self.at + 1) != Some(&b'*') => b'*',
                Some(op @ (b'/' | b'%')) => op,
                _ => return Ok(v),
            };
            self.at += 1;
            let r = self.power()?;
            if op != b'*' && r == 0.0 {
                return Err("division by zero".into());
            }
            v = match op {
                b'*' => v * r,
                b'/' => v / r,
                _ => v % r,
            };
        }
    }

    fn power(&mut self) -> Result<f64, String> {
        let base = self.unary()?;
        let op_len = match self.peek() {
            Some(b'^') => 1,
            Some(b'*') if self.s.get(self.at + 1) == Some(&b'*') => 2,
            _ => return Ok(base),
        };
        self.at += op_len;
        self.deeper()?;
        // Right-associative: 2^3^2 = 2^9.
        let exp = self.power()?;
        self.depth -= 1;
        Ok(base.powf(exp))
    }

    fn unary(&mut self) -> Result<f64, String> {
        match self.peek() {
            Some(sign @ (b'-' | b'+')) => {
                self.at += 1;
                self.deeper()?;
                let v = self.unary()?;
                self.depth -= 1;
                Ok(if sign == b'-' { -v } else { v })
            }
            Some(b'(') => {
                self.at += 1;
                self.deeper()?;
                let v = self.sum()?;
                self.depth -= 1;
                if self.peek() != Some(b')') {
                    return Err(format!("a `(` is not closed (position {})", self.at));
                }
                self.at += 1;
                Ok(v)
            }
            Some(c) if c.is_ascii_digit() || c == b'.' => self.number(),
            Some(_) => {
                let c = String::from_utf8_lossy(&self.s[self.at..])
                    .chars()
                    .next()
                    .unwrap_or(' ');
                Err(format!("unexpected `{c}` at position {}", self.at))
            }
            None => Err("the expression ends where a number was expected".into()),
        }
    }

    fn number(&mut self) -> Result<f64, String> {
        let start = self.at;
        while self.at < self.s.len()
            && (self.s[self.at].is_ascii_digit() || self.s[self.at] == b'.')
        {
            self.at += 1;
        }
        // Digits and dots are ASCII, so the slice is UTF-8.
        let text = std::str::from_utf8(&self.s[start..self.at]).expect("ascii");
        text.parse::<f64>()
            .map_err(|_| format!("`{text}` is not a number"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eval(s: &str) -> String {
        evaluate(s)
            .map(format_number)
            .unwrap_or_else(|e| format!("error: {e}"))
    }

    #[test]
    fn arithmetic_with_precedence() {
        assert_eq!(eval("(12 + 30) * 2"), "84");
        assert_eq!(eval("2 + 3 * 4"), "14");
        assert_eq!(eval("2 ^ 3 ^ 2"), "512");
        assert_eq!(eval("2 ** 10"), "1024");
        assert_eq!(eval("-3 * -(2 + 1)"), "9");
        assert_eq!(eval("7 % 3"), "1");
        assert_eq!(eval("1 / 3"), "0.333333333333");
        assert_eq!(eval("0.1 + 0.2"), "0.3");
        assert_eq!(eval("1e3"), "error: unexpected `e` at position 1");
    }

    #[test]
    fn bad_expressions_say_why() {
        assert_eq!(eval("1 / 0"), "error: division by zero");
        assert_eq!(eval("(1 + 2"), "error: a `(` is not closed (position 6)");
        assert_eq!(
            eval("2 +"),
            "error: the expression ends where a number was expected"
        );
        assert_eq!(eval("1.2.3"), "error: `1.2.3` is not a number");
        assert_eq!(eval("two"), "error: unexpected `t` at position 0");
        assert!(eval(&"(".repeat(100)).contains("nested deeper"));
        assert!(eval(&"-".repeat(100_000)).contains("longer than"));
        assert_eq!(eval("10 ^ 400"), "error: the result is not a finite number");
    }
}
