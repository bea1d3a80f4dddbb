//! galley-train: the host's training engine. Supervised fine-tuning (full, LoRA, QLoRA) and
//! pre-training from scratch on the native Llama, through fused CPU kernels that keep their
//! backward passes (`ops`), in-place optimizers (`optim`), atomic checkpoints with exact resume
//! (`checkpoint`), and exports the Python ecosystem reads (`export`: PEFT adapters, HF
//! checkpoints). Data comes from files or any `DataSource`, so data-loader plugins need no
//! trainer changes. Alignment: DPO (`dpo`) and GRPO (`grpo`, with reward functions behind
//! `galley_core::RewardFn`, so a sandboxed plugin and a built-in look the same). `run` ties a
//! config to a run directory.

pub mod align;
pub mod attention;
pub mod checkpoint;
pub mod config;
pub mod cuda_src;
pub mod data;
pub mod dataset;
pub mod dist;
pub mod dpo;
pub mod error;
pub mod export;
#[cfg(feature = "cuda")]
pub mod flash_cuda;
#[cfg(feature = "cuda")]
pub mod fused_cuda;
pub mod grad;
pub mod grpo;
pub mod kto;
pub mod linear;
mod loading;
pub mod mixture;
pub mod model;
#[cfg(feature = "cuda")]
pub mod nccl;
pub mod ops;
#[cfg(feature = "cuda")]
pub mod ops_cuda;
pub mod optim;
#[cfg(feature = "cuda")]
pub mod optim_cuda;
pub mod overlap;
pub mod packing;
pub mod plot;
pub mod rewards;
pub mod score;
mod summary;
mod tcp;
#[doc(hidden)]
pub mod testing;
pub mod tokenized;
pub mod tool_turns;
pub mod trainer;

pub use config::TrainConfig;
pub use error::{Result, TrainError};
pub use loading::train_tokenizer;
use loading::{Loaded, frozen_copy, load_model};
pub use trainer::{EvalMetrics, NoObserver, Observer, StepMetrics, Summary};

use crate::config::{Objective, Tuning};
use crate::data::{Encoder, Records, Sample, Skipped};
use crate::error::file_err;
use crate::model::TrainModel;
use galley_core::{DataSource, Environment, RewardFn, Tool};
use galley_model::{ChatTemplate, Tokenizer};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// Where the examples come from: the config's files, or data sources the caller opened
/// (data-loader plugins) for the train and validation sets; and GRPO's reward functions, one
/// per `grpo.rewards` entry in order (plugins the caller opened, `rewards::builtin` for the
/// built-ins).
#[derive(Default)]
pub struct Sources<'a> {
    pub train: Option<&'a mut dyn DataSource>,
    pub validation: Option<&'a mut dyn DataSource>,
    /// One per `data.mixture` entry (none for a file), in order.
    pub mixture: Vec<Option<&'a mut dyn DataSource>>,
    pub rewards: Vec<Box<dyn RewardFn>>,
    /// GRPO's tools, one per `grpo.tools` entry in order.
    pub tools: Vec<Box<dyn Tool>>,
    /// GRPO's environments: `grpo.environment`, or each of `grpo.environments` in order.
    pub environments: Vec<Box<dyn Environment>>,
    /// The data-parallel group this process is a rank of (SFT and pre-training); None: one
    /// process, which a job of several (`WORLD_SIZE` above one) is refused as.
    pub group: Option<Box<dyn dist::Collective>>,
}

