//! LoRA adapters applied over a base at load: `adapter_config.json` +
//! `adapter_model.safetensors` in PEFT's layout (what galley's trainer writes, and what
//! `PeftModel.save_pretrained` writes), or a llama.cpp LoRA adapter GGUF (`.lora_a` /
//! `.lora_b` factors under llama.cpp's tensor names, B's Q/K rows in its order). Each adapted projection becomes `W + scale · B·A` in
//! memory, so evaluating or serving an adapter needs no merged copy on disk, and a quantized
//! base stays quantized everywhere the adapter does not touch.

use crate::config::LlamaConfig;
use crate::error::{ModelError, Result, bad};
use crate::weights::Weights;
use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// A loaded adapter: its deltas by HF weight name, and what identifies it.
pub struct Adapter {
    pub dir: PathBuf,
    pub deltas: HashMap<String, Tensor>,
    /// The factors behind each delta, by HF weight name: (A of shape (r, in), B of (out, r)),
    /// for writing the adapter itself (a llama.cpp LoRA GGUF).
    pub factors: Vec<(String, Tensor, Tensor)>,
    pub rank: usize,
    pub alpha: f64,
    /// What `B·A` is multiplied by: alpha / r, or alpha / sqrt(r) under rsLoRA.
    pub scale: f64,
}

#[derive(serde::Deserialize)]
struct PeftConfig {
    #[serde(default)]
    peft_type: Option<String>,
    r: usize,
    lora_alpha: f64,
    #[serde(default)]
    use_rslora: bool,
    #[serde(default)]
    fan_in_fan_out: bool,
    #[serde(default)]
    use_dora: bool,
    #[serde(default)]
    modules_to_save: Option<Vec<String>>,
    #[serde(default)]
    rank_pattern: HashMap<String, serde_json::Value>,
    #[serde(default)]
    alpha_pattern: HashMap<String, serde_json::Value>,
}

impl Adapter {
    /// Reads the adapter in `dir` (a PEFT folder) or the llama.cpp adapter file `dir`, for a
    /// base of `config`. Every way it could be silently wrong for galley (a PEFT feature
    /// galley does not apply, a key it cannot place) is an error naming the file.
    pub fn load(dir: &Path, config: &LlamaConfig, device: &Device) -> Result<Self> {
        if dir.is_file() {
            return Self::from_gguf(dir, config, device);
        }
        let cfg_path = dir.join("adapter_config.json");
        let text = std::fs::read_to_string(&cfg_path).map_err(|e| bad(&cfg_path, e))?;
        let cfg: PeftConfig = serde_json::from_str(&text).map_err(|e| bad(&cfg_path, e))?;
        if let Some(t) = cfg.peft_type.as_deref()
            && t != "LORA"
        {
            return Err(bad(
                &cfg_path,
                format!("peft_type `{t}`: galley applies LORA adapters"),
            ));
        }
        let unsupported = [
            (cfg.fan_in_fan_out, "fan_in_fan_out"),
            (cfg.use_dora, "use_dora"),
            (
                cfg.modules_to_save.as_ref().is_some_and(|m| !m.is_empty()),
                "modules_to_save",
            ),
            (!cfg.rank_pattern.is_empty(), "rank_pattern"),
            (!cfg.alpha_pattern.is_empty(), "alpha_pattern"),
        ];
        if let Some((_, what)) = unsupported.iter().find(|u| u.0) {
            return Err(bad(
                &cfg_path,
                format!("`{what}` is not supported by galley's adapter loader"),
            ));
        }
        if cfg.r == 0 {
            return Err(bad(&cfg_path, "`r` must be at least 1"));
        }
        let scale = if cfg.use_rslora {
            cfg.lora_alpha / (cfg.r as f64).sqrt()
        } else {
            cfg.lora_alpha / cfg.r as f64
        };
        let st_path = dir.join("adapter_model.safetensors");
        if !st_path.is_file() {
            return Err(bad(
                &st_path,
                "missing (galley reads adapters in safetensors)",
            ));
        }
        // SAFETY: mapped read-only and not modified while loaded; safetensors checks offsets.
        let st = unsafe { candle_core::safetensors::MmapedSafetensors::new(&st_path) }
            .map_err(|e| bad(&st_path, format!("not a valid safetensors file: {e}")))?;
        let mut a_of: HashMap<String, Tensor> = HashMap::new();
        let mut b_of: HashMap<String, Tensor> = HashMap::new();
        for (key, _) in st.tensors() {
            let (module, which) = if let Some(m) = key.strip_suffix(".lora_A.weight") {
                (m, 'A')
            } else if let Some(m) = key.strip_suffix(".lora_B.weight") {
                (m, 'B')
            } else {
                return Err(bad(
                    &st_path,
                    format!("tensor `{key}` is not a LoRA A or B matrix"),
                ));
            };
            // PEFT prefixes `base_model.model.` to the base's own names. A multimodal base's
            // language model is nested (`model.language_model.`): its names become a causal
            // LM's; its vision tower's LoRA (PEFT targets every `q_proj` by default) changes
            // nothing galley computes, since galley runs the text model alone.
            let module = module.strip_prefix("base_model.model.").unwrap_or(module);
            let Some(module) = crate::weights::TextLayout::causal_name(module) else {
                continue;
            };
            let module = module.as_str();
            let t = st
                .load(&key, device)
                .and_then(|t| t.to_dtype(DType::F32))
                .map_err(|e| bad(&st_path, format!("tensor `{key}`: {e}")))?;
            match which {
                'A' => a_of.insert(module.to_string(), t),
                _ => b_of.insert(module.to_string(), t),
            };
        }
        let mut deltas = HashMap::new();
        let mut factors = Vec::new();
        for (module, a) in &a_of {
            let b = b_of
                .remove(module)
                .ok_or_else(|| bad(&st_path, format!("`{module}` has lora_A but no lora_B")))?;
            let (ra, rb) = (a.dim(0)?, b.dim(1)?);
            if ra != cfg.r || rb != cfg.r {
                return Err(bad(
                    &st_path,
                    format!(
                        "`{module}`: rank {ra}/{rb} but adapter_config.json says r = {}",
                        cfg.r
                    ),
                ));
            }
            let delta = (b.matmul(a)? * scale)?;
            deltas.insert(format!("{module}.weight"), delta);
            factors.push((format!("{module}.weight"), a.clone(), b));
        }
        if let Some(module) = b_of.keys().next() {
            return Err(bad(
                &st_path,
                format!("`{module}` has lora_B but no lora_A"),
            ));
        }
        factors.sort_by(|x, y| x.0.cmp(&y.0));
        if deltas.is_empty() {
            return Err(bad(&st_path, "holds no LoRA matrices"));
        }
        Ok(Self {
            dir: dir.into(),
            deltas,
            factors,
            rank: cfg.r,
            alpha: cfg.lora_alpha,
            scale,
        })
    }

