//! The gated feed-forward block: `down(act(gate(x)) * up(x))`, gate and up fused into one
//! projection; `act` is SiLU, or GELU's tanh approximation for Gemma.

use super::Linear;
use crate::config::LlamaConfig;
use crate::error::Result;
use crate::weights::Weights;
use candle_core::{Device, Tensor};

pub struct Mlp {
    gate_up: Linear,
    down: Linear,
    /// GELU (tanh approximation, PyTorch's `gelu_pytorch_tanh`) instead of SiLU.
    gelu: bool,
}

impl Mlp {
    pub fn linears_mut(&mut self) -> [&mut Linear; 2] {
        [&mut self.gate_up, &mut self.down]
    }

    pub fn load(w: &Weights, prefix: &str, cfg: &LlamaConfig, dev: &Device) -> Result<Self> {
        let (h, i, b) = (cfg.hidden_size, cfg.intermediate_size, cfg.mlp_bias);
        let (gate, up) = (format!("{prefix}.gate_proj"), format!("{prefix}.up_proj"));
        Ok(Self {
            gate_up: Linear::load_fused(w, &[(gate.as_str(), i), (up.as_str(), i)], h, b, dev)?,
            down: Linear::load(w, &format!("{prefix}.down_proj"), h, i, b, dev)?,
            gelu: cfg.family.is_gemma(),
        })
    }

    /// For the fused decode step: the gate|up weight (without a bias, which the fused kernel
    /// does not add) and whether its activation is GELU's, and the down projection's weight
    /// and bias.
    #[allow(clippy::type_complexity)]
    pub(crate) fn fused_parts(&self) -> Option<((&Tensor, bool), (&Tensor, Option<&Tensor>))> {
        match self.gate_up.dense_parts()? {
            (gu, None) => Some(((gu, self.gelu), self.down.dense_parts()?)),
            _ => None,
        }
    }

    /// `forward` for a decode step: on a GPU, SiLU and the product in one kernel.
    pub fn step(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        #[cfg(feature = "cuda")]
        if x.device().is_cuda() && !self.gelu {
            let gu = self.gate_up.forward(x)?;
            return self.down.forward(&crate::cuda_decode::silu_mul(&gu)?);
        }
        self.forward(x)
    }

    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        // On the CPU one pass over the fused output (gate and up side by side) instead of
        // silu, two strided views and a product, each a full tensor.
        if x.device().is_cpu() && x.dtype() == candle_core::DType::F32 {
            let gu = self.gate_up.forward(x)?;
            let gated = match self.gelu {
                true => crate::cpu::gelu_mul_halves(&gu)?,
                false => crate::cpu::silu_mul_halves(&gu)?,
            };
            return self.down.forward(&gated);
        }
        let gu = self.gate_up.forward_split(x)?;
        let act = if self.gelu {
            // candle's `gelu` is the tanh approximation.
            gu[0].gelu()?
        } else {
            candle_nn::ops::silu(&gu[0])?
        };
        let gated = (act * &gu[1])?;
        self.down.forward(&gated)
    }
}
