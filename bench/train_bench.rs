//! Training speed and memory: galley vs PyTorch + transformers + peft on SmolLM2-135M (from the
//! GGUF, dequantized to f32) or another model (`--model`: a GGUF or an HF folder, such as
//! bench/make_gemma3.py's Gemma 3 270M-shaped one), identical token batches (4 x 256, every token in the loss),
//! AdamW in both, full fine-tuning and LoRA (r 8 on all seven projections). Each mode runs in
//! its own process so peak RSS is that mode's alone. Prints tokens/s, peak RSS, the ratios, and
//! both loss curves (full fine-tuning starts from identical weights, so they should agree).
//!
//! With `--prompt-share P` the first P of each row's positions carry no loss in either framework
//! (as a completion-only SFT loss leaves the prompt out; tokens/s still counts every position).
//!
//! `cargo run --release -p galley-bench --bin train-bench -- [--steps N] [--threads N]
//!  [--modes full,lora,qlora] [--prompt-share P] [--model PATH] [--python PATH]`;
//! `scripts/bench-train.sh`
//! builds the venv.

use candle_core::Device;
use galley_train::config::{PeftSection, TrainingSection, Tuning};
use galley_train::model::{Build, Pass, TrainModel};
use galley_train::optim::Optimizer;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

const B: usize = 4;
const T: usize = 256;

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn lr_of(mode: &str) -> f64 {
    if mode == "full" { 1e-5 } else { 2e-4 }
}

/// Token rows of T+1 from the Alpaca demo set, chat-templated (or as plain text, for a model
/// without a template) and concatenated.
fn make_rows(model: &Path, data: &Path, n: usize) -> Vec<Vec<u32>> {
    let ck = galley_model::open(model, Default::default()).expect("model");
    let recs: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(data).expect("alpaca data")).expect("json");
    let mut stream = Vec::new();
    for r in recs {
        let user = format!(
            "{}\n{}",
            r["instruction"].as_str().unwrap_or(""),
            r["input"].as_str().unwrap_or("")
        );
        let msgs = vec![
            galley_core::Message::new("user", user.trim()),
            galley_core::Message::new("assistant", r["output"].as_str().unwrap_or("")),
        ];
        let text = match &ck.template {
            Some(t) => t.render(&msgs, false, None).unwrap(),
            None => format!("{user}\n{}\n", r["output"].as_str().unwrap_or("")),
        };
        stream.extend(ck.tokenizer.encode(&text, false).unwrap());
        if stream.len() >= n * (T + 1) {
            break;
        }
    }
    stream
        .chunks_exact(T + 1)
        .take(n)
        .map(|c| c.to_vec())
        .collect()
}

/// One mode in this process: prints a JSON line.
fn child(mode: &str, model: &Path, rows_file: &Path, steps: usize, skip: usize) {
    let rows: Vec<Vec<u32>> =
        serde_json::from_str(&std::fs::read_to_string(rows_file).unwrap()).unwrap();
    let method = match mode {
        "full" => Tuning::Full,
        "lora" => Tuning::Lora,
        _ => Tuning::Qlora,
    };
    let peft = PeftSection {
        r: 8,
        lora_alpha: 16.0,
        lora_dropout: 0.0,
        target_modules: galley_train::model::MODULES.map(String::from).to_vec(),
        ..Default::default()
    };
    let ck = galley_model::open(model, Default::default()).expect("model");
    let build = Build {
        tuning: method,
        peft: &peft,
        seed: 0,
    };
    let m = TrainModel::load(&ck.weights, ck.config, &build, &Device::Cpu).expect("load");
    // As `galley train` does: the model keeps what it uses (frozen q|k|v and gate|up are
    // restacked, so the checkpoint's own tensors would otherwise stay alive beside them).
    drop(ck.weights);
    let cfg = TrainingSection {
        learning_rate: lr_of(mode),
        ..Default::default()
    };
    let mut opt = Optimizer::new(&cfg, &m.trainable).unwrap();
    let mut losses = Vec::new();
    let mut timed = 0f64;
    for s in 0..steps {
        let mut inputs = Vec::with_capacity(B * T);
        let mut targets = Vec::with_capacity(B * T);
        for r in &rows[s * B..(s + 1) * B] {
            inputs.extend_from_slice(&r[..T]);
            targets.extend(std::iter::repeat_n(galley_train::ops::IGNORE, skip));
            targets.extend_from_slice(&r[1 + skip..]);
        }
        let t0 = Instant::now();
        let pass = Pass {
            kernels: m.kernels,
            train: true,
            adapters: true,
            seed: s as u64,
        };
        let l = m.losses(&inputs, &targets, B, T, &pass).unwrap();
        let loss = (l.sum_all().unwrap() / (B * (T - skip)) as f64).unwrap();
        losses.push(loss.to_scalar::<f32>().unwrap());
        let t1 = Instant::now();
        let g = loss.backward().unwrap();
        let t2 = Instant::now();
        opt.accumulate(&m.trainable, &g).unwrap();
        drop(g);
        opt.clip(&m.trainable, 1.0).unwrap();
        opt.step(&m.trainable, lr_of(mode)).unwrap();
        eprintln!(
            "step {s}: forward {:.2}s backward {:.2}s optimizer {:.2}s",
            (t1 - t0).as_secs_f64(),
            (t2 - t1).as_secs_f64(),
            t2.elapsed().as_secs_f64()
        );
        // The first step warms caches and the allocator in both frameworks: not timed.
        if s > 0 {
            timed += t0.elapsed().as_secs_f64();
        }
    }
    let tps = ((steps - 1) * B * T) as f64 / timed;
    println!(
        "{}",
        serde_json::json!({"mode": mode, "tokens_per_s": tps, "peak_rss_mb": galley_train::peak_rss_mb(), "losses": losses,
            "trainable": m.trainable_params(), "frozen_bytes": m.frozen_bytes()})
    );
}

