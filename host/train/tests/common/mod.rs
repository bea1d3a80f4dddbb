//! Shared test helpers: the tiny chat model (`galley_train::testing`) and JSONL writers.

#![allow(dead_code)]

#[allow(unused_imports)]
pub use galley_train::testing::{CHATML, tiny_chat_model};
use std::path::Path;

pub fn write_jsonl(path: &Path, lines: &[serde_json::Value]) {
    let text: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
    std::fs::write(path, text.join("\n") + "\n").unwrap();
}

pub fn chat(q: &str, a: &str) -> serde_json::Value {
    serde_json::json!({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]})
}
