//! The plugin traits. Each is what a trainer or evaluator needs from one kind of community
//! component, and nothing about how it runs. Implementations must be `Send` so a run can
//! move them to worker threads; calls take `&mut self` because components are stateful.

use crate::data::{Example, Metric, Prediction, RewardGroup};
use serde::{Deserialize, Serialize};
use std::fmt;

/// The kinds of plugin (`tool` is new in `galley:plugin@0.3`, `environment` in 0.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PluginKind {
    Reward,
    DataLoader,
    Evaluator,
    Recipe,
    Tool,
    Environment,
}

impl PluginKind {
    pub const ALL: [PluginKind; 6] = [
        PluginKind::Reward,
        PluginKind::DataLoader,
        PluginKind::Evaluator,
        PluginKind::Recipe,
        PluginKind::Tool,
        PluginKind::Environment,
    ];

    /// The name used in manifests and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            PluginKind::Reward => "reward",
            PluginKind::DataLoader => "data-loader",
            PluginKind::Evaluator => "evaluator",
            PluginKind::Recipe => "recipe",
            PluginKind::Tool => "tool",
            PluginKind::Environment => "environment",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

impl fmt::Display for PluginKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What went wrong in a plugin call, as a trainer needs to know it: whose fault, and whether
/// retrying the same input on a fresh instance can help.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PluginErrorKind {
    /// The user's settings for the plugin were rejected by it.
    InvalidConfig,
    /// The plugin rejected the input it was given.
    InvalidInput,
    /// The plugin reported its own failure.
    Failed,
    /// The plugin trapped (panic, unreachable, stack overflow...).
    Trap,
    /// The call ran past its time budget.
    Timeout,
    /// The plugin tried to grow its memory past its cap.
    OutOfMemory,
    /// The plugin returned something that breaks the contract (wrong length, NaN...).
    BadOutput,
}

/// An error from a plugin call. `plugin` is always `name@version`, `call` the export called,
/// so a log line alone says who failed where.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("plugin {plugin}: {call}: {message}")]
pub struct PluginError {
    pub plugin: String,
    pub call: String,
    pub kind: PluginErrorKind,
    pub message: String,
}

impl PluginError {
    pub fn new(
        plugin: impl Into<String>,
        call: impl Into<String>,
        kind: PluginErrorKind,
        message: impl Into<String>,
    ) -> Self {
        Self {
            plugin: plugin.into(),
            call: call.into(),
            kind,
            message: message.into(),
        }
    }
}

/// Scores completions, a batch of prompt groups per call. `None` is "no opinion": left out
/// of the sample's sum, not zero.
pub trait RewardFn: Send {
    /// `name@version`, for logs and metrics.
    fn name(&self) -> &str;
    /// One result per completion, groups in order (the WIT's `score`).
    fn score(&mut self, groups: &[RewardGroup<'_>]) -> Result<Vec<Option<f64>>, PluginError>;
}

/// Scoring flat inputs (grouped where consecutive inputs share a prompt and metadata), for
/// tools, tests and benchmarks that hold rows rather than groups.
pub trait RewardFnExt: RewardFn {
    fn score_inputs(
        &mut self,
        inputs: &[crate::RewardInput],
    ) -> Result<Vec<Option<f64>>, PluginError> {
        self.score(&crate::RewardInput::groups(inputs))
    }
}

impl<T: RewardFn + ?Sized> RewardFnExt for T {}

/// A stream of examples.
pub trait DataSource: Send {
    fn name(&self) -> &str;
    /// Up to `max` examples; an empty page means the source is exhausted.
    fn next_page(&mut self, max: usize) -> Result<Vec<Example>, PluginError>;
}

/// Grades predictions and aggregates grades.
pub trait Evaluator: Send {
    fn name(&self) -> &str;
    fn score(&mut self, batch: &[Prediction]) -> Result<Vec<Vec<Metric>>, PluginError>;
    fn aggregate(&mut self, scores: &[Vec<Metric>]) -> Result<Vec<Metric>, PluginError>;
}

/// One planned stage of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stage {
    pub name: String,
    pub kind: String,
    /// The stage's settings (a JSON object).
    pub config: serde_json::Value,
}

/// A recipe's reaction to a batch of metrics.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Decision {
    Proceed,
    NextStage,
    Stop(String),
}

