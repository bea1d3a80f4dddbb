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
        (
            "Mistral-Small-3.2-24B-Instruct-2506",
            ToolFormat::MistralArgs,
        ),
        (
            "unsloth-mistral-Devstral-Small-2507",
            ToolFormat::MistralArgs,
        ),
        ("Qwen-QwQ-32B", ToolFormat::Hermes),
        ("Qwen3-Coder", ToolFormat::QwenXml),
        ("Qwen3.5-4B", ToolFormat::QwenXml),
        ("NVIDIA-Nemotron-3-Nano-30B-A3B-BF16", ToolFormat::QwenXml),
        ("moonshotai-Kimi-K2", ToolFormat::KimiK2),
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
        assert_eq!(ToolFormat::of_template(&t), Some(format), "{name}");
        assert!(t.renders_tools(), "{name}");
        let asked = t
            .render_turns(std::slice::from_ref(&user), true, Some(&tools))
            .unwrap();
        // The tools as Python's json.dumps writes them (", " and ": ", keys as sent), or
        // (Qwen3-Coder's) in the template's own XML.
        let named = if format == ToolFormat::QwenXml {
            "get_weather"
        } else {
            r#""name": "get_weather""#
        };
        assert!(
            asked.contains(named) && asked.contains("The weather in a city"),
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
        // The answer: where the answered conversation leaves the prompt, from the line it
        // is in (QwQ's prompt ends `<think>\n`, which its answered turn does not have).
        let part = asked
            .char_indices()
            .zip(answered.chars())
            .find(|((_, a), b)| a != b)
            .map_or(asked.len(), |((i, _), _)| i);
        let line = answered[..part].rfind('\n').map_or(0, |i| i + 1);
        let said = &answered[line..];
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
    assert!(!t.renders_tools() && ToolFormat::of_template(&t).is_none());
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

/// Every template renders what transformers' Jinja2 environment renders from the same
/// conversations (`host/model/reference/render_templates.py` in the tools venv), byte for byte,
/// or both refuse; a conversation, the same with tools, and a tool call with its result.
#[test]
fn every_template_renders_what_transformers_renders() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let dir = root.join(".cache/chat-templates");
    let py = root.join(".cache/tools-venv/bin/python");
    assert!(
        py.exists(),
        "{} is missing: run scripts/fetch-data.sh",
        py.display()
    );
    let turns = |list: &[&str]| Json::Array(list.iter().map(|s| json(s)).collect());
    let chat = turns(&[
        r#"{"role": "system", "content": "Be brief."}"#,
        r#"{"role": "user", "content": "Hi é <b>"}"#,
        r#"{"role": "assistant", "content": "Hello"}"#,
        r#"{"role": "user", "content": "Weather?"}"#,
    ]);
    let call = turns(&[
        r#"{"role": "user", "content": "What is the weather in Paris?"}"#,
        r#"{"role": "assistant", "content": "", "tool_calls": [{"id": "abcdefghi", "type": "function",
            "function": {"name": "get_weather", "arguments": {"city": "Paris", "unit": "c"}}}]}"#,
        r#"{"role": "tool", "tool_call_id": "abcdefghi", "name": "get_weather", "content": "{\"temp\": 21}"}"#,
    ]);
    let tools = json(TOOLS);
    let cases: Vec<(&str, &Json, Option<&Json>)> = vec![
        ("chat", &chat, None),
        ("tools", &chat, Some(&tools)),
        ("call", &call, Some(&tools)),
    ];
    let tmp = tempfile::tempdir().unwrap();
    let spec_path = tmp.path().join("cases.json");
    // The cases' key order matters (templates write tools with `tojson`): written by hand.
    let text = format!(
        "{{{}}}",
        cases
            .iter()
            .map(|(k, m, t)| format!(
                r#""{k}": {{"messages": {}, "tools": {}, "add_generation_prompt": true}}"#,
                m.to_text(),
                t.map_or("null".into(), |t| t.to_text())
            ))
            .collect::<Vec<_>>()
            .join(", ")
    );
    std::fs::write(&spec_path, text).unwrap();
    let out = std::process::Command::new(&py)
        .arg(root.join("host/model/reference/render_templates.py"))
        .arg(&dir)
        .arg(&spec_path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let want: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let want = want.as_object().unwrap();
    let (mut same, mut both_refuse, mut lenient, mut known, mut differ) = (0, 0, 0, 0, Vec::new());
    for (name, row) in want {
        let src = std::fs::read_to_string(dir.join(format!("{name}.jinja"))).unwrap();
        let t = ChatTemplate::new(&src, name, "<s>", "</s>");
        for (k, m, tools) in &cases {
            let py = row.get(*k).or(row.get("error")).unwrap();
            let ours = t.as_ref().map_err(|e| e.to_string()).and_then(|t| {
                t.render_turns(m.as_array().unwrap(), true, *tools)
                    .map_err(|e| e.to_string())
            });
            let py_error = py.pointer("/error").and_then(|e| e.as_str()).unwrap_or("");
            match (py.as_str(), &ours) {
                (Some(a), Ok(b)) if a == b => same += 1,
                (None, Err(_)) => both_refuse += 1,
                // Python refuses to iterate `none` (a tool template rendered without tools)
                // or to serialize a generator; minijinja iterates none as empty and `map`
                // gives a list. galley renders where transformers raises.
                (None, Ok(_))
                    if py_error.contains("'NoneType' object is not iterable")
                        || py_error.contains("generator is not JSON serializable") =>
                {
                    lenient += 1
                }
                // markupsafe escapes a plain string added to a `|safe` one (`"'"|safe + x`),
                // HTML in a chat prompt: galley does not copy that.
                (Some(_), Ok(_)) if name == "meetkai-functionary-medium-v3.1" => known += 1,
                _ => differ.push(format!(
                    "{name} / {k}:\n  transformers: {py}\n  galley: {ours:?}"
                )),
            }
        }
    }
    eprintln!(
        "{} templates x {} cases: {same} the same, {both_refuse} refused by both, {lenient} rendered where transformers raises, {known} known to differ, {} differ",
        want.len(),
        cases.len(),
        differ.len()
    );
    assert!(same >= 190, "{same}");
    assert!(differ.is_empty(), "{}", differ.join("\n"));
}