fn last_json(out: &[u8]) -> Option<serde_json::Value> {
    String::from_utf8_lossy(out)
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let model = arg(&args, "--model").map_or_else(
        || root.join(".cache/models/SmolLM2-135M-Instruct.Q4_1.gguf"),
        PathBuf::from,
    );
    let steps: usize = arg(&args, "--steps").map_or(4, |s| s.parse().expect("--steps N"));
    // Positions without a loss at the start of each row: `--skip` between the processes.
    let skip: usize = match (arg(&args, "--skip"), arg(&args, "--prompt-share")) {
        (Some(k), _) => k.parse().expect("--skip N"),
        (None, Some(p)) => {
            let p: f64 = p.parse().expect("--prompt-share P");
            assert!((0.0..1.0).contains(&p), "--prompt-share takes 0 <= P < 1");
            (p * T as f64).round() as usize
        }
        (None, None) => 0,
    };
    if let Some(threads) = arg(&args, "--threads") {
        let n: usize = threads.parse().expect("--threads N");
        rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global()
            .unwrap();
    }
    if let Some(mode) = arg(&args, "--child") {
        galley_train::keep_freed_memory();
        child(
            &mode,
            &model,
            Path::new(&arg(&args, "--rows").unwrap()),
            steps,
            skip,
        );
        return;
    }
    let threads = arg(&args, "--threads").unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map_or(2, |n| n.get())
            .to_string()
    });
    let modes = arg(&args, "--modes").unwrap_or("full,lora,qlora".into());
    let python = arg(&args, "--python");
    let work = std::env::temp_dir().join(format!("galley-train-bench-{}", std::process::id()));
    std::fs::create_dir_all(&work).unwrap();
    let rows = make_rows(
        &model,
        &root.join(".cache/data/alpaca_en_demo.json"),
        steps * B,
    );
    assert_eq!(rows.len(), steps * B, "not enough data for {steps} steps");
    let rows_file = work.join("rows.json");
    std::fs::write(&rows_file, serde_json::to_string(&rows).unwrap()).unwrap();
    println!(
        "{}, batch {B} x {T}, AdamW, {steps} steps (first untimed), {threads} threads, \
         loss on the last {} positions of each row",
        model.display(),
        T - skip
    );
    println!(
        "{:<7} {:>12} {:>12} {:>12} {:>12} {:>8} {:>8}",
        "mode", "galley tok/s", "torch tok/s", "galley MB", "torch MB", "speed", "memory"
    );
    for mode in modes.split(',') {
        let exe = std::env::current_exe().unwrap();
        let g = Command::new(&exe)
            .args([
                "--child",
                mode,
                "--rows",
                rows_file.to_str().unwrap(),
                "--steps",
                &steps.to_string(),
                "--threads",
                &threads,
                "--skip",
                &skip.to_string(),
                "--model",
                model.to_str().unwrap(),
            ])
            .output()
            .expect("galley child");
        if std::env::var_os("GALLEY_BENCH_PHASES").is_some() {
            eprint!("{}", String::from_utf8_lossy(&g.stderr));
        }
        let Some(g) = last_json(&g.stdout) else {
            eprintln!(
                "galley {mode} failed: {}",
                String::from_utf8_lossy(&g.stderr)
            );
            continue;
        };
        let p = python.as_ref().filter(|_| mode != "qlora").and_then(|py| {
            let out = Command::new(py)
                .arg(root.join("bench/train_peer.py"))
                .args([
                    "--mode",
                    mode,
                    "--rows",
                    rows_file.to_str().unwrap(),
                    "--model",
                    model.to_str().unwrap(),
                ])
                .args(["--threads", &threads, "--lr", &lr_of(mode).to_string()])
                .args(["--skip", &skip.to_string()])
                .output()
                .expect("python peer");
            let v = last_json(&out.stdout);
            if v.is_none() {
                eprintln!(
                    "torch {mode} failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            v
        });
        let f = |v: &serde_json::Value, k: &str| v[k].as_f64().unwrap_or(f64::NAN);
        let (pt, pm) = p.as_ref().map_or((f64::NAN, f64::NAN), |p| {
            (f(p, "tokens_per_s"), f(p, "peak_rss_mb"))
        });
        println!(
            "{:<7} {:>12.1} {:>12.1} {:>12.0} {:>12.0} {:>7.2}x {:>7.2}x",
            mode,
            f(&g, "tokens_per_s"),
            pt,
            f(&g, "peak_rss_mb"),
            pm,
            f(&g, "tokens_per_s") / pt,
            f(&g, "peak_rss_mb") / pm
        );
        println!("        galley losses {}", g["losses"]);
        if let Some(p) = &p {
            println!("        torch  losses {}", p["losses"]);
            println!(
                "        first loss in f64 from torch's logits {}",
                p["first_loss_f64"]
            );
        }
        println!(
            "        trainable {} params, frozen projections {} MB",
            g["trainable"],
            f(&g, "frozen_bytes") / 1e6
        );
    }
    let _ = std::fs::remove_dir_all(&work);
}
