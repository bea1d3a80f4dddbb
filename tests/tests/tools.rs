//! GRPO with tools, through the `galley` binary: a tiny model is taught by SFT to call
//! `galley/calculator` and answer with what it returns (TRL's tool-calling rows, a
//! Hermes-style template); GRPO then samples from it with the calculator — a real component
//! built from source — listed under `grpo.tools`. Each call the model writes is read back,
//! run in the sandbox, its result fed back as a tool turn, and the model finishes; the
//! reward judges the final turn, and the tool turn stays out of the loss.

use galley_e2e::*;
use std::path::Path;

const QUESTION: &str = "What is 6 times 7?";

/// The calculator's functions as `galley plugin call` lists them: the `tools` list the
/// template is shown, byte for byte what GRPO offers.
fn calculator_tools(d: &Path) -> serde_json::Value {
    let calc = plugin("calculator");
    let o = galley(d, &["plugin", "call", calc.to_str().unwrap()]);
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    let tools: Vec<serde_json::Value> = stdout(&o)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(tools.len(), 1, "{}", stdout(&o));
    // One call by hand, as an author tries a tool.
    let o = galley(
        d,
        &[
            "plugin",
            "call",
            calc.to_str().unwrap(),
            "--function",
            "calculate",
            "--arguments",
            r#"{"expression": "6 * 7"}"#,
        ],
    );
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    assert_eq!(stdout(&o), "calculate\t42\n");
    serde_json::Value::Array(tools)
}

fn taught_model(d: &Path, tools: &serde_json::Value) {
    let call = r#"{"name": "calculate", "arguments": {"expression": "6 * 7"}}"#;
    let text: Vec<String> = (0..40)
        .map(|i| {
            format!(
                "{QUESTION} <tool_call>\n{call}\n</tool_call> <tool_response>\n42\n</tool_response> 42 {tools} {i}"
            )
        })
        .collect();
    let added = [
        "<tool_call>",
        "</tool_call>",
        "<tool_response>",
        "</tool_response>",
    ];
    hermes_model(d, &text, &added, 1024);
    // TRL's tool-calling layout: the call, the tool's answer, the final answer.
    let row = serde_json::json!({"messages": [
        {"role": "user", "content": QUESTION},
        {"role": "assistant", "tool_calls": [{"type": "function",
            "function": {"name": "calculate", "arguments": {"expression": "6 * 7"}}}]},
        {"role": "tool", "name": "calculate", "content": "42"},
        {"role": "assistant", "content": "42"}],
        "tools": tools});
    std::fs::write(d.join("sft.jsonl"), format!("{row}\n").repeat(8)).unwrap();
    teach_by_sft(d);
}

fn grpo_config(model: &str, tool: &Path) -> String {
    grpo_yaml(
        model,
        &format!(
            "  rewards:\n    - builtin: exact_match\n  tools:\n    - plugin: {}\n",
            tool.display()
        ),
    )
}

#[test]
fn grpo_runs_the_calls_the_model_makes_and_trains_on_its_own_tokens_only() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let tools = calculator_tools(d);
    taught_model(d, &tools);

    // No `tools` column: the run's tools are offered to every prompt.
    let prompt =
        serde_json::json!({"prompt": [{"role": "user", "content": QUESTION}], "answer": "42"});
    std::fs::write(d.join("prompts.jsonl"), format!("{prompt}\n").repeat(2)).unwrap();
    std::fs::write(
        d.join("grpo.yaml"),
        grpo_config("sft/model", &plugin("calculator")),
    )
    .unwrap();
    let o = galley(d, &["train", "-c", "grpo.yaml"]);
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    let comps = jsonl(&d.join("grpo/completions.jsonl"));
    assert_eq!(comps.len(), 4);
    for c in &comps {
        // The model's call, read in the template's format...
        let turns = c["turns"]
            .as_array()
            .unwrap_or_else(|| panic!("no tool turns in {c}"));
        assert_eq!(turns.len(), 2, "{c}");
        let call = &turns[0]["tool_calls"][0]["function"];
        assert_eq!(call["name"], "calculate", "{c}");
        let args: serde_json::Value =
            serde_json::from_str(call["arguments"].as_str().unwrap()).unwrap();
        assert_eq!(args, serde_json::json!({"expression": "6 * 7"}), "{c}");
        // ... answered by the plugin (the model never writes a tool turn) ...
        assert_eq!(turns[1]["role"], "tool", "{c}");
        assert_eq!(turns[1]["name"], "calculate", "{c}");
        assert_eq!(turns[1]["content"], "42", "{c}");
        assert_eq!(
            (c["tool_calls"].as_u64(), c["tool_failures"].as_u64()),
            (Some(1), Some(0)),
            "{c}"
        );
        // ... then the model's last turn, which the reward judged.
        assert_eq!(c["message"]["content"], "42", "{c}");
        assert_eq!(c["rewards"]["exact_match"], 1.0, "{c}");
        // The whole exchange is the completion; only the model's tokens train.
        let text = c["completion"].as_str().unwrap();
        assert!(
            text.contains("<tool_response>\n42\n</tool_response>"),
            "{text}"
        );
        let (all, own) = (
            c["tokens"].as_u64().unwrap(),
            c["model_tokens"].as_u64().unwrap(),
        );
        assert!(own < all, "{c}");
    }
    let metrics = jsonl(&d.join("grpo/metrics.jsonl"));
    let step = metrics
        .iter()
        .find(|m| m.get("tools/call_frequency").is_some())
        .unwrap_or_else(|| panic!("no tool metrics in {metrics:?}"));
    assert_eq!(step["tools/call_frequency"], 1.0, "{step}");
    assert_eq!(step["tools/failure_frequency"], 0.0, "{step}");
    // The turn after the result resumed from what the first turn had seen: only the end of
    // the turn and the tool turn were prefilled again, not the prompt and the call.
    let (prefilled, resumed) = (
        step["tools/prefill_tokens"].as_f64().unwrap(),
        step["tools/resumed_tokens"].as_f64().unwrap(),
    );
    assert!(prefilled > 0.0 && resumed > 2.0 * prefilled, "{step}");
}

/// A template that cannot show the model tools, or a plugin of another kind, is refused
/// before any rollout, naming the key.
#[test]
fn tools_need_a_template_that_shows_them_and_a_tool_plugin() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    galley_train::testing::tiny_chat_model(&d.join("model"));
    let prompt = serde_json::json!({"prompt": [{"role": "user", "content": "the number 3 is"}], "answer": "1"});
    std::fs::write(d.join("prompts.jsonl"), format!("{prompt}\n").repeat(2)).unwrap();
    std::fs::write(
        d.join("grpo.yaml"),
        grpo_config("model", &plugin("calculator")),
    )
    .unwrap();
    let o = galley(d, &["train", "-c", "grpo.yaml"]);
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(
        err.contains("grpo.tools") && err.contains("does not show the model tools"),
        "{err}"
    );

    std::fs::write(
        d.join("grpo.yaml"),
        grpo_config("model", &plugin("math-answer")),
    )
    .unwrap();
    let o = galley(d, &["train", "-c", "grpo.yaml"]);
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(
        err.contains("grpo.tools[0]") && err.contains("tool"),
        "{err}"
    );
}
