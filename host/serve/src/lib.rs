//! galley-serve owns serving: the OpenAI-compatible HTTP API (`api`) over continuous-batching
//! decoders (`batcher`), one per model id — the base model and each LoRA adapter applied over
//! it in memory — and the remote engines (`remote`: any OpenAI-compatible server behind
//! galley-core's `Engine`). The binary binds the address and prints; this crate loads and
//! routes. `engines` is the one place any command's engine (native or remote) is opened.

pub mod api;
pub mod batcher;
pub mod chat_apis;
mod embeddings;
pub mod engines;
#[cfg(feature = "clap")]
pub mod flags;
pub mod lazy;
pub mod metrics;
pub mod prompt_cache;
pub mod remote;
mod request;
mod stream;
mod tokenize;
mod tools;

pub use batcher::Limits;
pub use engines::Opened;
pub use galley_core::{EngineSpec, REMOTE_APIS};

use api::{Served, Shared};
use batcher::Batcher;
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Model(#[from] galley_model::ModelError),
    #[error("{0}")]
    Invalid(String),
}

/// What to serve.
pub struct ServeOptions {
    /// A `.gguf` file or an HF folder.
    pub model: PathBuf,
    /// The base model's id (default: the file or folder name).
    pub name: Option<String>,
    /// (id, PEFT adapter folder): each served as its own model over the base.
    pub adapters: Vec<(String, PathBuf)>,
    pub limits: Limits,
    pub load: galley_model::LoadOptions,
    /// Keep an f32 copy of quantized weights for batched decode steps (faster under load,
    /// about 4 bytes per parameter more memory, per served model): `Some(on)` as told, `None`
    /// when the copies of every served model together stay within `DENSE_AUTO_BYTES`.
    pub dense_batches: Option<bool>,
    /// A Jinja chat template file used instead of the model's own (vLLM's `--chat-template`).
    pub chat_template: Option<PathBuf>,
    /// How the model writes tool calls, when its template does not tell (`hermes`,
    /// `llama3_json`, `mistral`, `json`).
    pub tool_call_parser: Option<galley_model::tool_calls::ToolFormat>,
    /// Return a thinking model's `<think>` block apart (`reasoning_content`) when its
    /// template writes one.
    pub reasoning: bool,
    /// How `/v1/embeddings` pools, instead of what the model's folder or GGUF says.
    pub pooling: Option<Vec<galley_model::Pool>>,
}

/// What automatic dense copies may cost in all: a small model (SmolLM2-135M: 0.5 GiB) gets
/// the faster batches by default, a 7B model (~28 GiB) does not.
pub const DENSE_AUTO_BYTES: usize = 2 << 30;

/// The base model's default id: its file or folder name without `.gguf`.
pub fn model_id(path: &Path) -> String {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string());
    name.strip_suffix(".gguf").unwrap_or(&name).to_string()
}

/// Loads the model (and its adapters) and starts a decoder for each.
pub fn load(opts: &ServeOptions) -> Result<Arc<Shared>, ServeError> {
    let device = galley_model::default_device();
    let mut base = galley_model::load_with(&opts.model, &device, opts.load)?;
    // Each served model (the base and every adapter) keeps its own copy.
    let copies = (1 + opts.adapters.len()) * base.model.dense_copy_bytes();
    let keep_dense = opts.dense_batches.unwrap_or(copies <= DENSE_AUTO_BYTES);
    if opts.dense_batches.is_none() && copies > 0 {
        tracing::info!(
            "dense copies for batched steps: {} MiB in all {} (--dense-batches on|off decides)",
            copies >> 20,
            if keep_dense {
                "kept"
            } else {
                "past the automatic limit, not kept"
            }
        );
    }
    let dense = |m: &mut galley_model::Llama| -> Result<(), ServeError> {
        if keep_dense {
            let bytes = m
                .keep_dense_for_batches()
                .map_err(|e| ServeError::Invalid(format!("keeping dense weights: {e}")))?;
            tracing::debug!("dense copies for batched steps: {} MiB", bytes >> 20);
        }
        Ok(())
    };
    dense(&mut base.model)?;
    let id = opts.name.clone().unwrap_or_else(|| model_id(&opts.model));
    let mut ids = vec![id.clone()];
    for (a, _) in &opts.adapters {
        if ids.contains(a) {
            return Err(ServeError::Invalid(format!(
                "--adapter {a}: the id `{a}` is taken"
            )));
        }
        ids.push(a.clone());
    }
    if let Some(path) = &opts.chat_template {
        let token = |id: Option<u32>| {
            id.and_then(|i| base.tokenizer.id_to_token(i))
                .unwrap_or_default()
        };
        let (bos, eos) = match &base.template {
            Some(t) => (t.bos_token.clone(), t.eos_token.clone()),
            None => (
                token(base.tokenizer.bos),
                token(base.tokenizer.eos.first().copied()),
            ),
        };
        let src = std::fs::read_to_string(path)
            .map_err(|e| ServeError::Invalid(format!("--chat-template {}: {e}", path.display())))?;
        let origin = path.display().to_string();
        base.template = Some(galley_model::ChatTemplate::new(&src, &origin, &bos, &eos)?);
    }
    let tools = match &base.template {
        Some(t) => opts
            .tool_call_parser
            .or_else(|| galley_model::tool_calls::ToolFormat::of_template(t)),
        None => None,
    };
    let thinks = opts.reasoning
        && base
            .template
            .as_ref()
            .is_some_and(|t| galley_model::reasoning::template_thinks(&t.source));
    let mut embedder = galley_model::Embedder::for_model(&opts.model)?;
    if let Some(p) = &opts.pooling {
        embedder = embedder.with_pooling(p.clone());
    }
    let tokenizer = Arc::new(base.tokenizer);
    let context = base.model.config.max_position_embeddings;
    let config = base.model.config.clone();
    let mut models = vec![Served {
        id,
        batcher: Batcher::start(Arc::new(base.model), tokenizer.clone(), opts.limits),
    }];
    for (name, dir) in &opts.adapters {
        let mut m = galley_model::load_adapted(&opts.model, Some(dir), &device, opts.load)?;
        dense(&mut m.model)?;
        models.push(Served {
            id: name.clone(),
            batcher: Batcher::start(Arc::new(m.model), tokenizer.clone(), opts.limits),
        });
    }
    Ok(Arc::new(Shared {
        models,
        tokenizer,
        template: base.template,
        tool_format: tools,
        thinks,
        context,
        embedder: Arc::new(embedder),
        config,
        created: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        next_id: Default::default(),
    }))
}

/// A remote engine for `api` (`openai`: any OpenAI-compatible server; `anthropic`; `vertex`)
/// at `base_url` serving `model`, its key read from `key_env` (default per API:
/// `OPENAI_API_KEY`, `ANTHROPIC_API_KEY`, `GOOGLE_API_KEY`) when set.
pub fn remote_engine(
    api: &str,
    base_url: &str,
    model: &str,
    key_env: Option<&str>,
) -> Result<Box<dyn galley_core::Engine>, ServeError> {
    let spec = EngineSpec {
        engine: api.into(),
        model: Some(model.into()),
        base_url: Some(base_url.into()),
        api_key_env: key_env.map(Into::into),
        ..Default::default()
    };
    Ok(engines::open(&spec, Path::new("."))?.engine)
}
