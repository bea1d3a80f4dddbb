//! Rotary position embeddings in the HF layout (each head's dimensions split in two halves),
//! with the families' frequency scalings. Positions are given per sequence, so left-padded
//! batches rotate each sequence from its own first token.

use crate::config::{LlamaConfig, RopeScaling};
use candle_core::{DType, Device, Tensor};

pub struct Rotary {
    cos: Tensor,
    sin: Tensor,
}

/// The unscaled inverse frequencies of `cfg`: theta^(-2i/d).
pub fn base_freq(cfg: &LlamaConfig) -> Vec<f64> {
    let d = cfg.head_dim;
    (0..d / 2)
        .map(|i| 1.0 / cfg.rope_theta.powf(2.0 * i as f64 / d as f64))
        .collect()
}

/// The inverse frequencies of `cfg`, scaled as its family does.
pub fn inv_freq(cfg: &LlamaConfig) -> Vec<f32> {
    scaled_freq(cfg).into_iter().map(|f| f as f32).collect()
}

/// [`inv_freq`] in f64.
pub fn scaled_freq(cfg: &LlamaConfig) -> Vec<f64> {
    let base = base_freq(cfg);
    match &cfg.rope_scaling {
        // Checked at load: one factor per frequency.
        RopeScaling::Factors(factors) => base.iter().zip(factors).map(|(f, r)| f / r).collect(),
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
    }
}

