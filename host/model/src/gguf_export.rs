//! Writing a model as a GGUF file that llama.cpp runs, as its `convert_hf_to_gguf.py` would:
//! llama.cpp's tensor names, the Llama family's Q/K rows permuted into llama.cpp's
//! interleaved order (the reverse of what reading a GGUF undoes), 1-D tensors (norms,
//! biases) in f32 and projections in the chosen type, `general.*` and `ARCH.*` metadata from
//! the config, and the tokenizer and chat template as `tokenizer.*` keys. The source is any
//! checkpoint galley opens — an HF folder, a GGUF, either with LoRA adapters applied over it
//! (`Weights::Overlay`) — read tensor by tensor as dense f32 in HF's layout, so a GGUF source
//! is requantized to the chosen type. candle's GGUF writer lays the file out (version 2,
//! which llama.cpp and gguf-py read).

use crate::config::{Family, LlamaConfig, RopeScaling};
use crate::error::{ModelError, Result, bad};
use crate::load::Checkpoint;
use crate::weights::gguf_name;
use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use std::path::Path;

/// The type 2-D weights are written in (llama.cpp's `--outtype` names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutType {
    F32,
    F16,
    Q8_0,
    Q4_0,
    Q4_1,
}

impl std::str::FromStr for OutType {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        Ok(match s.to_ascii_lowercase().as_str() {
            "f32" => Self::F32,
            "f16" => Self::F16,
            "q8_0" => Self::Q8_0,
            "q4_0" => Self::Q4_0,
            "q4_1" => Self::Q4_1,
            _ => return Err(format!("`{s}`: expected f32, f16, q8_0, q4_0 or q4_1")),
        })
    }
}

impl OutType {
    fn dtype(self) -> GgmlDType {
        match self {
            Self::F32 => GgmlDType::F32,
            Self::F16 => GgmlDType::F16,
            Self::Q8_0 => GgmlDType::Q8_0,
            Self::Q4_0 => GgmlDType::Q4_0,
            Self::Q4_1 => GgmlDType::Q4_1,
        }
    }

    /// `general.file_type`: llama.cpp's `LLAMA_FTYPE_MOSTLY_*`.
    fn file_type(self) -> u32 {
        match self {
            Self::F32 => 0,
            Self::F16 => 1,
            Self::Q4_0 => 2,
            Self::Q4_1 => 3,
            Self::Q8_0 => 7,
        }
    }
}

/// What was written.
#[derive(Debug, Clone)]
pub struct Exported {
    pub tensors: usize,
    pub parameters: usize,
    pub bytes: u64,
    /// Weights whose rows do not split into the type's 32-value blocks, written in f16
    /// instead (llama.cpp's converter falls back the same way).
    pub in_f16: Vec<String>,
}

/// Every tensor a model of `c` has: (HF name, shape). Projections are 2-D.
pub fn tensor_shapes(c: &LlamaConfig) -> Vec<(String, Vec<usize>)> {
    let (h, hd) = (c.hidden_size, c.head_dim);
    let (q, kv) = (c.num_heads * hd, c.num_kv_heads * hd);
    let mut out = vec![(
        "model.embed_tokens.weight".to_string(),
        vec![c.vocab_size, h],
    )];
    for l in 0..c.num_layers {
        let p = |s: &str| format!("model.layers.{l}.{s}");
        let mut add = |name: String, shape: Vec<usize>| out.push((name, shape));
        add(p("input_layernorm.weight"), vec![h]);
        for (name, rows) in [("q_proj", q), ("k_proj", kv), ("v_proj", kv)] {
            add(p(&format!("self_attn.{name}.weight")), vec![rows, h]);
            if c.qkv_bias {
                add(p(&format!("self_attn.{name}.bias")), vec![rows]);
            }
        }
        if c.qk_norm {
            add(p("self_attn.q_norm.weight"), vec![hd]);
            add(p("self_attn.k_norm.weight"), vec![hd]);
        }
        add(p("self_attn.o_proj.weight"), vec![h, q]);
        if c.o_bias {
            add(p("self_attn.o_proj.bias"), vec![h]);
        }
        add(p("post_attention_layernorm.weight"), vec![h]);
        let i = c.intermediate_size;
        for (name, shape) in [
            ("gate_proj", [i, h]),
            ("up_proj", [i, h]),
            ("down_proj", [h, i]),
        ] {
            add(p(&format!("mlp.{name}.weight")), shape.to_vec());
            if c.mlp_bias {
                add(p(&format!("mlp.{name}.bias")), vec![shape[0]]);
            }
        }
    }
    out.push(("model.norm.weight".into(), vec![h]));
    if !c.tie_word_embeddings {
        out.push(("lm_head.weight".into(), vec![c.vocab_size, h]));
    }
    out
}

