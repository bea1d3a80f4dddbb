//! Prompt-lookup decoding (`SamplingParams::lookup`) against decoding one token a step, and
//! against llama.cpp's own prompt-lookup tool (`llama-lookup`, same GGUF, same threads, same
//! rendered prompt, greedy, same draft length), in the same run. Tasks whose answer quotes
//! the prompt (a code edit, a paragraph repeated, a record restated as JSON) and one whose
//! answer does not (a poem), where drafts are few and a rejected one costs a wider pass.
//!
//! For each task galley generates greedily with lookup off and on and checks that the
//! tokens are the same; it prints decode tokens/s (the prefill, timed alone, taken out),
//! drafted and kept tokens, and the ratios to plain decoding and to llama-lookup's decode
//! speed (its own "decoded N tokens in T seconds", which leaves its prompt out too).
//!
//! Usage: lookup-bench [GGUF] (default .cache/models/SmolLM2-135M-Instruct.Q4_1.gguf);
//! GALLEY_LLAMA_LOOKUP names llama-lookup (default bench/.llama-cpp/bin/llama-lookup, built
//! by scripts/llama-cpp.sh; the column is left out when it is missing), GALLEY_LOOKUP the
//! draft length (default 8).

use galley_core::Message;
use galley_model::{SamplingParams, generate};
use std::path::{Path, PathBuf};
use std::time::Instant;

const MAX_TOKENS: usize = 160;

const TASKS: [(&str, &str); 4] = [
    (
        "code edit",
        "Rename the variable `total` to `acc` in this Python function and give back the whole function:\n\n```python\ndef mean(values):\n    total = 0\n    count = 0\n    for v in values:\n        total += v\n        count += 1\n    if count == 0:\n        return 0.0\n    return total / count\n```",
    ),
    (
        "repeat",
        "Repeat the following paragraph exactly, word for word:\n\nThe river rose slowly through the night, and by morning the low fields near the mill were under water. The farmers moved their animals to the hill behind the church, where the ground stayed dry, and waited for the rain to stop.",
    ),
    (
        "to JSON",
        "Write these records as a JSON list of objects with the keys name, city and age:\nName: Alice Smith, City: Paris, Age: 34\nName: Bob Jones, City: Lyon, Age: 41\nName: Carol White, City: Nice, Age: 29",
    ),
    ("poem", "Write a short poem about the sea."),
];

