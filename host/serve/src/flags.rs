//! The command-line flags of what this crate opens: the engine any command talks to
//! (`EngineFlags`: `--engine`, `--base-url`, ...) and `galley serve`'s own (`ServeFlags`).
//! They live beside the settings they fill, so the rule from flags to settings (defaults,
//! `NAME=DIR` parsing, the checks) is this crate's and is tested here; the binary only
//! composes them. Behind the `clap` feature.

use crate::{EngineSpec, Limits, ServeError, ServeOptions};
use std::path::PathBuf;

#[derive(clap::Args, Debug, Clone, Default)]
pub struct EngineFlags {
    /// The engine: native (galley loads --model), or a remote API: openai (any
    /// OpenAI-compatible server: vLLM, SGLang, llama.cpp's server, galley serve), anthropic,
    /// vertex. Default: native, or openai when --base-url is given.
    #[arg(long)]
    pub engine: Option<String>,
    /// A remote engine's URL up to its API version (`http://127.0.0.1:8080/v1`); --model is
    /// then the server's model id.
    #[arg(long, value_name = "URL")]
    pub base_url: Option<String>,
    /// The environment variable holding the remote engine's key (default: OPENAI_API_KEY,
    /// ANTHROPIC_API_KEY or GOOGLE_API_KEY by engine).
    #[arg(long)]
    pub api_key_env: Option<String>,
    /// Requests in flight at once, for a remote engine (default 8).
    #[arg(long)]
    pub concurrency: Option<usize>,
}

impl EngineFlags {
    /// The engine these flags name, serving `model` (a path, or a remote model id).
    pub fn spec(&self, model: Option<String>) -> EngineSpec {
        let engine = self.engine.clone().unwrap_or_else(|| {
            let remote = self.base_url.is_some();
            (if remote { "openai" } else { "native" }).into()
        });
        EngineSpec {
            engine,
            model,
            base_url: self.base_url.clone(),
            api_key_env: self.api_key_env.clone(),
            concurrency: self.concurrency,
            ..Default::default()
        }
    }
}

#[derive(clap::Args, Debug, Clone)]
pub struct ServeFlags {
    /// A `.gguf` file, an HF folder, or a name `galley infer` resolves.
    #[arg(long, short)]
    pub model: String,
    /// The base model's id in requests (default: its file name).
    #[arg(long)]
    pub name: Option<String>,
    /// A PEFT LoRA adapter served as its own model id over the base: `NAME=DIR`.
    #[arg(long, value_name = "NAME=DIR")]
    pub adapter: Vec<String>,
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// 0 picks a free port (printed on start).
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Sequences decoded together per model.
    #[arg(long, default_value_t = 32)]
    pub max_batch: usize,
    /// Requests that may wait for a place; past it, 429.
    #[arg(long, default_value_t = 256)]
    pub queue: usize,
    /// Prompt tokens prefilled per decode step (long prompts do not stall the batch).
    #[arg(long, default_value_t = 256)]
    pub prefill_chunk: usize,
    /// MiB of recent prompts' keys and values each served model keeps, so a request that
    /// begins the same way (a system prompt, earlier turns) prefills only the rest; 0: none
    /// (for users who must not learn each other's prompts from how fast a prefix answers).
    #[arg(long, default_value_t = 256)]
    pub prompt_cache_mib: usize,
    /// Prompt-lookup decoding (llama-server's n-gram speculation): while a sequence decodes
    /// alone, up to N tokens a step drafted from what it has seen, checked in one pass (the
    /// answer is the same; the speed gains where answers quote their prompt). 0: off.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub lookup: usize,
    /// How `/v1/embeddings` pools token states: mean, cls, last (lasttoken), max,
    /// mean_sqrt_len_tokens, weightedmean, or several joined by `+` (concatenated). Default:
    /// what the model's sentence-transformers files or GGUF say, else last, normalized.
    #[arg(long, value_name = "MODE")]
    pub pooling: Option<String>,
    /// Dequantize GGUF weights to f32 at load.
    #[arg(long)]
    pub dequantize: bool,
    /// What the KV cache keeps keys and values in: f16 (the default on a CPU, as llama.cpp's
    /// server: twice the contexts in the same memory) or f32 (no rounding of its own). A GPU
    /// keeps the activations' dtype.
    #[arg(long, value_enum, value_name = "DTYPE")]
    pub kv_cache_dtype: Option<galley_model::KvCacheDtype>,
    /// Keep an f32 copy of quantized weights for passes of 64 rows or more (grouped prefills,
    /// batches past 64): those run dense GEMMs, smaller ones the quantized kernels (about 4
    /// bytes per parameter more memory, per served model). auto: when all copies fit in 2 GiB.
    #[arg(long, value_enum, default_value = "auto")]
    pub dense_batches: Dense,
    /// A Jinja chat template file to use instead of the model's own (for a model whose
    /// template shows no tools, or none at all).
    #[arg(long, value_name = "FILE", alias = "chat-template-file")]
    pub chat_template: Option<PathBuf>,
    /// How the model writes tool calls: hermes (`<tool_call>` blocks: Qwen, Hermes),
    /// llama3_json, mistral (`[TOOL_CALLS][...]`), mistral_args (`[TOOL_CALLS]name[ARGS]{...}`),
    /// qwen3_coder (`<function=...>` XML), deepseek_v31, kimi_k2, or json (one bare object).
    /// Default: found by rendering a call with the chat template.
    #[arg(long, value_name = "FORMAT", value_parser = ["hermes", "llama3_json", "mistral", "mistral_args", "qwen3_coder", "deepseek_v31", "kimi_k2", "json"])]
    pub tool_call_parser: Option<String>,
    /// Thinking in answers (`<think>...</think>`): auto returns it apart, as
    /// `reasoning_content`, when the chat template writes such blocks; none leaves it in
    /// `content`.
    #[arg(long, value_name = "FORMAT", default_value = "auto", value_parser = ["auto", "none"])]
    pub reasoning_format: String,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum Dense {
    Auto,
    On,
    Off,
}

impl ServeFlags {
    /// What to serve, `model` being the resolved `--model`; a malformed `--adapter` or a zero
    /// limit is refused, naming the flag.
    pub fn options(&self, model: PathBuf) -> Result<ServeOptions, ServeError> {
        let mut adapters = Vec::new();
        for a in &self.adapter {
            let Some((name, dir)) = a
                .split_once('=')
                .filter(|(n, d)| !n.is_empty() && !d.is_empty())
            else {
                return Err(ServeError::Invalid(format!(
                    "--adapter {a}: expected NAME=DIR"
                )));
            };
            adapters.push((name.to_string(), PathBuf::from(dir)));
        }
        if self.max_batch == 0 || self.queue == 0 {
            let msg = "--max-batch and --queue must be at least 1";
            return Err(ServeError::Invalid(msg.into()));
        }
        if self.lookup > galley_model::sample::MAX_LOOKUP {
            return Err(ServeError::Invalid(format!(
                "--lookup {}: at most {}",
                self.lookup,
                galley_model::sample::MAX_LOOKUP
            )));
        }
        let pooling = match &self.pooling {
            Some(p) => Some(
                galley_model::Pool::parse_list(p)
                    .map_err(|e| ServeError::Invalid(format!("--{e}")))?,
            ),
            None => None,
        };
        Ok(ServeOptions {
            pooling,
            model,
            name: self.name.clone(),
            adapters,
            limits: Limits {
                max_batch: self.max_batch,
                queue: self.queue,
                prefill_chunk: self.prefill_chunk,
                prompt_cache: self.prompt_cache_mib << 20,
                lookup: self.lookup,
            },
            load: galley_model::LoadOptions {
                dequantize: self.dequantize,
                kv_cache: self.kv_cache_dtype,
            },
            dense_batches: match self.dense_batches {
                Dense::Auto => None,
                Dense::On => Some(true),
                Dense::Off => Some(false),
            },
            chat_template: self.chat_template.clone(),
            reasoning: self.reasoning_format != "none",
            tool_call_parser: self
                .tool_call_parser
                .as_deref()
                .and_then(galley_model::tool_calls::ToolFormat::from_name),
        })
    }