/// llama.cpp's Q/K row order for the Llama family: within each head, HF's two halves
/// (rotated pairs `i` and `i + d/2`) become interleaved rows `2i`, `2i + 1`.
fn permute_rows(t: &Tensor, heads: usize) -> Result<Tensor> {
    let dims = t.dims().to_vec();
    let rows = dims[0];
    let rest: usize = dims[1..].iter().product();
    if !rows.is_multiple_of(heads) || !(rows / heads).is_multiple_of(2) {
        return Err(ModelError::Invalid(format!(
            "{rows} rows do not split into {heads} heads of even size"
        )));
    }
    let d = rows / heads;
    Ok(t.reshape((heads, 2, d / 2, rest))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape(dims)?)
}

/// The `general.architecture` llama.cpp runs the family as (Mistral is Llama to it).
fn arch(f: Family) -> &'static str {
    match f {
        Family::Llama | Family::Mistral => "llama",
        Family::Qwen2 => "qwen2",
        Family::Qwen3 => "qwen3",
    }
}

fn metadata(ck: &Checkpoint, name: &str, ty: OutType) -> Result<Vec<(String, Value)>> {
    let c = &ck.config;
    let a = arch(c.family);
    let k = |key: &str| format!("{a}.{key}");
    let u = |v: usize| Value::U32(v as u32);
    let mut md = vec![
        ("general.architecture".to_string(), Value::String(a.into())),
        ("general.name".into(), Value::String(name.into())),
        ("general.file_type".into(), Value::U32(ty.file_type())),
        ("general.quantization_version".into(), Value::U32(2)),
        (k("vocab_size"), u(c.vocab_size)),
        (k("context_length"), u(c.max_position_embeddings)),
        (k("embedding_length"), u(c.hidden_size)),
        (k("block_count"), u(c.num_layers)),
        (k("feed_forward_length"), u(c.intermediate_size)),
        (k("attention.head_count"), u(c.num_heads)),
        (k("attention.head_count_kv"), u(c.num_kv_heads)),
        (k("attention.key_length"), u(c.head_dim)),
        (k("attention.value_length"), u(c.head_dim)),
        (k("rope.dimension_count"), u(c.head_dim)),
        (
            k("attention.layer_norm_rms_epsilon"),
            Value::F32(c.rms_norm_eps as f32),
        ),
        (k("rope.freq_base"), Value::F32(c.rope_theta as f32)),
    ];
    match c.rope_scaling {
        RopeScaling::None => {}
        RopeScaling::Linear { factor } => {
            md.push((k("rope.scaling.type"), Value::String("linear".into())));
            md.push((k("rope.scaling.factor"), Value::F32(factor as f32)));
        }
        // Written as the `rope_freqs` tensor (see `write_gguf`), as llama.cpp's converter does.
        RopeScaling::Llama3 { .. } | RopeScaling::Factors(_) => {}
    }
    md.extend(ck.tokenizer.gguf_metadata(c.vocab_size)?);
    if let Some(t) = &ck.template {
        md.push((
            "tokenizer.chat_template".into(),
            Value::String(t.source.clone()),
        ));
    }
    Ok(md)
}

