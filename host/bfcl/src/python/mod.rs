//! Reading a model's answer the way BFCL's prompting handlers do: the text, stripped of
//! backticks, newlines and spaces at its ends and wrapped in `[...]` where it is not, must be
//! a Python expression (`ast.parse(..., mode="eval")`) that is a list of calls; each call's
//! keyword arguments become its parameters (positional ones are ignored, as BFCL ignores
//! them). Values follow BFCL's `resolve_ast_by_type`, quirks included, because its scores are
//! what a user compares with: a bare name is the string of its name, a nested call without
//! keywords is its source text, one with keywords a `{name: {kw: value}}` dict, arithmetic is
//! evaluated, and a unary operator negates its constant operand (so `+5` reads as `-5` and
//! `not True` as `-1`, as in BFCL). Anything BFCL cannot resolve (an attribute, a comparison,
//! a comprehension, a lambda, an f-string) is an error here too: for an AST category that is
//! a failed answer, for an irrelevance category the absence of a call.
//!
//! The parser covers Python's expression grammar, so that syntax Python accepts in places BFCL
//! never looks at (a positional argument `x > 1`, a generator) does not fail the answer.

mod lex;
mod parse;

use crate::value::Py;
use parse::{Expr, R, parse_expr, unparse};

/// BFCL's `resolve_ast_by_type`.
fn resolve(e: &Expr) -> R<Py> {
    Ok(match e {
        Expr::Const(v) => v.clone(),
        Expr::Ellipsis => Py::Str("...".into()),
        Expr::Unary(_, v) => match &**v {
            // `-value.operand.value`, whatever the operator: BFCL's reading, kept.
            Expr::Const(Py::Int(i)) => Py::Int(i.checked_neg().ok_or("integer overflow")?),
            Expr::Const(Py::Float(f)) => Py::Float(-f),
            Expr::Const(Py::Bool(b)) => Py::Int(-i64::from(*b)),
            Expr::Const(other) => {
                return Err(format!(
                    "bad operand type for unary -: '{}'",
                    other.type_name()
                ));
            }
            _ => return Err("unsupported operand of a unary operator".into()),
        },
        Expr::List(v) => Py::List(v.iter().map(resolve).collect::<R<_>>()?),
        Expr::Tuple(v) => Py::Tuple(v.iter().map(resolve).collect::<R<_>>()?),
        Expr::Dict(kv) => {
            let mut out: Vec<(Py, Py)> = vec![];
            for (k, v) in kv {
                let k = k.as_ref().ok_or("Unsupported AST type: NoneType")?;
                let (k, v) = (resolve(k)?, resolve(v)?);
                if matches!(k, Py::List(_) | Py::Dict(_)) {
                    return Err(format!("unhashable type: '{}'", k.type_name()));
                }
                match out.iter_mut().find(|(x, _)| x.py_eq(&k)) {
                    Some(slot) => slot.1 = v,
                    None => out.push((k, v)),
                }
            }
            Py::Dict(out)
        }
        Expr::Bin(..) => eval(e)?,
        Expr::Name(n) => Py::Str(n.clone()),
        Expr::Call { keywords, .. } if keywords.is_empty() => Py::Str(unparse(e)),
        Expr::Call { .. } => {
            let (name, args) = call(e)?;
            Py::Dict(vec![(Py::Str(name), args)])
        }
        Expr::Subscript(v, s) => Py::Str(format!("{}[{s}]", unparse(v))),
        Expr::Lambda => return Err("a lambda cannot be resolved".into()),
        Expr::Attr(..) => return Err("Unsupported AST type: Attribute".into()),
        Expr::Set(_) => return Err("Unsupported AST type: Set".into()),
        Expr::Other(kind, _) => return Err(format!("Unsupported AST type: {kind}")),
    })
}

/// `eval(ast.unparse(binop))`: literal arithmetic as Python computes it; a name or anything
/// else not a literal is a NameError there and an error here.
fn eval(e: &Expr) -> R<Py> {
    match e {
        Expr::Const(v) => Ok(v.clone()),
        Expr::List(v) => Ok(Py::List(v.iter().map(eval).collect::<R<_>>()?)),
        Expr::Tuple(v) => Ok(Py::Tuple(v.iter().map(eval).collect::<R<_>>()?)),
        Expr::Unary(op, v) => {
            let v = eval(v)?;
            match (op, v) {
                ('-', Py::Int(i)) => Ok(Py::Int(i.checked_neg().ok_or("integer overflow")?)),
                ('-', Py::Bool(b)) => Ok(Py::Int(-i64::from(b))),
                ('-', Py::Float(f)) => Ok(Py::Float(-f)),
                ('+', Py::Bool(b)) => Ok(Py::Int(i64::from(b))),
                ('+', v @ (Py::Int(_) | Py::Float(_))) => Ok(v),
                ('~', Py::Int(i)) => Ok(Py::Int(!i)),
                ('!', v) => Ok(Py::Bool(!truthy(&v))),
                _ => Err("bad operand for a unary operator".into()),
            }
        }
        Expr::Bin(op, a, b) => arith(op, eval(a)?, eval(b)?),
        _ => Err(format!("name '{}' is not defined", unparse(e))),
    }
}

