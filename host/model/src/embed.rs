//! Text embeddings: one vector per text from the model's final hidden states, computed the way
//! the checkpoint's publisher computes it. A sentence-transformers folder says how in its
//! `modules.json` (the transformer, then a pooling of its token states, dense layers, a
//! normalization: Qwen3-Embedding pools its last token and normalizes); a GGUF says it in
//! `{arch}.pooling_type`, as llama.cpp's converter writes it from the same folder. A causal LM
//! that says nothing pools its last token and normalizes, vLLM's default for decoder models.
//! Texts are grouped by length into left-padded passes without a KV cache's rounding
//! ([`Llama::new_exact_cache`]); a row's vector does not depend on what it was batched with
//! beyond the order of float sums.

use crate::error::{ModelError, Result, bad};
use crate::model::{Llama, left_pad};
use crate::tokenizer::Tokenizer;
use candle_core::{DType, Device, Tensor};
use std::collections::BTreeMap;
use std::path::Path;

/// How token states become one vector (sentence-transformers' pooling modes; several are
/// concatenated in the order given).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pool {
    /// The first token's state.
    Cls,
    /// The element-wise maximum over the tokens.
    Max,
    /// The mean over the tokens.
    Mean,
    /// The sum over the tokens divided by the square root of their count.
    MeanSqrtLen,
    /// The mean weighted by position (1 for the first token, n for the last).
    WeightedMean,
    /// The last token's state (a causal model's summary of the whole text).
    Last,
}

impl Pool {
    /// sentence-transformers' name for the mode (`lasttoken`, `mean_sqrt_len_tokens`...);
    /// also llama.cpp's (`last`) and the short forms galley's flags take.
    pub fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "cls" => Self::Cls,
            "max" => Self::Max,
            "mean" => Self::Mean,
            "mean_sqrt_len_tokens" | "mean_sqrt_len" => Self::MeanSqrtLen,
            "weightedmean" => Self::WeightedMean,
            "lasttoken" | "last" => Self::Last,
            _ => return None,
        })
    }

    /// Modes joined by `+` (`mean+cls`), as `--pooling` takes them; an unknown one is named.
    pub fn parse_list(value: &str) -> std::result::Result<Vec<Self>, String> {
        value
            .split('+')
            .map(|m| {
                Self::parse(m.trim()).ok_or_else(|| {
                    format!(
                        "pooling {value}: `{m}` is not a pooling mode (mean, cls, last, max, \
                         mean_sqrt_len_tokens, weightedmean)"
                    )
                })
            })
            .collect()
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Cls => "cls",
            Self::Max => "max",
            Self::Mean => "mean",
            Self::MeanSqrtLen => "mean_sqrt_len_tokens",
            Self::WeightedMean => "weightedmean",
            Self::Last => "lasttoken",
        }
    }

    /// llama.cpp's `pooling_type` number (GGUF), where it has one.
    pub fn gguf_code(self) -> Option<u32> {
        match self {
            Self::Mean => Some(1),
            Self::Cls => Some(2),
            Self::Last => Some(3),
            _ => None,
        }
    }
}

/// A dense layer after the pooling (sentence-transformers' `Dense`: EmbeddingGemma's two).
#[derive(Debug, Clone)]
pub struct Dense {
    /// (out, in), f32.
    weight: Tensor,
    bias: Option<Tensor>,
    tanh: bool,
}

/// How a model's texts become vectors.
#[derive(Debug, Clone)]
pub struct Embedder {
    pub pooling: Vec<Pool>,
    pub dense: Vec<Dense>,
    /// Divide each vector by its L2 norm (after any truncation to `dimensions`).
    pub normalize: bool,
    /// Named texts put before a text (`prompts` of `config_sentence_transformers.json`:
    /// Qwen3-Embedding's `query` instruction).
    pub prompts: BTreeMap<String, String>,
    /// The prompt used when none is named.
    pub default_prompt: Option<String>,
    /// Where the settings came from, for messages (`galley embed` prints it).
    pub source: String,
}

fn json_file(path: &Path) -> Result<serde_json::Value> {
    let text = std::fs::read_to_string(path).map_err(|e| bad(path, e))?;
    serde_json::from_str(&text).map_err(|e| bad(path, format!("not valid JSON: {e}")))
}

impl Embedder {
    /// What a plain causal LM gets: its last token, normalized.
    pub fn last_token() -> Self {
        Self {
            pooling: vec![Pool::Last],
            dense: Vec::new(),
            normalize: true,
            prompts: BTreeMap::new(),
            default_prompt: None,
            source: "the default for a causal model (last token, normalized)".into(),
        }
    }

