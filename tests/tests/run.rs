//! `galley run` and `galley plan` through the binary, on a tiny random model made on the
//! spot, with the first-party recipes (`curriculum`, `preference`) and the hostile test
//! recipe built from source and run in the sandbox: two recipes concatenated into one run
//! (SFT -> GRPO -> evaluate -> DPO -> evaluate, each stage's model the next one's), fused
//! stages, a conflict and the two ways to settle it, a recipe ending a stage on a metric, a
//! recipe that traps or spins in `plan` and in `on-metrics` (the run ends cleanly, its
//! checkpoint intact), and a replay from run.json with identical metrics.

use galley_e2e::*;
use std::path::Path;
use std::process::Output;
use std::sync::Mutex;

/// Runs one at a time: two trainings on two cores would each crawl.
static HEAVY: Mutex<()> = Mutex::new(());

fn run(dir: &Path, args: &[&str]) -> Output {
    let _one = HEAVY.lock().unwrap_or_else(|e| e.into_inner());
    galley(dir, args)
}

fn ok(o: &Output) -> String {
    assert!(o.status.success(), "failed:\n{}{}", stdout(o), stderr(o));
    stdout(o)
}

/// The last line of a failed run's stderr: the error.
fn error_line(o: &Output) -> String {
    assert!(!o.status.success(), "expected failure:\n{}", stdout(o));
    let err = stderr(o);
    let last = err
        .lines()
        .rfind(|l| !l.trim().is_empty())
        .unwrap_or_default();
    assert!(last.starts_with("error: "), "{err}");
    last.to_string()
}

fn json_file(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

/// A folder with the tiny model, SFT conversations, preference pairs and a local task.
fn project() -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let text: Vec<String> = (0..200)
        .map(|i| {
            let (a, b) = (i % 10, i / 10 % 10);
            format!("What is {a} + {b}? {a} + {b} = {} #### {}", a + b, a + b)
        })
        .collect();
    galley_train::testing::tiny_chat_model_from(&d.join("model"), &text);
    std::fs::create_dir_all(d.join("data")).unwrap();
    let (mut chat, mut pairs, mut mc) = (String::new(), String::new(), String::new());
    for i in 0..16 {
        let (a, b) = (i % 10, (i * 3) % 10);
        let q = format!("What is {a} + {b}?");
        chat.push_str(&format!(
            "{}\n",
            serde_json::json!({"messages": [
                {"role": "user", "content": q},
                {"role": "assistant", "content": format!("#### {}", a + b)}]})
        ));
        pairs.push_str(&format!(
            "{}\n",
            serde_json::json!({
                "prompt": [{"role": "user", "content": q}],
                "chosen": [{"role": "assistant", "content": format!("#### {}", a + b)}],
                "rejected": [{"role": "assistant", "content": format!("#### {}", a + b + 3)}]})
        ));
        mc.push_str(&format!(
            "{}\n",
            serde_json::json!({"question": q, "choices": [format!("{}", a + b), format!("{}", a + b + 5)], "answer": 0})
        ));
    }
    std::fs::write(d.join("data/chat.jsonl"), chat).unwrap();
    std::fs::write(d.join("data/pairs.jsonl"), pairs).unwrap();
    std::fs::write(d.join("data/mc.jsonl"), mc).unwrap();
    std::fs::write(
        d.join("sums.yaml"),
        "task: sums\n\
         dataset_path: json\n\
         dataset_kwargs:\n  data_files:\n    test: data/mc.jsonl\n\
         output_type: multiple_choice\n\
         test_split: test\n\
         doc_to_text: \"{{question}} Answer:\"\n\
         doc_to_target: answer\n\
         doc_to_choice: choices\n\
         metric_list:\n  - metric: acc\n",
    )
    .unwrap();
    tmp
}