/// The training stream: `data.train` as read by `read`, or every `data.mixture` source read
/// by it and drawn into one (`mixture`).
fn read_train<T: Clone>(
    cfg: &TrainConfig,
    train: Option<&mut dyn DataSource>,
    mixture: Vec<Option<&mut dyn DataSource>>,
    mut read: impl FnMut(&config::SourceSection, Option<&mut dyn DataSource>, &str) -> Result<Vec<T>>,
) -> Result<Vec<T>> {
    if cfg.data.mixture.is_empty() {
        return read(&cfg.data.train, train, "data.train");
    }
    let mut plugins = mixture.into_iter();
    let mut sets = Vec::new();
    for (i, m) in cfg.data.mixture.iter().enumerate() {
        let key = format!("data.mixture[{i}]");
        let set = read(m, plugins.next().flatten(), &key)?;
        if set.is_empty() {
            return Err(TrainError::Config {
                file: key,
                msg: "has no examples".into(),
            });
        }
        sets.push(set);
    }
    let weights: Vec<f64> = cfg
        .data
        .mixture
        .iter()
        .map(|m| m.weight.unwrap_or(1.0))
        .collect();
    Ok(mixture::interleave(
        sets,
        &weights,
        cfg.data_seed(),
        cfg.data.mixture_stopping,
    ))
}

/// Records of one kind as a list (a mixture needs every source in the same shape).
#[derive(Clone)]
enum Row {
    Item(dataset::Record),
    Text(String),
}

fn rows(r: Records) -> Vec<Row> {
    match r {
        Records::Items(c) => c.into_iter().map(Row::Item).collect(),
        Records::Text(t) => t.into_iter().map(Row::Text).collect(),
    }
}

fn records(rows: Vec<Row>) -> Result<Records> {
    let items = rows.iter().filter(|r| matches!(r, Row::Item(..))).count();
    if items != 0 && items != rows.len() {
        return Err(TrainError::Config {
            file: "data.mixture".into(),
            msg: "mixes plain text with dataset records; mix sources of one kind".into(),
        });
    }
    Ok(if items == 0 && !rows.is_empty() {
        Records::Text(
            rows.into_iter()
                .filter_map(|r| match r {
                    Row::Text(t) => Some(t),
                    Row::Item(..) => None,
                })
                .collect(),
        )
    } else {
        Records::Items(
            rows.into_iter()
                .filter_map(|r| match r {
                    Row::Item(i) => Some(i),
                    Row::Text(_) => None,
                })
                .collect(),
        )
    })
}

/// A run's examples, in the shape its objective trains on.
pub enum Data {
    /// Token sequences with their loss masks (pre-training, SFT).
    Lm {
        train: Vec<Sample>,
        val: Vec<Sample>,
    },
    /// Preference pairs (DPO).
    Pairs {
        train: Vec<dpo::Pair>,
        val: Vec<dpo::Pair>,
    },
    /// Prompts to sample completions for (GRPO).
    Prompts {
        train: Vec<grpo::Prompt>,
        val: Vec<grpo::Prompt>,
    },
    /// Unpaired desirable / undesirable completions (KTO).
    Unpaired {
        train: Vec<kto::KtoExample>,
        val: Vec<kto::KtoExample>,
    },
}

impl Data {
    /// Training and held-out example counts.
    pub fn lens(&self) -> (usize, usize) {
        match self {
            Data::Lm { train, val } => (train.len(), val.len()),
            Data::Pairs { train, val } => (train.len(), val.len()),
            Data::Prompts { train, val } => (train.len(), val.len()),
            Data::Unpaired { train, val } => (train.len(), val.len()),
        }
    }

    /// The token sequences of a pre-training or SFT run (empty otherwise).
    pub fn samples(&self) -> (&[Sample], &[Sample]) {
        match self {
            Data::Lm { train, val } => (train, val),
            _ => (&[], &[]),
        }
    }
}

/// Everything a run needs, loaded and checked before the first step.
pub struct Prepared {
    pub model: TrainModel,
    pub tokenizer: Tokenizer,
    pub template: Option<ChatTemplate>,
    pub data: Data,
    pub skipped: Skipped,
    pub base: String,
    /// Where the base keeps its language model (names PEFT's keys follow).
    pub layout: galley_model::TextLayout,
}

