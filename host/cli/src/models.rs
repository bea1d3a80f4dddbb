//! Where `--model` points: a local `.gguf` file or checkpoint folder, or `hf://...`, fetched
//! into galley's model cache on first use.

use anyhow::{Context, Result};
use std::path::PathBuf;

pub fn resolve(spec: &str) -> Result<PathBuf> {
    if spec.starts_with("hf://") {
        let r = galley_model::hub::HubRef::parse(spec)?;
        let cache = galley_model::hub::default_cache();
        return galley_model::hub::fetch(&r, &cache)
            .with_context(|| format!("fetching {spec} into {}", cache.display()));
    }
    Ok(PathBuf::from(spec))
}
