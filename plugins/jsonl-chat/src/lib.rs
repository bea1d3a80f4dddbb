//! `jsonl-chat`: conversations from a JSON-lines file under the granted `data` directory.
//!
//! Each line is an object with `messages` (a list of `{role, content}`, as TRL writes them:
//! an assistant turn's `tool_calls` (arguments as an object or JSON text) and
//! `reasoning_content`, a tool turn's `tool_call_id` and `name`, a `null` content beside
//! calls), or `prompt` (text, becomes one user message) and optionally `completion` (an
//! assistant message). Every other key becomes metadata (TRL's `tools` column among them). Settings: `path` (relative to the granted directory, required),
//! `messages_key`, `shuffle` (with the run's seed), `limit`, `skip_bad_lines` (default false:
//! a malformed line is an error naming the file and line).

use galley_sdk::data_loader::{DataLoader, granted_path, shuffle};
use galley_sdk::{Config, Error, Example, Message, Metadata, ToolCall, Value};
use serde::Deserialize;
use std::io::{BufRead, BufReader};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    path: String,
    #[serde(default = "messages")]
    messages_key: String,
    #[serde(default)]
    shuffle: bool,
    #[serde(default)]
    limit: Option<usize>,
    #[serde(default)]
    skip_bad_lines: bool,
}

fn messages() -> String {
    "messages".into()
}

struct JsonlChat {
    path: String,
    lines: Box<dyn Iterator<Item = (usize, std::io::Result<String>)>>,
    s: Settings,
    emitted: usize,
}

impl DataLoader for JsonlChat {
    fn new(config: &Config, seed: u64) -> Result<Self, Error> {
        let s: Settings = config.parse_into()?;
        let path = granted_path("data", &s.path)?;
        let file = std::fs::File::open(&path).map_err(|e| {
            Error::config(format!(
                "cannot open {} in the granted `data` directory: {e}",
                s.path
            ))
        })?;
        let reader = BufReader::new(file);
        let lines: Box<dyn Iterator<Item = (usize, std::io::Result<String>)>> = if s.shuffle {
            let mut all: Vec<(usize, std::io::Result<String>)> = reader
                .lines()
                .enumerate()
                .map(|(i, l)| (i + 1, l))
                .collect();
            shuffle(&mut all, seed);
            Box::new(all.into_iter())
        } else {
            Box::new(reader.lines().enumerate().map(|(i, l)| (i + 1, l)))
        };
        Ok(Self {
            path: s.path.clone(),
            lines,
            s,
            emitted: 0,
        })
    }

    fn next_page(&mut self, max: usize) -> Result<Vec<Example>, Error> {
        let mut page = Vec::new();
        while page.len() < max && self.s.limit.is_none_or(|l| self.emitted < l) {
            let Some((line_no, line)) = self.lines.next() else {
                break;
            };
            let line = line
                .map_err(|e| Error::failed(format!("{}:{line_no}: read error: {e}", self.path)))?;
            if line.trim().is_empty() {
                continue;
            }
            match parse_line(&line, &self.s.messages_key) {
                Ok(mut ex) => {
                    ex.id = format!("{}:{line_no}", self.path);
                    self.emitted += 1;
                    page.push(ex);
                }
                Err(e) if self.s.skip_bad_lines => {
                    galley_sdk::log::warn(&format!("{}:{line_no}: skipped: {e}", self.path));
                }
                Err(e) => return Err(Error::input(format!("{}:{line_no}: {e}", self.path))),
            }
        }
        Ok(page)
    }
}

/// An optional text field of a message.
fn opt_text(m: &serde_json::Value, field: &str, at: &str) -> Result<Option<String>, String> {
    match m.get(field) {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(format!("`{at}.{field}` is not text")),
    }
}

/// One message as TRL's datasets write it.
fn message(m: &serde_json::Value, at: &str) -> Result<Message, String> {
    let role = m
        .get("role")
        .and_then(|r| r.as_str())
        .ok_or_else(|| format!("`{at}.role` is missing or not text"))?;
    let calls = match m.get("tool_calls") {
        None | Some(serde_json::Value::Null) => Vec::new(),
        Some(serde_json::Value::Array(calls)) => calls
            .iter()
            .enumerate()
            .map(|(k, c)| tool_call(c, &format!("{at}.tool_calls[{k}]")))
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(format!("`{at}.tool_calls` is not a list")),
    };
    // An assistant turn that only calls has no content (`null`, or no key at all).
    let content = match m.get("content") {
        Some(serde_json::Value::String(s)) => s.clone(),
        None | Some(serde_json::Value::Null) if !calls.is_empty() => String::new(),
        _ => return Err(format!("`{at}.content` is missing or not text")),
    };
    let mut out = Message::new(role, content);
    out.tool_calls = calls;
    out.tool_call_id = opt_text(m, "tool_call_id", at)?;
    out.name = opt_text(m, "name", at)?;
    out.reasoning = opt_text(m, "reasoning_content", at)?;
    Ok(out)
}

