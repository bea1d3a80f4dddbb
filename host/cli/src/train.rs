//! `galley train -c config.yaml [key=value ...]`: supervised fine-tuning (full, LoRA, QLoRA),
//! pre-training, DPO and GRPO through galley-train, with a progress bar (loss or reward,
//! tokens/s, ETA) and a short summary. Data-loader and reward plugins named in the config are
//! opened here, in the sandbox, and handed to the trainer as plain `DataSource`s and
//! `RewardFn`s: the trainer never knows a plugin from a built-in.

use crate::call::SandboxArgs;
use crate::plugins::{open_rewards, open_source};
use anyhow::{Context, Result};
use galley_core::DataSource;
use galley_registry::PluginLocator;
use galley_runtime::Grants;
use galley_train::{EvalMetrics, Observer, Sources, StepMetrics, TrainConfig};
use std::path::{Path, PathBuf};

#[derive(clap::Args)]
pub struct TrainArgs {
    /// The training config (YAML: model, data, training, peft).
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Overrides, `training.max_steps=20 peft.r=16`.
    #[arg(value_name = "KEY=VALUE")]
    overrides: Vec<String>,
    /// Continue from the newest complete checkpoint in the output folder.
    #[arg(long)]
    resume: bool,
    /// Print the outcome as JSON (no progress bar).
    #[arg(long)]
    json: bool,
    /// Read and tokenize the data, write OUTPUT_DIR/tokenized.jsonl (token ids and loss mask
    /// per example) and stop before training.
    #[arg(long)]
    tokenize_only: bool,
    #[command(flatten)]
    sandbox: SandboxArgs,
}

pub(crate) struct Bar {
    pub(crate) bar: Option<indicatif::ProgressBar>,
    last_eval: Option<String>,
}

impl Bar {
    /// A steps bar (none when `quiet`).
    pub(crate) fn new(quiet: bool) -> Self {
        let bar = (!quiet).then(|| {
            let b = indicatif::ProgressBar::new(0);
            b.set_style(
                indicatif::ProgressStyle::with_template(
                    "{bar:30} {pos}/{len} steps [{elapsed_precise} < {eta_precise}] {msg}",
                )
                .expect("template"),
            );
            b
        });
        Self {
            bar,
            last_eval: None,
        }
    }
}

impl Observer for Bar {
    fn start(&mut self, done: usize, total: usize) {
        if let Some(b) = &self.bar {
            b.set_length(total as u64);
            b.set_position(done as u64);
            b.reset_eta();
        }
    }
    fn step(&mut self, m: &StepMetrics) {
        if let Some(b) = &self.bar {
            let eval = self.last_eval.as_deref().unwrap_or_default();
            let head = match m.extra.get("reward") {
                // GRPO: the reward is what moves; its loss hovers near zero by construction.
                Some(r) => format!("reward {r:.3}"),
                None => format!("loss {:.4}", m.loss),
            };
            b.set_message(format!(
                "{head}{eval} lr {:.2e} {:.0} tok/s",
                m.lr, m.tokens_per_s
            ));
            b.set_position(m.step as u64);
        }
    }
    fn eval(&mut self, m: &EvalMetrics) {
        self.last_eval = match (m.eval_loss, m.extra.get("eval_reward")) {
            (Some(l), _) => Some(format!(" eval {l:.4}")),
            (None, Some(r)) => Some(format!(" eval reward {r:.3}")),
            (None, None) => None,
        };
    }
    fn checkpoint(&mut self, path: &Path) {
        tracing::info!("checkpoint {}", path.display());
    }
}

