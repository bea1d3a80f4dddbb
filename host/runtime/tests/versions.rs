//! Two `galley:plugin` versions in one host: a plugin released against 0.1 (the embedded
//! registry's blob, as users have it installed) and the same plugin built from today's
//! source against 0.2 run side by side, each given what its version carries. The 0.1 plugin
//! sees a completion's text; the 0.2 one also sees it read as an assistant turn (its tool
//! calls, its reasoning), and a 0.2 data loader hands tool-calling conversations over whole.

mod common;

use common::*;
use galley_core::{
    Completion, DataSource, Message, Metadata, RewardFn, RewardGroup, ToolCall, Value,
};
use galley_runtime::{Grants, InstanceOptions, Plugin};

/// The embedded registry's released blob of `galley/name@version`.
fn released(name: &str, version: &str) -> Plugin {
    let index = repo_root().join(format!("registry/default/index/galley/{name}.jsonl"));
    let line = std::fs::read_to_string(&index)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|v| v["version"] == version)
        .unwrap_or_else(|| panic!("galley/{name}@{version} is not in the embedded registry"));
    let hex = line["digest"]
        .as_str()
        .unwrap()
        .strip_prefix("sha256:")
        .unwrap();
    let blob = repo_root().join(format!("registry/default/blobs/sha256/{hex}.wasm"));
    runtime().load(&blob).unwrap()
}

const FUNCTIONS: &str = r#"[{"name": "math.hypot", "description": "Hypotenuse.", "parameters": {"type": "dict", "properties": {"x": {"type": "integer"}, "y": {"type": "integer"}}, "required": ["x", "y"]}}]"#;
const TRUTH: &str = r#"[{"math.hypot": {"x": [4], "y": [5]}}]"#;

fn bfcl_columns() -> Metadata {
    Metadata::from([
        ("function".to_string(), Value::Json(FUNCTIONS.into())),
        ("ground_truth".to_string(), Value::Json(TRUTH.into())),
        ("id".to_string(), Value::Text("simple_python_7".into())),
    ])
}

#[test]
fn a_0_1_and_a_0_2_plugin_run_side_by_side_each_given_its_version() {
    let old = released("function-call", "0.1.0");
    let new = load("function-call");
    assert_eq!(old.wit_version().to_string(), "0.1.0");
    assert_eq!(new.wit_version().to_string(), "0.2.0");

    // A Hermes-style call as the model wrote it, and the trainer's reading of it.
    let raw = "<tool_call>\n{\"name\": \"math_hypot\", \"arguments\": {\"x\": 4, \"y\": 5}}\n</tool_call>";
    let mut read = Message::new("assistant", "");
    read.tool_calls.push(ToolCall {
        id: Some("call_0".into()),
        name: "math_hypot".into(),
        arguments: r#"{"x": 4, "y": 5}"#.into(),
    });
    let prompt = [Message::new("user", "Hypotenuse of 4 and 5?")];
    let columns = bfcl_columns();
    let group = RewardGroup {
        prompt: &prompt,
        metadata: &columns,
        completions: vec![
            Completion {
                text: raw,
                message: Some(&read),
                truncated: false,
            },
            // BFCL's prompting form, known only as text.
            Completion::text("[math.hypot(x=4, y=5)]"),
            Completion::text("[math.hypot(x=4, y=6)]"),
        ],
    };
    let score = |p: &Plugin| {
        p.reward(&serde_json::json!({}), InstanceOptions::default())
            .unwrap()
            .score(std::slice::from_ref(&group))
            .unwrap()
    };
    // 0.2 judges the call it is handed; 0.1 has only the markup, which is not Python calls.
    assert_eq!(score(&new), vec![Some(1.0), Some(1.0), Some(0.0)]);
    assert_eq!(score(&old), vec![Some(0.0), Some(1.0), Some(0.0)]);
}

#[test]
fn a_0_2_data_loader_hands_over_tool_calling_conversations() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("tools.jsonl"),
        concat!(
            r#"{"messages": [{"role": "user", "content": "Weather in Paris?"}, "#,
            r#"{"role": "assistant", "content": null, "reasoning_content": "Ask the tool.", "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]}, "#,
            r#"{"role": "tool", "tool_call_id": "c1", "name": "get_weather", "content": "22"}, "#,
            r#"{"role": "assistant", "content": "22 degrees."}], "#,
            r#""tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]}"#,
            "\n"
        ),
    )
    .unwrap();
    let opts = || InstanceOptions {
        grants: Grants::default().allow_dir("data", dir.path()),
        ..InstanceOptions::default()
    };
    let config = serde_json::json!({"path": "tools.jsonl"});
    let mut loader = load("jsonl-chat").data_loader(&config, opts()).unwrap();
    let page = loader.next_page(8).unwrap();
    assert_eq!(page.len(), 1);
    let m = &page[0].messages;
    assert_eq!(m[1].role, "assistant");
    assert_eq!(m[1].content, "");
    assert_eq!(m[1].reasoning_content.as_deref(), Some("Ask the tool."));
    assert_eq!(
        m[1].tool_calls,
        vec![ToolCall {
            id: Some("c1".into()),
            name: "get_weather".into(),
            arguments: r#"{"city":"Paris"}"#.into(),
        }]
    );
    assert_eq!(m[2].tool_call_id.as_deref(), Some("c1"));
    assert_eq!(m[2].name.as_deref(), Some("get_weather"));
    assert!(matches!(
        page[0].metadata.get("tools"),
        Some(Value::Json(_))
    ));

    // The 0.1 release of the same loader has no place for calls: it refuses the turn
    // without content rather than hand over a conversation with its calls gone.
    let mut old = released("jsonl-chat", "0.1.0")
        .data_loader(&config, opts())
        .unwrap();
    let e = old.next_page(8).unwrap_err().to_string();
    assert!(e.contains("tools.jsonl") && e.contains("content"), "{e}");
}
