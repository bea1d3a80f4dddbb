//! GRPO through the binary with real components built from source and run in the sandbox:
//! `arith` (data loader) feeds prompts, `math-answer` and `format` (reward plugins) score the
//! completions, and the mean reward of a tiny model rises over a few dozen seeded steps. A
//! reward plugin that traps on some completions is skipped (those completions get advantage 0,
//! with a warning naming it) or stops the run at its last checkpoint, as configured.

use galley_e2e::*;
use std::path::Path;
use std::process::Output;
use std::sync::Mutex;

/// Training runs one at a time: two on two cores would each crawl.
static HEAVY: Mutex<()> = Mutex::new(());

fn model(dir: &Path) {
    // The tokenizer sees arithmetic so digits and operators are single tokens.
    let text: Vec<String> = (0..300)
        .map(|i| {
            let (a, b) = (i % 10, i / 10 % 10);
            format!(
                "What is {a} + {b}? End your answer with `#### <number>`. {a} + {b} = {} #### {}",
                a + b,
                a + b
            )
        })
        .collect();
    galley_train::testing::tiny_chat_model_from(&dir.join("model"), &text);
}

fn grpo_config(rewards: &str, extra: &str) -> String {
    format!(
        "model:
  path: model
data:
  train:
    plugin: {arith}
    plugin_config: {{words: false, min: 1, max: 9, ops: ['+']}}
    limit: 64
  max_length: 96
training:
  method: grpo
  tuning: full
  output_dir: run
  batch_size: 8
  learning_rate: 0.01
  lr_scheduler: constant
  eval_on_start: false
  save_steps: 2
grpo:
  num_generations: 4
  max_completion_length: 6
  temperature: 1.0
  rewards:
{rewards}{extra}",
        arith = plugin("arith").display(),
    )
}