fn truthy(v: &Py) -> bool {
    match v {
        Py::None => false,
        Py::Bool(b) => *b,
        Py::Int(i) => *i != 0,
        Py::Float(f) => *f != 0.0,
        Py::Str(s) => !s.is_empty(),
        Py::List(x) | Py::Tuple(x) => !x.is_empty(),
        Py::Dict(x) => !x.is_empty(),
    }
}

fn as_int(v: &Py) -> Option<i64> {
    match v {
        Py::Int(i) => Some(*i),
        Py::Bool(b) => Some(i64::from(*b)),
        _ => None,
    }
}

fn arith(op: &str, a: Py, b: Py) -> R<Py> {
    let overflow = || "integer overflow".to_string();
    if let (Some(x), Some(y)) = (as_int(&a), as_int(&b)) {
        return Ok(match op {
            "+" => Py::Int(x.checked_add(y).ok_or_else(overflow)?),
            "-" => Py::Int(x.checked_sub(y).ok_or_else(overflow)?),
            "*" => Py::Int(x.checked_mul(y).ok_or_else(overflow)?),
            "/" if y == 0 => return Err("division by zero".into()),
            "/" => Py::Float(x as f64 / y as f64),
            "//" | "%" if y == 0 => return Err("integer division or modulo by zero".into()),
            "//" => Py::Int(x.div_euclid(y) - i64::from(y < 0 && x.rem_euclid(y) != 0)),
            "%" => {
                let r = x.rem_euclid(y);
                Py::Int(if y < 0 && r != 0 { r + y } else { r })
            }
            "**" if y >= 0 => Py::Int(
                u32::try_from(y)
                    .ok()
                    .and_then(|y| x.checked_pow(y))
                    .ok_or_else(overflow)?,
            ),
            "**" => Py::Float((x as f64).powf(y as f64)),
            "&" => Py::Int(x & y),
            "|" => Py::Int(x | y),
            "^" => Py::Int(x ^ y),
            "<<" => Py::Int(
                u32::try_from(y)
                    .ok()
                    .and_then(|y| x.checked_shl(y))
                    .ok_or_else(overflow)?,
            ),
            ">>" => Py::Int(x >> y.clamp(0, 63)),
            _ => return Err(format!("unsupported operand for {op}")),
        });
    }
    let num = |v: &Py| match v {
        Py::Float(f) => Some(*f),
        v => as_int(v).map(|i| i as f64),
    };
    if let (Some(x), Some(y)) = (num(&a), num(&b)) {
        return Ok(Py::Float(match op {
            "+" => x + y,
            "-" => x - y,
            "*" => x * y,
            "/" | "//" | "%" if y == 0.0 => return Err("float division by zero".into()),
            "/" => x / y,
            "//" => (x / y).floor(),
            "%" => x - y * (x / y).floor(),
            "**" => x.powf(y),
            _ => return Err(format!("unsupported operand for {op} on floats")),
        }));
    }
    match (op, a, b) {
        ("+", Py::Str(x), Py::Str(y)) => Ok(Py::Str(x + &y)),
        ("+", Py::List(mut x), Py::List(y)) => {
            x.extend(y);
            Ok(Py::List(x))
        }
        ("+", Py::Tuple(mut x), Py::Tuple(y)) => {
            x.extend(y);
            Ok(Py::Tuple(x))
        }
        ("*", Py::Str(s), n) | ("*", n, Py::Str(s)) if as_int(&n).is_some() => Ok(Py::Str(
            s.repeat(as_int(&n).unwrap_or(0).clamp(0, 1 << 16) as usize),
        )),
        ("*", Py::List(v), n) | ("*", n, Py::List(v)) if as_int(&n).is_some() => {
            let k = as_int(&n).unwrap_or(0).clamp(0, 1 << 16) as usize;
            Ok(Py::List(
                v.iter().cloned().cycle().take(v.len() * k).collect(),
            ))
        }
        (op, a, b) => Err(format!(
            "unsupported operand type(s) for {op}: '{}' and '{}'",
            a.type_name(),
            b.type_name()
        )),
    }
}

