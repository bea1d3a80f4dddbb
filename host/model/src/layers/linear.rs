//! A projection `y = x Wᵀ + b` whose weight is dense (safetensors, F16/F32 GGUF) or
//! quantized blocks (Q4_0, Q4_1, Q8_0, K-quants from GGUF).

use crate::error::Result;
use crate::weights::{LinearWeight, Weights};
use candle_core::{Device, Module, Tensor};

pub struct Linear {
    weight: LinearWeight,
    bias: Option<Tensor>,
}

impl Linear {
    /// Loads `{prefix}.weight` of shape (out, inp) and, when `bias`, `{prefix}.bias`.
    pub fn load(
        w: &Weights,
        prefix: &str,
        out: usize,
        inp: usize,
        bias: bool,
        dev: &Device,
    ) -> Result<Self> {
        let weight = w.linear(&format!("{prefix}.weight"), out, inp, dev)?;
        let bias = if bias {
            Some(w.tensor(&format!("{prefix}.bias"), &[out], dev)?)
        } else {
            None
        };
        Ok(Self { weight, bias })
    }

    pub fn from_weight(weight: LinearWeight) -> Self {
        Self { weight, bias: None }
    }

    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let y = match &self.weight {
            LinearWeight::Dense(w) => candle_nn::Linear::new(w.clone(), None).forward(x)?,
            LinearWeight::Quant(q) => q.forward(x)?,
        };
        match &self.bias {
            Some(b) => y.broadcast_add(b),
            None => Ok(y),
        }
    }
}
