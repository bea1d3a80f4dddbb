//! `galley plugin call`: run one plugin by hand, the way an author tries it before a run.

use anyhow::{Context, Result, bail};
use galley_core::{
    DataSource, Decision, Evaluator, Message, Metadata, Metric, PluginKind, Prediction, Recipe,
    RewardFnExt, RewardInput, Value,
};
use galley_runtime::{Grants, InstanceOptions, Limits, Runtime, RuntimeConfig};
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(clap::Args)]
pub struct CallArgs {
    /// The component (.wasm).
    file: PathBuf,
    /// The plugin's settings, as a JSON object (`@FILE` reads it from a file).
    #[arg(long, default_value = "{}")]
    config: String,
    /// Inputs as JSON lines or a JSON array: reward inputs ({prompt: text or messages, completion, metadata}) or
    /// predictions ({prediction, references, metadata}). `-` reads stdin.
    #[arg(long)]
    input: Option<PathBuf>,
    /// Reward: one completion to score.
    #[arg(long)]
    completion: Option<String>,
    /// Reward: the user prompt the completion answers.
    #[arg(long)]
    prompt: Option<String>,
    /// Evaluator: one prediction to grade (with --reference).
    #[arg(long)]
    prediction: Option<String>,
    /// Evaluator: an acceptable answer (repeatable).
    #[arg(long)]
    reference: Vec<String>,
    /// A metadata column, KEY=VALUE (VALUE as JSON if it parses, else text). Repeatable.
    #[arg(long = "meta", value_name = "KEY=VALUE")]
    meta: Vec<String>,
    /// Grant a directory the plugin's manifest asks for, NAME=PATH (read-only). Repeatable.
    #[arg(long = "allow-dir", value_name = "NAME=PATH")]
    allow_dir: Vec<String>,
    /// Data loader: how many examples to read.
    #[arg(long, default_value_t = 5)]
    max: usize,
    /// Recipe: report these metrics (NAME=VALUE, repeatable) to `on-metrics` after planning.
    #[arg(long = "metric", value_name = "NAME=VALUE")]
    metrics: Vec<String>,
    /// Recipe: the stage the metrics come from.
    #[arg(long, default_value = "")]
    stage: String,
    #[command(flatten)]
    pub sandbox: SandboxArgs,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// Limits and seed, shared by every command that runs plugins.
#[derive(clap::Args, Clone)]
pub struct SandboxArgs {
    /// Time budget of one plugin call, in milliseconds.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub timeout_ms: u64,
    /// Memory cap of one plugin instance (all its memories together), in MiB.
    #[arg(long, default_value_t = 256,
          value_parser = clap::value_parser!(u64).range(1..=galley_train::config::MAX_MEMORY_MB))]
    pub memory_mb: u64,
    /// Seed of the plugin's randomness.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Compile every time instead of using the compiled-component cache.
    #[arg(long)]
    pub no_cache: bool,
}

impl SandboxArgs {
    pub fn runtime(&self) -> Result<Runtime> {
        let mut cfg = RuntimeConfig::default();
        if self.no_cache {
            cfg.cache_dir = None;
        }
        Ok(Runtime::new(cfg)?)
    }

    pub fn options(&self, grants: Grants) -> InstanceOptions {
        InstanceOptions {
            limits: Limits {
                call_timeout: Duration::from_millis(self.timeout_ms),
                // Saturates rather than wraps; configs are checked against MAX_MEMORY_MB.
                memory_bytes: self.memory_mb.saturating_mul(1 << 20),
                ..Limits::default()
            },
            grants,
            seed: self.seed,
            stage_kinds: galley_run::STAGE_KINDS
                .iter()
                .map(|k| k.to_string())
                .collect(),
        }
    }
}

pub fn parse_meta(items: &[String]) -> Result<Metadata> {
    let mut m = Metadata::new();
    for item in items {
        let (k, v) = item
            .split_once('=')
            .with_context(|| format!("--meta `{item}`: expected KEY=VALUE"))?;
        let value = serde_json::from_str::<serde_json::Value>(v)
            .map(Value::from)
            .unwrap_or_else(|_| Value::Text(v.to_string()));
        m.insert(k.to_string(), value);
    }
    Ok(m)
}

pub fn parse_grants(items: &[String]) -> Result<Grants> {
    let mut g = Grants::default();
    for item in items {
        let (k, v) = item
            .split_once('=')
            .with_context(|| format!("--allow-dir `{item}`: expected NAME=PATH"))?;
        g = g.allow_dir(k, v);
    }
    Ok(g)
}

/// Reads JSON lines (or one JSON array) of `T` from a file or `-` (stdin); `what` names a
/// line in errors (`bad input line`).
pub fn read_items<T: serde::de::DeserializeOwned>(path: &Path, what: &str) -> Result<Vec<T>> {
    let text = if path == Path::new("-") {
        std::io::read_to_string(std::io::stdin().lock())?
    } else {
        std::fs::read_to_string(path).with_context(|| format!("{}: cannot read", path.display()))?
    };
    Ok(galley_core::jsonl::parse(
        &text,
        &path.display().to_string(),
        what,
    )?)
}

