//! Multi-turn rollouts, the shape of GRPO with tools or an environment: a group of rollouts
//! each takes a first turn, then rounds of (tool results appended, next turn). Times the
//! rounds three ways on SmolLM2-135M-Instruct (the GGUF dequantized to f32, as GRPO's policy
//! is), same prompts, same token ids appended, same token budget a turn, same threads:
//!
//! - galley resuming each turn from the KV cache the previous turn left (`generate_resuming`,
//!   what GRPO's tool rounds now do),
//! - galley prefilling every round's whole sequence again (its tool rounds before; the prompts'
//!   shared system prompt still prefilled once),
//! - transformers' `generate` on every round's whole sequence, as TRL's tool loop runs when it
//!   generates with transformers (`bench/tool_rounds_peer.py`, in the same run).
//!
//! End-of-sequence tokens are switched off on every side, so each turn is exactly `--turn`
//! tokens and every side does the same work whatever it samples. Sampling is GRPO's: the
//! whole distribution at temperature 0.7 (no top-k, top-p or min-p).
//!
//! Run: `scripts/bench-tool-rounds.sh [--rounds N] [--turn N] [--prompts N] [--group N]`.

use galley_core::Message;
use galley_model::{
    Finish, Kept, LoadOptions, SamplingParams, generate, generate_resuming, load_with,
};
use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

fn arg(args: &[String], name: &str, default: usize) -> usize {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map_or(default, |s| s.parse().expect("a number"))
}

const QUESTIONS: [&str; 4] = [
    "What is 17 * 23, and then that plus 5?",
    "A train leaves at 9:40 and takes 2 hours 35 minutes. When does it arrive?",
    "Compute the sum of the first 12 odd numbers.",
    "How many seconds are there in 3 days?",
];

