//! galley-model: the host's language models. A Llama-family transformer on candle (Llama
//! 2/3.x, SmolLM/SmolLM2, Mistral, Qwen2/2.5, Qwen3 from one implementation with per-family
//! switches), weights from HF safetensors or GGUF (quantized matmuls stay quantized), the
//! tokenizer from `tokenizer.json` or GGUF metadata, HF chat templates through minijinja, and
//! batched generation with sampling, stops, streaming and per-token log-probabilities.

pub mod chat;
pub mod config;
mod error;
pub mod generate;
pub mod hub;
pub mod kernels;
pub mod layers;
pub mod load;
pub mod model;
pub mod sample;
pub mod tokenizer;
pub mod weights;

pub use chat::ChatTemplate;
pub use config::{Family, LlamaConfig, RopeScaling};
pub use error::{ModelError, Result};
pub use generate::{Completion, Finish, generate};
pub use load::{LoadOptions, LoadedModel, load, load_with};
pub use model::{Cache, Llama};
pub use sample::{Sampler, SamplingParams};
pub use tokenizer::Tokenizer;

/// The device galley computes on: `GALLEY_DEVICE` (`cpu`, `cuda`, `cuda:N`) when set, else
/// the first CUDA GPU when built with `cuda` and one is present, else the CPU.
pub fn default_device() -> candle_core::Device {
    let want = std::env::var("GALLEY_DEVICE").unwrap_or_default();
    if want == "cpu" {
        return candle_core::Device::Cpu;
    }
    #[cfg(feature = "cuda")]
    {
        let ordinal = want
            .strip_prefix("cuda:")
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        if let Ok(d) = candle_core::Device::new_cuda(ordinal) {
            return d;
        }
    }
    if want.starts_with("cuda") {
        tracing::warn!(
            "GALLEY_DEVICE={want}, but this galley has no CUDA (build with --features cuda) or no GPU answered; using the CPU"
        );
    }
    candle_core::Device::Cpu
}
