//! Python values as BFCL's checker sees them. The checker compares a model's arguments with
//! the possible answers using Python's own `==`, `in` and `type(x) == T`, so the distinctions
//! Python draws must survive here: `1 == 1.0 == True` yet `type(1) != type(True)`, a tuple is
//! never equal to a list, a dict compares by keys and values whatever their order. Possible
//! answers come from JSON (as `json.loads` gives them); a model's arguments come from the
//! Python-call parser (`python`) or, for native tool calls, from JSON again.

use std::fmt::Write;

#[derive(Debug, Clone)]
pub enum Py {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    List(Vec<Py>),
    Tuple(Vec<Py>),
    /// In insertion order, as Python keeps it; keys are unique under `py_eq`.
    Dict(Vec<(Py, Py)>),
}

impl Py {
    /// `type(x).__name__`.
    pub fn type_name(&self) -> &'static str {
        match self {
            Py::None => "NoneType",
            Py::Bool(_) => "bool",
            Py::Int(_) => "int",
            Py::Float(_) => "float",
            Py::Str(_) => "str",
            Py::List(_) => "list",
            Py::Tuple(_) => "tuple",
            Py::Dict(_) => "dict",
        }
    }

    /// `json.loads` of `v`: integers stay `int`, numbers written with a point or an exponent
    /// are `float`, objects keep their order (serde_json's `preserve_order`).
    pub fn from_json(v: &serde_json::Value) -> Py {
        use serde_json::Value as J;
        match v {
            J::Null => Py::None,
            J::Bool(b) => Py::Bool(*b),
            J::Number(n) => match n.as_i64() {
                Some(i) => Py::Int(i),
                None => Py::Float(n.as_f64().unwrap_or(f64::NAN)),
            },
            J::String(s) => Py::Str(s.clone()),
            J::Array(a) => Py::List(a.iter().map(Py::from_json).collect()),
            J::Object(o) => Py::Dict(
                o.iter()
                    .map(|(k, v)| (Py::Str(k.clone()), Py::from_json(v)))
                    .collect(),
            ),
        }
    }

    /// For `samples.jsonl`: tuples become arrays, other keys their `str()`.
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value as J;
        match self {
            Py::None => J::Null,
            Py::Bool(b) => J::Bool(*b),
            Py::Int(i) => J::from(*i),
            Py::Float(f) => serde_json::Number::from_f64(*f).map_or(J::Null, J::Number),
            Py::Str(s) => J::String(s.clone()),
            Py::List(v) | Py::Tuple(v) => J::Array(v.iter().map(Py::to_json).collect()),
            Py::Dict(kv) => J::Object(
                kv.iter()
                    .map(|(k, v)| {
                        let key = match k {
                            Py::Str(s) => s.clone(),
                            other => other.repr(),
                        };
                        (key, v.to_json())
                    })
                    .collect(),
            ),
        }
    }

    fn number(&self) -> Option<f64> {
        match self {
            Py::Bool(b) => Some(f64::from(u8::from(*b))),
            Py::Int(i) => Some(*i as f64),
            Py::Float(f) => Some(*f),
            _ => None,
        }
    }

    /// Python's `==`.
    pub fn py_eq(&self, other: &Py) -> bool {
        match (self, other) {
            (Py::None, Py::None) => true,
            (Py::Str(a), Py::Str(b)) => a == b,
            (Py::List(a), Py::List(b)) | (Py::Tuple(a), Py::Tuple(b)) => {
                a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.py_eq(y))
            }
            (Py::Dict(a), Py::Dict(b)) => {
                a.len() == b.len()
                    && a.iter()
                        .all(|(k, v)| dict_get(b, k).is_some_and(|w| v.py_eq(w)))
            }
            // Exact for integers (an i64 past 2^53 is not a float's neighbour).
            (Py::Int(a), Py::Int(b)) => a == b,
            (Py::Bool(a), Py::Bool(b)) => a == b,
            (Py::Int(a), Py::Bool(b)) | (Py::Bool(b), Py::Int(a)) => *a == i64::from(*b),
            _ => match (self.number(), other.number()) {
                (Some(a), Some(b)) => a == b,
                _ => false,
            },
        }
    }

    /// Python's `repr()`, for messages and for `ast.unparse` of constants.
    pub fn repr(&self) -> String {
        match self {
            Py::None => "None".into(),
            Py::Bool(true) => "True".into(),
            Py::Bool(false) => "False".into(),
            Py::Int(i) => i.to_string(),
            Py::Float(f) => float_repr(*f),
            Py::Str(s) => str_repr(s),
            Py::List(v) => format!("[{}]", join(v)),
            Py::Tuple(v) if v.len() == 1 => format!("({},)", v[0].repr()),
            Py::Tuple(v) => format!("({})", join(v)),
            Py::Dict(kv) => {
                let items: Vec<String> = kv
                    .iter()
                    .map(|(k, v)| format!("{}: {}", k.repr(), v.repr()))
                    .collect();
                format!("{{{}}}", items.join(", "))
            }
        }
    }
}

