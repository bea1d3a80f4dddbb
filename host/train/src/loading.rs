//! Where the trained model comes from: `model.path` opened (dequantized unless QLoRA keeps
//! the blocks, `model.adapters` stacked in memory) or a new model initialised for
//! pre-training with a tokenizer trained on the data; and the frozen copies alignment uses
//! as its reference.

use crate::config::{self, TokenizerSection, TrainConfig, Tuning};
use crate::data::Records;
use crate::error::{Result, TrainError, file_err};
use crate::model::{self, Build, TrainModel};
use crate::{Prepared, export};
use galley_model::weights::Weights;
use galley_model::{ChatTemplate, LoadOptions, Tokenizer};
use std::path::Path;

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

/// The model to train, its tokenizer and chat template, and what it was loaded from.
pub(crate) struct Loaded {
    pub model: TrainModel,
    pub tokenizer: Tokenizer,
    pub template: Option<ChatTemplate>,
    pub base: String,
    /// Where the base keeps its language model (names PEFT's keys follow).
    pub layout: galley_model::TextLayout,
}

/// Opens `model.path`, or initialises a model from scratch (`model.init`), training its
/// tokenizer on `text` when asked.
pub(crate) fn load_model(
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
        let template = match &cfg.model.chat_template {
            Some(p) => Some(chat_template(p, ck.template.as_ref(), &tokenizer)?),
            None => ck.template,
        };
        return Ok(Loaded {
            model,
            tokenizer,
            template,
            base: path.display().to_string(),
            layout: ck.weights.layout(),
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
    let template = match &cfg.model.chat_template {
        Some(p) => Some(chat_template(p, None, &tokenizer)?),
        None => None,
    };
    Ok(Loaded {
        model,
        tokenizer,
        template,
        base: "scratch".to_string(),
        layout: galley_model::TextLayout::CausalLm,
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
/// The starting model's checkpoint: `model.path` with `model.adapters` applied in memory.
pub(crate) fn open_start(cfg: &TrainConfig, path: &Path) -> Result<galley_model::Checkpoint> {
    let dev = candle_core::Device::Cpu;
    let opts = LoadOptions {
        dequantize: false,
        ..Default::default()
    };
    let ck = galley_model::open_adapted(path, &cfg.model.adapters, opts, &dev)?;
    // The trainer's attention is causal: it would train another model than the one read.
    if ck.config.bidirectional {
        return Err(TrainError::File {
            path: path.to_path_buf(),
            msg: "a bidirectional model (use_bidirectional_attention: an embedding model) \
                  cannot be trained: galley trains causal language models"
                .into(),
        });
    }
    Ok(ck)
}

/// A frozen copy of the starting model (an alignment reference).
pub(crate) fn frozen_copy(cfg: &TrainConfig, p: &Prepared) -> Result<TrainModel> {
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
    let mut m = TrainModel::load(&ck.weights, ck.config, &build, &p.model.device)?;
    // The reference computes as the policy does (f32 or bf16), or the two would disagree
    // from the first step.
    m.compute = p.model.compute;
    Ok(m)
}

/// `model.chat_template`: the file's template, with the BOS and EOS texts of the model's own
/// template (or its tokenizer's) for templates that write them.
fn chat_template(path: &Path, own: Option<&ChatTemplate>, tok: &Tokenizer) -> Result<ChatTemplate> {
    let src = std::fs::read_to_string(path).map_err(|e| TrainError::File {
        path: path.into(),
        msg: format!("model.chat_template: {e}"),
    })?;
    let token = |id: Option<u32>| id.and_then(|i| tok.id_to_token(i)).unwrap_or_default();
    let (bos, eos) = match own {
        Some(t) => (t.bos_token.clone(), t.eos_token.clone()),
        None => (token(tok.bos), token(tok.eos.first().copied())),
    };
    Ok(ChatTemplate::new(
        &src,
        &path.display().to_string(),
        &bos,
        &eos,
    )?)
}
