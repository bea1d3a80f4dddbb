//! The gated feed-forward block: `down(silu(gate(x)) * up(x))`.

use super::Linear;
use crate::config::LlamaConfig;
use crate::error::Result;
use crate::weights::Weights;
use candle_core::{Device, Tensor};

pub struct Mlp {
    gate: Linear,
    up: Linear,
    down: Linear,
}

impl Mlp {
    pub fn load(w: &Weights, prefix: &str, cfg: &LlamaConfig, dev: &Device) -> Result<Self> {
        let (h, i, b) = (cfg.hidden_size, cfg.intermediate_size, cfg.mlp_bias);
        Ok(Self {
            gate: Linear::load(w, &format!("{prefix}.gate_proj"), i, h, b, dev)?,
            up: Linear::load(w, &format!("{prefix}.up_proj"), i, h, b, dev)?,
            down: Linear::load(w, &format!("{prefix}.down_proj"), h, i, b, dev)?,
        })
    }

    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let gated = (candle_nn::ops::silu(&self.gate.forward(x)?)? * self.up.forward(x)?)?;
        self.down.forward(&gated)
    }
}
