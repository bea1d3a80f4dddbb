//! `galley score CONFIG.yaml`: score a file of completions with one or more reward plugins
//! and their weights, the way the GRPO trainer will: batched calls, "no opinion" left out of
//! the weighted sum, and a failing plugin either skipping the sample or stopping the run.

use crate::call::{SandboxArgs, parse_grants};
use anyhow::{Context, Result, bail};
use galley_core::{Message, Metadata, RewardFn, RewardInput};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(clap::Args)]
pub struct ScoreArgs {
    /// The score config (YAML).
    config: PathBuf,
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
    /// Reward functions, applied in order.
    rewards: Vec<RewardSpec>,
    /// JSON lines: {"prompt": TEXT or [messages], "completion": TEXT, "metadata": {...}}.
    completions: PathBuf,
    /// Completions per plugin call (a GRPO group, say).
    #[serde(default = "default_batch")]
    batch_size: usize,
    /// What a failing plugin does to a batch: `skip` scores it as missing, `stop` ends the run.
    #[serde(default)]
    on_plugin_error: OnError,
    /// Folders searched for plugins given by name, relative to the config file. Default:
    /// GALLEY_PLUGIN_PATH (colon-separated), else `target/plugins` under the current folder.
    #[serde(default)]
    plugin_path: Vec<PathBuf>,
}

/// Resolves `rewards[i].plugin`: a path when it looks like one, else a name on the search path.
pub(crate) fn resolve_plugin(spec: &str, base: &Path, search: &[PathBuf]) -> Result<PathBuf> {
    // NAMESPACE/NAME: a package `galley plugin install` put in .galley/plugins.
    if let Ok(name) = galley_registry::PackageName::parse(spec) {
        let installed = PathBuf::from(".galley/plugins")
            .join(&name.namespace)
            .join(format!("{}.wasm", name.name));
        if installed.exists() {
            return Ok(installed);
        }
        bail!("package `{spec}` is not installed; run `galley plugin install {spec}`");
    }
    if spec.contains('/') || spec.ends_with(".wasm") {
        return Ok(base.join(spec));
    }
    for dir in search {
        let candidate = dir.join(format!("{spec}.wasm"));
        if candidate.exists() {
            return Ok(candidate);
        }
    }
    bail!(
        "no plugin named `{spec}` in {}; build it with `galley plugin build plugins/{spec}`, or give a path to its .wasm",
        search
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    )
}

fn search_path(cfg: &ScoreConfig, base: &Path) -> Vec<PathBuf> {
    if !cfg.plugin_path.is_empty() {
        return cfg.plugin_path.iter().map(|p| base.join(p)).collect();
    }
    default_plugin_path()
}

/// Where plugin names are looked up: `GALLEY_PLUGIN_PATH` (colon-separated), else
/// `target/plugins` (what `scripts/build-plugins.sh` fills).
pub(crate) fn default_plugin_path() -> Vec<PathBuf> {
    match std::env::var("GALLEY_PLUGIN_PATH") {
        Ok(v) if !v.is_empty() => v.split(':').map(PathBuf::from).collect(),
        _ => vec![PathBuf::from("target/plugins")],
    }
}

fn default_batch() -> usize {
    8
}

#[derive(Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "lowercase")]
enum OnError {
    #[default]
    Skip,
    Stop,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RewardSpec {
    /// A plugin name (looked up in `plugin_path`), an installed package (`NAMESPACE/NAME`),
    /// or a path to a component, relative to the config file.
    plugin: String,
    #[serde(default = "one")]
    weight: f64,
    /// The plugin's own settings.
    #[serde(default)]
    settings: serde_yaml::Mapping,
    /// Sandbox limits for this plugin, over the command line's.
    #[serde(default)]
    limits: LimitsSpec,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitsSpec {
    /// Time budget of one call, in milliseconds.
    timeout_ms: Option<u64>,
    /// Memory cap of the instance, in MiB.
    memory_mb: Option<u64>,
}

fn one() -> f64 {
    1.0
}

/// One line of a completions file: the prompt as text or messages, the completion, metadata.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Line {
    #[serde(default)]
    prompt: Option<Prompt>,
    completion: String,
    #[serde(default)]
    metadata: Metadata,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Prompt {
    Text(String),
    Messages(Vec<Message>),
}

fn load_config(path: &Path) -> Result<ScoreConfig> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("{}: cannot read", path.display()))?;
    let cfg: ScoreConfig =
        serde_yaml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    if cfg.rewards.is_empty() {
        bail!(
            "{}: key `rewards`: list at least one reward plugin",
            path.display()
        );
    }
    if cfg.batch_size == 0 {
        bail!("{}: key `batch_size`: must be at least 1", path.display());
    }
    Ok(cfg)
}

impl From<Line> for RewardInput {
    fn from(l: Line) -> Self {
        let prompt = match l.prompt {
            None => Vec::new(),
            Some(Prompt::Text(t)) => vec![Message::new("user", t)],
            Some(Prompt::Messages(m)) => m,
        };
        RewardInput {
            prompt,
            completion: l.completion,
            metadata: l.metadata,
        }
    }
}

fn load_completions(path: &Path) -> Result<Vec<RewardInput>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("{}: cannot read completions", path.display()))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let l: Line = serde_json::from_str(line)
            .with_context(|| format!("{}:{}: bad completion line", path.display(), i + 1))?;
        out.push(l.into());
    }
    Ok(out)
}

