//! What `galley:plugin@0.2` hands a reward function beside the completion's text, through
//! the `galley` binary: in GRPO, each completion read with the model's chat template (a
//! reasoning block the prompt opened is reasoning, not the answer) and whether the budget cut
//! it; in `galley score`, completions given as TRL's assistant messages with tool calls.
//! The plugins are real components built from source.

use galley_e2e::*;
use std::path::Path;

/// A reasoning template in the style of DeepSeek-R1's: the generation prompt opens a
/// `<think>` block, which the model's answer closes.
const THINKING_TEMPLATE: &str = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n<think>\n{% endif %}{# answers close the block: </think> #}";

fn thinking_model(d: &Path) {
    galley_train::testing::tiny_chat_model(&d.join("model"));
    set_json_key(
        &d.join("model/tokenizer_config.json"),
        "chat_template",
        THINKING_TEMPLATE,
    );
}

#[test]
fn grpo_hands_reward_plugins_each_completion_read_with_the_chat_template() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    thinking_model(d);
    let rows: Vec<String> = (0..4)
        .map(|i| serde_json::json!({"prompt": [{"role": "user", "content": format!("the number {i} is")}]}).to_string())
        .collect();
    std::fs::write(d.join("prompts.jsonl"), rows.join("\n") + "\n").unwrap();
    let hostile = plugin("hostile-reward");
    std::fs::write(
        d.join("grpo.yaml"),
        format!(
            "model:
  path: model
data:
  train: {{path: prompts.jsonl}}
  max_length: 64
training:
  method: grpo
  tuning: full
  output_dir: run
  batch_size: 4
  max_steps: 2
  learning_rate: 0.01
  eval_on_start: false
grpo:
  num_generations: 2
  max_completion_length: 6
  temperature: 1.0
  rewards:
    - {{plugin: {p}, settings: {{mode: reasoning-chars}}}}
    - {{plugin: {p}, settings: {{mode: truncated}}}}
",
            p = hostile.display()
        ),
    )
    .unwrap();
    let o = galley(d, &["train", "-c", "grpo.yaml"]);
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    let comps = jsonl(&d.join("run/completions.jsonl"));
    assert_eq!(comps.len(), 8);
    let mut cut = 0;
    for c in &comps {
        let text = c["completion"].as_str().unwrap();
        // The prompt opened the block and the 6-token answer never closed it: all of it is
        // reasoning, and the plugin was handed exactly that.
        let reasoning = c["message"]["reasoning_content"]
            .as_str()
            .unwrap_or_else(|| panic!("no reading recorded: {c}"));
        assert_eq!(reasoning, text.trim_start(), "{c}");
        assert_eq!(c["message"]["content"], "", "{c}");
        assert_eq!(
            c["rewards"]["hostile-reward"].as_f64(),
            Some(reasoning.chars().count() as f64),
            "{c}"
        );
        let truncated = c["finish"] == "length";
        cut += usize::from(truncated);
        assert_eq!(
            c["rewards"]["hostile-reward#2"].as_f64(),
            Some(if truncated { 1.0 } else { 0.0 }),
            "{c}"
        );
    }
    assert!(cut > 0, "some completions ran to the budget: {comps:?}");
}

/// TRL's conversational completions (`[{"role": "assistant", ...}]`) with tool calls reach a
/// 0.2 plugin as calls; the same answers as text are read as BFCL's prompting form.
#[test]
fn galley_score_takes_assistant_messages_with_tool_calls() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let functions = r#"[{"name": "math.hypot", "description": "Hypotenuse.", "parameters": {"type": "dict", "properties": {"x": {"type": "integer"}, "y": {"type": "integer"}}, "required": ["x", "y"]}}]"#;
    let truth = r#"[{"math.hypot": {"x": [4], "y": [5]}}]"#;
    let meta = serde_json::json!({"id": "simple_python_1", "function": serde_json::from_str::<serde_json::Value>(functions).unwrap(), "ground_truth": serde_json::from_str::<serde_json::Value>(truth).unwrap()});
    let call = |args: serde_json::Value| {
        serde_json::json!([{"role": "assistant", "content": null, "tool_calls": [
            {"id": "c0", "type": "function", "function": {"name": "math_hypot", "arguments": args}}]}])
    };
    let completions = [
        call(serde_json::json!({"x": 4, "y": 5})),
        call(serde_json::json!({"x": 4, "y": 6})),
        // OpenAI's form: a message object, arguments as JSON text.
        serde_json::json!({"role": "assistant", "content": "", "tool_calls": [
            {"type": "function", "function": {"name": "math_hypot", "arguments": "{\"x\": 4, \"y\": 5}"}}]}),
        serde_json::json!("[math.hypot(x=4, y=5)]"),
        serde_json::json!([{"role": "assistant", "content": "I cannot compute that."}]),
    ];
    let rows: Vec<String> = completions
        .iter()
        .map(|c| serde_json::json!({"prompt": "Hypotenuse of 4 and 5?", "completion": c, "metadata": meta}).to_string())
        .collect();
    std::fs::write(d.join("completions.jsonl"), rows.join("\n") + "\n").unwrap();
    std::fs::write(
        d.join("score.yaml"),
        format!(
            "rewards:\n  - plugin: {}\n  - plugin: {}\n    settings: {{mode: tool-calls}}\ncompletions: completions.jsonl\non_plugin_error: stop\n",
            plugin("function-call").display(),
            plugin("hostile-reward").display()
        ),
    )
    .unwrap();
    let o = galley(d, &["score", "score.yaml", "--json"]);
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    let lines: Vec<serde_json::Value> = stdout(&o)
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v.get("index").is_some())
        .collect();
    let col = |name: &str| -> Vec<f64> {
        lines
            .iter()
            .map(|v| v["scores"][name].as_f64().unwrap())
            .collect()
    };
    assert_eq!(col("function-call@0.2.0"), [1.0, 0.0, 1.0, 1.0, 0.0]);
    assert_eq!(col("hostile-reward@0.1.0"), [1.0, 1.0, 1.0, 0.0, 0.0]);

    // A completion that is not an assistant turn is refused with its line.
    std::fs::write(
        d.join("completions.jsonl"),
        format!(
            "{}\n{}\n",
            rows[0],
            serde_json::json!({"prompt": "q", "completion": [{"role": "user", "content": "hi"}]})
        ),
    )
    .unwrap();
    let o = galley(d, &["score", "score.yaml"]);
    assert!(!o.status.success());
    let e = one_line_error(&o);
    assert!(
        e.contains("completions.jsonl") && e.contains("2") && e.contains("assistant"),
        "{e}"
    );
}

