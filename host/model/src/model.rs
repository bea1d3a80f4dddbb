//! The Llama-family causal language model: token embeddings, decoder layers, final norm and
//! the LM head (tied to the embeddings where the checkpoint says so), plus the per-sequence
//! KV cache a generation carries between steps.

use crate::config::LlamaConfig;
use crate::error::Result;
use crate::layers::{DecoderLayer, Linear, Mask, RmsNorm, Rotary};
use crate::weights::{LinearWeight, Weights};
use candle_core::{DType, Device, Tensor};
use candle_nn::kv_cache::KvCache;

pub struct Llama {
    pub config: LlamaConfig,
    embed_tokens: Tensor,
    layers: Vec<DecoderLayer>,
    norm: RmsNorm,
    lm_head: Linear,
    rotary: Rotary,
    /// The sliding layers' RoPE (Gemma's local base), when some layers slide.
    rotary_local: Option<Rotary>,
    /// The identity rotation, for the layers that attend without RoPE (SmolLM3's).
    rotary_none: Option<Rotary>,
    /// What embeddings are multiplied by (√hidden for Gemma).
    embed_scale: Option<f64>,
    device: Device,
    /// What new caches store keys and values in where the CPU kernel attends
    /// ([`Llama::set_kv_dtype`]).
    kv_dtype: DType,
}

/// What a batch of sequences has seen so far: cached keys/values per layer and, per row,
/// which cached positions are real tokens (left padding is not).
#[derive(Clone, Default)]
pub struct Cache {
    pub(crate) layers: Vec<KvCache>,
    /// `valid[row][pos]`
    pub(crate) valid: Vec<Vec<bool>>,
    /// The keys' and values' dtype on the CPU (`None`: the model's [`Llama::kv_dtype`]); a
    /// GPU keeps them in the activations' dtype.
    pub(crate) dtype: Option<DType>,
}

