//! `galley eval`: benchmark tasks (built-in, or lm-evaluation-harness task files) on a model,
//! with an optional PEFT adapter over it, metrics that may be sandboxed evaluator plugins,
//! and the outputs a harness user expects: `results.json`, `samples.jsonl`, a summary table
//! (or `--json`), a progress bar with items/s. The flags and their precedence over the
//! settings file are galley-eval's (`EvalFlags`).

use anyhow::{Context, Result};
use galley_eval::flags::EvalFlags;
use galley_hosting::{Opener, Sandbox, TaskPlugins};
use galley_registry::PluginLocator;
use galley_serve::flags::EngineFlags;
use std::path::Path;
use std::time::Instant;

#[derive(clap::Args)]
pub struct EvalArgs {
    #[command(flatten)]
    flags: EvalFlags,
    #[command(flatten)]
    engine: EngineFlags,
    #[command(flatten)]
    sandbox: Sandbox,
}

pub fn run(
    EvalArgs {
        flags,
        engine,
        sandbox,
    }: EvalArgs,
) -> Result<()> {
    let cfg = flags.settings()?;
    let (tasks, groups) = cfg.select().context("--tasks")?;
    let opts = cfg.options();
    let locator = PluginLocator::for_file(flags.config.as_deref());
    let mut plugins = TaskPlugins::new(Opener::new(locator, sandbox), Default::default());
    let loaded = galley_eval::load_tasks(&tasks, &opts, &mut plugins)?;
    let spec = cfg.engine_spec(engine.spec(None), flags.model_id.clone())?;
    let open = |spec, what: &str| {
        let opened = galley_serve::engines::open(spec, Path::new(""));
        opened.with_context(|| format!("opening the {what}"))
    };
    let started = Instant::now();
    let opened = open(&spec, "engine")?;
    let model = cfg.model_record(&spec, &opened.record);
    if !spec.is_remote() {
        let path = model["path"].as_str().unwrap_or_default();
        let adapter = cfg
            .adapter
            .as_ref()
            .map(|a| format!(" + adapter {}", a.display()));
        let (adapter, secs) = (adapter.unwrap_or_default(), started.elapsed().as_secs_f64());
        eprintln!("loaded {path}{adapter} in {secs:.1} s");
    }
    let mut engine = opened.engine;
    let mut judge = match flags.judge_spec(&cfg) {
        Some(spec) => Some(
            open(
                &spec,
                &format!("judge {}", spec.model.as_deref().unwrap_or("")),
            )?
            .engine,
        ),
        None => None,
    };
    let template = "{msg:>24} [{bar:30}] {pos}/{len} requests {per_sec} eta {eta}";
    let mut bar = crate::term::Phases::new((!flags.json).then(|| crate::term::bar(0, template)));
    let run_started = Instant::now();
    let report = galley_eval::evaluate(
        engine.as_mut(),
        judge
            .as_mut()
            .map(|j| &mut **j as &mut dyn galley_core::Engine),
        &loaded,
        &groups,
        &opts,
        &mut plugins,
        &mut |task, done, total| bar.set(task, done, total),
    )?;
    bar.clear();
    let seconds = run_started.elapsed().as_secs_f64();
    let peak = galley_core::peak_rss_mib();
    let results = cfg.results_json(&report, model, seconds, peak);
    if let Some(out) = &cfg.output {
        galley_eval::settings::write_outputs(out, &results, &report)?;
    }
    if flags.json {
        println!("{}", serde_json::to_string_pretty(&results)?);
        return Ok(());
    }
    print!("{}", report.table());
    let docs: usize = report.tasks.iter().map(|t| t.n).sum();
    let rate = docs as f64 / seconds.max(1e-9);
    let peak = peak.map_or_else(|| "unknown".into(), |m| format!("{m:.0} MiB"));
    let out = cfg
        .output
        .as_ref()
        .map(|o| format!("; results in {}", o.display()));
    let out = out.unwrap_or_default();
    eprintln!(
        "{docs} documents in {seconds:.1} s ({rate:.1} documents/s), peak memory {peak}{out}"
    );
    Ok(())
}
