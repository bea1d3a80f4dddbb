//! Shared by the model test files: where the real model is, and the lock that runs model tests
//! one at a time.

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