impl Cache {
    pub fn len(&self) -> usize {
        self.valid.first().map_or(0, Vec::len)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Keeps, repeats or drops rows: row i afterwards is row `rows[i]` now. A group of
    /// sequences that share a prompt (GRPO's samples) prefills it once and copies its keys and
    /// values; finished sequences leave the batch.
    pub fn select_rows(&mut self, rows: &[usize]) -> candle_core::Result<()> {
        let Some(dev) = self
            .layers
            .first()
            .and_then(|l| l.k_cache().all_data().as_ref())
            .map(|t| t.device().clone())
        else {
            self.valid = rows.iter().map(|&r| self.valid[r].clone()).collect();
            return Ok(());
        };
        let ids: Vec<u32> = rows.iter().map(|&r| r as u32).collect();
        let idx = Tensor::from_vec(ids, rows.len(), &dev)?;
        for kv in &mut self.layers {
            let (Some(k), Some(v)) = (kv.k()?, kv.v()?) else {
                continue;
            };
            // Room for 64 more positions (it doubles past that): zeroing the old capacity
            // every time a row finishes would cost more than the copy.
            let mut grown = KvCache::new(2, k.dim(2)? + 64);
            grown.append(
                &k.contiguous()?.index_select(&idx, 0)?,
                &v.contiguous()?.index_select(&idx, 0)?,
            )?;
            *kv = grown;
        }
        self.valid = rows.iter().map(|&r| self.valid[r].clone()).collect();
        Ok(())
    }

    /// Appends `other`'s rows after this cache's: the shorter side is left-padded with
    /// positions marked not valid (attention skips them, positions count valid ones only), so
    /// a sequence prefilled on its own joins a batch that is already decoding — continuous
    /// batching.
    pub fn join(&mut self, other: Cache) -> candle_core::Result<()> {
        // A clone shares the tensors (no copy), and a failed join leaves the batch as it was.
        *self = Cache::stack(vec![self.clone(), other])?;
        Ok(())
    }

    /// The rows of every part, in order, as one cache: each part left-padded to the longest as
    /// in `join`, all copied once (joining n parts one by one would copy the first n times).
    pub fn stack(parts: Vec<Cache>) -> candle_core::Result<Cache> {
        let mut parts: Vec<Cache> = parts.into_iter().filter(|c| !c.valid.is_empty()).collect();
        if parts.len() <= 1 {
            return Ok(parts.pop().unwrap_or_default());
        }
        let total = parts.iter().map(Cache::len).max().unwrap_or(0);
        let layers = parts[0].layers.len();
        let parts_dtype = parts[0].dtype;
        if parts.iter().any(|p| p.layers.len() != layers) {
            candle_core::bail!("joining caches of models with different layer counts");
        }
        let mut stacked = Vec::with_capacity(layers);
        for layer in 0..layers {
            // A part that has seen nothing yet (a sequence with nothing to resume from) is
            // all padding: its shape is any other part's.
            let Some(like) = parts
                .iter()
                .find_map(|p| p.layers[layer].k().ok().flatten())
            else {
                candle_core::bail!("joining caches that hold no keys");
            };
            let (_, h, _, d) = like.dims4()?;
            // Every part in the first's dtype (parts made with different settings).
            let same = |t: Tensor| {
                if t.dtype() == like.dtype() {
                    Ok(t)
                } else {
                    t.to_dtype(like.dtype())
                }
            };
            let (mut k_rows, mut v_rows) = (Vec::new(), Vec::new());
            for part in &parts {
                let kv = &part.layers[layer];
                let missing = total - part.len();
                let (k, v) = match (kv.k()?, kv.v()?) {
                    (Some(k), Some(v)) => (same(k.contiguous()?)?, same(v.contiguous()?)?),
                    _ if part.is_empty() => {
                        let z = Tensor::zeros((part.rows(), h, 0, d), like.dtype(), like.device())?;
                        (z.clone(), z)
                    }
                    _ => candle_core::bail!("joining a cache that holds no keys"),
                };
                if missing == 0 {
                    k_rows.push(k);
                    v_rows.push(v);
                    continue;
                }
                // Left padding along positions, then the part's own keys and values.
                let b = part.rows();
                let z = Tensor::zeros((b, h, missing, d), like.dtype(), like.device())?;
                k_rows.push(Tensor::cat(&[&z, &k], 2)?);
                v_rows.push(Tensor::cat(&[&z, &v], 2)?);
            }
            let mut grown = KvCache::new(2, total + 64);
            grown.append(&Tensor::cat(&k_rows, 0)?, &Tensor::cat(&v_rows, 0)?)?;
            stacked.push(grown);
        }
        let valid = parts
            .into_iter()
            .flat_map(|p| {
                let missing = total - p.len();
                p.valid.into_iter().map(move |v| {
                    let mut row = vec![false; missing];
                    row.extend(v);
                    row
                })
            })
            .collect();
        Ok(Cache {
            layers: stacked,
            valid,
            dtype: parts_dtype,
        })
    }

    /// Sequences held.
    pub fn rows(&self) -> usize {
        self.valid.len()
    }

    /// Positions `from..to` of row `row` as a one-row cache of their own (a copy), with room
    /// for `room` more before it reallocates: a prompt's keys and values kept for the next
    /// request that starts with the same tokens (`galley serve`'s prompt cache). Every copied
    /// position must be a real token (not padding).
    pub fn slice_row(
        &self,
        row: usize,
        from: usize,
        to: usize,
        room: usize,
    ) -> candle_core::Result<Cache> {
        let real = self
            .valid
            .get(row)
            .and_then(|v| v.get(from..to))
            .is_some_and(|v| from < to && v.iter().all(|x| *x));
        if !real {
            candle_core::bail!(
                "cache row {row} positions {from}..{to}: not all real tokens of a row held"
            );
        }
        let mut layers = Vec::with_capacity(self.layers.len());
        for kv in &self.layers {
            let (Some(k), Some(v)) = (kv.k()?, kv.v()?) else {
                candle_core::bail!("slicing a cache that holds no keys");
            };
            let cut = |t: &Tensor| {
                t.narrow(0, row, 1)?
                    .narrow(2, from, to - from)?
                    .contiguous()
            };
            let mut copy = KvCache::new(2, to - from + room);
            copy.append(&cut(&k)?, &cut(&v)?)?;
            layers.push(copy);
        }
        Ok(Cache {
            layers,
            valid: vec![vec![true; to - from]],
            dtype: self.dtype,
        })
    }

    /// Row `row`'s real positions (its padding left out) as a one-row cache of its own (a
    /// copy), with room for `room` more: what a finished sequence has seen, kept for a later
    /// generation that continues it (a rollout's next turn after its tool results).
    pub fn take_row(&self, row: usize, room: usize) -> candle_core::Result<Cache> {
        let Some(valid) = self.valid.get(row) else {
            candle_core::bail!("cache row {row}: the cache holds {} rows", self.rows());
        };
        let real: Vec<u32> = (0..valid.len() as u32)
            .filter(|&j| valid[j as usize])
            .collect();
        let n = real.len();
        // The positions to gather, made once on the cache's device (none: no padding).
        let mut idx: Option<Tensor> = None;
        let mut layers = Vec::with_capacity(self.layers.len());
        for kv in &self.layers {
            let (Some(k), Some(v)) = (kv.k()?, kv.v()?) else {
                candle_core::bail!("taking a row of a cache that holds no keys");
            };
            if idx.is_none() && n < valid.len() {
                idx = Some(Tensor::from_vec(real.clone(), n, k.device())?);
            }
            let cut = |t: &Tensor| {
                let t = t.narrow(0, row, 1)?.contiguous()?;
                match &idx {
                    Some(idx) => t.index_select(idx, 2),
                    None => Ok(t),
                }
            };
            let mut copy = KvCache::new(2, n + room.max(1));
            copy.append(&cut(&k)?, &cut(&v)?)?;
            layers.push(copy);
        }
        Ok(Cache {
            layers,
            valid: vec![vec![true; n]],
            dtype: self.dtype,
        })
    }

    /// Bytes of keys and values held (what a copy of this cache costs).
    pub fn bytes(&self) -> usize {
        self.layers
            .iter()
            .filter_map(|kv| Some((kv.k().ok()??, kv.v().ok()??)))
            .map(|(k, v)| (k.elem_count() + v.elem_count()) * k.dtype().size_in_bytes())
            .sum()
    }
}

/// Rows of different lengths as one `forward` input: each left-padded with `pad_id` to the
/// longest, and the flags marking the padding (`forward`'s `pad`), which attention skips and
/// positions do not count, so every row computes as if alone.
pub fn left_pad(rows: &[&[u32]], pad_id: u32) -> (Vec<Vec<u32>>, Vec<Vec<bool>>) {
    let longest = rows.iter().map(|r| r.len()).max().unwrap_or(0);
    rows.iter()
        .map(|r| {
            let n = longest - r.len();
            let ids = std::iter::repeat_n(pad_id, n)
                .chain(r.iter().copied())
                .collect();
            (ids, (0..longest).map(|i| i < n).collect())
        })
        .unzip()
}

impl Llama {
    pub fn load(w: &Weights, config: LlamaConfig, device: &Device) -> Result<Self> {
        let c = &config;
        let embed_name = "model.embed_tokens.weight";
        let embed_tokens = w.tensor(embed_name, &[c.vocab_size, c.hidden_size], device)?;
        let mut layers = Vec::with_capacity(c.num_layers);
        for i in 0..c.num_layers {
            layers.push(DecoderLayer::load(
                w,
                &format!("model.layers.{i}"),
                c,
                device,
            )?);
        }
        let norm = RmsNorm::load(w, "model.norm", c.hidden_size, c.rms_norm_eps, device)?;
        // Tied: the head reads the embedding matrix (kept quantized when the GGUF is).
        let head_name = if c.tie_word_embeddings || !w.has("lm_head.weight") {
            embed_name
        } else {
            "lm_head.weight"
        };
        let lm_head = match w.linear(head_name, c.vocab_size, c.hidden_size, device)? {
            // Tied and dense: share the embedding tensor instead of a second copy.
            LinearWeight::Dense(_) if head_name == embed_name => {
                Linear::from_weight(LinearWeight::Dense(embed_tokens.clone()))
            }
            weight => Linear::from_weight(weight).with_exact_activations(),
        };
        let rotary = Rotary::new(c, device)?;
        let rotary_none = match c.no_rope {
            Some(_) => Some(Rotary::identity(c, device)?),
            None => None,
        };
        let rotary_local = match &c.sliding {
            Some(s) => Some(Rotary::new(
                &LlamaConfig {
                    rope_theta: s.rope_theta,
                    rope_scaling: crate::config::RopeScaling::None,
                    ..c.clone()
                },
                device,
            )?),
            None => None,
        };
        // transformers multiplies by √hidden rounded to the weights' dtype.
        let embed_scale = c
            .family
            .is_gemma()
            .then(|| f64::from((c.hidden_size as f64).sqrt() as f32));
        let kv_dtype = default_kv_dtype(device, embed_tokens.dtype());
        Ok(Self {
            config,
            embed_tokens,
            layers,
            norm,
            lm_head,
            rotary,
            rotary_local,
            rotary_none,
            embed_scale,
            device: device.clone(),
            kv_dtype,
        })
    }

