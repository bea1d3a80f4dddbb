//! From a path to a ready model: a `.gguf` file, or an HF checkpoint folder (`config.json`,
//! `model.safetensors` or a sharded `model.safetensors.index.json`, `tokenizer.json`,
//! `tokenizer_config.json` / `chat_template.jinja`). Every failure names the file at fault.

use crate::chat::ChatTemplate;
use crate::config::{Family, LlamaConfig};
use crate::error::{ModelError, Result, bad};
use crate::model::Llama;
use crate::tokenizer::Tokenizer;
use crate::weights::Weights;
use candle_core::Device;
use std::path::{Path, PathBuf};

pub struct LoadedModel {
    pub model: Llama,
    pub tokenizer: Tokenizer,
    pub template: Option<ChatTemplate>,
    pub path: PathBuf,
}

#[derive(Debug, Clone, Copy, Default)]
pub struct LoadOptions {
    /// Dequantize GGUF blocks to f32 at load: every matmul in f32.
    pub dequantize: bool,
    /// What the KV cache keeps keys and values in ([`Llama::set_kv_dtype`]); `None`: f16 on
    /// a CPU, the activations' dtype on a GPU.
    pub kv_cache: Option<KvCacheDtype>,
}

/// A KV cache's element type as configs (`kv_cache_dtype: f32`) and flags
/// (`--kv-cache-dtype f32`) name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum KvCacheDtype {
    /// Half the bytes (llama.cpp's default cache type); rounds keys and values to 11 bits.
    F16,
    /// No rounding beyond the activations' (transformers' cache on a CPU).
    F32,
}

impl KvCacheDtype {
    pub fn dtype(self) -> candle_core::DType {
        match self {
            Self::F16 => candle_core::DType::F16,
            Self::F32 => candle_core::DType::F32,
        }
    }
}

pub fn load(path: &Path, device: &Device) -> Result<LoadedModel> {
    load_with(path, device, LoadOptions::default())
}

/// A checkpoint's parts before a model is built from them: the trainer builds its own
/// (trainable) model from the same weights, tokenizer and template.
pub struct Checkpoint {
    pub weights: Weights,
    pub config: LlamaConfig,
    pub tokenizer: Tokenizer,
    pub template: Option<ChatTemplate>,
    pub path: PathBuf,
}

pub fn load_with(path: &Path, device: &Device, opts: LoadOptions) -> Result<LoadedModel> {
    load_adapted(path, None, device, opts)
}

/// [`load_with`], with a PEFT LoRA adapter applied over the base in memory when given.
pub fn load_adapted(
    path: &Path,
    adapter: Option<&Path>,
    device: &Device,
    opts: LoadOptions,
) -> Result<LoadedModel> {
    let adapters: Vec<&Path> = adapter.into_iter().collect();
    load_stacked(path, &adapters, device, opts)
}

/// [`load_with`], with PEFT LoRA adapters applied over the base in memory, in order: each
/// one trained over the base with the ones before it (a run's chained LoRA stages).
pub fn load_stacked(
    path: &Path,
    adapters: &[&Path],
    device: &Device,
    opts: LoadOptions,
) -> Result<LoadedModel> {
    let ck = open_adapted(path, adapters, opts, device)?;
    let mut model = Llama::load(&ck.weights, ck.config, device)?;
    if let Some(kv) = opts.kv_cache {
        model.set_kv_dtype(kv.dtype())?;
    }
    Ok(LoadedModel {
        model,
        tokenizer: ck.tokenizer,
        template: ck.template,
        path: ck.path,
    })
}

/// [`open`], with LoRA adapters (PEFT folders or llama.cpp adapter GGUFs) applied over the
/// weights in memory, in order.
pub fn open_adapted(
    path: &Path,
    adapters: &[impl AsRef<Path>],
    opts: LoadOptions,
    device: &Device,
) -> Result<Checkpoint> {
    let mut ck = open(path, opts)?;
    for dir in adapters {
        let adapter = crate::adapter::Adapter::load(dir.as_ref(), &ck.config, device)?;
        ck.weights = adapter.apply(ck.weights)?;
    }
    Ok(ck)
}

