//! `galley train -c config.yaml [key=value ...]`: supervised fine-tuning (full, LoRA, QLoRA)
//! and pre-training through galley-train, with a progress bar (loss, tokens/s, ETA) and a
//! short summary. Data-loader plugins named in the config are opened here, in the sandbox, and
//! handed to the trainer as plain `DataSource`s.

use crate::call::SandboxArgs;
use crate::score::resolve_plugin;
use anyhow::{Context, Result};
use galley_core::DataSource;
use galley_runtime::Grants;
use galley_train::config::SourceSection;
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
    #[command(flatten)]
    sandbox: SandboxArgs,
}

struct Bar {
    bar: Option<indicatif::ProgressBar>,
    last_eval: Option<f64>,
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
            let eval = self
                .last_eval
                .map(|e| format!(" eval {e:.4}"))
                .unwrap_or_default();
            b.set_message(format!(
                "loss {:.4}{eval} lr {:.2e} {:.0} tok/s",
                m.loss, m.lr, m.tokens_per_s
            ));
            b.set_position(m.step as u64);
        }
    }
    fn eval(&mut self, m: &EvalMetrics) {
        self.last_eval = Some(m.eval_loss);
    }
    fn checkpoint(&mut self, path: &Path) {
        tracing::info!("checkpoint {}", path.display());
    }
}

fn open_source(
    src: &SourceSection,
    base: &Path,
    sandbox: &SandboxArgs,
    runtime: &galley_runtime::Runtime,
    key: &str,
) -> Result<Option<Box<dyn DataSource>>> {
    let Some(spec) = &src.plugin else {
        return Ok(None);
    };
    let search: Vec<PathBuf> = match std::env::var("GALLEY_PLUGIN_PATH") {
        Ok(v) if !v.is_empty() => v.split(':').map(PathBuf::from).collect(),
        _ => vec![PathBuf::from("target/plugins")],
    };
    let path = resolve_plugin(spec, base, &search).with_context(|| format!("{key}.plugin"))?;
    let plugin = runtime
        .load(&path)
        .with_context(|| format!("{key}.plugin: {}", path.display()))?;
    let mut grants = Grants::default();
    for (name, dir) in &src.plugin_dirs {
        grants = grants.allow_dir(name.clone(), dir.clone());
    }
    let settings = src.plugin_config.clone().unwrap_or(serde_json::json!({}));
    let loader = plugin
        .data_loader(&settings, sandbox.options(grants))
        .with_context(|| format!("{key}.plugin ({})", plugin.id()))?;
    Ok(Some(Box::new(loader)))
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
    let base = args
        .config
        .as_deref()
        .and_then(|p| p.parent())
        .unwrap_or(Path::new("."))
        .to_path_buf();
    let needs_runtime = cfg.data.train.plugin.is_some()
        || cfg
            .data
            .validation
            .as_ref()
            .is_some_and(|v| v.plugin.is_some());
    let runtime = if needs_runtime {
        Some(args.sandbox.runtime()?)
    } else {
        None
    };
    let mut train_src = None;
    let mut val_src = None;
    if let Some(rt) = &runtime {
        train_src = open_source(&cfg.data.train, &base, &args.sandbox, rt, "data.train")?;
        if let Some(v) = &cfg.data.validation {
            val_src = open_source(v, &base, &args.sandbox, rt, "data.validation")?;
        }
    }
    let sources = Sources {
        train: train_src.as_deref_mut().map(|s| s as &mut dyn DataSource),
        validation: val_src.as_deref_mut().map(|s| s as &mut dyn DataSource),
    };
    let bar = (!args.json).then(|| {
        let b = indicatif::ProgressBar::new(0);
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "{bar:30} {pos}/{len} steps [{elapsed_precise} < {eta_precise}] {msg}",
            )
            .expect("template"),
        );
        b
    });
    let mut obs = Bar {
        bar,
        last_eval: None,
    };
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
    println!(
        "loss {} -> {}   validation {} -> {}   {:.0} tokens/s",
        f(s.first_loss),
        f(s.last_loss),
        f(s.first_eval_loss),
        f(s.last_eval_loss),
        s.tokens_per_s
    );
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
    Ok(())
}
