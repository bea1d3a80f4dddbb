//! `galley run run.yaml` and `galley plan run.yaml`: recipes from the registry (or files)
//! plan the stages, galley-run merges and runs them. This file opens the plugins (the one
//! locator, the sandbox, the lockfile's pins and signers), draws progress and prints; the
//! planning, chaining, recipe decisions and the manifest are galley-run's.

use crate::term::{self, Phases, Steps};
use anyhow::{Context, Result, bail};
use galley_hosting::{RunHost, Sandbox};
use galley_run::manifest::Manifest;
use galley_run::{Events, PlannedStage, PluginHost, RunConfig, StageRecord, Status};
use galley_train::{EvalMetrics, Observer, StepMetrics};
use std::path::{Path, PathBuf};

#[derive(clap::Args)]
pub struct RunArgs {
    /// The run config (YAML: model, recipes, stages, defaults, stage overrides).
    config: Option<PathBuf>,
    /// Override a setting (`seed=7`, `stage.grpo.training.max_steps=20`).
    #[arg(long = "set", short = 's', value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// Run a recorded run again from its run.json: every plugin, the model and data checked
    /// by digest, then the metrics compared stage by stage.
    #[arg(long, conflicts_with = "config")]
    replay: Option<PathBuf>,
    /// The run folder (default: the config's `output_dir`; for a replay, the recorded
    /// folder with `-replay` appended).
    #[arg(long, short)]
    output: Option<PathBuf>,
    /// Print the manifest as JSON at the end (no progress bars).
    #[arg(long)]
    json: bool,
    /// Continue an interrupted or failed run in its folder: stages it completed are kept,
    /// the next training stage continues from its newest checkpoint (same config needed).
    #[arg(long, conflicts_with = "replay")]
    resume: bool,
    #[command(flatten)]
    sandbox: Sandbox,
}

#[derive(clap::Args)]
pub struct PlanArgs {
    /// The run config (YAML).
    config: PathBuf,
    #[arg(long = "set", short = 's', value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// Print the plan as JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    sandbox: Sandbox,
}

