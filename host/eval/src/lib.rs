//! galley-eval: the evaluation room. Benchmark tasks in lm-evaluation-harness's own YAML
//! (a subset, read by `task`), their documents from local files (`docs`), prompts built as the
//! harness builds them, few-shot examples drawn as the harness draws them (`pyrandom`),
//! requests answered by any `galley_core::Engine`, grading by the harness's metrics
//! (`metrics`) or by evaluator plugins (reached only as `galley_core::Evaluator`), groups
//! aggregated with pooled standard errors, and LLM-as-judge (`judge`). Everything is
//! returned as values: the CLI prints and writes files.

pub mod bfcl;
pub mod builtin;
pub mod docs;
pub mod evaluate;
#[cfg(feature = "clap")]
pub mod flags;
mod grade;
mod groups;
pub mod judge;
pub mod judge_file;
pub mod metrics;
mod prompt;
pub mod pyrandom;
pub mod report;
pub mod settings;
pub mod task;
pub mod template;

pub use evaluate::{
    EvalOptions, GroupResult, LoadedTask, MetricValue, Plugins, Report, Sample, TaskResult,
    check_tasks, evaluate, load_tasks,
};
pub use settings::EvalSettings;
pub use task::{GroupConfig, Task, TaskConfig, TaskFile};

#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// A task or group file is wrong (names `file:line` and the key where known).
    #[error("{0}")]
    Task(String),
    /// A task's data is missing or unreadable (names the file).
    #[error("{0}")]
    Data(String),
    /// A document could not be turned into a prompt (names task, document and field).
    #[error("{0}")]
    Doc(String),
    #[error(transparent)]
    Engine(#[from] galley_core::EngineError),
    #[error(transparent)]
    Plugin(#[from] galley_core::PluginError),
    /// Tasks or groups named on the command line that do not exist.
    #[error("{0}")]
    Unknown(String),
}
