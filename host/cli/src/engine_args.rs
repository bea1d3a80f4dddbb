//! The flags that choose a command's engine (`galley infer`, `eval`, `judge`, `synth`): the
//! native engine over `--model`, or a remote API at `--base-url`. They become a
//! `galley_serve::EngineSpec`, which alone opens engines.

use galley_core::EngineSpec;

#[derive(clap::Args, Debug, Clone, Default)]
pub struct EngineArgs {
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

impl EngineArgs {
    /// The engine these flags name, serving `model` (a path, or a remote model id).
    pub fn spec(&self, model: Option<String>) -> EngineSpec {
        let engine = self.engine.clone().unwrap_or_else(|| {
            if self.base_url.is_some() {
                "openai".into()
            } else {
                "native".into()
            }
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