    /// What new caches keep keys and values in: f16 on a CPU (as llama.cpp's default cache
    /// type: a long context's decode step streams half the bytes, and a server holds twice
    /// the contexts in the same memory), the activations' dtype on a GPU.
    pub fn kv_dtype(&self) -> DType {
        self.kv_dtype
    }

    /// Keeps new caches' keys and values in `dtype`: f16 or f32 on a CPU (f32 adds no
    /// rounding to the activations'); on a GPU only the activations' dtype.
    pub fn set_kv_dtype(&mut self, dtype: DType) -> candle_core::Result<()> {
        let ok = if self.device.is_cpu() && self.dtype() == DType::F32 {
            matches!(dtype, DType::F16 | DType::F32)
        } else {
            dtype == self.dtype()
        };
        if !ok {
            candle_core::bail!(
                "a KV cache in {dtype:?} on this device (activations in {:?}): {}",
                self.dtype(),
                if self.device.is_cpu() {
                    "f16 or f32"
                } else {
                    "the activations' dtype only"
                }
            );
        }
        self.kv_dtype = dtype;
        Ok(())
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The activations' and the KV cache's dtype (the embeddings').
    pub fn dtype(&self) -> DType {
        self.embed_tokens.dtype()
    }

    /// One token per row through a fixed-capacity cache (`decode::Decoder` holds the buffers):
    /// `ids` and `positions` (b,) u32, each (slot, mask) pair as `Attention::step` takes them
    /// (`local` for the sliding layers' rings, which a model with them must be given), `kv`
    /// one (keys, values) pair per layer, a sliding layer's the size of its ring. Returns the
    /// logits, (b, vocab) f32.
    pub fn step(
        &self,
        ids: &Tensor,
        positions: &Tensor,
        (slot, mask): (&Tensor, &Tensor),
        local: Option<(&Tensor, &Tensor)>,
        kv: &[(Tensor, Tensor)],
    ) -> candle_core::Result<Tensor> {
        let b = ids.dim(0)?;
        let rotated = self.rotary.at_device(positions)?;
        let at = |r: &Option<crate::layers::rotary::Rotary>| match r {
            Some(r) => r.at_device(positions).map(Some),
            None => Ok(None),
        };
        let (unrotated, local_angles) = (at(&self.rotary_none)?, at(&self.rotary_local)?);
        // Each layer's angles, slot and mask: the identity rotation for SmolLM3's NoPE
        // layers, Gemma's local RoPE base and the ring's slot and mask for its sliding layers.
        type Of<'a> = (&'a crate::layers::rotary::Angles, &'a Tensor, &'a Tensor);
        let layer_of = |i: usize| -> candle_core::Result<Of<'_>> {
            Ok(match (self.config.window(i), &local_angles, &unrotated) {
                (_, _, Some(none)) if !self.config.rotates(i) => (none, slot, mask),
                (Some(_), angles, _) => {
                    let Some((slot, mask)) = local else {
                        candle_core::bail!(
                            "a step of a model with sliding layers needs their slot and mask"
                        )
                    };
                    (angles.as_ref().unwrap_or(&rotated), slot, mask)
                }
                _ => (&rotated, slot, mask),
            })
        };
        let hidden = self.config.hidden_size;
        let mut h = self
            .embed_tokens
            .index_select(ids, 0)?
            .reshape((b, 1, hidden))?;
        if let Some(s) = self.embed_scale {
            h = (h * s)?;
        }
        let Some(first) = self.layers.first() else {
            candle_core::bail!("a model without layers")
        };
        // A few rows on a GPU: five fused kernels a layer (`cuda_step`), the norms inside.
        #[cfg(feature = "cuda")]
        if h.device().is_cuda()
            && crate::decode::fused_step_enabled()
            && crate::cuda_src::fused_step_fits(b, hidden)
            && self.layers.iter().all(|l| l.fused_step_ok(h.dtype()))
        {
            let mut d = h.zeros_like()?;
            // Gemma: each layer's MLP output is normed before it joins the stream, by the
            // next layer's first kernel or, after the last layer, here.
            let mut d_norm = None;
            for (i, (layer, (k, v))) in self.layers.iter().zip(kv).enumerate() {
                let (angles, slot, mask) = layer_of(i)?;
                (h, d) = layer.step_fused((&h, &d, d_norm), angles, slot, mask, (k, v))?;
                d_norm = layer.mlp_out_norm();
            }
            if let Some(n) = d_norm {
                d = n.forward(&d)?;
            }
            let (_, a) = self.norm.add_forward(&h, &d)?;
            return self.logits(&a)?.reshape((b, self.config.vocab_size));
        }
        let mut a = first.input_norm().forward(&h)?;
        for (i, (layer, (k, v))) in self.layers.iter().zip(kv).enumerate() {
            let next = self
                .layers
                .get(i + 1)
                .map_or(&self.norm, |l| l.input_norm());
            let (angles, slot, mask) = layer_of(i)?;
            (h, a) = layer.step((&h, &a), angles, slot, mask, (k, v), next)?;
        }
        self.logits(&a)?.reshape((b, self.config.vocab_size))
    }