/// Writes `ck` (its weights read now, adapters and all) to `out` as a GGUF named `name`,
/// its 2-D weights in `ty`.
pub fn write_gguf(ck: &Checkpoint, name: &str, ty: OutType, out: &Path) -> Result<Exported> {
    let c = &ck.config;
    let md = metadata(ck, name, ty)?;
    let dev = Device::Cpu;
    let permute = matches!(c.family, Family::Llama | Family::Mistral);
    let mut tensors: Vec<(String, QTensor)> = Vec::new();
    let (mut parameters, mut in_f16) = (0, Vec::new());
    for (hf, shape) in tensor_shapes(c) {
        let mut t = ck.weights.tensor(&hf, &shape, &dev)?;
        parameters += t.elem_count();
        if permute && hf.contains(".q_proj.") {
            t = permute_rows(&t, c.num_heads)?;
        } else if permute && hf.contains(".k_proj.") {
            t = permute_rows(&t, c.num_kv_heads)?;
        }
        // The output matrix (the LM head, or the embeddings a tied model reads out with) is
        // kept finer under 4-bit types, as llama.cpp's quantizer keeps it: Q6_K, or Q8_0 where
        // rows do not split into 256-value super-blocks.
        let output =
            hf == "lm_head.weight" || (c.tie_word_embeddings && hf == "model.embed_tokens.weight");
        let finer = match shape[shape.len() - 1].is_multiple_of(256) {
            true => GgmlDType::Q6K,
            false => GgmlDType::Q8_0,
        };
        let dtype = match (shape.len(), ty) {
            (1, _) => GgmlDType::F32,
            (_, OutType::F32 | OutType::F16) => ty.dtype(),
            (_, OutType::Q4_0 | OutType::Q4_1) if output => finer,
            (_, _) if !shape[1].is_multiple_of(ty.dtype().block_size()) => {
                in_f16.push(hf.clone());
                GgmlDType::F16
            }
            _ => ty.dtype(),
        };
        let q = QTensor::quantize(&t, dtype).map_err(|e| bad(&ck.path, format!("{hf}: {e}")))?;
        tensors.push((gguf_name(&hf), q));
    }
    // Llama 3.1's scaling: each frequency's divisor, llama.cpp's `rope_freqs.weight`.
    if matches!(
        c.rope_scaling,
        RopeScaling::Llama3 { .. } | RopeScaling::Factors(_)
    ) {
        let base = crate::layers::rotary::base_freq(c);
        let scaled = crate::layers::rotary::scaled_freq(c);
        let factors: Vec<f32> = base
            .iter()
            .zip(&scaled)
            .map(|(b, s)| (b / s) as f32)
            .collect();
        let n = factors.len();
        let t = Tensor::from_vec(factors, n, &dev)?;
        tensors.push((
            "rope_freqs.weight".into(),
            QTensor::quantize(&t, GgmlDType::F32)?,
        ));
    }
    write_file(out, &md, &tensors)?;
    let bytes = std::fs::metadata(out).map_err(|e| bad(out, e))?.len();
    Ok(Exported {
        tensors: tensors.len(),
        parameters,
        bytes,
        in_f16,
    })
}