pub fn plan(args: PlanArgs) -> Result<()> {
    let cfg = RunConfig::load(&args.config, &args.set)?;
    let mut host = RunHost::new(&args.config, &cfg, args.sandbox, Default::default());
    let p = galley_run::plan_run(&args.config, cfg, None, &mut host)?;
    let estimates = p.verify(&mut host)?;
    if args.json {
        let v = serde_json::json!({
            "run_dir": p.run_dir,
            "plugins": host.records(),
            "stages": p.plan.stages,
            "estimates": estimates,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let labels: Vec<String> = p.recipes.iter().map(|(l, _)| l.clone()).collect();
    let (file, dir, records) = (&p.file, &p.run_dir, &host.records());
    let text = galley_run::report::plan_text(file, dir, records, &labels, &p.plan, &estimates);
    print!("{text}");
    Ok(())
}

/// Progress on the terminal: a line per stage, the trainer's bar, evaluation's bar.
struct RunEvents {
    quiet: bool,
    train: Steps,
    phases: Phases,
}

impl Observer for RunEvents {
    fn start(&mut self, done: usize, total: usize) {
        self.train = Steps::new(self.quiet);
        self.train.start(done, total);
    }
    fn step(&mut self, m: &StepMetrics) {
        self.train.step(m);
    }
    fn eval(&mut self, m: &EvalMetrics) {
        self.train.eval(m);
    }
    fn checkpoint(&mut self, path: &Path) {
        self.train.checkpoint(path);
    }
}

impl Events for RunEvents {
    fn stage_kept(&mut self, index: usize, count: usize, rec: &StageRecord) {
        let (i, name, kind, status) = (index + 1, &rec.name, &rec.kind, &rec.status);
        self.say(format!(
            "[{i}/{count}] {name} ({kind}) kept from the earlier attempt: {status}"
        ));
    }
    fn stage_start(&mut self, index: usize, count: usize, st: &PlannedStage) {
        self.say(format!("[{}/{count}] {} ({})", index + 1, st.name, st.kind));
    }
    fn progress(&mut self, what: &str, done: usize, total: usize) {
        if self.phases.bar.is_none() && !self.quiet {
            let template = "{msg:>20} [{bar:30}] {pos}/{len} {per_sec} eta {eta}";
            self.phases = Phases::new(Some(term::bar(total, template)));
        }
        self.phases.set(what, done, total);
    }
    fn stage_end(&mut self, rec: &StageRecord) {
        self.train.clear();
        self.phases.clear();
        self.say(galley_run::report::stage_line(rec));
    }
    fn warn(&mut self, message: &str) {
        tracing::warn!("{message}");
    }
}

impl RunEvents {
    fn say(&self, line: String) {
        if !self.quiet {
            eprintln!("{line}");
        }
    }
}

pub fn run(args: RunArgs) -> Result<()> {
    let (file, cfg, overrides, run_dir, recorded) = match &args.replay {
        Some(m) => {
            let rec = Manifest::read(m)?;
            let dir = galley_run::start::replay_start(&rec, m, args.output.clone())?;
            fetch_recorded_plugins(&rec)?;
            let (file, cfg) = (rec.config_file.clone(), rec.config.clone());
            (file, cfg, rec.overrides.clone(), Some(dir), Some(rec))
        }
        None => {
            let file = args
                .config
                .clone()
                .context("name a run config (galley run run.yaml), or --replay run.json")?;
            let cfg = RunConfig::load(&file, &args.set)?;
            (file, cfg, args.set.clone(), args.output.clone(), None)
        }
    };
    let threads = cfg
        .threads
        .or(recorded.as_ref().map(|r| r.threads))
        .filter(|&n| n > 0);
    if let Some(n) = threads {
        rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global()
            .context("threads: cannot size the thread pool")?;
    }
    galley_train::keep_freed_memory();
    let expect = recorded.as_ref().map(Manifest::plugin_digests);
    let mut host = RunHost::new(
        &file,
        &cfg,
        args.sandbox.clone(),
        expect.unwrap_or_default(),
    );
    let p = galley_run::plan_run(&file, cfg, run_dir, &mut host)?;
    p.estimates()?;
    p.check_evaluations(&mut host)?;
    let (kept, kept_data) = match args.resume {
        true => p.kept(&args.set)?.unwrap_or_else(|| {
            let path = p.run_dir.join("run.json");
            eprintln!("--resume: no {} yet, starting afresh", path.display());
            Default::default()
        }),
        false => Default::default(),
    };
    let revision = option_env!("GALLEY_REVISION");
    let threads = rayon::current_num_threads();
    let manifest = p.manifest(revision, overrides, host.records(), kept_data, threads)?;
    if let Some(rec) = &recorded {
        rec.check_model()?;
    }
    let mut events = RunEvents {
        quiet: args.json,
        train: Steps::new(true),
        phases: Phases::default(),
    };
    let runner = galley_run::Runner {
        cfg: &p.cfg,
        base: p.base.clone(),
        run_dir: p.run_dir.clone(),
        recipes: p.recipes,
        host: &mut host,
        events: &mut events,
        kept,
        resume: args.resume,
    };
    let outcome = runner.run(&p.plan, manifest)?;
    let m = &outcome.manifest;
    if args.json {
        println!("{}", serde_json::to_string_pretty(m)?);
    } else {
        print!("{}", galley_run::report::run_summary(m, &p.run_dir));
    }
    if let Some(rec) = &recorded {
        rec.compare_metrics(m)
            .map_err(|e| anyhow::anyhow!("replay differs: {e}"))?;
        if !args.json {
            println!(
                "replay: every stage's metrics are identical to the recorded run's ({} stages)",
                m.stages.len()
            );
        }
    }
    match &outcome.status {
        Status::Failed(e) => bail!("{e}"),
        Status::Finished | Status::Stopped(_) => Ok(()),
    }
}

/// A replay runs the same plugins: installed packages the recorded run used that are missing
/// here are fetched as galley.lock pins them (each from its own registry, checked against the
/// lock's digest); the run's host then checks every plugin against run.json's digest.
fn fetch_recorded_plugins(rec: &Manifest) -> Result<()> {
    let locator = galley_registry::PluginLocator::for_file(Some(&rec.config_file));
    let missing: Vec<&str> = rec
        .plugins
        .iter()
        .filter(|p| p.spec.contains('/') && !p.spec.ends_with(".wasm"))
        .filter(|p| locator.locate_pinned(&p.spec).is_err())
        .map(|p| p.spec.as_str())
        .collect();
    if !missing.is_empty() {
        eprintln!(
            "replay: fetching {} as galley.lock pins them",
            missing.join(", ")
        );
        galley_hosting::project::install_project_lock(crate::registries())
            .context("replay: fetching the recorded run's plugins")?;
    }
    Ok(())
}
