//! The run config (`run.yaml`): the model, the recipes that plan the run (each with its
//! settings and an optional priority), inline stages, settings per stage kind, per-stage
//! overrides, the seed, threads and what to do when a plugin fails. Read by galley-core's one
//! YAML loader, so a mistake names `file:line:column` and the key, and `--set a.b=c` works as
//! everywhere (`--set stage.grpo.training.learning_rate=1e-5` overrides one stage).

use crate::RunError;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RunConfig {
    /// The starting model: a `.gguf` file or an HF checkpoint folder, or a mapping as a
    /// training config's `model` section (`init` and `tokenizer` to pre-train from scratch).
    pub model: Option<serde_json::Value>,
    /// The run folder (one subfolder per stage). Default: `runs/<config file's stem>`.
    pub output_dir: Option<PathBuf>,
    /// Every stage's seed unless a stage sets its own.
    pub seed: u64,
    /// Worker threads (default: all cores). Replays reproduce metrics on the same count.
    pub threads: Option<usize>,
    /// Recipe plugins, in order: their stages run in this order.
    pub recipes: Vec<RecipeRef>,
    /// Stages written here, run after the recipes' (or before them, `position: first`).
    pub stages: Vec<InlineStage>,
    /// Settings per stage kind (`sft`, `grpo`, `evaluate`...), under every stage of that kind:
    /// the data sources, reward functions and evaluation tasks of a run live here.
    pub defaults: BTreeMap<String, serde_json::Value>,
    /// Fuse same-kind stages of different recipes into one stage (data sources mixed,
    /// reward functions summed, evaluation tasks joined).
    pub fuse: bool,
    /// Overrides per stage name, over everything a recipe or default says.
    pub stage: BTreeMap<String, serde_json::Value>,
    /// What a failing recipe call (`plan` aside, which always stops) does to the run:
    /// `stop` after a checkpoint, or `skip` (warn, go on as planned).
    pub on_plugin_error: OnPluginError,
    /// Limits of every recipe call.
    pub limits: Limits,
}

impl Default for RunConfig {
    fn default() -> Self {
        Self {
            model: None,
            output_dir: None,
            seed: 42,
            threads: None,
            recipes: Vec::new(),
            stages: Vec::new(),
            defaults: BTreeMap::new(),
            fuse: false,
            stage: BTreeMap::new(),
            on_plugin_error: OnPluginError::Stop,
            limits: Limits::default(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecipeRef {
    /// `NAMESPACE/NAME` (installed), a bare name (the plugin search path) or a `.wasm` path.
    pub plugin: String,
    /// The recipe's own settings, handed to its `plan`.
    #[serde(default = "empty_object")]
    pub settings: serde_json::Value,
    /// When fused stages of two recipes disagree on a setting, the higher priority wins
    /// (equal priorities are a conflict the run config must settle).
    #[serde(default)]
    pub priority: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InlineStage {
    pub name: String,
    pub kind: String,
    #[serde(default = "empty_object", alias = "config")]
    pub settings: serde_json::Value,
    /// `last` (after the recipes' stages) or `first` (before them: a baseline evaluation).
    #[serde(default)]
    pub position: Position,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Position {
    First,
    #[default]
    Last,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum OnPluginError {
    #[default]
    Stop,
    Skip,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Time budget of one recipe call.
    pub timeout_ms: u64,
    /// Memory cap of a recipe instance.
    pub memory_mb: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            timeout_ms: 10_000,
            memory_mb: 256,
        }
    }
}

fn empty_object() -> serde_json::Value {
    serde_json::json!({})
}

impl RunConfig {
    /// Reads `path` with `overrides` applied. Relative paths stay as written: the plan takes
    /// them from the config's folder (`base`).
    pub fn load(path: &Path, overrides: &[String]) -> Result<Self, RunError> {
        let cfg: RunConfig =
            galley_core::config::load(Some(path), overrides, &galley_core::config::no_expand)
                .map_err(|e| RunError::Config(e.to_string()))?;
        let at = path.display();
        for (i, r) in cfg.recipes.iter().enumerate() {
            if !r.settings.is_object() {
                return Err(RunError::Config(format!(
                    "{at}: `recipes[{i}].settings` must be a mapping"
                )));
            }
        }
        for (i, s) in cfg.stages.iter().enumerate() {
            if !crate::STAGE_KINDS.contains(&s.kind.as_str()) {
                return Err(RunError::Config(format!(
                    "{at}: `stages[{i}].kind`: `{}` is not a stage kind (galley runs: {})",
                    s.kind,
                    crate::STAGE_KINDS.join(", ")
                )));
            }
        }
        for kind in cfg.defaults.keys() {
            if !crate::STAGE_KINDS.contains(&kind.as_str()) {
                return Err(RunError::Config(format!(
                    "{at}: `defaults.{kind}`: not a stage kind (galley runs: {})",
                    crate::STAGE_KINDS.join(", ")
                )));
            }
        }
        if cfg.recipes.is_empty() && cfg.stages.is_empty() {
            return Err(RunError::Config(format!(
                "{at}: nothing to run: list `recipes` or `stages`"
            )));
        }
        Ok(cfg)
    }

    /// The run folder: `output_dir` (relative to `base`), else `base/runs/<stem>`.
    pub fn run_dir(&self, base: &Path, stem: &str) -> PathBuf {
        match &self.output_dir {
            Some(d) => base.join(d),
            None => base.join("runs").join(stem),
        }
    }
}