/// Writes `adapter` as a llama.cpp LoRA adapter GGUF for a base of `config` (what its
/// `convert_lora_to_gguf.py` writes, for `llama-cli --lora`): `general.type: adapter`,
/// `adapter.lora.alpha` such that llama.cpp's alpha / r is the adapter's scale (rsLoRA's
/// too), and each projection's factors as `NAME.lora_a` (r, in) and `NAME.lora_b` (out, r)
/// under the base tensor's llama.cpp name, B's rows permuted as the base's Q/K rows are.
pub fn write_lora_gguf(
    adapter: &crate::Adapter,
    config: &LlamaConfig,
    name: &str,
    ty: OutType,
    out: &Path,
) -> Result<Exported> {
    let dtype = match ty {
        OutType::F32 | OutType::F16 => ty.dtype(),
        _ => {
            return Err(ModelError::Invalid(format!(
                "a LoRA adapter is written in f32 or f16, not {ty:?}"
            )));
        }
    };
    let shapes: std::collections::HashMap<String, Vec<usize>> =
        tensor_shapes(config).into_iter().collect();
    let permute = matches!(config.family, Family::Llama | Family::Mistral);
    let md = vec![
        (
            "general.architecture".to_string(),
            Value::String(arch(config.family).into()),
        ),
        ("general.type".into(), Value::String("adapter".into())),
        ("general.name".into(), Value::String(name.into())),
        ("adapter.type".into(), Value::String("lora".into())),
        (
            "adapter.lora.alpha".into(),
            Value::F32((adapter.scale * adapter.rank as f64) as f32),
        ),
    ];
    let mut tensors: Vec<(String, QTensor)> = Vec::new();
    let mut parameters = 0;
    for (hf, a, b) in &adapter.factors {
        let shape = shapes.get(hf).filter(|s| s.len() == 2).ok_or_else(|| {
            ModelError::Invalid(format!(
                "{}: the adapter changes `{hf}`, which the base has no projection of",
                adapter.dir.display()
            ))
        })?;
        if a.dims() != [adapter.rank, shape[1]] || b.dims() != [shape[0], adapter.rank] {
            return Err(ModelError::Invalid(format!(
                "{}: `{hf}`: factors {:?} and {:?} do not fit the base's {shape:?}",
                adapter.dir.display(),
                a.dims(),
                b.dims()
            )));
        }
        let b = match (permute, hf.contains(".q_proj."), hf.contains(".k_proj.")) {
            (true, true, _) => permute_rows(b, config.num_heads)?,
            (true, _, true) => permute_rows(b, config.num_kv_heads)?,
            _ => b.clone(),
        };
        let g = gguf_name(hf);
        for (suffix, t) in [("lora_a", a), ("lora_b", &b)] {
            parameters += t.elem_count();
            tensors.push((format!("{g}.{suffix}"), QTensor::quantize(t, dtype)?));
        }
    }
    write_file(out, &md, &tensors)?;
    Ok(Exported {
        tensors: tensors.len(),
        parameters,
        bytes: std::fs::metadata(out).map_err(|e| bad(out, e))?.len(),
        in_f16: Vec::new(),
    })
}

fn write_file(out: &Path, md: &[(String, Value)], tensors: &[(String, QTensor)]) -> Result<()> {
    use std::io::Write;
    let mut file = std::io::BufWriter::new(std::fs::File::create(out).map_err(|e| bad(out, e))?);
    let md_refs: Vec<(&str, &Value)> = md.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let t_refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    gguf_file::write(&mut file, &md_refs, &t_refs).map_err(|e| bad(out, e))?;
    file.flush().map_err(|e| bad(out, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Permuting for llama.cpp and the reader's unpermuting are inverses.
    #[test]
    fn permuted_rows_are_what_reading_a_gguf_undoes() {
        let dev = Device::Cpu;
        // 2 heads of 4 rows, each row filled with its index.
        let hf: Vec<f32> = (0..8)
            .flat_map(|r| std::iter::repeat_n(r as f32, 32))
            .collect();
        let t = Tensor::from_vec(hf.clone(), (8, 32), &dev).unwrap();
        let p = permute_rows(&t, 2).unwrap();
        let rows: Vec<f32> = p.to_vec2::<f32>().unwrap().iter().map(|r| r[0]).collect();
        assert_eq!(rows, [0.0, 2.0, 1.0, 3.0, 4.0, 6.0, 5.0, 7.0]);
        let q = QTensor::quantize(&p, GgmlDType::F32).unwrap();
        let back = crate::weights::unpermute_rows(&q, 2, &dev)
            .unwrap()
            .dequantize(&dev)
            .unwrap();
        assert_eq!(back.flatten_all().unwrap().to_vec1::<f32>().unwrap(), hf);
    }

    #[test]
    fn out_types_parse_by_llama_cpps_names() {
        assert_eq!("Q8_0".parse::<OutType>(), Ok(OutType::Q8_0));
        assert!("q5_k".parse::<OutType>().unwrap_err().contains("q4_1"));
    }
}
