//! The `doc_to_text` / `doc_to_target` / `doc_to_choice` rules of lm-evaluation-harness,
//! over minijinja: a string that names a column is that column; any other string is a Jinja
//! template rendered with the document's columns (strict: an unknown name is an error); a
//! rendered target or text of digits is an index when the task has choices; a literal list is
//! the list. Python's string methods (`.strip()`, `.split()`...) come from minijinja-contrib's
//! pycompat, plus `list.index` and the harness's `regex_replace` filter, which its task files use.

use crate::task::Field;
use minijinja::value::{Serde, Value, ValueKind};
use minijinja::{Environment, Error, ErrorKind, State, UndefinedBehavior};
use serde_json::Map;

/// A document: one row of the dataset.
pub type Doc = Map<String, serde_json::Value>;

/// What a `doc_to_*` entry gave.
#[derive(Debug, Clone, PartialEq)]
pub enum Resolved {
    Text(String),
    Index(usize),
    List(Vec<String>),
}

pub struct Templates {
    env: Environment<'static>,
}

fn unknown_method(
    state: &mut State,
    value: &Value,
    method: &str,
    args: &[Value],
) -> Result<Value, Error> {
    if method == "index" && value.kind() == ValueKind::Seq {
        let [needle] = args else {
            return Err(Error::new(
                ErrorKind::InvalidOperation,
                "index takes one argument",
            ));
        };
        for (i, item) in value.try_iter()?.enumerate() {
            if &item == needle {
                return Ok(Value::from(i));
            }
        }
        return Err(Error::new(
            ErrorKind::InvalidOperation,
            format!("{needle} is not in the list"),
        ));
    }
    // Python's str.index: a character offset (minijinja slices strings by character too).
    if method == "index"
        && let Some(s) = value.as_str()
    {
        let needle = match args {
            [n] => n.as_str().unwrap_or_default(),
            _ => {
                return Err(Error::new(
                    ErrorKind::InvalidOperation,
                    "index takes one argument",
                ));
            }
        };
        return match s.find(needle) {
            Some(at) => Ok(Value::from(s[..at].chars().count())),
            None => Err(Error::new(
                ErrorKind::InvalidOperation,
                "substring not found",
            )),
        };
    }
    minijinja_contrib::pycompat::unknown_method_callback(state, value, method, args)
}

fn regex_replace(s: String, pattern: String, repl: String) -> Result<String, Error> {
    let re = regex::Regex::new(&pattern)
        .map_err(|e| Error::new(ErrorKind::InvalidOperation, format!("regex_replace: {e}")))?;
    Ok(re.replace_all(&s, repl.as_str()).into_owned())
}

impl Default for Templates {
    fn default() -> Self {
        Self::new()
    }
}

impl Templates {
    pub fn new() -> Self {
        let mut env = Environment::new();
        env.set_unknown_method_callback(unknown_method);
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        env.set_syntax(
            minijinja::syntax::SyntaxConfig::builder()
                .keep_trailing_newline(true)
                .build()
                .expect("default delimiters"),
        );
        env.add_filter("regex_replace", regex_replace);
        Self { env }
    }

    /// Renders `template` with the document's columns.
    pub fn render(&self, template: &str, doc: &Doc) -> Result<String, String> {
        self.env
            .render_str(template, Value::from(Serde(doc)))
            .map_err(|e| one_line(&e))
    }

    /// Evaluates a template that is one `{{ expression }}` to its value (a list stays a list);
    /// `None` for any other template.
    fn expression(&self, template: &str, doc: &Doc) -> Option<Result<Value, String>> {
        let inner = template.trim().strip_prefix("{{")?.strip_suffix("}}")?;
        if inner.contains("{{") || inner.contains("}}") || inner.contains("{%") {
            return None;
        }
        Some(
            self.env
                .compile_expression(inner)
                .and_then(|e| e.eval(Value::from(Serde(doc))))
                .map_err(|e| one_line(&e)),
        )
    }

    /// `doc_to_text` and `doc_to_target`: `list_ok` lets a rendered `[...]` be a list (targets).
    pub fn resolve(
        &self,
        field: &Field,
        doc: &Doc,
        has_choices: bool,
        list_ok: bool,
    ) -> Result<Resolved, String> {
        match field {
            Field::Index(i) => usize::try_from(*i)
                .map(Resolved::Index)
                .map_err(|_| format!("index {i} is negative")),
            Field::List(l) => Ok(Resolved::List(l.clone())),
            Field::Text(s) => {
                if let Some(v) = doc.get(s) {
                    return column(v, s);
                }
                if list_ok
                    && let Some(v) = self.expression(s, doc)
                    && let Ok(v) = &v
                    && v.kind() == ValueKind::Seq
                {
                    return Ok(Resolved::List(strings(v)?));
                }
                let out = self.render(s, doc)?;
                if has_choices && !out.is_empty() && out.bytes().all(|b| b.is_ascii_digit()) {
                    return out
                        .parse()
                        .map(Resolved::Index)
                        .map_err(|_| format!("index {out} is too large"));
                }
                if list_ok
                    && out.len() >= 2
                    && out.starts_with('[')
                    && out.ends_with(']')
                    && let Ok(l) = serde_json::from_str::<Vec<String>>(&out)
                {
                    return Ok(Resolved::List(l));
                }
                Ok(Resolved::Text(out))
            }
        }
    }

