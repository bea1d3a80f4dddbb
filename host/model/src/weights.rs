//! Where a model's tensors come from: HF safetensors (one file or a sharded index, memory
//! mapped) or a GGUF file (quantized blocks kept quantized for matmuls). Layers ask for
//! tensors by their HF names; GGUF names are mapped, and llama.cpp's row permutation of the
//! Llama Q/K projections is undone, so one model implementation serves both; or tensors
//! already in memory (a trainer's current weights, for generating with them). Every tensor is
//! checked against the shape the config implies, and an error names the file and tensor.
//!
//! A multimodal HF checkpoint (Gemma 3 4B and up) nests its language model's tensors beside
//! a vision tower; [`TextLayout`] maps the names layers ask for to where the files keep them.
//!
//! Gemma's norms scale by `1 + weight`; llama.cpp's converter stores `1 + weight`, and so do
//! galley's layers: an HF Gemma checkpoint's norm weights are shifted by one as they are
//! read ([`Weights::set_norm_shift`]), and shifted back where galley writes HF files.

use crate::error::{ModelError, Result, bad};
use candle_core::quantized::{GgmlDType, QMatMul, QTensor, gguf_file};
use candle_core::{DType, Device, Tensor};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

pub enum Weights {
    Safetensors {
        files: Vec<PathBuf>,
        st: candle_core::safetensors::MmapedSafetensors,
        /// Added to every `*norm.weight` read (1 for Gemma's checkpoints).
        norm_shift: f32,
        /// Where the language model's tensors sit in the files.
        layout: TextLayout,
    },
    Gguf {
        path: PathBuf,
        content: gguf_file::Content,
        file: Mutex<std::fs::File>,
        unpermute_qk: Option<(usize, usize)>,
        dequantize: bool,
        /// Gemma's norm names (`post_attention_norm`, `ffn_norm` before the MLP,
        /// `post_ffw_norm`) instead of Llama's (`ffn_norm` after attention).
        gemma_names: bool,
    },
    /// Tensors by HF name, already in memory; `origin` names them in errors. `stacked` holds
    /// projections already stacked row-wise as the engine fuses them (q|k|v, gate|up), keyed
    /// by their parts' weight names joined with `|`: a trainer merges adapters straight into
    /// that layout instead of the engine copying the parts together again.
    Memory {
        tensors: std::collections::HashMap<String, Tensor>,
        stacked: std::collections::HashMap<String, Tensor>,
        origin: PathBuf,
    },
    /// A base with LoRA deltas (`scale · B·A`, by HF weight name) added to the projections
    /// they name: an adapter evaluated over its base without merging anything to disk.
    Overlay {
        base: Box<Weights>,
        deltas: std::collections::HashMap<String, Tensor>,
    },
}

/// Where an HF checkpoint keeps its language model's tensors. Layers ask for them by a causal
/// LM's names (`model.layers.0...`, `lm_head.weight`); a multimodal checkpoint (Gemma 3 4B and
/// up) nests them beside its vision tower, in one of two spellings found on the hub.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextLayout {
    /// A causal LM's own checkpoint.
    CausalLm,
    /// `language_model.model.*` and `language_model.lm_head.weight`: Google's Gemma 3
    /// checkpoints, and what transformers 5 writes again when it saves one.
    LanguageModelFirst,
    /// `model.language_model.*` and `lm_head.weight`: what transformers 4.52 to 4.57 wrote, and
    /// the module names transformers 5 builds in memory (the names PEFT's keys carry).
    ModelFirst,
    /// `embed_tokens.weight`, `layers.*`, `norm.weight` and no head: a base model saved on its
    /// own (`Qwen3Model`, `LlamaModel`), as sentence-transformers saves an embedding model
    /// (Qwen3-Embedding).
    Bare,
}

