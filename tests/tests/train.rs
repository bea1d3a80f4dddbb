//! `galley train` through the binary: pre-training a tiny model from scratch on Shakespeare
//! (tokenizer trained on the spot) to an asserted loss, a run killed with SIGKILL and resumed
//! that repeats the uninterrupted loss curve exactly, SFT-LoRA on SmolLM2 lowering validation
//! loss with a PEFT adapter and a merged model `galley infer` loads, QLoRA's smaller footprint,
//! and config errors. Needs `scripts/fetch-models.sh` and `scripts/fetch-data.sh`.

use galley_e2e::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Training runs one at a time: two on two cores would each crawl.
static HEAVY: Mutex<()> = Mutex::new(());

fn cache(rel: &str) -> PathBuf {
    let p = repo_root().join(".cache").join(rel);
    assert!(
        p.exists(),
        "{} is missing: run scripts/fetch-models.sh and scripts/fetch-data.sh",
        p.display()
    );
    p
}

fn ok(o: Output) -> String {
    assert!(o.status.success(), "failed:\n{}{}", stdout(&o), stderr(&o));
    stdout(&o)
}

fn json(o: Output) -> serde_json::Value {
    serde_json::from_str(&ok(o)).expect("--json output")
}

/// Two plays, copied so the test owns its corpus.
fn corpus(dir: &Path) -> PathBuf {
    let text = dir.join("text");
    std::fs::create_dir_all(&text).unwrap();
    for play in ["hamlet_gut.txt", "macbeth_gut.txt"] {
        std::fs::copy(cache("data/shakespeare").join(play), text.join(play)).unwrap();
    }
    text
}

const PRETRAIN: &str = "model:
  init: {hidden_size: 64, intermediate_size: 192, num_layers: 2, num_heads: 4, num_kv_heads: 2, max_position_embeddings: 128}
  tokenizer: {train: {vocab_size: 512}}
data:
  train: {path: text}
  max_length: 65
  validation_split: 0.05
training:
  method: full
  output_dir: run
  batch_size: 8
  learning_rate: 3.0e-3
  warmup_steps: 10
  eval_steps: 100
";

fn losses(metrics: &Path) -> Vec<(u64, String)> {
    std::fs::read_to_string(metrics)
        .unwrap()
        .lines()
        .filter_map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).ok()?;
            // Compare the printed numbers exactly: bit-for-bit equal f64s print identically.
            Some((v["step"].as_u64()?, v.get("loss")?.to_string()))
        })
        .collect()
}

#[test]
fn pretraining_from_scratch_reaches_the_expected_loss() {
    let _one = HEAVY.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    corpus(dir.path());
    std::fs::write(dir.path().join("pt.yaml"), PRETRAIN).unwrap();
    let out = json(galley(
        dir.path(),
        &["train", "-c", "pt.yaml", "training.max_steps=300", "--json"],
    ));
    let s = &out["summary"];
    let (first, last) = (
        s["first_eval_loss"].as_f64().unwrap(),
        s["last_eval_loss"].as_f64().unwrap(),
    );
    // ln(512) = 6.24 is a uniform guess; a bigram-level model is near 5.
    assert!(first > 6.0, "untrained validation loss {first}");
    assert!(last < 4.6, "validation loss after 300 steps: {last}");
    let run = dir.path().join("run");
    for f in [
        "metrics.jsonl",
        "loss.png",
        "config.yaml",
        "model/model.safetensors",
        "model/config.json",
        "model/tokenizer.json",
        "tokenizer/tokenizer.json",
    ] {
        assert!(run.join(f).exists(), "{f} missing");
    }
    let png = std::fs::read(run.join("loss.png")).unwrap();
    assert_eq!(&png[1..4], b"PNG");
    // The model folder is a checkpoint galley infer loads.
    let text = ok(galley(
        dir.path(),
        &[
            "infer",
            "-m",
            "run/model",
            "-p",
            "HAMLET.",
            "-s",
            "max_tokens=8",
            "-s",
            "seed=1",
        ],
    ));
    assert!(!text.trim().is_empty());
}

