//! `jsonl-chat`: conversations from a JSON-lines file under the granted `data` directory.
//!
//! Each line is an object with `messages` (a list of `{role, content}`), or `prompt` (text,
//! becomes one user message) and optionally `completion` (an assistant message). Every other
//! key becomes metadata. Settings: `path` (relative to the granted directory, required),
//! `messages_key`, `shuffle` (with the run's seed), `limit`, `skip_bad_lines` (default false:
//! a malformed line is an error naming the file and line).

use galley_sdk::data_loader::{DataLoader, granted_path, shuffle};
use galley_sdk::{Config, Error, Example, Message, Metadata, Value};
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
            let role = m
                .get("role")
                .and_then(|r| r.as_str())
                .ok_or_else(|| format!("`{key}[{i}].role` is missing or not text"))?;
            let content = m
                .get("content")
                .and_then(|r| r.as_str())
                .ok_or_else(|| format!("`{key}[{i}].content` is missing or not text"))?;
            messages.push(Message::new(role, content));
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
