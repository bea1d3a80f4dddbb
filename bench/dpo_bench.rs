//! DPO speed and memory: `galley train` (the release binary, as a user runs it) against TRL's
//! DPOTrainer (`bench/dpo_peer.py`) on the same SmolLM2-135M-Instruct (from the GGUF, f32), the
//! same conversational preference pairs (LLaMA-Factory's `dpo_en_demo.json` written as TRL's
//! conversational rows) in file order, the same batch of pairs, `max_length`, AdamW, constant
//! learning rate, clipping at 1.0 and sigmoid loss with beta 0.1. LoRA (r 16 on all seven
//! projections; the reference is the policy with its adapters off in both) and full fine-tuning
//! (the reference a frozen copy in both). Each side runs in its own process, so its peak RSS is
//! its own. The first step is not timed (allocator and caches warm up in both).
//!
//! Pairs whose prompt alone leaves fewer than 16 completion tokens within `max_length` are left
//! out of the file for both: galley skips a pair with no completion token left (with a warning)
//! where TRL trains on it with a zero gradient, and the two must see the same pairs. The tokens
//! each side counts per step are printed side by side as the check that they did.
//!
//! `cargo build --release -p galley -p galley-bench && ./target/release/dpo-bench [--steps N]
//!  [--batch PAIRS] [--max-length N] [--modes lora,full] [--threads N] [--python PATH]`, with a
//! Python that has torch, transformers, peft, gguf, datasets and trl 1.16
//! (`scripts/bench-dpo.sh` makes one).

use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::Command;

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn lr_of(mode: &str) -> f64 {
    if mode == "full" { 5e-6 } else { 5e-5 }
}

/// LLaMA-Factory's ShareGPT preference rows as TRL's conversational ones, without the pairs
/// whose prompt leaves fewer than 16 completion tokens; the first `n`.
fn write_pairs(model: &Path, data: &Path, max_length: usize, n: usize, out: &Path) -> usize {
    let ck = galley_model::open(model, Default::default()).expect("model");
    let tmpl = ck.template.expect("chat template");
    let recs: Vec<Value> =
        serde_json::from_str(&std::fs::read_to_string(data).expect("dpo_en_demo.json")).unwrap();
    fn role(from: &str) -> &str {
        match from {
            "human" => "user",
            "gpt" => "assistant",
            other => other,
        }
    }
    let (mut lines, mut dropped) = (String::new(), 0);
    for r in recs {
        let prompt: Vec<galley_core::Message> = r["conversations"]
            .as_array()
            .expect("conversations")
            .iter()
            .map(|m| {
                galley_core::Message::new(
                    role(m["from"].as_str().unwrap()),
                    m["value"].as_str().unwrap(),
                )
            })
            .collect();
        let text = tmpl.render(&prompt, true, None).expect("template");
        if ck.tokenizer.encode(&text, false).unwrap().len() + 16 > max_length {
            dropped += 1;
            continue;
        }
        let msgs: Vec<Value> = prompt
            .iter()
            .map(|m| json!({"role": m.role, "content": m.content}))
            .collect();
        let answer = |k: &str| json!([{"role": "assistant", "content": r[k]["value"]}]);
        let row =
            json!({"prompt": msgs, "chosen": answer("chosen"), "rejected": answer("rejected")});
        lines.push_str(&format!("{row}\n"));
        if lines.lines().count() == n {
            break;
        }
    }
    assert_eq!(
        lines.lines().count(),
        n,
        "not enough pairs for the steps asked"
    );
    std::fs::write(out, lines).unwrap();
    dropped
}

struct Run {
    /// Seconds from the end of the first step to the end of the last.
    timed: f64,
    /// Non-padding tokens (chosen and rejected, prompt included) per step.
    tokens: Vec<u64>,
    losses: Vec<f64>,
    peak_mb: f64,
}

impl Run {
    fn pairs_per_s(&self, batch: usize) -> f64 {
        ((self.tokens.len() - 1) * batch) as f64 / self.timed
    }
    fn tokens_per_s(&self) -> f64 {
        self.tokens[1..].iter().sum::<u64>() as f64 / self.timed
    }
}

/// What both sides run: the model, the folder with `pairs.jsonl`, and the schedule.
struct Setup {
    model: PathBuf,
    work: PathBuf,
    steps: usize,
    batch: usize,
    max_length: usize,
    threads: String,
}

fn galley(bin: &Path, s: &Setup, mode: &str) -> Result<Run, String> {
    let Setup {
        model,
        work,
        steps,
        batch,
        max_length,
        threads,
    } = s;
    let dir = work.join(format!("galley-{mode}"));
    let cfg = format!(
        "model: {{path: {model}}}\n\
         data: {{train: {{path: ../pairs.jsonl}}, max_length: {max_length}, shuffle: false}}\n\
         training: {{method: dpo, tuning: {mode}, output_dir: out, max_steps: {steps}, \
         batch_size: {batch}, learning_rate: {lr}, lr_scheduler: constant, max_grad_norm: 1.0, \
         weight_decay: 0.0, eval_on_start: false, threads: {threads}}}\n\
         dpo: {{beta: 0.1, loss_type: sigmoid, reference: auto}}\n\
         peft: {{r: 16, lora_alpha: 32, lora_dropout: 0.0, target_modules: [q_proj, k_proj, \
         v_proj, o_proj, gate_proj, up_proj, down_proj]}}\n",
        model = model.display(),
        lr = lr_of(mode),
    );
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("dpo.yaml"), cfg).unwrap();
    let out = Command::new(bin)
        .args(["train", "-c", "dpo.yaml"])
        .current_dir(&dir)
        .output()
        .map_err(|e| format!("{}: {e}", bin.display()))?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    let metrics = std::fs::read_to_string(dir.join("out/metrics.jsonl")).unwrap();
    let steps: Vec<Value> = metrics
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v.get("loss").is_some())
        .collect();
    let summary: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("out/summary.json")).unwrap())
            .unwrap();
    let el = |v: &Value| v["elapsed_s"].as_f64().unwrap();
    Ok(Run {
        timed: el(steps.last().unwrap()) - el(&steps[0]),
        tokens: steps
            .iter()
            .map(|v| v["tokens"].as_u64().unwrap())
            .collect(),
        losses: steps.iter().map(|v| v["loss"].as_f64().unwrap()).collect(),
        peak_mb: summary["peak_rss_mb"].as_f64().unwrap(),
    })
}

