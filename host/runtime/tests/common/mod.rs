//! Shared test helpers: where the built plugins are, and a runtime with a test cache.
#![allow(dead_code)]

use galley_core::{Message, RewardFnExt, RewardInput, Value};
use galley_runtime::{InstanceOptions, Limits, Plugin, Runtime, RuntimeConfig};
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

/// The components `galley plugin build` wrote (scripts/test.sh builds them first).
pub fn plugin_path(name: &str) -> PathBuf {
    let dir = std::env::var_os("GALLEY_PLUGIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target/plugins"));
    let path = dir.join(format!("{name}.wasm"));
    assert!(
        path.exists(),
        "{} is missing: build the plugins first with `scripts/build-plugins.sh` (scripts/test.sh does)",
        path.display()
    );
    path
}

pub fn runtime() -> &'static Runtime {
    static RT: OnceLock<Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        // The same compiled-component cache as the end-to-end tests: one copy of each
        // component (a Python one compiles to ~40 MB) instead of two.
        Runtime::new(RuntimeConfig {
            cache_dir: Some(repo_root().join("target/test-galley-cache/components")),
            ..RuntimeConfig::default()
        })
        .expect("runtime starts")
    })
}

pub fn load(name: &str) -> Plugin {
    runtime()
        .load(&plugin_path(name))
        .unwrap_or_else(|e| panic!("loading {name}: {e}"))
}

pub fn opts(timeout_ms: u64, memory_mb: u64) -> InstanceOptions {
    InstanceOptions {
        limits: Limits {
            call_timeout: Duration::from_millis(timeout_ms),
            memory_bytes: memory_mb << 20,
            ..Limits::default()
        },
        ..InstanceOptions::default()
    }
}

pub fn input(completion: &str, answer: Option<Value>) -> RewardInput {
    let mut i = RewardInput {
        prompt: vec![Message::new("user", "What is 6 * 7?")],
        completion: completion.into(),
        ..Default::default()
    };
    if let Some(a) = answer {
        i.metadata.insert("answer".into(), a);
    }
    i
}

/// The well-behaved plugin still works in the same host: run after every attack.
pub fn assert_host_healthy() {
    let mut r = load("math-answer")
        .reward(&serde_json::json!({}), InstanceOptions::default())
        .unwrap();
    let s = r
        .score_inputs(&[input("6 * 7 = 42\n#### 42", Some(Value::Int(42)))])
        .unwrap();
    assert_eq!(s, vec![Some(1.0)]);
}
