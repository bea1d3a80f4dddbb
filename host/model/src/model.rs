//! The Llama-family causal language model: token embeddings, decoder layers, final norm and
//! the LM head (tied to the embeddings where the checkpoint says so). The per-sequence KV
//! cache a generation carries between steps is `cache::Cache`.

pub use crate::cache::Cache;
use crate::config::LlamaConfig;
use crate::error::Result;
use crate::layers::{DecoderLayer, Linear, Mask, RmsNorm, Rotary};
use crate::weights::{LinearWeight, Weights};
use candle_core::{DType, Device, Tensor};

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
        if self.config.bidirectional {
            candle_core::bail!("a bidirectional model embeds whole texts; it does not decode");
        }
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
    /// room is zero-filled at the first pass (as candle's cache; one thread): 512 positions for
    /// 32 rows of SmolLM2 are 755 MB, where a batch of 40-token contexts needs 60.
    pub fn new_cache_with(&self, batch: usize, positions: usize) -> Cache {
        Cache {
            layers: (0..self.config.num_layers)
                .map(|_| crate::kv::Kv::new(positions))
                .collect(),
            valid: vec![Vec::new(); batch],
            dtype: None,
            window: self.config.sliding.as_ref().map_or(0, |s| s.window),
            spare: 0,
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
        if self.config.bidirectional {
            // Its tokens see the ones after them: nothing can be decoded from a cache, and a
            // pass's padding must come first (the kernels' window counts slots).
            let right_padded =
                pad.is_some_and(|p| p.iter().any(|r| r.windows(2).any(|w| !w[0] && w[1])));
            if past > 0 || right_padded {
                candle_core::bail!(
                    "a bidirectional model (use_bidirectional_attention) embeds whole texts in \
                     one left-padded pass; it does not generate"
                );
            }
        }
        // The first slot the sliding layers hold (all hold the same ones).
        let first = match (0..self.layers.len()).find(|&i| self.config.window(i).is_some()) {
            Some(i) => cache.first_held(i)?,
            None => 0,
        };
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
        // A bidirectional sliding layer sees half its window on either side, as transformers'
        // (|q - k| < window / 2 + 1).
        let window = self
            .config
            .sliding
            .as_ref()
            .map(|s| match self.config.bidirectional {
                true => s.window / 2,
                false => s.window,
            });
        let mask = self.mask(cache, past, t, None)?;
        // The sliding layers' (none where nothing is masked for them either), over the slots
        // they hold: from `first` on, once trimmed (`Cache::trim_sliding`). No window
        // reaches before `first`, so counting tokens from there finds the same windows. The
        // CPU's flags are shared, not copied again, where nothing was trimmed.
        let local_mask = match (window, &mask) {
            (Some(w), Some(Mask::Rows(v))) => Some(Mask::Rows(crate::cpu::Visible {
                window: Some(w),
                both_ways: v.both_ways,
                past: past - first,
                valid: match first {
                    0 => v.valid.clone(),
                    _ => std::sync::Arc::new(v.valid.iter().map(|r| r[first..].to_vec()).collect()),
                },
            })),
            (Some(w), _) => match self.mask(cache, past, t, Some(w))? {
                Some(Mask::Dense(m)) if first > 0 => {
                    Some(Mask::Dense(m.narrow(3, first, past + t - first)?))
                }
                m => m,
            },
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
        cache.trim_sliding(|i| self.config.window(i).is_some())?;
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
                both_ways: self.config.bidirectional,
            })));
        }
        let needs_mask = t > 1
            || cache.valid.iter().any(|v| v.iter().any(|x| !x))
            || window.is_some_and(|w| total > w);
        if self.config.bidirectional {
            // One pass, padding on the left only (`hidden` checks): a query sees every token,
            // or those at most `window` slots away.
            let mut m = vec![0f32; b * t * total];
            for (row, valid) in cache.valid.iter().enumerate() {
                for i in 0..t {
                    for (j, &v) in valid.iter().enumerate() {
                        if !v || window.is_some_and(|w| i.abs_diff(j) > w) {
                            m[(row * t + i) * total + j] = f32::NEG_INFINITY;
                        }
                    }
                    if !valid[i] {
                        m[(row * t + i) * total + i] = 0.0;
                    }
                }
            }
            return Ok(Some(Mask::Dense(Tensor::from_vec(
                m,
                (b, 1, t, total),
                &self.device,
            )?)));
        }
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
