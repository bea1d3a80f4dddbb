//! The alignment sections of the training config: `dpo` (preference pairs) and `grpo`
//! (sampled completions scored by reward functions, each a plugin or a built-in).

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reference {
    /// LoRA/QLoRA: the policy with its adapters switched off (no second copy in memory);
    /// full fine-tuning: a frozen copy.
    Auto,
    /// Always a frozen copy of the starting model.
    Copy,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DpoSection {
    pub beta: f64,
    pub loss_type: crate::align::DpoLoss,
    pub label_smoothing: f64,
    pub reference: Reference,
    /// Compute every reference log-probability once before training (and keep them in the
    /// run folder) instead of one reference pass per batch.
    pub precompute_ref_log_probs: bool,
}

impl Default for DpoSection {
    fn default() -> Self {
        Self {
            beta: 0.1,
            loss_type: crate::align::DpoLoss::Sigmoid,
            label_smoothing: 0.0,
            reference: Reference::Auto,
            precompute_ref_log_probs: false,
        }
    }
}

/// KTO as TRL's KTOTrainer defines it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KtoSection {
    pub beta: f64,
    /// `kto` (the paper's loss with the KL reference point) or `apo_zero_unpaired`.
    pub loss_type: crate::kto::KtoLoss,
    /// Weight of the desirable examples' losses (raise it when they are fewer).
    pub desirable_weight: f64,
    pub undesirable_weight: f64,
    pub reference: Reference,
}

impl Default for KtoSection {
    fn default() -> Self {
        Self {
            beta: 0.1,
            loss_type: crate::kto::KtoLoss::Kto,
            desirable_weight: 1.0,
            undesirable_weight: 1.0,
            reference: Reference::Auto,
        }
    }
}

/// What a reward plugin's failure (trap, timeout, memory cap, bad output) does to the run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnPluginError {
    /// The completions it failed on get advantage 0 (and leave their group's statistics),
    /// with a warning naming the plugin, step and completion; the run goes on.
    #[default]
    Skip,
    /// The run stops with the error; the last checkpoint stays intact.
    Stop,
}

/// Per-plugin sandbox limits (the command line's `--timeout-ms` / `--memory-mb` otherwise).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RewardLimits {
    pub timeout_ms: Option<u64>,
    pub memory_mb: Option<u64>,
}

/// One reward function: a plugin (a component path, a name on the plugin path, or an
/// installed `NAMESPACE/NAME`) or a built-in, with its weight and settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RewardSpec {
    pub plugin: Option<String>,
    /// `think_format` (TRL's `<think>…</think>` then an answer) or `exact_match`
    /// (the completion, trimmed, equals `metadata.answer`).
    pub builtin: Option<String>,
    pub weight: f64,
    /// Passed to the plugin's `init` (a JSON object).
    pub settings: Option<serde_json::Value>,
    pub limits: RewardLimits,
}

impl Default for RewardSpec {
    fn default() -> Self {
        Self {
            plugin: None,
            builtin: None,
            weight: 1.0,
            settings: None,
            limits: RewardLimits::default(),
        }
    }
}

impl RewardSpec {
    /// What the run calls this function in metrics (`rewards/<label>/mean`).
    pub fn label(&self) -> String {
        let raw = self
            .plugin
            .as_deref()
            .or(self.builtin.as_deref())
            .unwrap_or("reward");
        let file = raw.rsplit('/').next().unwrap_or(raw);
        file.strip_suffix(".wasm").unwrap_or(file).to_string()
    }

    /// Checks a list of reward functions (`grpo.rewards`, `galley score`'s `rewards`): at
    /// least one; each a plugin or a known built-in, not both; a finite weight (a NaN weight
    /// would turn every total into NaN); a memory cap in MiB that fits the sandbox's byte
    /// count. The error is the key below the list's parent (`rewards[2].weight`) and what is
    /// wrong with it.
    pub fn check_list(specs: &[RewardSpec]) -> Result<(), (String, String)> {
        if specs.is_empty() {
            return Err((
                "rewards".into(),
                "list at least one reward function (`plugin: math-answer` or `builtin: think_format`)".into(),
            ));
        }
        for (i, r) in specs.iter().enumerate() {
            let bad = |key: &str, msg: String| Err((format!("rewards[{i}]{key}"), msg));
            match (&r.plugin, &r.builtin) {
                (None, None) | (Some(_), Some(_)) => {
                    return bad("", "give exactly one of `plugin` or `builtin`".into());
                }
                (None, Some(b)) if !crate::rewards::BUILTINS.contains(&b.as_str()) => {
                    let known = crate::rewards::BUILTINS.join(", ");
                    return bad(
                        ".builtin",
                        format!("unknown built-in `{b}` (known: {known})"),
                    );
                }
                _ => {}
            }
            if !r.weight.is_finite() {
                return bad(".weight", "must be a finite number".into());
            }
            if let Some(mb) = r.limits.memory_mb
                && !(1..=MAX_MEMORY_MB).contains(&mb)
            {
                return bad(
                    ".limits.memory_mb",
                    format!("must be between 1 and {MAX_MEMORY_MB} (MiB)"),
                );
            }
            if r.limits.timeout_ms == Some(0) {
                return bad(".limits.timeout_ms", "must be at least 1".into());
            }
        }
        Ok(())
    }
}