/// What a finished run wrote.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Outcome {
    pub summary: Summary,
    pub out_dir: PathBuf,
    pub adapter: Option<PathBuf>,
    pub model: Option<PathBuf>,
    pub plot: PathBuf,
    pub skipped: Skipped,
    pub train_examples: usize,
    pub val_examples: usize,
    pub trainable_params: usize,
    pub frozen_bytes: usize,
    /// The process's peak resident memory (VmHWM) at the end of the run, in MiB.
    pub peak_rss_mb: f64,
}

/// Peak resident memory of this process in MiB (0 where /proc is not available).
pub fn peak_rss_mb() -> f64 {
    galley_core::peak_rss_mib().unwrap_or(0.0)
}

/// The identity of a training run: a digest of the settings that change its trajectory
/// (resume checks it; the ranks of a data-parallel job must share it).
pub fn digest(cfg: &TrainConfig) -> String {
    // Settings that change the trajectory; logging and limits may differ on resume, and so
    // may the device and precision (checkpoints are f32 and device-independent: a run
    // trained on a GPU resumes on the CPU and the reverse).
    let mut c = cfg.clone();
    c.training.device = String::new();
    c.training.precision = config::Precision::Auto;
    c.training.max_steps = None;
    c.training.save_steps = 0;
    c.training.save_total_limit = 0;
    c.training.logging_steps = 0;
    c.training.threads = None;
    c.training.save_merged = false;
    let v = serde_json::to_vec(&c).expect("config serializes");
    hex::encode(&Sha256::digest(&v)[..8])
}

fn read_records(
    cfg: &TrainConfig,
    src: &config::SourceSection,
    plugin: Option<&mut dyn DataSource>,
    skipped: &mut Skipped,
) -> Result<Records> {
    match (plugin, &src.path) {
        (Some(p), _) => data::read_source(p, src.limit),
        (None, Some(path)) => {
            if !path.exists() {
                return Err(file_err(path, "no such data file"));
            }
            data::read_file(src, path, cfg.data.on_bad_example, skipped)
        }
        (None, None) => Err(TrainError::Config {
            file: "data".into(),
            msg: format!(
                "source {:?} names no file, and no plugin was opened for it",
                src.plugin
            ),
        }),
    }
}

/// A run's records as read, before tokenizing, per objective.
enum Raw {
    Lm(Records, Option<Records>),
    Pairs(Records, Option<Records>),
    Prompts(Records, Option<Records>),
    Unpaired(Records, Option<Records>),
}

/// Reads DPO's or KTO's preference data from the train and validation files.
fn read_pairs(cfg: &TrainConfig, skipped: &mut Skipped) -> Result<Raw> {
    let kto = cfg.objective() == Objective::Kto;
    let mut read = |src: &config::SourceSection, key: &str| {
        if src.path.is_none() {
            return Err(TrainError::Config {
                file: key.into(),
                msg: "preference data is read from a file (`path`)".into(),
            });
        }
        read_records(cfg, src, None, skipped)
    };
    let train = read_train(cfg, None, Vec::new(), |src, _, key| {
        read(src, key).map(rows)
    })?;
    let val = match &cfg.data.validation {
        Some(v) => Some(read(v, "data.validation")?),
        None => None,
    };
    let train = records(train)?;
    Ok(if kto {
        Raw::Unpaired(train, val)
    } else {
        Raw::Pairs(train, val)
    })
}

/// Reads GRPO's prompts: a dataset file, or a data-loader plugin's examples.
fn read_prompts(cfg: &TrainConfig, sources: Sources, skipped: &mut Skipped) -> Result<Raw> {
    let train = read_train(cfg, sources.train, sources.mixture, |src, p, _| {
        read_records(cfg, src, p, skipped).map(rows)
    })?;
    let val = match (&cfg.data.validation, sources.validation) {
        (Some(v), p) => Some(read_records(cfg, v, p, skipped)?),
        (None, _) => None,
    };
    Ok(Raw::Prompts(records(train)?, val))
}