    /// The settings `path` (a model folder or a GGUF file) carries, or [`Embedder::last_token`].
    pub fn for_model(path: &Path) -> Result<Self> {
        if path.is_dir() {
            let modules = path.join("modules.json");
            if modules.is_file() {
                return Self::sentence_transformers(path, &modules);
            }
            return Ok(Self::last_token());
        }
        if path.extension().is_some_and(|e| e == "gguf") {
            return Self::gguf(path);
        }
        Ok(Self::last_token())
    }

    fn gguf(path: &Path) -> Result<Self> {
        use candle_core::quantized::gguf_file::{Content, Value};
        let mut f = std::fs::File::open(path).map_err(|e| bad(path, e))?;
        let content =
            Content::read(&mut f).map_err(|e| bad(path, format!("not a GGUF file: {e}")))?;
        // EmbeddingGemma's dense layers, in llama.cpp's names, applied after the pooling.
        let mut dense = Vec::new();
        for name in ["dense_2.weight", "dense_3.weight"] {
            if content.tensor_infos.contains_key(name) {
                let t = content
                    .tensor(&mut f, name, &Device::Cpu)
                    .and_then(|q| q.dequantize(&Device::Cpu))
                    .map_err(|e| bad(path, format!("tensor `{name}`: {e}")))?;
                dense.push(Dense::plain(t)?);
            }
        }
        let md = content.metadata;
        let arch = md
            .get("general.architecture")
            .and_then(|v| v.to_string().ok())
            .cloned()
            .unwrap_or_default();
        let key = format!("{arch}.pooling_type");
        let code = match md.get(&key) {
            Some(Value::U32(c)) => *c,
            Some(Value::I32(c)) => *c as u32,
            Some(other) => {
                return Err(bad(path, format!("`{key}` is {other:?}, not a number")));
            }
            None => 0,
        };
        let pool = match code {
            // llama.cpp's LLAMA_POOLING_TYPE_NONE: per-token states, no sentence vector.
            0 => return Ok(Self::last_token()),
            1 => Pool::Mean,
            2 => Pool::Cls,
            3 => Pool::Last,
            4 => {
                return Err(bad(
                    path,
                    format!("`{key}` = 4 (rank): a reranker, not an embedding model"),
                ));
            }
            n => {
                return Err(bad(
                    path,
                    format!("`{key}` = {n}: not a pooling galley knows"),
                ));
            }
        };
        Ok(Self {
            pooling: vec![pool],
            dense,
            // llama.cpp's server and `llama-embedding` normalize by default.
            normalize: true,
            prompts: BTreeMap::new(),
            default_prompt: None,
            source: format!("{}: `{key}` = {code}", path.display()),
        })
    }

    fn sentence_transformers(dir: &Path, modules: &Path) -> Result<Self> {
        let list = json_file(modules)?;
        let Some(list) = list.as_array() else {
            return Err(bad(modules, "expected a list of modules"));
        };
        let mut e = Self {
            pooling: Vec::new(),
            dense: Vec::new(),
            normalize: false,
            prompts: BTreeMap::new(),
            default_prompt: None,
            source: modules.display().to_string(),
        };
        let mut seen_transformer = false;
        for (i, m) in list.iter().enumerate() {
            let kind = m.get("type").and_then(|t| t.as_str()).unwrap_or_default();
            let sub = m.get("path").and_then(|p| p.as_str()).unwrap_or_default();
            let at = |what: &str| format!("module {i} (`{kind}`): {what}");
            if sub.contains("..") || Path::new(sub).is_absolute() {
                return Err(bad(modules, at(&format!("path `{sub}` leaves the folder"))));
            }
            let sub = dir.join(sub);
            match kind.rsplit('.').next().unwrap_or_default() {
                "Transformer" if i == 0 => seen_transformer = true,
                "Pooling" if seen_transformer && e.pooling.is_empty() => {
                    e.pooling = pooling_config(&sub.join("config.json"))?;
                }
                "Dense" if !e.pooling.is_empty() && !e.normalize => {
                    e.dense.push(Dense::load(&sub)?);
                }
                "Normalize" if !e.pooling.is_empty() => e.normalize = true,
                _ => {
                    return Err(bad(
                        modules,
                        at(
                            "galley reads a Transformer, then a Pooling, Dense layers and a \
                            Normalize, in that order",
                        ),
                    ));
                }
            }
        }
        if e.pooling.is_empty() {
            return Err(bad(modules, "no Pooling module after the Transformer"));
        }
        let cfg = dir.join("config_sentence_transformers.json");
        if cfg.is_file() {
            let v = json_file(&cfg)?;
            if let Some(p) = v.get("prompts").and_then(|p| p.as_object()) {
                for (name, text) in p {
                    let Some(text) = text.as_str() else {
                        return Err(bad(&cfg, format!("prompt `{name}` is not a string")));
                    };
                    e.prompts.insert(name.clone(), text.to_string());
                }
            }
            if let Some(d) = v.get("default_prompt_name").and_then(|d| d.as_str()) {
                if !e.prompts.contains_key(d) {
                    return Err(bad(
                        &cfg,
                        format!("default_prompt_name `{d}` is not a prompt"),
                    ));
                }
                e.default_prompt = Some(d.to_string());
            }
        }
        Ok(e)
    }

