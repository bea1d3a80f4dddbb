//! galley-runtime runs untrusted plugins: WebAssembly components of the `galley:plugin` WIT
//! package, in a deny-by-default sandbox with a time budget per call and a memory cap per
//! instance. It loads and checks components (kind, WIT version, imports, manifest), caches
//! their compiled code, and wraps instances in adapters that implement galley-core's plugin
//! traits, so a trainer never knows it is talking to WebAssembly.
//!
//! ```no_run
//! use galley_core::{RewardFn, RewardInput};
//! use galley_runtime::{InstanceOptions, Runtime, RuntimeConfig};
//!
//! let runtime = Runtime::new(RuntimeConfig::default())?;
//! let plugin = runtime.load("target/plugins/math-answer.wasm".as_ref())?;
//! let mut reward = plugin.reward(&serde_json::json!({}), InstanceOptions::default())?;
//! let mut input = RewardInput { completion: "... #### 42".into(), ..Default::default() };
//! input.metadata.insert("answer".into(), galley_core::Value::Int(42));
//! assert_eq!(reward.score(&RewardInput::groups(&[input]))?, vec![Some(1.0)]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod blocking;
mod cache;
mod cache_gc;
mod calls;
mod engine;
mod episodes;
mod error;
mod inspect;
mod manifest;
mod plugin;
mod sandbox;
pub mod tools;
pub mod v0_1;
pub mod v0_2;
pub mod v0_3;
pub mod v0_4;

pub use cache::{CacheOutcome, default_cache_dir, default_cache_key};
pub use cache_gc::{
    CACHE_LIMIT_VAR, CacheUsage, DEFAULT_CACHE_LIMIT, Pruned, default_cache_limit,
    parse_cache_limit,
};
pub use engine::{Runtime, RuntimeConfig, SUPPORTED_WIT, wit_supported};
pub use episodes::{WasmEnvironment, WasmEpisode};
pub use error::RuntimeError;
pub use inspect::{ComponentInfo, digest_of, inspect, parse_plugin_name};
pub use manifest::{Capabilities, MANIFEST_SECTION, Manifest, embed as embed_manifest};
pub use plugin::{Plugin, WasmDataSource, WasmEvaluator, WasmRecipe, WasmReward, WasmTool};
pub use sandbox::{Grants, InstanceOptions, Limits, MemoryPool};