/// Reads pre-training text or SFT conversations, from files or data-loader plugins.
fn read_lm(cfg: &TrainConfig, sources: Sources, skipped: &mut Skipped) -> Result<Raw> {
    let train = read_train(cfg, sources.train, sources.mixture, |src, p, _| {
        read_records(cfg, src, p, skipped).map(rows)
    })?;
    let val = match (&cfg.data.validation, sources.validation) {
        (Some(v), p) => Some(read_records(cfg, v, p, skipped)?),
        (None, _) => None,
    };
    Ok(Raw::Lm(records(train)?, val))
}

/// `offered`: the run's tools and environments, shown to the GRPO prompts.
fn encode(
    cfg: &TrainConfig,
    m: &Loaded,
    raw: Raw,
    offered: &tool_turns::Offer,
    skipped: &mut Skipped,
) -> Result<Data> {
    let (split, seed) = (cfg.data.validation_split, cfg.data_seed());
    let enc = Encoder {
        tokenizer: &m.tokenizer,
        template: m.template.as_ref(),
        cfg: &cfg.data,
    };
    // Preference data: each side is an example whose loss is its final (the answer's) turn.
    let pair_data = config::DataSection {
        loss_on: config::LossOn::LastAssistant,
        ..cfg.data.clone()
    };
    let pair_enc = Encoder {
        cfg: &pair_data,
        ..enc
    };
    let items = |r: Records| match r {
        Records::Items(i) => Ok(i),
        Records::Text(_) => Err(TrainError::Config {
            file: "data.train".into(),
            msg: "preference training reads dataset records, not plain text".into(),
        }),
    };
    Ok(match raw {
        Raw::Lm(t, v) => {
            let mut train = enc.encode(t, skipped)?;
            let mut val = match v {
                Some(r) => enc.encode(r, skipped)?,
                None => Vec::new(),
            };
            if cfg.data.packing {
                train = data::pack(&train, cfg.data.max_length);
                val = data::pack(&val, cfg.data.max_length);
            }
            if cfg.data.validation.is_none() {
                (train, val) = data::split(train, split, seed);
            }
            Data::Lm { train, val }
        }
        Raw::Unpaired(t, v) => {
            let (train, val) = sides(t, v, split, seed, |r| {
                kto::encode(&pair_enc, items(r)?, skipped)
            })?;
            Data::Unpaired { train, val }
        }
        Raw::Pairs(t, v) => {
            let (train, val) = sides(t, v, split, seed, |r| {
                dpo::encode_pairs(&pair_enc, items(r)?, skipped)
            })?;
            Data::Pairs { train, val }
        }
        Raw::Prompts(t, v) => {
            let max_c = cfg.grpo.max_completion_length;
            let (tok, tpl) = (&m.tokenizer, m.template.as_ref());
            let (train, val) = sides(t, v, split, seed, |r| {
                grpo::encode_prompts(tok, tpl, r, &cfg.data, max_c, offered, skipped)
            })?;
            Data::Prompts { train, val }
        }
    })
}

/// The training set and the validation set: the validation file's, or `split` of the
/// training set held out after a seeded shuffle.
fn sides<T>(
    train: Records,
    val: Option<Records>,
    split: f64,
    seed: u64,
    mut f: impl FnMut(Records) -> Result<Vec<T>>,
) -> Result<(Vec<T>, Vec<T>)> {
    let train = f(train)?;
    Ok(match val {
        Some(v) => (train, f(v)?),
        None => data::split(train, split, seed),
    })
}

/// Loads the model, tokenizer and data a config names: read the records the objective
/// trains on, load (or initialise) the model, tokenize.
pub fn prepare(cfg: &TrainConfig, sources: Sources, out_dir: &Path) -> Result<Prepared> {
    prepare_offering(cfg, sources, &tool_turns::Offer::default(), out_dir)
}