/// Reads JSON as `json.loads` does, objects in their written order (galley's serde_json
/// sorts keys; BFCL's prompt shows the functions as written).
impl<'de> serde::Deserialize<'de> for Py {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Py;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON value")
            }
            fn visit_unit<E>(self) -> Result<Py, E> {
                Ok(Py::None)
            }
            fn visit_bool<E>(self, b: bool) -> Result<Py, E> {
                Ok(Py::Bool(b))
            }
            fn visit_i64<E>(self, i: i64) -> Result<Py, E> {
                Ok(Py::Int(i))
            }
            fn visit_u64<E>(self, u: u64) -> Result<Py, E> {
                Ok(i64::try_from(u).map_or(Py::Float(u as f64), Py::Int))
            }
            fn visit_f64<E>(self, f: f64) -> Result<Py, E> {
                Ok(Py::Float(f))
            }
            fn visit_str<E>(self, s: &str) -> Result<Py, E> {
                Ok(Py::Str(s.to_string()))
            }
            fn visit_string<E>(self, s: String) -> Result<Py, E> {
                Ok(Py::Str(s))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut a: A) -> Result<Py, A::Error> {
                let mut v = vec![];
                while let Some(x) = a.next_element()? {
                    v.push(x);
                }
                Ok(Py::List(v))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut a: A) -> Result<Py, A::Error> {
                let mut kv: Vec<(Py, Py)> = vec![];
                while let Some((k, v)) = a.next_entry::<String, Py>()? {
                    // A repeated key keeps its first place and its last value, as in Python.
                    match kv
                        .iter_mut()
                        .find(|(x, _)| matches!(x, Py::Str(s) if *s == k))
                    {
                        Some(slot) => slot.1 = v,
                        None => kv.push((Py::Str(k), v)),
                    }
                }
                Ok(Py::Dict(kv))
            }
        }
        d.deserialize_any(V)
    }
}

/// `json.dumps(v, indent=4)`: Python's separators, non-ASCII as `\uXXXX` escapes, keys in
/// their order. This is the text BFCL puts in its system prompt.
pub fn json_dumps_indent4(v: &Py) -> String {
    let mut out = String::new();
    dumps(v, 0, &mut out);
    out
}

/// `json.dumps(v)` on one line (Python's `, ` and `: ` separators), keys in their order: how
/// nested metadata travels to a plugin without losing that order.
pub fn json_dumps(v: &Py) -> String {
    let mut out = String::new();
    dumps_line(v, &mut out);
    out
}

fn dumps_line(v: &Py, out: &mut String) {
    match v {
        Py::List(items) | Py::Tuple(items) => {
            out.push('[');
            for (i, x) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                dumps_line(x, out);
            }
            out.push(']');
        }
        Py::Dict(kv) => {
            out.push('{');
            for (i, (k, x)) in kv.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                match k {
                    Py::Str(s) => json_str(s, out),
                    other => json_str(&other.repr(), out),
                }
                out.push_str(": ");
                dumps_line(x, out);
            }
            out.push('}');
        }
        scalar => dumps(scalar, 0, out),
    }
}

fn dumps(v: &Py, depth: usize, out: &mut String) {
    let pad = |n: usize| "    ".repeat(n);
    match v {
        Py::None => out.push_str("null"),
        Py::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Py::Int(i) => out.push_str(&i.to_string()),
        Py::Float(f) if f.is_nan() => out.push_str("NaN"),
        Py::Float(f) if f.is_infinite() => {
            out.push_str(if *f > 0.0 { "Infinity" } else { "-Infinity" })
        }
        Py::Float(f) => out.push_str(&float_repr(*f)),
        Py::Str(s) => json_str(s, out),
        Py::List(items) | Py::Tuple(items) => {
            if items.is_empty() {
                out.push_str("[]");
                return;
            }
            out.push_str("[\n");
            for (i, x) in items.iter().enumerate() {
                out.push_str(&pad(depth + 1));
                dumps(x, depth + 1, out);
                out.push_str(if i + 1 < items.len() { ",\n" } else { "\n" });
            }
            out.push_str(&pad(depth));
            out.push(']');
        }
        Py::Dict(kv) => {
            if kv.is_empty() {
                out.push_str("{}");
                return;
            }
            out.push_str("{\n");
            for (i, (k, x)) in kv.iter().enumerate() {
                out.push_str(&pad(depth + 1));
                match k {
                    Py::Str(s) => json_str(s, out),
                    other => json_str(&other.repr(), out),
                }
                out.push_str(": ");
                dumps(x, depth + 1, out);
                out.push_str(if i + 1 < kv.len() { ",\n" } else { "\n" });
            }
            out.push_str(&pad(depth));
            out.push('}');
        }
    }
}