    /// The bytes `keep_dense_for_batches` would add, before it does.
    pub fn dense_copy_bytes(&mut self) -> usize {
        let mut bytes = self.lm_head.dense_copy_bytes();
        for l in &mut self.layers {
            bytes += l
                .linears_mut()
                .iter()
                .map(|lin| lin.dense_copy_bytes())
                .sum::<usize>();
        }
        bytes
    }

    /// Keeps a dequantized f32 copy of every quantized projection (and the LM head) for
    /// products of several rows — a server's batched decode — while single sequences keep the
    /// quantized kernels. Memory for throughput: returns the bytes added.
    pub fn keep_dense_for_batches(&mut self) -> candle_core::Result<usize> {
        let mut bytes = self.lm_head.keep_dense()?;
        for l in &mut self.layers {
            for lin in l.linears_mut() {
                bytes += lin.keep_dense()?;
            }
        }
        Ok(bytes)
    }

    /// An empty cache for `batch` sequences.
    pub fn new_cache(&self, batch: usize) -> Cache {
        // Grows as needed; 512 positions before the first reallocation.
        self.new_cache_with(batch, 512)
    }

    /// An empty cache for `batch` sequences with room for `positions` before it grows. The
    /// room is zero-filled at the first pass (candle's cache; one thread): 512 positions for
    /// 32 rows of SmolLM2 are 755 MB, where a batch of 40-token contexts needs 60.
    pub fn new_cache_with(&self, batch: usize, positions: usize) -> Cache {
        Cache {
            layers: (0..self.config.num_layers)
                .map(|_| KvCache::new(2, positions.max(1)))
                .collect(),
            valid: vec![Vec::new(); batch],
            dtype: None,
        }
    }