/// Opens a `.gguf` file or an HF checkpoint folder: weights (not yet read), config,
/// tokenizer and chat template.
pub fn open(path: &Path, opts: LoadOptions) -> Result<Checkpoint> {
    if path.is_file() {
        return load_gguf(path, opts);
    }
    if !path.is_dir() {
        return Err(bad(path, "no such model file or folder"));
    }
    if path.join("config.json").exists() {
        return load_hf(path);
    }
    let ggufs: Vec<PathBuf> = std::fs::read_dir(path)
        .map_err(|e| bad(path, e))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "gguf"))
        .collect();
    match ggufs.as_slice() {
        [one] => load_gguf(one, opts),
        [] => Err(bad(
            path,
            "not a model: expected config.json + safetensors, or a .gguf file",
        )),
        _ => Err(bad(path, "holds several .gguf files: name one")),
    }
}

fn load_gguf(path: &Path, opts: LoadOptions) -> Result<Checkpoint> {
    let mut weights = Weights::gguf(path)?;
    weights.set_dequantize(opts.dequantize);
    let md = weights
        .gguf_metadata()
        .expect("a GGUF has metadata")
        .clone();
    let tied = !weights.has("lm_head.weight");
    let mut config = LlamaConfig::from_gguf(path, &md, tied)?;
    // Biases are optional tensors to llama.cpp's Llama (an HF model with `attention_bias`
    // converts with them): present means used.
    config.qkv_bias |= weights.has("model.layers.0.self_attn.q_proj.bias");
    config.o_bias |= weights.has("model.layers.0.self_attn.o_proj.bias");
    config.mlp_bias |= weights.has("model.layers.0.mlp.gate_proj.bias");
    // llama.cpp's converter permutes SmolLM3's as Llama's.
    if matches!(config.family, Family::Llama | Family::SmolLM3) {
        weights.set_unpermute_qk(config.num_heads, config.num_kv_heads);
    }
    if config.family.is_gemma() {
        weights.set_gemma();
    }
    // Llama 3.1's rope scaling, as llama.cpp's converter writes it: a factor per frequency.
    if weights.has("rope_freqs.weight") {
        let half = config.head_dim / 2;
        let t = weights.tensor("rope_freqs.weight", &[half], &Device::Cpu)?;
        let factors: Vec<f64> = t.to_vec1::<f32>()?.into_iter().map(f64::from).collect();
        if factors.iter().any(|r| !(r.is_finite() && *r > 0.0)) {
            return Err(bad(
                path,
                "tensor `rope_freqs.weight` holds a factor that is not positive",
            ));
        }
        config.rope_scaling = crate::config::RopeScaling::Factors(factors);
    }
    let tokenizer = Tokenizer::from_gguf(path, &md)?;
    let token = |id: Option<u32>| {
        id.and_then(|i| tokenizer.id_to_token(i))
            .unwrap_or_default()
    };
    let template = match md
        .get("tokenizer.chat_template")
        .and_then(|v| v.to_string().ok())
    {
        Some(src) => Some(ChatTemplate::new(
            src,
            &format!("{}: tokenizer.chat_template", path.display()),
            &token(tokenizer.bos),
            &token(tokenizer.eos.first().copied()),
        )?),
        None => None,
    };
    Ok(Checkpoint {
        weights,
        config,
        tokenizer,
        template,
        path: path.into(),
    })
}

/// `bos_token` / `eos_token` in tokenizer_config.json: a string or `{"content": ...}`.
fn special(v: Option<&serde_json::Value>) -> Option<String> {
    match v? {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Object(o) => o.get("content").and_then(|c| c.as_str()).map(String::from),
        _ => None,
    }
}