    /// `doc_to_choice`: always a list of strings.
    pub fn choices(&self, field: &Field, doc: &Doc) -> Result<Vec<String>, String> {
        match field {
            Field::List(l) => Ok(l.clone()),
            Field::Index(_) => Err("doc_to_choice must be a list, a column or a template".into()),
            Field::Text(s) => {
                if let Some(v) = doc.get(s) {
                    return match column(v, s)? {
                        Resolved::List(l) => Ok(l),
                        _ => Err(format!("column `{s}` is not a list")),
                    };
                }
                if let Some(v) = self.expression(s, doc) {
                    let v = v?;
                    if v.kind() == ValueKind::Seq {
                        return strings(&v);
                    }
                }
                let out = self.render(s, doc)?;
                serde_json::from_str::<Vec<String>>(&out)
                    .map_err(|_| format!("rendered `{out}`, which is not a list of strings"))
            }
        }
    }
}

fn column(v: &serde_json::Value, name: &str) -> Result<Resolved, String> {
    match v {
        serde_json::Value::String(s) => Ok(Resolved::Text(s.clone())),
        serde_json::Value::Number(n) => n
            .as_u64()
            .map(|n| Resolved::Index(n as usize))
            .ok_or_else(|| format!("column `{name}` is {n}, not an index")),
        serde_json::Value::Bool(b) => Ok(Resolved::Index(usize::from(*b))),
        serde_json::Value::Array(items) => items
            .iter()
            .map(|i| match i {
                serde_json::Value::String(s) => Ok(s.clone()),
                other => Ok(other.to_string()),
            })
            .collect::<Result<_, String>>()
            .map(Resolved::List),
        other => Err(format!(
            "column `{name}` is {other}, not text, an index or a list"
        )),
    }
}

fn strings(v: &Value) -> Result<Vec<String>, String> {
    v.try_iter()
        .map_err(|e| one_line(&e))?
        .map(|i| {
            Ok(i.as_str()
                .map(str::to_string)
                .unwrap_or_else(|| i.to_string()))
        })
        .collect()
}

fn one_line(e: &Error) -> String {
    let mut s = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(inner) = src {
        s.push_str(&format!(": {inner}"));
        src = inner.source();
    }
    s.replace('\n', " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(v: serde_json::Value) -> Doc {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn harness_arc_templates() {
        let t = Templates::new();
        let d = doc(serde_json::json!({
            "question": "Which is a gas?",
            "choices": {"text": ["ice", "steam"], "label": ["A", "B"]},
            "answerKey": "B"
        }));
        let text = t
            .resolve(
                &Field::Text("Question: {{question}}\nAnswer:".into()),
                &d,
                true,
                false,
            )
            .unwrap();
        assert_eq!(
            text,
            Resolved::Text("Question: Which is a gas?\nAnswer:".into())
        );
        let target = t
            .resolve(
                &Field::Text("{{choices.label.index(answerKey)}}".into()),
                &d,
                true,
                true,
            )
            .unwrap();
        assert_eq!(target, Resolved::Index(1));
        let choices = t
            .choices(&Field::Text("{{choices.text}}".into()), &d)
            .unwrap();
        assert_eq!(choices, vec!["ice", "steam"]);
    }

    #[test]
    fn columns_python_methods_and_strictness() {
        let t = Templates::new();
        let d = doc(serde_json::json!({"question": "  Why?  ", "answer": 2, "label": "3"}));
        assert_eq!(
            t.resolve(&Field::Text("answer".into()), &d, true, true)
                .unwrap(),
            Resolved::Index(2)
        );
        assert_eq!(
            t.resolve(&Field::Text("{{label}}".into()), &d, true, true)
                .unwrap(),
            Resolved::Index(3)
        );
        assert_eq!(
            t.resolve(
                &Field::Text("{{question.strip()}}\n".into()),
                &d,
                false,
                false
            )
            .unwrap(),
            Resolved::Text("Why?\n".into())
        );
        let err = t
            .resolve(&Field::Text("{{nope}}".into()), &d, false, false)
            .unwrap_err();
        assert!(err.contains("undefined"), "{err}");
    }
}
