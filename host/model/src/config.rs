//! The shape of a Llama-family model and the switches that tell the families apart, read
//! from an HF `config.json` or from GGUF metadata. One struct serves Llama 2/3.x, SmolLM,
//! Mistral, Qwen2/2.5, Qwen3, Gemma 2 and Gemma 3's text models: they differ only in the
//! switches below (RoPE scaling, tied embeddings, attention biases, q/k norms, grouped-query
//! heads, and for Gemma its sliding-window layers, extra norms, scaled embeddings and GELU,
//! and for Gemma 2 the soft-capping of attention scores and final logits).

use crate::error::{ModelError, Result, bad};
use serde::Deserialize;
use std::path::Path;

/// Which checkpoint family a model comes from (from `architectures` / `general.architecture`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    Llama,
    Mistral,
    Qwen2,
    Qwen3,
    /// Gemma 3's text models (270M, 1B; the language model of the larger ones): embeddings
    /// scaled by √hidden, norms after attention and around the MLP, q/k norms, a tanh-GELU
    /// gate, and layers that attend over a sliding window with their own RoPE base.
    Gemma3,
    /// Gemma 2 (2B, 9B, 27B): Gemma 3's layer without q/k norms, every other layer sliding,
    /// one RoPE base, and attention scores and final logits soft-capped (`c·tanh(x/c)`).
    Gemma2,
    /// SmolLM3: Llama's layer, with every fourth layer attending without RoPE (NoPE).
    SmolLM3,
}

impl Family {
    /// Gemma 2 or 3: norms that scale by `1 + weight`, four of them per layer, embeddings
    /// scaled by √hidden, the tanh-GELU gate, llama.cpp's Gemma tensor names.
    pub fn is_gemma(self) -> bool {
        matches!(self, Family::Gemma2 | Family::Gemma3)
    }

    const KNOWN: &'static str = "LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM, Gemma2ForCausalLM, Gemma3ForCausalLM, Gemma3ForConditionalGeneration (its language model), SmolLM3ForCausalLM, and their base models (LlamaModel, Qwen3Model...: embeddings) (GGUF: llama, qwen2, qwen3, gemma2, gemma3, smollm3)";

    fn from_hf(arch: &str) -> Option<Self> {
        Some(match arch {
            "LlamaForCausalLM" => Family::Llama,
            "MistralForCausalLM" => Family::Mistral,
            "Qwen2ForCausalLM" => Family::Qwen2,
            "Qwen3ForCausalLM" => Family::Qwen3,
            // Gemma 3 4B, 12B, 27B: the language model beside a vision tower (run on text).
            "Gemma3ForCausalLM" | "Gemma3ForConditionalGeneration" => Family::Gemma3,
            "Gemma2ForCausalLM" => Family::Gemma2,
            "SmolLM3ForCausalLM" => Family::SmolLM3,
            // The same models without their head, as sentence-transformers saves an
            // embedding model (Qwen3-Embedding): `embed::Embedder` pools their states.
            "LlamaModel" => Family::Llama,
            "MistralModel" => Family::Mistral,
            "Qwen2Model" => Family::Qwen2,
            "Qwen3Model" => Family::Qwen3,
            "Gemma3TextModel" => Family::Gemma3,
            "Gemma2Model" => Family::Gemma2,
            "SmolLM3Model" => Family::SmolLM3,
            _ => return None,
        })
    }

    fn from_gguf(arch: &str) -> Option<Self> {
        Some(match arch {
            "llama" => Family::Llama,
            "qwen2" => Family::Qwen2,
            "qwen3" => Family::Qwen3,
            // EmbeddingGemma as llama.cpp's converter writes it: Gemma 3 attending both ways.
            "gemma3" | "gemma-embedding" => Family::Gemma3,
            "gemma2" => Family::Gemma2,
            "smollm3" => Family::SmolLM3,
            _ => return None,
        })
    }
}

