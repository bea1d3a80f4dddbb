//! `galley synth CONFIG.yaml [KEY=VALUE ...]`: data synthesis (galley-synth). This file
//! opens what the config names — the engine (galley-serve's one opener), the prompts' loader
//! plugin, reward and evaluator plugins (the one plugin locator, relative to the config), a
//! judge — records their digests as the output's provenance, and prints the summary.

use anyhow::{Context, Result, anyhow};
use galley_hosting::Sandbox;
use galley_synth::{Graders, Provenance, SynthConfig};
use std::path::{Path, PathBuf};

#[derive(clap::Args)]
pub struct SynthArgs {
    /// The synth config (YAML: engine, prompts, generation, grade, output).
    config: PathBuf,
    /// Overrides, `generation.n=8 output.format=dpo`.
    #[arg(value_name = "KEY=VALUE")]
    overrides: Vec<String>,
    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    sandbox: Sandbox,
}

pub fn run(args: SynthArgs) -> Result<()> {
    let name = args.config.display().to_string();
    let cfg: SynthConfig = galley_core::config::load(
        Some(&args.config),
        &args.overrides,
        &galley_core::config::no_expand,
    )?;
    cfg.check()
        .map_err(|(key, msg)| anyhow!("{name}: key `{key}`: {msg}"))?;
    let base = args
        .config
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let grade = cfg.grade.clone().unwrap_or_default();
    let opened = galley_hosting::synth::open(&cfg, &args.config, &args.sandbox)?;
    let prompts = opened.prompts;
    let started = std::time::Instant::now();
    let writer = galley_serve::engines::open(&cfg.engine, &base)
        .with_context(|| format!("{name}: engine"))?;
    let mut engine = writer.engine;
    let mut judge_engine = match grade.judge.as_ref().and_then(|j| j.engine.as_ref()) {
        Some(spec) => Some(
            galley_serve::engines::open(spec, &base)
                .with_context(|| format!("{name}: grade.judge.engine"))?,
        ),
        None => None,
    };
    let provenance = Provenance {
        engine: galley_synth::engine_identity(&writer.record),
        judge: judge_engine
            .as_ref()
            .map(|j| galley_synth::engine_identity(&j.record)),
        plugins: opened.plugins,
    };
    let mut graders = Graders {
        rewards: opened.rewards,
        evaluator: opened.evaluator,
        judge: match judge_engine.as_mut() {
            Some(j) => Some(j.engine.as_mut()),
            None => None,
        },
        judge_template: opened.judge_template,
    };
    let bar = (!args.json && std::io::IsTerminal::is_terminal(&std::io::stderr())).then(|| {
        let b = indicatif::ProgressBar::new(prompts.len() as u64);
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "{bar:40} {pos}/{len} prompts {per_sec} eta {eta}",
            )
            .expect("a valid template"),
        );
        b
    });
    let summary = galley_synth::synthesize(
        &cfg,
        &base,
        &prompts,
        engine.as_mut(),
        &mut graders,
        &provenance,
        &mut |done, _| {
            if let Some(b) = &bar {
                b.set_position(done as u64);
            }
        },
    )
    .with_context(|| name.clone())?;
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    let secs = started.elapsed().as_secs_f64();
    if args.json {
        let mut v = serde_json::to_value(&summary)?;
        v["seconds"] = secs.into();
        v["engine"] = writer.record;
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    print!("{}", summary.text(secs));
    Ok(())
}
