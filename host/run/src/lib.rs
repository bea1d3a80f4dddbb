//! galley-run: executes a run. Recipes (community plugins, reached only as
//! `galley_core::Recipe`) plan stages; the run config adds its own, settings per kind and
//! overrides; `plan` merges them into one list, with where each setting came from; `exec`
//! runs the stages in order — pre-training, SFT, DPO and GRPO through galley-train,
//! evaluation through galley-eval, batch generation and adapter merging — each in its own
//! folder of one run folder, each stage's model (or dataset) the next one's input, and each
//! recipe told its own stages' metrics so it can end a stage or the run; `manifest` records
//! everything a replay needs in `run.json`. Plugins are opened by the embedding binary
//! through `PluginHost`: this room never learns they are WebAssembly.

pub mod config;
mod exec;
pub mod manifest;
pub mod plan;
pub mod report;
pub mod start;

pub use config::RunConfig;
pub use exec::{Events, Outcome, Runner, Status};
pub use manifest::{Manifest, PluginRecord, StageRecord};
pub use plan::{Plan, PlannedStage, RecipePlan};
pub use start::{Planned, plan_run};

use galley_core::{DataSource, Recipe, RewardFn};
use galley_train::TrainConfig;

/// The stage kinds galley runs (what `host.stage-kinds` tells a recipe).
pub const STAGE_KINDS: &[&str] = &[
    "pretrain", "sft", "dpo", "grpo", "kto", "evaluate", "generate", "merge",
];

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The run config is wrong (names the file, line and key).
    #[error("{0}")]
    Config(String),
    /// The recipes' stages cannot be made into a plan (names the recipe and stage).
    #[error("{0}")]
    Plan(String),
    /// Two recipes disagree on a setting nothing settles (names both, the stage and key).
    #[error("{0}")]
    Conflict(String),
    /// A plugin could not be opened or failed (names it).
    #[error("{0}")]
    Plugin(String),
    /// A stage failed (names it).
    #[error("stage `{stage}`: {msg}")]
    Stage { stage: String, msg: String },
    /// A replay found something that is not what the manifest recorded.
    #[error("{0}")]
    Replay(String),
    #[error("{0}")]
    Io(String),
}

impl RunError {
    pub(crate) fn stage(stage: &str, msg: impl std::fmt::Display) -> Self {
        RunError::Stage {
            stage: stage.to_string(),
            msg: msg.to_string(),
        }
    }
}

/// The plugins one training stage's config names, opened.
#[derive(Default)]
pub struct TrainPlugins {
    pub train: Option<Box<dyn DataSource>>,
    pub validation: Option<Box<dyn DataSource>>,
    /// One per `data.mixture` entry (none for a file).
    pub mixture: Vec<Option<Box<dyn DataSource>>>,
    pub rewards: Vec<Box<dyn RewardFn>>,
    /// GRPO's tools, one per `grpo.tools` entry.
    pub tools: Vec<Box<dyn galley_core::Tool>>,
    /// GRPO's environments (`grpo.environment`, or each of `grpo.environments`).
    pub environments: Vec<Box<dyn galley_core::Environment>>,
}

impl TrainPlugins {
    /// The trainer's view of these plugins (rewards handed over), as a member of `group`.
    pub fn sources(
        &mut self,
        group: Option<Box<dyn galley_train::dist::Collective>>,
    ) -> galley_train::Sources<'_> {
        galley_train::Sources {
            train: self.train.as_deref_mut().map(|s| s as _),
            validation: self.validation.as_deref_mut().map(|s| s as _),
            mixture: self
                .mixture
                .iter_mut()
                .map(|m| m.as_deref_mut().map(|s| s as _))
                .collect(),
            rewards: std::mem::take(&mut self.rewards),
            tools: std::mem::take(&mut self.tools),
            environments: std::mem::take(&mut self.environments),
            group,
        }
    }
}

/// How the run reaches plugins: the binary, which alone knows the runtime and registry,
/// opens them (resolving names relative to the run config) and records what it opened.
pub trait PluginHost {
    /// A recipe instance for `spec`, and what it is.
    fn recipe(&mut self, spec: &str) -> Result<(Box<dyn Recipe>, PluginRecord), String>;
    /// The data loaders and reward functions a training stage's config names.
    fn train_plugins(&mut self, cfg: &TrainConfig, stage: &str) -> Result<TrainPlugins, String>;
    /// Evaluator and data-loader plugins that evaluation tasks name.
    fn eval_plugins(&mut self) -> &mut dyn galley_eval::Plugins;
    /// Every plugin opened so far (recipes included), for the manifest.
    fn records(&self) -> Vec<PluginRecord>;
}