#[test]
fn sigkill_mid_run_then_resume_repeats_the_loss_curve_exactly() {
    let _one = HEAVY.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    corpus(dir.path());
    let cfg = format!(
        "{PRETRAIN}  max_steps: 400\n  save_steps: 5\n  logging_steps: 1\n  save_total_limit: 3\n"
    );
    std::fs::write(dir.path().join("pt.yaml"), &cfg).unwrap();
    // The uninterrupted run.
    ok(galley(
        dir.path(),
        &[
            "train",
            "-c",
            "pt.yaml",
            "training.output_dir=whole",
            "--json",
        ],
    ));
    let whole = losses(&dir.path().join("whole/metrics.jsonl"));
    assert_eq!(whole.len(), 400, "400 steps logged");
    // A fresh start into a folder with checkpoints would mix two runs: refused.
    let o = galley(
        dir.path(),
        &["train", "-c", "pt.yaml", "training.output_dir=whole"],
    );
    assert!(
        !o.status.success() && stderr(&o).contains("--resume"),
        "{}",
        stderr(&o)
    );

    // The same run, killed once it has checkpoints, then resumed.
    let mut child = Command::new(galley_bin())
        .current_dir(dir.path())
        .args([
            "train",
            "-c",
            "pt.yaml",
            "training.output_dir=killed",
            "--json",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let ck = dir.path().join("killed/checkpoints");
    let start = Instant::now();
    while !ck.join("checkpoint-150").exists() {
        assert!(
            start.elapsed() < Duration::from_secs(300),
            "no checkpoint appeared"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended before it could be killed"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let done = losses(&dir.path().join("killed/metrics.jsonl"))
        .iter()
        .filter(|l| l.0 < 400)
        .count();
    assert!(done < 400, "killed mid-run");
    // What a kill during a save leaves behind must never be taken for a checkpoint.
    std::fs::create_dir_all(ck.join(".checkpoint-395.tmp-4242")).unwrap();
    std::fs::write(
        ck.join(".checkpoint-395.tmp-4242/trained.safetensors"),
        b"half",
    )
    .unwrap();
    std::fs::create_dir_all(ck.join("checkpoint-390")).unwrap();
    std::fs::write(ck.join("checkpoint-390/trained.safetensors"), b"half").unwrap();
    let out = json(galley(
        dir.path(),
        &[
            "train",
            "-c",
            "pt.yaml",
            "training.output_dir=killed",
            "--resume",
            "--json",
        ],
    ));
    let from = out["summary"]["resumed_from"].as_u64().expect("resumed");
    assert!((150..390).contains(&from), "resumed from {from}");
    let resumed = losses(&dir.path().join("killed/metrics.jsonl"));
    assert_eq!(
        resumed, whole,
        "the resumed run's losses differ from the uninterrupted run's"
    );
}

fn sft_config(dir: &Path, method: &str, extra: &str) -> PathBuf {
    let cfg = format!(
        "model:
  path: {}
data:
  train: {{path: {}, limit: 400}}
  validation_split: 0.2
  max_length: 96
  truncation: skip
  group_by_length: true
training:
  method: {method}
  output_dir: {method}
  batch_size: 4
  learning_rate: 3.0e-4
  lr_scheduler: constant
  max_steps: 16
  eval_steps: 16
peft:
  r: 8
  lora_alpha: 16
  lora_dropout: 0.05
  target_modules: [q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj]
{extra}",
        cache("models/SmolLM2-135M-Instruct.Q4_1.gguf").display(),
        cache("data/alpaca_en_demo.json").display()
    );
    let path = dir.join(format!("{method}.yaml"));
    std::fs::write(&path, cfg).unwrap();
    path
}

#[test]
fn sft_lora_on_smollm2_lowers_validation_loss_and_writes_a_peft_adapter() {
    let _one = HEAVY.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    sft_config(dir.path(), "lora", "");
    let out = json(galley(
        dir.path(),
        &[
            "train",
            "-c",
            "lora.yaml",
            "training.save_merged=true",
            "--json",
        ],
    ));
    let s = &out["summary"];
    let (before, after) = (
        s["first_eval_loss"].as_f64().unwrap(),
        s["last_eval_loss"].as_f64().unwrap(),
    );
    assert!(after < before - 0.03, "validation loss {before} -> {after}");

    // PEFT's layout: config fields and key names/shapes as peft writes them for LlamaForCausalLM.
    let adapter = dir.path().join("lora/adapter");
    let cfg: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(adapter.join("adapter_config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(cfg["peft_type"], "LORA");
    assert_eq!(cfg["task_type"], "CAUSAL_LM");
    assert_eq!(cfg["r"], 8);
    assert_eq!(cfg["lora_alpha"], 16.0);
    assert_eq!(cfg["bias"], "none");
    assert_eq!(cfg["fan_in_fan_out"], false);
    assert_eq!(cfg["target_modules"].as_array().unwrap().len(), 7);
    let bytes = std::fs::read(adapter.join("adapter_model.safetensors")).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let (hidden, inter, kv) = (576, 1536, 192);
    let mut expected = Vec::new();
    for l in 0..30 {
        for (part, m, out_dim, in_dim) in [
            ("self_attn", "q_proj", hidden, hidden),
            ("self_attn", "k_proj", kv, hidden),
            ("self_attn", "v_proj", kv, hidden),
            ("self_attn", "o_proj", hidden, hidden),
            ("mlp", "gate_proj", inter, hidden),
            ("mlp", "up_proj", inter, hidden),
            ("mlp", "down_proj", hidden, inter),
        ] {
            let k = format!("base_model.model.model.layers.{l}.{part}.{m}");
            expected.push((format!("{k}.lora_A.weight"), vec![8, in_dim]));
            expected.push((format!("{k}.lora_B.weight"), vec![out_dim, 8]));
        }
    }
    let keys: Vec<&String> = header.keys().filter(|k| *k != "__metadata__").collect();
    assert_eq!(keys.len(), expected.len());
    for (k, shape) in expected {
        let t = header.get(&k).unwrap_or_else(|| panic!("missing {k}"));
        assert_eq!(t["dtype"], "F32", "{k}");
        let got: Vec<usize> = t["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_u64().unwrap() as usize)
            .collect();
        assert_eq!(got, shape, "{k}");
    }
    // The merged model is a plain HF checkpoint galley infer loads.
    let merged = dir.path().join("lora/model");
    let text = ok(galley(
        dir.path(),
        &[
            "infer",
            "-m",
            merged.to_str().unwrap(),
            "-p",
            "What is the capital of France?",
            "-s",
            "temperature=0",
            "-s",
            "max_tokens=12",
        ],
    ));
    assert!(text.contains("Paris"), "{text}");
}

#[test]
fn qlora_keeps_the_base_in_4_bit_blocks_and_uses_less_memory() {
    let _one = HEAVY.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let mut peak = Vec::new();
    for method in ["lora", "qlora"] {
        sft_config(dir.path(), method, "");
        let out = json(galley(
            dir.path(),
            &[
                "train",
                "-c",
                &format!("{method}.yaml"),
                "training.max_steps=2",
                "training.eval_on_start=false",
                "--json",
            ],
        ));
        peak.push((
            out["frozen_bytes"].as_f64().unwrap(),
            out["peak_rss_mb"].as_f64().unwrap(),
        ));
        assert!(out["summary"]["last_loss"].as_f64().unwrap().is_finite());
    }
    let (lora, qlora) = (peak[0], peak[1]);
    // SmolLM2's projections: 106M weights, 425 MB in f32, 66 MB as Q4_1 blocks.
    assert!(
        qlora.0 < 0.2 * lora.0,
        "frozen bytes: qlora {} vs lora {}",
        qlora.0,
        lora.0
    );
    assert!(
        qlora.1 < lora.1 - 200.0,
        "peak RSS: qlora {} MB vs lora {} MB",
        qlora.1,
        lora.1
    );
}

#[test]
fn train_config_errors_name_the_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("bad.yaml"),
        "model:\n  path: m.gguf\ntraining:\n  lerning_rate: 0.1\n",
    )
    .unwrap();
    let o = galley(dir.path(), &["train", "-c", "bad.yaml"]);
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(
        e.contains("bad.yaml:4")
            && e.contains("training.lerning_rate")
            && e.contains("unknown field"),
        "{e}"
    );
    let o = galley(
        dir.path(),
        &["train", "-c", "bad.yaml", "training.lerning_rate=1"],
    );
    assert!(!o.status.success());
    std::fs::write(
        dir.path().join("ok.yaml"),
        "model:\n  path: nothing.gguf\ndata:\n  train: {path: none.jsonl}\n",
    )
    .unwrap();
    // The config as the first argument (as `galley run` and `galley score` take theirs)
    // reads the same file; a stray word after it is still refused as an override.
    for args in [&["train", "-c", "ok.yaml"][..], &["train", "ok.yaml"]] {
        let o = galley(dir.path(), args);
        assert!(
            stderr(&o).contains("none.jsonl") && stderr(&o).contains("no such data file"),
            "{args:?}: {}",
            stderr(&o)
        );
    }
    let o = galley(dir.path(), &["train", "ok.yaml", "oops"]);
    assert!(
        stderr(&o).contains("override `oops`: expected KEY=VALUE"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn a_data_loader_plugin_feeds_the_trainer_through_the_sandbox() {
    let _one = HEAVY.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("granted");
    std::fs::create_dir_all(&data).unwrap();
    let lines: Vec<String> = (0..10)
        .map(|i| {
            serde_json::json!({"messages": [
                {"role": "user", "content": format!("What is {i} + {i}?")},
                {"role": "assistant", "content": format!("{} #### {}", 2 * i, 2 * i)}
            ], "answer": 2 * i})
            .to_string()
        })
        .collect();
    std::fs::write(data.join("train.jsonl"), lines.join("\n") + "\n").unwrap();
    let cfg = format!(
        "model:
  path: {}
data:
  train:
    plugin: {}
    plugin_config: {{path: train.jsonl}}
    plugin_dirs: {{data: granted}}
  max_length: 64
training:
  method: lora
  output_dir: run
  batch_size: 2
  max_steps: 2
",
        cache("models/SmolLM2-135M-Instruct.Q4_1.gguf").display(),
        plugin("jsonl-chat").display()
    );
    std::fs::write(dir.path().join("plugin.yaml"), cfg).unwrap();
    let out = json(galley(
        dir.path(),
        &["train", "-c", "plugin.yaml", "--json"],
    ));
    assert_eq!(out["train_examples"], 10, "{out}");
    assert_eq!(out["summary"]["steps"], 2);
    // Without the directory grant the plugin cannot read its file, and the error names it.
    let cfg = std::fs::read_to_string(dir.path().join("plugin.yaml")).unwrap();
    std::fs::write(
        dir.path().join("nogrant.yaml"),
        cfg.replace("    plugin_dirs: {data: granted}\n", ""),
    )
    .unwrap();
    let o = galley(dir.path(), &["train", "-c", "nogrant.yaml"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("jsonl-chat"), "{}", stderr(&o));
}
