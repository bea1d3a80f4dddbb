//! Grouped-query self-attention with a KV cache. q/k/v are one fused projection; queries
//! that share a key/value head are multiplied against it as one group, so the cached keys
//! and values are never repeated per query head.

use super::rotary::Angles;
use super::{Linear, RmsNorm};
use crate::config::LlamaConfig;
use crate::error::Result;
use crate::kv::Kv;
use crate::weights::Weights;
use candle_core::{DType, Device, Tensor};

/// What a forward pass's queries may see.
#[derive(Debug, Clone)]
pub enum Mask {
    /// Additive, (b, 1, t, past + t): GPUs, through candle's ops.
    Dense(Tensor),
    /// The CPU kernel's own form (`cpu::attend` applies it inside the kernel).
    Rows(crate::cpu::Visible),
}

/// What the fused decode step reads of an attention layer (`Attention::fused_parts`).
// Off CUDA only `fused_step_ok` reads it, for the weights.
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
pub(crate) struct FusedAttention<'a> {
    /// The q|k|v weight and bias.
    pub qkv: (&'a Tensor, Option<&'a Tensor>),
    /// The output projection's weight and bias.
    pub o: (&'a Tensor, Option<&'a Tensor>),
    pub heads: usize,
    /// The query and key heads' norm weights and epsilon (Qwen3, Gemma 3).
    pub head_norms: Option<(&'a Tensor, &'a Tensor, f32)>,
    /// The score scale and soft cap (Gemma 2).
    pub scores: (f32, Option<f32>),
}

pub struct Attention {
    qkv_proj: Linear,
    o_proj: Linear,
    q_norm: Option<RmsNorm>,
    k_norm: Option<RmsNorm>,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    /// What scores are multiplied by (1/√head_dim, or Gemma's `query_pre_attn_scalar`'s).
    scale: f64,
    /// Scaled scores become `c·tanh(score/c)` (Gemma 2).
    softcap: Option<f64>,
}

impl Attention {
    pub fn linears_mut(&mut self) -> [&mut Linear; 2] {
        [&mut self.qkv_proj, &mut self.o_proj]
    }

    pub fn load(w: &Weights, prefix: &str, cfg: &LlamaConfig, dev: &Device) -> Result<Self> {
        let (h, d) = (cfg.hidden_size, cfg.head_dim);
        let norm = |n: &str| -> Result<Option<RmsNorm>> {
            if cfg.qk_norm {
                Ok(Some(RmsNorm::load(
                    w,
                    &format!("{prefix}.{n}"),
                    d,
                    cfg.rms_norm_eps,
                    dev,
                )?))
            } else {
                Ok(None)
            }
        };
        let (q, k, v) = (
            format!("{prefix}.q_proj"),
            format!("{prefix}.k_proj"),
            format!("{prefix}.v_proj"),
        );
        let parts = [
            (q.as_str(), cfg.num_heads * d),
            (k.as_str(), cfg.num_kv_heads * d),
            (v.as_str(), cfg.num_kv_heads * d),
        ];
        Ok(Self {
            qkv_proj: Linear::load_fused(w, &parts, h, cfg.qkv_bias, dev)?,
            o_proj: Linear::load(
                w,
                &format!("{prefix}.o_proj"),
                h,
                cfg.num_heads * d,
                cfg.o_bias,
                dev,
            )?,
            q_norm: norm("q_norm")?,
            k_norm: norm("k_norm")?,
            heads: cfg.num_heads,
            kv_heads: cfg.num_kv_heads,
            head_dim: d,
            scale: cfg.attn_scale(),
            softcap: cfg.attn_softcap,
        })
    }

    /// `x` (b, t, hidden); `mask` as the pass's queries see, or `None` for a plain causal step
    /// of one token. The new keys and values are stored in `kv_dtype` (f16 or f32; the CPU
    /// kernel reads either) where the CPU kernel attends, in the activations' dtype elsewhere;
    /// a cache that already holds some keeps their dtype.
    pub fn forward(
        &self,
        x: &Tensor,
        angles: &Angles,
        mask: Option<&Mask>,
        cache: &mut Kv,
        kv_dtype: DType,
    ) -> candle_core::Result<Tensor> {
        let (q, k, v) = self.project(x, angles)?;
        let held = cache.dtype();
        let store = match (held, mask) {
            (Some(held), _) => held,
            (None, Some(Mask::Rows(_))) => kv_dtype,
            (None, _) => q.dtype(),
        };
        let (k, v) = if k.dtype() == store {
            (k, v)
        } else {
            (k.to_dtype(store)?, v.to_dtype(store)?)
        };
        let (k, v) = cache.append(&k, &v)?;
        match mask {
            Some(Mask::Rows(visible)) => {
                let (b, _, t, d) = q.dims4()?;
                let cap = self.softcap.map(|c| c as f32);
                let out =
                    crate::cpu::attend(&q, &k, &v, (self.scale as f32, cap), visible.clone())?;
                let out = out.transpose(1, 2)?.reshape((b, t, self.heads * d))?;
                self.o_proj.forward(&out)
            }
            Some(Mask::Dense(m)) => self.attend(&q, &k, &v, Some(m)),
            None => self.attend(&q, &k, &v, None),
        }
    }

