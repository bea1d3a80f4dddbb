//! Shared by the model test files: where the real model is, and the lock that runs model tests
//! one at a time, and how far apart two rows of numbers are. (Each test file uses part of it.)
#![allow(dead_code)]

use std::path::PathBuf;

/// One model test at a time: candle's threads spin-wait, and two models on two cores crawl.
pub static HEAVY: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// SmolLM2-135M-Instruct (Q4_1 GGUF), fetched by scripts/fetch-models.sh into `.cache/models`.
pub fn smollm2() -> PathBuf {
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

/// max |a - b| / max |b|: relative to the logits' scale, so near-zero logits do not dominate.
pub fn rel_err(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let diff = a
        .iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max);
    let scale = b.iter().map(|y| y.abs()).fold(0f32, f32::max);
    diff / scale
}
