//! GRPO in an environment, through the `galley` binary: `galley/wordle` — a real component
//! built from source — is listed under `grpo.environment`, with no reward function. Each
//! rollout plays a game of its own: the episode starts from the prompt's row (its `word`
//! column is the secret), the rules it returns are appended to the prompt, the model's
//! `guess` calls run in that rollout's instance, and the game's score is the reward. A tiny
//! model is first taught by SFT to open with "crane", so what each game answers is known.

use galley_e2e::*;
use std::path::Path;

/// The functions and the rules as `galley plugin call` shows them: byte for byte what a
/// rollout is offered and told.
fn wordle_functions_and_rules(d: &Path) -> (serde_json::Value, String) {
    let w = plugin("wordle");
    let o = galley(
        d,
        &[
            "plugin",
            "call",
            w.to_str().unwrap(),
            "--meta",
            "word=crane",
        ],
    );
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    let out = stdout(&o);
    let functions: Vec<serde_json::Value> = out
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(functions.len(), 1, "{out}");
    let rules = out
        .lines()
        .find_map(|l| l.strip_prefix("reset\t"))
        .unwrap_or_else(|| panic!("no reset line in {out}"));
    let rules: String = serde_json::from_str(rules).unwrap();
    assert!(out.ends_with("reward\t0\n"), "{out}");
    // One game by hand, as an author tries an environment: the state carries across calls.
    let o = galley(
        d,
        &[
            "plugin",
            "call",
            w.to_str().unwrap(),
            "--meta",
            "word=plate",
            "--input",
            "guesses.jsonl",
        ],
    );
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    let out = stdout(&o);
    assert!(
        out.contains("guess\tCRANE: _ _ G _ G (5 guesses left)\nguess\tPLATE: G G G G G, solved in 2 guesses\nreward\t1\n"),
        "{out}"
    );
    (serde_json::Value::Array(functions), rules)
}

const ANSWERS: [(&str, &str); 2] = [
    ("crane", "CRANE: G G G G G, solved in 1 guess"),
    ("plate", "CRANE: _ _ G _ G (5 guesses left)"),
];

fn taught_model(d: &Path, tools: &serde_json::Value, rules: &str) {
    let call = r#"{"name": "guess", "arguments": {"word": "crane"}}"#;
    let text: Vec<String> = (0..40)
        .map(|i| {
            let (_, answer) = ANSWERS[i % 2];
            format!(
                "Play Wordle.{rules} <tool_call>\n{call}\n</tool_call> <tool_response>\n{answer}\n</tool_response> done {tools} {i}"
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
    let rows: String = ANSWERS
        .iter()
        .map(|(_, answer)| {
            let row = serde_json::json!({"messages": [
                {"role": "user", "content": format!("Play Wordle.{rules}")},
                {"role": "assistant", "tool_calls": [{"type": "function",
                    "function": {"name": "guess", "arguments": {"word": "crane"}}}]},
                {"role": "tool", "name": "guess", "content": answer},
                {"role": "assistant", "content": "done"}],
                "tools": tools});
            format!("{row}\n").repeat(4)
        })
        .collect();
    std::fs::write(d.join("sft.jsonl"), rows).unwrap();
    teach_by_sft(d);
}

fn grpo_config(model: &str, env: &Path) -> String {
    grpo_yaml(
        model,
        &format!("  environment:\n    plugin: {}\n", env.display()),
    )
}

/// The rules Wordle appends, with a tiny model in `d/sft/model` taught to open with "crane".
fn taught(d: &Path) -> String {
    std::fs::write(
        d.join("guesses.jsonl"),
        "{\"name\": \"guess\", \"arguments\": {\"word\": \"crane\"}}\n{\"name\": \"guess\", \"arguments\": {\"word\": \"plate\"}}\n",
    )
    .unwrap();
    let (tools, rules) = wordle_functions_and_rules(d);
    taught_model(d, &tools, &rules);
    rules
}

#[test]
fn each_rollout_plays_its_own_game_and_the_game_scores_it() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let rules = taught(d);

    // The secret is the row's `word` column; the prompt says only "Play Wordle.".
    let prompts: String = ANSWERS
        .iter()
        .map(|(word, _)| {
            let p = serde_json::json!({"prompt": [{"role": "user", "content": "Play Wordle."}], "word": word});
            format!("{p}\n")
        })
        .collect();
    std::fs::write(d.join("prompts.jsonl"), prompts).unwrap();
    std::fs::write(
        d.join("grpo.yaml"),
        grpo_config("sft/model", &plugin("wordle")),
    )
    .unwrap();
    let o = galley(d, &["train", "-c", "grpo.yaml"]);
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    let comps = jsonl(&d.join("grpo/completions.jsonl"));
    assert_eq!(comps.len(), 4);
    for c in &comps {
        let word = c["metadata"]["word"].as_str().unwrap();
        let (_, answer) = ANSWERS.iter().find(|(w, _)| *w == word).unwrap();
        // The environment's rules were appended to the prompt the model answered.
        assert_eq!(c["prompt"], format!("Play Wordle.{rules}"), "{c}");
        let turns = c["turns"]
            .as_array()
            .unwrap_or_else(|| panic!("no tool turns in {c}"));
        let call = &turns[0]["tool_calls"][0]["function"];
        assert_eq!(call["name"], "guess", "{c}");
        // Each rollout's game answered from its own secret.
        assert_eq!(turns[1]["role"], "tool", "{c}");
        assert_eq!(turns[1]["content"], *answer, "{c}");
        // The game's own score is the reward: a solve, or two greens.
        let want = if word == "crane" { 1.0 } else { 0.2 };
        assert_eq!(c["rewards"]["wordle"], want, "{c}");
        assert_eq!(c["reward"], want, "{c}");
        assert!(c["model_tokens"].as_u64() < c["tokens"].as_u64(), "{c}");
    }
    let metrics = jsonl(&d.join("grpo/metrics.jsonl"));
    let step = metrics
        .iter()
        .find(|m| m.get("rewards/wordle/mean").is_some())
        .unwrap_or_else(|| panic!("no environment reward in {metrics:?}"));
    assert!(
        (step["rewards/wordle/mean"].as_f64().unwrap() - 0.6).abs() < 1e-9,
        "{step}"
    );
    assert_eq!(step["tools/failure_frequency"], 0.0, "{step}");
}

/// A plugin of another kind, or an environment without a template that shows functions, is
/// refused before any rollout, naming the key.
#[test]
fn an_environment_needs_an_environment_plugin_and_a_template_that_shows_it() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    galley_train::testing::tiny_chat_model(&d.join("model"));
    let prompt = serde_json::json!({"prompt": [{"role": "user", "content": "the number 3 is"}], "word": "crane"});
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
        err.contains("grpo.environment") && err.contains("environment"),
        "{err}"
    );
    std::fs::write(d.join("grpo.yaml"), grpo_config("model", &plugin("wordle"))).unwrap();
    let o = galley(d, &["train", "-c", "grpo.yaml"]);
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(
        err.contains("grpo.environment") && err.contains("does not show the model tools"),
        "{err}"
    );
}