    /// A llama.cpp LoRA adapter GGUF (what its `convert_lora_to_gguf.py` and `galley export`
    /// write): scale `adapter.lora.alpha / r`, B's Q/K rows put back in HF's order.
    fn from_gguf(path: &Path, config: &LlamaConfig, device: &Device) -> Result<Self> {
        use candle_core::quantized::gguf_file;
        let mut file = std::fs::File::open(path).map_err(|e| bad(path, e))?;
        let content = gguf_file::Content::read(&mut file)
            .map_err(|e| bad(path, format!("not a GGUF file: {e}")))?;
        let text = |k: &str| {
            content
                .metadata
                .get(k)
                .and_then(|v| v.to_string().ok())
                .cloned()
        };
        if text("general.type").as_deref() != Some("adapter")
            || text("adapter.type").as_deref() != Some("lora")
        {
            return Err(bad(
                path,
                "not a LoRA adapter GGUF (general.type `adapter`, adapter.type `lora`); a model GGUF is given with --model",
            ));
        }
        let alpha = content
            .metadata
            .get("adapter.lora.alpha")
            .and_then(|v| v.to_f32().ok())
            .map(f64::from)
            .unwrap_or(0.0);
        // A factor dequantized; B's rows put back from llama.cpp's order when it permutes them.
        let read = |name: &str, heads: Option<usize>, file: &mut std::fs::File| -> Result<Tensor> {
            let info = &content.tensor_infos[name];
            let mut q = info
                .read(file, content.tensor_data_offset, device)
                .map_err(|e| bad(path, format!("tensor `{name}`: {e}")))?;
            if let Some(h) = heads {
                q = crate::weights::unpermute_rows(&q, h, device)
                    .map_err(|e| bad(path, format!("tensor `{name}`: {e}")))?;
            }
            Ok(q.dequantize(device)?)
        };
        let mut names: Vec<&String> = content.tensor_infos.keys().collect();
        names.sort();
        let (mut deltas, mut factors, mut rank) = (HashMap::new(), Vec::new(), 0);
        let mut scale = 1.0;
        for a_name in names.iter().filter(|n| n.ends_with(".lora_a")) {
            let base = a_name.trim_end_matches(".lora_a");
            let b_name = format!("{base}.lora_b");
            if !content.tensor_infos.contains_key(&b_name) {
                return Err(bad(path, format!("`{a_name}` has no `{b_name}`")));
            }
            let hf = crate::weights::hf_name(base)
                .ok_or_else(|| bad(path, format!("`{base}` is not a tensor galley places")))?;
            let a = read(a_name, None, &mut file)?;
            let b = read(
                &b_name,
                crate::weights::llama_cpp_heads(&hf, config),
                &mut file,
            )?;
            let r = a.dim(0)?;
            if b.dim(1)? != r {
                return Err(bad(
                    path,
                    format!("`{base}`: A has rank {r}, B {}", b.dim(1)?),
                ));
            }
            // llama.cpp: alpha / r, or 1 when no alpha is given.
            rank = r;
            scale = if alpha == 0.0 { 1.0 } else { alpha / r as f64 };
            deltas.insert(hf.clone(), (b.matmul(&a)? * scale)?);
            factors.push((hf, a, b));
        }
        if deltas.is_empty() {
            return Err(bad(path, "holds no LoRA factors (`.lora_a` / `.lora_b`)"));
        }
        Ok(Self {
            dir: path.into(),
            deltas,
            factors,
            rank,
            alpha: if alpha == 0.0 { rank as f64 } else { alpha },
            scale,
        })
    }

    /// `base` with this adapter's deltas added where they apply. A delta that names no
    /// weight of the base is an error: an adapter for another architecture must not be
    /// dropped silently.
    pub fn apply(self, base: Weights) -> Result<Weights> {
        if let Some(name) = self.deltas.keys().find(|n| !base.has(n)) {
            return Err(ModelError::Invalid(format!(
                "{}: the adapter changes `{name}`, which the base model {} does not have",
                self.dir.display(),
                base.origin().display()
            )));
        }
        Ok(Weights::Overlay {
            base: Box::new(base),
            deltas: self.deltas,
        })
    }
}