    /// The address to bind, `HOST:PORT`.
    pub fn addr(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cmd {
        #[command(flatten)]
        serve: ServeFlags,
        #[command(flatten)]
        engine: EngineFlags,
    }

    fn parse(args: &[&str]) -> Cmd {
        Cmd::try_parse_from(std::iter::once("serve").chain(args.iter().copied())).unwrap()
    }

    #[test]
    fn adapters_and_limits_are_checked_naming_the_flag() {
        let ok = parse(&[
            "-m",
            "m.gguf",
            "--adapter",
            "math=out/a",
            "--dense-batches",
            "on",
        ]);
        let o = ok.serve.options("m.gguf".into()).unwrap();
        assert_eq!(
            o.adapters,
            vec![("math".to_string(), PathBuf::from("out/a"))]
        );
        assert_eq!((o.dense_batches, o.limits.max_batch), (Some(true), 32));
        assert_eq!(ok.serve.addr(), "127.0.0.1:8080");
        assert_eq!(o.load.kv_cache, None);
        let f32_cache = parse(&["-m", "m", "--kv-cache-dtype", "f32"]).serve;
        let o = f32_cache.options("m".into()).unwrap();
        assert_eq!(o.load.kv_cache, Some(galley_model::KvCacheDtype::F32));
        let cmd = ["serve", "-m", "m", "--kv-cache-dtype", "q8"];
        assert!(Cmd::try_parse_from(cmd).is_err());
        for bad in ["math", "=dir", "name="] {
            let e = parse(&["-m", "m", "--adapter", bad])
                .serve
                .options("m".into());
            let e = e.err().expect("refused").to_string();
            assert_eq!(e, format!("--adapter {bad}: expected NAME=DIR"));
        }
        let e = parse(&["-m", "m", "--queue", "0"])
            .serve
            .options("m".into());
        assert!(
            e.err()
                .unwrap()
                .to_string()
                .contains("--queue must be at least 1")
        );
        let o = parse(&["-m", "m", "--pooling", "mean+cls"]).serve;
        let o = o.options("m".into()).unwrap();
        assert_eq!(
            o.pooling,
            Some(vec![galley_model::Pool::Mean, galley_model::Pool::Cls])
        );
        let e = parse(&["-m", "m", "--pooling", "avg"]).serve;
        let e = e.options("m".into()).err().unwrap().to_string();
        assert!(e.starts_with("--pooling avg: `avg`"), "{e}");
    }

    #[test]
    fn a_base_url_means_openai_unless_the_engine_is_named() {
        let spec = |a: &[&str]| {
            parse(&[&["-m", "m"], a].concat())
                .engine
                .spec(Some("id".into()))
        };
        assert_eq!(spec(&[]).engine, "native");
        let remote = spec(&["--base-url", "http://127.0.0.1:1/v1", "--concurrency", "3"]);
        assert_eq!(
            (remote.engine.as_str(), remote.concurrency),
            ("openai", Some(3))
        );
        let named = spec(&["--base-url", "http://x/v1", "--engine", "anthropic"]);
        assert_eq!(named.engine, "anthropic");
        assert_eq!(named.model.as_deref(), Some("id"));
    }
}