/// How RoPE frequencies are stretched for long contexts.
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    None,
    /// Positions divided by `factor`.
    Linear {
        factor: f64,
    },
    /// Llama 3.1's frequency-dependent scaling.
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: usize,
    },
    /// llama.cpp's `rope_freqs` tensor (how a GGUF carries Llama 3.1's scaling): each base
    /// frequency divided by its own factor.
    Factors(Vec<f64>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct LlamaConfig {
    pub family: Family,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub rope_scaling: RopeScaling,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    /// Biases on q/k/v projections (Qwen2 always; Llama when `attention_bias`).
    pub qkv_bias: bool,
    /// Bias on the output projection (Llama with `attention_bias`).
    pub o_bias: bool,
    pub mlp_bias: bool,
    /// RMS norms on queries and keys per head (Qwen3).
    pub qk_norm: bool,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
    /// Layers that attend over a window of recent keys only (Gemma 3); `None`: none do.
    pub sliding: Option<Sliding>,
    /// Attention scores are scaled by this to the power -1/2 (Gemma's
    /// `query_pre_attn_scalar`); `None`: by `head_dim`'s.
    pub query_pre_attn_scalar: Option<f64>,
    /// Attention scores (after scaling) become `c·tanh(score/c)` (Gemma 2's
    /// `attn_logit_softcapping`).
    pub attn_softcap: Option<f64>,
    /// The LM head's logits become `c·tanh(logit/c)` (Gemma 2's `final_logit_softcapping`).
    pub final_softcap: Option<f64>,
    /// Per layer: whether it attends without RoPE (SmolLM3's NoPE layers); `None`: every
    /// layer rotates.
    pub no_rope: Option<Vec<bool>>,
    /// Every token attends to every other, both ways (EmbeddingGemma's
    /// `use_bidirectional_attention`): the full layers see the whole text, a sliding layer the
    /// tokens within half its window on either side. Only whole texts in one pass (embeddings);
    /// no cache to decode from, no training.
    pub bidirectional: bool,
}

/// Sliding-window attention (Gemma 3's local layers): a query at position p sees keys p -
/// window + 1 ..= p, and these layers rotate with their own (unscaled) RoPE base.
#[derive(Debug, Clone, PartialEq)]
pub struct Sliding {
    pub window: usize,
    /// Per layer: whether it slides (the others attend over everything).
    pub layers: Vec<bool>,
    pub rope_theta: f64,
}

impl LlamaConfig {
    /// Whether layer `i` attends over a sliding window, and its width.
    pub fn window(&self, layer: usize) -> Option<usize> {
        let s = self.sliding.as_ref()?;
        s.layers
            .get(layer)
            .copied()
            .unwrap_or(false)
            .then_some(s.window)
    }

    /// Whether layer `i` rotates its queries and keys (all but SmolLM3's NoPE layers).
    pub fn rotates(&self, layer: usize) -> bool {
        !self
            .no_rope
            .as_ref()
            .is_some_and(|n| n.get(layer).copied().unwrap_or(false))
    }

    /// The factor attention scores are multiplied by.
    pub fn attn_scale(&self) -> f64 {
        1.0 / self
            .query_pre_attn_scalar
            .unwrap_or(self.head_dim as f64)
            .sqrt()
    }
}

#[derive(Deserialize)]
struct HfRopeScaling {
    #[serde(alias = "type")]
    rope_type: Option<String>,
    /// transformers 5 moves `rope_theta` in here (`rope_parameters`).
    rope_theta: Option<f64>,
    factor: Option<f64>,
    low_freq_factor: Option<f64>,
    high_freq_factor: Option<f64>,
    original_max_position_embeddings: Option<usize>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(u32),
    Many(Vec<u32>),
}

/// The fields of an HF config.json galley reads; the rest are ignored, as transformers does.
#[derive(Deserialize)]
struct HfConfig {
    // Required, except where the family's transformers config has defaults (Gemma 3's).
    vocab_size: Option<usize>,
    hidden_size: Option<usize>,
    intermediate_size: Option<usize>,
    num_hidden_layers: Option<usize>,
    num_attention_heads: Option<usize>,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    #[serde(default = "default_eps")]
    rms_norm_eps: f64,
    rope_theta: Option<f64>,
    rope_scaling: Option<HfRopeScaling>,
    /// transformers 5: one set of RoPE settings, or (Gemma 3) one per layer type.
    rope_parameters: Option<serde_json::Value>,
    max_position_embeddings: Option<usize>,
    tie_word_embeddings: Option<bool>,
    #[serde(default)]
    attention_bias: bool,
    #[serde(default)]
    mlp_bias: bool,
    bos_token_id: Option<u32>,
    eos_token_id: Option<OneOrMany>,
    // Gemma 3.
    hidden_activation: Option<String>,
    hidden_act: Option<String>,
    query_pre_attn_scalar: Option<f64>,
    sliding_window: Option<usize>,
    sliding_window_pattern: Option<usize>,
    layer_types: Option<Vec<String>>,
    rope_local_base_freq: Option<f64>,
    /// Absent, `null` (off), or a cap: Gemma 2 defaults absent ones on, as transformers.
    #[serde(default, deserialize_with = "present")]
    final_logit_softcapping: Option<Option<f64>>,
    #[serde(default, deserialize_with = "present")]
    attn_logit_softcapping: Option<Option<f64>>,
    // SmolLM3.
    /// Per layer, 1 where it rotates and 0 where it does not.
    no_rope_layers: Option<Vec<u8>>,
    no_rope_layer_interval: Option<usize>,
    use_sliding_window: Option<bool>,
    /// `null` in Gemma 2's configs.
    use_bidirectional_attention: Option<bool>,
}

/// A multimodal checkpoint's config.json: the language model's settings under `text_config`,
/// some ids at the top.
#[derive(Deserialize)]
struct HfMultimodal {
    text_config: Option<HfConfig>,
    bos_token_id: Option<u32>,
    eos_token_id: Option<OneOrMany>,
    tie_word_embeddings: Option<bool>,
}

/// A key that is there, `null` or not: `Some(None)` for `null`.
fn present<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<Option<Option<f64>>, D::Error> {
    Option::<f64>::deserialize(d).map(Some)
}

fn default_eps() -> f64 {
    1e-6
}

/// transformers' `Gemma3TextConfig` defaults, which Google's multimodal configs rely on
/// (gemma-3-4b-it's `text_config` says six keys; heads, head size, vocabulary and score
/// scale come from here): vocab, hidden, intermediate, layers, heads, kv heads, head_dim,
/// max positions, bos, eos.
const GEMMA3_DEFAULTS: [usize; 10] = [262_208, 2304, 9216, 26, 8, 4, 256, 131_072, 2, 1];

/// transformers' `Gemma2Config` defaults (gemma-2-2b's shape), in the same order.
const GEMMA2_DEFAULTS: [usize; 10] = [256_000, 2304, 9216, 26, 8, 4, 256, 8192, 2, 1];

impl HfConfig {
    /// Fills what transformers would default for `family`.
    fn with_defaults(mut self, family: Family) -> Self {
        let defaults = match family {
            Family::Gemma3 => GEMMA3_DEFAULTS,
            Family::Gemma2 => GEMMA2_DEFAULTS,
            _ => return self,
        };
        let [
            vocab,
            hidden,
            inter,
            layers,
            heads,
            kv,
            head,
            max_pos,
            bos,
            eos,
        ] = defaults;
        self.vocab_size = self.vocab_size.or(Some(vocab));
        self.hidden_size = self.hidden_size.or(Some(hidden));
        self.intermediate_size = self.intermediate_size.or(Some(inter));
        self.num_hidden_layers = self.num_hidden_layers.or(Some(layers));
        self.num_attention_heads = self.num_attention_heads.or(Some(heads));
        self.num_key_value_heads = self.num_key_value_heads.or(Some(kv));
        self.head_dim = self.head_dim.or(Some(head));
        self.max_position_embeddings = self.max_position_embeddings.or(Some(max_pos));
        self.bos_token_id = self.bos_token_id.or(Some(bos as u32));
        self.eos_token_id = self.eos_token_id.or(Some(OneOrMany::One(eos as u32)));
        self.tie_word_embeddings = self.tie_word_embeddings.or(Some(true));
        self
    }
}

impl LlamaConfig {
    /// Reads an HF `config.json`.
    pub fn from_hf_json(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| bad(path, e))?;
        Self::from_hf_text(&text, path)
    }

    /// Reads an HF `config.json`'s text; `path` is what errors name as its origin.
    pub fn from_hf_text(text: &str, path: &Path) -> Result<Self> {
        // The architecture first: a model galley does not run is said as such, not as the
        // first field its config lacks (a multimodal one keeps them under `text_config`).
        let v: serde_json::Value = serde_json::from_str(text).map_err(|e| bad(path, e))?;
        let arch = v["architectures"][0]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let family = Family::from_hf(&arch).ok_or_else(|| ModelError::UnknownArchitecture {
            path: path.into(),
            arch: arch.clone(),
            known: Family::KNOWN.into(),
        })?;
        // A multimodal checkpoint keeps the language model's settings under `text_config`
        // (errors name keys there), and may say its ids and tying at the top.
        let nested = arch.ends_with("ForConditionalGeneration");
        let prefix = if nested { "text_config." } else { "" };
        let key = |k: &str| format!("`{prefix}{k}`");
        let c: HfConfig = if nested {
            let m: HfMultimodal = serde_json::from_str(text).map_err(|e| bad(path, e))?;
            let mut c = m.text_config.ok_or_else(|| {
                bad(
                    path,
                    format!(
                        "key `text_config` is missing ({arch} keeps its language model's settings there)"
                    ),
                )
            })?;
            c.bos_token_id = c.bos_token_id.or(m.bos_token_id);
            c.eos_token_id = c.eos_token_id.or(m.eos_token_id);
            c.tie_word_embeddings = c.tie_word_embeddings.or(m.tie_word_embeddings);
            c
        } else {
            serde_json::from_str(text).map_err(|e| bad(path, e))?
        }
        .with_defaults(family);
        let need = |v: Option<usize>, k: &str| {
            v.ok_or_else(|| bad(path, format!("key {} is missing", key(k))))
        };
        let num_heads = need(c.num_attention_heads, "num_attention_heads")?;
        let hidden_size = need(c.hidden_size, "hidden_size")?;
        // transformers 4 writes `rope_theta` + `rope_scaling`; 5 writes `rope_parameters`,
        // for Gemma 3 one set per layer type (the full-attention layers' is the model's).
        let params = |which: Option<&str>| -> Result<Option<HfRopeScaling>> {
            let v = match (&c.rope_parameters, which) {
                (Some(v), Some(k)) if v.get(k).is_some() => &v[k],
                (Some(v), None) => v,
                _ => return Ok(None),
            };
            serde_json::from_value(v.clone())
                .map(Some)
                .map_err(|e| bad(path, format!("key {}: {e}", key("rope_parameters"))))
        };
        let per_type = c
            .rope_parameters
            .as_ref()
            .is_some_and(|v| v.get("full_attention").is_some());
        let full_params = params(per_type.then_some("full_attention"))?;
        let rope = full_params.as_ref().or(c.rope_scaling.as_ref());
        let default_theta = if family == Family::Gemma3 {
            1_000_000.0
        } else {
            10_000.0
        };
        let rope_theta = c
            .rope_theta
            .or(full_params.as_ref().and_then(|r| r.rope_theta))
            .unwrap_or(default_theta);
        let rope_scaling = match rope {
            None => RopeScaling::None,
            Some(s) => match s.rope_type.as_deref() {
                Some("llama3") => RopeScaling::Llama3 {
                    factor: s.factor.unwrap_or(8.0),
                    low_freq_factor: s.low_freq_factor.unwrap_or(1.0),
                    high_freq_factor: s.high_freq_factor.unwrap_or(4.0),
                    original_max_position_embeddings: s
                        .original_max_position_embeddings
                        .unwrap_or(8192),
                },
                Some("linear") => RopeScaling::Linear {
                    factor: s.factor.unwrap_or(1.0),
                },
                Some("default") | None => RopeScaling::None,
                Some(other) => {
                    return Err(bad(
                        path,
                        format!(
                            "key {}: `{other}` is not supported (llama3, linear)",
                            key("rope_scaling.rope_type")
                        ),
                    ));
                }
            },
        };
        let cfg = Self {
            family,
            vocab_size: need(c.vocab_size, "vocab_size")?,
            hidden_size,
            intermediate_size: need(c.intermediate_size, "intermediate_size")?,
            num_layers: need(c.num_hidden_layers, "num_hidden_layers")?,
            num_heads,
            num_kv_heads: c.num_key_value_heads.unwrap_or(num_heads),
            head_dim: c.head_dim.unwrap_or(hidden_size / num_heads.max(1)),
            rms_norm_eps: c.rms_norm_eps,
            rope_theta,
            rope_scaling,
            max_position_embeddings: c.max_position_embeddings.unwrap_or(4096),
            tie_word_embeddings: c.tie_word_embeddings.unwrap_or(false),
            qkv_bias: family == Family::Qwen2 || c.attention_bias,
            o_bias: family != Family::Qwen2 && c.attention_bias,
            mlp_bias: c.mlp_bias,
            qk_norm: matches!(family, Family::Qwen3 | Family::Gemma3),
            bos_token_id: c.bos_token_id,
            eos_token_ids: match &c.eos_token_id {
                Some(OneOrMany::One(i)) => vec![*i],
                Some(OneOrMany::Many(v)) => v.clone(),
                None => vec![],
            },
            sliding: None,
            query_pre_attn_scalar: None,
            attn_softcap: None,
            final_softcap: None,
            no_rope: None,
            bidirectional: false,
        };
        let cfg = if family.is_gemma() {
            let local = params(per_type.then_some("sliding_attention"))?;
            gemma_hf(cfg, &c, local.and_then(|r| r.rope_theta))
                // Its messages name top-level keys; a multimodal config has them nested.
                .map_err(|e| bad(path, e.replacen("key `", &format!("key `{prefix}"), 1)))?
        } else if family == Family::SmolLM3 {
            smollm3_hf(cfg, &c).map_err(|e| bad(path, e))?
        } else {
            cfg
        };
        cfg.validate().map_err(|e| bad(path, e))?;
        Ok(cfg)
    }

    /// Reads GGUF metadata (`general.architecture` and `ARCH.*` keys).
    pub fn from_gguf(
        path: &Path,
        md: &std::collections::HashMap<String, candle_core::quantized::gguf_file::Value>,
        tied: bool,
    ) -> Result<Self> {
        let arch = md
            .get("general.architecture")
            .and_then(|v| v.to_string().ok())
            .cloned()
            .unwrap_or_default();
        let family = Family::from_gguf(&arch).ok_or_else(|| ModelError::UnknownArchitecture {
            path: path.into(),
            arch: arch.clone(),
            known: Family::KNOWN.into(),
        })?;
        let get = |k: &str| md.get(&format!("{arch}.{k}"));
        let int = |k: &str| -> Result<usize> {
            get(k)
                .ok_or_else(|| bad(path, format!("GGUF metadata has no `{arch}.{k}`")))
                .and_then(|v| {
                    v.to_u64()
                        .or_else(|_| v.to_u32().map(u64::from))
                        .map(|x| x as usize)
                        .map_err(|e| bad(path, format!("`{arch}.{k}`: {e}")))
                })
        };
        let float = |k: &str, default: f64| {
            get(k)
                .and_then(|v| v.to_f32().ok())
                .map(f64::from)
                .unwrap_or(default)
        };
        let hidden = int("embedding_length")?;
        let heads = int("attention.head_count")?;
        let vocab = match int("vocab_size") {
            Ok(v) => v,
            Err(_) => md
                .get("tokenizer.ggml.tokens")
                .and_then(|v| v.to_vec().ok())
                .map(|v| v.len())
                .ok_or_else(|| bad(path, "no vocabulary size"))?,
        };
        let tok = |k: &str| md.get(k).and_then(|v| v.to_u32().ok());
        let cfg = Self {
            family,
            vocab_size: vocab,
            hidden_size: hidden,
            intermediate_size: int("feed_forward_length")?,
            num_layers: int("block_count")?,
            num_heads: heads,
            num_kv_heads: int("attention.head_count_kv").unwrap_or(heads),
            head_dim: int("attention.key_length").unwrap_or(hidden / heads.max(1)),
            rms_norm_eps: float("attention.layer_norm_rms_epsilon", 1e-6),
            rope_theta: float("rope.freq_base", 10_000.0),
            rope_scaling: match get("rope.scaling.type")
                .and_then(|v| v.to_string().ok())
                .map(String::as_str)
            {
                Some("linear") => RopeScaling::Linear {
                    factor: float("rope.scaling.factor", 1.0),
                },
                _ => RopeScaling::None,
            },
            max_position_embeddings: int("context_length").unwrap_or(4096),
            tie_word_embeddings: tied,
            qkv_bias: family == Family::Qwen2,
            o_bias: false,
            mlp_bias: false,
            qk_norm: matches!(family, Family::Qwen3 | Family::Gemma3),
            bos_token_id: tok("tokenizer.ggml.bos_token_id"),
            eos_token_ids: tok("tokenizer.ggml.eos_token_id").into_iter().collect(),
            sliding: None,
            query_pre_attn_scalar: None,
            attn_softcap: None,
            final_softcap: None,
            no_rope: None,
            bidirectional: arch == "gemma-embedding",
        };
        let cfg = if family.is_gemma() {
            gemma_gguf(cfg, &arch, md).map_err(|e| bad(path, e))?
        } else if family == Family::SmolLM3 {
            // llama.cpp's SmolLM3: every fourth layer without RoPE, always.
            LlamaConfig {
                no_rope: Some(every_fourth(cfg.num_layers)),
                ..cfg
            }
        } else {
            cfg
        };
        cfg.validate().map_err(|e| bad(path, e))?;
        Ok(cfg)
    }

    fn validate(&self) -> std::result::Result<(), String> {
        if let Some(n) = &self.no_rope
            && n.len() != self.num_layers
        {
            return Err(format!(
                "key `no_rope_layers`: {} flags for {} layers",
                n.len(),
                self.num_layers
            ));
        }
        if let Some(s) = &self.sliding
            && (s.window == 0 || s.layers.len() != self.num_layers)
        {
            return Err(format!(
                "a sliding window of {} over {} layer types for {} layers",
                s.window,
                s.layers.len(),
                self.num_layers
            ));
        }
        if self
            .query_pre_attn_scalar
            .is_some_and(|q| !(q > 0.0 && q.is_finite()))
        {
            return Err("key `query_pre_attn_scalar` must be positive".into());
        }
        if self.num_heads == 0
            || self.num_kv_heads == 0
            || !self.num_heads.is_multiple_of(self.num_kv_heads)
        {
            return Err(format!(
                "{} attention heads cannot share {} key/value heads",
                self.num_heads, self.num_kv_heads
            ));
        }
        if !self.head_dim.is_multiple_of(2) {
            return Err(format!("head_dim {} must be even for RoPE", self.head_dim));
        }
        if self.vocab_size == 0 || self.hidden_size == 0 || self.num_layers == 0 {
            return Err("vocab_size, hidden_size and num_hidden_layers must be positive".into());
        }
        Ok(())
    }
}