    /// Overrides the pooling (`--pooling`); the dense layers, if any, expect the checkpoint's
    /// own, so a different width is refused by [`Embedder::embed`].
    pub fn with_pooling(mut self, pooling: Vec<Pool>) -> Self {
        self.source = format!("{} (pooling set to {})", self.source, names(&pooling));
        self.pooling = pooling;
        self
    }

    /// The length of the vectors for a model of `hidden` width (before any truncation).
    pub fn dimension(&self, hidden: usize) -> usize {
        match self.dense.last() {
            Some(d) => d.weight.dims()[0],
            None => hidden * self.pooling.len(),
        }
    }

    /// `text` with the named prompt (or the default one) before it, as sentence-transformers
    /// joins them, tokenized with the tokenizer's own special tokens (BOS, Qwen3-Embedding's
    /// closing EOS). An unknown prompt name is an error that lists the known ones.
    pub fn tokens(&self, tok: &Tokenizer, text: &str, prompt: Option<&str>) -> Result<Vec<u32>> {
        let name = prompt.or(self.default_prompt.as_deref());
        let prefix = match name {
            Some(n) => self.prompts.get(n).map(String::as_str).ok_or_else(|| {
                ModelError::Invalid(format!(
                    "no prompt `{n}` (the model's: {})",
                    match self.prompts.is_empty() {
                        true => "none".to_string(),
                        false => self.prompts.keys().cloned().collect::<Vec<_>>().join(", "),
                    }
                ))
            })?,
            None => "",
        };
        tok.encode(&format!("{prefix}{text}"), true)
    }

    /// Refuses what [`Embedder::embed`] cannot do for a model of `config`, naming the input:
    /// an empty row, one past the model's context, `dimensions` of 0 or more than the vectors
    /// have.
    pub fn check(
        &self,
        c: &crate::LlamaConfig,
        rows: &[Vec<u32>],
        dimensions: Option<usize>,
    ) -> Result<()> {
        let full = self.dimension(c.hidden_size);
        if let Some(d) = dimensions
            && (d == 0 || d > full)
        {
            return Err(ModelError::Invalid(format!(
                "dimensions {d}: the model's vectors have {full}"
            )));
        }
        for (i, r) in rows.iter().enumerate() {
            if r.is_empty() {
                return Err(ModelError::Invalid(format!("input {i} has no tokens")));
            }
            if r.len() > c.max_position_embeddings {
                return Err(ModelError::Invalid(format!(
                    "input {i} has {} tokens; the model's context is {}",
                    r.len(),
                    c.max_position_embeddings
                )));
            }
        }
        Ok(())
    }

    /// The rows (by index) each pass takes: sorted by length, so little is padded, and at
    /// most `budget` padded tokens a pass (a longer row alone).
    pub fn groups(rows: &[Vec<u32>], budget: usize) -> Vec<Vec<usize>> {
        let mut order: Vec<usize> = (0..rows.len()).collect();
        order.sort_by_key(|&i| rows[i].len());
        let mut out = Vec::new();
        let mut group: Vec<usize> = Vec::new();
        for i in order {
            // Sorted by length: the row joining is the group's longest.
            if !group.is_empty() && (group.len() + 1) * rows[i].len() > budget {
                out.push(std::mem::take(&mut group));
            }
            group.push(i);
        }
        if !group.is_empty() {
            out.push(group);
        }
        out
    }