struct Timed {
    secs: f64,
    generated: usize,
    prefilled: usize,
    first: Vec<Vec<u32>>,
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let rounds = arg(&args, "--rounds", 4);
    let turn = arg(&args, "--turn", 32);
    let n_prompts = arg(&args, "--prompts", 2);
    let group = arg(&args, "--group", 8);
    let threads = arg(&args, "--threads", 2);
    let python = args
        .iter()
        .position(|a| a == "--python")
        .and_then(|i| args.get(i + 1).cloned());
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global()
        .unwrap();
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let path = root.join(".cache/models/SmolLM2-135M-Instruct.Q4_1.gguf");
    let mut m = load_with(
        &path,
        &candle_core::Device::Cpu,
        LoadOptions {
            dequantize: true,
            ..Default::default()
        },
    )
    .expect("scripts/fetch-models.sh first");
    // Every turn runs its whole budget: the same work on every side, whatever is sampled.
    m.model.config.eos_token_ids.clear();
    m.tokenizer.eos.clear();
    let template = m.template.as_ref().expect("the GGUF's chat template");
    let tools = serde_json::json!([{"type": "function", "function": {
        "name": "calculate", "description": "Evaluates an arithmetic expression.",
        "parameters": {"type": "object", "properties": {"expression": {"type": "string"}},
                       "required": ["expression"]}}}]);
    // SmolLM2's template does not show tools: the system prompt lists them as the templates
    // that do (Qwen 2.5's) would, so the shared prefix is as long as a tool run's.
    let system = format!(
        "You are a careful assistant. When a computation is needed, call a function.\n\n\
         # Tools\n\nThe functions you may call, as JSON schemas:\n<tools>\n{}\n</tools>\n\n\
         To call one, write a JSON object with its name and arguments between \
         <tool_call></tool_call> tags:\n<tool_call>\n{{\"name\": <function-name>, \
         \"arguments\": <args-json-object>}}\n</tool_call>\nThe result comes back in a \
         <tool_response> turn. End with the answer as a number.",
        tools[0]
    );
    let prompts: Vec<Vec<u32>> = (0..n_prompts)
        .map(|i| {
            let msgs = [
                Message::new("system", &system),
                Message::new("user", QUESTIONS[i % QUESTIONS.len()]),
            ];
            let tools = galley_model::json_schema::Json::from(&tools);
            let text = template.render(&msgs, true, Some(&tools)).unwrap();
            m.tokenizer.encode(&text, false).unwrap()
        })
        .collect();
    let suffix = m
        .tokenizer
        .encode(
            "<|im_end|>\n<|im_start|>user\n<tool_response>\n{\"result\": 391}\n</tool_response><|im_end|>\n<|im_start|>assistant\n",
            false,
        )
        .unwrap();
    let rows: Vec<Vec<u32>> = prompts
        .iter()
        .flat_map(|p| std::iter::repeat_n(p.clone(), group))
        .collect();
    let params = |round: usize| SamplingParams {
        temperature: 0.7,
        top_k: 0,
        top_p: 1.0,
        min_p: 0.0,
        max_tokens: turn,
        seed: 1234 + round as u64,
        ..SamplingParams::default()
    };
    let keep_all = |_: usize, _: &str, _: Finish| true;
    let run = |resume: bool| -> Timed {
        let t0 = Instant::now();
        let (mut seqs, mut kept): (Vec<Vec<u32>>, Vec<Option<Kept>>) = (rows.clone(), vec![]);
        let (mut generated, mut prefilled) = (0, 0);
        let mut first = Vec::new();
        for round in 0..=rounds {
            let noop = &mut |_: usize, _: &str| {};
            let outs = if resume {
                let from = std::mem::take(&mut kept);
                let (outs, seen) = generate_resuming(
                    &m.model,
                    &m.tokenizer,
                    &seqs,
                    from,
                    &params(round),
                    &keep_all,
                    noop,
                )
                .unwrap();
                kept = seen;
                outs
            } else {
                generate(&m.model, &m.tokenizer, &seqs, &params(round), noop).unwrap()
            };
            for (s, c) in seqs.iter_mut().zip(&outs) {
                assert_eq!(c.finish, Finish::Length);
                generated += c.tokens.len();
                prefilled += c.prompt_tokens - c.cached_tokens;
                s.extend(&c.tokens);
                if round < rounds {
                    s.extend(&suffix);
                }
            }
            if round == 0 {
                first = outs.into_iter().map(|c| c.tokens).collect();
            }
        }
        Timed {
            secs: t0.elapsed().as_secs_f64(),
            generated,
            prefilled,
            first,
        }
    };
    let prompt_len: usize = prompts.iter().map(Vec::len).sum::<usize>() / prompts.len();
    println!(
        "{} prompts x {group} rollouts, prompt ~{prompt_len} tokens, a first turn then {rounds} \
         rounds of (+{} tool-turn tokens, {turn}-token turn), {threads} threads",
        n_prompts,
        suffix.len()
    );
    // Warm the allocator and the kernels once, unmeasured.
    let _ = generate_resuming(
        &m.model,
        &m.tokenizer,
        &rows[..1],
        vec![],
        &SamplingParams::greedy(4),
        &keep_all,
        &mut |_, _| {},
    )
    .unwrap();
    let again = run(false);
    let resumed = run(true);
    assert_eq!(again.first, resumed.first, "the same first turns");
    let line = |name: &str, t: &Timed| {
        println!(
            "{name:<34} {:>7.2} s  {:>7.1} generated tok/s  {:>6} prompt tokens not resumed",
            t.secs,
            t.generated as f64 / t.secs,
            t.prefilled
        )
    };
    line("galley, resuming from kept caches", &resumed);
    line("galley, prefilling again", &again);
    println!(
        "resuming / prefilling again: {:.2}x",
        again.secs / resumed.secs
    );
    let Some(py) = python else {
        println!("(no --python: the transformers peer was not run)");
        return;
    };
    let dir = std::env::temp_dir().join(format!("galley-tool-rounds-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let spec = dir.join("spec.json");
    std::fs::write(
        &spec,
        serde_json::json!({"prompts": prompts, "suffix": suffix, "group": group,
            "rounds": rounds, "turn": turn, "temperature": 0.7, "threads": threads})
        .to_string(),
    )
    .unwrap();
    let out = Command::new(&py)
        .arg(root.join("bench/tool_rounds_peer.py"))
        .arg(&path)
        .arg(&spec)
        .output()
        .expect("runs the peer");
    assert!(
        out.status.success(),
        "peer failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let peer: serde_json::Value = serde_json::from_slice(out.stdout.trim_ascii()).unwrap();
    let secs = peer["seconds"].as_f64().unwrap();
    println!(
        "{:<34} {:>7.2} s  {:>7.1} generated tok/s  {:>6} prompt tokens not resumed",
        "transformers, prefilling again",
        secs,
        peer["generated"].as_f64().unwrap() / secs,
        peer["prefilled"]
    );
    println!(
        "galley resuming / transformers: {:.2}x; galley prefilling again / transformers: {:.2}x",
        secs / resumed.secs,
        secs / again.secs
    );
    std::fs::remove_dir_all(&dir).ok();
}
