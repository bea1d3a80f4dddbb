//! Diagnostic: the host's work per generated token outside the model, on SmolLM2-135M's
//! vocabulary (49,152 logits) and tokenizer — a log-softmax (log-probabilities), a draw with
//! llama.cpp's default cuts (top-k 40, top-p 0.95, min-p 0.05), and the text of the new
//! token — against the straightforward code these replaced (f64 `exp` per logit, a top-k
//! over a copied vocabulary, decoding every token so far), in the same run. A serving step
//! pays these once per sequence, on the batcher's thread.
//!
//! `cargo run --release -p galley-model --example step_costs` (after scripts/fetch-models.sh).

use galley_model::kernels::softmax;
use galley_model::sample::{LogSoftmax, Sampler, SamplingParams};
use galley_model::{TextStream, Tokenizer};
use std::hint::black_box;
use std::time::Instant;

fn time(reps: usize, mut f: impl FnMut()) -> f64 {
    f();
    let t = Instant::now();
    for _ in 0..reps {
        f();
    }
    t.elapsed().as_secs_f64() * 1e6 / reps as f64
}

fn row(name: &str, galley: f64, naive: f64) {
    println!(
        "| {name} | {galley:.1} | {naive:.1} | {:.1}x |",
        naive / galley
    );
}

/// What `LogSoftmax::new` did before: a scalar argmax and an f64 `exp` per logit.
fn naive_log_softmax(logits: &[f32]) -> f32 {
    let mut argmax = 0;
    for (i, &x) in logits.iter().enumerate() {
        if x > logits[argmax] {
            argmax = i;
        }
    }
    let max = logits[argmax];
    let sum: f64 = logits.iter().map(|&l| ((l - max) as f64).exp()).sum();
    sum.ln() as f32
}

/// What the sampler did before for top-k 40 (then min-p and top-p on the survivors).
fn naive_top_k(logits: &[f32], k: usize) -> u32 {
    let mut cand: Vec<(u32, f32)> = logits
        .iter()
        .enumerate()
        .map(|(i, &l)| (i as u32, l / 0.8))
        .collect();
    let desc = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1);
    cand.select_nth_unstable_by(k - 1, desc);
    cand.truncate(k);
    cand.sort_unstable_by(desc);
    cand[0].0
}

/// What a draw with nothing cut did before: f64 `exp` per logit, twice.
fn naive_sample_all(logits: &[f32], u: f64) -> u32 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = logits.iter().map(|&l| ((l - max) as f64).exp()).sum();
    let mut r = u * sum;
    for (i, &l) in logits.iter().enumerate() {
        r -= ((l - max) as f64).exp();
        if r <= 0.0 {
            return i as u32;
        }
    }
    0
}

/// What `LogSoftmax::top` did before: a sorted insertion pass over the vocabulary.
fn naive_top(logits: &[f32], k: usize) -> Vec<(u32, f32)> {
    let mut best: Vec<(u32, f32)> = Vec::with_capacity(k + 1);
    for (i, &x) in logits.iter().enumerate() {
        if best.len() == k && best.last().is_some_and(|b| b.1 >= x) {
            continue;
        }
        let at = best.partition_point(|b| b.1 >= x);
        best.insert(at, (i as u32, x));
        best.truncate(k);
    }
    best
}

fn main() {
    let path = std::path::Path::new(".cache/models/SmolLM2-135M-Instruct.Q4_1.gguf");
    let m = galley_model::load::load(path, &candle_core::Device::Cpu)
        .expect("the SmolLM2 GGUF (scripts/fetch-models.sh)");
    let tok: Tokenizer = m.tokenizer;
    let vocab = m.model.config.vocab_size;
    // Logits shaped like a model's: a few likely tokens over a long tail.
    let logits: Vec<f32> = (0..vocab)
        .map(|i| {
            let u = ((i * 7919) % 10007) as f32 / 10007.0;
            -8.0 * u + if i % 997 == 0 { 9.0 } else { 0.0 }
        })
        .collect();
    println!("| per token and sequence | galley us | naive us | ratio |");
    println!("| --- | ---: | ---: | ---: |");
    let g = time(2000, || {
        black_box(LogSoftmax::new(black_box(&logits)));
    });
    let n = time(2000, || {
        black_box(naive_log_softmax(black_box(&logits)));
    });
    row("log-softmax over the vocabulary", g, n);
    let mut s = Sampler::new(
        SamplingParams {
            temperature: 0.8,
            ..Default::default()
        },
        0,
    );
    let g = time(2000, || {
        black_box(s.sample(black_box(&logits), &[], &[]));
    });
    let n = time(2000, || {
        black_box(naive_top_k(black_box(&logits), 40));
    });
    row(
        "draw, top-k 40 / top-p / min-p (naive: its top-k alone)",
        g,
        n,
    );
    let mut s = Sampler::new(
        SamplingParams {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            ..Default::default()
        },
        0,
    );
    let g = time(2000, || {
        black_box(s.sample(black_box(&logits), &[], &[]));
    });
    let n = time(2000, || {
        black_box(naive_sample_all(black_box(&logits), 0.5));
    });
    row("draw from the whole vocabulary (TRL's default)", g, n);
    // vLLM-style settings: min-p with no top-k. Naive: the whole vocabulary sorted (what a
    // top-k of all but one logit still does).
    let cut = |top_k| SamplingParams {
        temperature: 0.8,
        top_k,
        top_p: 0.95,
        min_p: 0.05,
        ..Default::default()
    };
    let mut s = Sampler::new(cut(0), 0);
    let g = time(2000, || {
        black_box(s.sample(black_box(&logits), &[], &[]));
    });
    let mut s = Sampler::new(cut(vocab - 1), 0);
    let n = time(2000, || {
        black_box(s.sample(black_box(&logits), &[], &[]));
    });
    row(
        "draw, min-p 0.05 / top-p 0.95, no top-k (naive: sorted)",
        g,
        n,
    );
    let g = time(2000, || {
        black_box(softmax::top_k(black_box(&logits), 20));
    });
    let n = time(2000, || {
        black_box(naive_top(black_box(&logits), 20));
    });
    row("the 20 most likely tokens (top_logprobs)", g, n);
    let text = "The quick brown fox jumps over the lazy dog, and then it runs away into the \
                forest where nobody can find it. "
        .repeat(40);
    let ids = tok.encode(&text, false).expect("encodes");
    for len in [100, 1000] {
        let ids = &ids[..len.min(ids.len())];
        let reps = 20;
        let g = time(reps, || {
            let mut s = TextStream::default();
            for &id in ids {
                s.push(&tok, id).expect("decodes");
            }
            black_box(s.text);
        }) / ids.len() as f64;
        let n = time(reps, || {
            for end in 1..=ids.len() {
                black_box(tok.decode(&ids[..end], false).expect("decodes"));
            }
        }) / ids.len() as f64;
        row(
            &format!("text of a token, {} tokens generated", ids.len()),
            g,
            n,
        );
    }
}