/// Settings per stage kind that every test's run shares.
fn defaults() -> String {
    format!(
        "defaults:
  sft:
    data: {{train: {{path: data/chat.jsonl}}, max_length: 48}}
    training: {{tuning: full, batch_size: 4, learning_rate: 0.002, eval_on_start: false}}
  grpo:
    data:
      train: {{plugin: {arith}, plugin_config: {{words: false, min: 1, max: 9, ops: ['+']}}, limit: 16}}
      max_length: 96
    training: {{tuning: full, batch_size: 8, learning_rate: 0.01, eval_on_start: false}}
    grpo:
      max_completion_length: 6
      temperature: 1.0
      rewards: [{{plugin: {math}}}]
  dpo:
    data: {{train: {{path: data/pairs.jsonl}}, max_length: 48}}
    training: {{tuning: full, batch_size: 4, learning_rate: 0.001, eval_on_start: false}}
  evaluate:
    tasks: [sums.yaml]
    limit: 8
",
        arith = plugin("arith").display(),
        math = plugin("math-answer").display(),
    )
}

fn write_config(dir: &Path, name: &str, body: &str) {
    std::fs::write(
        dir.join(name),
        format!("model: model\nseed: 7\nthreads: 1\n{body}{}", defaults()),
    )
    .unwrap();
}

