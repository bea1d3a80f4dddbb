//! The training config: YAML in four sections (`model`, `data`, `training`, `peft`), typed,
//! unknown keys refused, defaults a newcomer would pick, and `a.b=c` overrides from the command
//! line. Errors name the file, line and key path (`training.learning_rate`), or the override.

use crate::error::{Result, TrainError};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

mod align;
pub use align::{
    DpoSection, EnvironmentSpec, GrpoSection, KtoSection, MAX_MEMORY_MB, OnPluginError, Reference,
    RewardLimits, RewardSpec, ToolSpec,
};

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    pub model: ModelSection,
    pub data: DataSection,
    pub training: TrainingSection,
    /// LoRA settings; used when `training.method` (or, for DPO, `training.tuning`) is
    /// `lora` or `qlora`.
    pub peft: PeftSection,
    /// Direct preference optimisation settings (`training.method: dpo`).
    pub dpo: DpoSection,
    /// Group relative policy optimisation settings (`training.method: grpo`).
    pub grpo: GrpoSection,
    /// Kahneman-Tversky optimisation settings (`training.method: kto`).
    pub kto: KtoSection,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct ModelSection {
    /// A `.gguf` file or an HF checkpoint folder. Leave unset with `init` to pre-train.
    pub path: Option<PathBuf>,
    /// PEFT LoRA adapters applied over `path` at load, in order (each trained over the base
    /// with the ones before it): training continues from an earlier LoRA run without
    /// writing a merged model.
    pub adapters: Vec<PathBuf>,
    /// Shape of a model initialised from scratch (pre-training).
    pub init: Option<InitSection>,
    /// A tokenizer.json to use, or `train` settings to train one on the training text.
    pub tokenizer: Option<TokenizerSection>,
    /// A Jinja chat template file used instead of the model's own (TRL's `chat_template_path`,
    /// axolotl's `chat_template_jinja`): for a base model without one, or a template that
    /// shows tools. It is written with what the run leaves (the merged model's
    /// tokenizer_config.json, `chat_template.jinja` beside an adapter).
    pub chat_template: Option<PathBuf>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct InitSection {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub max_position_embeddings: usize,
    pub rope_theta: f64,
    pub tie_word_embeddings: bool,
    /// Standard deviation of the normal initialisation of projections and embeddings.
    pub init_std: f64,
}

impl Default for InitSection {
    fn default() -> Self {
        Self {
            hidden_size: 256,
            intermediate_size: 768,
            num_layers: 6,
            num_heads: 4,
            num_kv_heads: 2,
            max_position_embeddings: 512,
            rope_theta: 10000.0,
            tie_word_embeddings: true,
            init_std: 0.02,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct TokenizerSection {
    /// An existing tokenizer.json.
    pub path: Option<PathBuf>,
    /// Train a byte-level BPE tokenizer on the training text.
    pub train: Option<TokenizerTrain>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TokenizerTrain {
    pub vocab_size: usize,
    pub min_frequency: u64,
}

impl Default for TokenizerTrain {
    fn default() -> Self {
        Self {
            vocab_size: 4096,
            min_frequency: 2,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    /// From the file name: `.jsonl` conversations, `.json` Alpaca, `.txt` plain text.
    Auto,
    Conversations,
    Alpaca,
    Text,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct SourceSection {
    pub path: Option<PathBuf>,
    pub format: Option<Format>,
    /// A data-loader plugin (a component file or an installed plugin name) instead of a file.
    pub plugin: Option<String>,
    /// Settings passed to the plugin's `init`.
    pub plugin_config: Option<serde_json::Value>,
    /// Read-only directories granted to the plugin, by the name its manifest asks for.
    pub plugin_dirs: std::collections::BTreeMap<String, PathBuf>,
    /// Use at most this many examples.
    pub limit: Option<usize>,
    /// This source's share of a `data.mixture` (relative to the others'; default 1).
    pub weight: Option<f64>,
    /// The dataset's type (TRL's): detected from its columns unless named.
    pub r#type: DatasetType,
    /// Column mapping: galley's name -> the dataset's (`{prompt: question}`).
    pub columns: std::collections::BTreeMap<String, String>,
}

/// TRL's dataset types (each standard or conversational, which the values say).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DatasetType {
    /// From the columns, as TRL decides.
    #[default]
    Auto,
    /// `text` or `messages`.
    LanguageModeling,
    /// `prompt`.
    PromptOnly,
    /// `prompt`, `completion`.
    PromptCompletion,
    /// `prompt`, `chosen`, `rejected` (or the prompt implicit in `chosen`/`rejected`).
    Preference,
    /// `prompt`, `completion`, `label`.
    UnpairedPreference,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LossOn {
    /// Every assistant turn.
    AllAssistant,
    /// Only the final assistant turn.
    LastAssistant,
    /// Every token (plain language modelling).
    All,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Truncation {
    /// Keep the first `max_length` tokens.
    Right,
    /// Drop the example (counted and logged).
    Skip,
    /// Stop with an error naming the example.
    Error,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnBad {
    /// Count and log the bad example, go on.
    Skip,
    /// Stop before training with an error naming the file and line.
    Error,
}

/// When a mixture ends (as `interleave_datasets` and Oumi's mixtures end).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Stopping {
    /// As soon as one source runs out.
    #[default]
    FirstExhausted,
    /// When every source has run out at least once (the others start over meanwhile).
    AllExhausted,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataSection {
    pub train: SourceSection,
    /// Several training sources mixed instead of `train`: each drawn with probability
    /// `weight / sum of weights`, seeded by `data.seed`.
    pub mixture: Vec<SourceSection>,
    pub mixture_stopping: Stopping,
    pub validation: Option<SourceSection>,
    /// Share of the training examples held out for validation when no `validation` is given.
    pub validation_split: f64,
    /// Tokens per sequence (longer examples follow `truncation`).
    pub max_length: usize,
    pub truncation: Truncation,
    /// Concatenate examples into full `max_length` rows (no padding).
    pub packing: bool,
    pub loss_on: LossOn,
    pub on_bad_example: OnBad,
    /// Seed of the shuffle and split (defaults to `training.seed`).
    pub seed: Option<u64>,
    pub shuffle: bool,
    /// Put examples of similar length in the same batch (less padding), as HF's
    /// `group_by_length`: each epoch's shuffled order is cut into windows of 50 batches,
    /// each window sorted by length, and the batches shuffled again.
    pub group_by_length: bool,
}

impl Default for DataSection {
    fn default() -> Self {
        Self {
            train: SourceSection::default(),
            mixture: Vec::new(),
            mixture_stopping: Stopping::FirstExhausted,
            validation: None,
            validation_split: 0.0,
            max_length: 512,
            truncation: Truncation::Right,
            packing: false,
            loss_on: LossOn::AllAssistant,
            on_bad_example: OnBad::Skip,
            seed: None,
            shuffle: true,
            group_by_length: false,
        }
    }
}

/// What a run optimises.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Objective {
    /// Next-token loss on plain text, usually from scratch (`model.init`).
    Pretrain,
    /// Next-token loss on conversations or text, on the tokens `data.loss_on` says.
    Sft,
    /// Direct preference optimisation on (prompt, chosen, rejected) pairs.
    Dpo,
    /// Group relative policy optimisation: sampled completions scored by reward functions.
    Grpo,
    /// Kahneman-Tversky optimisation on (prompt, completion, desirable?) examples.
    Kto,
}

impl Objective {
    /// DPO, GRPO and KTO align a trained policy.
    pub fn is_alignment(self) -> bool {
        matches!(self, Objective::Dpo | Objective::Grpo | Objective::Kto)
    }
}

/// Which weights a run trains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Tuning {
    /// Every weight.
    Full,
    /// Low-rank adapters beside frozen weights.
    Lora,
    /// LoRA over 4-bit frozen weights.
    Qlora,
}

/// `training.method` as written: an objective, or one of SFT's shorthands `full`, `lora`,
/// `qlora` (SFT with that tuning). Code asks `TrainConfig::objective()` and `tuning()`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MethodName {
    Pretrain,
    Sft,
    Dpo,
    Grpo,
    Kto,
    Full,
    Lora,
    Qlora,
}

/// The dtype the forward and backward passes compute in. Weights, gradients and the
/// optimizer's moments stay f32 either way (bf16 is mixed precision, as PyTorch's autocast:
/// products in bf16, norms, softmax and the loss in f32, the residual stream in f32).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Precision {
    /// bf16 on a GPU, f32 on the CPU.
    #[default]
    Auto,
    F32,
    Bf16,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OptimizerKind {
    Adamw,
    Sgd,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Schedule {
    Constant,
    Linear,
    Cosine,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainingSection {
    /// `pretrain`, `sft`, `dpo`, `grpo`, `kto`, or SFT's shorthands `full`, `lora`, `qlora`.
    pub method: MethodName,
    /// Which weights train: `full`, `lora` or `qlora` (default: `lora`, or `full` to
    /// pre-train).
    pub tuning: Option<Tuning>,
    pub output_dir: PathBuf,
    pub epochs: usize,
    /// Stop after this many optimizer steps (overrides `epochs`).
    pub max_steps: Option<usize>,
    /// Sequences per micro-batch.
    pub batch_size: usize,
    pub gradient_accumulation_steps: usize,
    pub learning_rate: f64,
    pub lr_scheduler: Schedule,
    pub warmup_steps: usize,
    /// Warm-up as a share of all steps (used when `warmup_steps` is 0).
    pub warmup_ratio: f64,
    pub optimizer: OptimizerKind,
    pub weight_decay: f64,
    pub adam_beta1: f64,
    pub adam_beta2: f64,
    pub adam_epsilon: f64,
    pub momentum: f64,
    /// Clip the global gradient norm to this (0 = off).
    pub max_grad_norm: f64,
    /// Data-parallel runs sum gradients across the ranks in buckets of up to this many MB
    /// (HF's `ddp_bucket_cap_mb`), each started as soon as its gradients are final.
    pub ddp_bucket_cap_mb: f64,
    pub seed: u64,
    pub logging_steps: usize,
    /// Validation every this many steps (0 = at the end of each epoch).
    pub eval_steps: usize,
    /// Also measure validation loss before the first step (the baseline the run improves on).
    pub eval_on_start: bool,
    /// Checkpoint every this many steps (0 = only at the end).
    pub save_steps: usize,
    /// Checkpoints kept (oldest removed first).
    pub save_total_limit: usize,
    /// Also write the merged model (safetensors + config + tokenizer) at the end.
    pub save_merged: bool,
    /// Worker threads (default: all cores).
    pub threads: Option<usize>,
    /// `cpu`, `cuda` or `cuda:N`.
    pub device: String,
    /// `auto` (bf16 on a GPU, f32 on the CPU), `f32` or `bf16`.
    pub precision: Precision,
}

impl Default for TrainingSection {
    fn default() -> Self {
        Self {
            method: MethodName::Lora,
            tuning: None,
            output_dir: PathBuf::from("runs/train"),
            epochs: 1,
            max_steps: None,
            batch_size: 4,
            gradient_accumulation_steps: 1,
            learning_rate: 2e-4,
            lr_scheduler: Schedule::Cosine,
            warmup_steps: 0,
            warmup_ratio: 0.0,
            optimizer: OptimizerKind::Adamw,
            weight_decay: 0.0,
            adam_beta1: 0.9,
            adam_beta2: 0.999,
            adam_epsilon: 1e-8,
            momentum: 0.0,
            max_grad_norm: 1.0,
            ddp_bucket_cap_mb: 32.0,
            seed: 42,
            logging_steps: 1,
            eval_steps: 0,
            eval_on_start: true,
            save_steps: 0,
            save_total_limit: 2,
            save_merged: false,
            threads: None,
            device: "cpu".into(),
            precision: Precision::Auto,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QuantKind {
    /// GGUF Q4_0 blocks (32 weights, one scale).
    Q4_0,
    /// GGUF Q4_1 blocks (32 weights, scale and minimum).
    Q4_1,
    /// GGUF Q8_0 blocks.
    Q8_0,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PeftSection {
    pub r: usize,
    pub lora_alpha: f64,
    pub lora_dropout: f64,
    pub target_modules: Vec<String>,
    /// QLoRA: the blocks a dense base is quantized to (a GGUF base keeps its own 4-bit blocks).
    pub quant: QuantKind,
}

impl Default for PeftSection {
    fn default() -> Self {
        Self {
            r: 8,
            lora_alpha: 16.0,
            lora_dropout: 0.05,
            target_modules: ["q_proj", "k_proj", "v_proj", "o_proj"]
                .map(String::from)
                .to_vec(),
            quant: QuantKind::Q4_0,
        }
    }
}

fn invalid(file: &str, msg: impl Into<String>) -> TrainError {
    TrainError::Config {
        file: file.into(),
        msg: msg.into(),
    }
}

impl TrainConfig {
    /// Reads `path` (if any) and applies `overrides`; relative paths in the file are taken
    /// relative to the file's folder.
    pub fn load(path: Option<&Path>, overrides: &[String]) -> Result<Self> {
        let name = path.map_or("(no config file)".to_string(), |p| p.display().to_string());
        let mut cfg: TrainConfig =
            galley_core::config::load(path, overrides, &galley_core::config::no_expand)
                .map_err(|e| invalid(&e.at, e.msg))?;
        if let Some(dir) = path.and_then(|p| p.parent()) {
            cfg.relative_to(dir);
        }
        cfg.validate(&name)?;
        Ok(cfg)
    }

    /// A config given as a tree of values (a `galley run` stage's merged settings): `name`
    /// is what errors call it, relative paths are taken from `base`.
    pub fn from_value(value: serde_json::Value, name: &str, base: &Path) -> Result<Self> {
        let mut cfg: TrainConfig = serde_path_to_error::deserialize(value).map_err(|e| {
            let key = e.path().to_string();
            invalid(name, format!("`{key}`: {}", e.into_inner()))
        })?;
        cfg.relative_to(base);
        cfg.validate(name)?;
        Ok(cfg)
    }

    fn relative_to(&mut self, dir: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() && !dir.as_os_str().is_empty() {
                *p = dir.join(&*p);
            }
        };
        if let Some(p) = self.model.path.as_mut() {
            fix(p)
        }
        self.model.adapters.iter_mut().for_each(fix);
        if let Some(p) = self.model.chat_template.as_mut() {
            fix(p)
        }
        fix(&mut self.training.output_dir);
        if let Some(p) = self.model.tokenizer.as_mut().and_then(|t| t.path.as_mut()) {
            fix(p)
        }
        for src in std::iter::once(&mut self.data.train)
            .chain(self.data.validation.as_mut())
            .chain(self.data.mixture.iter_mut())
        {
            if let Some(p) = src.path.as_mut() {
                fix(p)
            }
            src.plugin_dirs.values_mut().for_each(fix);
        }
        // Plugin names (`plugin:` keys) stay as written: the plugin locator resolves them
        // against this file's folder, once.
    }

    /// Checks the combinations serde cannot: each message names the key.
    pub fn validate(&self, file: &str) -> Result<()> {
        let t = &self.training;
        let bad = |key: &str, msg: &str| Err(invalid(file, format!("`{key}`: {msg}")));
        match (&self.model.path, &self.model.init) {
            (None, None) => {
                return bad("model.path", "name a model (or `model.init` to pre-train)");
            }
            (Some(_), Some(_)) => {
                return bad("model.init", "give `model.path` or `model.init`, not both");
            }
            (None, Some(_)) if self.tuning() != Tuning::Full => {
                return bad(
                    "training.method",
                    "a model initialised from scratch trains with `full` tuning",
                );
            }
            (None, Some(_)) if self.model.tokenizer.is_none() => {
                return bad("model.tokenizer", "a new model needs `path` or `train`");
            }
            _ => {}
        }
        if !self.model.adapters.is_empty() && self.model.path.is_none() {
            return bad(
                "model.adapters",
                "adapters apply over `model.path`; name it",
            );
        }
        if self.objective().is_alignment() && self.model.path.is_none() {
            return bad("model.path", "alignment starts from a trained model");
        }
        if matches!(
            t.method,
            MethodName::Full | MethodName::Lora | MethodName::Qlora
        ) && t.tuning.is_some()
        {
            return bad(
                "training.tuning",
                "`training.method` already names the tuning; write `method: sft` with `tuning`, or drop `tuning`",
            );
        }
        if self.dpo.beta <= 0.0 || !self.dpo.beta.is_finite() {
            return bad("dpo.beta", "must be a positive number");
        }
        if self.objective() == Objective::Grpo {
            self.validate_grpo(file)?;
        }
        if self.objective() == Objective::Kto {
            let k = &self.kto;
            if k.beta <= 0.0 || !k.beta.is_finite() {
                return bad("kto.beta", "must be a positive number");
            }
            if !(k.desirable_weight > 0.0 && k.undesirable_weight > 0.0) {
                return bad("kto.desirable_weight", "the weights must be positive");
            }
            if k.loss_type == crate::kto::KtoLoss::Kto && t.batch_size < 2 {
                // The KL estimate pairs each prompt with another example's completion.
                return bad(
                    "training.batch_size",
                    "KTO estimates its KL term from mismatched pairs within a micro-batch: use a batch size of at least 2",
                );
            }
        }
        let train_named = self.data.train.path.is_some() || self.data.train.plugin.is_some();
        if self.data.mixture.is_empty() && !train_named {
            return bad("data.train.path", "name a data file (or `plugin`)");
        }
        if !self.data.mixture.is_empty() && train_named {
            return bad(
                "data.mixture",
                "give `data.train` or `data.mixture` (which lists every training source), not both",
            );
        }
        for (i, m) in self.data.mixture.iter().enumerate() {
            if m.path.is_none() && m.plugin.is_none() {
                return bad(
                    &format!("data.mixture[{i}]"),
                    "name a data file (or `plugin`)",
                );
            }
            if m.weight.is_some_and(|w| !(w > 0.0 && w.is_finite())) {
                return bad(
                    &format!("data.mixture[{i}].weight"),
                    "must be a positive number",
                );
            }
        }
        if t.batch_size == 0 {
            return bad("training.batch_size", "must be at least 1");
        }
        if t.gradient_accumulation_steps == 0 {
            return bad("training.gradient_accumulation_steps", "must be at least 1");
        }
        if !(t.ddp_bucket_cap_mb.is_finite() && t.ddp_bucket_cap_mb > 0.0) {
            return bad(
                "training.ddp_bucket_cap_mb",
                "must be a positive number of MB",
            );
        }
        if !(t.learning_rate.is_finite() && t.learning_rate >= 0.0) {
            return bad("training.learning_rate", "must be a non-negative number");
        }
        if self.data.max_length < 2 {
            return bad("data.max_length", "must be at least 2");
        }
        if !(0.0..1.0).contains(&self.data.validation_split) {
            return bad("data.validation_split", "must be in [0, 1)");
        }
        if !(0.0..1.0).contains(&self.peft.lora_dropout) {
            return bad("peft.lora_dropout", "must be in [0, 1)");
        }
        if self.tuning() != Tuning::Full && self.peft.r == 0 {
            return bad("peft.r", "must be at least 1");
        }
        if self.tuning() != Tuning::Full && self.peft.target_modules.is_empty() {
            return bad("peft.target_modules", "name at least one module");
        }
        Ok(())
    }

    fn validate_grpo(&self, file: &str) -> Result<()> {
        let g = &self.grpo;
        let bad = |key: &str, msg: String| Err(invalid(file, format!("`grpo.{key}`: {msg}")));
        if g.num_generations < 2 {
            return bad(
                "num_generations",
                "must be at least 2 (advantages compare completions within a group)".into(),
            );
        }
        if !self.training.batch_size.is_multiple_of(g.num_generations) {
            return Err(invalid(
                file,
                format!(
                    "`training.batch_size`: {} completions is not a whole number of groups of grpo.num_generations = {}",
                    self.training.batch_size, g.num_generations
                ),
            ));
        }
        if g.max_completion_length == 0 {
            return bad("max_completion_length", "must be at least 1".into());
        }
        if !(g.temperature > 0.0 && g.temperature.is_finite()) {
            return bad(
                "temperature",
                "must be > 0 (GRPO needs different completions per group)".into(),
            );
        }
        if !(g.top_p > 0.0 && g.top_p <= 1.0) {
            return bad("top_p", "must be in (0, 1]".into());
        }
        if !(g.epsilon >= 0.0 && g.epsilon_high.unwrap_or(0.0) >= 0.0) {
            return bad("epsilon", "must be >= 0".into());
        }
        if !(g.beta >= 0.0 && g.beta.is_finite()) {
            return bad("beta", "must be >= 0".into());
        }
        if g.num_iterations == 0 {
            return bad("num_iterations", "must be at least 1".into());
        }
        // An environment that scores its episodes is a reward of its own (TRL makes
        // `reward_funcs` optional then).
        if g.environment.is_some() && !g.environments.is_empty() {
            return bad(
                "environments",
                "give `environment` (one for every prompt) or `environments` (by name, each prompt's `environment` column picking one), not both".into(),
            );
        }
        for name in g.environments.keys() {
            if !galley_core::ToolFunction::valid_name(name) {
                return bad(
                    &format!("environments.{name}"),
                    "a name is 1-64 of a-z, A-Z, 0-9, '_' or '-'".into(),
                );
            }
        }
        let envs = g.environment_specs();
        if (!g.rewards.is_empty() || envs.is_empty())
            && let Err((key, msg)) = RewardSpec::check_list(&g.rewards)
        {
            return bad(&key, msg);
        }
        let env = envs
            .iter()
            .map(|(_, key, e)| (key.clone(), &e.plugin, &e.limits));
        let tools = g
            .tools
            .iter()
            .enumerate()
            .map(|(i, t)| (format!("tools[{i}]"), &t.plugin, &t.limits));
        for (key, plugin, limits) in tools.chain(env) {
            if plugin.trim().is_empty() {
                return bad(
                    &format!("{key}.plugin"),
                    "name the plugin (`plugin: calculator`, `plugin: wordle`)".into(),
                );
            }
            if limits.timeout_ms == Some(0) {
                return bad(
                    &format!("{key}.limits.timeout_ms"),
                    "must be at least 1".into(),
                );
            }
            if let Some(mb) = limits.memory_mb
                && !(1..=MAX_MEMORY_MB).contains(&mb)
            {
                return bad(
                    &format!("{key}.limits.memory_mb"),
                    format!("must be between 1 and {MAX_MEMORY_MB} (MiB)"),
                );
            }
        }
        for (_, key, e) in &envs {
            if !e.reward_weight.is_finite() {
                return bad(
                    &format!("{key}.reward_weight"),
                    "must be a finite number".into(),
                );
            }
            if let Some(mb) = e.episodes_memory_mb
                && !(1..=1 << 30).contains(&mb)
            {
                return bad(
                    &format!("{key}.episodes_memory_mb"),
                    "must be between 1 and 2^30 (MiB)".into(),
                );
            }
        }
        if (!g.tools.is_empty() || !envs.is_empty()) && g.max_tool_calling_iterations == 0 {
            return bad(
                "max_tool_calling_iterations",
                "must be at least 1 when tools are listed".into(),
            );
        }
        Ok(())
    }

    /// What the run optimises (`full`, `lora` and `qlora` are SFT).
    pub fn objective(&self) -> Objective {
        match self.training.method {
            MethodName::Pretrain => Objective::Pretrain,
            MethodName::Dpo => Objective::Dpo,
            MethodName::Grpo => Objective::Grpo,
            MethodName::Kto => Objective::Kto,
            MethodName::Sft | MethodName::Full | MethodName::Lora | MethodName::Qlora => {
                Objective::Sft
            }
        }
    }

    /// Which weights train: `training.tuning`, the shorthand `method`, else LoRA (full when
    /// pre-training).
    pub fn tuning(&self) -> Tuning {
        match (self.training.method, self.training.tuning) {
            (MethodName::Full, _) => Tuning::Full,
            (MethodName::Lora, _) => Tuning::Lora,
            (MethodName::Qlora, _) => Tuning::Qlora,
            (_, Some(t)) => t,
            (MethodName::Pretrain, None) => Tuning::Full,
            (_, None) => Tuning::Lora,
        }
    }

    pub fn data_seed(&self) -> u64 {
        self.data.seed.unwrap_or(self.training.seed)
    }
}
