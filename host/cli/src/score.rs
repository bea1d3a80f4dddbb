//! `galley score CONFIG.yaml`: score a file of completions with reward functions and their
//! weights through the very policy the GRPO trainer uses (galley-train's `rewards`): one call
//! per batch of prompt groups, a failing call retried one completion at a time under `skip`,
//! "failed" kept apart from "no opinion", and no opinion left out of the weighted sum.

use crate::call::{SandboxArgs, parse_grants};
use anyhow::{Context, Result, bail};
use galley_core::RewardInput;
use galley_registry::PluginLocator;
use galley_train::config::{OnPluginError, RewardSpec};
use galley_train::rewards;
use serde::Deserialize;
use std::path::{Path, PathBuf};

#[derive(clap::Args)]
pub struct ScoreArgs {
    /// The score config (YAML).
    config: PathBuf,
    /// Overrides, `batch_size=16 on_plugin_error=stop`.
    #[arg(value_name = "KEY=VALUE")]
    overrides: Vec<String>,
    /// Print one JSON object per completion, then a summary object.
    #[arg(long)]
    json: bool,
    /// Grant a directory, NAME=PATH. Repeatable.
    #[arg(long = "allow-dir", value_name = "NAME=PATH")]
    allow_dir: Vec<String>,
    #[command(flatten)]
    sandbox: SandboxArgs,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ScoreConfig {
    /// Reward functions, applied in order (the same specs as `grpo.rewards`).
    rewards: Vec<RewardSpec>,
    /// JSON lines: {"prompt": TEXT or [messages], "completion": TEXT, "metadata": {...}}.
    /// Consecutive lines with the same prompt and metadata are one group.
    completions: PathBuf,
    /// Completions per plugin call (whole groups; a larger group goes alone).
    #[serde(default = "default_batch")]
    batch_size: usize,
    /// What a failing plugin does: `skip` leaves the completions it fails on unscored,
    /// `stop` ends the run.
    #[serde(default)]
    on_plugin_error: OnPluginError,
    /// Folders searched for plugins given by name, relative to the config file. Default:
    /// GALLEY_PLUGIN_PATH (colon-separated), else `target/plugins` under the current folder.
    #[serde(default)]
    plugin_path: Vec<PathBuf>,
}

fn default_batch() -> usize {
    8
}

fn load_config(path: &Path, overrides: &[String]) -> Result<ScoreConfig> {
    let cfg: ScoreConfig =
        galley_core::config::load(Some(path), overrides, &galley_core::config::no_expand)?;
    if let Err((key, msg)) = RewardSpec::check_list(&cfg.rewards) {
        bail!("{}: key `{key}`: {msg}", path.display());
    }
    if cfg.batch_size == 0 {
        bail!("{}: key `batch_size`: must be at least 1", path.display());
    }
    Ok(cfg)
}

pub fn run(args: ScoreArgs) -> Result<()> {
    let cfg = load_config(&args.config, &args.overrides)?;
    let locator = PluginLocator::for_file(Some(&args.config)).with_search(&cfg.plugin_path);
    let inputs: Vec<RewardInput> =
        crate::call::read_items(&locator.base.join(&cfg.completions), "completion")?;
    let runtime = if cfg.rewards.iter().any(|r| r.plugin.is_some()) {
        Some(args.sandbox.runtime()?)
    } else {
        None
    };
    let grants = parse_grants(&args.allow_dir)?;
    let mut fns = crate::plugins::open_rewards(
        &cfg.rewards,
        "rewards",
        &crate::plugins::Opener {
            locator: &locator,
            sandbox: &args.sandbox,
        },
        runtime.as_ref(),
        &grants,
        args.sandbox.seed,
        &mut crate::plugins::no_record,
    )
    .with_context(|| args.config.display().to_string())?;
    let weights: Vec<f64> = cfg.rewards.iter().map(|r| r.weight).collect();

    let all = rewards::score_inputs(&mut fns, &inputs, cfg.batch_size, cfg.on_plugin_error)
        .context("stopping (on_plugin_error: stop)")?;
    let names: Vec<String> = fns.iter().map(|f| f.name().to_string()).collect();
    let totals = galley_train::align::total_rewards(&all.scores, &weights);
    if args.json {
        print_json(&names, &all, &totals)
    } else {
        print_table(&names, &weights, &all, &totals, &inputs);
        Ok(())
    }
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

/// Per function: its name, its mean over the completions it scored, and how many.
fn per_function(names: &[String], all: &rewards::Scored) -> Vec<(String, f64, usize)> {
    names
        .iter()
        .zip(all.means())
        .map(|(n, (m, c))| (n.clone(), m, c))
        .collect()
}

fn print_json(names: &[String], all: &rewards::Scored, totals: &[f64]) -> Result<()> {
    for (i, total) in totals.iter().enumerate() {
        let per: serde_json::Map<String, serde_json::Value> = names
            .iter()
            .zip(&all.scores)
            .map(|(n, s)| (n.clone(), serde_json::json!(s[i])))
            .collect();
        println!(
            "{}",
            serde_json::json!({"index": i, "scores": per, "failed": all.failed[i], "total": total})
        );
    }
    let failed: serde_json::Map<String, serde_json::Value> = names
        .iter()
        .zip(&all.failures)
        .filter(|(_, c)| **c > 0)
        .map(|(n, c)| (n.clone(), (*c).into()))
        .collect();
    let summary = serde_json::json!({"summary": {
        "completions": totals.len(),
        "total_mean": mean(totals),
        "rewards": per_function(names, all).iter()
            .map(|(n, m, c)| serde_json::json!({"plugin": n, "mean": m, "scored": c}))
            .collect::<Vec<_>>(),
        "failed": failed,
        "plugin_seconds": all.secs.iter().sum::<f64>(),
    }});
    println!("{summary}");
    Ok(())
}

fn print_table(
    names: &[String],
    weights: &[f64],
    all: &rewards::Scored,
    totals: &[f64],
    inputs: &[RewardInput],
) {
    for (f, n) in names.iter().enumerate() {
        println!("     column {}: {n} (weight {})", f + 1, weights[f]);
    }
    for (i, (input, total)) in inputs.iter().zip(totals).enumerate() {
        let short: String = input.completion.chars().take(48).collect::<String>();
        let cells: Vec<String> = all
            .scores
            .iter()
            .map(|s| s[i].map_or_else(|| "     -".into(), |v| format!("{v:>6.2}")))
            .collect();
        let mark = if all.failed[i] { " (failed)" } else { "" };
        println!(
            "{i:>3}  {}  total {total:>6.2}{mark}  {}",
            cells.join("  "),
            short.replace('\n', " ")
        );
    }
    println!("---");
    for (n, m, c) in per_function(names, all) {
        println!("{n:<28} mean {m:.3} over {c} scored");
    }
    println!(
        "{:<28} mean {:.3} over {} completions",
        "total (weighted)",
        mean(totals),
        inputs.len()
    );
    let secs: f64 = all.secs.iter().sum();
    let per_s = (inputs.len() * names.len()) as f64 / secs.max(1e-9);
    println!(
        "plugin time {:.1} ms ({per_s:.0} completion-scores/s)",
        secs * 1e3
    );
    for (n, c) in names.iter().zip(&all.failures).filter(|(_, c)| **c > 0) {
        println!("{n}: failed on {c} completions (skipped)");
    }
}