fn metrics(dir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join("run/metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn ok(o: &Output) {
    assert!(o.status.success(), "failed:\n{}{}", stdout(o), stderr(o));
}

#[test]
fn grpo_on_arith_with_math_answer_and_format_plugins_raises_the_mean_reward() {
    let _one = HEAVY.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    model(dir.path());
    let rewards = format!(
        "    - plugin: {}
      weight: 1.0
    - plugin: {}
      weight: 0.5
      settings: {{pattern: '.*[0-9].*'}}
",
        plugin("math-answer").display(),
        plugin("format").display()
    );
    std::fs::write(dir.path().join("grpo.yaml"), grpo_config(&rewards, "")).unwrap();
    let o = galley(
        dir.path(),
        &["train", "-c", "grpo.yaml", "training.max_steps=40"],
    );
    ok(&o);
    assert!(stdout(&o).contains("reward.png"), "{}", stdout(&o));
    let m = metrics(dir.path());
    let series = |key: &str| -> Vec<f64> {
        m.iter()
            .filter_map(|v| v.get(key).and_then(|x| x.as_f64()))
            .collect()
    };
    let reward = series("reward");
    assert_eq!(reward.len(), 40);
    let mean = |xs: &[f64]| xs.iter().sum::<f64>() / xs.len() as f64;
    let (first, last) = (mean(&reward[..8]), mean(&reward[32..]));
    eprintln!("mean reward: first 8 steps {first:.3}, last 8 steps {last:.3}");
    assert!(
        last > first + 0.1,
        "the mean reward should rise: first 8 steps {first:.3}, last 8 {last:.3} ({reward:?})"
    );
    let fmt = series("rewards/format/mean");
    assert!(
        mean(&fmt[32..]) > mean(&fmt[..8]) + 0.2,
        "format reward: {fmt:?}"
    );
    assert_eq!(series("rewards/math-answer/mean").len(), 40);
    // Every completion is on file with its plugin scores.
    let comps = std::fs::read_to_string(dir.path().join("run/completions.jsonl")).unwrap();
    assert_eq!(comps.lines().count(), 40 * 8);
    let c: serde_json::Value = serde_json::from_str(comps.lines().next().unwrap()).unwrap();
    assert!(
        c["rewards"].get("math-answer").is_some() && c["metadata"].get("answer").is_some(),
        "{c}"
    );
}

#[test]
fn a_reward_plugin_trapping_on_some_completions_is_skipped_or_stops_the_run() {
    let _one = HEAVY.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    model(dir.path());
    let rewards = |policy: &str| {
        format!(
            "    - plugin: {}
      settings: {{pattern: '.*[0-9].*'}}
    - plugin: {}
      settings: {{mode: trap-on, needle: ' '}}
  on_plugin_error: {policy}
",
            plugin("format").display(),
            plugin("hostile-reward").display()
        )
    };
    // skip: the run finishes; completions holding the needle (a space: about a third of this
    // seeded run's completions) lose their reward, nothing else.
    std::fs::write(
        dir.path().join("skip.yaml"),
        grpo_config(&rewards("skip"), ""),
    )
    .unwrap();
    let o = galley(
        dir.path(),
        &["train", "-c", "skip.yaml", "training.max_steps=4"],
    );
    ok(&o);
    let err = stderr(&o);
    assert!(
        err.contains("hostile-reward@0.1.0") && err.contains("advantage 0"),
        "the warning names the plugin and what happened: {err}"
    );
    let comps: Vec<serde_json::Value> =
        std::fs::read_to_string(dir.path().join("run/completions.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
    assert_eq!(comps.len(), 4 * 8);
    let failed: Vec<&serde_json::Value> = comps.iter().filter(|c| c["failed"] == true).collect();
    assert!(!failed.is_empty(), "some completions hold the needle");
    assert!(failed.len() < comps.len(), "and some do not");
    for c in &comps {
        let has = c["completion"].as_str().unwrap().contains(' ');
        assert_eq!(c["failed"] == true, has, "{c}");
        if has {
            assert_eq!(c["advantage"], 0.0, "{c}");
            assert!(c["rewards"]["hostile-reward"].is_null(), "{c}");
        } else {
            assert_eq!(c["rewards"]["hostile-reward"], 1.0, "{c}");
        }
        // The other plugin scored every completion.
        assert!(c["rewards"]["format"].is_number(), "{c}");
    }
    let m = metrics(dir.path());
    let failures: f64 = m
        .iter()
        .filter_map(|v| v.get("rewards/hostile-reward/failures")?.as_f64())
        .sum();
    assert_eq!(failures as usize, failed.len());

    // stop: the plugin starts trapping in step 3 (its 17th completion; 8 a step); the run
    // ends with its error and keeps the checkpoint of step 2, which a resume continues from.
    std::fs::remove_dir_all(dir.path().join("run")).unwrap();
    let stop = rewards("stop").replace("mode: trap-on, needle: ' '", "mode: trap-after, after: 16");
    std::fs::write(dir.path().join("stop.yaml"), grpo_config(&stop, "")).unwrap();
    let o = galley(
        dir.path(),
        &["train", "-c", "stop.yaml", "training.max_steps=4"],
    );
    assert!(!o.status.success(), "{}", stdout(&o));
    let err = stderr(&o);
    assert!(
        err.contains("at step 3")
            && err.contains("hostile-reward@0.1.0")
            && err.contains("on_plugin_error: stop")
            && err.contains("checkpoint-2, is intact"),
        "{err}"
    );
    let m = metrics(dir.path());
    assert_eq!(
        m.iter().filter(|v| v.get("reward").is_some()).count(),
        2,
        "steps 1 and 2 logged"
    );
    assert!(dir.path().join("run/checkpoints/checkpoint-2").is_dir());
}

/// The bug this pins: a relative `.wasm` path in a training config was joined with the
/// config's folder twice (once when the config was read, again when the plugin was opened),
/// so `-c examples/train/x.yaml` with `plugin: ../plugins/x.wasm` looked in
/// `examples/train/examples/train/...`. Every plugin path is now resolved once, by the one
/// plugin locator, relative to the file that names it.
#[test]
fn relative_plugin_paths_in_a_train_config_are_joined_once() {
    let _one = HEAVY.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let train = dir.path().join("examples/train");
    let plugins = dir.path().join("examples/plugins");
    std::fs::create_dir_all(&plugins).unwrap();
    model(&train);
    for name in ["arith", "math-answer"] {
        std::fs::copy(plugin(name), plugins.join(format!("{name}.wasm"))).unwrap();
    }
    let cfg = grpo_config("    - plugin: ../plugins/math-answer.wasm\n", "").replace(
        &plugin("arith").display().to_string(),
        "../plugins/arith.wasm",
    );
    std::fs::write(train.join("grpo.yaml"), cfg).unwrap();
    // Run from the project root, the config two folders down: a newcomer's layout.
    let o = galley(
        dir.path(),
        &[
            "train",
            "-c",
            "examples/train/grpo.yaml",
            "training.max_steps=1",
            "--json",
        ],
    );
    ok(&o);
    assert!(train.join("run/metrics.jsonl").exists());

    // A path that does not exist is named as written and where it was looked for, once.
    let bad = std::fs::read_to_string(train.join("grpo.yaml"))
        .unwrap()
        .replace("../plugins/math-answer.wasm", "../plugins/nope.wasm");
    std::fs::write(train.join("bad.yaml"), bad).unwrap();
    let line = one_line_error(&galley(
        dir.path(),
        &[
            "train",
            "-c",
            "examples/train/bad.yaml",
            "training.max_steps=1",
        ],
    ));
    assert!(
        line.contains("grpo.rewards[0].plugin")
            && line.contains("examples/train/../plugins/nope.wasm")
            && !line.contains("examples/train/examples/train"),
        "{line}"
    );
}
