//! galley-core owns the vocabulary every other room speaks: chat messages, examples with their
//! metadata, metrics, and the plugin traits (`RewardFn`, `DataSource`, `Evaluator`, `Recipe`).
//! A trainer talks to these traits and never learns whether the implementation is native Rust
//! or a sandboxed WebAssembly component; the runtime implements them for components.

pub mod config;
mod data;
pub mod dirs;
pub mod engine;
pub mod engine_spec;
pub mod jsonl;
mod plugin;
pub mod seed;
pub mod text;

pub use data::{
    Completion, Example, Message, Metadata, Metric, Prediction, RewardGroup, RewardInput, ToolCall,
    Value, with_system,
};
pub use engine::{
    ChatRequest, Engine, EngineError, GenerateRequest, Generated, Loglikelihood,
    LoglikelihoodRequest,
};
pub use engine_spec::{EngineSpec, REMOTE_APIS};
pub use plugin::{
    DataSource, Decision, Environment, Episode, Evaluator, FunctionCall, PluginError,
    PluginErrorKind, PluginKind, Recipe, RewardFn, RewardFnExt, Stage, Tool, ToolFunction,
    episode_row,
};

/// This process's peak resident memory (VmHWM) in MiB, where /proc says it.
pub fn peak_rss_mib() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb: f64 = s
        .lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kb / 1024.0)
}