/// [`prepare`], with `offered` (the run's tools, and its environments' functions, as
/// OpenAI's `tools` list) shown to the GRPO prompts.
pub fn prepare_offering(
    cfg: &TrainConfig,
    sources: Sources,
    offered: &tool_turns::Offer,
    out_dir: &Path,
) -> Result<Prepared> {
    // One GPU per local rank when the config says plain `cuda` (torchrun's convention).
    let spec = dist::Placement::from_env()?
        .device(&cfg.training.device, galley_model::cuda_device_count());
    let dev = galley_model::device(&spec)?;
    // The trainer issues all GPU work from this one thread.
    #[cfg(feature = "cuda")]
    galley_model::cuda::single_stream(&dev);
    let compute = match (cfg.training.precision, dev.is_cpu()) {
        (config::Precision::Bf16, true) => {
            return Err(TrainError::Config {
                file: "training.precision".into(),
                msg: "`bf16` needs a GPU (`training.device: cuda`): the CPU kernels compute in f32"
                    .into(),
            });
        }
        (config::Precision::Auto | config::Precision::Bf16, false) => candle_core::DType::BF16,
        _ => candle_core::DType::F32,
    };
    let mut skipped = Skipped::default();
    let raw = match cfg.objective() {
        Objective::Dpo | Objective::Kto => read_pairs(cfg, &mut skipped)?,
        Objective::Grpo => read_prompts(cfg, sources, &mut skipped)?,
        Objective::Pretrain | Objective::Sft => read_lm(cfg, sources, &mut skipped)?,
    };
    let text = match &raw {
        Raw::Lm(t, _) => Some(t),
        _ => None,
    };
    let mut loaded = load_model(cfg, &dev, text, out_dir)?;
    loaded.model.compute = compute;
    let data = encode(cfg, &loaded, raw, offered, &mut skipped)?;
    if let Some(line) = skipped.summary() {
        tracing::warn!("{line}");
    }
    Ok(Prepared {
        model: loaded.model,
        tokenizer: loaded.tokenizer,
        template: loaded.template,
        data,
        skipped,
        base: loaded.base,
        layout: loaded.layout,
    })
}

