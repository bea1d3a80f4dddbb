//! galley-train: the host's training engine. Supervised fine-tuning (full, LoRA, QLoRA) and
//! pre-training from scratch on the native Llama, through fused CPU kernels that keep their
//! backward passes (`ops`), in-place optimizers (`optim`), atomic checkpoints with exact resume
//! (`checkpoint`), and exports the Python ecosystem reads (`export`: PEFT adapters, HF
//! checkpoints). Data comes from files or any `DataSource`, so data-loader plugins need no
//! trainer changes. Alignment: DPO (`dpo`) and GRPO (`grpo`, with reward functions behind
//! `galley_core::RewardFn`, so a sandboxed plugin and a built-in look the same). `run` ties a
//! config to a run directory.

pub mod align;
pub mod checkpoint;
pub mod config;
pub mod data;
pub mod dataset;
pub mod dist;
pub mod dpo;
pub mod error;
pub mod export;
pub mod grpo;
pub mod kto;
pub mod linear;
pub mod mixture;
pub mod model;
pub mod ops;
#[cfg(feature = "cuda")]
pub mod ops_cuda;
pub mod optim;
#[cfg(feature = "cuda")]
pub mod optim_cuda;
pub mod plot;
pub mod rewards;
#[doc(hidden)]
pub mod testing;
pub mod tokenized;
pub mod trainer;

pub use config::TrainConfig;
pub use error::{Result, TrainError};
pub use trainer::{EvalMetrics, NoObserver, Observer, StepMetrics, Summary};

use crate::config::{Objective, TokenizerSection, Tuning};
use crate::data::{Encoder, Records, Sample, Skipped};
use crate::error::file_err;
use crate::model::{Build, TrainModel};
use galley_core::{DataSource, RewardFn};
use galley_model::weights::Weights;
use galley_model::{ChatTemplate, LoadOptions, Tokenizer};
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