impl TextLayout {
    /// `name` (a causal LM's tensor name) as this layout spells it.
    pub fn file_name<'a>(self, name: &'a str) -> std::borrow::Cow<'a, str> {
        use std::borrow::Cow;
        match (self, name.strip_prefix("model.")) {
            (Self::CausalLm, _) => Cow::Borrowed(name),
            (Self::LanguageModelFirst, Some(rest)) => {
                Cow::Owned(format!("language_model.model.{rest}"))
            }
            (Self::ModelFirst, Some(rest)) => Cow::Owned(format!("model.language_model.{rest}")),
            (Self::LanguageModelFirst, None) => Cow::Owned(format!("language_model.{name}")),
            (Self::ModelFirst, None) => Cow::Borrowed(name),
            (Self::Bare, Some(rest)) => Cow::Borrowed(rest),
            (Self::Bare, None) => Cow::Borrowed(name),
        }
    }

    /// A name in either multimodal spelling as a causal LM's, or `None` for what is not the
    /// language model's (the vision tower, the projector).
    pub fn causal_name(name: &str) -> Option<String> {
        if let Some(rest) = name
            .strip_prefix("language_model.model.")
            .or_else(|| name.strip_prefix("model.language_model."))
        {
            return Some(format!("model.{rest}"));
        }
        if let Some(rest) = name.strip_prefix("language_model.") {
            return Some(rest.to_string());
        }
        // A bare base model's (PEFT over `AutoModel`): `layers.0...` without `model.`.
        if name.starts_with("layers.") {
            return Some(format!("model.{name}"));
        }
        let outside = ["vision_tower.", "multi_modal_projector."];
        let inner = name.strip_prefix("model.").unwrap_or(name);
        if outside.iter().any(|p| inner.starts_with(p)) {
            return None;
        }
        Some(name.to_string())
    }

    /// Which layout the tensors `has` tells of are in (by where the embeddings are).
    pub fn detect(has: impl Fn(&str) -> bool) -> Self {
        [Self::LanguageModelFirst, Self::ModelFirst, Self::Bare]
            .into_iter()
            .find(|l| {
                !has("model.embed_tokens.weight") && has(&l.file_name("model.embed_tokens.weight"))
            })
            .unwrap_or(Self::CausalLm)
    }
}

/// A projection's weight: dense (out, in) or quantized blocks.
pub enum LinearWeight {
    Dense(Tensor),
    Quant(QMatMul),
}

const SIMPLE: [(&str, &str); 3] = [
    ("model.embed_tokens.weight", "token_embd.weight"),
    ("model.norm.weight", "output_norm.weight"),
    ("lm_head.weight", "output.weight"),
];

const LAYER_PARTS: [(&str, &str); 11] = [
    ("self_attn.q_proj.", "attn_q."),
    ("self_attn.k_proj.", "attn_k."),
    ("self_attn.v_proj.", "attn_v."),
    ("self_attn.o_proj.", "attn_output."),
    ("self_attn.q_norm.", "attn_q_norm."),
    ("self_attn.k_norm.", "attn_k_norm."),
    ("mlp.gate_proj.", "ffn_gate."),
    ("mlp.up_proj.", "ffn_up."),
    ("mlp.down_proj.", "ffn_down."),
    ("input_layernorm.", "attn_norm."),
    ("post_attention_layernorm.", "ffn_norm."),
];

/// Gemma 3's four norms a layer, where llama.cpp's names differ from the Llama family's
/// (its `ffn_norm` is the norm before the MLP, which Llama calls `post_attention_layernorm`).
const GEMMA_NORMS: [(&str, &str); 3] = [
    ("post_attention_layernorm.", "post_attention_norm."),
    ("pre_feedforward_layernorm.", "ffn_norm."),
    ("post_feedforward_layernorm.", "post_ffw_norm."),
];

/// The HF name of a tensor in llama.cpp's GGUF naming (the reverse of `gguf_name`), if it is
/// one galley knows (a Llama-family model's: the projections' names are every family's).
pub(crate) fn hf_name(gguf: &str) -> Option<String> {
    if let Some((h, _)) = SIMPLE.iter().find(|(_, g)| *g == gguf) {
        return Some(h.to_string());
    }
    let (layer, rest) = gguf.strip_prefix("blk.")?.split_once('.')?;
    layer.parse::<usize>().ok()?;
    // The longest llama.cpp part first: `attn_q_norm.` before `attn_q.`.
    let mut parts = LAYER_PARTS.to_vec();
    parts.sort_by_key(|(_, g)| std::cmp::Reverse(g.len()));
    parts.iter().find_map(|(h, g)| {
        rest.strip_prefix(g)
            .map(|suffix| format!("model.layers.{layer}.{h}{suffix}"))
    })
}

