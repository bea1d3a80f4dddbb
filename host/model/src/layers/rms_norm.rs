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

    /// The weight and epsilon (the fused decode step applies the norm inside its products).
    pub(crate) fn parts(&self) -> (&Tensor, f32) {
        (&self.weight, self.eps)
    }

    /// `(x + d, norm(x + d))`: a residual connection and the norm after it, one kernel on a
    /// GPU (a decode step's graph walks one node less per call).
    pub fn add_forward(&self, x: &Tensor, d: &Tensor) -> candle_core::Result<(Tensor, Tensor)> {
        #[cfg(feature = "cuda")]
        if x.device().is_cuda() && x.is_contiguous() {
            return crate::cuda_decode::add_rms_norm(x, d, &self.weight, self.eps);
        }
        let h = (x + d)?;
        let n = self.forward(&h)?;
        Ok((h, n))
    }
}