/// Which format each real template is found to write calls in (printed), with the ones whose
/// calls are not JSON objects (Qwen3-Coder's XML, GLM's tags) found to have none.
#[test]
fn every_templates_call_format_is_found_by_asking_it() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.cache/chat-templates");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter_map(|n| n.strip_suffix(".jinja").map(String::from))
        .collect();
    names.sort();
    let mut found = std::collections::BTreeMap::new();
    for n in &names {
        let src = std::fs::read_to_string(dir.join(format!("{n}.jinja"))).unwrap();
        let Ok(t) = ChatTemplate::new(&src, n, "<s>", "</s>") else {
            continue;
        };
        found.insert(n.clone(), ToolFormat::of_template(&t));
    }
    for (n, f) in &found {
        eprintln!("{n:55} {}", f.map_or("-", |f| f.name()));
    }
    // GLM's tags, DeepSeek V3.2's DSML, a template without tools: not read.
    for none in [
        "GLM-4.6",
        "deepseek-ai-DeepSeek-V3.2",
        "google-gemma-2-2b-it",
    ] {
        assert_eq!(found[none], None, "{none}");
    }
    // DeepSeek V3.1's template writes calls but shows no tools (its users put them in the
    // system turn): the format is found all the same.
    assert_eq!(
        found["deepseek-ai-DeepSeek-V3.1"],
        Some(ToolFormat::DeepSeekV31)
    );
    let read = found.values().filter(|f| f.is_some()).count();
    eprintln!(
        "{read} of {} templates write calls galley reads",
        found.len()
    );
    assert!(read >= 16, "{read}");
}