    /// One vector per row of token ids, truncated to `dimensions` when given (Matryoshka
    /// models: before the normalization, as OpenAI's API and vLLM give it). Rows go in passes
    /// of at most `budget` padded tokens ([`Embedder::groups`]).
    pub fn embed(
        &self,
        model: &Llama,
        rows: &[Vec<u32>],
        dimensions: Option<usize>,
        budget: usize,
    ) -> Result<Vec<Vec<f32>>> {
        self.check(&model.config, rows, dimensions)?;
        let mut out: Vec<Vec<f32>> = vec![Vec::new(); rows.len()];
        for group in Self::groups(rows, budget) {
            let pass: Vec<&[u32]> = group.iter().map(|&i| &rows[i][..]).collect();
            for (i, v) in group
                .into_iter()
                .zip(self.embed_pass(model, &pass, dimensions)?)
            {
                out[i] = v;
            }
        }
        Ok(out)
    }

    /// The vectors of rows [`Embedder::check`] has passed, in one left-padded pass.
    pub fn embed_pass(
        &self,
        model: &Llama,
        rows: &[&[u32]],
        dimensions: Option<usize>,
    ) -> Result<Vec<Vec<f32>>> {
        self.pool_group(model, rows)?
            .into_iter()
            .map(|v| self.finish(v, dimensions))
            .collect()
    }

    /// The pooled states of one left-padded pass.
    fn pool_group(&self, model: &Llama, group: &[&[u32]]) -> Result<Vec<Vec<f32>>> {
        let (ids, pad) = left_pad(group, 0);
        let t = ids[0].len();
        let mut cache = model.new_exact_cache(group.len(), t);
        let any_pad = pad.iter().any(|r| r.iter().any(|p| *p));
        let hidden = model.hidden(&ids, any_pad.then_some(&pad[..]), &mut cache)?;
        let h = hidden.dim(2)?;
        let states = hidden
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        Ok(group
            .iter()
            .enumerate()
            .map(|(row, r)| {
                // Left padding: the row's tokens are its last `n` positions.
                let n = r.len();
                let first = (row * t + t - n) * h;
                let tokens: Vec<&[f32]> = states[first..(row + 1) * t * h].chunks(h).collect();
                self.pooling
                    .iter()
                    .flat_map(|p| pool(*p, &tokens))
                    .collect()
            })
            .collect())
    }

    fn finish(&self, mut v: Vec<f32>, dimensions: Option<usize>) -> Result<Vec<f32>> {
        for d in &self.dense {
            v = d.forward(&v)?;
        }
        if let Some(d) = dimensions {
            v.truncate(d);
        }
        if self.normalize {
            // torch's F.normalize: divide by max(‖v‖, 1e-12).
            let norm = v.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
            let scale = 1.0 / norm.max(1e-12);
            v.iter_mut()
                .for_each(|x| *x = (f64::from(*x) * scale) as f32);
        }
        Ok(v)
    }
}

/// One pooling of a row's token states (each `h` wide, in order).
fn pool(p: Pool, tokens: &[&[f32]]) -> Vec<f32> {
    let h = tokens[0].len();
    let n = tokens.len();
    let weighted_sum = |w: &dyn Fn(usize) -> f64| {
        let mut acc = vec![0f64; h];
        for (i, t) in tokens.iter().enumerate() {
            let wi = w(i);
            acc.iter_mut()
                .zip(*t)
                .for_each(|(a, x)| *a += wi * f64::from(*x));
        }
        acc
    };
    match p {
        Pool::Cls => tokens[0].to_vec(),
        Pool::Last => tokens[n - 1].to_vec(),
        Pool::Max => (0..h)
            .map(|j| {
                tokens
                    .iter()
                    .map(|t| t[j])
                    .fold(f32::NEG_INFINITY, f32::max)
            })
            .collect(),
        Pool::Mean => weighted_sum(&|_| 1.0)
            .into_iter()
            .map(|s| (s / n as f64) as f32)
            .collect(),
        Pool::MeanSqrtLen => weighted_sum(&|_| 1.0)
            .into_iter()
            .map(|s| (s / (n as f64).sqrt()) as f32)
            .collect(),
        Pool::WeightedMean => {
            // sentence-transformers weighs by position in the padded batch; with its right
            // padding that is 1..n over a row's own tokens, whatever the batch.
            let total = (n * (n + 1) / 2) as f64;
            weighted_sum(&|i| (i + 1) as f64)
                .into_iter()
                .map(|s| (s / total) as f32)
                .collect()
        }
    }
}