/// The heads whose rows llama.cpp interleaves in the weight (or bias, or LoRA B) `name`:
/// (heads, kv heads) for a Q or K projection, none for anything else.
fn permuted_heads(name: &str, (heads, kv_heads): (usize, usize)) -> Option<usize> {
    if name.contains(".q_proj.") {
        Some(heads)
    } else if name.contains(".k_proj.") {
        Some(kv_heads)
    } else {
        None
    }
}

/// [`permuted_heads`] for a model of `config`: llama.cpp permutes the Llama family's Q/K
/// rows (Mistral is Llama to it), not Qwen's.
pub(crate) fn llama_cpp_heads(name: &str, config: &crate::config::LlamaConfig) -> Option<usize> {
    use crate::config::Family;
    matches!(
        config.family,
        Family::Llama | Family::Mistral | Family::SmolLM3
    )
    .then(|| permuted_heads(name, (config.num_heads, config.num_kv_heads)))
    .flatten()
}

/// `name` in llama.cpp's GGUF naming for a model of `family`.
pub(crate) fn gguf_name_of(hf: &str, family: crate::config::Family) -> String {
    gguf_name_with(hf, family.is_gemma())
}

fn gguf_name_with(hf: &str, gemma: bool) -> String {
    if gemma
        && let Some((layer, rest)) = hf
            .strip_prefix("model.layers.")
            .and_then(|r| r.split_once('.'))
    {
        for (h, g) in GEMMA_NORMS {
            if let Some(suffix) = rest.strip_prefix(h) {
                return format!("blk.{layer}.{g}{suffix}");
            }
        }
    }
    gguf_name(hf)
}

/// `name` in llama.cpp's GGUF naming (the Llama family's norms; see [`gguf_name_of`]).
pub(crate) fn gguf_name(hf: &str) -> String {
    if let Some((_, g)) = SIMPLE.iter().find(|(h, _)| *h == hf) {
        return g.to_string();
    }
    let Some(rest) = hf.strip_prefix("model.layers.") else {
        return hf.to_string();
    };
    let Some((layer, rest)) = rest.split_once('.') else {
        return hf.to_string();
    };
    for (h, g) in LAYER_PARTS {
        if let Some(suffix) = rest.strip_prefix(h) {
            return format!("blk.{layer}.{g}{suffix}");
        }
    }
    hf.to_string()
}

impl Weights {
    /// Safetensors files (a single `model.safetensors` or every shard of an index).
    pub fn safetensors(files: Vec<PathBuf>) -> Result<Self> {
        // SAFETY: the files are mapped read-only; galley does not modify them while loaded, and
        // safetensors validates every header and offset against the file length.
        let st = unsafe { candle_core::safetensors::MmapedSafetensors::multi(&files) }
            .map_err(|e| bad(&files[0], format!("not a valid safetensors file: {e}")))?;
        let layout = TextLayout::detect(|n| st.get(n).is_ok());
        Ok(Self::Safetensors {
            files,
            st,
            norm_shift: 0.0,
            layout,
        })
    }

    /// Tensors by HF name (a trainer's merged weights, say); `origin` names them in errors.
    pub fn memory(
        tensors: impl IntoIterator<Item = (String, Tensor)>,
        origin: impl Into<PathBuf>,
    ) -> Self {
        Self::memory_stacked(tensors, [], origin)
    }

    /// Tensors by HF name plus fused projections already stacked (see [`Weights::Memory`]):
    /// each `(parts, weight)` gives the parts' weight names in stacking order.
    pub fn memory_stacked(
        tensors: impl IntoIterator<Item = (String, Tensor)>,
        stacked: impl IntoIterator<Item = (Vec<String>, Tensor)>,
        origin: impl Into<PathBuf>,
    ) -> Self {
        Self::Memory {
            tensors: tensors.into_iter().collect(),
            stacked: stacked
                .into_iter()
                .map(|(parts, t)| (parts.join("|"), t))
                .collect(),
            origin: origin.into(),
        }
    }

