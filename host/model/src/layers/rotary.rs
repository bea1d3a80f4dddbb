//! Rotary position embeddings in the HF layout (each head's dimensions split in two halves),
//! with the families' frequency scalings. Positions are given per sequence, so left-padded
//! batches rotate each sequence from its own first token.

use crate::config::{LlamaConfig, RopeScaling};
use candle_core::{DType, Device, Tensor};

pub struct Rotary {
    cos: Tensor,
    sin: Tensor,
}

/// The inverse frequencies of `cfg`, scaled as its family does.
pub fn inv_freq(cfg: &LlamaConfig) -> Vec<f32> {
    let d = cfg.head_dim;
    let base: Vec<f64> = (0..d / 2)
        .map(|i| 1.0 / cfg.rope_theta.powf(2.0 * i as f64 / d as f64))
        .collect();
    let scaled: Vec<f64> = match &cfg.rope_scaling {
        RopeScaling::None => base,
        RopeScaling::Linear { factor } => base.iter().map(|f| f / factor).collect(),
        RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position_embeddings,
        } => {
            let old = *original_max_position_embeddings as f64;
            let low_wavelen = old / low_freq_factor;
            let high_wavelen = old / high_freq_factor;
            base.iter()
                .map(|&f| {
                    let wavelen = 2.0 * std::f64::consts::PI / f;
                    if wavelen < high_wavelen {
                        f
                    } else if wavelen > low_wavelen {
                        f / factor
                    } else {
                        let smooth = (old / wavelen - low_freq_factor)
                            / (high_freq_factor - low_freq_factor);
                        (1.0 - smooth) * f / factor + smooth * f
                    }
                })
                .collect()
        }
    };
    scaled.into_iter().map(|f| f as f32).collect()
}

impl Rotary {
    pub fn new(cfg: &LlamaConfig, dev: &Device) -> candle_core::Result<Self> {
        let inv = inv_freq(cfg);
        let half = inv.len();
        let max = cfg.max_position_embeddings.max(1);
        let inv = Tensor::from_vec(inv, (1, half), dev)?;
        let pos = Tensor::arange(0u32, max as u32, dev)?
            .to_dtype(DType::F32)?
            .reshape((max, 1))?;
        let freqs = pos.matmul(&inv)?;
        Ok(Self {
            cos: freqs.cos()?,
            sin: freqs.sin()?,
        })
    }

    /// The angles of `positions` (b, t), computed once per forward pass for every layer.
    pub fn at(&self, positions: &[u32], b: usize, t: usize) -> candle_core::Result<Angles> {
        let max = self.cos.dim(0)?;
        if let Some(&p) = positions.iter().max()
            && p as usize >= max
        {
            candle_core::bail!("position {p} is past the model's {max} positions");
        }
        let idx = Tensor::from_slice(positions, b * t, self.cos.device())?;
        let half = self.cos.dim(1)?;
        let cos = self.cos.index_select(&idx, 0)?.reshape((b, t, half))?;
        let sin = self.sin.index_select(&idx, 0)?.reshape((b, t, half))?;
        Ok(Angles { cos, sin })
    }
}

impl Rotary {
    /// The angles of one position per row, read from `positions` ((b,) u32) on the device:
    /// a decode step replayed as a CUDA graph cannot take them from the host.
    pub fn at_device(&self, positions: &Tensor) -> candle_core::Result<Angles> {
        let (b, half) = (positions.dim(0)?, self.cos.dim(1)?);
        let cos = self.cos.index_select(positions, 0)?.reshape((b, 1, half))?;
        let sin = self.sin.index_select(positions, 0)?.reshape((b, 1, half))?;
        Ok(Angles { cos, sin })
    }
}

/// cos/sin of each (sequence, position), shared by all layers of one forward pass.
pub struct Angles {
    cos: Tensor,
    sin: Tensor,
}

impl Angles {
    /// cos and sin, (b, t, head_dim / 2), for kernels that rotate by themselves.
    pub fn cos(&self) -> &Tensor {
        &self.cos
    }

    pub fn sin(&self) -> &Tensor {
        &self.sin
    }

    /// Rotates `x` (b, heads, t, d).
    pub fn rotate(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        candle_nn::rotary_emb::rope(&x.contiguous()?, &self.cos, &self.sin)
    }
}
