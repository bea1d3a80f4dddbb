//! `galley run run.yaml` and `galley plan run.yaml`: recipes from the registry (or files)
//! plan the stages, galley-run merges and runs them. This file opens the plugins (the one
//! locator, the sandbox, the lockfile's pins and signers), draws progress and prints; the
//! planning, chaining, recipe decisions and the manifest are galley-run's.

use crate::call::SandboxArgs;
use crate::eval::TaskPlugins;
use crate::plugins::{load, open_rewards, open_source};
use crate::train::Bar;
use anyhow::{Context, Result, bail};
use galley_core::Recipe;
use galley_core::seed::{derive_seed, purpose};
use galley_registry::PluginLocator;
use galley_run::manifest::Manifest;
use galley_run::{
    Events, PlannedStage, PluginHost, PluginRecord, RecipePlan, RunConfig, StageRecord, Status,
    TrainPlugins,
};
use galley_runtime::{Grants, Plugin};
use galley_train::{EvalMetrics, Observer, StepMetrics, TrainConfig};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

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
    sandbox: SandboxArgs,
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
    sandbox: SandboxArgs,
}

/// Opens the plugins a run names and remembers each for the manifest.
struct CliHost {
    locator: PluginLocator,
    sandbox: SandboxArgs,
    tasks: TaskPlugins,
    limits: galley_run::config::Limits,
    seed: u64,
    records: Vec<PluginRecord>,
    /// Replay: the digest each plugin must have.
    expect: BTreeMap<String, String>,
    opened: usize,
}

impl CliHost {
    fn runtime(&mut self) -> Result<galley_runtime::Runtime> {
        if self.tasks.runtime.is_none() {
            self.tasks.runtime = Some(self.sandbox.runtime()?);
        }
        Ok(self.tasks.runtime.clone().expect("just opened"))
    }
}

/// Records a loaded plugin for the manifest (once per spec); a replay's recorded digest must
/// match before any of the plugin's code runs.
fn record(
    records: &mut Vec<PluginRecord>,
    expect: &BTreeMap<String, String>,
    locator: &PluginLocator,
    spec: &str,
    p: &Plugin,
) -> Result<()> {
    let digest = &p.info().digest;
    if let Some(want) = expect.get(spec)
        && want != digest
    {
        bail!(
            "plugin `{spec}` ({}) is {digest}, but the recorded run used {want}: refusing to replay with other bytes",
            p.id()
        );
    }
    if !records.iter().any(|r| r.spec == spec) {
        records.push(plugin_record(locator, spec, p)?);
    }
    Ok(())
}

/// What the manifest says of a plugin: its id, digest, file and — for an installed package —
/// the signer galley.lock records.
fn plugin_record(locator: &PluginLocator, spec: &str, p: &Plugin) -> Result<PluginRecord> {
    let signer = if spec.contains('/') && !spec.ends_with(".wasm") {
        galley_registry::Lockfile::load(&locator.lock)?
            .and_then(|l| l.plugins.into_iter().find(|e| e.name.to_string() == spec))
            .and_then(|e| e.key)
    } else {
        None
    };
    Ok(PluginRecord {
        spec: spec.to_string(),
        id: p.id().to_string(),
        digest: p.info().digest.clone(),
        signer,
        path: locator.locate(spec).unwrap_or_default(),
    })
}

impl PluginHost for CliHost {
    fn recipe(&mut self, spec: &str) -> Result<(Box<dyn Recipe>, PluginRecord), String> {
        let mut inner = || -> Result<(Box<dyn Recipe>, PluginRecord)> {
            let rt = self.runtime()?;
            let plugin = load(spec, "recipes", &self.locator, &rt)?;
            record(
                &mut self.records,
                &self.expect,
                &self.locator,
                spec,
                &plugin,
            )?;
            let mut sb = self.sandbox.clone();
            sb.timeout_ms = self.limits.timeout_ms;
            sb.memory_mb = self.limits.memory_mb;
            sb.seed = derive_seed(self.seed, &[purpose::PLUGIN, 1_000 + self.opened as u64]);
            self.opened += 1;
            let r = plugin
                .recipe(sb.options(Grants::default()))
                .with_context(|| plugin.id().to_string())?;
            let rec = self.records.iter().find(|r| r.spec == spec).cloned();
            Ok((Box::new(r), rec.expect("recorded above")))
        };
        inner().map_err(|e| format!("{e:#}"))
    }