fn trl(python: &str, root: &Path, s: &Setup, mode: &str) -> Result<Run, String> {
    let out = Command::new(python)
        .arg(root.join("bench/dpo_peer.py"))
        .args(["--mode", mode, "--model", s.model.to_str().unwrap()])
        .args(["--data", s.work.join("pairs.jsonl").to_str().unwrap()])
        .args([
            "--steps",
            &s.steps.to_string(),
            "--batch",
            &s.batch.to_string(),
        ])
        .args([
            "--max-length",
            &s.max_length.to_string(),
            "--threads",
            &s.threads,
        ])
        .args(["--lr", &lr_of(mode).to_string()])
        .output()
        .map_err(|e| format!("{python}: {e}"))?;
    let v = String::from_utf8_lossy(&out.stdout)
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str::<Value>(l).ok())
        .ok_or_else(|| String::from_utf8_lossy(&out.stderr).into_owned())?;
    let nums = |k: &str| -> Vec<f64> {
        v[k].as_array()
            .map(|a| a.iter().filter_map(Value::as_f64).collect())
            .unwrap_or_default()
    };
    let ends = nums("step_ends");
    Ok(Run {
        timed: ends.last().copied().unwrap_or(f64::NAN) - ends.first().copied().unwrap_or(0.0),
        tokens: nums("tokens").iter().map(|&t| t as u64).collect(),
        losses: nums("losses"),
        peak_mb: v["peak_rss_mb"].as_f64().unwrap_or(f64::NAN),
    })
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let model = root.join(".cache/models/SmolLM2-135M-Instruct.Q4_1.gguf");
    let bin = root.join("target/release/galley");
    assert!(
        bin.exists(),
        "{} is missing: cargo build --release -p galley",
        bin.display()
    );
    let num = |name: &str, default: usize| {
        arg(&args, name).map_or(default, |s| {
            s.parse().unwrap_or_else(|_| panic!("{name} N"))
        })
    };
    let (steps, batch, max_length) = (
        num("--steps", 6),
        num("--batch", 2),
        num("--max-length", 1024),
    );
    assert!(
        steps >= 2,
        "--steps takes at least 2 (the first is not timed)"
    );
    let threads = arg(&args, "--threads").unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map_or(2, |n| n.get())
            .to_string()
    });
    let modes = arg(&args, "--modes").unwrap_or("lora,full".into());
    let python = arg(&args, "--python");
    let work = std::env::temp_dir().join(format!("galley-dpo-bench-{}", std::process::id()));
    std::fs::create_dir_all(&work).unwrap();
    let dropped = write_pairs(
        &model,
        &root.join(".cache/data/dpo_en_demo.json"),
        max_length,
        steps * batch,
        &work.join("pairs.jsonl"),
    );
    println!(
        "DPO, SmolLM2-135M-Instruct (f32), {batch} pairs a step, max_length {max_length}, \
         {steps} steps (first untimed), {threads} threads; {dropped} long-prompt pairs left out \
         before the first {} used",
        steps * batch
    );
    println!(
        "{:<5} {:>13} {:>10} {:>13} {:>10} {:>7} {:>10} {:>8} {:>7}",
        "mode",
        "galley pair/s",
        "galley t/s",
        "trl pair/s",
        "trl t/s",
        "speed",
        "galley MB",
        "trl MB",
        "memory"
    );
    let setup = Setup {
        model,
        work,
        steps,
        batch,
        max_length,
        threads,
    };
    for mode in modes.split(',') {
        let g = match galley(&bin, &setup, mode) {
            Ok(g) => g,
            Err(e) => {
                eprintln!("galley {mode} failed: {e}");
                continue;
            }
        };
        let p = python.as_deref().and_then(|py| {
            trl(py, &root, &setup, mode)
                .map_err(|e| eprintln!("trl {mode} failed: {e}"))
                .ok()
        });
        let nan = f64::NAN;
        let (pp, pt, pm) = p.as_ref().map_or((nan, nan, nan), |p| {
            (p.pairs_per_s(batch), p.tokens_per_s(), p.peak_mb)
        });
        println!(
            "{:<5} {:>13.3} {:>10.1} {:>13.3} {:>10.1} {:>6.2}x {:>10.0} {:>8.0} {:>6.2}x",
            mode,
            g.pairs_per_s(batch),
            g.tokens_per_s(),
            pp,
            pt,
            g.pairs_per_s(batch) / pp,
            g.peak_mb,
            pm,
            g.peak_mb / pm
        );
        println!("      galley tokens a step {:?}", g.tokens);
        println!("      galley losses {:?}", g.losses);
        if let Some(p) = &p {
            println!("      trl    tokens a step {:?}", p.tokens);
            println!("      trl    losses {:?}", p.losses);
        }
    }
    let _ = std::fs::remove_dir_all(&setup.work);
}
