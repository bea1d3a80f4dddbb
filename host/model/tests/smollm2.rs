//! Generation with the real model, SmolLM2-135M-Instruct (Q4_1 GGUF, fetched by
//! scripts/fetch-models.sh into `.cache/models`): greedy answers, batches that agree with
//! one-at-a-time runs, seeds, stop strings and stop tokens, streaming, log-probabilities.

use galley_core::Message;
use galley_model::{Finish, LoadOptions, LoadedModel, SamplingParams, generate, load_with};

mod common;
use common::{HEAVY, smollm2};

fn prompt(m: &LoadedModel, q: &str) -> Vec<u32> {
    let t = m
        .template
        .as_ref()
        .expect("the GGUF carries a chat template");
    m.tokenizer
        .encode(
            &t.render(&[Message::new("user", q)], true, None).unwrap(),
            false,
        )
        .unwrap()
}

#[test]
fn answers_the_capital_of_france_greedily() {
    let _one = HEAVY.lock().unwrap_or_else(|e| e.into_inner());
    let m = load_with(
        &smollm2(),
        &galley_model::default_device(),
        LoadOptions {
            dequantize: true,
            ..Default::default()
        },
    )
    .unwrap();
    let out = generate(
        &m.model,
        &m.tokenizer,
        &[prompt(&m, "What is the capital of France?")],
        &SamplingParams::greedy(24),
        &mut |_, _| {},
    )
    .unwrap();
    assert_eq!(out[0].text, "The capital of France is Paris.");
    assert_eq!(out[0].finish, Finish::Eos);
    assert_eq!(out[0].logprobs.len(), out[0].tokens.len());
    assert!(out[0].logprobs.iter().all(|l| *l <= 0.0 && l.is_finite()));
}

#[test]
fn batches_seeds_stops_and_streaming() {
    let _one = HEAVY.lock().unwrap_or_else(|e| e.into_inner());
    // f32 weights and KV cache, so a batch must reproduce single runs to rounding (quantized
    // matmuls round activations per call, and an f16 cache rounds keys a batched prefill
    // computed in other bits: each moves logprobs by ~1e-3).
    let mut m = load_with(
        &smollm2(),
        &galley_model::default_device(),
        LoadOptions {
            dequantize: true,
            ..Default::default()
        },
    )
    .unwrap();
    m.model.set_kv_dtype(candle_core::DType::F32).unwrap();
    let prompts = vec![
        prompt(&m, "Name three colors."),
        prompt(&m, "Write a haiku about the sea, please, in English."),
    ];
    assert_ne!(prompts[0].len(), prompts[1].len());
    let greedy = SamplingParams::greedy(16);
    let alone: Vec<_> = prompts
        .iter()
        .map(|p| {
            generate(
                &m.model,
                &m.tokenizer,
                std::slice::from_ref(p),
                &greedy,
                &mut |_, _| {},
            )
            .unwrap()
            .remove(0)
        })
        .collect();
    let mut streamed = vec![String::new(); 2];
    let batched = generate(
        &m.model,
        &m.tokenizer,
        &prompts,
        &greedy,
        &mut |i, piece| streamed[i].push_str(piece),
    )
    .unwrap();
    for i in 0..2 {
        assert_eq!(
            batched[i].tokens, alone[i].tokens,
            "row {i}: a batch must not change greedy output"
        );
        assert_eq!(
            streamed[i], batched[i].text,
            "row {i}: the stream adds up to the text"
        );
        for (a, b) in batched[i].logprobs.iter().zip(&alone[i].logprobs) {
            assert!((a - b).abs() < 1e-4, "row {i}: logprob {a} vs {b}");
        }
    }
    // Repeated prompts (a GRPO group) share one prefill, then their cache rows are copied:
    // each row still equals its prompt run alone.
    let grouped = vec![
        prompts[0].clone(),
        prompts[1].clone(),
        prompts[0].clone(),
        prompts[1].clone(),
        prompts[1].clone(),
    ];
    let shared = generate(&m.model, &m.tokenizer, &grouped, &greedy, &mut |_, _| {}).unwrap();
    for (row, out) in shared.iter().enumerate() {
        let i = usize::from(grouped[row] == prompts[1]);
        assert_eq!(
            out.tokens, alone[i].tokens,
            "row {row} of the grouped batch"
        );
        for (a, b) in out.logprobs.iter().zip(&alone[i].logprobs) {
            assert!(
                (a - b).abs() < 1e-4,
                "grouped row {row}: logprob {a} vs {b}"
            );
        }
    }
    // Sampling: the same seed reproduces, another seed differs.
    let sampled = |seed| {
        let p = SamplingParams {
            temperature: 1.0,
            seed,
            max_tokens: 24,
            ..SamplingParams::default()
        };
        generate(&m.model, &m.tokenizer, &prompts[..1], &p, &mut |_, _| {})
            .unwrap()
            .remove(0)
            .tokens
    };
    assert_eq!(sampled(7), sampled(7));
    assert_ne!(sampled(7), sampled(8));
    // A stop string cuts the text; a stop token ends it.
    let first_word = alone[0].text.split_whitespace().nth(1).unwrap().to_string();
    let p = SamplingParams {
        stop: vec![first_word.clone()],
        ..greedy.clone()
    };
    let out = generate(&m.model, &m.tokenizer, &prompts[..1], &p, &mut |_, _| {})
        .unwrap()
        .remove(0);
    assert_eq!(out.finish, Finish::Stop);
    assert!(
        !out.text.contains(&first_word) && alone[0].text.starts_with(&out.text),
        "{:?}",
        out.text
    );
    let p = SamplingParams {
        stop_token_ids: vec![alone[0].tokens[2]],
        ..greedy.clone()
    };
    let out = generate(&m.model, &m.tokenizer, &prompts[..1], &p, &mut |_, _| {})
        .unwrap()
        .remove(0);
    assert_eq!((out.finish, out.tokens.len()), (Finish::Eos, 3));
    let out = generate(
        &m.model,
        &m.tokenizer,
        &prompts[..1],
        &SamplingParams::greedy(5),
        &mut |_, _| {},
    )
    .unwrap()
    .remove(0);
    assert_eq!((out.finish, out.tokens.len()), (Finish::Length, 5));
}

