//! `galley synth`'s config: the engine that writes, where prompts come from, how many
//! completions per prompt and how they are sampled, how they are graded, and what is written.
//! Typed with unknown keys refused; `check` names the key at fault for what serde cannot see.

use galley_core::EngineSpec;
use galley_train::config::{OnPluginError, RewardSpec, SourceSection};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SynthConfig {
    /// The engine that writes the completions (native or remote).
    pub engine: EngineSpec,
    pub prompts: PromptsSection,
    #[serde(default)]
    pub generation: Generation,
    /// How completions are graded; needed for `format: dpo` and for `keep: best`.
    #[serde(default)]
    pub grade: Option<Grade>,
    pub output: Output,
}

/// Where prompts come from and how a row becomes a conversation.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PromptsSection {
    /// A dataset (`path`: JSONL, JSON, Parquet, Arrow, a folder of shards; `columns`
    /// mapping; `limit`) or a data-loader plugin (`plugin`, `plugin_config`,
    /// `plugin_dirs`): the same section as a training config's `data.train`.
    pub data: SourceSection,
    /// A minijinja template over the row's columns that writes the user's turn (`Write a
    /// question about {{ topic }}`). Without one, rows are prompts as GRPO reads them:
    /// `prompt` (text or messages) or `messages` (a trailing assistant turn is dropped).
    #[serde(default)]
    pub template: Option<String>,
    /// A system message put first in every prompt that has none.
    #[serde(default)]
    pub system: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Generation {
    /// Completions per prompt.
    pub n: usize,
    pub max_tokens: usize,
    /// 0 is greedy (then `n` > 1 gives copies of one completion).
    pub temperature: f32,
    /// Completion `j` of prompt `i` is sampled with `derive_seed(seed, [i, j])`, so a resumed
    /// run samples what an uninterrupted one would have.
    pub seed: u64,
    /// Generation stops at the first of these (which is cut off).
    pub stop: Vec<String>,
    /// Prompts per engine call (and per resume checkpoint).
    pub batch_size: usize,
    /// Every completion held to this JSON schema: a file (relative to this config) or the
    /// schema's JSON. A native engine masks to it, an OpenAI-compatible server is sent it as
    /// `response_format`; Anthropic's and Vertex's APIs refuse it.
    pub json_schema: Option<String>,
}

impl Default for Generation {
    fn default() -> Self {
        Self {
            n: 1,
            max_tokens: 256,
            temperature: 0.7,
            seed: 0,
            stop: Vec::new(),
            batch_size: 16,
            json_schema: None,
        }
    }
}

/// Graders, summed: each reward function's score times its weight, the evaluator's metric
/// times its weight, the judge's score times its weight. A completion none of them has an
/// opinion on (every reward "no opinion", the judge's answer unparseable) has no grade.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Grade {
    /// Reward functions, as in `grpo.rewards` (plugins or built-ins, weights, limits).
    pub rewards: Vec<RewardSpec>,
    /// What a failing reward or evaluator plugin does: `skip` leaves the completions it fails
    /// on ungraded (the trainer's policy), `stop` ends the run (what is written is kept).
    pub on_plugin_error: OnPluginError,
    pub evaluator: Option<EvaluatorGrade>,
    pub judge: Option<JudgeGrade>,
}

/// An evaluator plugin's metric as the grade.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvaluatorGrade {
    /// The plugin (a name, NAMESPACE/NAME or a `.wasm` path).
    pub plugin: String,
    /// Passed to the plugin's `init`.
    #[serde(default)]
    pub settings: Option<serde_json::Value>,
    /// Which of its per-prediction metrics is the grade (default: its first).
    #[serde(default)]
    pub metric: Option<String>,
    /// The column holding the reference answer(s) (text or a list of texts).
    #[serde(default = "default_references")]
    pub references: String,
    #[serde(default = "one")]
    pub weight: f64,
}

