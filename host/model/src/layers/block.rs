//! One decoder layer: pre-norm attention and pre-norm MLP, each with a residual connection;
//! Gemma also norms each sublayer's output before adding it (four norms a layer).

use super::rotary::Angles;
use super::{Attention, Mlp, RmsNorm};
use crate::config::LlamaConfig;
use crate::error::Result;
use crate::kv::Kv;
use crate::weights::Weights;
use candle_core::{Device, Tensor};

pub struct DecoderLayer {
    input_layernorm: RmsNorm,
    self_attn: Attention,
    /// Gemma's norm of the attention's output (its `post_attention_layernorm`).
    attn_out_norm: Option<RmsNorm>,
    /// The norm before the MLP (Llama's `post_attention_layernorm`, Gemma's
    /// `pre_feedforward_layernorm`).
    pre_mlp_norm: RmsNorm,
    mlp: Mlp,
    /// Gemma's norm of the MLP's output (`post_feedforward_layernorm`).
    mlp_out_norm: Option<RmsNorm>,
}

impl DecoderLayer {
    /// The layer's projections (attention's, then the MLP's).
    pub fn linears_mut(&mut self) -> Vec<&mut super::Linear> {
        let [a, b] = self.self_attn.linears_mut();
        let [c, d] = self.mlp.linears_mut();
        vec![a, b, c, d]
    }

    pub fn load(w: &Weights, prefix: &str, cfg: &LlamaConfig, dev: &Device) -> Result<Self> {
        let norm = |name: &str| {
            RmsNorm::load(
                w,
                &format!("{prefix}.{name}"),
                cfg.hidden_size,
                cfg.rms_norm_eps,
                dev,
            )
        };
        let gemma = cfg.family.is_gemma();
        Ok(Self {
            input_layernorm: norm("input_layernorm")?,
            self_attn: Attention::load(w, &format!("{prefix}.self_attn"), cfg, dev)?,
            attn_out_norm: gemma
                .then(|| norm("post_attention_layernorm"))
                .transpose()?,
            pre_mlp_norm: norm(match gemma {
                true => "pre_feedforward_layernorm",
                false => "post_attention_layernorm",
            })?,
            mlp: Mlp::load(w, &format!("{prefix}.mlp"), cfg, dev)?,
            mlp_out_norm: gemma
                .then(|| norm("post_feedforward_layernorm"))
                .transpose()?,
        })
    }

    pub fn forward(
        &self,
        x: &Tensor,
        angles: &Angles,
        mask: Option<&super::Mask>,
        cache: &mut Kv,
        kv_dtype: candle_core::DType,
    ) -> candle_core::Result<Tensor> {
        let a = self.self_attn.forward(
            &self.input_layernorm.forward(x)?,
            angles,
            mask,
            cache,
            kv_dtype,
        )?;
        let a = match &self.attn_out_norm {
            Some(n) => n.forward(&a)?,
            None => a,
        };
        let h = (x + a)?;
        let m = self.mlp.forward(&self.pre_mlp_norm.forward(&h)?)?;
        let m = match &self.mlp_out_norm {
            Some(n) => n.forward(&m)?,
            None => m,
        };
        &h + m
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
        // Gemma: each sublayer's output normed before it joins the residual stream.
        let out = |n: &Option<RmsNorm>, y: Tensor| match n {
            Some(n) => n.forward(&y),
            None => Ok(y),
        };
        let (h, a) = self
            .pre_mlp_norm
            .add_forward(h, &out(&self.attn_out_norm, attn)?)?;
        next.add_forward(&h, &out(&self.mlp_out_norm, self.mlp.step(&a)?)?)
    }

    /// Whether the fused decode step can run this layer with activations of `dt`: every
    /// weight it reads dense and in `dt`.
    pub fn fused_step_ok(&self, dt: candle_core::DType) -> bool {
        let (Some(attn), Some(((gu, _), down))) =
            (self.self_attn.fused_parts(), self.mlp.fused_parts())
        else {
            return false;
        };
        let norms = [&self.attn_out_norm, &self.mlp_out_norm];
        [
            attn.qkv.0,
            attn.o.0,
            gu,
            down.0,
            self.input_layernorm.parts().0,
            self.pre_mlp_norm.parts().0,
        ]
        .into_iter()
        .chain(attn.head_norms.into_iter().flat_map(|(q, k, _)| [q, k]))
        .chain(norms.into_iter().flatten().map(|n| n.parts().0))
        .all(|w| w.dtype() == dt)
    }

    /// Gemma's norm of the MLP's output, which the next layer's fused step (or the model's
    /// final norm) applies before the output joins the residual stream.
    pub fn mlp_out_norm(&self) -> Option<&RmsNorm> {
        self.mlp_out_norm.as_ref()
    }

    /// The decode step in the fused kernels (`cuda_step`, on a GPU; `fused_step_ok` first):
    /// `(h, d)` is the residual stream before the last sublayer's output `d` is added, and
    /// `d_norm` the norm `d` takes first (the previous layer's `mlp_out_norm`); returns the
    /// pair for the next layer (the norms are applied inside the products).
    #[cfg(feature = "cuda")]
    pub fn step_fused(
        &self,
        (h, d, d_norm): (&Tensor, &Tensor, Option<&RmsNorm>),
        angles: &Angles,
        slot: &Tensor,
        mask: &Tensor,
        kv: (&Tensor, &Tensor),
    ) -> candle_core::Result<(Tensor, Tensor)> {
        use crate::{cuda_decode, cuda_step};
        let (Some(attn), Some((gu, down))) = (self.self_attn.fused_parts(), self.mlp.fused_parts())
        else {
            candle_core::bail!("this layer cannot take the fused decode step")
        };
        fn weight(n: Option<&RmsNorm>) -> Option<&Tensor> {
            n.map(|n| n.parts().0)
        }
        let (h1, q) = cuda_step::qkv_step(
            h,
            (d, weight(d_norm)),
            self.input_layernorm.parts(),
            attn.qkv,
            angles,
            slot,
            kv,
            (attn.heads, attn.head_norms),
        )?;
        let out = cuda_decode::attend(&q, kv, mask, attn.scores)?;
        let d1 = cuda_step::gemv(&out, attn.o.0, attn.o.1)?;
        let (h2, act) = cuda_step::mlp_up_step(
            &h1,
            (&d1, weight(self.attn_out_norm.as_ref())),
            self.pre_mlp_norm.parts(),
            gu,
        )?;
        Ok((h2, cuda_step::gemv(&act, down.0, down.1)?))
    }

    /// The norm before attention (the previous layer's step applies it).
    pub fn input_norm(&self) -> &RmsNorm {
        &self.input_layernorm
    }
}