    /// The projections `names` (weight names, in order) already stacked into one
    /// (`rows`, `inp`) weight, when these weights hold them so.
    pub fn stacked(
        &self,
        names: &[String],
        rows: usize,
        inp: usize,
        device: &Device,
    ) -> Result<Option<Tensor>> {
        let Self::Memory { stacked, .. } = self else {
            return Ok(None);
        };
        let key = names.join("|");
        let Some(t) = stacked.get(&key) else {
            return Ok(None);
        };
        self.check(&key, t.dims(), &[rows, inp])?;
        Ok(Some(t.to_device(device)?.to_dtype(DType::F32)?))
    }

    pub fn gguf(path: &Path) -> Result<Self> {
        let mut file = std::fs::File::open(path).map_err(|e| bad(path, e))?;
        let content = gguf_file::Content::read(&mut file)
            .map_err(|e| bad(path, format!("not a readable GGUF file: {e}")))?;
        // Every tensor must lie inside the file: a truncated download fails here, by name.
        let len = file.metadata().map_err(|e| bad(path, e))?.len();
        for (name, info) in &content.tensor_infos {
            let bytes = info.shape.elem_count() / info.ggml_dtype.block_size()
                * info.ggml_dtype.type_size();
            let end = content.tensor_data_offset + info.offset + bytes as u64;
            if end > len {
                return Err(bad(
                    path,
                    format!("truncated: tensor `{name}` ends at byte {end}, the file has {len}"),
                ));
            }
        }
        Ok(Self::Gguf {
            path: path.into(),
            content,
            file: Mutex::new(file),
            unpermute_qk: None,
            dequantize: false,
            gemma_names: false,
        })
    }

    /// Run every projection in f32 (GGUF blocks dequantized at load).
    pub fn set_dequantize(&mut self, on: bool) {
        match self {
            Self::Gguf { dequantize, .. } => *dequantize = on,
            Self::Overlay { base, .. } => base.set_dequantize(on),
            _ => {}
        }
    }

    /// GGUF metadata (empty for safetensors).
    pub fn gguf_metadata(&self) -> Option<&std::collections::HashMap<String, gguf_file::Value>> {
        match self {
            Self::Gguf { content, .. } => Some(&content.metadata),
            Self::Overlay { base, .. } => base.gguf_metadata(),
            _ => None,
        }
    }

    /// For Gemma: HF checkpoints' norm weights are read as `1 + weight` (what galley's norms
    /// multiply by, and what llama.cpp's GGUFs hold); GGUFs are read by Gemma's norm names.
    pub fn set_gemma(&mut self) {
        match self {
            Self::Safetensors { norm_shift, .. } => *norm_shift = 1.0,
            Self::Gguf { gemma_names, .. } => *gemma_names = true,
            Self::Overlay { base, .. } => base.set_gemma(),
            Self::Memory { .. } => {}
        }
    }

    /// `hf` in this file's GGUF naming.
    fn gguf_key(&self, hf: &str) -> String {
        match self {
            Self::Gguf { gemma_names, .. } => gguf_name_with(hf, *gemma_names),
            _ => gguf_name(hf),
        }
    }

    /// For Llama-architecture GGUFs: undo llama.cpp's Q/K row permutation (heads, kv heads).
    pub fn set_unpermute_qk(&mut self, heads: usize, kv_heads: usize) {
        match self {
            Self::Gguf { unpermute_qk, .. } => *unpermute_qk = Some((heads, kv_heads)),
            Self::Overlay { base, .. } => base.set_unpermute_qk(heads, kv_heads),
            _ => {}
        }
    }

    /// Where the language model's tensors sit (a causal LM's names unless these are an HF
    /// multimodal checkpoint's).
    pub fn layout(&self) -> TextLayout {
        match self {
            Self::Safetensors { layout, .. } => *layout,
            Self::Overlay { base, .. } => base.layout(),
            _ => TextLayout::CausalLm,
        }
    }

    pub fn origin(&self) -> &Path {
        match self {
            Self::Safetensors { files, .. } => &files[0],
            Self::Gguf { path, .. } => path,
            Self::Memory { origin, .. } => origin,
            Self::Overlay { base, .. } => base.origin(),
        }
    }

