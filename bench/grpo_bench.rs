//! GRPO step anatomy: a real GRPO run (SmolLM2-135M-Instruct, LoRA, prompts made by the
//! `arith` plugin, `math-answer` + `format` reward plugins in the sandbox) timed phase by
//! phase. Prints the share of a step's wall time spent inside reward plugins (goal: under
//! 1%), the same rewards against `math-answer` compiled natively on the run's completions,
//! and rollout generation tokens/s against transformers' `generate` on the same prompts,
//! group size, sampling settings and threads, measured in the same run.
//!
//! Run: `scripts/bench-grpo.sh [--steps N]` (it builds the plugins and a PyTorch venv).

mod native_math;

use galley_core::{DataSource, Message, Metadata, RewardFn, RewardGroup, RewardInput};
use galley_runtime::{InstanceOptions, Runtime, RuntimeConfig};
use galley_train::{NoObserver, Sources, TrainConfig};
use native_math::NativeMathAnswer;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

const GROUP: usize = 8;
const PROMPTS_PER_STEP: usize = 2;
const MAX_NEW: usize = 48;
const TEMPERATURE: f64 = 0.7;
const SYSTEM: &str = "Solve the problem. End with the answer as a number.";

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn read_jsonl(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn reward(rt: &Runtime, dir: &Path, name: &str, settings: serde_json::Value) -> Box<dyn RewardFn> {
    let p = rt.load(&dir.join(format!("{name}.wasm"))).unwrap();
    Box::new(p.reward(&settings, InstanceOptions::default()).unwrap())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let model = root.join(".cache/models/SmolLM2-135M-Instruct.Q4_1.gguf");
    let plugins = std::env::var_os("GALLEY_PLUGIN_DIR")
        .map(PathBuf::from)
        .unwrap_or(root.join("target/plugins"));
    let steps: usize = arg(&args, "--steps").map_or(6, |s| s.parse().expect("--steps N"));
    let threads: usize = arg(&args, "--threads").map_or_else(
        || std::thread::available_parallelism().map_or(2, |n| n.get()),
        |s| s.parse().expect("--threads N"),
    );
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global()
        .unwrap();
    galley_train::keep_freed_memory();
    let work = std::env::temp_dir().join(format!("galley-grpo-bench-{}", std::process::id()));
    std::fs::create_dir_all(&work).unwrap();
    let rt = Runtime::new(RuntimeConfig::default()).unwrap();

    // The prompts: `arith` through the sandbox, written out so the peer reads the same ones.
    let n = steps * PROMPTS_PER_STEP;
    let arith = rt.load(&plugins.join("arith.wasm")).unwrap();
    let settings = serde_json::json!({"min": 1, "max": 20, "ops": ["+", "-"], "words": false, "system": SYSTEM});
    let mut loader = arith
        .data_loader(&settings, InstanceOptions::default())
        .unwrap();
    let examples = loader.next_page(n).unwrap();
    let prompts = work.join("prompts.jsonl");
    let lines: Vec<String> = examples
        .iter()
        .map(|e| {
            let mut v = serde_json::json!({"prompt": e.messages});
            for (k, m) in &e.metadata {
                v[k] = m.to_json();
            }
            v.to_string()
        })
        .collect();
    std::fs::write(&prompts, lines.join("\n") + "\n").unwrap();

    let sets: Vec<String> = vec![
        format!("model.path={}", model.display()),
        format!("data.train.path={}", prompts.display()),
        "data.shuffle=false".into(),
        "data.max_length=160".into(),
        format!("training.output_dir={}", work.join("run").display()),
        "training.method=grpo".into(),
        "training.tuning=lora".into(),
        format!("training.max_steps={steps}"),
        format!("training.batch_size={}", PROMPTS_PER_STEP * GROUP),
        "training.learning_rate=3e-4".into(),
        "training.lr_scheduler=constant".into(),
        "training.eval_on_start=false".into(),
        format!("grpo.num_generations={GROUP}"),
        format!("grpo.max_completion_length={MAX_NEW}"),
        format!("grpo.temperature={TEMPERATURE}"),
        "grpo.rewards=[{plugin: math-answer}, {plugin: format, weight: 0.5}]".into(),
        "peft.r=16".into(),
        "peft.lora_dropout=0.0".into(),
        "peft.target_modules=[q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj]".into(),
    ];
    let cfg = TrainConfig::load(None, &sets).unwrap();
    let fmt = serde_json::json!({"pattern": ".*[0-9]\\.?\\s*"});
    let sources = Sources {
        rewards: vec![
            reward(&rt, &plugins, "math-answer", serde_json::json!({})),
            reward(&rt, &plugins, "format", fmt),
        ],
        ..Default::default()
    };
    eprintln!(
        "galley: {steps} GRPO steps of {} completions...",
        PROMPTS_PER_STEP * GROUP
    );
    let out = galley_train::run(&cfg, sources, false, &mut NoObserver).unwrap();

    // Phase by phase, from metrics.jsonl.
    let metrics: Vec<serde_json::Value> = read_jsonl(&out.out_dir.join("metrics.jsonl"))
        .into_iter()
        .filter(|m| m.get("reward").is_some())
        .collect();
    let sum = |k: &str| -> f64 { metrics.iter().filter_map(|m| m[k].as_f64()).sum() };
    let total = metrics.last().unwrap()["elapsed_s"].as_f64().unwrap();
    let phases = [
        ("generation", sum("rollout_s")),
        ("engine from merged weights", sum("engine_build_s")),
        ("reward plugins", sum("reward_s")),
        ("update (forward + backward)", sum("update_s")),
    ];
    let other = total - phases.iter().map(|p| p.1).sum::<f64>();
    println!(
        "\nGRPO step anatomy: {steps} steps, {} completions a step, {total:.1} s",
        PROMPTS_PER_STEP * GROUP
    );
    for (name, s) in phases
        .iter()
        .chain([&("other (optimizer, log-probs, bookkeeping)", other)])
    {
        println!("  {name:<44} {s:>8.3} s  {:>8.4}%", 100.0 * s / total);
    }
    let share = sum("reward_s") / total;
    println!(
        "reward plugins' share of a step: {:.4}% (goal < 1%)",
        100.0 * share
    );

    // The same reward on the run's completions: sandboxed plugin vs native Rust.
    let comps = read_jsonl(&out.out_dir.join("completions.jsonl"));
    let inputs: Vec<RewardInput> = comps
        .iter()
        .map(|c| {
            let mut metadata = Metadata::new();
            for (k, v) in c["metadata"].as_object().unwrap() {
                metadata.insert(k.clone(), v.clone().into());
            }
            RewardInput {
                prompt: vec![Message::new("user", c["prompt"].as_str().unwrap_or(""))],
                completion: c["completion"].as_str().unwrap().to_string(),
                metadata,
                ..Default::default()
            }
        })
        .collect();
    let groups: Vec<RewardGroup<'_>> = inputs.chunks(GROUP).flat_map(RewardInput::groups).collect();
    let time = |f: &mut dyn RewardFn| {
        let t = Instant::now();
        let mut out = Vec::new();
        for g in &groups {
            out.extend(f.score(std::slice::from_ref(g)).unwrap());
        }
        (t.elapsed().as_secs_f64(), out)
    };
    let mut wasm = reward(&rt, &plugins, "math-answer", serde_json::json!({}));
    let _ = time(&mut *wasm);
    let (tw, sw) = time(&mut *wasm);
    let (tn, sn) = time(&mut NativeMathAnswer);
    assert_eq!(sw, sn, "plugin and native disagree");
    println!(
        "math-answer on the run's {} completions, one call a group: wasm {:.1} us, native {:.1} us ({:.1}x)",
        inputs.len(),
        tw * 1e6,
        tn * 1e6,
        tw / tn
    );

    // Rollouts: generated tokens and sequence-steps (rows x decode steps) per second.
    let gen_tokens: f64 = comps.iter().map(|c| c["tokens"].as_f64().unwrap()).sum();
    let seq_steps: f64 = comps
        .chunks(PROMPTS_PER_STEP * GROUP)
        .map(|s| {
            s.len() as f64
                * s.iter()
                    .map(|c| c["tokens"].as_f64().unwrap())
                    .fold(0.0, f64::max)
        })
        .sum();
    let gen_s = sum("rollout_s");
    let (g_tok, g_seq) = (gen_tokens / gen_s, seq_steps / gen_s);
    println!(
        "galley rollouts: {g_tok:.1} tokens/s, {g_seq:.1} sequence-steps/s ({gen_tokens} tokens in {gen_s:.1} s)"
    );
    let mut result = serde_json::json!({
        "steps": steps, "threads": threads, "step_s": total / steps as f64,
        "plugin_share": share, "reward_s": sum("reward_s"),
        "wasm_math_answer_us": tw * 1e6, "native_math_answer_us": tn * 1e6,
        "galley_rollout_tokens_per_s": g_tok, "galley_rollout_seq_steps_per_s": g_seq,
    });
    if let Some(py) = arg(&args, "--python") {
        let o = Command::new(&py)
            .arg(root.join("bench/grpo_peer.py"))
            .args(["--model", &model.display().to_string()])
            .args(["--prompts", &prompts.display().to_string()])
            .args([
                "--steps",
                &steps.to_string(),
                "--per-step",
                &PROMPTS_PER_STEP.to_string(),
            ])
            .args([
                "--group",
                &GROUP.to_string(),
                "--max-new",
                &MAX_NEW.to_string(),
            ])
            .args([
                "--temperature",
                &TEMPERATURE.to_string(),
                "--threads",
                &threads.to_string(),
            ])
            .output()
            .expect("the PyTorch peer runs");
        assert!(
            o.status.success(),
            "peer failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let p: serde_json::Value = serde_json::from_slice(
            o.stdout
                .split(|b| *b == b'\n')
                .rfind(|l| !l.is_empty())
                .unwrap(),
        )
        .unwrap();
        let (p_tok, p_seq) = (
            p["tokens_per_s"].as_f64().unwrap(),
            p["seq_steps_per_s"].as_f64().unwrap(),
        );
        println!(
            "transformers generate: {p_tok:.1} tokens/s, {p_seq:.1} sequence-steps/s -> galley {:.2}x tokens/s, {:.2}x sequence-steps/s",
            g_tok / p_tok,
            g_seq / p_seq
        );
        result["peer_rollout_tokens_per_s"] = p_tok.into();
        result["peer_rollout_seq_steps_per_s"] = p_seq.into();
        result["rollout_tokens_ratio"] = (g_tok / p_tok).into();
        result["rollout_seq_steps_ratio"] = (g_seq / p_seq).into();
    } else {
        println!("(no --python: the transformers peer was not run)");
    }
    println!("{result}");
    let _ = std::fs::remove_dir_all(&work);
}
