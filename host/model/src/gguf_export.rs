//! Writing a model as a GGUF file that llama.cpp runs, as its `convert_hf_to_gguf.py` would:
//! llama.cpp's tensor names, the Llama family's Q/K rows permuted into llama.cpp's
//! interleaved order (the reverse of what reading a GGUF undoes), 1-D tensors (norms,
//! biases) in f32 and projections in the chosen type, `general.*` and `ARCH.*` metadata from
//! the config, and the tokenizer and chat template as `tokenizer.*` keys. The source is any
//! checkpoint galley opens — an HF folder, a GGUF, either with LoRA adapters applied over it
//! (`Weights::Overlay`) — read tensor by tensor as dense f32 in HF's layout, so a GGUF source
//! is requantized to the chosen type. The file (GGUF version 3, as llama.cpp writes it) is
//! laid out here, one tensor read, converted and written at a time: candle's GGUF writer
//! takes every tensor at once, which for a 7B model in f16 is 14 GB held in memory.

use crate::config::{Family, LlamaConfig, RopeScaling};
use crate::error::{ModelError, Result, bad};
use crate::load::Checkpoint;
use crate::weights::{gguf_name_of, llama_cpp_heads};
use candle_core::quantized::gguf_file::Value;
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
        if c.family.is_gemma() {
            add(p("pre_feedforward_layernorm.weight"), vec![h]);
            add(p("post_feedforward_layernorm.weight"), vec![h]);
        }
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
fn arch(c: &LlamaConfig) -> &'static str {
    match c.family {
        // EmbeddingGemma: llama.cpp's name for Gemma 3 attending both ways.
        Family::Gemma3 if c.bidirectional => "gemma-embedding",
        Family::Llama | Family::Mistral => "llama",
        Family::Qwen2 => "qwen2",
        Family::Qwen3 => "qwen3",
        Family::Gemma3 => "gemma3",
        Family::Gemma2 => "gemma2",
        Family::SmolLM3 => "smollm3",
    }
}