/// Environments by name in one run (TRL's dict of factories): each prompt's `environment`
/// column picks Wordle or a counter from another plugin; each prompt is offered its own
/// environment's functions only, its rollouts act in that environment, and each
/// environment's score is a reward column of its own.
#[test]
fn prompts_pick_their_environment_by_name() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let rules = taught(d);
    let rows = [
        serde_json::json!({"prompt": [{"role": "user", "content": "Play Wordle."}], "word": "crane", "environment": "game"}),
        serde_json::json!({"prompt": [{"role": "user", "content": "Play Wordle."}], "tag": "t", "environment": "counter"}),
    ];
    let prompts: String = rows.iter().map(|r| format!("{r}\n")).collect();
    std::fs::write(d.join("prompts.jsonl"), prompts).unwrap();
    let config = grpo_yaml(
        "sft/model",
        &format!(
            "  environments:\n    game: {{plugin: {}}}\n    counter: {{plugin: {}, settings: {{mode: ok}}}}\n",
            plugin("wordle").display(),
            plugin("hostile-env").display()
        ),
    );
    std::fs::write(d.join("grpo.yaml"), &config).unwrap();
    let o = galley(d, &["train", "-c", "grpo.yaml"]);
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    let comps = jsonl(&d.join("grpo/completions.jsonl"));
    assert_eq!(comps.len(), 4);
    for c in &comps {
        // The picking column is the run's, not a column rewards or `reset` see.
        assert!(c["metadata"].get("environment").is_none(), "{c}");
        if c["metadata"]["word"] == "crane" {
            assert_eq!(c["prompt"], format!("Play Wordle.{rules}"), "{c}");
            assert_eq!(
                c["turns"][1]["content"], "CRANE: G G G G G, solved in 1 guess",
                "{c}"
            );
            assert_eq!(c["rewards"]["game"], 1.0, "{c}");
            assert!(c["rewards"]["counter"].is_null(), "{c}");
        } else {
            // The counter's start, with this prompt's seed.
            let prompt = c["prompt"].as_str().unwrap();
            assert!(prompt.starts_with("Play Wordle. [t "), "{c}");
            // Wordle's `guess` is not this prompt's to call.
            if let Some(turns) = c["turns"].as_array() {
                let answer = turns[1]["content"].as_str().unwrap();
                assert!(answer.contains("no tool named `guess`"), "{c}");
            }
            assert_eq!(c["rewards"]["counter"], 0.0, "{c}");
            assert!(c["rewards"]["game"].is_null(), "{c}");
        }
    }
    let metrics = jsonl(&d.join("grpo/metrics.jsonl"));
    let step = metrics
        .iter()
        .find(|m| m.get("rewards/game/mean").is_some())
        .unwrap_or_else(|| panic!("no environment rewards in {metrics:?}"));
    assert_eq!(step["rewards/game/mean"], 1.0, "{step}");
    assert_eq!(step["rewards/counter/mean"], 0.0, "{step}");

    // A prompt that picks no environment, or one the run does not have, is a bad row.
    let bad = serde_json::json!({"prompt": [{"role": "user", "content": "Play Wordle."}], "environment": "casino"});
    std::fs::write(d.join("prompts.jsonl"), format!("{bad}\n")).unwrap();
    std::fs::write(
        d.join("grpo.yaml"),
        config.replace(
            "data: {train: {path: prompts.jsonl}",
            "data: {on_bad_example: error, train: {path: prompts.jsonl}",
        ),
    )
    .unwrap();
    let o = galley(d, &["train", "-c", "grpo.yaml"]);
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(
        err.contains("prompts.jsonl:1") && err.contains("`casino`") && err.contains("game"),
        "{err}"
    );
}