    /// The rotated queries (b, heads, t, d) and keys (b, kv_heads, t, d) of `x` (b, t,
    /// hidden), and its values (b, kv_heads, t, d).
    fn project(
        &self,
        x: &Tensor,
        angles: &Angles,
    ) -> candle_core::Result<(Tensor, Tensor, Tensor)> {
        let (b, t, _) = x.dims3()?;
        let d = self.head_dim;
        let qkv = self.qkv_proj.forward_split(x)?;
        let mut q = qkv[0].reshape((b, t, self.heads, d))?;
        let mut k = qkv[1].reshape((b, t, self.kv_heads, d))?;
        let v = qkv[2]
            .reshape((b, t, self.kv_heads, d))?
            .transpose(1, 2)?
            .contiguous()?;
        if let (Some(qn), Some(kn)) = (&self.q_norm, &self.k_norm) {
            q = qn.forward(&q)?;
            k = kn.forward(&k)?;
        }
        let q = angles.rotate(&q.transpose(1, 2)?)?;
        let k = angles.rotate(&k.transpose(1, 2)?)?;
        Ok((q, k, v))
    }

    /// Softmax attention of `q` (b, heads, t, d) over `k`, `v` (b, kv_heads, n, d) under an
    /// additive `mask` that broadcasts to (b, heads, t, n), through the output projection.
    fn attend(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        mask: Option<&Tensor>,
    ) -> candle_core::Result<Tensor> {
        let (b, _, t, d) = q.dims4()?;
        let n = k.dim(2)?;
        let rep = self.heads / self.kv_heads;
        // A cache kept in another dtype than the activations (f16 on a CPU) is widened.
        let (k, v) = if k.dtype() == q.dtype() {
            (k.clone(), v.clone())
        } else {
            (k.to_dtype(q.dtype())?, v.to_dtype(q.dtype())?)
        };
        let (k, v) = (&k, &v);
        // (b, heads, t, d) -> (b, kv_heads, rep * t, d): query heads of one group side by side.
        let q = q.reshape((b, self.kv_heads, rep * t, d))?;
        let scores = (q.matmul(&k.t()?)? * self.scale)?.reshape((b, self.heads, t, n))?;
        let scores = match self.softcap {
            Some(cap) => ((scores / cap)?.tanh()? * cap)?,
            None => scores,
        };
        let scores = match mask {
            Some(m) => scores.broadcast_add(m)?,
            None => scores,
        };
        let probs = candle_nn::ops::softmax_last_dim(&scores)?;
        let out = probs.reshape((b, self.kv_heads, rep * t, n))?.matmul(v)?;
        let out = out
            .reshape((b, self.heads, t, d))?
            .transpose(1, 2)?
            .reshape((b, t, self.heads * d))?;
        self.o_proj.forward(&out)
    }

    /// For the fused decode step: the dense weights and what the kernels apply; none when a
    /// projection is not dense (quantized), which the fused kernels do not read.
    pub(crate) fn fused_parts(&self) -> Option<FusedAttention<'_>> {
        Some(FusedAttention {
            qkv: self.qkv_proj.dense_parts()?,
            o: self.o_proj.dense_parts()?,
            heads: self.heads,
            head_norms: self.head_norms(),
            scores: self.scores(),
        })
    }

    /// The query and key heads' norm weights and epsilon, where the model norms them (the
    /// decode kernels' `rope_kv` applies them).
    fn head_norms(&self) -> Option<(&Tensor, &Tensor, f32)> {
        match (&self.q_norm, &self.k_norm) {
            (Some(q), Some(k)) => Some((q.parts().0, k.parts().0, q.parts().1)),
            _ => None,
        }
    }

    /// The score scale and Gemma 2's soft cap, as the decode kernels' `attend` takes them.
    fn scores(&self) -> (f32, Option<f32>) {
        (self.scale as f32, self.softcap.map(|c| c as f32))
    }

    /// One token per row (`x` (b, 1, hidden)) against a cache of fixed capacity: each row's
    /// new key and value go to its slot (`slot` (b,) u32), attention spans every slot under
    /// `mask` ((b, 1, 1, capacity), additive). Every shape is the same from step to step, so
    /// the step can be replayed as a CUDA graph; on a GPU two fused kernels do the work
    /// between the projections (`cuda_decode`).
    pub fn step(
        &self,
        x: &Tensor,
        angles: &Angles,
        slot: &Tensor,
        mask: &Tensor,
        (k_cache, v_cache): (&Tensor, &Tensor),
    ) -> candle_core::Result<Tensor> {
        #[cfg(feature = "cuda")]
        {
            let norms = self.head_norms();
            // (Head norms kept in another dtype than the activations take candle's ops below.)
            let norms_fit =
                norms.is_none_or(|(q, k, _)| q.dtype() == x.dtype() && k.dtype() == x.dtype());
            if x.device().is_cuda() && norms_fit {
                let fused = self.qkv_proj.forward(x)?;
                let kv = (k_cache, v_cache);
                let q = crate::cuda_decode::rope_kv(&fused, angles, slot, kv, self.heads, norms)?;
                let out = crate::cuda_decode::attend(&q, kv, mask, self.scores())?;
                return self.o_proj.forward(&out);
            }
        }
        let (q, k, v) = self.project(x, angles)?;
        let slots = slot
            .reshape((x.dim(0)?, 1, 1, 1))?
            .broadcast_as(k.shape())?
            .contiguous()?;
        k_cache.scatter_set(&slots, &k, 2)?;
        v_cache.scatter_set(&slots, &v, 2)?;
        self.attend(&q, k_cache, v_cache, Some(mask))
    }
}
