//! `galley train -c config.yaml [key=value ...]`: supervised fine-tuning (full, LoRA, QLoRA),
//! pre-training, DPO and GRPO through galley-train, with a progress bar (loss or reward,
//! tokens/s, ETA) and a short summary. Data-loader and reward plugins named in the config are
//! opened here, in the sandbox, and handed to the trainer as plain `DataSource`s and
//! `RewardFn`s: the trainer never knows a plugin from a built-in.

use anyhow::{Context, Result};
use galley_hosting::{Opener, Sandbox, no_record, open_train};
use galley_registry::PluginLocator;
use galley_train::TrainConfig;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct TrainArgs {
    /// The training config (YAML: model, data, training, peft); also taken as the first
    /// argument (`galley train sft.yaml key=value`), as `galley run` and `galley score` take it.
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

pub fn run(mut args: TrainArgs) -> Result<()> {
    // `galley train sft.yaml`: a first argument that is no KEY=VALUE is the config.
    if args.config.is_none() && args.overrides.first().is_some_and(|a| !a.contains('=')) {
        args.config = Some(PathBuf::from(args.overrides.remove(0)));
    }
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
    let mut obs = crate::term::Steps::new(args.json);
    let out = galley_train::run(&cfg, sources, args.resume, &mut obs)
        .with_context(|| format!("training into {}", cfg.training.output_dir.display()))?;
    obs.clear();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    let grpo = cfg.objective() == galley_train::config::Objective::Grpo;
    print!("{}", out.summary_text(grpo));
    Ok(())
}
