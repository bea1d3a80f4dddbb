//! `galley synth CONFIG.yaml [KEY=VALUE ...]`: data synthesis (galley-synth). This file
//! opens what the config names — the engine (galley-serve's one opener), the prompts' loader
//! plugin, reward and evaluator plugins (the one plugin locator, relative to the config), a
//! judge — records their digests as the output's provenance, and prints the summary.

use crate::call::SandboxArgs;
use crate::plugins::{Opener, load, open_rewards, open_source};
use anyhow::{Context, Result, anyhow};
use galley_registry::PluginLocator;
use galley_runtime::{Grants, Plugin};
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
    sandbox: SandboxArgs,
}

/// What a resumed file must share with its first run: digests, not paths or URLs (a moved
/// model or a restarted server on another port is the same engine).
fn engine_identity(record: &serde_json::Value) -> serde_json::Value {
    let mut r = record.clone();
    if let Some(o) = r.as_object_mut() {
        for k in ["path", "adapters", "base_url"] {
            o.remove(k);
        }
    }
    r
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
    let locator = PluginLocator::for_file(Some(&args.config));
    let grade = cfg.grade.clone().unwrap_or_default();
    let needs_runtime = cfg.prompts.data.plugin.is_some()
        || grade.evaluator.is_some()
        || grade.rewards.iter().any(|r| r.plugin.is_some());
    let runtime = needs_runtime.then(|| args.sandbox.runtime()).transpose()?;
    let at = Opener {
        locator: &locator,
        sandbox: &args.sandbox,
    };
    let mut plugins: Vec<serde_json::Value> = Vec::new();
    let mut record = |key: &str, p: &Plugin| -> Result<()> {
        plugins.push(serde_json::json!({"key": key, "id": p.id(), "digest": p.info().digest}));
        Ok(())
    };

    // Prompts first: a bad row fails before any model loads.
    let prompts = match &runtime {
        Some(rt) if cfg.prompts.data.plugin.is_some() => {
            let mut src = open_source(&cfg.prompts.data, "prompts.data", &at, rt, &mut |_, p| {
                record("prompts.data", p)
            })?
            .expect("a plugin is named");
            galley_synth::prompts::from_source(&cfg.prompts, src.as_mut())
        }
        _ => galley_synth::prompts::from_file(&cfg.prompts, &base),
    }
    .with_context(|| name.clone())?;

    let rewards = open_rewards(
        &grade.rewards,
        "grade.rewards",
        &at,
        runtime.as_ref(),
        &Grants::default(),
        args.sandbox.seed,
        &mut |_, p| record("grade.rewards", p),
    )
    .with_context(|| name.clone())?;
    let evaluator: Option<Box<dyn galley_core::Evaluator>> = match (&grade.evaluator, &runtime) {
        (Some(e), Some(rt)) => {
            let plugin =
                load(&e.plugin, "grade.evaluator", &locator, rt).with_context(|| name.clone())?;
            record("grade.evaluator", &plugin)?;
            let settings = e.settings.clone().unwrap_or(serde_json::json!({}));
            Some(Box::new(
                plugin
                    .evaluator(&settings, args.sandbox.options(Grants::default()))
                    .with_context(|| format!("grade.evaluator ({})", plugin.id()))?,
            ))
        }
        _ => None,
    };
    let judge_template = match grade.judge.as_ref().and_then(|j| j.template.as_ref()) {
        Some(t) => Some(
            std::fs::read_to_string(base.join(t))
                .with_context(|| format!("grade.judge.template: {}", base.join(t).display()))?,
        ),
        None => None,
    };

    let started = std::time::Instant::now();
    let opened = galley_serve::engines::open(&cfg.engine, &base)
        .with_context(|| format!("{name}: engine"))?;
    let mut engine = opened.engine;
    let mut judge_engine = match grade.judge.as_ref().and_then(|j| j.engine.as_ref()) {
        Some(spec) => Some(
            galley_serve::engines::open(spec, &base)
                .with_context(|| format!("{name}: grade.judge.engine"))?,
        ),
        None => None,
    };
    let provenance = Provenance {
        engine: engine_identity(&opened.record),
        judge: judge_engine.as_ref().map(|j| engine_identity(&j.record)),
        plugins,
    };
    let mut graders = Graders {
        rewards,
        evaluator,
        judge: match judge_engine.as_mut() {
            Some(j) => Some(j.engine.as_mut()),
            None => None,
        },
        judge_template,
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
        v["engine"] = opened.record;
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let s = &summary;
    if s.resumed > 0 {
        println!(
            "resumed: {} of {} prompts were done by an earlier run",
            s.resumed, s.prompts
        );
    }
    println!(
        "{} prompts, {} completions ({} tokens) in {secs:.1} s; {} ungraded; {} lines written{}",
        s.generated,
        s.completions,
        s.tokens,
        s.ungraded,
        s.written,
        if s.dropped > 0 {
            format!(" ({} prompts gave none)", s.dropped)
        } else {
            String::new()
        }
    );
    println!(
        "{}: {} lines (settings and digests in {})",
        s.output.display(),
        s.lines,
        galley_synth::manifest_path(&s.output).display()
    );
    Ok(())
}