fn parse_config(text: &str) -> Result<serde_json::Value> {
    let (text, origin) = match text.strip_prefix('@') {
        Some(path) => (
            std::fs::read_to_string(path)
                .with_context(|| format!("--config: cannot read {path}"))?,
            path.to_string(),
        ),
        None => (text.to_string(), "--config".to_string()),
    };
    let v: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{origin}: not valid JSON"))?;
    if !v.is_object() {
        bail!("{origin}: settings must be a JSON object");
    }
    Ok(v)
}

pub fn run(args: CallArgs) -> Result<()> {
    let runtime = args.sandbox.runtime()?;
    let plugin = runtime.load(&args.file)?;
    let config = parse_config(&args.config)?;
    let opts = args.sandbox.options(parse_grants(&args.allow_dir)?);
    match plugin.kind() {
        PluginKind::Reward => {
            let inputs: Vec<RewardInput> = match (&args.input, &args.completion) {
                (Some(p), _) => read_items::<RewardInput>(p, "input")?,
                (None, Some(c)) => vec![RewardInput {
                    prompt: args
                        .prompt
                        .iter()
                        .map(|p| Message::new("user", p.clone()))
                        .collect(),
                    completion: c.clone(),
                    metadata: parse_meta(&args.meta)?,
                }],
                (None, None) => bail!(
                    "{} is a reward plugin: give --completion TEXT (with --meta KEY=VALUE) or --input FILE",
                    plugin.id()
                ),
            };
            let mut reward = plugin.reward(&config, opts)?;
            let scores = reward.score_inputs(&inputs)?;
            if args.json {
                println!("{}", serde_json::to_string(&scores)?);
            } else {
                for (i, s) in scores.iter().enumerate() {
                    match s {
                        Some(v) => println!("{i}\t{v}"),
                        None => println!("{i}\tnone (no opinion)"),
                    }
                }
            }
        }
        PluginKind::DataLoader => {
            let mut loader = plugin.data_loader(&config, opts)?;
            let mut n = 0;
            while n < args.max {
                let page = loader.next_page((args.max - n).min(64))?;
                if page.is_empty() {
                    break;
                }
                n += page.len();
                for ex in page {
                    println!("{}", serde_json::to_string(&ex)?);
                }
            }
        }
        PluginKind::Evaluator => {
            let preds: Vec<Prediction> = match (&args.input, &args.prediction) {
                (Some(p), _) => read_items(p, "input")?,
                (None, Some(p)) => vec![Prediction {
                    id: "0".into(),
                    prediction: p.clone(),
                    references: args.reference.clone(),
                    metadata: parse_meta(&args.meta)?,
                }],
                (None, None) => bail!(
                    "{} is an evaluator: give --prediction TEXT --reference TEXT, or --input FILE",
                    plugin.id()
                ),
            };
            let mut eval = plugin.evaluator(&config, opts)?;
            let scores = eval.score(&preds)?;
            let summary = eval.aggregate(&scores)?;
            if args.json {
                println!(
                    "{}",
                    serde_json::json!({"scores": scores, "summary": summary})
                );
            } else {
                for (p, s) in preds.iter().zip(&scores) {
                    println!("{}\t{}", p.id, fmt_metrics(s));
                }
                println!("summary\t{}", fmt_metrics(&summary));
            }
        }
        PluginKind::Recipe => {
            let mut recipe = plugin.recipe(opts)?;
            let stages = recipe.plan(&config)?;
            if args.json {
                println!("{}", serde_json::to_string(&stages)?);
            } else {
                for s in &stages {
                    println!("{}\t{}\t{}", s.name, s.kind, s.config);
                }
            }
            if !args.metrics.is_empty() {
                let metrics = args
                    .metrics
                    .iter()
                    .map(|m| {
                        let (k, v) = m.split_once('=').context("--metric: expected NAME=VALUE")?;
                        Ok(Metric::new(
                            k,
                            v.parse::<f64>()
                                .with_context(|| format!("--metric {m}: not a number"))?,
                        ))
                    })
                    .collect::<Result<Vec<_>>>()?;
                let stage = if args.stage.is_empty() {
                    stages.first().map(|s| s.name.clone()).unwrap_or_default()
                } else {
                    args.stage.clone()
                };
                let d = recipe.on_metrics(&stage, 0, &metrics)?;
                println!(
                    "decision\t{}",
                    match d {
                        Decision::Proceed => "proceed".to_string(),
                        Decision::NextStage => "next-stage".to_string(),
                        Decision::Stop(why) => format!("stop: {why}"),
                    }
                );
            }
        }
    }
    Ok(())
}

pub fn fmt_metrics(m: &[Metric]) -> String {
    m.iter()
        .map(|m| format!("{}={:.4}", m.name, m.value))
        .collect::<Vec<_>>()
        .join(" ")
}
