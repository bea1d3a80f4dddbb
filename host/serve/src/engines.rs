//! Opening engines: `open` turns a `galley_core::EngineSpec` (a config's `engine:` section or
//! a command's flags) into a `galley_core::Engine` — the native engine over galley-model, or a
//! remote client — for every command that takes one (`galley infer`, `eval`, `judge`,
//! `synth`), so they cannot drift apart on defaults, key variables or what results record.

use crate::ServeError;
use crate::{chat_apis, remote};
use galley_core::EngineSpec;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// An open engine and what a result file should record about it (a model's path and digest,
/// or a server's URL and model id; never a key).
pub struct Opened {
    pub engine: Box<dyn galley_core::Engine>,
    pub record: serde_json::Value,
}

/// The native model's local path (`hf://` fetched), relative paths taken from `base`.
fn model_path(spec: &EngineSpec, base: &Path) -> Result<PathBuf, ServeError> {
    let spec = spec.model.as_deref().unwrap_or_default();
    Ok(galley_model::hub::resolve(spec, base)?)
}

/// Opens the engine: loads a native model (and its adapters), or makes a remote client
/// (nothing is sent until the first request). Paths are relative to `base`.
pub fn open(spec: &EngineSpec, base: &Path) -> Result<Opened, ServeError> {
    spec.check().map_err(ServeError::Invalid)?;
    let model = spec.model.clone().unwrap_or_default();
    if spec.is_remote() {
        let url = spec.base_url.clone().unwrap_or_default();
        let mut o = remote::RemoteOptions::new(url.clone(), model.clone());
        let default_env = match spec.engine.as_str() {
            "openai" => "OPENAI_API_KEY",
            "anthropic" => "ANTHROPIC_API_KEY",
            _ => "GOOGLE_API_KEY",
        };
        o.api_key = std::env::var(spec.api_key_env.as_deref().unwrap_or(default_env)).ok();
        if let Some(c) = spec.concurrency {
            o.concurrency = c;
        }
        if let Some(t) = spec.timeout_s {
            o.timeout = Duration::from_secs_f64(t);
        }
        if let Some(r) = spec.retries {
            o.retries = r;
        }
        let e = |e: galley_core::engine::EngineError| ServeError::Invalid(e.to_string());
        let engine: Box<dyn galley_core::Engine> = match spec.engine.as_str() {
            "openai" => Box::new(remote::OpenAiEngine::new(o).map_err(e)?),
            "anthropic" => {
                Box::new(chat_apis::ChatApiEngine::new(chat_apis::Api::Anthropic, o).map_err(e)?)
            }
            _ => Box::new(chat_apis::ChatApiEngine::new(chat_apis::Api::Vertex, o).map_err(e)?),
        };
        let record = serde_json::json!({"engine": spec.engine, "base_url": url, "model": model});
        return Ok(Opened { engine, record });
    }
    let path = model_path(spec, base)?;
    let adapters: Vec<PathBuf> = spec.adapters.iter().map(|a| base.join(a)).collect();
    let device = galley_model::default_device();
    let load = galley_model::LoadOptions {
        dequantize: spec.dequantize,
        ..Default::default()
    };
    let refs: Vec<&Path> = adapters.iter().map(PathBuf::as_path).collect();
    let mut engine = galley_model::NativeEngine::open(&path, &refs, &device, load)?;
    if let Some(t) = spec.batch_tokens {
        engine.batch_tokens = t.max(64);
    }
    engine.max_length = spec.max_length;
    let digests = adapters
        .iter()
        .map(|a| galley_model::load::digest(a))
        .collect::<Result<Vec<_>, _>>()?;
    let record = serde_json::json!({
        "engine": "native",
        "path": path.display().to_string(),
        "digest": galley_model::load::digest(&path)?,
        "adapters": adapters.iter().map(|a| a.display().to_string()).collect::<Vec<_>>(),
        "adapter_digests": digests,
        "dequantize": spec.dequantize,
    });
    Ok(Opened {
        engine: Box::new(engine),
        record,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_remote_engine_records_its_server_and_never_its_key() {
        // SAFETY: this test alone reads this variable.
        unsafe { std::env::set_var("GALLEY_TEST_ENGINE_KEY", "sk-secret") };
        let s: EngineSpec = serde_json::from_str(
            r#"{"engine": "openai", "model": "m", "base_url": "http://127.0.0.1:9/v1", "api_key_env": "GALLEY_TEST_ENGINE_KEY"}"#,
        )
        .expect("a spec");
        let o = open(&s, Path::new(".")).expect("opens without a request");
        assert_eq!(o.record["base_url"], "http://127.0.0.1:9/v1");
        assert!(!o.record.to_string().contains("sk-secret"));
    }
}
