//! How a config or the command line names an engine: the native one over a model file galley
//! loads, or a remote API (any OpenAI-compatible server, Anthropic's Messages API, Vertex AI's
//! `generateContent`). Plain data, so every room's config can hold one; galley-serve's
//! `engines::open` is the one place a spec becomes an `Engine`.

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// The remote APIs an engine can speak.
pub const REMOTE_APIS: &[&str] = &["openai", "anthropic", "vertex"];

/// Which engine, and how to reach it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EngineSpec {
    /// `native` (galley loads the model), or a remote API: `openai` (any OpenAI-compatible
    /// server: vLLM, SGLang, llama.cpp's server, galley serve, OpenAI), `anthropic`, `vertex`.
    #[serde(default = "native")]
    pub engine: String,
    /// Native: a `.gguf` file, an HF checkpoint folder or `hf://OWNER/NAME[@REV][/FILE]`
    /// (relative paths are relative to the config that names them). Remote: the model id the
    /// server knows.
    #[serde(default)]
    pub model: Option<String>,
    /// Native only: PEFT adapter folders applied over the model, in order.
    #[serde(default)]
    pub adapters: Vec<PathBuf>,
    /// Native only: dequantize GGUF weights to f32 at load (slower, the checkpoint's own
    /// numbers).
    #[serde(default)]
    pub dequantize: bool,
    /// Native only: tokens per forward batch when scoring log-likelihoods (default 4096).
    #[serde(default)]
    pub batch_tokens: Option<usize>,
    /// Native only: the longest sequence a request is given (the harness's `max_length`;
    /// default: the model's context length).
    #[serde(default)]
    pub max_length: Option<usize>,
    /// Remote: up to and including the API's version segment (`http://127.0.0.1:8080/v1`).
    #[serde(default)]
    pub base_url: Option<String>,
    /// Remote: the environment variable holding the key (default `OPENAI_API_KEY`,
    /// `ANTHROPIC_API_KEY` or `GOOGLE_API_KEY` by API). The key itself never sits in a config.
    #[serde(default)]
    pub api_key_env: Option<String>,
    /// Remote: requests in flight at once (default 8).
    #[serde(default)]
    pub concurrency: Option<usize>,
    /// Remote: seconds one request may take before it is retried (default 120).
    #[serde(default)]
    pub timeout_s: Option<f64>,
    /// Remote: attempts after the first on 429, 5xx and connection errors (default 4).
    #[serde(default)]
    pub retries: Option<u32>,
}

fn native() -> String {
    "native".into()
}

impl Default for EngineSpec {
    fn default() -> Self {
        Self {
            engine: native(),
            model: None,
            adapters: Vec::new(),
            dequantize: false,
            batch_tokens: None,
            max_length: None,
            base_url: None,
            api_key_env: None,
            concurrency: None,
            timeout_s: None,
            retries: None,
        }
    }
}

impl EngineSpec {
    pub fn is_remote(&self) -> bool {
        self.engine != "native"
    }

    /// Whether the settings fit together; `Err` names the key at fault.
    pub fn check(&self) -> Result<(), String> {
        let bad = |key: &str, msg: &str| Err(format!("`{key}`: {msg}"));
        if self.model.is_none() {
            return bad(
                "model",
                if self.is_remote() {
                    "a remote engine needs the server's model id"
                } else {
                    "no model: a .gguf file, an HF folder or hf://..."
                },
            );
        }
        if self.is_remote() {
            if !REMOTE_APIS.contains(&self.engine.as_str()) {
                return bad(
                    "engine",
                    &format!(
                        "`{}` is not an engine; expected native, {}",
                        self.engine,
                        REMOTE_APIS.join(", ")
                    ),
                );
            }
            if self.base_url.is_none() {
                return bad("base_url", "a remote engine needs the server's URL");
            }
            if !self.adapters.is_empty() {
                return bad(
                    "adapters",
                    "adapters apply to a model galley loads; a server serves adapters as model ids (`model`)",
                );
            }
            for (key, set) in [
                ("dequantize", self.dequantize),
                ("batch_tokens", self.batch_tokens.is_some()),
                ("max_length", self.max_length.is_some()),
            ] {
                if set {
                    return bad(key, "applies to a model galley loads");
                }
            }
            if self.concurrency == Some(0) {
                return bad("concurrency", "must be at least 1");
            }
            if self.timeout_s.is_some_and(|t| !(t > 0.0 && t.is_finite())) {
                return bad("timeout_s", "must be a positive number of seconds");
            }
        } else {
            for (key, set) in [
                ("base_url", self.base_url.is_some()),
                ("api_key_env", self.api_key_env.is_some()),
                ("concurrency", self.concurrency.is_some()),
                ("timeout_s", self.timeout_s.is_some()),
                ("retries", self.retries.is_some()),
            ] {
                if set {
                    return bad(
                        key,
                        "applies to a remote engine; set `engine` to openai, anthropic or vertex",
                    );
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // JSON is YAML's subset, and this crate reads no YAML.
    fn spec(json: &str) -> EngineSpec {
        serde_json::from_str(json).expect("a spec")
    }

    #[test]
    fn settings_that_do_not_fit_name_their_key() {
        let cases = [
            (r#"{"engine": "openai", "model": "m"}"#, "`base_url`"),
            (
                r#"{"engine": "gpt", "model": "m", "base_url": "u"}"#,
                "`engine`",
            ),
            (
                r#"{"engine": "openai", "model": "m", "base_url": "u", "adapters": ["a"]}"#,
                "`adapters`",
            ),
            (r#"{"model": "m.gguf", "base_url": "u"}"#, "`base_url`"),
            (r#"{"model": "m.gguf", "concurrency": 2}"#, "`concurrency`"),
            (r#"{}"#, "`model`"),
            (
                r#"{"engine": "openai", "model": "m", "base_url": "u", "timeout_s": 0}"#,
                "`timeout_s`",
            ),
        ];
        for (json, key) in cases {
            let e = spec(json).check().expect_err(json);
            assert!(e.starts_with(key), "{json}: {e}");
        }
        spec(r#"{"engine": "vertex", "model": "gemini", "base_url": "u"}"#)
            .check()
            .expect("a remote spec");
        spec(r#"{"model": "m.gguf", "adapters": ["a"]}"#)
            .check()
            .expect("a native spec");
    }
}