/// One tool plugin (a component path, a name on the plugin path, or an installed
/// `NAMESPACE/NAME`) with its settings and sandbox limits.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ToolSpec {
    pub plugin: String,
    /// Passed to the plugin's `init` (a JSON object).
    pub settings: Option<serde_json::Value>,
    pub limits: RewardLimits,
}

/// An environment plugin (TRL's `environment_factory`): one fresh instance per rollout,
/// started from the prompt's row; its functions are offered beside the tools', and its own
/// score enters the rewards as one more function.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EnvironmentSpec {
    pub plugin: String,
    /// Passed to each instance's `init` (a JSON object).
    pub settings: Option<serde_json::Value>,
    /// Per episode: each rollout's instance has this memory cap and time budget per call.
    pub limits: RewardLimits,
    /// All live episodes together (one per rollout of a step): the memory they may hold
    /// at once, in MiB (default: half of the machine's memory).
    pub episodes_memory_mb: Option<u64>,
    /// The weight of the episode's score among the rewards (TRL adds it with weight 1).
    pub reward_weight: f64,
}

impl Default for EnvironmentSpec {
    fn default() -> Self {
        Self {
            plugin: String::new(),
            settings: None,
            limits: RewardLimits::default(),
            episodes_memory_mb: None,
            reward_weight: 1.0,
        }
    }
}

/// The largest memory cap a config may give a plugin: 64 GiB, far above what a 32-bit
/// wasm instance can use (4 GiB per memory), and small enough that the byte count never wraps.
pub const MAX_MEMORY_MB: u64 = 64 << 10;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GrpoSection {
    /// Completions sampled per prompt (a group). `training.batch_size` counts completions,
    /// as TRL's does, and must be a multiple of this.
    pub num_generations: usize,
    pub max_completion_length: usize,
    pub temperature: f64,
    pub top_p: f64,
    /// 0 keeps every token.
    pub top_k: usize,
    pub rewards: Vec<RewardSpec>,
    /// Tool plugins the model may call while it answers (TRL's `tools`): each call runs in
    /// its plugin and the result is fed back as a tool turn, kept out of the loss.
    pub tools: Vec<ToolSpec>,
    /// An environment each rollout acts in through function calls (TRL's
    /// `environment_factory`); its score is one more reward.
    pub environment: Option<EnvironmentSpec>,
    /// Several environments by name, each prompt picking one with its `environment`
    /// column (TRL's dict of factories); each one's score is a reward of its own.
    pub environments: std::collections::BTreeMap<String, EnvironmentSpec>,
    /// The most rounds of tool calls in one completion (TRL's `max_tool_calling_iterations`).
    pub max_tool_calling_iterations: usize,
    pub scale_rewards: crate::align::ScaleRewards,
    pub loss_type: crate::align::GrpoLoss,
    /// The clipping range below 1 (and above, unless `epsilon_high` is set).
    pub epsilon: f64,
    pub epsilon_high: Option<f64>,
    /// KL penalty against the reference (the policy with adapters off, or a frozen copy);
    /// 0 needs no reference pass at all.
    pub beta: f64,
    /// What the KL penalty is measured against (`auto`: adapters off under LoRA, a frozen
    /// copy under full fine-tuning).
    pub reference: Reference,
    /// Optimizer steps taken on each batch of rollouts.
    pub num_iterations: usize,
    /// DAPO's overlong filtering: completions cut at `max_completion_length` keep their
    /// place in the group's statistics but leave the loss.
    pub mask_truncated_completions: bool,
    pub on_plugin_error: OnPluginError,
    /// Completions written to completions.jsonl per step (all of them by default).
    pub log_completions: Option<usize>,
}

impl GrpoSection {
    /// The run's environments in order, each with its name (none for `environment`) and
    /// its config key.
    pub fn environment_specs(&self) -> Vec<(Option<String>, String, &EnvironmentSpec)> {
        match &self.environment {
            Some(e) => vec![(None, "environment".into(), e)],
            None => self
                .environments
                .iter()
                .map(|(n, e)| (Some(n.clone()), format!("environments.{n}"), e))
                .collect(),
        }
    }
}

impl Default for GrpoSection {
    fn default() -> Self {
        Self {
            num_generations: 8,
            max_completion_length: 256,
            temperature: 1.0,
            top_p: 1.0,
            top_k: 0,
            rewards: Vec::new(),
            tools: Vec::new(),
            environment: None,
            environments: Default::default(),
            max_tool_calling_iterations: 4,
            scale_rewards: crate::align::ScaleRewards::Group,
            loss_type: crate::align::GrpoLoss::Dapo,
            epsilon: 0.2,
            epsilon_high: None,
            beta: 0.0,
            reference: Reference::Auto,
            num_iterations: 1,
            mask_truncated_completions: false,
            on_plugin_error: OnPluginError::Skip,
            log_completions: None,
        }
    }
}