/// Trains as `cfg` says, writing the run directory; `resume` continues from its newest
/// complete checkpoint.
pub fn run(
    cfg: &TrainConfig,
    mut sources: Sources,
    resume: bool,
    obs: &mut dyn Observer,
) -> Result<Outcome> {
    let out = cfg.training.output_dir.clone();
    let group = sources.group.take();
    let (rank, world) = group
        .as_ref()
        .map_or((0, 1), |g| (g.rank(), g.world_size()));
    if group.is_none() {
        dist::Placement::from_env()?.require_single("without a data-parallel group, training")?;
    }
    if world > 1 && !matches!(cfg.objective(), Objective::Sft | Objective::Pretrain) {
        return Err(TrainError::Config {
            file: "training.method".into(),
            msg: format!(
                "data-parallel training (rank {rank} of {world}) runs SFT and pre-training in this version; {:?} runs in one process",
                cfg.objective()
            ),
        });
    }
    // Rank 0 writes the run folder; the other ranks only compute.
    let lead = rank == 0;
    std::fs::create_dir_all(&out).map_err(|e| file_err(&out, e))?;
    let resolved = out.join("config.yaml");
    if lead {
        std::fs::write(
            &resolved,
            galley_core::config::yaml::to_string(cfg).expect("config serializes"),
        )
        .map_err(|e| file_err(&resolved, e))?;
    }
    let grpo = cfg.objective() == Objective::Grpo;
    if grpo && sources.rewards.len() != cfg.grpo.rewards.len() {
        return Err(TrainError::Config {
            file: "grpo.rewards".into(),
            msg: format!(
                "{} reward functions listed but {} opened",
                cfg.grpo.rewards.len(),
                sources.rewards.len()
            ),
        });
    }
    let rewards = std::mem::take(&mut sources.rewards);
    if grpo && sources.tools.len() != cfg.grpo.tools.len() {
        return Err(TrainError::Config {
            file: "grpo.tools".into(),
            msg: format!(
                "{} tools listed but {} opened",
                cfg.grpo.tools.len(),
                sources.tools.len()
            ),
        });
    }
    let specs = cfg.grpo.environment_specs();
    if grpo && sources.environments.len() != specs.len() {
        return Err(TrainError::Config {
            file: "grpo.environments".into(),
            msg: format!(
                "{} environments listed but {} opened",
                specs.len(),
                sources.environments.len()
            ),
        });
    }
    let envs = std::mem::take(&mut sources.environments);
    let toolbox = match (std::mem::take(&mut sources.tools), envs) {
        (t, envs) if grpo && (!t.is_empty() || !envs.is_empty()) => {
            let mut tb = tool_turns::ToolBox::new(t, cfg.grpo.max_tool_calling_iterations)?;
            for ((name, _, _), e) in specs.into_iter().zip(envs) {
                tb = tb.with_environment(name, e)?;
            }
            Some(tb)
        }
        _ => None,
    };
    let offered = toolbox.as_ref().map(|t| t.offer()).unwrap_or_default();
    let p = prepare_offering(cfg, sources, &offered, &out)?;
    let pad = p.tokenizer.eos.first().copied().unwrap_or(0);
    let (sft, dpo_task, grpo_task, kto_task);
    let task: &dyn trainer::Task = match &p.data {
        Data::Lm { train, val } => {
            sft = trainer::SftTask { train, val, pad };
            &sft
        }
        Data::Pairs { train, val } => {
            dpo_task = dpo_task_for(cfg, &p, train, val, pad)?;
            &dpo_task
        }
        Data::Prompts { train, val } => {
            grpo_task = grpo_task_for(cfg, &p, train, val, rewards, toolbox, pad, &out)?;
            &grpo_task
        }
        Data::Unpaired { train, val } => {
            let reference =
                if cfg.kto.reference == config::Reference::Copy || cfg.tuning() == Tuning::Full {
                    kto::Reference::Copy(Box::new(frozen_copy(cfg, &p)?))
                } else {
                    kto::Reference::AdaptersOff
                };
            kto_task = kto::KtoTask {
                train,
                val,
                reference,
                cfg: cfg.kto.clone(),
                pad,
                max_length: cfg.data.max_length,
            };
            &kto_task
        }
    };
    let trainer = trainer::Trainer {
        cfg,
        model: &p.model,
        task,
        out_dir: out.clone(),
        config_digest: digest(cfg),
        group: std::cell::RefCell::new(group),
        overlap: std::cell::RefCell::new(overlap::Overlap::new(optim::bucket_floats(
            cfg.training.ddp_bucket_cap_mb,
        ))),
    };
    let summary = trainer.run(resume, obs)?;
    let plot = out.join("loss.png");
    if lead {
        plot::plot(&out.join("metrics.jsonl"), &plot)?;
    }
    if grpo {
        plot::plot_rewards(&out.join("metrics.jsonl"), &out.join("reward.png"))?;
    }
    let (mut adapter, mut model_dir) = (None, None);
    // Every rank holds the same weights; rank 0 writes them.
    if lead && cfg.tuning() != Tuning::Full {
        let dir = out.join("adapter");
        export::save_adapter(&p.model, &cfg.peft, (&p.base, p.layout), &dir)?;
        // Trained with another template than the base's: it goes with the adapter (as TRL
        // saves the tokenizer beside it), for `galley serve --chat-template`.
        if let (Some(_), Some(t)) = (&cfg.model.chat_template, &p.template) {
            let path = dir.join("chat_template.jinja");
            std::fs::write(&path, &t.source).map_err(|e| error::file_err(&path, e))?;
        }
        adapter = Some(dir);
    }
    if lead && (cfg.tuning() == Tuning::Full || cfg.training.save_merged) {
        let dir = out.join("model");
        export::save_merged(&p.model, &p.tokenizer, p.template.as_ref(), &dir)?;
        model_dir = Some(dir);
    }
    let outcome = Outcome {
        summary,
        out_dir: out.clone(),
        adapter,
        model: model_dir,
        plot,
        skipped: p.skipped.clone(),
        train_examples: p.data.lens().0,
        val_examples: p.data.lens().1,
        trainable_params: p.model.trainable_params(),
        frozen_bytes: p.model.frozen_bytes(),
        peak_rss_mb: peak_rss_mb(),
    };
    let sp = out.join("summary.json");
    if lead {
        std::fs::write(&sp, serde_json::to_string_pretty(&outcome).expect("json"))
            .map_err(|e| file_err(&sp, e))?;
    }
    Ok(outcome)
}

