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

/// The device galley computes on: the first CUDA GPU when built with `cuda` and one is
/// present, else the CPU.
pub fn default_device() -> candle_core::Device {
    #[cfg(feature = "cuda")]
    if let Ok(d) = candle_core::Device::new_cuda(0) {
        return d;
    }
    candle_core::Device::Cpu
}