/// galley's Q4_1/Q8_0 kernels (decode) and the dequantized prefill against f32 throughout:
/// the same logits up to the 8-bit rounding of activations.
#[test]
fn quantized_kernels_track_the_f32_model() {
    let _one = HEAVY.lock().unwrap_or_else(|e| e.into_inner());
    let dev = galley_model::default_device();
    let q = load_with(
        &smollm2(),
        &dev,
        LoadOptions {
            dequantize: false,
            ..Default::default()
        },
    )
    .unwrap();
    let f = load_with(
        &smollm2(),
        &dev,
        LoadOptions {
            dequantize: true,
            ..Default::default()
        },
    )
    .unwrap();
    let ids = prompt(&q, "Name three colors.");
    let step = |m: &LoadedModel| {
        let mut cache = m.model.new_cache(1);
        let mut out = vec![
            m.model
                .forward(std::slice::from_ref(&ids), None, &mut cache, true)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap(),
        ];
        // Three decode steps: these go through the quantized matrix-vector kernels.
        for t in [504u32, 3575, 282] {
            out.push(
                m.model
                    .forward(&[vec![t]], None, &mut cache, true)
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap(),
            );
        }
        out
    };
    for (a, b) in step(&q).iter().zip(step(&f)) {
        let diff = a
            .iter()
            .zip(&b)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        let scale = b.iter().map(|y| y.abs()).fold(0f32, f32::max);
        println!("step: relative difference {:.4}", diff / scale);
        // 8-bit activation rounding through 30 layers moves logits by 1-5% of their range;
        // a wrong kernel moves them by ~100%.
        assert!(diff / scale < 0.08, "relative difference {}", diff / scale);
        let top = |v: &[f32]| {
            v.iter()
                .enumerate()
                .max_by(|x, y| x.1.total_cmp(y.1))
                .unwrap()
                .0
        };
        let (qa, fb) = (top(a), top(&b));
        assert!(
            b[qa] > b[fb] - 1.0,
            "the quantized model's top token is far down the f32 model's list"
        );
    }
}
