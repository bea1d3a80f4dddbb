//! The compiled-component cache. Compiling a component is the slow part of loading a plugin
//! (tens of milliseconds for Rust, ~10 s for a Python component); loading native code from
//! disk takes about a millisecond. Entries are keyed by the component's SHA-256 *and* a hash of
//! the engine's settings and wasmtime version, so a changed engine never loads stale code.
//!
//! Trust: a cache entry is native code that is mapped and run without re-validation, so the
//! cache directory must be writable only by the user running galley (as `~/.cache` is). Entries
//! are written to a temporary file and renamed, so a crash never leaves a torn entry.

use crate::error::RuntimeError;
use sha2::{Digest, Sha256};
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use wasmtime::Engine;
use wasmtime::component::Component;

pub(crate) struct ComponentCache {
    dir: PathBuf,
    engine_key: String,
}

/// Where the cache is, unless the caller says otherwise (`galley_core::dirs` decides).
pub fn default_cache_dir() -> Option<PathBuf> {
    Some(galley_core::dirs::components_dir())
}

/// Feeds std's `Hash` into SHA-256, so the engine key is stable across runs (std's default
/// hasher is randomly keyed).
struct ShaHasher(Sha256);

impl Hasher for ShaHasher {
    fn finish(&self) -> u64 {
        unreachable!("only the full digest is used")
    }
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
}

/// Whether the last `load` hit the cache; the benchmark and `--json` output report it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheOutcome {
    Hit,
    Miss,
    Disabled,
}

impl ComponentCache {
    pub(crate) fn new(dir: PathBuf, engine: &Engine) -> Result<Self, RuntimeError> {
        std::fs::create_dir_all(&dir).map_err(|e| RuntimeError::Cache {
            path: dir.clone(),
            reason: e.to_string(),
        })?;
        let mut h = ShaHasher(Sha256::new());
        engine.precompile_compatibility_hash().hash(&mut h);
        let engine_key = hex::encode(&h.0.finalize()[..8]);
        Ok(Self { dir, engine_key })
    }

    fn path_for(&self, digest: &str) -> PathBuf {
        let hex = digest.trim_start_matches("sha256:");
        self.dir.join(format!("{hex}-{}.cwasm", self.engine_key))
    }

    /// The compiled component for `bytes` (whose digest is `digest`), from the cache when
    /// present, else compiled and stored.
    pub(crate) fn load(
        &self,
        engine: &Engine,
        bytes: &[u8],
        digest: &str,
    ) -> Result<(Component, CacheOutcome), wasmtime::Error> {
        let path = self.path_for(digest);
        if path.exists() {
            // SAFETY: the file was produced by `Engine::precompile_component` of an engine with
            // the same compatibility hash (it is in the file name), written atomically into a
            // directory only the user can write (see the module docs).
            match unsafe { Component::deserialize_file(engine, &path) } {
                Ok(c) => return Ok((c, CacheOutcome::Hit)),
                Err(e) => tracing::warn!("ignoring unreadable cache entry {}: {e}", path.display()),
            }
        }
        let compiled = engine.precompile_component(bytes)?;
        if let Err(e) = write_atomic(&path, &compiled) {
            tracing::warn!("cannot write cache entry {}: {e}", path.display());
        }
        // SAFETY: `compiled` was produced just now by this engine.
        let component = unsafe { Component::deserialize(engine, &compiled)? };
        Ok((component, CacheOutcome::Miss))
    }
}

fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}