    pub fn has(&self, name: &str) -> bool {
        match self {
            Self::Safetensors { st, layout, .. } => st.get(&layout.file_name(name)).is_ok(),
            Self::Gguf { content, .. } => content.tensor_infos.contains_key(&self.gguf_key(name)),
            Self::Memory { tensors, .. } => tensors.contains_key(name),
            Self::Overlay { base, .. } => base.has(name),
        }
    }

    fn missing(&self, name: &str) -> ModelError {
        let tensor = match self {
            Self::Gguf { .. } => format!("{} (HF name {name})", self.gguf_key(name)),
            Self::Safetensors { layout, .. } => layout.file_name(name).into_owned(),
            _ => name.to_string(),
        };
        ModelError::MissingTensor {
            path: self.origin().into(),
            tensor,
        }
    }

    fn check(&self, name: &str, found: &[usize], expected: &[usize]) -> Result<()> {
        if found != expected {
            return Err(ModelError::ShapeMismatch {
                path: self.origin().into(),
                tensor: name.into(),
                found: found.to_vec(),
                expected: expected.to_vec(),
            });
        }
        Ok(())
    }

    fn qtensor(&self, name: &str, expected: &[usize], device: &Device) -> Result<QTensor> {
        let Self::Gguf {
            content,
            file,
            unpermute_qk,
            path,
            ..
        } = self
        else {
            unreachable!("GGUF only")
        };
        let g = self.gguf_key(name);
        let info = content
            .tensor_infos
            .get(&g)
            .ok_or_else(|| self.missing(name))?;
        self.check(&g, info.shape.dims(), expected)?;
        let mut f = file.lock().expect("weights file lock");
        let qt = info
            .read(&mut *f, content.tensor_data_offset, device)
            .map_err(|e| bad(path, format!("tensor `{g}`: {e}")))?;
        match unpermute_qk.and_then(|h| permuted_heads(name, h)) {
            Some(h) => {
                unpermute_rows(&qt, h, device).map_err(|e| bad(path, format!("tensor `{g}`: {e}")))
            }
            None => Ok(qt),
        }
    }

    /// A dense f32 tensor of exactly `expected` shape.
    pub fn tensor(&self, name: &str, expected: &[usize], device: &Device) -> Result<Tensor> {
        match self {
            Self::Safetensors {
                st,
                norm_shift,
                layout,
                ..
            } => {
                let file_name = layout.file_name(name);
                let view = st.get(&file_name).map_err(|_| self.missing(name))?;
                self.check(&file_name, view.shape(), expected)?;
                let t = st.load(&file_name, device)?.to_dtype(DType::F32)?;
                if *norm_shift != 0.0 && name.ends_with("norm.weight") {
                    // In f32, as transformers computes `1.0 + weight.float()`.
                    return Ok((t + f64::from(*norm_shift))?);
                }
                Ok(t)
            }
            Self::Gguf { .. } => Ok(self.qtensor(name, expected, device)?.dequantize(device)?),
            Self::Memory { tensors, .. } => {
                let t = tensors.get(name).ok_or_else(|| self.missing(name))?;
                self.check(name, t.dims(), expected)?;
                Ok(t.to_device(device)?.to_dtype(DType::F32)?)
            }
            // A dense read (full fine-tuning's trainable copy, a merge) gets the delta too.
            Self::Overlay { base, deltas } => {
                let t = base.tensor(name, expected, device)?;
                match deltas.get(name) {
                    Some(delta) => {
                        self.check(name, delta.dims(), expected)?;
                        Ok((t + delta.to_device(device)?)?)
                    }
                    None => Ok(t),
                }
            }
        }
    }