/// GRPO's task: rollouts from the policy, the reward functions, the tools, and the KL
/// reference (none at beta 0, adapters off, or a frozen copy of the starting model).
#[allow(clippy::too_many_arguments)]
fn grpo_task_for<'a>(
    cfg: &TrainConfig,
    p: &'a Prepared,
    train: &'a [grpo::Prompt],
    val: &'a [grpo::Prompt],
    rewards: Vec<Box<dyn RewardFn>>,
    toolbox: Option<tool_turns::ToolBox>,
    pad: u32,
    out: &Path,
) -> Result<grpo::GrpoTask<'a>> {
    let reference = if cfg.grpo.beta == 0.0 {
        grpo::Reference::None
    } else if cfg.grpo.reference == config::Reference::Copy || cfg.tuning() == Tuning::Full {
        grpo::Reference::Copy(Box::new(frozen_copy(cfg, p)?))
    } else {
        grpo::Reference::AdaptersOff
    };
    let task = grpo::GrpoTask::new(
        train,
        val,
        cfg.grpo.clone(),
        &p.tokenizer,
        rewards,
        reference,
        cfg.training.seed,
        pad,
        out.to_path_buf(),
    )
    .reading_answers(
        p.template
            .as_ref()
            .map(galley_model::answer::AnswerReader::of_template),
    )
    .within(cfg.data.max_length);
    match (toolbox, &p.template) {
        (Some(tb), Some(t)) => task.with_tools(tb, t),
        (Some(_), None) => Err(TrainError::Config {
            file: "grpo.tools".into(),
            msg: "tools and environments need a chat template (the model's, or model.chat_template) to show their functions to the model and read its calls".into(),
        }),
        (None, _) => Ok(task),
    }
}

/// DPO's task: the reference (adapters off, or a frozen copy of the starting model) and,
/// when asked, every reference log-probability computed before the first step.
fn dpo_task_for<'a>(
    cfg: &TrainConfig,
    p: &'a Prepared,
    train: &'a [dpo::Pair],
    val: &'a [dpo::Pair],
    pad: u32,
) -> Result<dpo::DpoTask<'a>> {
    let mut reference =
        if cfg.dpo.reference == config::Reference::Copy || cfg.tuning() == Tuning::Full {
            dpo::Reference::Copy(Box::new(frozen_copy(cfg, p)?))
        } else {
            dpo::Reference::AdaptersOff
        };
    if cfg.dpo.precompute_ref_log_probs {
        let all = |set: &[dpo::Pair]| -> Result<Vec<(f64, f64)>> {
            let mut out = Vec::with_capacity(set.len());
            for chunk in set.chunks(cfg.training.batch_size) {
                let refs: Vec<&dpo::Pair> = chunk.iter().collect();
                out.extend(dpo::reference_logps(&p.model, &reference, &refs, pad)?);
            }
            Ok(out)
        };
        reference = dpo::Reference::Cached {
            train: all(train)?,
            val: all(val)?,
        };
    }
    Ok(dpo::DpoTask {
        train,
        val,
        reference,
        cfg: cfg.dpo.clone(),
        pad,
    })
}

/// Keeps memory the allocator frees in the process instead of returning it to the kernel.
/// A training step frees and reallocates the same large activations every step; with glibc's
/// defaults each one is a fresh mmap whose pages the kernel zeroes again (~10-20% of a step's
/// CPU time measured here). Process-wide, so binaries call it, not the library.
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator tunables; it is called before training threads
    // allocate, and both values are within the documented ranges.
    unsafe {
        libc::mallopt(libc::M_MMAP_MAX, 0);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
    }
}