/// Llama 3.1's settings that give `factors` (a GGUF's `rope_freqs`) over `cfg`'s base
/// frequencies, for writing them to a config.json; `None` when no settings tried give them
/// all to 1e-6. The settings are defined up to one scale (only `original / low_freq_factor`
/// and `original / high_freq_factor` matter), so Llama 3's 8,192 original positions are
/// taken; the two factors are fitted from the frequencies between the two regions (two or
/// more), or, with fewer, placed in the gaps the regions leave.
pub fn llama3_from_factors(cfg: &LlamaConfig, factors: &[f64]) -> Option<RopeScaling> {
    const ORIGINAL: usize = 8192;
    let base = base_freq(cfg);
    if factors.len() != base.len() {
        return None;
    }
    let factor = factors.iter().copied().fold(1.0, f64::max);
    // x = original / wavelength: the high-frequency region (factor 1) has the largest x, the
    // low one (factor `factor`) the smallest; between them 1/r = (1 - s)/factor + s, with
    // s = (x - low) / (high - low).
    let x = |f: f64| ORIGINAL as f64 * f / (2.0 * std::f64::consts::PI);
    let (mut middle, mut high_min, mut low_max) = (Vec::new(), f64::INFINITY, 0.0f64);
    for (&f, &r) in base.iter().zip(factors) {
        if r <= 1.0 + 1e-9 {
            high_min = high_min.min(x(f));
        } else if r >= factor - 1e-9 {
            low_max = low_max.max(x(f));
        } else {
            middle.push((x(f), (1.0 / r - 1.0 / factor) / (1.0 - 1.0 / factor)));
        }
    }
    let candidates: Vec<(f64, f64)> = match middle.as_slice() {
        [(x0, s0), .., (x1, s1)] => {
            let slope = (s1 - s0) / (x1 - x0);
            let low = x0 - s0 / slope;
            vec![(low, low + 1.0 / slope)]
        }
        [(x0, s0)] => [0.5, 0.25, 0.75, 0.1, 0.9]
            .iter()
            .map(|t| {
                let low = low_max + t * (x0 - low_max);
                (low, low + (x0 - low) / s0)
            })
            .collect(),
        [] => {
            let top = if high_min.is_finite() {
                high_min
            } else {
                low_max * 2.0 + 1.0
            };
            vec![(
                low_max + (top - low_max) / 3.0,
                low_max + 2.0 * (top - low_max) / 3.0,
            )]
        }
    };
    candidates.into_iter().find_map(|(low, high)| {
        if !(low.is_finite() && high.is_finite() && 0.0 < low && low < high) {
            return None;
        }
        let fitted = RopeScaling::Llama3 {
            factor,
            low_freq_factor: low,
            high_freq_factor: high,
            original_max_position_embeddings: ORIGINAL,
        };
        let check = LlamaConfig {
            rope_scaling: fitted.clone(),
            ..cfg.clone()
        };
        let again = scaled_freq(&check);
        base.iter()
            .zip(factors)
            .zip(&again)
            .all(|((f, r), g)| ((f / r) - g).abs() <= 1e-6 * f)
            .then_some(fitted)
    })
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

    /// Angles that rotate by nothing (cos 1, sin 0: `x·1 - y·0` is `x` exactly), for the
    /// layers that attend without RoPE.
    pub fn identity(cfg: &LlamaConfig, dev: &Device) -> candle_core::Result<Self> {
        let (max, half) = (cfg.max_position_embeddings.max(1), cfg.head_dim / 2);
        Ok(Self {
            cos: Tensor::ones((max, half), DType::F32, dev)?,
            sin: Tensor::zeros((max, half), DType::F32, dev)?,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Family;

    fn cfg(head_dim: usize, rope_scaling: RopeScaling) -> LlamaConfig {
        LlamaConfig {
            family: Family::Llama,
            vocab_size: 8,
            hidden_size: head_dim * 2,
            intermediate_size: 8,
            num_layers: 1,
            num_heads: 2,
            num_kv_heads: 2,
            head_dim,
            rms_norm_eps: 1e-5,
            rope_theta: 500_000.0,
            rope_scaling,
            max_position_embeddings: 64,
            tie_word_embeddings: true,
            qkv_bias: false,
            o_bias: false,
            mlp_bias: false,
            qk_norm: false,
            bos_token_id: None,
            eos_token_ids: vec![],
            sliding: None,
            query_pre_attn_scalar: None,
            attn_softcap: None,
            final_softcap: None,
            no_rope: None,
            bidirectional: false,
        }
    }

    /// A GGUF's per-frequency factors (what llama.cpp's converter computes from Llama 3.1's
    /// settings) give back settings with the same frequencies: Llama 3.1/3.2's own, and the
    /// tiny fixture's (4 frequencies, one between the regions).
    #[test]
    fn llama3_settings_are_recovered_from_their_factors() {
        for (d, factor, low, high, orig) in [
            (128, 8.0, 1.0, 4.0, 8192),
            (64, 32.0, 1.0, 4.0, 8192),
            (8, 8.0, 1.0, 4.0, 16),
        ] {
            let llama3 = RopeScaling::Llama3 {
                factor,
                low_freq_factor: low,
                high_freq_factor: high,
                original_max_position_embeddings: orig,
            };
            let c = cfg(d, llama3);
            let want = scaled_freq(&c);
            let factors: Vec<f64> = base_freq(&c)
                .iter()
                .zip(&want)
                .map(|(b, s)| b / s)
                .collect();
            let fitted = llama3_from_factors(&c, &factors).expect("settings found");
            let got = scaled_freq(&cfg(d, fitted));
            for (g, w) in got.iter().zip(&want) {
                assert!(
                    (g - w).abs() <= 1e-6 * w,
                    "head_dim {d}: {got:?} vs {want:?}"
                );
            }
            // The factors themselves, as a GGUF carries them, give the same frequencies.
            let again = scaled_freq(&cfg(d, RopeScaling::Factors(factors)));
            for (a, w) in again.iter().zip(&want) {
                assert!(
                    (a - w).abs() <= 1e-12 * w,
                    "head_dim {d}: {again:?} vs {want:?}"
                );
            }
        }
        // Factors no Llama 3.1 settings give (not monotone) are said to be so.
        let c = cfg(8, RopeScaling::None);
        assert!(llama3_from_factors(&c, &[2.0, 1.0, 3.0, 1.5]).is_none());
    }
}