    /// [`Llama::new_cache_with`] keeping keys and values in the activations' dtype whatever
    /// [`Llama::kv_dtype`] says: scoring (log-likelihoods, perplexity) adds no rounding of its
    /// own, so its figures stay those of the reference implementations.
    pub fn new_exact_cache(&self, batch: usize, positions: usize) -> Cache {
        Cache {
            dtype: Some(self.dtype()),
            ..self.new_cache_with(batch, positions)
        }
    }

    /// Runs `tokens` (one row per sequence, equal lengths; `pad[row][i]` marks left padding)
    /// through the model after what `cache` holds, and returns the logits (b, t, vocab) — or
    /// only the last position's (b, 1, vocab) when `last_only`.
    pub fn forward(
        &self,
        tokens: &[Vec<u32>],
        pad: Option<&[Vec<bool>]>,
        cache: &mut Cache,
        last_only: bool,
    ) -> candle_core::Result<Tensor> {
        let x = self.hidden(tokens, pad, cache)?;
        let x = if last_only {
            x.narrow(1, x.dim(1)? - 1, 1)?
        } else {
            x
        };
        self.logits(&x)
    }

    /// The LM head's logits (f32) of final hidden states from [`Llama::hidden`], any shape
    /// ending in the hidden size: a caller that needs only some positions' logits gathers
    /// those rows first, and may take them in chunks to bound the logits' memory.
    pub fn logits(&self, hidden: &Tensor) -> candle_core::Result<Tensor> {
        let logits = self.lm_head.forward(hidden)?.to_dtype(DType::F32)?;
        match self.config.final_softcap {
            // Gemma 2: c·tanh(logit/c), as transformers computes it (in f32). On the CPU in
            // one vectorized pass (libm's tanh per logit of a 256K vocabulary was a fifth of
            // a decode step).
            Some(cap) if logits.device().is_cpu() => {
                use rayon::prelude::*;
                let dims = logits.dims().to_vec();
                let mut v = logits.flatten_all()?.to_vec1::<f32>()?;
                v.par_chunks_mut(1 << 16)
                    .for_each(|c| crate::kernels::rowwise::softcap_row(c, cap as f32));
                Tensor::from_vec(v, dims, logits.device())
            }
            Some(cap) => (logits / cap)?.tanh()? * cap,
            None => Ok(logits),
        }
    }

