//! Real models' chat templates (the HF templates llama.cpp's chat tests keep, unpacked into
//! `.cache/chat-templates` by scripts/fetch-data.sh) rendered by galley with tools, a tool
//! call and its result: each renders, writes the tools as transformers' `tojson` does, and
//! what it writes for the assistant's call is read back by galley's parser for the format it
//! detects as the same call.

use galley_model::ChatTemplate;
use galley_model::json_schema::Json;
use galley_model::tool_calls::{ToolFormat, parse};
use std::path::PathBuf;

fn template(name: &str) -> ChatTemplate {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.cache/chat-templates");
    let path = dir.join(format!("{name}.jinja"));
    let src = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (run scripts/fetch-data.sh)", path.display()));
    ChatTemplate::new(&src, name, "<s>", "</s>").unwrap()
}

fn json(s: &str) -> Json {
    serde_json::from_str(s).unwrap()
}

const TOOLS: &str = r#"[{"type": "function", "function": {"name": "get_weather",
  "description": "The weather in a city", "parameters": {"type": "object",
  "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["c", "f"]}},
  "required": ["city"]}}}]"#;

#[test]
fn real_templates_render_tools_and_their_calls_read_back_as_sent() {
    let cases = [
        ("Qwen-Qwen2.5-7B-Instruct", ToolFormat::Hermes),
        ("Qwen-Qwen3-0.6B", ToolFormat::Hermes),
        (
            "NousResearch-Hermes-3-Llama-3.1-8B-tool_use",
            ToolFormat::Hermes,
        ),
        (
            "NousResearch-Hermes-2-Pro-Llama-3-8B-tool_use",
            ToolFormat::Hermes,
        ),
        ("meta-llama-Llama-3.1-8B-Instruct", ToolFormat::Llama3Json),
        ("meta-llama-Llama-3.2-3B-Instruct", ToolFormat::Llama3Json),
        ("meta-llama-Llama-3.3-70B-Instruct", ToolFormat::Llama3Json),
        ("mistralai-Mistral-Nemo-Instruct-2407", ToolFormat::Mistral),
    ];
    let tools = json(TOOLS);
    let user = json(r#"{"role": "user", "content": "What is the weather in Paris?"}"#);
    let call = json(
        r#"{"role": "assistant", "content": "", "tool_calls": [{"id": "abcdefghi", "type": "function",
            "function": {"name": "get_weather", "arguments": {"city": "Paris", "unit": "c"}}}]}"#,
    );
    let result = json(
        r#"{"role": "tool", "tool_call_id": "abcdefghi", "name": "get_weather", "content": "{\"temp\": 21}"}"#,
    );
    let mut failures = Vec::new();
    for (name, format) in cases {
        let t = template(name);
        assert_eq!(ToolFormat::detect(&t.source), Some(format), "{name}");
        assert!(t.renders_tools(), "{name}");
        let asked = t
            .render_turns(std::slice::from_ref(&user), true, Some(&tools))
            .unwrap();
        // The tools as Python's json.dumps writes them (", " and ": ", keys as sent).
        assert!(
            asked.contains(r#""name": "get_weather""#) && asked.contains("The weather in a city"),
            "{name}: {asked}"
        );
        let answered = t
            .render_turns(&[user.clone(), call.clone()], false, Some(&tools))
            .unwrap();
        let whole = t
            .render_turns(
                &[user.clone(), call.clone(), result.clone()],
                true,
                Some(&tools),
            )
            .unwrap();
        assert!(
            whole.contains("temp"),
            "{name}: the tool's result is missing: {whole}"
        );
        let Some(said) = answered.strip_prefix(asked.as_str()) else {
            failures.push(format!("{name}: the answer does not follow the prompt"));
            continue;
        };
        let mut said = said.trim_end().to_string();
        for end in ["<|im_end|>", "<|eot_id|>", "<|eom_id|>", "</s>"] {
            said = said.trim_end().trim_end_matches(end).to_string();
        }
        let p = parse(format, &said);
        let ok = p.calls.len() == 1
            && p.calls[0].name == "get_weather"
            && serde_json::from_str::<serde_json::Value>(&p.calls[0].arguments).ok()
                == Some(serde_json::json!({"city": "Paris", "unit": "c"}));
        if !ok {
            failures.push(format!("{name}: {said:?} read as {p:?}"));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
    // This edit of SmolLM3's template dropped its tools: galley says so rather than guess.
    let t = template("HuggingFaceTB-SmolLM3-3B");
    assert!(!t.renders_tools() && ToolFormat::detect(&t.source).is_none());
}

#[test]
fn tojson_writes_what_python_json_dumps_writes() {
    let src = "{{ tools | tojson }}|{{ tools[0] | tojson(indent=2) }}";
    let t = ChatTemplate::new(src, "t", "", "").unwrap();
    let tools = json(r#"[{"b": 1, "a": [1.5, "é<&>'"], "c": {}}]"#);
    assert_eq!(
        t.render_turns(&[], false, Some(&tools)).unwrap(),
        "[{\"b\": 1, \"a\": [1.5, \"é<&>'\"], \"c\": {}}]|{\n  \"b\": 1,\n  \"a\": [\n    1.5,\n    \"é<&>'\"\n  ],\n  \"c\": {}\n}"
    );
}
