//! `galley eval`: benchmark tasks (built-in, or lm-evaluation-harness task files) on a model,
//! with an optional PEFT adapter over it, metrics that may be sandboxed evaluator plugins,
//! and the outputs a harness user expects: `results.json`, `samples.jsonl`, a summary table
//! (or `--json`), a progress bar with items/s.

use anyhow::{Context, Result};
use galley_eval::EvalSettings;
use galley_hosting::{Opener, Sandbox, TaskPlugins};
use galley_registry::PluginLocator;
use std::path::{Path, PathBuf};

#[derive(clap::Args)]
pub struct EvalArgs {
    /// YAML settings (model, adapter, tasks, num_fewshot, limit, output...).
    config: Option<PathBuf>,
    /// The model: a .gguf file or an HF checkpoint folder.
    #[arg(long, short)]
    model: Option<String>,
    /// A PEFT LoRA adapter folder, applied over the model in memory.
    #[arg(long)]
    adapter: Option<PathBuf>,
    /// Tasks, groups or task files, comma-separated (e.g. arc_easy,mmlu,my_task.yaml).
    #[arg(long, short, value_delimiter = ',')]
    tasks: Vec<String>,
    /// Few-shot examples per prompt, for every task (default: each task's own).
    #[arg(long)]
    num_fewshot: Option<usize>,
    /// Evaluate only the first N documents of each task.
    #[arg(long)]
    limit: Option<usize>,
    /// Folder for results.json and samples.jsonl.
    #[arg(long, short)]
    output: Option<PathBuf>,
    /// Render each prompt with the model's chat template.
    #[arg(long)]
    apply_chat_template: bool,
    /// A system prompt put before every prompt.
    #[arg(long)]
    system_prompt: Option<String>,
    /// Where built-in tasks' data is (default: GALLEY_EVAL_DATA, else galley's cache).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Folders of task files whose names --tasks may use.
    #[arg(long)]
    include_path: Vec<PathBuf>,
    /// Evaluate a model behind a server instead of loading one (see --base-url); its
    /// model id.
    #[arg(long, requires = "base_url")]
    model_id: Option<String>,
    #[command(flatten)]
    engine: crate::engine_args::EngineArgs,
    /// The judge behind a remote API (its base URL; --judge-model is then the model id).
    #[arg(long, value_name = "URL", requires = "judge_model")]
    judge_base_url: Option<String>,
    /// The judge's API: openai (any OpenAI-compatible server), anthropic, vertex.
    #[arg(long, default_value = "openai", requires = "judge_base_url")]
    judge_engine: String,
    /// The environment variable with the judge's key (default by engine).
    #[arg(long)]
    judge_api_key_env: Option<String>,
    /// The model that grades `metric: judge` (default: the evaluated model judges itself).
    #[arg(long)]
    judge_model: Option<String>,
    /// Print results as JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Override a setting (`num_fewshot=5`).
    #[arg(long = "set", short = 's', value_name = "KEY=VALUE")]
    set: Vec<String>,
    #[command(flatten)]
    sandbox: Sandbox,
}