    /// A projection weight of shape (out, in): quantized blocks stay quantized.
    pub fn linear(
        &self,
        name: &str,
        out: usize,
        inp: usize,
        device: &Device,
    ) -> Result<LinearWeight> {
        match self {
            Self::Safetensors { .. } | Self::Memory { .. } => Ok(LinearWeight::Dense(
                self.tensor(name, &[out, inp], device)?,
            )),
            Self::Gguf { dequantize, .. } => {
                let qt = self.qtensor(name, &[out, inp], device)?;
                if *dequantize {
                    return Ok(LinearWeight::Dense(qt.dequantize(device)?));
                }
                Ok(match qt.dtype() {
                    GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16 => {
                        LinearWeight::Dense(qt.dequantize(device)?)
                    }
                    _ => LinearWeight::Quant(QMatMul::from_qtensor(qt)?),
                })
            }
            Self::Overlay { base, deltas } => {
                let w = base.linear(name, out, inp, device)?;
                let Some(delta) = deltas.get(name) else {
                    return Ok(w);
                };
                let dense = match w {
                    LinearWeight::Dense(t) => t,
                    LinearWeight::Quant(QMatMul::QTensor(q)) => q.dequantize(device)?,
                    LinearWeight::Quant(QMatMul::Tensor(t)) => t,
                    LinearWeight::Quant(QMatMul::TensorF16(t)) => t.to_dtype(DType::F32)?,
                };
                self.check(name, delta.dims(), &[out, inp])?;
                Ok(LinearWeight::Dense((dense + delta.to_device(device)?)?))
            }
        }
    }
}

/// llama.cpp stores each head's Q/K rows as (d/2, 2) interleaved pairs; HF as (2, d/2) halves.
/// Rows are independent runs of quant blocks, so the fix is a byte-level row reorder.
pub(crate) fn unpermute_rows(
    qt: &QTensor,
    heads: usize,
    device: &Device,
) -> candle_core::Result<QTensor> {
    let dims = qt.shape().dims().to_vec();
    let rows = dims[0];
    if heads == 0 || !rows.is_multiple_of(heads) || !(rows / heads).is_multiple_of(2) {
        candle_core::bail!("{rows} rows do not split into {heads} heads of even size");
    }
    let data = qt.data()?;
    let row_bytes = data.len() / rows;
    let d = rows / heads;
    let mut out = vec![0u8; data.len()];
    for h in 0..heads {
        for j in 0..2 {
            for i in 0..d / 2 {
                let hf_row = h * d + j * (d / 2) + i;
                let gguf_row = h * d + i * 2 + j;
                out[hf_row * row_bytes..(hf_row + 1) * row_bytes]
                    .copy_from_slice(&data[gguf_row * row_bytes..(gguf_row + 1) * row_bytes]);
            }
        }
    }
    candle_core::quantized::ggml_file::qtensor_from_ggml(qt.dtype(), &out, dims, device)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hf_names_map_to_gguf_names() {
        assert_eq!(
            gguf_name("model.layers.3.self_attn.o_proj.weight"),
            "blk.3.attn_output.weight"
        );
        assert_eq!(
            gguf_name("model.layers.0.post_attention_layernorm.weight"),
            "blk.0.ffn_norm.weight"
        );
        assert_eq!(
            gguf_name("model.layers.11.self_attn.q_proj.bias"),
            "blk.11.attn_q.bias"
        );
        assert_eq!(gguf_name("model.embed_tokens.weight"), "token_embd.weight");
        for hf in [
            "model.layers.3.self_attn.q_norm.weight",
            "model.layers.3.self_attn.q_proj.weight",
            "model.layers.10.mlp.down_proj.bias",
            "lm_head.weight",
        ] {
            assert_eq!(hf_name(&gguf_name(hf)).as_deref(), Some(hf));
        }
        assert_eq!(hf_name("rope_freqs.weight"), None);
    }

    #[test]
    fn unpermuting_restores_hf_row_order() {
        // 2 heads of 4 rows, 32 columns (one Q8_0 block per row would need 32): use F32 rows.
        let dev = Device::Cpu;
        let hf: Vec<f32> = (0..8)
            .flat_map(|r| std::iter::repeat_n(r as f32, 4))
            .collect();
        // llama.cpp's permute: per head, rows (j, i) -> (i, j).
        let perm = [0, 2, 1, 3, 4, 6, 5, 7];
        let gguf: Vec<f32> = perm
            .iter()
            .flat_map(|&r| std::iter::repeat_n(r as f32, 4))
            .collect();
        let qt = QTensor::quantize(
            &Tensor::from_vec(gguf, (8, 4), &dev).unwrap(),
            GgmlDType::F32,
        )
        .unwrap();
        let back = unpermute_rows(&qt, 2, &dev)
            .unwrap()
            .dequantize(&dev)
            .unwrap();
        assert_eq!(back.flatten_all().unwrap().to_vec1::<f32>().unwrap(), hf);
    }
}