fn main() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let gguf = std::env::args()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join(".cache/models/SmolLM2-135M-Instruct.Q4_1.gguf"));
    let n_draft: usize = std::env::var("GALLEY_LOOKUP")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(8);
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let lookup_bin = std::env::var_os("GALLEY_LLAMA_LOOKUP")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("bench/.llama-cpp/bin/llama-lookup"));
    let m = galley_model::load(&gguf, &candle_core::Device::Cpu).expect("model loads");
    let template = m.template.as_ref().expect("the GGUF has a chat template");
    println!(
        "model: {} ({threads} threads), greedy, {MAX_TOKENS} tokens at most, drafts of up to {n_draft}",
        gguf.display()
    );
    // What a step of w tokens costs against one of 1, after 100 cached positions: a draft
    // pays when the tokens it gains outweigh this.
    let ctx: Vec<u32> = (0..100u32).map(|i| (i * 7919 + 13) % 40000).collect();
    let mut widths = String::from("a pass of w tokens after 100 cached, ms (x one token):");
    let mut one = 0.0;
    for w in [1usize, 2, 3, 5, 9] {
        let mut cache = m.model.new_cache(1);
        m.model
            .forward(std::slice::from_ref(&ctx), None, &mut cache, true)
            .expect("prefill");
        let ids = vec![ctx[..w].to_vec()];
        let mut best = f64::INFINITY;
        for _ in 0..6 {
            let t = Instant::now();
            m.model
                .forward(&ids, None, &mut cache, false)
                .expect("pass");
            best = best.min(t.elapsed().as_secs_f64());
            cache.forget(w).expect("forget");
        }
        if w == 1 {
            one = best;
        }
        widths += &format!(" w={w} {:.2} ({:.2}x)", best * 1e3, best / one);
    }
    println!("{widths}");
    println!(
        "{:<10} {:>6} {:>13} {:>13} {:>7} {:>12} {:>13} {:>12} {:>7}",
        "task",
        "tokens",
        "plain tok/s",
        "lookup tok/s",
        "ratio",
        "kept/drafted",
        "llama-lookup",
        "kept/drafted",
        "ratio"
    );
    for (name, prompt) in TASKS {
        let text = template
            .render(&[Message::new("user", prompt)], true, None)
            .expect("template renders");
        let ids = m.tokenizer.encode(&text, false).expect("prompt encodes");
        let params = |max_tokens: usize, lookup: usize| SamplingParams {
            temperature: 0.0,
            max_tokens,
            lookup,
            ..SamplingParams::default()
        };
        let run = |p: &SamplingParams| {
            let t = Instant::now();
            let out = generate(
                &m.model,
                &m.tokenizer,
                std::slice::from_ref(&ids),
                p,
                &mut |_, _| {},
            )
            .expect("generates");
            (
                t.elapsed().as_secs_f64(),
                out.into_iter().next().expect("one completion"),
            )
        };
        // The prefill alone (one token), best of 3 after a warm-up, is taken out of each time.
        let prefill = (0..4)
            .map(|_| run(&params(1, 0)).0)
            .skip(1)
            .fold(f64::INFINITY, f64::min);
        let best = |lookup: usize| {
            (0..2)
                .map(|_| run(&params(MAX_TOKENS, lookup)))
                .min_by(|a, b| a.0.total_cmp(&b.0))
                .expect("two runs")
        };
        let (plain_s, plain) = best(0);
        let (look_s, look) = best(n_draft);
        // A wider pass sums in another order than a one-token step; where two tokens nearly
        // tie, greedy decoding can then part ways (as llama.cpp's batched passes can).
        let same = plain
            .tokens
            .iter()
            .zip(&look.tokens)
            .take_while(|(a, b)| a == b)
            .count();
        if same < plain.tokens.len().max(look.tokens.len()) {
            println!(
                "  {name}: the tokens part at {same}: log p {:.4} (plain) vs {:.4} (lookup) of their picks",
                plain.logprobs.get(same).copied().unwrap_or(f32::NAN),
                look.logprobs.get(same).copied().unwrap_or(f32::NAN)
            );
        }
        // Tokens after the first (which the prefill gives) over the time after it.
        let rate = |s: f64, n: usize| n.saturating_sub(1) as f64 / (s - prefill).max(1e-9);
        let (plain_r, look_r) = (
            rate(plain_s, plain.tokens.len()),
            rate(look_s, look.tokens.len()),
        );
        let peer = llama_lookup(&lookup_bin, &gguf, &text, threads, n_draft);
        let (peer_r, peer_kd) = match &peer {
            Some(p) => (
                format!("{:.1}", p.tok_s),
                format!("{}/{}", p.accepted, p.drafted),
            ),
            None => ("-".into(), "-".into()),
        };
        let peer_ratio = peer
            .as_ref()
            .map_or("-".into(), |p| format!("{:.2}x", look_r / p.tok_s));
        println!(
            "{name:<10} {:>6} {plain_r:>13.1} {look_r:>13.1} {:>6.2}x {:>12} {peer_r:>13} {peer_kd:>12} {peer_ratio:>7}",
            look.tokens.len(),
            look_r / plain_r,
            format!("{}/{}", look.accepted, look.drafted),
        );
        if let Some(p) = &peer
            && p.prompt_tokens != ids.len()
        {
            println!(
                "  (llama-lookup read the prompt as {} tokens, galley as {})",
                p.prompt_tokens,
                ids.len()
            );
        }
    }
    // The four prompts as one batch: whole generation time (prefill included), each way.
    let all: Vec<Vec<u32>> = TASKS
        .iter()
        .map(|(_, p)| {
            let text = template
                .render(&[Message::new("user", *p)], true, None)
                .expect("template renders");
            m.tokenizer.encode(&text, false).expect("prompt encodes")
        })
        .collect();
    let mut line = String::from("the four as one batch, tok/s with the prefill:");
    let mut plain = 0.0;
    for lookup in [0, n_draft] {
        let p = SamplingParams {
            temperature: 0.0,
            max_tokens: MAX_TOKENS,
            lookup,
            ..SamplingParams::default()
        };
        let t = Instant::now();
        let out = generate(&m.model, &m.tokenizer, &all, &p, &mut |_, _| {}).expect("generates");
        let secs = t.elapsed().as_secs_f64();
        let n: usize = out.iter().map(|c| c.tokens.len()).sum();
        let rate = n as f64 / secs;
        if lookup == 0 {
            plain = rate;
        }
        let (k, d): (usize, usize) = out
            .iter()
            .fold((0, 0), |(k, d), c| (k + c.accepted, d + c.drafted));
        line += &format!(
            " lookup {lookup}: {rate:.1} ({:.2}x, {k}/{d} kept)",
            rate / plain
        );
    }
    println!("{line}");
}

struct Peer {
    tok_s: f64,
    drafted: usize,
    accepted: usize,
    prompt_tokens: usize,
}

/// llama-lookup's decode speed and draft counts for `prompt` (greedy), from its log; none
/// when the binary is missing.
fn llama_lookup(
    bin: &Path,
    gguf: &Path,
    prompt: &str,
    threads: usize,
    n_draft: usize,
) -> Option<Peer> {
    if !bin.exists() {
        return None;
    }
    let out = std::process::Command::new(bin)
        .arg("-m")
        .arg(gguf)
        // As an argument: a prompt file loses its last newline (the template's after
        // "assistant"), which would make llama.cpp's prompt a token short of galley's.
        .arg("-p")
        .arg(prompt)
        .args([
            "-n",
            &MAX_TOKENS.to_string(),
            "-t",
            &threads.to_string(),
            "--temp",
            "0",
        ])
        .args(["--spec-draft-n-max", &n_draft.to_string(), "-c", "2048"])
        .output()
        .expect("llama-lookup runs");
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "llama-lookup failed:\n{log}");
    let field = |key: &str| -> Option<f64> {
        let line = log.lines().find(|l| l.contains(key))?;
        let v = line.split(key).nth(1)?;
        v.trim_start_matches([' ', '='])
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    };
    // "encoded   88 tokens in ...", "decoded   65 tokens in    0.765 seconds, speed:   84.950 t/s"
    let after = |head: &str, key: &str| -> Option<f64> {
        let line = log.lines().find(|l| l.contains(head))?;
        let v = line.split(key).nth(1)?;
        v.split_whitespace().next()?.parse().ok()
    };
    let tok_s = after("decoded", "speed:")?;
    let prompt_tokens = after("encoded", "encoded")? as usize;
    Some(Peer {
        tok_s,
        drafted: field("n_drafted")? as usize,
        accepted: field("n_accept")? as usize,
        prompt_tokens,
    })
}