pub fn run(args: ScoreArgs) -> Result<()> {
    let cfg = load_config(&args.config)?;
    let base = args.config.parent().unwrap_or(Path::new("."));
    let inputs = load_completions(&base.join(&cfg.completions))?;
    let runtime = args.sandbox.runtime()?;
    let grants = parse_grants(&args.allow_dir)?;

    let mut rewards: Vec<(Box<dyn RewardFn>, f64)> = Vec::new();
    let search = search_path(&cfg, base);
    for (i, spec) in cfg.rewards.iter().enumerate() {
        let path = resolve_plugin(&spec.plugin, base, &search)
            .with_context(|| format!("{}: rewards[{i}].plugin", args.config.display()))?;
        let plugin = runtime
            .load(&path)
            .with_context(|| format!("{}: rewards[{i}].plugin", args.config.display()))?;
        let settings = serde_json::to_value(&spec.settings)?;
        let mut sandbox = args.sandbox.clone();
        sandbox.timeout_ms = spec.limits.timeout_ms.unwrap_or(sandbox.timeout_ms);
        sandbox.memory_mb = spec.limits.memory_mb.unwrap_or(sandbox.memory_mb);
        let reward = plugin
            .reward(&settings, sandbox.options(grants.clone()))
            .with_context(|| {
                format!("{}: rewards[{i}] ({})", args.config.display(), plugin.id())
            })?;
        rewards.push((Box::new(reward), spec.weight));
    }

    // scores[r][i]: reward r's opinion of completion i.
    let mut scores: Vec<Vec<Option<f64>>> = vec![Vec::with_capacity(inputs.len()); rewards.len()];
    let mut failures: BTreeMap<String, usize> = BTreeMap::new();
    let mut plugin_time = std::time::Duration::ZERO;
    for batch in inputs.chunks(cfg.batch_size) {
        for (r, (reward, _)) in rewards.iter_mut().enumerate() {
            let t = Instant::now();
            let result = reward.score(batch);
            plugin_time += t.elapsed();
            match result {
                Ok(s) => scores[r].extend(s),
                Err(e) if cfg.on_plugin_error == OnError::Skip => {
                    tracing::warn!("{e}; skipping {} completions", batch.len());
                    eprintln!(
                        "warning: {e}; these {} completions get no score from it",
                        batch.len()
                    );
                    *failures.entry(reward.name().to_string()).or_default() += batch.len();
                    scores[r].extend(std::iter::repeat_n(None, batch.len()));
                }
                Err(e) => return Err(e).context("stopping (on_plugin_error: stop)"),
            }
        }
    }

    let names: Vec<String> = rewards.iter().map(|(r, _)| r.name().to_string()).collect();
    if !args.json {
        for (r, n) in names.iter().enumerate() {
            println!(
                "{:>w$}column {}: {n} (weight {})",
                "",
                r + 1,
                rewards[r].1,
                w = 5
            );
        }
    }
    let mut totals = Vec::with_capacity(inputs.len());
    for (i, input) in inputs.iter().enumerate() {
        // A function with no opinion is left out of the sum, not counted as zero.
        let total: f64 = rewards
            .iter()
            .enumerate()
            .filter_map(|(r, (_, w))| scores[r][i].map(|s| s * w))
            .sum();
        totals.push(total);
        if args.json {
            let per: serde_json::Map<String, serde_json::Value> = names
                .iter()
                .enumerate()
                .map(|(r, n)| (n.clone(), serde_json::json!(scores[r][i])))
                .collect();
            println!(
                "{}",
                serde_json::json!({"index": i, "scores": per, "total": total})
            );
        } else {
            let short: String = input
                .completion
                .chars()
                .take(48)
                .collect::<String>()
                .replace('\n', " ");
            let cells: Vec<String> = (0..rewards.len())
                .map(|r| {
                    scores[r][i]
                        .map(|s| format!("{s:>6.2}"))
                        .unwrap_or_else(|| "     -".into())
                })
                .collect();
            println!("{i:>3}  {}  total {total:>6.2}  {short}", cells.join("  "));
        }
    }
    let mean = |v: &[f64]| {
        if v.is_empty() {
            0.0
        } else {
            v.iter().sum::<f64>() / v.len() as f64
        }
    };
    let per_reward: Vec<(String, f64, usize)> = names
        .iter()
        .enumerate()
        .map(|(r, n)| {
            let vals: Vec<f64> = scores[r].iter().flatten().copied().collect();
            (n.clone(), mean(&vals), vals.len())
        })
        .collect();
    let calls_per_s = (inputs.len() * rewards.len()) as f64 / plugin_time.as_secs_f64().max(1e-9);
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "summary": {
                    "completions": inputs.len(),
                    "total_mean": mean(&totals),
                    "rewards": per_reward.iter().map(|(n, m, c)| serde_json::json!({"plugin": n, "mean": m, "scored": c})).collect::<Vec<_>>(),
                    "failed": failures,
                    "plugin_seconds": plugin_time.as_secs_f64(),
                }
            })
        );
    } else {
        println!("---");
        for (n, m, c) in &per_reward {
            println!("{n:<28} mean {m:.3} over {c} scored");
        }
        println!(
            "{:<28} mean {:.3} over {} completions",
            "total (weighted)",
            mean(&totals),
            inputs.len()
        );
        println!(
            "plugin time {:.1} ms ({calls_per_s:.0} completion-scores/s)",
            plugin_time.as_secs_f64() * 1e3
        );
        for (n, c) in &failures {
            println!("{n}: failed on {c} completions (skipped)");
        }
    }
    Ok(())
}