fn metadata(
    ck: &Checkpoint,
    name: &str,
    ty: OutType,
    embed: Option<&crate::embed::Embedder>,
) -> Result<Vec<(String, Value)>> {
    let c = &ck.config;
    let a = arch(c);
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
    if let Some(s) = &c.sliding {
        md.push((k("attention.sliding_window"), u(s.window)));
        md.push((k("rope.freq_base_swa"), Value::F32(s.rope_theta as f32)));
        // llama.cpp takes every sixth layer as global (Gemma 2: every other one) unless the
        // layers are listed.
        let every = crate::config::gguf_global_every(c.family);
        if s.layers != crate::config::sliding_layers(c.num_layers, every) {
            md.push((
                k("attention.sliding_window_pattern"),
                Value::Array(s.layers.iter().map(|&x| Value::Bool(x)).collect()),
            ));
        }
    }
    for (key, cap) in [
        ("attn_logit_softcapping", c.attn_softcap),
        ("final_logit_softcapping", c.final_softcap),
    ] {
        if let Some(cap) = cap {
            md.push((k(key), Value::F32(cap as f32)));
        }
    }
    // A sentence-transformers folder's pooling, as llama.cpp's converter writes it (its
    // embedding mode and server read it), and EmbeddingGemma's dense layers' widths.
    if let Some(e) = embed {
        match (e.pooling.as_slice(), e.dense.is_empty()) {
            ([p], true) if p.gguf_code().is_some() => {
                md.push((k("pooling_type"), Value::U32(p.gguf_code().unwrap_or(0))));
            }
            ([p], false) if p.gguf_code().is_some() && a == "gemma-embedding" => {
                md.push((k("pooling_type"), Value::U32(p.gguf_code().unwrap_or(0))));
                for (d, prefix) in e.dense.iter().zip(["dense_2", "dense_3"]) {
                    let (out, inp) = d.parts().0.dims2()?;
                    md.push((k(&format!("{prefix}_feat_in")), u(inp)));
                    md.push((k(&format!("{prefix}_feat_out")), u(out)));
                }
            }
            _ => {
                return Err(bad(
                    &ck.path,
                    format!(
                        "this embedding model pools by {} with {} dense layers: a GGUF says \
                         mean, cls or last, without dense layers",
                        e.pooling
                            .iter()
                            .map(|p| p.name())
                            .collect::<Vec<_>>()
                            .join("+"),
                        e.dense.len()
                    ),
                ));
            }
        }
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
/// its 2-D weights in `ty`. Tensors are read, converted and written one at a time, so the
/// export holds one tensor in memory, not the model.
pub fn write_gguf(ck: &Checkpoint, name: &str, ty: OutType, out: &Path) -> Result<Exported> {
    let c = &ck.config;
    // llama.cpp reads a bidirectional Gemma 3 as `gemma-embedding`; any other family's GGUF
    // is read as causal: the model would change meaning.
    if c.bidirectional && c.family != Family::Gemma3 {
        return Err(bad(
            &ck.path,
            "a bidirectional model (use_bidirectional_attention) has no GGUF galley writes: \
             llama.cpp would read it as a causal one",
        ));
    }
    // llama.cpp has no key for Gemma's score scale: it derives it from the shapes.
    if let Some(q) = c.query_pre_attn_scalar {
        let derived = crate::config::gemma_query_scalar(c);
        if q != derived {
            return Err(bad(
                &ck.path,
                format!(
                    "query_pre_attn_scalar {q}: llama.cpp derives {derived} for this shape, and a GGUF cannot say otherwise"
                ),
            ));
        }
    }
    // llama.cpp's SmolLM3 has no key for its NoPE layers: every fourth one, always.
    if let Some(n) = &c.no_rope
        && *n != crate::config::every_fourth(c.num_layers)
    {
        return Err(bad(
            &ck.path,
            "no_rope_layers: llama.cpp runs every fourth layer without RoPE, and a GGUF cannot say another pattern",
        ));
    }
    let embed = match ck.path.join("modules.json").is_file() {
        true => Some(crate::embed::Embedder::for_model(&ck.path)?),
        false => None,
    };
    // llama.cpp's `gemma-embedding` runs two dense layers after the pooling, no bias and no
    // activation, from the model's width out and back: anything else has no place there.
    let dense: Vec<&crate::embed::Dense> = embed.iter().flat_map(|e| &e.dense).collect();
    if !dense.is_empty() {
        let shapes: Vec<(usize, usize)> = dense
            .iter()
            .map(|d| d.parts().0.dims2())
            .collect::<candle_core::Result<_>>()?;
        let fits = arch(c) == "gemma-embedding"
            && dense.len() <= 2
            && dense.iter().all(|d| !d.parts().1 && !d.parts().2)
            && shapes.first().is_some_and(|s| s.1 == c.hidden_size)
            && shapes.last().is_some_and(|s| s.0 == c.hidden_size)
            && shapes.windows(2).all(|w| w[0].0 == w[1].1);
        if !fits {
            return Err(bad(
                &ck.path,
                format!(
                    "this embedding model's {} dense layers have no place in a GGUF: llama.cpp \
                     reads two, without bias or activation, after EmbeddingGemma's pooling, from \
                     the model's width and back to it",
                    dense.len()
                ),
            ));
        }
    }
    let md = metadata(ck, name, ty, embed.as_ref())?;
    let dev = Device::Cpu;
    let mut plan: Vec<Planned> = Vec::new();
    let mut in_f16 = Vec::new();
    for (hf, shape) in tensor_shapes(c) {
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
        plan.push(Planned {
            name: gguf_name_of(&hf, c.family),
            source: Some(hf),
            shape,
            dtype,
        });
    }
    // Llama 3.1's scaling: each frequency's divisor, llama.cpp's `rope_freqs.weight`.
    let rope_freqs = matches!(
        c.rope_scaling,
        RopeScaling::Llama3 { .. } | RopeScaling::Factors(_)
    );
    if rope_freqs {
        plan.push(Planned {
            name: "rope_freqs.weight".into(),
            source: None,
            shape: vec![c.head_dim / 2],
            dtype: GgmlDType::F32,
        });
    }
    // The dense layers, in f32 (a few MB at most): llama.cpp's `dense_2.weight` (out, in).
    let mut extra: std::collections::HashMap<String, Tensor> = Default::default();
    for (d, name) in dense.iter().zip(["dense_2.weight", "dense_3.weight"]) {
        plan.push(Planned {
            name: name.into(),
            source: None,
            shape: d.parts().0.dims().to_vec(),
            dtype: GgmlDType::F32,
        });
        extra.insert(name.into(), d.parts().0.clone());
    }
    let mut parameters = 0;
    let bytes = write_file(out, &md, &plan, |p| {
        let t = match &p.source {
            Some(source) => {
                let t = ck.weights.tensor(source, &p.shape, &dev)?;
                parameters += t.elem_count();
                match llama_cpp_heads(source, c) {
                    Some(h) => permute_rows(&t, h)?,
                    None => t,
                }
            }
            None if extra.contains_key(&p.name) => extra[&p.name].clone(),
            // rope_freqs: each frequency's divisor under the config's scaling.
            None => {
                let base = crate::layers::rotary::base_freq(c);
                let scaled = crate::layers::rotary::scaled_freq(c);
                let factors: Vec<f32> = base
                    .iter()
                    .zip(&scaled)
                    .map(|(b, s)| (b / s) as f32)
                    .collect();
                Tensor::from_vec(factors, p.shape[0], &dev)?
            }
        };
        QTensor::quantize(&t, p.dtype).map_err(|e| bad(&ck.path, format!("{}: {e}", p.name)))
    })?;
    Ok(Exported {
        tensors: plan.len(),
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
    let md = vec![
        (
            "general.architecture".to_string(),
            Value::String(arch(config).into()),
        ),
        ("general.type".into(), Value::String("adapter".into())),
        ("general.name".into(), Value::String(name.into())),
        ("adapter.type".into(), Value::String("lora".into())),
        (
            "adapter.lora.alpha".into(),
            Value::F32((adapter.scale * adapter.rank as f64) as f32),
        ),
    ];
    let mut plan = Vec::new();
    let mut tensors: Vec<Tensor> = Vec::new();
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
        let b = match llama_cpp_heads(hf, config) {
            Some(h) => permute_rows(b, h)?,
            None => b.clone(),
        };
        let g = gguf_name_of(hf, config.family);
        for (suffix, t) in [("lora_a", a.clone()), ("lora_b", b)] {
            plan.push(Planned {
                name: format!("{g}.{suffix}"),
                source: Some(hf.clone()),
                shape: t.dims().to_vec(),
                dtype,
            });
            tensors.push(t);
        }
    }
    let mut next = tensors.into_iter();
    let bytes = write_file(out, &md, &plan, |p| {
        let t = next.next().expect("one tensor per planned entry");
        Ok(QTensor::quantize(&t, p.dtype)?)
    })?;
    Ok(Exported {
        tensors: plan.len(),
        parameters: plan.iter().map(|p| p.shape.iter().product::<usize>()).sum(),
        bytes,
        in_f16: Vec::new(),
    })
}

/// One tensor of a GGUF being written: its llama.cpp name, the HF weight it is made from
/// (none for one computed from the config), its shape (rows first) and its type.
struct Planned {
    name: String,
    source: Option<String>,
    shape: Vec<usize>,
    dtype: GgmlDType,
}

/// GGUF's code for a tensor type (ggml's `ggml_type`), for the types galley writes.
fn type_code(t: GgmlDType) -> u32 {
    match t {
        GgmlDType::F32 => 0,
        GgmlDType::F16 => 1,
        GgmlDType::Q4_0 => 2,
        GgmlDType::Q4_1 => 3,
        GgmlDType::Q8_0 => 8,
        GgmlDType::Q6K => 14,
        other => unreachable!("galley does not write {other:?}"),
    }
}

fn put_str(w: &mut impl std::io::Write, s: &str) -> std::io::Result<()> {
    w.write_all(&(s.len() as u64).to_le_bytes())?;
    w.write_all(s.as_bytes())
}

/// A metadata value's GGUF type code and bytes (candle's writer keeps its encoder private).
fn put_value(w: &mut impl std::io::Write, v: &Value, typed: bool) -> std::io::Result<()> {
    let code = |v: &Value| match v {
        Value::U8(_) => 0u32,
        Value::I8(_) => 1,
        Value::U16(_) => 2,
        Value::I16(_) => 3,
        Value::U32(_) => 4,
        Value::I32(_) => 5,
        Value::F32(_) => 6,
        Value::Bool(_) => 7,
        Value::String(_) => 8,
        Value::Array(_) => 9,
        Value::U64(_) => 10,
        Value::I64(_) => 11,
        Value::F64(_) => 12,
    };
    if typed {
        w.write_all(&code(v).to_le_bytes())?;
    }
    match v {
        Value::U8(x) => w.write_all(&x.to_le_bytes()),
        Value::I8(x) => w.write_all(&x.to_le_bytes()),
        Value::U16(x) => w.write_all(&x.to_le_bytes()),
        Value::I16(x) => w.write_all(&x.to_le_bytes()),
        Value::U32(x) => w.write_all(&x.to_le_bytes()),
        Value::I32(x) => w.write_all(&x.to_le_bytes()),
        Value::F32(x) => w.write_all(&x.to_le_bytes()),
        Value::Bool(x) => w.write_all(&[u8::from(*x)]),
        Value::String(x) => put_str(w, x),
        Value::U64(x) => w.write_all(&x.to_le_bytes()),
        Value::I64(x) => w.write_all(&x.to_le_bytes()),
        Value::F64(x) => w.write_all(&x.to_le_bytes()),
        Value::Array(items) => {
            // The element type once, then the elements untyped. An empty array is typed as
            // strings: the one galley writes empty is a vocabulary's merges (a BPE with none),
            // which llama.cpp refuses in any other type.
            let elem = items.first().map_or(8, code);
            w.write_all(&elem.to_le_bytes())?;
            w.write_all(&(items.len() as u64).to_le_bytes())?;
            items.iter().try_for_each(|x| put_value(w, x, false))
        }
    }
}

/// Writes a GGUF (version 3, 32-byte alignment): the header, `md`, the tensor table for
/// `plan` (offsets from each type's block size), then each tensor as `make` produces it, one
/// at a time. Returns the file's size.
fn write_file(
    out: &Path,
    md: &[(String, Value)],
    plan: &[Planned],
    mut make: impl FnMut(&Planned) -> Result<QTensor>,
) -> Result<u64> {
    use std::io::{Seek, Write};
    const ALIGN: u64 = 32;
    let size = |p: &Planned| {
        let n: usize = p.shape.iter().product();
        (n / p.dtype.block_size() * p.dtype.type_size()) as u64
    };
    let io = |e: std::io::Error| bad(out, e);
    let mut w = std::io::BufWriter::new(std::fs::File::create(out).map_err(io)?);
    w.write_all(b"GGUF").map_err(io)?;
    w.write_all(&3u32.to_le_bytes()).map_err(io)?;
    w.write_all(&(plan.len() as u64).to_le_bytes())
        .map_err(io)?;
    w.write_all(&(md.len() as u64).to_le_bytes()).map_err(io)?;
    for (k, v) in md {
        put_str(&mut w, k).map_err(io)?;
        put_value(&mut w, v, true).map_err(io)?;
    }
    let mut offset = 0u64;
    for p in plan {
        put_str(&mut w, &p.name).map_err(io)?;
        w.write_all(&(p.shape.len() as u32).to_le_bytes())
            .map_err(io)?;
        // ggml's order: the innermost dimension first.
        for &d in p.shape.iter().rev() {
            w.write_all(&(d as u64).to_le_bytes()).map_err(io)?;
        }
        w.write_all(&type_code(p.dtype).to_le_bytes()).map_err(io)?;
        w.write_all(&offset.to_le_bytes()).map_err(io)?;
        offset += size(p).div_ceil(ALIGN) * ALIGN;
    }
    let pad = |w: &mut std::io::BufWriter<std::fs::File>| -> Result<()> {
        let at = w.stream_position().map_err(io)?;
        let fill = at.div_ceil(ALIGN) * ALIGN - at;
        w.write_all(&vec![0u8; fill as usize]).map_err(io)
    };
    pad(&mut w)?;
    for p in plan {
        let q = make(p)?;
        let data = q.data()?;
        if data.len() as u64 != size(p) {
            return Err(ModelError::Invalid(format!(
                "{}: {} bytes for `{}`, {} expected",
                out.display(),
                data.len(),
                p.name,
                size(p)
            )));
        }
        w.write_all(&data).map_err(io)?;
        pad(&mut w)?;
    }
    w.flush().map_err(io)?;
    w.stream_position().map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A SmolLM3 whose NoPE layers are not every fourth one cannot be said in a GGUF
    /// (llama.cpp assumes that pattern): refused before anything is written.
    #[test]
    fn a_smollm3_with_another_nope_pattern_is_refused() {
        let src = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/tiny/smollm3");
        let mut ck = crate::open(&src, crate::LoadOptions::default()).unwrap();
        ck.config.no_rope = Some(vec![false, true, false, true]);
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("x.gguf");
        let e = write_gguf(&ck, "x", OutType::F32, &out)
            .unwrap_err()
            .to_string();
        assert!(e.contains("every fourth layer"), "{e}");
        assert!(!out.exists());
    }

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

    /// An empty array (a vocabulary's merges when the BPE has none) is typed as strings:
    /// llama.cpp refuses `tokenizer.ggml.merges` of any other type, even empty.
    #[test]
    fn an_empty_array_is_typed_as_strings() {
        let mut buf = Vec::new();
        put_value(&mut buf, &Value::Array(vec![]), true).unwrap();
        // Array (9), element type string (8), no elements.
        assert_eq!(
            buf,
            [9u32.to_le_bytes(), 8u32.to_le_bytes(), [0; 4], [0; 4]].concat()
        );
    }

    #[test]
    fn out_types_parse_by_llama_cpps_names() {
        assert_eq!("Q8_0".parse::<OutType>(), Ok(OutType::Q8_0));
        assert!("q5_k".parse::<OutType>().unwrap_err().contains("q4_1"));
    }
}