pub fn run(args: TrainArgs) -> Result<()> {
    let cfg = TrainConfig::load(args.config.as_deref(), &args.overrides)?;
    galley_train::keep_freed_memory();
    if let Some(n) = cfg.training.threads {
        rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global()
            .context("training.threads: cannot size the thread pool")?;
    }
    let locator = PluginLocator::for_file(args.config.as_deref());
    let needs_runtime = cfg.data.train.plugin.is_some()
        || cfg.data.mixture.iter().any(|m| m.plugin.is_some())
        || cfg
            .data
            .validation
            .as_ref()
            .is_some_and(|v| v.plugin.is_some())
        || cfg.grpo.rewards.iter().any(|r| r.plugin.is_some());
    let runtime = if needs_runtime {
        Some(args.sandbox.runtime()?)
    } else {
        None
    };
    let mut train_src = None;
    let mut val_src = None;
    let mut mixture = Vec::new();
    let at = crate::plugins::Opener {
        locator: &locator,
        sandbox: &args.sandbox,
    };
    if let Some(rt) = &runtime {
        train_src = open_source(
            &cfg.data.train,
            "data.train",
            &at,
            rt,
            &mut crate::plugins::no_record,
        )?;
        if let Some(v) = &cfg.data.validation {
            val_src = open_source(
                v,
                "data.validation",
                &at,
                rt,
                &mut crate::plugins::no_record,
            )?;
        }
        for (i, m) in cfg.data.mixture.iter().enumerate() {
            let key = format!("data.mixture[{i}]");
            mixture.push(open_source(
                m,
                &key,
                &at,
                rt,
                &mut crate::plugins::no_record,
            )?);
        }
    }
    let rewards = if cfg.objective() == galley_train::config::Objective::Grpo {
        open_rewards(
            &cfg.grpo.rewards,
            "grpo.rewards",
            &at,
            runtime.as_ref(),
            &Grants::default(),
            cfg.training.seed,
            &mut crate::plugins::no_record,
        )?
    } else {
        Vec::new()
    };
    let sources = Sources {
        train: train_src.as_deref_mut().map(|s| s as &mut dyn DataSource),
        validation: val_src.as_deref_mut().map(|s| s as &mut dyn DataSource),
        mixture: mixture
            .iter_mut()
            .map(|m| m.as_deref_mut().map(|s| s as &mut dyn DataSource))
            .collect(),
        rewards,
        group: galley_train::dist::join_from_env(&galley_train::digest(&cfg))
            .context("joining the data-parallel group")?,
    };
    if args.tokenize_only {
        let dir = &cfg.training.output_dir;
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let p = galley_train::prepare(&cfg, sources, dir).context("reading the data")?;
        let path = dir.join("tokenized.jsonl");
        let n = galley_train::tokenized::write(&p.data, &path)?;
        println!(
            "{n} examples tokenized ({} skipped): {}",
            p.skipped.total(),
            path.display()
        );
        return Ok(());
    }
    let mut obs = Bar::new(args.json);
    let out = galley_train::run(&cfg, sources, args.resume, &mut obs)
        .with_context(|| format!("training into {}", cfg.training.output_dir.display()))?;
    if let Some(b) = &obs.bar {
        b.finish_and_clear();
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    let s = &out.summary;
    let f = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.4}"));
    println!(
        "trained {} steps ({} examples, {} held out; {} skipped) on {} trainable parameters",
        s.steps,
        out.train_examples,
        out.val_examples,
        out.skipped.total(),
        out.trainable_params
    );
    if let Some(r) = s.resumed_from {
        println!("resumed from step {r}");
    }
    if cfg.objective() == galley_train::config::Objective::Grpo {
        // The surrogate loss of an on-policy step is ~0 by construction: the reward is the news.
        println!(
            "{}   {:.0} tokens/s",
            reward_summary(&out.out_dir.join("metrics.jsonl")),
            s.tokens_per_s
        );
    } else {
        println!(
            "loss {} -> {}   validation {} -> {}   {:.0} tokens/s",
            f(s.first_loss),
            f(s.last_loss),
            f(s.first_eval_loss),
            f(s.last_eval_loss),
            s.tokens_per_s
        );
    }
    println!("run folder  {}", out.out_dir.display());
    if let Some(a) = &out.adapter {
        println!("adapter     {}", a.display());
    }
    if let Some(m) = &out.model {
        println!(
            "model       {}  (galley infer -m {})",
            m.display(),
            m.display()
        );
    }
    println!("plot        {}", out.plot.display());
    if cfg.objective() == galley_train::config::Objective::Grpo {
        println!(
            "rewards     {}  (every completion: {})",
            out.out_dir.join("reward.png").display(),
            out.out_dir.join("completions.jsonl").display()
        );
    }
    Ok(())
}

/// GRPO's headline: the mean reward of the first and last ten steps (single steps are noisy)
/// and the held-out reward at the first and last evaluation.
fn reward_summary(metrics: &Path) -> String {
    let text = std::fs::read_to_string(metrics).unwrap_or_default();
    let rows: Vec<serde_json::Value> = text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let series = |k: &str| -> Vec<f64> { rows.iter().filter_map(|r| r.get(k)?.as_f64()).collect() };
    let mean = |xs: &[f64]| xs.iter().sum::<f64>() / xs.len().max(1) as f64;
    let r = series("reward");
    let w = r.len().min(10);
    let mut s = format!(
        "reward {:.3} (first {w} steps) -> {:.3} (last {w})",
        mean(&r[..w]),
        mean(&r[r.len() - w..])
    );
    let e = series("eval_reward");
    if let (Some(a), Some(b)) = (e.first(), e.last()) {
        s.push_str(&format!("   held-out reward {a:.3} -> {b:.3}"));
    }
    s
}