fn names(pooling: &[Pool]) -> String {
    pooling
        .iter()
        .map(|p| p.name())
        .collect::<Vec<_>>()
        .join("+")
}

/// A Pooling module's `config.json`: sentence-transformers 6's `pooling_mode` (a name or a
/// list) or the older `pooling_mode_*` flags (in their fixed order).
fn pooling_config(path: &Path) -> Result<Vec<Pool>> {
    let v = json_file(path)?;
    if v.get("include_prompt").and_then(|b| b.as_bool()) == Some(false) {
        return Err(bad(
            path,
            "`include_prompt: false` (pooling that leaves the prompt's tokens out) is not supported",
        ));
    }
    let parse = |name: &str| {
        Pool::parse(name).ok_or_else(|| bad(path, format!("unknown pooling mode `{name}`")))
    };
    let modes = match v.get("pooling_mode") {
        Some(serde_json::Value::String(s)) => vec![parse(s)?],
        Some(serde_json::Value::Array(a)) => a
            .iter()
            .map(|m| parse(m.as_str().unwrap_or_default()))
            .collect::<Result<_>>()?,
        Some(_) => return Err(bad(path, "`pooling_mode` is neither a name nor a list")),
        None => [
            ("pooling_mode_cls_token", Pool::Cls),
            ("pooling_mode_max_tokens", Pool::Max),
            ("pooling_mode_mean_tokens", Pool::Mean),
            ("pooling_mode_mean_sqrt_len_tokens", Pool::MeanSqrtLen),
            ("pooling_mode_weightedmean_tokens", Pool::WeightedMean),
            ("pooling_mode_lasttoken", Pool::Last),
        ]
        .into_iter()
        .filter(|(k, _)| v.get(*k).and_then(|b| b.as_bool()) == Some(true))
        .map(|(_, p)| p)
        .collect(),
    };
    if modes.is_empty() {
        return Err(bad(path, "no pooling mode is set"));
    }
    Ok(modes)
}

impl Dense {
    /// A GGUF's dense layer (llama.cpp's `dense_2` / `dense_3`: no bias, no activation).
    pub fn plain(weight: Tensor) -> Result<Self> {
        Ok(Self {
            weight: weight.to_dtype(DType::F32)?,
            bias: None,
            tanh: false,
        })
    }

    /// The (out, in) f32 weight, and whether a bias or tanh follows the product.
    pub fn parts(&self) -> (&Tensor, bool, bool) {
        (&self.weight, self.bias.is_some(), self.tanh)
    }

    /// A Dense module's folder: `config.json` (`in_features`, `out_features`, `bias`,
    /// `activation_function`) and `model.safetensors` (`linear.weight`, `linear.bias`).
    fn load(dir: &Path) -> Result<Self> {
        let cfg_path = dir.join("config.json");
        let cfg = json_file(&cfg_path)?;
        let dim = |k: &str| {
            cfg.get(k)
                .and_then(|v| v.as_u64())
                .map(|v| v as usize)
                .ok_or_else(|| bad(&cfg_path, format!("`{k}` is missing or not a number")))
        };
        let (inp, out) = (dim("in_features")?, dim("out_features")?);
        let act = cfg
            .get("activation_function")
            .and_then(|a| a.as_str())
            .unwrap_or("torch.nn.modules.activation.Tanh");
        let tanh = match act.rsplit('.').next() {
            Some("Identity") => false,
            Some("Tanh") => true,
            _ => {
                return Err(bad(
                    &cfg_path,
                    format!("activation `{act}`: galley runs Identity and Tanh"),
                ));
            }
        };
        let file = dir.join("model.safetensors");
        if !file.is_file() {
            return Err(bad(
                dir,
                "no model.safetensors (galley does not read pickled pytorch_model.bin)",
            ));
        }
        let tensors = candle_core::safetensors::load(&file, &Device::Cpu)
            .map_err(|e| bad(&file, format!("not a valid safetensors file: {e}")))?;
        let get = |name: &str, shape: &[usize]| -> Result<Option<Tensor>> {
            let Some(t) = tensors.get(name) else {
                return Ok(None);
            };
            if t.dims() != shape {
                return Err(ModelError::ShapeMismatch {
                    path: file.clone(),
                    tensor: name.into(),
                    found: t.dims().to_vec(),
                    expected: shape.to_vec(),
                });
            }
            Ok(Some(t.to_dtype(DType::F32)?))
        };
        let weight =
            get("linear.weight", &[out, inp])?.ok_or_else(|| ModelError::MissingTensor {
                path: file.clone(),
                tensor: "linear.weight".into(),
            })?;
        let bias = match cfg.get("bias").and_then(|b| b.as_bool()).unwrap_or(true) {
            true => Some(
                get("linear.bias", &[out])?.ok_or_else(|| ModelError::MissingTensor {
                    path: file.clone(),
                    tensor: "linear.bias".into(),
                })?,
            ),
            false => None,
        };
        Ok(Self { weight, bias, tanh })
    }

