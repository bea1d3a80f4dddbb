//! GRPO through the library with native reward functions (the trainer sees only `RewardFn`;
//! the WASM plugins are exercised through the binary in tests/tests/align.rs): the run folder
//! holds every completion with its rewards and advantage, the metrics GRPO promises, and a run
//! stopped after a checkpoint and resumed repeats the uninterrupted run exactly.

mod common;

use common::{tiny_chat_model, write_jsonl};
use galley_core::{PluginError, RewardFn, RewardGroup};
use galley_train::{NoObserver, Sources, TrainConfig};
use std::path::Path;

/// The completion's length in characters: different for nearly every sample.
struct Chars;
impl RewardFn for Chars {
    fn name(&self) -> &str {
        "chars"
    }
    fn score(&mut self, groups: &[RewardGroup<'_>]) -> Result<Vec<Option<f64>>, PluginError> {
        Ok(groups
            .iter()
            .flat_map(|g| &g.completions)
            .map(|c| Some(c.text.chars().count() as f64))
            .collect())
    }
}

/// 1.0 when the completion holds a digit: a random tiny model can learn that quickly.
struct HasDigit;
impl RewardFn for HasDigit {
    fn name(&self) -> &str {
        "has-digit"
    }
    fn score(&mut self, groups: &[RewardGroup<'_>]) -> Result<Vec<Option<f64>>, PluginError> {
        Ok(groups
            .iter()
            .flat_map(|g| g.completions.iter().map(move |c| (g, c)))
            .map(|(g, c)| {
                // No opinion on prompts without an answer column.
                g.metadata.get("answer")?;
                Some(f64::from(u8::from(
                    c.text.chars().any(|c| c.is_ascii_digit()),
                )))
            })
            .collect())
    }
}

fn config(dir: &Path, out: &str, extra: &[&str]) -> TrainConfig {
    let mut sets: Vec<String> = [
        format!("model.path={}", dir.join("model").display()),
        format!("data.train.path={}", dir.join("prompts.jsonl").display()),
        format!("training.output_dir={}", dir.join(out).display()),
        "training.method=grpo".into(),
        "training.tuning=full".into(),
        "training.batch_size=8".into(),
        "training.learning_rate=0.01".into(),
        "training.lr_scheduler=constant".into(),
        "training.eval_on_start=false".into(),
        "grpo.num_generations=4".into(),
        "grpo.max_completion_length=6".into(),
        "grpo.beta=0.04".into(),
        "grpo.rewards=[{builtin: exact_match, weight: 0.5}, {plugin: has-digit}]".into(),
        "data.max_length=64".into(),
    ]
    .into();
    sets.extend(extra.iter().map(|s| s.to_string()));
    TrainConfig::load(None, &sets).unwrap()
}

fn rewards() -> Vec<Box<dyn RewardFn>> {
    vec![
        galley_train::rewards::builtin("exact_match").unwrap(),
        Box::new(HasDigit),
    ]
}

fn run(cfg: &TrainConfig, resume: bool) -> galley_train::Outcome {
    run_with(cfg, resume, rewards())
}

fn run_with(
    cfg: &TrainConfig,
    resume: bool,
    rewards: Vec<Box<dyn RewardFn>>,
) -> galley_train::Outcome {
    let sources = Sources {
        rewards,
        ..Default::default()
    };
    galley_train::run(cfg, sources, resume, &mut NoObserver).unwrap()
}

fn setup() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    tiny_chat_model(&dir.path().join("model"));
    let lines: Vec<serde_json::Value> = (0..12)
        .map(|i| {
            if i == 5 {
                // TRL's conversational layout; no answer column: no opinion from either function.
                serde_json::json!({"prompt": [{"role": "user", "content": "say a number"}]})
            } else {
                serde_json::json!({"prompt": format!("the number {i} is"), "answer": (i * 3 % 17).to_string()})
            }
        })
        .collect();
    write_jsonl(&dir.path().join("prompts.jsonl"), &lines);
    dir
}

fn lines(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn grpo_writes_completions_and_metrics_and_resumes_exactly() {
    let dir = setup();
    let cfg = config(
        dir.path(),
        "a",
        &["training.max_steps=4", "training.save_steps=2"],
    );
    let out = run(&cfg, false);
    assert_eq!(out.summary.steps, 4);
    assert_eq!(out.train_examples, 12);
    let metrics = lines(&out.out_dir.join("metrics.jsonl"));
    let steps: Vec<&serde_json::Value> = metrics
        .iter()
        .filter(|m| m.get("reward").is_some())
        .collect();
    assert_eq!(steps.len(), 4);
    for key in [
        "reward",
        "reward_std",
        "rewards/exact_match/mean",
        "rewards/has-digit/mean",
        "rewards/has-digit/std",
        "frac_reward_zero_std",
        "completions/mean_length",
        "completions/clipped_ratio",
        "clip_ratio",
        "kl",
        "rollout_tokens_per_s",
        "update_tokens_per_s",
        "rollout_s",
        "reward_s",
    ] {
        assert!(
            steps[0].get(key).is_some_and(|v| v.is_number()),
            "{key} in {}",
            steps[0]
        );
    }
    // On-policy with one iteration: nothing is clipped.
    assert_eq!(steps[0]["clip_ratio"], 0.0);
    let comps = lines(&out.out_dir.join("completions.jsonl"));
    assert_eq!(comps.len(), 4 * 8, "every completion of every step");
    for c in &comps {
        for k in [
            "step",
            "prompt",
            "completion",
            "rewards",
            "reward",
            "advantage",
            "finish",
            "metadata",
        ] {
            assert!(c.get(k).is_some(), "{k} in {c}");
        }
        // The no-answer prompt: both functions have no opinion, total 0, advantage 0.
        if c["prompt"] == "say a number" {
            assert!(c["rewards"]["has-digit"].is_null(), "{c}");
            assert_eq!(c["advantage"], 0.0);
        }
    }
    // Advantages are centred per group of 4.
    for g in comps.chunks(4) {
        let s: f64 = g.iter().map(|c| c["advantage"].as_f64().unwrap()).sum();
        assert!(s.abs() < 1e-6, "group advantages sum to {s}");
    }
    assert!(out.out_dir.join("reward.png").exists());
    assert!(out.out_dir.join("model/model.safetensors").exists());

    // The same run stopped at step 2 and resumed: identical metrics and completions.
    let cfg_b = config(
        dir.path(),
        "b",
        &["training.max_steps=2", "training.save_steps=2"],
    );
    run(&cfg_b, false);
    let cfg_b = config(
        dir.path(),
        "b",
        &["training.max_steps=4", "training.save_steps=2"],
    );
    let resumed = run(&cfg_b, true);
    assert_eq!(resumed.summary.resumed_from, Some(2));
    let strip = |v: Vec<serde_json::Value>| -> Vec<serde_json::Value> {
        v.into_iter()
            .map(|mut m| {
                // Timings differ between runs; everything else must not.
                if let Some(o) = m.as_object_mut() {
                    o.retain(|k, _| !k.ends_with("_s") && !k.contains("per_s") && k != "elapsed_s");
                }
                m
            })
            .collect()
    };
    assert_eq!(
        strip(lines(&resumed.out_dir.join("metrics.jsonl"))),
        strip(metrics)
    );
    assert_eq!(lines(&resumed.out_dir.join("completions.jsonl")), comps);
}

#[test]
fn grpo_config_errors_name_the_key() {
    let dir = setup();
    let bad = |sets: &[&str]| {
        let mut all: Vec<String> = [
            format!("model.path={}", dir.path().join("model").display()),
            "data.train.path=p.jsonl".into(),
            "training.method=grpo".into(),
            "training.batch_size=8".into(),
            "grpo.num_generations=4".into(),
            "grpo.rewards=[{builtin: exact_match}]".into(),
        ]
        .into();
        all.extend(sets.iter().map(|s| s.to_string()));
        TrainConfig::load(None, &all).unwrap_err().to_string()
    };
    assert!(bad(&["training.batch_size=6"]).contains("training.batch_size"));
    assert!(bad(&["grpo.num_generations=1"]).contains("grpo.num_generations"));
    assert!(bad(&["grpo.rewards=[]"]).contains("grpo.rewards"));
    assert!(bad(&["grpo.rewards=[{builtin: nope}]"]).contains("grpo.rewards[0].builtin"));
    assert!(bad(&["grpo.rewards=[{weight: 2}]"]).contains("grpo.rewards[0]"));
    assert!(bad(&["grpo.temperature=0"]).contains("grpo.temperature"));
    assert!(bad(&["grpo.rewards=[{builtin: exact_match, wieght: 1}]"]).contains("wieght"));
}

/// DAPO's overlong filtering: when every completion of a step was cut at
/// `max_completion_length`, the masked step moves nothing (no tokens in the loss, no
/// gradient), while the same step without the mask does train.
#[test]
fn masked_truncated_completions_leave_the_loss() {
    let dir = setup();
    let step = |out: &str, mask: bool| -> (serde_json::Value, Vec<serde_json::Value>) {
        let m = format!("grpo.mask_truncated_completions={mask}");
        let cfg = config(
            dir.path(),
            out,
            &[
                "training.max_steps=1",
                "grpo.max_completion_length=2",
                "grpo.rewards=[{plugin: chars}]",
                &m,
            ],
        );
        let o = run_with(&cfg, false, vec![Box::new(Chars)]);
        let metrics = lines(&o.out_dir.join("metrics.jsonl"));
        let comps = lines(&o.out_dir.join("completions.jsonl"));
        (
            metrics
                .into_iter()
                .find(|v| v.get("reward").is_some())
                .unwrap(),
            comps,
        )
    };
    let (masked, comps) = step("masked", true);
    assert!(
        comps.iter().all(|c| c["finish"] == "length"),
        "the seeded tiny model never ends within 2 tokens"
    );
    assert_eq!(masked["completions/clipped_ratio"], 1.0);
    assert_eq!(masked["grad_norm"], 0.0, "{masked}");
    assert_eq!(masked["loss"], 0.0, "{masked}");
    let (plain, _) = step("plain", false);
    assert!(plain["grad_norm"].as_f64().unwrap() > 0.0, "{plain}");
}