/// Plans the stages of a run and reacts to their metrics.
pub trait Recipe: Send {
    fn name(&self) -> &str;
    fn plan(&mut self, config: &serde_json::Value) -> Result<Vec<Stage>, PluginError>;
    fn on_metrics(
        &mut self,
        stage: &str,
        step: u64,
        metrics: &[Metric],
    ) -> Result<Decision, PluginError>;
}

/// One function a tool offers, as OpenAI's `tools` list describes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolFunction {
    pub name: String,
    pub description: String,
    /// The JSON Schema of the arguments object.
    pub parameters: serde_json::Value,
}

impl ToolFunction {
    /// Whether `name` is one OpenAI's API accepts for a function: 1-64 of a-z, A-Z, 0-9, '_'
    /// or '-' (what a chat template and a call parser can carry; serving and tool plugins
    /// both hold names to it).
    pub fn valid_name(name: &str) -> bool {
        (1..=64).contains(&name.len())
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    }

    /// The OpenAI `tools` entry a chat template renders: `{"type": "function", "function":
    /// {...}}`.
    pub fn openai(&self) -> serde_json::Value {
        serde_json::json!({
            "type": "function",
            "function": {
                "name": self.name,
                "description": self.description,
                "parameters": self.parameters,
            }
        })
    }
}

/// One call a model wrote: a function's name and its arguments (JSON text, as written).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FunctionCall<'a> {
    pub name: &'a str,
    pub arguments: &'a str,
}

/// Functions a model may call while it answers (a GRPO rollout's tool turns).
pub trait Tool: Send {
    /// `name@version`, for logs and metrics.
    fn name(&self) -> &str;
    /// The functions it offers (asked once, when the instance starts).
    fn functions(&self) -> &[ToolFunction];
    /// Runs a batch of calls (one round of a rollout's), one result per call in order: the
    /// text is the tool turn the model reads, an error what is wrong with that call. The
    /// outer error: the batch as a whole failed (a trap, the time budget), so no result is
    /// known; the caller may retry the calls one by one.
    #[allow(clippy::type_complexity)]
    fn call(
        &mut self,
        calls: &[FunctionCall<'_>],
    ) -> Result<Vec<Result<String, PluginError>>, PluginError>;
}

/// An environment a model acts in (TRL's `environment_factory`): functions with state, one
/// fresh episode per rollout.
pub trait Environment: Send {
    /// `name@version`, for logs and metrics.
    fn name(&self) -> &str;
    /// The functions every episode offers (asked once, when the environment is opened).
    fn functions(&self) -> &[ToolFunction];
    /// Starts an episode from a dataset row (a JSON object) and a seed: the episode, and the
    /// text to append to the prompt's last message, if any.
    fn start(
        &mut self,
        row: &serde_json::Value,
        seed: u64,
    ) -> Result<(Box<dyn Episode>, Option<String>), PluginError>;
}

/// The row an episode starts from: the example's metadata columns, and `prompt`, its
/// messages (TRL passes a row's columns to `reset`).
pub fn episode_row(
    prompt: &[crate::data::Message],
    metadata: &crate::data::Metadata,
) -> serde_json::Value {
    let mut row: serde_json::Map<String, serde_json::Value> = metadata
        .iter()
        .map(|(k, v)| (k.clone(), v.to_json()))
        .collect();
    row.insert(
        "prompt".into(),
        serde_json::to_value(prompt).unwrap_or(serde_json::Value::Null),
    );
    serde_json::Value::Object(row)
}

/// One rollout's episode: its own state, seen by no other.
pub trait Episode: Send {
    /// One turn's calls, one result per call in order (as [`Tool::call`]); the outer error:
    /// the episode itself failed (a trap, the time budget) and is over.
    #[allow(clippy::type_complexity)]
    fn call(
        &mut self,
        calls: &[FunctionCall<'_>],
    ) -> Result<Vec<Result<String, PluginError>>, PluginError>;
    /// The episode's score, or `None` where the environment does not score.
    fn reward(&mut self) -> Result<Option<f64>, PluginError>;
}