#[test]
fn two_recipes_concatenated_chain_sft_grpo_dpo_and_evaluations_in_one_run_folder() {
    let tmp = project();
    let d = tmp.path();
    write_config(
        d,
        "run.yaml",
        &format!(
            "recipes:
  - plugin: {}
    settings: {{sft_epochs: 1, grpo_steps: 2, num_generations: 4, target_reward: 5.0}}
  - plugin: {}
    settings: {{steps: 2}}
",
            plugin("curriculum").display(),
            plugin("preference").display()
        ),
    );
    let out = ok(&run(d, &["run", "run.yaml"]));
    assert!(out.contains("finished"), "{out}");
    let m = json_file(&d.join("runs/run/run.json"));
    assert_eq!(m["status"], "finished");
    let names: Vec<&str> = m["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    // Concatenated in the recipes' order; the two `eval` stages are told apart by recipe.
    assert_eq!(
        names,
        [
            "warmup",
            "grpo",
            "curriculum.eval",
            "dpo",
            "preference.eval"
        ]
    );
    for s in m["stages"].as_array().unwrap() {
        assert_eq!(s["status"], "finished", "{s}");
        assert!(s["metrics_digest"].is_string(), "{s}");
    }
    // Each stage starts from the model the one before it trained.
    let plan = &m["plan"]["stages"];
    assert_eq!(plan[1]["model_from"], "warmup");
    assert_eq!(plan[3]["model_from"], "grpo");
    assert_eq!(
        plan[1]["origin"]["training.max_steps"],
        "recipe curriculum@0.3.0 (recipes[0])"
    );
    assert!(d.join("runs/run/warmup/model/model.safetensors").is_file());
    assert!(d.join("runs/run/grpo/metrics.jsonl").is_file());
    assert!(d.join("runs/run/dpo/model/model.safetensors").is_file());
    let results = json_file(&d.join("runs/run/preference.eval/results.json"));
    assert!(
        results["results"]["sums"]["acc,none"].is_number(),
        "{results}"
    );
    let dpo_cfg = std::fs::read_to_string(d.join("runs/run/dpo/config.yaml")).unwrap();
    assert!(dpo_cfg.contains("runs/run/grpo/model"), "{dpo_cfg}");
    // Every plugin the run opened is recorded with its digest.
    let ids: Vec<&str> = m["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_str().unwrap())
        .collect();
    for want in [
        "curriculum@0.3.0",
        "preference@0.2.0",
        "arith@0.2.0",
        "math-answer@0.2.0",
    ] {
        assert!(ids.contains(&want), "{ids:?}");
    }
    assert!(
        m["model"]["digest"]
            .as_str()
            .unwrap()
            .starts_with("sha256:")
    );
    assert_eq!(
        m["data"].as_array().unwrap().len(),
        2,
        "chat and pairs: {}",
        m["data"]
    );
}

#[test]
fn fused_stages_conflicts_and_how_a_run_config_settles_them() {
    let tmp = project();
    let d = tmp.path();
    let curriculum = plugin("curriculum").display().to_string();
    // Two recipes that both end with an evaluation: fused, one `eval` stage heard by both.
    write_config(
        d,
        "fused.yaml",
        &format!(
            "fuse: true
recipes:
  - plugin: {curriculum}
    settings: {{sft_epochs: 0, grpo_steps: 2, num_generations: 4}}
  - plugin: {}
",
            plugin("hostile-recipe").display()
        ),
    );
    let plan: serde_json::Value =
        serde_json::from_str(&ok(&run(d, &["plan", "fused.yaml", "--json"]))).unwrap();
    let stages = plan["stages"].as_array().unwrap();
    assert_eq!(stages.len(), 2, "{plan}");
    assert_eq!(stages[1]["name"], "eval");
    assert_eq!(stages[1]["owners"].as_array().unwrap().len(), 2);
    assert_eq!(plan["estimates"][0]["steps"], 2);

    // The same recipe twice with different step counts: a conflict naming both and the key.
    let twice = format!(
        "fuse: true
recipes:
  - plugin: {curriculum}
    settings: {{sft_epochs: 0, grpo_steps: 2, num_generations: 4}}
  - plugin: {curriculum}
    settings: {{sft_epochs: 0, grpo_steps: 3, num_generations: 4}}
"
    );
    write_config(d, "conflict.yaml", &twice);
    let err = error_line(&run(d, &["plan", "conflict.yaml"]));
    for want in [
        "recipes[0]",
        "recipes[1]",
        "`grpo`",
        "`training.max_steps`",
        "--set stage.grpo",
    ] {
        assert!(err.contains(want), "{want} missing: {err}");
    }
    // Settled by an override...
    let out = ok(&run(
        d,
        &[
            "plan",
            "conflict.yaml",
            "--set",
            "stage.grpo.training.max_steps=5",
        ],
    ));
    assert!(
        out.lines()
            .any(|l| l.contains("training.max_steps") && l.contains("5") && l.contains("override")),
        "{out}"
    );
    // ...or by a priority.
    write_config(
        d,
        "priority.yaml",
        &twice.replace(
            "grpo_steps: 3, num_generations: 4}",
            "grpo_steps: 3, num_generations: 4}\n    priority: 1",
        ),
    );
    let plan: serde_json::Value =
        serde_json::from_str(&ok(&run(d, &["plan", "priority.yaml", "--json"]))).unwrap();
    assert_eq!(plan["stages"][0]["settings"]["training"]["max_steps"], 3);
}

#[test]
fn a_recipe_ends_grpo_on_its_reward_and_the_run_moves_on() {
    let tmp = project();
    let d = tmp.path();
    write_config(
        d,
        "run.yaml",
        &format!(
            "recipes:
  - plugin: {}
    settings: {{sft_epochs: 0, grpo_steps: 6, num_generations: 4, target_reward: 0.0}}
",
            plugin("curriculum").display()
        ),
    );
    ok(&run(d, &["run", "run.yaml"]));
    let m = json_file(&d.join("runs/run/run.json"));
    let grpo = &m["stages"][0];
    assert_eq!(grpo["steps"], 1, "{grpo}");
    assert!(
        grpo["status"].as_str().unwrap().starts_with("ended early"),
        "{grpo}"
    );
    assert!(
        d.join("runs/run/grpo/checkpoints")
            .read_dir()
            .unwrap()
            .next()
            .is_some()
    );
    assert_eq!(m["stages"][1]["name"], "eval");
    assert_eq!(m["stages"][1]["status"], "finished");
    assert_eq!(m["status"], "finished");
}

#[test]
fn a_hostile_recipe_ends_the_run_cleanly_in_plan_and_in_on_metrics() {
    let tmp = project();
    let d = tmp.path();
    let hostile = plugin("hostile-recipe").display().to_string();
    let cfg = |mode: &str, extra: &str| {
        format!(
            "limits: {{timeout_ms: 400}}
{extra}recipes:
  - plugin: {hostile}
    settings: {{mode: {mode}}}
stage:
  train: {{training: {{max_steps: 3}}}}
"
        )
    };
    for (mode, want) in [("trap-plan", "panicked in plan"), ("loop-plan", "time")] {
        write_config(
            d,
            "h.yaml",
            &cfg(mode, "").replace("stage:\n  train: {training: {max_steps: 3}}\n", ""),
        );
        let err = error_line(&run(d, &["run", "h.yaml"]));
        assert!(
            err.contains("hostile-recipe@0.1.0") && err.contains(want),
            "{mode}: {err}"
        );
        assert!(!d.join("runs/h/run.json").exists(), "{mode}: nothing ran");
    }
    for (mode, want) in [
        ("trap-metrics", "panicked in on-metrics"),
        ("loop-metrics", "time"),
    ] {
        let _ = std::fs::remove_dir_all(d.join("runs"));
        write_config(d, "h.yaml", &cfg(mode, ""));
        let err = error_line(&run(d, &["run", "h.yaml"]));
        assert!(
            err.contains("hostile-recipe@0.1.0") && err.contains(want),
            "{mode}: {err}"
        );
        let m = json_file(&d.join("runs/h/run.json"));
        assert!(m["status"].as_str().unwrap().starts_with("failed"), "{m}");
        assert_eq!(
            m["stages"][0]["steps"], 1,
            "ended after the first step: {m}"
        );
        // The checkpoint of the step it ended at is intact and loads.
        let ck = d.join("runs/h/train/checkpoints");
        assert_eq!(ck.read_dir().unwrap().count(), 1, "{mode}");
        assert!(d.join("runs/h/train/model/model.safetensors").is_file());
    }
    // Under `skip`, a failing on-metrics is a warning and the stage runs to its end.
    let _ = std::fs::remove_dir_all(d.join("runs"));
    write_config(d, "h.yaml", &cfg("trap-metrics", "on_plugin_error: skip\n"));
    let o = run(d, &["run", "h.yaml"]);
    ok(&o);
    assert!(
        stderr(&o).contains("on_plugin_error: skip"),
        "{}",
        stderr(&o)
    );
    let m = json_file(&d.join("runs/h/run.json"));
    assert_eq!(m["stages"][0]["steps"], 3);
    assert_eq!(m["status"], "finished");
}

#[test]
fn a_replay_from_run_json_reproduces_every_metric_and_refuses_changed_data() {
    let tmp = project();
    let d = tmp.path();
    write_config(
        d,
        "run.yaml",
        "stages:
  - {name: sft, kind: sft, settings: {max_steps: 3}}
  - {name: eval, kind: evaluate}
",
    );
    ok(&run(d, &["run", "run.yaml"]));
    let out = ok(&run(d, &["run", "--replay", "runs/run/run.json"]));
    assert!(out.contains("identical"), "{out}");
    let a = json_file(&d.join("runs/run/run.json"));
    let b = json_file(&d.join("runs/run-replay/run.json"));
    for i in 0..2 {
        assert_eq!(
            a["stages"][i]["metrics_digest"],
            b["stages"][i]["metrics_digest"]
        );
        assert_eq!(a["stages"][i]["metrics"], b["stages"][i]["metrics"]);
    }
    // Data that changed since is refused, naming the file.
    std::fs::write(d.join("data/chat.jsonl"), "{}\n").unwrap();
    let err = error_line(&run(
        d,
        &[
            "run",
            "--replay",
            "runs/run/run.json",
            "--output",
            "runs/again",
        ],
    ));
    assert!(err.contains("chat.jsonl"), "{err}");
}

#[test]
fn first_party_recipes_pretrain_from_scratch_and_stop_early_in_python() {
    let tmp = project();
    let d = tmp.path();
    // `tiny-lm`: a model and tokenizer made from plain text; it ends pre-training at the
    // first held-out loss under its target.
    let text: String = (0..400)
        .map(|i| format!("the {} cat sat on the {} mat.\n", i % 7, i % 5))
        .collect();
    std::fs::write(d.join("data/text.txt"), text).unwrap();
    std::fs::write(
        d.join("pt.yaml"),
        format!(
            "seed: 7
threads: 1
recipes:
  - plugin: {}
    settings: {{hidden_size: 32, layers: 1, heads: 2, vocab_size: 300, target_loss: 100.0}}
defaults:
  pretrain:
    data: {{train: {{path: data/text.txt}}, max_length: 24}}
    training: {{batch_size: 8, max_steps: 6, eval_steps: 2, eval_on_start: false}}
",
            plugin("tiny-lm").display()
        ),
    )
    .unwrap();
    ok(&run(d, &["run", "pt.yaml"]));
    let m = json_file(&d.join("runs/pt/run.json"));
    let st = &m["stages"][0];
    assert_eq!(st["name"], "pretrain");
    assert_eq!(st["steps"], 2, "ended at the first evaluation: {st}");
    assert!(
        st["status"].as_str().unwrap().starts_with("ended early"),
        "{st}"
    );
    assert!(d.join("runs/pt/pretrain/model/model.safetensors").is_file());
    assert!(
        d.join("runs/pt/pretrain/tokenizer/tokenizer.json")
            .is_file()
    );

    // `early-stop`, a recipe written in Python: SFT ends once the held-out loss has not
    // improved by `min_delta` for `patience` evaluations.
    write_config(
        d,
        "es.yaml",
        &format!(
            "recipes:
  - plugin: {}
    settings: {{epochs: 20, eval_steps: 1, patience: 1, min_delta: 10.0}}
stage:
  sft: {{data: {{validation_split: 0.25}}}}
",
            plugin("early-stop").display()
        ),
    );
    ok(&run(d, &["run", "es.yaml"]));
    let m = json_file(&d.join("runs/es/run.json"));
    assert_eq!(m["plugins"][0]["id"], "early-stop@0.1.0");
    assert_eq!(m["stages"][0]["steps"], 2, "{}", m["stages"][0]);
    assert_eq!(m["stages"][1]["name"], "eval");
    assert_eq!(m["status"], "finished");
    // Bad settings are the recipe's own error, before anything trains.
    write_config(
        d,
        "bad.yaml",
        &format!(
            "recipes:\n  - plugin: {}\n    settings: {{patience: 0}}\n",
            plugin("early-stop").display()
        ),
    );
    let err = error_line(&run(d, &["run", "bad.yaml"]));
    assert!(
        err.contains("early-stop@0.1.0") && err.contains("patience"),
        "{err}"
    );
}

#[test]
fn fused_recipes_with_their_own_data_train_on_a_mixture() {
    let tmp = project();
    let d = tmp.path();
    let few: String = (0..4)
        .map(|i| {
            format!(
                "{}\n",
                serde_json::json!({"messages": [
                    {"role": "user", "content": format!("Say {i}.")},
                    {"role": "assistant", "content": format!("{i}")}]})
            )
        })
        .collect();
    std::fs::write(d.join("data/few.jsonl"), few).unwrap();
    let hostile = plugin("hostile-recipe").display().to_string();
    write_config(
        d,
        "mix.yaml",
        &format!(
            "fuse: true
recipes:
  - plugin: {hostile}
    settings: {{mode: sft-data, path: data/chat.jsonl}}
  - plugin: {hostile}
    settings: {{mode: sft-data, path: data/few.jsonl}}
stage:
  train: {{training: {{max_steps: 2}}, data: {{mixture_stopping: all_exhausted}}}}
"
        ),
    );
    let plan: serde_json::Value =
        serde_json::from_str(&ok(&run(d, &["plan", "mix.yaml", "--json"]))).unwrap();
    let st = &plan["stages"][0];
    assert_eq!(plan["stages"].as_array().unwrap().len(), 1, "{plan}");
    let mixture = st["settings"]["data"]["mixture"].as_array().unwrap();
    assert_eq!(mixture.len(), 2, "{st}");
    assert!(
        st["settings"]["data"].get("train").is_none(),
        "the default source is not mixed in: {st}"
    );
    let origin = st["origin"]["data.mixture"].as_str().unwrap();
    assert!(
        origin.contains("recipes[0]") && origin.contains("recipes[1]") && origin.contains("mixed"),
        "{origin}"
    );
    ok(&run(d, &["run", "mix.yaml"]));
    let summary = json_file(&d.join("runs/mix/train/summary.json"));
    // all_exhausted: every example of both sources, the smaller one started over.
    assert!(
        summary["train_examples"].as_u64().unwrap() >= 20,
        "{summary}"
    );
}

#[test]
fn lora_stages_hand_on_their_adapters_and_merge_writes_the_same_model() {
    let tmp = project();
    let d = tmp.path();
    write_config(
        d,
        "lora.yaml",
        "stages:
  - {name: sft, kind: sft, settings: {max_steps: 2, tuning: lora, learning_rate: 0.05}}
  - {name: dpo, kind: dpo, settings: {max_steps: 2, tuning: lora, learning_rate: 0.05}}
  - {name: eval, kind: evaluate}
  - {name: merge, kind: merge, settings: {gguf: f32}}
",
    );
    ok(&run(d, &["run", "lora.yaml"]));
    let r = d.join("runs/lora");
    // No merged model is written to hand a LoRA stage's weights on: the next stage applies
    // the adapters in memory.
    assert!(!r.join("sft/model").exists() && !r.join("dpo/model").exists());
    let dpo_cfg = std::fs::read_to_string(r.join("dpo/config.yaml")).unwrap();
    assert!(dpo_cfg.contains("runs/lora/sft/adapter"), "{dpo_cfg}");
    let results = json_file(&r.join("eval/results.json"));
    assert_eq!(
        results["model"]["adapters"].as_array().unwrap().len(),
        2,
        "{results}"
    );
    // The merge stage folds both adapters in: the merged model scores exactly the same.
    assert!(r.join("merge/model/model.safetensors").is_file());
    let alone = ok(&run(
        d,
        &[
            "eval",
            "--model",
            "runs/lora/merge/model",
            "--tasks",
            "sums.yaml",
            "--limit",
            "8",
            "--json",
        ],
    ));
    let alone: serde_json::Value = serde_json::from_str(&alone).unwrap();
    assert_eq!(
        alone["results"]["sums"]["acc,none"], results["results"]["sums"]["acc,none"],
        "{alone}"
    );
    // `gguf: f32` also wrote the merged model for llama.cpp, recorded in run.json; galley
    // scores it as the merged folder.
    let m = json_file(&r.join("run.json"));
    let merge = m["stages"].as_array().unwrap().last().unwrap().clone();
    assert!(
        merge["outputs"]["gguf"]
            .as_str()
            .is_some_and(|p| p.ends_with("merge/model.gguf")),
        "{merge}"
    );
    let gguf = ok(&run(
        d,
        &[
            "eval",
            "--model",
            "runs/lora/merge/model.gguf",
            "--tasks",
            "sums.yaml",
            "--limit",
            "8",
            "--json",
        ],
    ));
    let gguf: serde_json::Value = serde_json::from_str(&gguf).unwrap();
    assert_eq!(
        gguf["results"]["sums"]["acc,none"], alone["results"]["sums"]["acc,none"],
        "{gguf}"
    );
    // `galley export` of the last LoRA stage's folder folds in the chain its config.yaml
    // names (sft's adapter, then its own): every choice scores as on the merge stage's model.
    let out = ok(&run(
        d,
        &[
            "export",
            "runs/lora/dpo",
            "-o",
            "dpo.gguf",
            "--outtype",
            "f32",
        ],
    ));
    assert!(out.contains("dpo.gguf"), "{out}");
    for (model, to) in [("runs/lora/merge/model", "m-out"), ("dpo.gguf", "e-out")] {
        ok(&run(
            d,
            &[
                "eval",
                "--model",
                model,
                "--tasks",
                "sums.yaml",
                "--limit",
                "8",
                "-o",
                to,
            ],
        ));
    }
    let (m, e) = (
        loglikelihoods(&d.join("m-out")),
        loglikelihoods(&d.join("e-out")),
    );
    assert_eq!(m.len(), e.len());
    let diff = m
        .iter()
        .zip(&e)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    assert!(
        diff < 1e-4,
        "the export differs from the merged model by {diff}"
    );
    // A type llama.cpp's converter does not name is refused before anything trains.
    write_config(
        d,
        "bad.yaml",
        "stages:
  - {name: sft, kind: sft, settings: {max_steps: 1}}
  - {name: m, kind: merge, settings: {gguf: q3_k}}
",
    );
    let line = error_line(&run(d, &["run", "bad.yaml"]));
    assert!(line.contains("gguf") && line.contains("q3_k"), "{line}");
    assert!(!d.join("runs/bad/sft").exists(), "{line}");
}

#[test]
fn a_generate_stage_writes_a_dataset_a_later_stage_trains_on() {
    let tmp = project();
    let d = tmp.path();
    write_config(
        d,
        "gen.yaml",
        "stages:
  - {name: gen, kind: generate, settings: {data: data/chat.jsonl, limit: 5, max_tokens: 6, temperature: 0.8}}
  - {name: sft, kind: sft, settings: {max_steps: 2, data: {train: {from: gen}}}}
",
    );
    ok(&run(d, &["run", "gen.yaml"]));
    let rows: Vec<serde_json::Value> =
        std::fs::read_to_string(d.join("runs/gen/gen/generated.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
    assert_eq!(rows.len(), 5);
    for r in &rows {
        // The prompt's turns, then the model's answer in place of the file's.
        let m = r["messages"].as_array().unwrap();
        assert_eq!(m.last().unwrap()["role"], "assistant", "{r}");
        assert_eq!(m[0]["role"], "user", "{r}");
    }
    let sft_cfg = std::fs::read_to_string(d.join("runs/gen/sft/config.yaml")).unwrap();
    assert!(
        sft_cfg.contains("runs/gen/gen/generated.jsonl"),
        "{sft_cfg}"
    );
    let m = json_file(&d.join("runs/gen/run.json"));
    assert_eq!(m["stages"][1]["steps"], 2);
    assert_eq!(m["stages"][0]["metrics"]["completions"], 5.0);
}

#[test]
fn a_replay_fetches_the_registry_packages_its_run_used_and_checks_their_signer() {
    let tmp = project();
    let d = tmp.path();
    ok(&run(d, &["plugin", "install", "galley/curriculum"]));
    write_config(
        d,
        "reg.yaml",
        "recipes:
  - plugin: galley/curriculum
    settings: {sft_epochs: 0, grpo_steps: 2, num_generations: 4}
",
    );
    ok(&run(d, &["run", "reg.yaml"]));
    let m = json_file(&d.join("runs/reg/run.json"));
    let first_party =
        std::fs::read_to_string(repo_root().join("registry/default/first-party.pub")).unwrap();
    let key = first_party.split_whitespace().next().unwrap();
    let rec = &m["plugins"][0];
    assert_eq!(rec["spec"], "galley/curriculum");
    assert_eq!(rec["signer"], key, "{rec}");
    assert!(rec["digest"].as_str().unwrap().starts_with("sha256:"));
    // A machine without the package: the replay installs it as galley.lock pins it.
    std::fs::remove_dir_all(d.join(".galley/plugins")).unwrap();
    let o = run(d, &["run", "--replay", "runs/reg/run.json"]);
    assert!(ok(&o).contains("identical"), "{}", stdout(&o));
    assert!(
        stderr(&o).contains("fetching galley/curriculum"),
        "{}",
        stderr(&o)
    );
}

/// `galley plan run.yaml | head -1`: the reader goes away, galley ends quietly (it panicked
/// on the closed stdout before).
#[test]
fn plan_into_a_closed_pipe_ends_quietly() {
    use std::io::BufRead;
    let tmp = project();
    let d = tmp.path();
    // More plan than a pipe buffers (64 KiB), so galley is still writing when the reader goes.
    let stages: String = (0..120)
        .map(|i| format!("  - {{name: s{i}, kind: sft, settings: {{max_steps: 3}}}}\n"))
        .collect();
    write_config(d, "run.yaml", &format!("stages:\n{stages}"));
    let mut child = std::process::Command::new(galley_bin())
        .current_dir(d)
        .args(["plan", "run.yaml"])
        .env(
            "GALLEY_CACHE_DIR",
            repo_root().join("target/test-galley-cache"),
        )
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert!(first.starts_with("plan run.yaml"), "{first}");
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn resume_keeps_completed_stages_and_continues_where_the_run_stopped() {
    let tmp = project();
    let d = tmp.path();
    // The second stage's data is missing: the run stops there, its first stage done.
    write_config(
        d,
        "run.yaml",
        "stages:
  - {name: warm, kind: sft, settings: {max_steps: 3, tuning: lora}}
  - {name: more, kind: sft, settings: {max_steps: 2, tuning: lora, data: {train: {path: data/more.jsonl}}}}
  - {name: eval, kind: evaluate}
",
    );
    let err = error_line(&run(d, &["run", "run.yaml"]));
    assert!(err.contains("more.jsonl"), "{err}");
    let warm_metrics = std::fs::read(d.join("runs/run/warm/metrics.jsonl")).unwrap();
    // Another config is refused.
    let e = error_line(&run(d, &["run", "run.yaml", "--resume", "--set", "seed=8"]));
    assert!(
        e.contains("--resume") && e.contains("another config"),
        "{e}"
    );
    std::fs::copy(d.join("data/chat.jsonl"), d.join("data/more.jsonl")).unwrap();
    let o = run(d, &["run", "run.yaml", "--resume"]);
    ok(&o);
    assert!(stderr(&o).contains("warm (sft) kept"), "{}", stderr(&o));
    // The kept stage was not trained again; the next one started from its adapter.
    assert_eq!(
        std::fs::read(d.join("runs/run/warm/metrics.jsonl")).unwrap(),
        warm_metrics
    );
    let more_cfg = std::fs::read_to_string(d.join("runs/run/more/config.yaml")).unwrap();
    assert!(more_cfg.contains("runs/run/warm/adapter"), "{more_cfg}");
    let m = json_file(&d.join("runs/run/run.json"));
    assert_eq!(m["status"], "finished");
    let names: Vec<&str> = m["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["warm", "more", "eval"]);
    assert_eq!(m["stages"][1]["steps"], 2);
}

/// An evaluation stage's tasks, their data and the plugins they name are checked before the
/// first stage trains: a misspelt task or a missing metric plugin used to fail only after the
/// training before it had run. A task file's plugin path is taken from the task file's folder.
#[test]
fn an_evaluation_that_cannot_run_fails_the_run_before_anything_trains() {
    let tmp = project();
    let d = tmp.path();
    let stages = |tasks: &str| {
        format!(
            "stages:
  - {{name: warm, kind: sft, settings: {{max_steps: 1}}}}
  - {{name: check, kind: evaluate, settings: {{tasks: {tasks}, include_path: suite}}}}
"
        )
    };
    std::fs::create_dir_all(d.join("suite/plugins")).unwrap();
    let sums = std::fs::read_to_string(d.join("sums.yaml")).unwrap();
    std::fs::write(
        d.join("suite/graded.yaml"),
        sums.replace("task: sums", "task: graded")
            .replace("data/mc.jsonl", "../data/mc.jsonl")
            + "  - plugin: plugins/em.wasm\n",
    )
    .unwrap();
    let before_training = |config: &str, wants: &[&str]| {
        let o = run(d, &["run", config]);
        let line = error_line(&o);
        for w in wants {
            assert!(line.contains(w), "{w}: {line}");
        }
        assert!(
            !d.join("runs/run/warm").exists(),
            "the sft stage must not have run: {line}"
        );
    };

    write_config(d, "run.yaml", &stages("[sumz]"));
    before_training("run.yaml", &["check", "sumz"]);
    write_config(d, "run.yaml", &stages("[graded]"));
    before_training(
        "run.yaml",
        &["check", "graded.yaml", "suite/plugins/em.wasm"],
    );
    std::fs::rename(d.join("data/mc.jsonl"), d.join("data/mc.moved")).unwrap();
    write_config(d, "run.yaml", &stages("sums.yaml"));
    before_training("run.yaml", &["check", "data/mc.jsonl"]);
    std::fs::rename(d.join("data/mc.moved"), d.join("data/mc.jsonl")).unwrap();

    // With the plugin where the task file says, the run goes through and records its file.
    std::fs::copy(plugin("exact-match"), d.join("suite/plugins/em.wasm")).unwrap();
    write_config(d, "run.yaml", &stages("graded"));
    ok(&run(d, &["run", "run.yaml"]));
    let m = json_file(&d.join("runs/run/run.json"));
    let em = m["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["spec"] == "plugins/em.wasm")
        .unwrap_or_else(|| panic!("{}", m["plugins"]));
    assert!(
        em["path"]
            .as_str()
            .unwrap()
            .ends_with("suite/plugins/em.wasm"),
        "{em}"
    );
    let results = json_file(&d.join("runs/run/check/results.json"));
    assert!(
        results["results"]["graded"]["exact_match,none"].is_number(),
        "{results}"
    );
}