pub fn run(args: EvalArgs) -> Result<()> {
    let mut cfg: EvalSettings =
        galley_core::config::load(args.config.as_deref(), &args.set, &|_| None)?;
    // Paths in the settings file are relative to it; those on the command line, to here.
    if let Some(base) = args.config.as_deref().and_then(Path::parent) {
        cfg.relative_to(base);
    }
    // The command line wins over the file.
    if let Some(m) = args.model {
        cfg.model = Some(m);
    }
    if args.adapter.is_some() {
        cfg.adapter = args.adapter;
    }
    if args.judge_model.is_some() {
        cfg.judge_model = args.judge_model;
    }
    if !args.tasks.is_empty() {
        cfg.tasks = args.tasks;
    }
    cfg.num_fewshot = args.num_fewshot.or(cfg.num_fewshot);
    cfg.limit = args.limit.or(cfg.limit);
    if args.output.is_some() {
        cfg.output = args.output;
    }
    cfg.apply_chat_template |= args.apply_chat_template;
    if args.system_prompt.is_some() {
        cfg.system_prompt = args.system_prompt;
    }
    if args.data_dir.is_some() {
        cfg.data_dir = args.data_dir;
    }
    cfg.include_path.extend(args.include_path);
    let (tasks, groups) = cfg.select().context("--tasks")?;
    let opts = cfg.options();
    let locator = PluginLocator::for_file(args.config.as_deref());
    let mut plugins = TaskPlugins::new(Opener::new(locator, args.sandbox), Default::default());
    let loaded = galley_eval::load_tasks(&tasks, &opts, &mut plugins)?;
    let spec = cfg.engine_spec(args.engine.spec(None), args.model_id.clone())?;
    let started = std::time::Instant::now();
    let opened = galley_serve::engines::open(&spec, Path::new("")).context("opening the engine")?;
    let mut engine = opened.engine;
    let model = cfg.model_record(&spec, &opened.record);
    if !spec.is_remote() {
        let adapter = cfg
            .adapter
            .as_ref()
            .map(|a| format!(" + adapter {}", a.display()));
        let (path, secs) = (&model["path"], started.elapsed().as_secs_f64());
        let path = path.as_str().unwrap_or_default();
        eprintln!(
            "loaded {path}{} in {secs:.1} s",
            adapter.unwrap_or_default()
        );
    }
    let bar = (!args.json && std::io::IsTerminal::is_terminal(&std::io::stderr())).then(|| {
        let b = indicatif::ProgressBar::new(0);
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "{msg:>24} [{bar:30}] {pos}/{len} requests {per_sec} eta {eta}",
            )
            .expect("a valid template")
            .progress_chars("=> "),
        );
        b
    });
    let run_started = std::time::Instant::now();
    let mut last_task = String::new();
    let mut judge: Option<Box<dyn galley_core::Engine>> = match &cfg.judge_model {
        Some(id) => {
            let judge = crate::engine_args::EngineArgs {
                engine: args
                    .judge_base_url
                    .is_some()
                    .then(|| args.judge_engine.clone()),
                base_url: args.judge_base_url.clone(),
                api_key_env: args.judge_api_key_env.clone(),
                concurrency: None,
            };
            let opened = galley_serve::engines::open(&judge.spec(Some(id.clone())), Path::new(""))
                .with_context(|| format!("opening the judge {id}"))?;
            Some(opened.engine)
        }
        None => None,
    };
    let judge_engine: Option<&mut dyn galley_core::Engine> = match judge.as_mut() {
        Some(b) => Some(&mut **b),
        None => None,
    };
    let report = galley_eval::evaluate(
        engine.as_mut(),
        judge_engine,
        &loaded,
        &groups,
        &opts,
        &mut plugins,
        &mut |task, done, total| {
            if let Some(b) = &bar {
                if task != last_task {
                    b.reset();
                    b.set_message(task.to_string());
                    b.set_length(total as u64);
                    last_task = task.to_string();
                }
                b.set_position(done as u64);
            }
        },
    )?;
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    let seconds = run_started.elapsed().as_secs_f64();
    let docs: usize = report.tasks.iter().map(|t| t.n).sum();
    let peak = galley_core::peak_rss_mib();
    let results = cfg.results_json(&report, model, seconds, peak);
    if let Some(out) = &cfg.output {
        galley_eval::settings::write_outputs(out, &results, &report)?;
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&results)?);
    } else {
        print!("{}", report.table());
        eprintln!(
            "{docs} documents in {seconds:.1} s ({:.1} documents/s), peak memory {}{}",
            docs as f64 / seconds.max(1e-9),
            peak.map(|m| format!("{m:.0} MiB"))
                .unwrap_or_else(|| "unknown".into()),
            cfg.output
                .as_ref()
                .map(|o| format!("; results in {}", o.display()))
                .unwrap_or_default()
        );
    }
    Ok(())
}