    fn train_plugins(&mut self, cfg: &TrainConfig, _stage: &str) -> Result<TrainPlugins, String> {
        let mut inner = || -> Result<TrainPlugins> {
            let rt = self.runtime()?;
            let locator = &self.locator;
            let at = crate::plugins::Opener {
                locator,
                sandbox: &self.sandbox,
            };
            let (records, expect) = (&mut self.records, &self.expect);
            // Each plugin is loaded once, recorded (and checked) before it runs.
            let mut on_load = |spec: &str, p: &Plugin| record(records, expect, locator, spec, p);
            let mut out = TrainPlugins {
                train: open_source(&cfg.data.train, "data.train", &at, &rt, &mut on_load)?,
                ..Default::default()
            };
            if let Some(src) = &cfg.data.validation {
                out.validation = open_source(src, "data.validation", &at, &rt, &mut on_load)?;
            }
            for (i, src) in cfg.data.mixture.iter().enumerate() {
                let key = format!("data.mixture[{i}]");
                out.mixture
                    .push(open_source(src, &key, &at, &rt, &mut on_load)?);
            }
            if cfg.objective() == galley_train::config::Objective::Grpo {
                out.rewards = open_rewards(
                    &cfg.grpo.rewards,
                    "grpo.rewards",
                    &at,
                    Some(&rt),
                    &Grants::default(),
                    cfg.training.seed,
                    &mut on_load,
                )?;
            }
            Ok(out)
        };
        inner().map_err(|e| format!("{e:#}"))
    }

    fn eval_plugins(&mut self) -> &mut dyn galley_eval::Plugins {
        &mut self.tasks
    }

    fn records(&self) -> Vec<PluginRecord> {
        let mut out = self.records.clone();
        for (spec, p) in &self.tasks.loaded {
            if !out.iter().any(|r| &r.spec == spec)
                && let Ok(rec) = plugin_record(&self.locator, spec, p)
            {
                out.push(rec);
            }
        }
        out
    }
}

/// A run config read, its recipes opened and asked for their plans, the plan merged.
struct Planned {
    cfg: RunConfig,
    file: PathBuf,
    base: PathBuf,
    run_dir: PathBuf,
    host: CliHost,
    recipes: Vec<(String, Box<dyn Recipe>)>,
    plan: galley_run::Plan,
    seconds: f64,
}

fn plan_run(
    file: &Path,
    cfg: RunConfig,
    run_dir: Option<PathBuf>,
    sandbox: SandboxArgs,
    expect: BTreeMap<String, String>,
) -> Result<Planned> {
    let started = Instant::now();
    // `run.yaml` in the current folder has an empty parent.
    let parent = file.parent().filter(|p| !p.as_os_str().is_empty());
    let base = std::path::absolute(parent.unwrap_or(Path::new(".")))?;
    let stem = file
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "run".into());
    let run_dir = match run_dir {
        Some(d) => std::path::absolute(d)?,
        None => cfg.run_dir(&base, &stem),
    };
    let locator = PluginLocator::for_file(Some(file));
    let mut host = CliHost {
        locator: locator.clone(),
        sandbox: sandbox.clone(),
        tasks: TaskPlugins {
            locator,
            sandbox,
            runtime: None,
            loaded: Vec::new(),
            expect: expect.clone(),
        },
        limits: cfg.limits.clone(),
        seed: cfg.seed,
        records: Vec::new(),
        expect,
        opened: 0,
    };
    let mut recipes = Vec::new();
    let mut plans = Vec::new();
    for (i, r) in cfg.recipes.iter().enumerate() {
        let (mut recipe, rec) = host
            .recipe(&r.plugin)
            .map_err(anyhow::Error::msg)
            .with_context(|| format!("{}: `recipes[{i}]`", file.display()))?;
        let stages = recipe
            .plan(&r.settings)
            .with_context(|| format!("{}: `recipes[{i}]` ({})", file.display(), rec.id))?;
        plans.push(RecipePlan {
            label: rec.id.clone(),
            priority: r.priority,
            stages,
        });
        recipes.push((rec.id, recipe));
    }
    let plan = galley_run::plan::build(&cfg, &plans, &run_dir)
        .with_context(|| file.display().to_string())?;
    Ok(Planned {
        cfg,
        file: file.to_path_buf(),
        base,
        run_dir,
        host,
        recipes,
        plan,
        seconds: started.elapsed().as_secs_f64(),
    })
}