/// Trains a byte-level BPE tokenizer on `docs` (pre-training from scratch).
pub fn train_tokenizer(docs: &[String], vocab: usize, min_frequency: u64) -> Result<Tokenizer> {
    use tokenizers::AddedToken;
    use tokenizers::models::TrainerWrapper;
    use tokenizers::models::bpe::{BPE, BpeTrainerBuilder};
    use tokenizers::pre_tokenizers::byte_level::ByteLevel;
    let eos = "<|endoftext|>";
    let trainer = BpeTrainerBuilder::new()
        .vocab_size(vocab)
        .min_frequency(min_frequency)
        .show_progress(false)
        .special_tokens(vec![AddedToken::from(eos, true)])
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
        .build();
    let mut trainer = TrainerWrapper::BpeTrainer(trainer);
    let mut tok = tokenizers::Tokenizer::new(BPE::default());
    tok.with_pre_tokenizer(Some(ByteLevel::new(false, true, true)));
    tok.with_decoder(Some(ByteLevel::default()));
    let lines = docs
        .iter()
        .flat_map(|d| d.lines().map(String::from).collect::<Vec<_>>());
    tok.train(&mut trainer, lines)
        .map_err(|e| TrainError::Stopped(format!("training the tokenizer: {e}")))?;
    let id = tok.token_to_id(eos);
    Ok(Tokenizer::from_inner(tok, id, id.into_iter().collect()))
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

/// The model to train, its tokenizer and chat template, and what it was loaded from.
struct Loaded {
    model: TrainModel,
    tokenizer: Tokenizer,
    template: Option<ChatTemplate>,
    base: String,
}

/// Opens `model.path`, or initialises a model from scratch (`model.init`), training its
/// tokenizer on `text` when asked.
fn load_model(
    cfg: &TrainConfig,
    dev: &candle_core::Device,
    text: Option<&Records>,
    out_dir: &Path,
) -> Result<Loaded> {
    let build = Build {
        tuning: cfg.tuning(),
        peft: &cfg.peft,
        seed: cfg.training.seed,
    };
    if let Some(path) = &cfg.model.path {
        let ck = open_start(cfg, path)?;
        let tokenizer = match cfg.model.tokenizer.as_ref().and_then(|t| t.path.as_ref()) {
            Some(p) => Tokenizer::from_file(p, ck.tokenizer.bos, ck.tokenizer.eos.clone())?,
            None => ck.tokenizer,
        };
        let model = TrainModel::load(&ck.weights, ck.config, &build, dev)?;
        return Ok(Loaded {
            model,
            tokenizer,
            template: ck.template,
            base: path.display().to_string(),
        });
    }
    let init = cfg
        .model
        .init
        .as_ref()
        .expect("validated: a model is named");
    let tokenizer = new_model_tokenizer(cfg, text, out_dir)?;
    let config = TrainModel::init_config(
        init,
        tokenizer.vocab_size(),
        tokenizer.bos,
        tokenizer.eos.clone(),
    );
    let init_dir = out_dir.join("init");
    if !init_dir.join("model.safetensors").exists() {
        let seed =
            galley_core::seed::derive_seed(cfg.training.seed, &[galley_core::seed::purpose::INIT]);
        let w = model::init_weights(&config, init.init_std, seed)?;
        export::save_checkpoint_dir(w, &config, &init_dir)?;
    }
    let weights = Weights::safetensors(vec![init_dir.join("model.safetensors")])?;
    let model = TrainModel::load(&weights, config, &build, dev)?;
    Ok(Loaded {
        model,
        tokenizer,
        template: None,
        base: "scratch".to_string(),
    })
}

/// A new model's tokenizer: the one named, the one a resumed run trained, or one trained now
/// on the plain-text training data.
fn new_model_tokenizer(
    cfg: &TrainConfig,
    text: Option<&Records>,
    out_dir: &Path,
) -> Result<Tokenizer> {
    let tok_dir = out_dir.join("tokenizer");
    let tok_file = tok_dir.join("tokenizer.json");
    Ok(match &cfg.model.tokenizer {
        Some(TokenizerSection { path: Some(p), .. }) => {
            let t = tokenizers::Tokenizer::from_file(p).map_err(|e| file_err(p, e))?;
            let eos = t
                .token_to_id("<|endoftext|>")
                .or_else(|| t.token_to_id("</s>"));
            Tokenizer::from_inner(t, eos, eos.into_iter().collect())
        }
        // A resumed run reuses the tokenizer it trained.
        _ if tok_file.exists() => {
            let t =
                tokenizers::Tokenizer::from_file(&tok_file).map_err(|e| file_err(&tok_file, e))?;
            let eos = t.token_to_id("<|endoftext|>");
            Tokenizer::from_inner(t, eos, eos.into_iter().collect())
        }
        Some(TokenizerSection {
            train: Some(tt), ..
        }) => {
            let Some(Records::Text(docs)) = text else {
                return Err(TrainError::Config {
                    file: "model.tokenizer.train".into(),
                    msg: "training a tokenizer needs plain-text training data".into(),
                });
            };
            let t = train_tokenizer(docs, tt.vocab_size, tt.min_frequency)?;
            std::fs::create_dir_all(&tok_dir).map_err(|e| file_err(&tok_dir, e))?;
            t.inner()
                .save(&tok_file, false)
                .map_err(|e| file_err(&tok_file, e))?;
            t
        }
        _ => unreachable!("validated: a new model names or trains a tokenizer"),
    })
}

/// Tokenizes the records into the objective's examples, splitting off validation data
/// (`data.validation_split`) when no validation source is named.
fn encode(cfg: &TrainConfig, m: &Loaded, raw: Raw, skipped: &mut Skipped) -> Result<Data> {
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
                grpo::encode_prompts(tok, tpl, r, &cfg.data, max_c, skipped)
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
    let dev = galley_model::device(&cfg.training.device)?;
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
    let data = encode(cfg, &loaded, raw, &mut skipped)?;
    if skipped.total() > 0 {
        tracing::warn!("skipped {} examples: {:?}", skipped.total(), skipped);
    }
    Ok(Prepared {
        model: loaded.model,
        tokenizer: loaded.tokenizer,
        template: loaded.template,
        data,
        skipped,
        base: loaded.base,
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
    let p = prepare(cfg, sources, &out)?;
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
            grpo_task = grpo_task_for(cfg, &p, train, val, rewards, pad, &out)?;
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
        export::save_adapter(&p.model, &cfg.peft, &p.base, &dir)?;
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

/// GRPO's task: rollouts from the policy, the reward functions, and the KL reference
/// (none at beta 0, adapters off, or a frozen copy of the starting model).
fn grpo_task_for<'a>(
    cfg: &TrainConfig,
    p: &'a Prepared,
    train: &'a [grpo::Prompt],
    val: &'a [grpo::Prompt],
    rewards: Vec<Box<dyn RewardFn>>,
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
    Ok(grpo::GrpoTask::new(
        train,
        val,
        cfg.grpo.clone(),
        &p.tokenizer,
        rewards,
        reference,
        cfg.training.seed,
        pad,
        out.to_path_buf(),
    ))
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

/// The starting model's checkpoint: `model.path` with `model.adapters` applied in memory.
fn open_start(cfg: &TrainConfig, path: &Path) -> Result<galley_model::Checkpoint> {
    let mut ck = galley_model::open(path, LoadOptions { dequantize: false })?;
    for dir in &cfg.model.adapters {
        ck.weights =
            galley_model::Adapter::load(dir, &candle_core::Device::Cpu)?.apply(ck.weights)?;
    }
    Ok(ck)
}

/// A frozen copy of the starting model (an alignment reference).
fn frozen_copy(cfg: &TrainConfig, p: &Prepared) -> Result<TrainModel> {
    let path = cfg
        .model
        .path
        .as_ref()
        .expect("validated: alignment names a model");
    let ck = open_start(cfg, path)?;
    let frozen = config::PeftSection {
        target_modules: Vec::new(),
        ..cfg.peft.clone()
    };
    let build = Build {
        tuning: Tuning::Lora,
        peft: &frozen,
        seed: 0,
    };
    TrainModel::load(&ck.weights, ck.config, &build, &p.model.device)
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
