//! `galley score CONFIG.yaml`: score a file of completions with reward functions and their
//! weights through the very policy the GRPO trainer uses (galley-train's `rewards`): one call
//! per batch of prompt groups, a failing call retried one completion at a time under `skip`,
//! "failed" kept apart from "no opinion", and no opinion left out of the weighted sum.

use anyhow::{Context, Result};
use galley_core::RewardInput;
use galley_hosting::call::{parse_grants, read_items};
use galley_hosting::{Opener, Sandbox, no_record, open_rewards};
use galley_registry::PluginLocator;
use galley_train::rewards;
use galley_train::score::{Report, ScoreConfig};
use std::path::PathBuf;

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
    sandbox: Sandbox,
}

pub fn run(args: ScoreArgs) -> Result<()> {
    let cfg = ScoreConfig::load(&args.config, &args.overrides)?;
    let locator = PluginLocator::for_file(Some(&args.config)).with_search(&cfg.plugin_path);
    let inputs: Vec<RewardInput> = read_items(&locator.base.join(&cfg.completions), "completion")?;
    let grants = parse_grants(&args.allow_dir)?;
    let seed = args.sandbox.seed;
    let at = Opener::new(locator, args.sandbox);
    let mut fns = open_rewards(&cfg.rewards, "rewards", &at, &grants, seed, &mut no_record)
        .with_context(|| args.config.display().to_string())?;
    let all = rewards::score_inputs(&mut fns, &inputs, cfg.batch_size, cfg.on_plugin_error)
        .context("stopping (on_plugin_error: stop)")?;
    let names = fns.iter().map(|f| f.name().to_string()).collect();
    let report = Report::new(names, cfg.rewards.iter().map(|r| r.weight).collect(), &all);
    if args.json {
        for line in report.json_lines() {
            println!("{line}");
        }
    } else {
        print!("{}", report.table(&inputs));
    }
    Ok(())
}
