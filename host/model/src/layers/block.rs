//! One decoder layer: pre-norm attention and pre-norm MLP, each with a residual connection.

use super::rotary::Angles;
use super::{Attention, Mlp, RmsNorm};
use crate::config::LlamaConfig;
use crate::error::Result;
use crate::weights::Weights;
use candle_core::{Device, Tensor};
use candle_nn::kv_cache::KvCache;

pub struct DecoderLayer {
    input_layernorm: RmsNorm,
    self_attn: Attention,
    post_attention_layernorm: RmsNorm,
    mlp: Mlp,
}

impl DecoderLayer {
    /// The layer's projections (attention's, then the MLP's).
    pub fn linears_mut(&mut self) -> Vec<&mut super::Linear> {
        let [a, b] = self.self_attn.linears_mut();
        let [c, d] = self.mlp.linears_mut();
        vec![a, b, c, d]
    }

    pub fn load(w: &Weights, prefix: &str, cfg: &LlamaConfig, dev: &Device) -> Result<Self> {
        Ok(Self {
            input_layernorm: RmsNorm::load(
                w,
                &format!("{prefix}.input_layernorm"),
                cfg.hidden_size,
                cfg.rms_norm_eps,
                dev,
            )?,
            self_attn: Attention::load(w, &format!("{prefix}.self_attn"), cfg, dev)?,
            post_attention_layernorm: RmsNorm::load(
                w,
                &format!("{prefix}.post_attention_layernorm"),
                cfg.hidden_size,
                cfg.rms_norm_eps,
                dev,
            )?,
            mlp: Mlp::load(w, &format!("{prefix}.mlp"), cfg, dev)?,
        })
    }

    pub fn forward(
        &self,
        x: &Tensor,
        angles: &Angles,
        mask: Option<&super::Mask>,
        cache: &mut KvCache,
        kv_dtype: candle_core::DType,
    ) -> candle_core::Result<Tensor> {
        let h = (x + self.self_attn.forward(
            &self.input_layernorm.forward(x)?,
            angles,
            mask,
            cache,
            kv_dtype,
        )?)?;
        &h + self
            .mlp
            .forward(&self.post_attention_layernorm.forward(&h)?)?
    }

    /// One token per row against a fixed-capacity cache (`Attention::step`), with the norms
    /// fused into the residual additions before them: `h` is the residual stream and `a` this
    /// layer's input norm of it; returns the new stream and `next`'s norm of it (the next
    /// layer's input norm, or the model's final one).
    pub fn step(
        &self,
        (h, a): (&Tensor, &Tensor),
        angles: &Angles,
        slot: &Tensor,
        mask: &Tensor,
        kv: (&Tensor, &Tensor),
        next: &RmsNorm,
    ) -> candle_core::Result<(Tensor, Tensor)> {
        let attn = self.self_attn.step(a, angles, slot, mask, kv)?;
        let (h, a) = self.post_attention_layernorm.add_forward(h, &attn)?;
        next.add_forward(&h, &self.mlp.step(&a)?)
    }

    /// Whether the fused decode step can run this layer with activations of `dt`.
    pub fn fused_step_ok(&self, dt: candle_core::DType) -> bool {
        let (Some((qkv, o, _, _)), Some((gu, down))) =
            (self.self_attn.fused_parts(), self.mlp.fused_parts())
        else {
            return false;
        };
        [
            qkv.0,
            o.0,
            gu,
            down.0,
            self.input_layernorm.parts().0,
            self.post_attention_layernorm.parts().0,
        ]
        .iter()
        .all(|w| w.dtype() == dt)
    }

    /// The decode step in the fused kernels (`cuda_step`, on a GPU; `fused_step_ok` first):
    /// `(h, d)` is the residual stream before the last sublayer's output `d` is added; returns
    /// the pair for the next layer (the norms are applied inside the products).
    #[cfg(feature = "cuda")]
    pub fn step_fused(
        &self,
        (h, d): (&Tensor, &Tensor),
        angles: &Angles,
        slot: &Tensor,
        mask: &Tensor,
        kv: (&Tensor, &Tensor),
    ) -> candle_core::Result<(Tensor, Tensor)> {
        use crate::{cuda_decode, cuda_step};
        let (Some((qkv, o, heads, hd)), Some((gu, down))) =
            (self.self_attn.fused_parts(), self.mlp.fused_parts())
        else {
            candle_core::bail!("this layer cannot take the fused decode step")
        };
        let (h1, q) = cuda_step::qkv_step(
            h,
            d,
            self.input_layernorm.parts(),
            qkv,
            angles,
            slot,
            kv,
            heads,
        )?;
        let attn = cuda_decode::attend(&q, kv, mask, (1.0 / (hd as f64).sqrt()) as f32)?;
        let d1 = cuda_step::gemv(&attn, o.0, o.1)?;
        let (h2, act) =
            cuda_step::mlp_up_step(&h1, &d1, self.post_attention_layernorm.parts(), gu)?;
        Ok((h2, cuda_step::gemv(&act, down.0, down.1)?))
    }

    /// The norm before attention (the previous layer's step applies it).
    pub fn input_norm(&self) -> &RmsNorm {
        &self.input_layernorm
    }
}