/// Function calling trained end to end in BFCL's native mode: a tiny model is taught one
/// call by SFT on TRL's tool-calling rows (the `tools` column rendered by a Hermes-style
/// template), then GRPO samples from it with the same tools offered; the trainer reads the
/// calls back in the template's format and `galley/function-call` judges the calls it is
/// handed with BFCL's checker.
#[test]
fn sft_on_tool_rows_then_grpo_rewards_the_calls_the_trainer_reads() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let functions = serde_json::json!([{"name": "math.hypot", "description": "Hypotenuse.",
        "parameters": {"type": "dict", "properties": {"x": {"type": "integer"}, "y": {"type": "integer"}},
        "required": ["x", "y"]}}]);
    let tools = serde_json::json!([{"type": "function", "function": {"name": "math_hypot",
        "description": "Hypotenuse.", "parameters": {"type": "object", "properties":
        {"x": {"type": "integer"}, "y": {"type": "integer"}}, "required": ["x", "y"]}}}]);
    let question = "Hypotenuse of 4 and 5?";
    let call = r#"{"name": "math_hypot", "arguments": {"x": 4, "y": 5}}"#;
    let text: Vec<String> = (0..40)
        .map(|i| format!("{question} <tool_call>\n{call}\n</tool_call> {tools} {i}"))
        .collect();
    hermes_model(d, &text, &["<tool_call>", "</tool_call>"], 1024);

    let row = serde_json::json!({"messages": [
        {"role": "user", "content": question},
        {"role": "assistant", "tool_calls": [{"type": "function",
            "function": {"name": "math_hypot", "arguments": {"x": 4, "y": 5}}}]}],
        "tools": tools});
    std::fs::write(d.join("sft.jsonl"), format!("{row}\n").repeat(8)).unwrap();
    std::fs::write(
        d.join("sft.yaml"),
        "model: {path: model}
data: {train: {path: sft.jsonl}, max_length: 1024}
training:
  method: sft
  tuning: full
  output_dir: sft
  batch_size: 8
  max_steps: 100
  learning_rate: 0.01
  lr_scheduler: constant
  warmup_steps: 0
  eval_on_start: false
",
    )
    .unwrap();
    let o = galley(d, &["train", "-c", "sft.yaml"]);
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));

    let prompt = serde_json::json!({"prompt": [{"role": "user", "content": question}], "tools": tools,
        "id": "simple_python_1", "function": functions,
        "ground_truth": [{"math.hypot": {"x": [4], "y": [5]}}]});
    std::fs::write(d.join("prompts.jsonl"), format!("{prompt}\n").repeat(2)).unwrap();
    std::fs::write(
        d.join("grpo.yaml"),
        format!(
            "model: {{path: sft/model}}
data: {{train: {{path: prompts.jsonl}}, max_length: 1024}}
training:
  method: grpo
  tuning: full
  output_dir: grpo
  batch_size: 4
  max_steps: 1
  learning_rate: 0.0001
  eval_on_start: false
grpo:
  num_generations: 2
  max_completion_length: 48
  temperature: 0.05
  rewards:
    - plugin: {reward}
",
            reward = plugin("function-call").display()
        ),
    )
    .unwrap();
    let o = galley(d, &["train", "-c", "grpo.yaml"]);
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    let comps = jsonl(&d.join("grpo/completions.jsonl"));
    assert_eq!(comps.len(), 4);
    for c in &comps {
        // Read back in the template's format: one call, the right one, rewarded as such.
        let calls = c["message"]["tool_calls"]
            .as_array()
            .unwrap_or_else(|| panic!("no calls read from {c}"));
        assert_eq!(calls.len(), 1, "{c}");
        assert_eq!(calls[0]["function"]["name"], "math_hypot", "{c}");
        let args: serde_json::Value =
            serde_json::from_str(calls[0]["function"]["arguments"].as_str().unwrap()).unwrap();
        assert_eq!(args, serde_json::json!({"x": 4, "y": 5}), "{c}");
        assert_eq!(c["rewards"]["function-call"], 1.0, "{c}");
    }
}
