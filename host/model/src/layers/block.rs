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
    ) -> candle_core::Result<Tensor> {
        let h = (x + self.self_attn.forward(
            &self.input_layernorm.forward(x)?,
            angles,
            mask,
            cache,
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

    /// The norm before attention (the previous layer's step applies it).
    pub fn input_norm(&self) -> &RmsNorm {
        &self.input_layernorm
    }
}