fn json_str(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\x08' => out.push_str("\\b"),
            '\x0c' => out.push_str("\\f"),
            // Python escapes everything outside space..tilde (ensure_ascii).
            c if (' '..='~').contains(&c) => out.push(c),
            c => {
                let mut buf = [0u16; 2];
                for unit in c.encode_utf16(&mut buf) {
                    let _ = write!(out, "\\u{unit:04x}");
                }
            }
        }
    }
    out.push('"');
}

fn join(v: &[Py]) -> String {
    v.iter().map(Py::repr).collect::<Vec<_>>().join(", ")
}

/// `key in d` / `d[key]`.
pub fn dict_get<'a>(d: &'a [(Py, Py)], key: &Py) -> Option<&'a Py> {
    d.iter().find(|(k, _)| k.py_eq(key)).map(|(_, v)| v)
}

/// `value in items`.
pub fn contains(items: &[Py], value: &Py) -> bool {
    items.iter().any(|x| x.py_eq(value))
}

/// What `for x in v` walks: a list's or tuple's items, a string's characters, a dict's keys;
/// `None` where Python raises (an int is not iterable).
pub fn iterate(v: &Py) -> Option<Vec<Py>> {
    match v {
        Py::List(x) | Py::Tuple(x) => Some(x.clone()),
        Py::Str(s) => Some(s.chars().map(|c| Py::Str(c.to_string())).collect()),
        Py::Dict(kv) => Some(kv.iter().map(|(k, _)| k.clone()).collect()),
        _ => None,
    }
}

/// `repr(float)`: the shortest text that reads back, with Python's exponent style.
pub fn float_repr(f: f64) -> String {
    if f.is_nan() {
        return "nan".into();
    }
    if f.is_infinite() {
        return if f > 0.0 { "inf" } else { "-inf" }.into();
    }
    let a = f.abs();
    if a != 0.0 && !(1e-4..1e16).contains(&a) {
        // Rust writes 1e-5 and 1e16; Python 1e-05 and 1e+16.
        let s = format!("{f:e}");
        let (mant, exp) = s.split_once('e').expect("an exponent");
        let e: i32 = exp.parse().expect("an integer exponent");
        return format!("{mant}e{}{:02}", if e < 0 { '-' } else { '+' }, e.abs());
    }
    let s = format!("{f}");
    if s.contains('.') { s } else { format!("{s}.0") }
}

/// `repr(str)`: single quotes unless the text has one and no double quote.
pub fn str_repr(s: &str) -> String {
    let q = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    let mut out = String::with_capacity(s.len() + 2);
    out.push(q);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == q => {
                out.push('\\');
                out.push(c);
            }
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push(q);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equality_is_pythons() {
        assert!(Py::Int(1).py_eq(&Py::Float(1.0)));
        assert!(Py::Bool(true).py_eq(&Py::Int(1)));
        assert!(!Py::List(vec![Py::Int(1)]).py_eq(&Py::Tuple(vec![Py::Int(1)])));
        let a = Py::Dict(vec![
            (Py::Str("a".into()), Py::Int(1)),
            (Py::Str("b".into()), Py::Int(2)),
        ]);
        let b = Py::Dict(vec![
            (Py::Str("b".into()), Py::Float(2.0)),
            (Py::Str("a".into()), Py::Bool(true)),
        ]);
        assert!(a.py_eq(&b));
        assert!(!Py::Str("1".into()).py_eq(&Py::Int(1)));
        assert!(!Py::None.py_eq(&Py::Str(String::new())));
    }

    #[test]
    fn dumps_keep_order_and_read_back() {
        let text = r#"{"b": [1, 2.5, "\u00e9"], "a": {"z": null, "y": true}}"#;
        let v: Py = serde_json::from_str(text).unwrap();
        assert_eq!(
            json_dumps(&v),
            r#"{"b": [1, 2.5, "\u00e9"], "a": {"z": null, "y": true}}"#
        );
        let back: Py = serde_json::from_str(&json_dumps_indent4(&v)).unwrap();
        assert!(back.py_eq(&v));
    }

    #[test]
    fn reprs_are_pythons() {
        assert_eq!(float_repr(1.0), "1.0");
        assert_eq!(float_repr(1e-5), "1e-05");
        assert_eq!(float_repr(1e16), "1e+16");
        assert_eq!(float_repr(0.1), "0.1");
        assert_eq!(float_repr(123456.5), "123456.5");
        assert_eq!(str_repr("it's"), "\"it's\"");
        assert_eq!(str_repr("a'b\"c"), "'a\\'b\"c'");
        assert_eq!(Py::Tuple(vec![Py::Int(1)]).repr(), "(1,)");
    }
}