/// Gemma 3's switches from an HF config: the sliding layers (`layer_types`, or every
/// `sliding_window_pattern`-th layer global), their RoPE base, the score scale; what galley
/// does not implement (logit soft-capping, bidirectional attention, another activation) is
/// refused by key rather than computed wrongly.
fn gemma_hf(
    mut cfg: LlamaConfig,
    c: &HfConfig,
    local_theta: Option<f64>,
) -> std::result::Result<LlamaConfig, String> {
    let act = c.hidden_activation.as_deref().or(c.hidden_act.as_deref());
    if !matches!(act, None | Some("gelu_pytorch_tanh" | "gelu_tanh")) {
        return Err(format!(
            "key `hidden_activation`: `{}` is not supported for Gemma (gelu_pytorch_tanh)",
            act.unwrap_or_default()
        ));
    }
    let gemma2 = cfg.family == Family::Gemma2;
    // Gemma 2's transformers defaults: on, at 30 and 50.
    let (final_cap, attn_cap) = match gemma2 {
        true => (
            c.final_logit_softcapping.unwrap_or(Some(30.0)),
            c.attn_logit_softcapping.unwrap_or(Some(50.0)),
        ),
        false => (
            c.final_logit_softcapping.flatten(),
            c.attn_logit_softcapping.flatten(),
        ),
    };
    for (key, v) in [
        ("final_logit_softcapping", final_cap),
        ("attn_logit_softcapping", attn_cap),
    ] {
        match v {
            Some(_) if !gemma2 => {
                return Err(format!(
                    "key `{key}`: logit soft-capping is not supported for Gemma 3 (transformers has none)"
                ));
            }
            Some(cap) if !(cap > 0.0 && cap.is_finite()) => {
                return Err(format!("key `{key}`: {cap} (must be positive)"));
            }
            _ => {}
        }
    }
    if gemma2 {
        cfg.attn_softcap = attn_cap;
        cfg.final_softcap = final_cap;
    }
    cfg.bidirectional = c.use_bidirectional_attention == Some(true);
    let layers = match &c.layer_types {
        Some(types) => types
            .iter()
            .enumerate()
            .map(|(i, t)| match t.as_str() {
                "sliding_attention" => Ok(true),
                "full_attention" => Ok(false),
                other => Err(format!(
                    "key `layer_types[{i}]`: `{other}` (sliding_attention or full_attention)"
                )),
            })
            .collect::<std::result::Result<Vec<bool>, String>>()?,
        // Gemma 2: every other layer slides, from the first.
        None => {
            let every = match gemma2 {
                true => 2,
                false => c.sliding_window_pattern.unwrap_or(6),
            };
            sliding_layers(cfg.num_layers, every)
        }
    };
    // Gemma 2's local layers rotate as its global ones do.
    let local_default = match gemma2 {
        true => cfg.rope_theta,
        false => 10_000.0,
    };
    cfg.sliding = Some(Sliding {
        window: c.sliding_window.unwrap_or(4096),
        layers,
        rope_theta: local_theta
            .or(c.rope_local_base_freq)
            .unwrap_or(local_default),
    });
    cfg.query_pre_attn_scalar = Some(c.query_pre_attn_scalar.unwrap_or(256.0));
    Ok(cfg)
}