pub fn plan(args: PlanArgs) -> Result<()> {
    let cfg = RunConfig::load(&args.config, &args.set)?;
    let mut p = plan_run(&args.config, cfg, None, args.sandbox, BTreeMap::new())?;
    let mut estimates = Vec::new();
    for st in &p.plan.stages {
        let est = galley_run::plan::estimate(st, &p.base)?;
        if st.is_training() {
            // Resolve and verify the stage's plugins as the run will.
            let cfg = TrainConfig::from_value(st.settings.clone(), &st.name, &p.base)?;
            p.host
                .train_plugins(&cfg, &st.name)
                .map_err(anyhow::Error::msg)
                .with_context(|| format!("stage `{}`", st.name))?;
        }
        if st.kind == "evaluate" {
            let mut s: galley_eval::EvalSettings = serde_json::from_value(st.settings.clone())
                .with_context(|| format!("stage `{}`", st.name))?;
            s.relative_to(&p.base);
            s.select().with_context(|| format!("stage `{}`", st.name))?;
        }
        estimates.push(est);
    }
    if args.json {
        let v = serde_json::json!({
            "run_dir": p.run_dir,
            "plugins": p.host.records(),
            "stages": p.plan.stages,
            "estimates": estimates,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let labels: Vec<String> = p.recipes.iter().map(|(l, _)| l.clone()).collect();
    print!(
        "{}",
        galley_run::report::plan_text(
            &p.file,
            &p.run_dir,
            &p.host.records(),
            &labels,
            &p.plan,
            &estimates
        )
    );
    Ok(())
}

/// Progress on the terminal: a line per stage, the trainer's bar, evaluation's bar.
struct RunEvents {
    quiet: bool,
    train: Bar,
    bar: Option<indicatif::ProgressBar>,
    what: String,
}

impl Observer for RunEvents {
    fn start(&mut self, done: usize, total: usize) {
        self.train = Bar::new(self.quiet);
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
        if !self.quiet {
            eprintln!(
                "[{}/{count}] {} ({}) kept from the earlier attempt: {}",
                index + 1,
                rec.name,
                rec.kind,
                rec.status
            );
        }
    }
    fn stage_start(&mut self, index: usize, count: usize, st: &PlannedStage) {
        if !self.quiet {
            eprintln!("[{}/{count}] {} ({})", index + 1, st.name, st.kind);
        }
    }
    fn progress(&mut self, what: &str, done: usize, total: usize) {
        if self.quiet {
            return;
        }
        let b = self.bar.get_or_insert_with(|| {
            let b = indicatif::ProgressBar::new(total as u64);
            b.set_style(
                indicatif::ProgressStyle::with_template(
                    "{msg:>20} [{bar:30}] {pos}/{len} {per_sec} eta {eta}",
                )
                .expect("a valid template")
                .progress_chars("=> "),
            );
            b
        });
        if what != self.what {
            b.reset();
            b.set_length(total as u64);
            b.set_message(what.to_string());
            self.what = what.to_string();
        }
        b.set_position(done as u64);
    }
    fn stage_end(&mut self, rec: &StageRecord) {
        if let Some(b) = self.train.bar.take() {
            b.finish_and_clear();
        }
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
        self.what.clear();
        if self.quiet {
            return;
        }
        let shown: Vec<String> = galley_run::report::headline(rec)
            .into_iter()
            .map(|(k, v)| format!("{k} {v:.4}"))
            .collect();
        eprintln!(
            "      {} in {:.1} s{}{}",
            rec.status,
            rec.seconds,
            rec.steps
                .map(|s| format!(", {s} steps"))
                .unwrap_or_default(),
            if shown.is_empty() {
                String::new()
            } else {
                format!(": {}", shown.join(", "))
            }
        );
    }
    fn warn(&mut self, message: &str) {
        tracing::warn!("{message}");
    }
}

pub fn run(args: RunArgs) -> Result<()> {
    let (file, cfg, overrides, run_dir, recorded) = match &args.replay {
        Some(m) => {
            let rec = Manifest::read(m)?;
            let dir = match &args.output {
                Some(o) => o.clone(),
                None => {
                    let parent = m.parent().unwrap_or(Path::new("."));
                    let name = parent.file_name().map(|n| n.to_string_lossy().into_owned());
                    parent.with_file_name(format!("{}-replay", name.unwrap_or("run".into())))
                }
            };
            rec.check_data()?;
            fetch_recorded_plugins(&rec)?;
            (
                rec.config_file.clone(),
                rec.config.clone(),
                rec.overrides.clone(),
                Some(dir),
                Some(rec),
            )
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
    let expect = recorded
        .as_ref()
        .map(|r| {
            r.plugins
                .iter()
                .map(|p| (p.spec.clone(), p.digest.clone()))
                .collect()
        })
        .unwrap_or_default();
    let p = plan_run(&file, cfg, run_dir, args.sandbox.clone(), expect)?;
    // Check every stage's settings before the first one runs.
    for st in &p.plan.stages {
        galley_run::plan::estimate(st, &p.base)?;
    }
    let (kept, kept_data) = if args.resume {
        kept_stages(&p.run_dir, &p.cfg, &args.set, &p.plan)?
    } else {
        Default::default()
    };
    let manifest = Manifest {
        galley_version: env!("CARGO_PKG_VERSION").into(),
        galley_revision: option_env!("GALLEY_REVISION").map(String::from),
        config_file: std::path::absolute(&p.file)?,
        config: p.cfg.clone(),
        overrides,
        plan: p.plan.clone(),
        plugins: p.host.records(),
        model: None,
        data: kept_data,
        seed: p.cfg.seed,
        threads: rayon::current_num_threads(),
        stages: Vec::new(),
        status: "running".into(),
        seconds: 0.0,
        planning_seconds: p.seconds,
        bookkeeping_seconds: 0.0,
    };
    if let (Some(rec), Some(model)) = (&recorded, &recorded.as_ref().and_then(|r| r.model.clone()))
    {
        let now = galley_run::manifest::digest_path(&model.path)?;
        if now != model.digest {
            bail!(
                "{}: the model is {now}, but {} recorded {}",
                model.path.display(),
                rec.config_file.display(),
                model.digest
            );
        }
    }
    let mut host = p.host;
    let mut events = RunEvents {
        quiet: args.json,
        train: Bar::new(true),
        bar: None,
        what: String::new(),
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
        println!(
            "{} in {:.1} s; run folder {}",
            m.status,
            m.seconds,
            p.run_dir.display()
        );
        for s in &m.stages {
            for (k, path) in &s.outputs {
                println!("  {:<16} {k:<8} {}", s.name, path.display());
            }
        }
        print!("{}", galley_run::report::scores_table(&m.stages));
        let overhead = m.overhead_seconds();
        println!(
            "orchestration {:.2} s ({:.2}% of the run)",
            overhead,
            100.0 * overhead / m.seconds.max(1e-9)
        );
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
/// lock's digest); `plan_run` then checks every plugin against run.json's digest.
fn fetch_recorded_plugins(rec: &Manifest) -> Result<()> {
    let locator = PluginLocator::for_file(Some(&rec.config_file));
    let missing: Vec<&str> = rec
        .plugins
        .iter()
        .filter(|p| p.spec.contains('/') && !p.spec.ends_with(".wasm"))
        .filter(|p| locator.locate_pinned(&p.spec).is_err())
        .map(|p| p.spec.as_str())
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!(
        "replay: fetching {} as galley.lock pins them",
        missing.join(", ")
    );
    crate::install_cmd::install_project_lock()
        .context("replay: fetching the recorded run's plugins")?;
    Ok(())
}

/// What a resumed run keeps of the earlier attempt in `run_dir` (galley-run's rule).
fn kept_stages(
    run_dir: &Path,
    cfg: &RunConfig,
    overrides: &[String],
    plan: &galley_run::Plan,
) -> Result<(Vec<StageRecord>, Vec<galley_run::manifest::FileRecord>)> {
    let path = run_dir.join("run.json");
    if !path.exists() {
        eprintln!("--resume: no {} yet, starting afresh", path.display());
        return Ok(Default::default());
    }
    Ok(Manifest::read(&path)?.kept_for_resume(
        &path,
        &serde_json::to_value(cfg)?,
        overrides,
        plan,
    )?)
}
