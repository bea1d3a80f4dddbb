//! galley-model: the host's language models. A Llama-family transformer on candle (Llama
//! 2/3.x, SmolLM/SmolLM2, Mistral, Qwen2/2.5, Qwen3 from one implementation with per-family
//! switches), weights from HF safetensors or GGUF (quantized matmuls stay quantized), the
//! tokenizer from `tokenizer.json` or GGUF metadata, HF chat templates through minijinja, and
//! batched generation with sampling, stops, streaming and per-token log-probabilities.

pub mod adapter;
pub mod answer;
pub mod batch;
pub mod cache;
pub mod chat;
pub mod config;
pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
#[cfg(feature = "cuda")]
mod cuda_decode;
pub mod cuda_src;
#[cfg(feature = "cuda")]
mod cuda_step;
pub mod cupti;
pub mod decode;
pub mod embed;
pub mod engine;
pub mod error;
pub mod generate;
pub mod gguf_export;
pub mod hub;
pub mod json_mode;
pub mod json_schema;
pub mod kernels;
pub mod kv;
pub mod layers;
pub mod load;
pub mod lookup;
pub mod model;
mod pool;
pub mod reasoning;
pub mod sample;
pub mod tokenizer;
pub mod tool_calls;
pub mod weights;

pub use adapter::Adapter;
pub use chat::ChatTemplate;
pub use config::{Family, LlamaConfig, RopeScaling};
pub use embed::{Embedder, Pool};
pub use engine::NativeEngine;
pub use error::{ModelError, Result};
pub use generate::{
    Completion, Finish, KeepIf, Kept, generate, generate_guided, generate_resuming,
    generate_sharing,
};
pub use load::{
    Checkpoint, KvCacheDtype, LoadOptions, LoadedModel, load, load_adapted, load_stacked,
    load_with, open, open_adapted,
};
pub use model::{Cache, Llama};
pub use sample::{Sampler, SamplingParams};
pub use tokenizer::{TextStream, Tokenizer};
pub use weights::TextLayout;

/// How many CUDA GPUs this process sees (0 without the `cuda` feature or a driver).
pub fn cuda_device_count() -> usize {
    #[cfg(feature = "cuda")]
    {
        candle_core::cuda::cudarc::driver::CudaContext::device_count()
            .map_or(0, |n| n.max(0) as usize)
    }
    #[cfg(not(feature = "cuda"))]
    0
}

/// The device named by `spec`: `cpu`, `cuda` or `cuda:N`. Asking for CUDA from a galley built
/// without the `cuda` feature, or when no GPU answers, is an error that says which.
pub fn device(spec: &str) -> Result<candle_core::Device> {
    if spec == "cpu" || spec.is_empty() {
        return Ok(candle_core::Device::Cpu);
    }
    let Some(rest) = spec.strip_prefix("cuda") else {
        return Err(ModelError::Invalid(format!(
            "device `{spec}`: use cpu, cuda or cuda:N"
        )));
    };
    let ordinal: usize = match rest.strip_prefix(':') {
        Some(n) => n
            .parse()
            .map_err(|_| ModelError::Invalid(format!("device `{spec}`: bad GPU number")))?,
        None if rest.is_empty() => 0,
        None => {
            return Err(ModelError::Invalid(format!(
                "device `{spec}`: use cpu, cuda or cuda:N"
            )));
        }
    };
    #[cfg(feature = "cuda")]
    {
        let d = candle_core::Device::new_cuda(ordinal).map_err(|e| {
            ModelError::Invalid(format!("device `{spec}`: {}", error::first_line(&e)))
        })?;
        cuda::keep_pool(&d);
        Ok(d)
    }
    #[cfg(not(feature = "cuda"))]
    {
        let _ = ordinal;
        Err(ModelError::Invalid(format!(
            "device `{spec}`: this galley was built without CUDA (build with --features cuda)"
        )))
    }
}

/// The device galley computes on: `GALLEY_DEVICE` when set (falling back to the CPU with a
/// warning if it cannot be had), else the first CUDA GPU when built with `cuda` and one is
/// present, else the CPU.
pub fn default_device() -> candle_core::Device {
    match std::env::var("GALLEY_DEVICE") {
        Ok(spec) => device(&spec).unwrap_or_else(|e| {
            tracing::warn!("{e}; using the CPU");
            candle_core::Device::Cpu
        }),
        Err(_) => device("cuda").unwrap_or(candle_core::Device::Cpu),
    }
}
