//! `galley train -c config.yaml [key=value ...]`: supervised fine-tuning (full, LoRA, QLoRA),
//! pre-training, DPO and GRPO through galley-train, with a progress bar (loss or reward,
//! tokens/s, ETA) and a short summary. Data-loader and reward plugins named in the config are
//! opened here, in the sandbox, and handed to the trainer as plain `DataSource`s and
//! `RewardFn`s: the trainer never knows a plugin from a built-in.

use anyhow::{Context, Result};
use galley_hosting::{Opener, Sandbox, no_record, open_train};
use galley_registry::PluginLocator;
use galley_train::{EvalMetrics, Observer, StepMetrics, TrainConfig};
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
    sandbox: Sandbox,
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
    let opener = Opener::new(locator, args.sandbox);
    let mut plugins = open_train(&cfg, &opener, &mut no_record)?;
    let group = galley_train::dist::join_from_env(&galley_train::digest(&cfg))
        .context("joining the data-parallel group")?;
    let sources = plugins.sources(group);
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
    let grpo = cfg.objective() == galley_train::config::Objective::Grpo;
    print!("{}", out.summary_text(grpo));
    Ok(())
}