    /// [`Llama::forward`] without the LM head: the final norm's output (b, t, hidden).
    pub fn hidden(
        &self,
        tokens: &[Vec<u32>],
        pad: Option<&[Vec<bool>]>,
        cache: &mut Cache,
    ) -> candle_core::Result<Tensor> {
        let b = tokens.len();
        let t = tokens.first().map_or(0, Vec::len);
        if b == 0 || t == 0 || tokens.iter().any(|r| r.len() != t) || cache.valid.len() != b {
            candle_core::bail!(
                "forward needs {} rows of equal, non-zero length",
                cache.valid.len()
            );
        }
        let past = cache.len();
        for (row, valid) in cache.valid.iter_mut().enumerate() {
            valid.extend((0..t).map(|i| !pad.is_some_and(|p| p[row][i])));
        }
        // Positions count real tokens only, so a left-padded row starts at 0 like an unpadded one.
        let mut positions = Vec::with_capacity(b * t);
        for valid in &cache.valid {
            let before = valid[..past].iter().filter(|v| **v).count() as u32;
            let mut p = before;
            for &v in &valid[past..] {
                positions.push(p.saturating_sub(u32::from(!v)));
                p += u32::from(v);
            }
        }
        let angles = self.rotary.at(&positions, b, t)?;
        let local_angles = match &self.rotary_local {
            Some(r) => Some(r.at(&positions, b, t)?),
            None => None,
        };
        let no_angles = match &self.rotary_none {
            Some(r) => Some(r.at(&positions, b, t)?),
            None => None,
        };
        let window = self.config.sliding.as_ref().map(|s| s.window);
        let mask = self.mask(cache, past, t, None)?;
        // The sliding layers' (none where nothing is masked for them either); the CPU's
        // flags are shared, not copied again.
        let local_mask = match (window, &mask) {
            (Some(w), Some(Mask::Rows(v))) => Some(Mask::Rows(crate::cpu::Visible {
                window: Some(w),
                ..v.clone()
            })),
            (Some(w), _) => self.mask(cache, past, t, Some(w))?,
            (None, _) => None,
        };
        let kv_dtype = cache.dtype.unwrap_or(self.kv_dtype);
        let ids = Tensor::from_vec(tokens.concat(), b * t, &self.device)?;
        let mut x =
            self.embed_tokens
                .index_select(&ids, 0)?
                .reshape((b, t, self.config.hidden_size))?;
        if let Some(s) = self.embed_scale {
            x = (x * s)?;
        }
        for (i, (layer, kv)) in self.layers.iter().zip(cache.layers.iter_mut()).enumerate() {
            let (angles, mask) = match (self.config.window(i), &local_angles, &no_angles) {
                (_, _, Some(none)) if !self.config.rotates(i) => (none, mask.as_ref()),
                (Some(_), Some(local), _) => (local, local_mask.as_ref()),
                _ => (&angles, mask.as_ref()),
            };
            x = layer.forward(&x, angles, mask, kv, kv_dtype)?;
        }
        self.norm.forward(&x)
    }