    fn forward(&self, v: &[f32]) -> Result<Vec<f32>> {
        let inp = self.weight.dims()[1];
        if v.len() != inp {
            return Err(ModelError::Invalid(format!(
                "a dense layer takes {inp} values and the pooling gives {}",
                v.len()
            )));
        }
        let x = Tensor::from_slice(v, (1, inp), &Device::Cpu)?;
        let mut y = x.matmul(&self.weight.t()?)?;
        if let Some(b) = &self.bias {
            y = y.broadcast_add(b)?;
        }
        if self.tanh {
            y = y.tanh()?;
        }
        Ok(y.flatten_all()?.to_vec1::<f32>()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn poolings_over_three_tokens() {
        let rows: [&[f32]; 3] = [&[1.0, -2.0], &[3.0, 0.0], &[-1.0, 4.0]];
        assert_eq!(pool(Pool::Cls, &rows), vec![1.0, -2.0]);
        assert_eq!(pool(Pool::Last, &rows), vec![-1.0, 4.0]);
        assert_eq!(pool(Pool::Max, &rows), vec![3.0, 4.0]);
        assert_eq!(pool(Pool::Mean, &rows), vec![1.0, 2.0 / 3.0]);
        let s = 3f64.sqrt();
        assert_eq!(
            pool(Pool::MeanSqrtLen, &rows),
            vec![(3.0 / s) as f32, (2.0 / s) as f32]
        );
        // Weights 1, 2, 3 over 6.
        assert_eq!(
            pool(Pool::WeightedMean, &rows),
            vec![(4.0 / 6.0) as f32, (10.0 / 6.0) as f32]
        );
    }

    #[test]
    fn pooling_modes_join_with_plus_and_a_typo_is_named() {
        assert_eq!(Pool::parse_list("last").unwrap(), vec![Pool::Last]);
        assert_eq!(
            Pool::parse_list("mean+cls").unwrap(),
            vec![Pool::Mean, Pool::Cls]
        );
        let e = Pool::parse_list("mean+avg").unwrap_err();
        assert!(e.contains("`avg`") && e.contains("pooling mean+avg"), "{e}");
    }

    #[test]
    fn passes_group_rows_by_length_within_the_budget() {
        let rows: Vec<Vec<u32>> = [5, 1, 9, 2, 30, 2].iter().map(|&n| vec![7; n]).collect();
        // Sorted: 1, 2, 2, 5, 9, 30; a pass holds at most 12 padded tokens (three rows of 2;
        // four of 5 would be 20), a longer row alone.
        assert_eq!(
            Embedder::groups(&rows, 12),
            vec![vec![1, 3, 5], vec![0], vec![2], vec![4]]
        );
        assert_eq!(Embedder::groups(&rows, 1000), vec![vec![1, 3, 5, 0, 2, 4]]);
        assert!(Embedder::groups(&[], 12).is_empty());
    }

    #[test]
    fn pooling_configs_old_and_new() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("config.json");
        let read = |text: &str| {
            std::fs::write(&p, text).unwrap();
            pooling_config(&p)
        };
        assert_eq!(
            read(r#"{"pooling_mode": "lasttoken"}"#).unwrap(),
            vec![Pool::Last]
        );
        assert_eq!(
            read(r#"{"pooling_mode": ["mean", "cls"]}"#).unwrap(),
            vec![Pool::Mean, Pool::Cls]
        );
        assert_eq!(
            read(r#"{"pooling_mode_lasttoken": true, "pooling_mode_cls_token": true}"#).unwrap(),
            vec![Pool::Cls, Pool::Last]
        );
        let e = read(r#"{"pooling_mode": "median"}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("config.json") && e.contains("median"), "{e}");
        let e = read(r#"{"pooling_mode": "mean", "include_prompt": false}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("include_prompt"), "{e}");
        assert!(read(r#"{"pooling_mode_mean_tokens": false}"#).is_err());
    }
}