/// `{"id", "type": "function", "function": {"name", "arguments"}}`; the arguments an object
/// (TRL) or JSON text (OpenAI).
fn tool_call(c: &serde_json::Value, at: &str) -> Result<ToolCall, String> {
    let f = c.get("function").unwrap_or(c);
    let name = f
        .get("name")
        .and_then(|n| n.as_str())
        .ok_or_else(|| format!("`{at}.function.name` is missing or not text"))?;
    let arguments = match f.get("arguments") {
        None | Some(serde_json::Value::Null) => "{}".to_string(),
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(v @ serde_json::Value::Object(_)) => v.to_string(),
        Some(_) => {
            return Err(format!(
                "`{at}.function.arguments` is neither an object nor JSON text"
            ));
        }
    };
    Ok(ToolCall {
        id: opt_text(c, "id", at)?,
        name: name.to_string(),
        arguments,
    })
}

fn parse_line(line: &str, key: &str) -> Result<Example, String> {
    let v: serde_json::Value =
        serde_json::from_str(line).map_err(|e| format!("not valid JSON: {e}"))?;
    let serde_json::Value::Object(obj) = v else {
        return Err("expected a JSON object".into());
    };
    let mut messages = Vec::new();
    let mut metadata = Metadata::default();
    if let Some(m) = obj.get(key) {
        let arr = m
            .as_array()
            .ok_or_else(|| format!("`{key}` must be a list of messages"))?;
        for (i, m) in arr.iter().enumerate() {
            messages.push(message(m, &format!("{key}[{i}]"))?);
        }
    } else if let Some(p) = obj.get("prompt") {
        messages.push(Message::new(
            "user",
            p.as_str().ok_or("`prompt` must be text")?,
        ));
        if let Some(c) = obj.get("completion") {
            messages.push(Message::new(
                "assistant",
                c.as_str().ok_or("`completion` must be text")?,
            ));
        }
    } else {
        return Err(format!("no `{key}` list and no `prompt`"));
    }
    let used_prompt = !obj.contains_key(key);
    for (k, v) in obj {
        // The keys that built the conversation are not repeated as metadata.
        if k == key || (used_prompt && (k == "prompt" || k == "completion")) {
            continue;
        }
        metadata.insert(k, to_value(v));
    }
    Ok(Example {
        id: String::new(),
        messages,
        metadata,
    })
}

fn to_value(v: serde_json::Value) -> Value {
    match v {
        serde_json::Value::Null => Value::Null,
        serde_json::Value::Bool(b) => Value::Bool(b),
        serde_json::Value::Number(n) => n
            .as_i64()
            .map(Value::Int)
            .unwrap_or_else(|| Value::Float(n.as_f64().unwrap_or(f64::NAN))),
        serde_json::Value::String(s) => Value::Text(s),
        other => Value::Json(other.to_string()),
    }
}

galley_sdk::export_data_loader!(JsonlChat);

#[cfg(test)]
mod tests {
    use super::*;

    /// TRL's documented tool-calling row: an assistant turn with calls and no content, the
    /// tool's answer, and `tools` as a column.
    #[test]
    fn trl_tool_calling_rows_keep_their_calls() {
        let line = r#"{"messages": [{"role": "user", "content": "Weather in Paris?"}, {"role": "assistant", "tool_calls": [{"type": "function", "function": {"name": "get_weather", "arguments": {"location": "Paris", "unit": "celsius"}}}]}, {"role": "tool", "name": "get_weather", "content": "22"}, {"role": "assistant", "content": "22 degrees.", "reasoning_content": "It said 22."}], "tools": [{"type": "function", "function": {"name": "get_weather"}}]}"#;
        let ex = parse_line(line, "messages").unwrap();
        assert_eq!(ex.messages.len(), 4);
        let call = &ex.messages[1];
        assert_eq!(call.content, "");
        assert_eq!(call.tool_calls.len(), 1);
        assert_eq!(call.tool_calls[0].name, "get_weather");
        // Written in the row's own order (templates render the arguments as they are).
        assert_eq!(
            call.tool_calls[0].arguments,
            r#"{"location":"Paris","unit":"celsius"}"#
        );
        assert_eq!(ex.messages[2].name.as_deref(), Some("get_weather"));
        assert_eq!(ex.messages[3].reasoning.as_deref(), Some("It said 22."));
        assert!(matches!(ex.metadata.get("tools"), Some(Value::Json(_))));
    }

    #[test]
    fn a_bad_call_names_its_place() {
        let line = r#"{"messages": [{"role": "assistant", "tool_calls": [{"function": {"arguments": {}}}]}]}"#;
        let e = parse_line(line, "messages").unwrap_err();
        assert!(e.contains("messages[0].tool_calls[0].function.name"), "{e}");
        let line = r#"{"messages": [{"role": "user"}]}"#;
        let e = parse_line(line, "messages").unwrap_err();
        assert!(e.contains("messages[0].content"), "{e}");
    }
}