/// An LLM judge's pointwise score as the grade.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JudgeGrade {
    /// The judge (default: the engine that wrote the completions).
    #[serde(default)]
    pub engine: Option<EngineSpec>,
    /// `MIN-MAX` (default `1-10`) or `pass-fail`.
    #[serde(default = "default_scale")]
    pub scale: String,
    /// A minijinja prompt file instead of the built-in one (it sees question, answer,
    /// reference, min, max, pass_fail).
    #[serde(default)]
    pub template: Option<PathBuf>,
    /// A column with a reference answer the judge may compare against.
    #[serde(default)]
    pub reference: Option<String>,
    #[serde(default = "default_judge_tokens")]
    pub max_tokens: usize,
    #[serde(default = "one")]
    pub weight: f64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    /// `{"messages": [...prompt, assistant]}` per kept completion (TRL's conversational
    /// language-modeling type).
    #[default]
    Sft,
    /// `{"prompt": [...], "chosen": [assistant], "rejected": [assistant]}` per prompt: the
    /// best- and worst-graded completions (TRL's conversational preference type).
    Dpo,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Keep {
    /// Every completion (with `min_grade`, every one graded at least that).
    #[default]
    All,
    /// The best-graded completion of each prompt.
    Best,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Output {
    /// The JSONL file written (beside it: `FILE.synth.json`, the settings and digests, and
    /// `FILE.synth.log`, which prompts are done).
    pub path: PathBuf,
    #[serde(default)]
    pub format: Format,
    /// SFT: which completions are kept.
    #[serde(default)]
    pub keep: Keep,
    /// SFT: drop completions graded below this (or not graded at all).
    #[serde(default)]
    pub min_grade: Option<f64>,
    /// DPO: a pair is written only when chosen's grade exceeds rejected's by more than this.
    #[serde(default)]
    pub min_margin: f64,
}

fn default_references() -> String {
    "answer".into()
}

fn default_scale() -> String {
    "1-10".into()
}

fn default_judge_tokens() -> usize {
    256
}

fn one() -> f64 {
    1.0
}

impl Grade {
    pub fn is_empty(&self) -> bool {
        self.rewards.is_empty() && self.evaluator.is_none() && self.judge.is_none()
    }
}

impl SynthConfig {
    /// What serde cannot check; `Err` is (key, message).
    pub fn check(&self) -> Result<(), (String, String)> {
        let bad = |k: &str, m: &str| Err((k.to_string(), m.to_string()));
        self.engine.check().map_err(|m| split_key("engine", &m))?;
        let d = &self.prompts.data;
        match (&d.path, &d.plugin) {
            (None, None) => return bad("prompts.data", "give `path` (a dataset) or `plugin`"),
            (Some(_), Some(_)) => return bad("prompts.data", "give `path` or `plugin`, not both"),
            _ => {}
        }
        let g = &self.generation;
        if g.n == 0 {
            return bad("generation.n", "must be at least 1");
        }
        if g.batch_size == 0 {
            return bad("generation.batch_size", "must be at least 1");
        }
        if g.max_tokens == 0 {
            return bad("generation.max_tokens", "must be at least 1");
        }
        if !(g.temperature >= 0.0 && g.temperature.is_finite()) {
            return bad("generation.temperature", "must be 0 (greedy) or more");
        }
        let graded = self.grade.as_ref().is_some_and(|g| !g.is_empty());
        if let Some(gr) = &self.grade {
            if !gr.rewards.is_empty() {
                RewardSpec::check_list(&gr.rewards).map_err(|(k, m)| {
                    (
                        format!("grade.rewards{}", k.trim_start_matches("rewards")),
                        m,
                    )
                })?;
            }
            if let Some(j) = &gr.judge {
                if let Some(e) = &j.engine {
                    e.check().map_err(|m| split_key("grade.judge.engine", &m))?;
                }
                galley_eval::judge::Scale::parse(&j.scale)
                    .map_err(|m| ("grade.judge.scale".to_string(), m))?;
                if !j.weight.is_finite() {
                    return bad("grade.judge.weight", "must be a finite number");
                }
            }
            if let Some(e) = &gr.evaluator
                && !e.weight.is_finite()
            {
                return bad("grade.evaluator.weight", "must be a finite number");
            }
        }
        let o = &self.output;
        match o.format {
            Format::Dpo if !graded => {
                return bad(
                    "grade",
                    "a DPO set needs grades to pick chosen and rejected: give `grade.rewards`, `grade.evaluator` or `grade.judge`",
                );
            }
            Format::Dpo if g.n < 2 => {
                return bad(
                    "generation.n",
                    "a DPO pair needs at least 2 completions per prompt",
                );
            }
            Format::Sft if o.keep == Keep::Best && !graded => {
                return bad("output.keep", "`best` needs grades (`grade`)");
            }
            Format::Sft if o.min_grade.is_some() && !graded => {
                return bad("output.min_grade", "needs grades (`grade`)");
            }
            _ => {}
        }
        if !(o.min_margin >= 0.0 && o.min_margin.is_finite()) {
            return bad("output.min_margin", "must be 0 or more");
        }
        Ok(())
    }
}

/// `galley_core::EngineSpec::check`'s "`key`: message" as (`PREFIX.key`, message).
fn split_key(prefix: &str, m: &str) -> (String, String) {
    match m.strip_prefix('`').and_then(|r| r.split_once("`: ")) {
        Some((k, rest)) => (format!("{prefix}.{k}"), rest.to_string()),
        None => (prefix.to_string(), m.to_string()),
    }
}
