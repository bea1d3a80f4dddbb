//! BFCL's data for the end-to-end tests (`scripts/fetch-bfcl.sh`): entries by category, their
//! ground truth written as a model would, a stand-in OpenAI-compatible server that answers by
//! the last user message, and a tiny model that takes BFCL's long prompts.
#![allow(dead_code)]

use galley_e2e::*;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

pub fn data_dir() -> PathBuf {
    let d = std::env::var_os("GALLEY_EVAL_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join(".cache/eval-data"));
    let bfcl = d.join("gorilla-llm/Berkeley-Function-Calling-Leaderboard/simple_python/test.jsonl");
    assert!(
        bfcl.is_file(),
        "{} is missing: run scripts/fetch-bfcl.sh .cache/eval-data (scripts/test.sh does)",
        bfcl.display()
    );
    d
}

pub fn entries(category: &str, n: usize) -> Vec<serde_json::Value> {
    let f = data_dir().join(format!(
        "gorilla-llm/Berkeley-Function-Calling-Leaderboard/{category}/test.jsonl"
    ));
    std::fs::read_to_string(f)
        .unwrap()
        .lines()
        .take(n)
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The ground truth as a model would write it: each call with the first possible value of
/// each parameter (optional ones left out).
pub fn truth_text(entry: &serde_json::Value) -> String {
    format!("[{}]", truth_calls(entry).join(", "))
}

pub fn truth_calls(entry: &serde_json::Value) -> Vec<String> {
    entry["ground_truth"]
        .as_array()
        .unwrap()
        .iter()
        .map(|call| {
            let (name, params) = call.as_object().unwrap().iter().next().unwrap();
            let args: Vec<String> = params
                .as_object()
                .unwrap()
                .iter()
                .filter_map(|(k, options)| {
                    let v = options.as_array()?.iter().find(|o| *o != "")?;
                    Some(format!("{k}={}", py_literal(v)))
                })
                .collect();
            format!("{name}({})", args.join(", "))
        })
        .collect()
}

pub fn py_literal(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::Bool(b) => if *b { "True" } else { "False" }.into(),
        serde_json::Value::Null => "None".into(),
        serde_json::Value::Array(a) => {
            format!(
                "[{}]",
                a.iter().map(py_literal).collect::<Vec<_>>().join(", ")
            )
        }
        serde_json::Value::Object(o) => format!(
            "{{{}}}",
            o.iter()
                .map(|(k, v)| format!("{}: {}", serde_json::json!(k), py_literal(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        other => other.to_string(),
    }
}

/// An OpenAI-compatible server that answers by the last user message.
pub fn stand_in(answers: HashMap<String, String>) -> String {
    loopback_json_server(move |req| {
        let messages = req["messages"].as_array().unwrap();
        let bfcl_prompt = messages[0]["role"] == "system"
            && messages[0]["content"]
                .as_str()
                .unwrap()
                .starts_with("You are an expert in composing functions.");
        // Prompting mode: BFCL's system prompt, no tools. Native: tools, no prompt.
        let tools = req["tools"].as_array();
        let native = tools.is_some_and(|t| t[0]["type"] == "function") && !bfcl_prompt;
        let user = messages.last().unwrap()["content"].as_str().unwrap();
        let message = match answers.get(user) {
            Some(a) if native && a.starts_with("CALLS:") => {
                let calls: Vec<serde_json::Value> = serde_json::from_str(&a[6..]).unwrap();
                let calls: Vec<_> = calls
                    .iter()
                    .enumerate()
                    .map(|(i, c)| {
                        serde_json::json!({"id": format!("call_{i}"), "type": "function", "function": c})
                    })
                    .collect();
                serde_json::json!({"role": "assistant", "content": null, "tool_calls": calls})
            }
            Some(a) if bfcl_prompt && tools.is_none() && !a.starts_with("CALLS:") => {
                serde_json::json!({"role": "assistant", "content": a})
            }
            _ => serde_json::json!({"role": "assistant", "content": "I do not know that one."}),
        };
        let v = serde_json::json!({"choices": [{"index": 0, "message": message,
            "finish_reason": "stop"}], "usage": {"prompt_tokens": 5, "completion_tokens": 3}});
        ("200 OK", v)
    })
}

/// The entry's first ground-truth call as an OpenAI tool call (`{"name", "arguments"}`, the
/// name underscored as BFCL's FC mode writes it); `wrong`: its first argument replaced.
pub fn native_call(entry: &serde_json::Value, wrong: bool) -> serde_json::Value {
    let (name, params) = entry["ground_truth"][0]
        .as_object()
        .unwrap()
        .iter()
        .next()
        .unwrap();
    let mut args = serde_json::Map::new();
    for (k, options) in params.as_object().unwrap() {
        if let Some(v) = options.as_array().unwrap().iter().find(|o| *o != "") {
            args.insert(k.clone(), v.clone());
        }
    }
    if wrong {
        let k = args.keys().next().unwrap().clone();
        args.insert(k, serde_json::json!("not this"));
    }
    serde_json::json!({"name": name.replace('.', "_"),
        "arguments": serde_json::Value::Object(args).to_string()})
}

pub fn last_user(entry: &serde_json::Value) -> String {
    entry["question"][0]
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .find(|m| m["role"] == "user")
        .unwrap()["content"]
        .as_str()
        .unwrap()
        .to_string()
}

/// A tiny chat model that takes BFCL's long prompts (its system prompt lists the functions as
/// JSON: thousands of this tokenizer's tokens; random weights take any length).
pub fn long_context_model(d: &Path, text: &[String]) {
    galley_train::testing::tiny_chat_model_from(&d.join("model"), text);
    widen(d);
}

pub fn widen(d: &Path) {
    set_json_key(
        &d.join("model/config.json"),
        "max_position_embeddings",
        16384,
    );
}

/// A JSON list (an entry's `function` or `ground_truth`) as galley-bfcl's Python values.
pub fn py_list(v: &serde_json::Value) -> Vec<galley_bfcl::value::Py> {
    match serde_json::from_str(&v.to_string()).unwrap() {
        galley_bfcl::value::Py::List(items) => items,
        other => panic!("not a list: {other:?}"),
    }
}