/// Gemma's switches from GGUF metadata, as llama.cpp reads them: the window
/// (`gemma3.attention.sliding_window`), the sliding layers (a per-layer array, or every
/// sixth layer global; every other one for Gemma 2), the local RoPE base
/// (`gemma3.rope.freq_base_swa`, else 10,000; Gemma 2's global one), the score scale
/// (1/√head_dim, 1/√(hidden/heads) for the 27Bs), and Gemma 2's soft-capping
/// (`gemma2.attn_logit_softcapping`, `gemma2.final_logit_softcapping`).
fn gemma_gguf(
    mut cfg: LlamaConfig,
    arch: &str,
    md: &std::collections::HashMap<String, candle_core::quantized::gguf_file::Value>,
) -> std::result::Result<LlamaConfig, String> {
    use candle_core::quantized::gguf_file::Value;
    let key = |k: &str| md.get(&format!("{arch}.{k}"));
    let uint = |v: &Value| {
        v.to_u32()
            .map(u64::from)
            .or_else(|_| v.to_u64())
            .or_else(|_| v.to_i32().map(|x| x.max(0) as u64))
            .ok()
    };
    let gemma2 = cfg.family == Family::Gemma2;
    for (k, to) in [
        ("attn_logit_softcapping", &mut cfg.attn_softcap),
        ("final_logit_softcapping", &mut cfg.final_softcap),
    ] {
        match key(k).and_then(|v| v.to_f32().ok()) {
            Some(cap) if cap != 0.0 && !gemma2 => {
                return Err(format!(
                    "`{arch}.{k}`: logit soft-capping is not supported for Gemma 3"
                ));
            }
            Some(cap) if !(cap > 0.0 && cap.is_finite()) && gemma2 => {
                return Err(format!("`{arch}.{k}`: {cap} (must be positive)"));
            }
            Some(cap) if gemma2 => *to = Some(f64::from(cap)),
            _ => {}
        }
    }
    let window = key("attention.sliding_window").and_then(uint).unwrap_or(0) as usize;
    if window > 0 {
        let n = cfg.num_layers;
        let layers = match key("attention.sliding_window_pattern") {
            Some(Value::Array(flags)) => flags
                .iter()
                .map(|f| f.to_bool().map_err(|e| e.to_string()))
                .collect::<std::result::Result<Vec<bool>, String>>()
                .map_err(|e| format!("`{arch}.attention.sliding_window_pattern`: {e}"))?,
            other => {
                let every = other
                    .and_then(uint)
                    .map_or(gguf_global_every(cfg.family), |e| e as usize);
                sliding_layers(n, every)
            }
        };
        let local = key("rope.freq_base_swa").and_then(|v| v.to_f32().ok());
        cfg.sliding = Some(Sliding {
            window,
            layers,
            rope_theta: match (local, gemma2) {
                (Some(l), _) => f64::from(l),
                (None, true) => cfg.rope_theta,
                (None, false) => 10_000.0,
            },
        });
    }
    cfg.query_pre_attn_scalar = Some(gemma_query_scalar(&cfg));
    Ok(cfg)
}