    /// What a pass of `t` tokens after `past` cached positions may attend to (`cache.valid`
    /// already covers them), within the last `window` keys for a sliding layer: the CPU
    /// kernel's flags, an additive mask elsewhere, or `None` where nothing is masked.
    fn mask(
        &self,
        cache: &Cache,
        past: usize,
        t: usize,
        window: Option<usize>,
    ) -> candle_core::Result<Option<Mask>> {
        let b = cache.valid.len();
        let total = past + t;
        if self.device.is_cpu() && self.dtype() == DType::F32 {
            // The CPU kernel reads the flags themselves: no (b, t, total) tensor to build.
            return Ok(Some(Mask::Rows(crate::cpu::Visible {
                past,
                valid: std::sync::Arc::new(cache.valid.clone()),
                window,
            })));
        }
        let needs_mask = t > 1
            || cache.valid.iter().any(|v| v.iter().any(|x| !x))
            || window.is_some_and(|w| total > w);
        if !needs_mask {
            return Ok(None);
        }
        let mut m = vec![0f32; b * t * total];
        for (row, valid) in cache.valid.iter().enumerate() {
            let starts = window.map(|w| crate::cpu::window_starts(valid, past, t, w));
            for i in 0..t {
                let first = starts.as_ref().map_or(0, |s| s[i]);
                for j in 0..total {
                    if j > past + i || !valid[j] || j < first {
                        m[(row * t + i) * total + j] = f32::NEG_INFINITY;
                    }
                }
                // A padding query sees itself, so its softmax is defined (its output is unused).
                if !valid[past + i] {
                    m[(row * t + i) * total + past + i] = 0.0;
                }
            }
        }
        Ok(Some(Mask::Dense(Tensor::from_vec(
            m,
            (b, 1, t, total),
            &self.device,
        )?)))
    }
}

/// f16 keys and values where the CPU kernel attends (f32 activations on a CPU), else the
/// activations' dtype.
fn default_kv_dtype(device: &Device, activations: DType) -> DType {
    if device.is_cpu() && activations == DType::F32 {
        DType::F16
    } else {
        activations
    }
}