fn load_hf(dir: &Path) -> Result<Checkpoint> {
    let config = LlamaConfig::from_hf_json(&dir.join("config.json"))?;
    let index = dir.join("model.safetensors.index.json");
    let files = if index.exists() {
        let text = std::fs::read_to_string(&index).map_err(|e| bad(&index, e))?;
        let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(&index, e))?;
        let map = v
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| bad(&index, "no `weight_map`"))?;
        let mut files: Vec<PathBuf> = map
            .values()
            .filter_map(|f| f.as_str())
            .map(|f| dir.join(f))
            .collect();
        files.sort();
        files.dedup();
        for f in &files {
            if !f.exists() {
                return Err(bad(&index, format!("shard {} is missing", f.display())));
            }
        }
        files
    } else if dir.join("model.safetensors").exists() {
        vec![dir.join("model.safetensors")]
    } else {
        return Err(bad(
            dir,
            "no model.safetensors or model.safetensors.index.json",
        ));
    };
    let mut weights = Weights::safetensors(files)?;
    if config.family.is_gemma() {
        weights.set_gemma();
    }
    let tok_path = dir.join("tokenizer.json");
    if !tok_path.exists() {
        return Err(ModelError::MissingTokenizer { path: dir.into() });
    }
    let tc_path = dir.join("tokenizer_config.json");
    let tc: serde_json::Value = match std::fs::read_to_string(&tc_path) {
        Ok(text) => serde_json::from_str(&text).map_err(|e| bad(&tc_path, e))?,
        Err(_) => serde_json::Value::Null,
    };
    let mut tokenizer =
        Tokenizer::from_file(&tok_path, config.bos_token_id, config.eos_token_ids.clone())?;
    let bos = special(tc.get("bos_token")).unwrap_or_default();
    let eos = special(tc.get("eos_token")).unwrap_or_default();
    if let Some(id) = tokenizer.token_to_id(&eos)
        && !tokenizer.eos.contains(&id)
    {
        tokenizer.eos.push(id);
    }
    let jinja = dir.join("chat_template.jinja");
    let template = if jinja.exists() {
        let src = std::fs::read_to_string(&jinja).map_err(|e| bad(&jinja, e))?;
        Some(ChatTemplate::new(
            &src,
            &jinja.display().to_string(),
            &bos,
            &eos,
        )?)
    } else {
        let src = match tc.get("chat_template") {
            Some(serde_json::Value::String(s)) => Some(s.clone()),
            // A list of named templates: the default one.
            Some(serde_json::Value::Array(list)) => list
                .iter()
                .find(|t| t.get("name").and_then(|n| n.as_str()) == Some("default"))
                .and_then(|t| t.get("template")?.as_str().map(String::from)),
            _ => None,
        };
        // A multimodal checkpoint's processor keeps it in `chat_template.json` instead.
        let processor = dir.join("chat_template.json");
        let src = match src {
            Some(s) => Some((s, format!("{}: chat_template", tc_path.display()))),
            None if processor.exists() => {
                let text = std::fs::read_to_string(&processor).map_err(|e| bad(&processor, e))?;
                let v: serde_json::Value =
                    serde_json::from_str(&text).map_err(|e| bad(&processor, e))?;
                let s = v["chat_template"]
                    .as_str()
                    .ok_or_else(|| bad(&processor, "key `chat_template`: not a string"))?;
                Some((
                    s.to_string(),
                    format!("{}: chat_template", processor.display()),
                ))
            }
            None => None,
        };
        match src {
            Some((s, origin)) => Some(ChatTemplate::new(&s, &origin, &bos, &eos)?),
            None => None,
        }
    };
    Ok(Checkpoint {
        weights,
        config,
        tokenizer,
        template,
        path: dir.into(),
    })
}

/// What identifies a model or adapter in results: sha256 over a model file, or over a
/// folder's files (names and bytes, sorted by name).
pub fn digest(path: &Path) -> Result<String> {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    let files: Vec<PathBuf> = if path.is_dir() {
        let mut v: Vec<PathBuf> = std::fs::read_dir(path)
            .map_err(|e| bad(path, e))?
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.is_file())
            .collect();
        v.sort();
        v
    } else {
        vec![path.to_path_buf()]
    };
    for f in files {
        let mut file = std::fs::File::open(&f).map_err(|e| bad(&f, e))?;
        h.update(
            f.file_name()
                .map(|n| n.as_encoded_bytes())
                .unwrap_or_default(),
        );
        std::io::copy(&mut file, &mut h).map_err(|e| bad(&f, e))?;
    }
    Ok(hex::encode(h.finalize()))
}