/// SmolLM3's NoPE layers: every fourth one (layers 3, 7, ...), as transformers' default and
/// llama.cpp's fixed pattern.
pub(crate) fn every_fourth(layers: usize) -> Vec<bool> {
    every_nth(layers, 4)
}

/// Per layer, whether it is an `n`-th one (layers n - 1, 2n - 1, ...).
fn every_nth(layers: usize, n: usize) -> Vec<bool> {
    (0..layers).map(|i| (i + 1) % n.max(1) == 0).collect()
}

/// Gemma's sliding layers when every `every`-th layer is global: all the others.
pub(crate) fn sliding_layers(layers: usize, every: usize) -> Vec<bool> {
    every_nth(layers, every).into_iter().map(|g| !g).collect()
}

/// How often llama.cpp takes a Gemma layer as global when a GGUF does not list them: every
/// sixth layer (Gemma 3), every other one (Gemma 2).
pub(crate) fn gguf_global_every(family: Family) -> usize {
    match family {
        Family::Gemma2 => 2,
        _ => 6,
    }
}

/// SmolLM3's switches: which layers go without RoPE (`no_rope_layers`, else every
/// `no_rope_layer_interval`-th); its sliding window is refused by key.
fn smollm3_hf(mut cfg: LlamaConfig, c: &HfConfig) -> std::result::Result<LlamaConfig, String> {
    if c.use_sliding_window == Some(true) {
        return Err("key `use_sliding_window`: SmolLM3's sliding window is not supported".into());
    }
    cfg.no_rope = Some(match &c.no_rope_layers {
        Some(flags) => flags
            .iter()
            .enumerate()
            .map(|(i, &f)| match f {
                0 => Ok(true),
                1 => Ok(false),
                other => Err(format!("key `no_rope_layers[{i}]`: {other} (0 or 1)")),
            })
            .collect::<std::result::Result<Vec<bool>, String>>()?,
        None => every_nth(cfg.num_layers, c.no_rope_layer_interval.unwrap_or(4)),
    });
    Ok(cfg)
}

/// The score scale's `query_pre_attn_scalar` llama.cpp derives for a Gemma (it has no key
/// for it): head_dim, or hidden/heads for the 27Bs (Gemma 3's 62 layers, Gemma 2's 46).
pub(crate) fn gemma_query_scalar(cfg: &LlamaConfig) -> f64 {
    let big = match cfg.family {
        Family::Gemma2 => 46,
        _ => 62,
    };
    if cfg.num_layers == big {
        (cfg.hidden_size / cfg.num_heads.max(1)) as f64
    } else {
        cfg.head_dim as f64
    }
}

#[cfg(test)]
mod tests;
