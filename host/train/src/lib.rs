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
pub mod dpo;
pub mod error;
pub mod export;
pub mod grpo;
pub mod linear;
pub mod model;
pub mod ops;
pub mod optim;
pub mod plot;
pub mod rewards;
#[doc(hidden)]
pub mod testing;
pub mod trainer;

pub use config::TrainConfig;
pub use error::{Result, TrainError};
pub use trainer::{EvalMetrics, NoObserver, Observer, StepMetrics, Summary};

use crate::config::{Method, TokenizerSection};
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
    pub rewards: Vec<Box<dyn RewardFn>>,
}

/// Everything a run needs, loaded and checked before the first step.
pub struct Prepared {
    pub model: TrainModel,
    pub tokenizer: Tokenizer,
    pub template: Option<ChatTemplate>,
    pub train: Vec<Sample>,
    pub val: Vec<Sample>,
    /// Preference pairs (DPO).
    pub pairs: Vec<dpo::Pair>,
    pub val_pairs: Vec<dpo::Pair>,
    /// Prompts (GRPO).
    pub prompts: Vec<grpo::Prompt>,
    pub val_prompts: Vec<grpo::Prompt>,
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
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

fn digest(cfg: &TrainConfig) -> String {
    // Settings that change the trajectory; logging and limits may differ on resume.
    let mut c = cfg.clone();
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

/// Loads the model, tokenizer and data a config names.
pub fn prepare(cfg: &TrainConfig, sources: Sources, out_dir: &Path) -> Result<Prepared> {
    let grpo = cfg.training.method == Method::Grpo;
    let dev = galley_model::device(&cfg.training.device)?;
    if !dev.is_cpu() {
        // The fused kernels, gradient buffers and in-place optimizer are CPU code; the
        // reference ops would run on a GPU but nothing would update the weights there.
        return Err(TrainError::Config {
            file: "training.device".into(),
            msg: format!(
                "`{}`: training runs on the CPU in this version",
                cfg.training.device
            ),
        });
    }
    let mut skipped = Skipped::default();
    let dpo = cfg.training.method == Method::Dpo;
    let (train_recs, val_recs, pair_recs) = if dpo {
        let read = |src: &config::SourceSection, key: &str, skipped: &mut Skipped| {
            let path = src.path.as_ref().ok_or_else(|| TrainError::Config {
                file: key.into(),
                msg: "DPO reads preference pairs from a file (`path`)".into(),
            })?;
            if !path.exists() {
                return Err(file_err(path, "no such data file"));
            }
            let mut recs = dpo::read_pairs(path, cfg.data.on_bad_example, skipped)?;
            recs.truncate(src.limit.unwrap_or(usize::MAX));
            Ok(recs)
        };
        let train = read(&cfg.data.train, "data.train", &mut skipped)?;
        let val = match &cfg.data.validation {
            Some(v) => Some(read(v, "data.validation", &mut skipped)?),
            None => None,
        };
        (Records::Chats(Vec::new()), None, Some((train, val)))
    } else if grpo {
        let read = |src: &config::SourceSection,
                    plugin: Option<&mut dyn DataSource>,
                    skipped: &mut Skipped| {
            match (plugin, &src.path) {
                (None, Some(path)) if path.exists() => {
                    let mut r = grpo::read_prompts(path, cfg.data.on_bad_example, skipped)?;
                    if let (Records::Chats(c), Some(n)) = (&mut r, src.limit) {
                        c.truncate(n);
                    }
                    Ok(r)
                }
                (p, _) => read_records(cfg, src, p, skipped),
            }
        };
        let train = read(&cfg.data.train, sources.train, &mut skipped)?;
        let val = match (&cfg.data.validation, sources.validation) {
            (Some(v), p) => Some(read(v, p, &mut skipped)?),
            (None, _) => None,
        };
        (train, val, None)
    } else {
        let train = read_records(cfg, &cfg.data.train, sources.train, &mut skipped)?;
        let val = match (&cfg.data.validation, sources.validation) {
            (Some(v), p) => Some(read_records(cfg, v, p, &mut skipped)?),
            (None, _) => None,
        };
        (train, val, None)
    };
    let build = Build {
        method: cfg.tuning(),
        peft: &cfg.peft,
        seed: cfg.training.seed,
    };
    let (model, tokenizer, template, base) = match (&cfg.model.path, &cfg.model.init) {
        (Some(path), _) => {
            let ck = galley_model::open(path, LoadOptions { dequantize: false })?;
            let tokenizer = match cfg.model.tokenizer.as_ref().and_then(|t| t.path.as_ref()) {
                Some(p) => Tokenizer::from_file(p, ck.tokenizer.bos, ck.tokenizer.eos.clone())?,
                None => ck.tokenizer,
            };
            let model = TrainModel::load(&ck.weights, ck.config, &build, &dev)?;
            (model, tokenizer, ck.template, path.display().to_string())
        }
        (None, Some(init)) => {
            let tok_dir = out_dir.join("tokenizer");
            let tok_file = tok_dir.join("tokenizer.json");
            let tokenizer = match &cfg.model.tokenizer {
                Some(TokenizerSection { path: Some(p), .. }) => {
                    let t = tokenizers::Tokenizer::from_file(p).map_err(|e| file_err(p, e))?;
                    let eos = t
                        .token_to_id("<|endoftext|>")
                        .or_else(|| t.token_to_id("</s>"));
                    Tokenizer::from_inner(t, eos, eos.into_iter().collect())
                }
                // A resumed run reuses the tokenizer it trained.
                _ if tok_file.exists() => {
                    let t = tokenizers::Tokenizer::from_file(&tok_file)
                        .map_err(|e| file_err(&tok_file, e))?;
                    let eos = t.token_to_id("<|endoftext|>");
                    Tokenizer::from_inner(t, eos, eos.into_iter().collect())
                }
                Some(TokenizerSection {
                    train: Some(tt), ..
                }) => {
                    let Records::Text(docs) = &train_recs else {
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
            };
            let config = TrainModel::init_config(
                init,
                tokenizer.vocab_size(),
                tokenizer.bos,
                tokenizer.eos.clone(),
            );
            let init_dir = out_dir.join("init");
            if !init_dir.join("model.safetensors").exists() {
                let seed = galley_core::seed::derive_seed(
                    cfg.training.seed,
                    &[galley_core::seed::purpose::INIT],
                );
                let w = model::init_weights(&config, init.init_std, seed)?;
                export::save_checkpoint_dir(w, &config, &init_dir)?;
            }
            let weights = Weights::safetensors(vec![init_dir.join("model.safetensors")])?;
            let model = TrainModel::load(&weights, config, &build, &dev)?;
            (model, tokenizer, None, "scratch".to_string())
        }
        (None, None) => unreachable!("validated: a model is named"),
    };
    let enc = Encoder {
        tokenizer: &tokenizer,
        template: template.as_ref(),
        cfg: &cfg.data,
    };
    let (mut prompts, mut val_prompts) = (Vec::new(), Vec::new());
    let (mut train, mut val) = (Vec::new(), Vec::new());
    if grpo {
        let max_c = cfg.grpo.max_completion_length;
        let t = template.as_ref();
        prompts = grpo::encode_prompts(&tokenizer, t, train_recs, &cfg.data, max_c, &mut skipped)?;
        if let Some(v) = val_recs {
            val_prompts = grpo::encode_prompts(&tokenizer, t, v, &cfg.data, max_c, &mut skipped)?;
        } else {
            (prompts, val_prompts) =
                data::split(prompts, cfg.data.validation_split, cfg.data_seed());
        }
    } else {
        train = enc.encode(train_recs, &mut skipped)?;
        if let Some(r) = val_recs {
            val = enc.encode(r, &mut skipped)?;
        }
    }
    if cfg.data.packing {
        train = data::pack(&train, cfg.data.max_length);
        val = data::pack(&val, cfg.data.max_length);
    }
    if cfg.data.validation.is_none() {
        (train, val) = data::split(train, cfg.data.validation_split, cfg.data_seed());
    }
    let (mut pairs, mut val_pairs) = (Vec::new(), Vec::new());
    if let Some((t, v)) = pair_recs {
        // Each side is an SFT example whose loss is its final (the answer's) turn.
        let pair_data = config::DataSection {
            loss_on: config::LossOn::LastAssistant,
            ..cfg.data.clone()
        };
        let enc = Encoder {
            cfg: &pair_data,
            ..enc
        };
        pairs = dpo::encode_pairs(&enc, t, &mut skipped)?;
        if let Some(v) = v {
            val_pairs = dpo::encode_pairs(&enc, v, &mut skipped)?;
        } else {
            (pairs, val_pairs) = data::split(pairs, cfg.data.validation_split, cfg.data_seed());
        }
    }
    if skipped.total() > 0 {
        tracing::warn!("skipped {} examples: {:?}", skipped.total(), skipped);
    }
    Ok(Prepared {
        model,
        tokenizer,
        template,
        train,
        val,
        pairs,
        val_pairs,
        prompts,
        val_prompts,
        skipped,
        base,
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
    std::fs::create_dir_all(&out).map_err(|e| file_err(&out, e))?;
    let resolved = out.join("config.yaml");
    std::fs::write(
        &resolved,
        galley_core::config::yaml::to_string(cfg).expect("config serializes"),
    )
    .map_err(|e| file_err(&resolved, e))?;
    let grpo = cfg.training.method == Method::Grpo;
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
    let sft = trainer::SftTask {
        train: &p.train,
        val: &p.val,
        pad,
    };
    let (dpo_task, grpo_task);
    let task: &dyn trainer::Task = if cfg.training.method == Method::Dpo {
        dpo_task = dpo_task_for(cfg, &p, pad)?;
        &dpo_task
    } else if grpo {
        let reference = if cfg.grpo.beta == 0.0 {
            grpo::Reference::None
        } else if cfg.grpo.reference == config::Reference::Copy || cfg.tuning() == Method::Full {
            grpo::Reference::Copy(Box::new(frozen_copy(cfg, &p)?))
        } else {
            grpo::Reference::AdaptersOff
        };
        grpo_task = grpo::GrpoTask::new(
            &p.prompts,
            &p.val_prompts,
            cfg.grpo.clone(),
            &p.tokenizer,
            rewards,
            reference,
            cfg.training.seed,
            pad,
            out.clone(),
        );
        &grpo_task
    } else {
        &sft
    };
    let trainer = trainer::Trainer {
        cfg,
        model: &p.model,
        task,
        out_dir: out.clone(),
        config_digest: digest(cfg),
    };
    let summary = trainer.run(resume, obs)?;
    let plot = out.join("loss.png");
    plot::plot(&out.join("metrics.jsonl"), &plot)?;
    if grpo {
        plot::plot_rewards(&out.join("metrics.jsonl"), &out.join("reward.png"))?;
    }
    let (mut adapter, mut model_dir) = (None, None);
    if cfg.tuning() != Method::Full {
        let dir = out.join("adapter");
        export::save_adapter(&p.model, &cfg.peft, &p.base, &dir)?;
        adapter = Some(dir);
    }
    if cfg.tuning() == Method::Full || cfg.training.save_merged {
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
        train_examples: p.train.len() + p.pairs.len() + p.prompts.len(),
        val_examples: p.val.len() + p.val_pairs.len() + p.val_prompts.len(),
        trainable_params: p.model.trainable_params(),
        frozen_bytes: p.model.frozen_bytes(),
        peak_rss_mb: peak_rss_mb(),
    };
    let sp = out.join("summary.json");
    std::fs::write(&sp, serde_json::to_string_pretty(&outcome).expect("json"))
        .map_err(|e| file_err(&sp, e))?;
    Ok(outcome)
}

/// DPO's task: the reference (adapters off, or a frozen copy of the starting model) and,
/// when asked, every reference log-probability computed before the first step.
fn dpo_task_for<'a>(cfg: &TrainConfig, p: &'a Prepared, pad: u32) -> Result<dpo::DpoTask<'a>> {
    let mut reference =
        if cfg.dpo.reference == config::Reference::Copy || cfg.tuning() == Method::Full {
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
            train: all(&p.pairs)?,
            val: all(&p.val_pairs)?,
        };
    }
    Ok(dpo::DpoTask {
        train: &p.pairs,
        val: &p.val_pairs,
        reference,
        cfg: cfg.dpo.clone(),
        pad,
    })
}

/// A frozen copy of the starting model (an alignment reference).
fn frozen_copy(cfg: &TrainConfig, p: &Prepared) -> Result<TrainModel> {
    let path = cfg
        .model
        .path
        .as_ref()
        .expect("validated: alignment names a model");
    let ck = galley_model::open(path, LoadOptions { dequantize: false })?;
    let frozen = config::PeftSection {
        target_modules: Vec::new(),
        ..cfg.peft.clone()
    };
    let build = Build {
        method: Method::Lora,
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
