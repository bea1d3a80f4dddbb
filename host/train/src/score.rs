//! `galley score`: a file of completions scored with reward functions and their weights
//! through the very policy the GRPO trainer uses (`rewards`): its config (the same reward
//! specs as `grpo.rewards`), and its report — a line per completion with each function's
//! score and the weighted total, the means, plugin time and failures — as text or JSON.

use crate::config::{OnPluginError, RewardSpec};
use crate::error::{Result, TrainError};
use crate::rewards::Scored;
use galley_core::RewardInput;
use serde::Deserialize;
use serde_json::{Value, json};
use std::fmt::Write;
use std::path::{Path, PathBuf};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScoreConfig {
    /// Reward functions, applied in order (the same specs as `grpo.rewards`).
    pub rewards: Vec<RewardSpec>,
    /// JSON lines: {"prompt": TEXT or [messages], "completion": TEXT, "metadata": {...}}.
    /// Consecutive lines with the same prompt and metadata are one group.
    pub completions: PathBuf,
    /// Completions per plugin call (whole groups; a larger group goes alone).
    #[serde(default = "default_batch")]
    pub batch_size: usize,
    /// What a failing plugin does: `skip` leaves the completions it fails on unscored,
    /// `stop` ends the run.
    #[serde(default)]
    pub on_plugin_error: OnPluginError,
    /// Folders searched for plugins given by name, relative to the config file. Default:
    /// GALLEY_PLUGIN_PATH (colon-separated), else `target/plugins` under the current folder.
    #[serde(default)]
    pub plugin_path: Vec<PathBuf>,
}

fn default_batch() -> usize {
    8
}

impl ScoreConfig {
    /// Reads `path` with `key=value` overrides; errors name the file, line and key.
    pub fn load(path: &Path, overrides: &[String]) -> Result<Self> {
        let config = |msg: String| TrainError::Config {
            file: path.display().to_string(),
            msg,
        };
        let cfg: ScoreConfig =
            galley_core::config::load(Some(path), overrides, &galley_core::config::no_expand)
                .map_err(|e| TrainError::Config {
                    file: e.at,
                    msg: e.msg,
                })?;
        if let Err((key, msg)) = RewardSpec::check_list(&cfg.rewards) {
            return Err(config(format!("key `{key}`: {msg}")));
        }
        if cfg.batch_size == 0 {
            return Err(config("key `batch_size`: must be at least 1".into()));
        }
        Ok(cfg)
    }
}

/// The scores of one `galley score` run, ready to print.
pub struct Report<'a> {
    pub names: Vec<String>,
    pub weights: Vec<f64>,
    pub scored: &'a Scored,
    pub totals: Vec<f64>,
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

impl<'a> Report<'a> {
    pub fn new(names: Vec<String>, weights: Vec<f64>, scored: &'a Scored) -> Self {
        let totals = crate::align::total_rewards(&scored.scores, &weights);
        Self {
            names,
            weights,
            scored,
            totals,
        }
    }

    /// Per function: its name, its mean over the completions it scored, and how many.
    fn per_function(&self) -> Vec<(String, f64, usize)> {
        let means = self.scored.means();
        self.names
            .iter()
            .zip(means)
            .map(|(n, (m, c))| (n.clone(), m, c))
            .collect()
    }

    /// One object per completion (`index`, `scores` by function, `failed`, `total`), then
    /// `{"summary": ...}`.
    pub fn json_lines(&self) -> Vec<Value> {
        let all = self.scored;
        let mut out: Vec<Value> = (0..self.totals.len())
            .map(|i| {
                let per: serde_json::Map<String, Value> = self
                    .names
                    .iter()
                    .zip(&all.scores)
                    .map(|(n, s)| (n.clone(), json!(s[i])))
                    .collect();
                json!({"index": i, "scores": per, "failed": all.failed[i], "total": self.totals[i]})
            })
            .collect();
        let failed: serde_json::Map<String, Value> = self
            .names
            .iter()
            .zip(&all.failures)
            .filter(|(_, c)| **c > 0)
            .map(|(n, c)| (n.clone(), (*c).into()))
            .collect();
        let rewards: Vec<Value> = self
            .per_function()
            .iter()
            .map(|(n, m, c)| json!({"plugin": n, "mean": m, "scored": c}))
            .collect();
        out.push(json!({"summary": {
            "completions": self.totals.len(),
            "total_mean": mean(&self.totals),
            "rewards": rewards,
            "failed": failed,
            "plugin_seconds": all.secs.iter().sum::<f64>(),
        }}));
        out
    }

    /// The table: a column per function, a line per completion (its start), then the means.
    pub fn table(&self, inputs: &[RewardInput]) -> String {
        let (all, mut s) = (self.scored, String::new());
        for (f, n) in self.names.iter().enumerate() {
            let _ = writeln!(s, "     column {}: {n} (weight {})", f + 1, self.weights[f]);
        }
        for (i, (input, total)) in inputs.iter().zip(&self.totals).enumerate() {
            let short: String = input.completion.chars().take(48).collect::<String>();
            let cells: Vec<String> = all
                .scores
                .iter()
                .map(|s| s[i].map_or_else(|| "     -".into(), |v| format!("{v:>6.2}")))
                .collect();
            let mark = if all.failed[i] { " (failed)" } else { "" };
            let cells = cells.join("  ");
            let short = short.replace('\n', " ");
            let _ = writeln!(s, "{i:>3}  {cells}  total {total:>6.2}{mark}  {short}");
        }
        s.push_str("---\n");
        for (n, m, c) in self.per_function() {
            let _ = writeln!(s, "{n:<28} mean {m:.3} over {c} scored");
        }
        let (total, n) = (mean(&self.totals), inputs.len());
        let _ = writeln!(
            s,
            "{:<28} mean {total:.3} over {n} completions",
            "total (weighted)"
        );
        let secs: f64 = all.secs.iter().sum();
        let per_s = (inputs.len() * self.names.len()) as f64 / secs.max(1e-9);
        let ms = secs * 1e3;
        let _ = writeln!(s, "plugin time {ms:.1} ms ({per_s:.0} completion-scores/s)");
        for (n, c) in self
            .names
            .iter()
            .zip(&all.failures)
            .filter(|(_, c)| **c > 0)
        {
            let _ = writeln!(s, "{n}: failed on {c} completions (skipped)");
        }
        s
    }
}