/// BFCL's `resolve_ast_call`: the dotted name and the keyword arguments (later wins).
fn call(e: &Expr) -> R<(String, Py)> {
    let Expr::Call { func, keywords, .. } = e else {
        return Err("not a call".into());
    };
    let mut parts = vec![];
    let mut f = &**func;
    while let Expr::Attr(inner, name) = f {
        parts.push(name.clone());
        f = inner;
    }
    if let Expr::Name(n) = f {
        parts.push(n.clone());
    }
    parts.reverse();
    let mut args: Vec<(Py, Py)> = vec![];
    for (k, v) in keywords {
        let k = k.clone().ok_or("`**` arguments cannot be resolved")?;
        let v = resolve(v)?;
        match args
            .iter_mut()
            .find(|(x, _)| matches!(x, Py::Str(s) if *s == k))
        {
            Some(slot) => slot.1 = v,
            None => args.push((Py::Str(k), v)),
        }
    }
    Ok((parts.join("."), Py::Dict(args)))
}

/// One call: its name and its parameters (a `Py::Dict` with string keys).
pub type Call = (String, Py);

/// BFCL's `default_decode_ast_prompting` for Python: the calls in `text`, or why there are none.
pub fn decode_calls(text: &str) -> Result<Vec<Call>, String> {
    let t = text.trim_matches(|c| matches!(c, '`' | '\n' | ' '));
    let mut s = String::with_capacity(t.len() + 2);
    if !t.starts_with('[') {
        s.push('[');
    }
    s.push_str(t);
    if !t.ends_with(']') {
        s.push(']');
    }
    let body = parse_expr(s.trim().trim_matches('\''))?;
    match &body {
        Expr::Call { .. } => Ok(vec![call(&body)?]),
        Expr::List(items) | Expr::Tuple(items) | Expr::Set(items) => items
            .iter()
            .map(|e| match e {
                Expr::Call { .. } => call(e),
                other => Err(format!("not a function call: {}", unparse(other))),
            })
            .collect(),
        other => Err(format!("not a list of function calls: {}", unparse(other))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(text: &str) -> String {
        match decode_calls(text) {
            Ok(calls) => calls
                .iter()
                .map(|(n, a)| format!("{n}{}", a.repr()))
                .collect::<Vec<_>>()
                .join(" | "),
            Err(e) => format!("ERR {e}"),
        }
    }

    #[test]
    fn calls_read_as_bfcl_reads_them() {
        assert_eq!(
            one("[calc.area(base=10, height=5.0, unit='cm')]"),
            "calc.area{'base': 10, 'height': 5.0, 'unit': 'cm'}"
        );
        assert_eq!(
            one("f(a=1), g(b=[1, 2], c={'k': (1,)})"),
            "f{'a': 1} | g{'b': [1, 2], 'c': {'k': (1,)}}"
        );
        assert_eq!(
            one("```\n[f(x, a=-3, b=+2, c=not True)]\n```"),
            "f{'a': -3, 'b': -2, 'c': -1}"
        );
        assert_eq!(
            one("[f(a=2**10, b=1/4, c='x' 'y', d=...)]"),
            "f{'a': 1024, 'b': 0.25, 'c': 'xy', 'd': '...'}"
        );
        assert_eq!(
            one("[f(a=city, b=np.array([1,2]), c=g(k=1), d=x[1:2])]"),
            "f{'a': 'city', 'b': 'np.array([1, 2])', 'c': {'g': {'k': 1}}, 'd': 'x[1:2]'}"
        );
        assert_eq!(one("[f(a=1, a=2)]"), "f{'a': 2}");
        assert_eq!(
            one("[f(x > 1, a=1)]"),
            "f{'a': 1}",
            "positional arguments are ignored"
        );
        assert_eq!(one("[]"), "");
        assert!(one("I cannot help with that.").starts_with("ERR"));
        assert!(one("[f(a=math.pi)]").starts_with("ERR"));
        assert!(one("[f(a=x + 1)]").starts_with("ERR"));
        assert!(one("[f(a=lambda x: x)]").starts_with("ERR"));
        assert!(one("[f(a=f'{x}')]").starts_with("ERR"));
        assert!(one("[f(a=007)]").starts_with("ERR"));
        assert!(one("[f(a=1)] and [g(b=2)]").starts_with("ERR"));
        assert!(one("[f(a=1), 2]").starts_with("ERR"));
        assert!(one("[f(from=1)]").starts_with("ERR"));
        assert!(one("[f(a='unterminated)]").starts_with("ERR"));
    }
}
