//! Root-mean-square layer norm with a learned scale (`weight`), over the last dimension.

use crate::error::Result;
use crate::weights::Weights;
use candle_core::{Device, Tensor};

pub struct RmsNorm {
    weight: Tensor,
    eps: f32,
}

impl RmsNorm {
    pub fn load(w: &Weights, name: &str, dim: usize, eps: f64, dev: &Device) -> Result<Self> {
        Ok(Self {
            weight: w.tensor(&format!("{name}.weight"), &[dim], dev)?,
            eps: eps as f32,
        })
    }

    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        candle_nn::ops::rms_norm(&x.contiguous()?, &self.weight, self.eps)
    }
}
