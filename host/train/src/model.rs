//! The trainable Llama: the same architecture and HF weight names as galley-model's inference
//! model, built from the same checkpoint, with every projection either trained (full
//! fine-tuning, pre-training) or frozen with LoRA adapters beside it (LoRA; QLoRA keeps the
//! frozen projections as 4/8-bit GGUF blocks and dequantizes them per product). The forward
//! pass runs through `ops` so every step has a backward pass that skips frozen weights.
//! Building it, from a checkpoint or from random weights, is `load`.

mod load;

pub use load::{Build, Loader, init_weights};

use crate::attention;
use crate::config::{InitSection, PeftSection, QuantKind, Tuning};
use crate::data::Batch;
use crate::error::{Result, TrainError};
use crate::grad::GradBuf;
use crate::linear::{self, GroupPart, GroupW, LoraW};
use crate::ops::{self, Frozen, Kernels, RopeTables};
use crate::packing::{Packed, Piece};
use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{DType, Device, Tensor, Var};
use galley_model::cpu::{self, with_f32};
use galley_model::weights::{LinearWeight, Weights};
use galley_model::{Family, LlamaConfig, RopeScaling};
use rand::{RngExt, SeedableRng, rngs::StdRng};
use rayon::prelude::*;
use std::mem::MaybeUninit;
use std::sync::Arc;

/// The projection names LoRA may target.
pub const MODULES: [&str; 7] = [
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
];

/// A trained tensor: its variable, its name (HF or PEFT naming) and its gradient buffer.
#[derive(Clone)]
pub struct Trainable {
    pub name: String,
    pub var: Var,
    pub grad: GradBuf,
}

/// A low-rank update B·A beside a frozen projection, scaled by alpha / r.
pub struct Lora {
    pub a: Trainable,
    pub b: Trainable,
    pub scale: f64,
    pub dropout: f64,
}

pub enum Proj {
    Trained {
        w: Trainable,
        bias: Option<Var>,
    },
    Frozen {
        w: Frozen,
        bias: Option<Tensor>,
        lora: Option<Lora>,
    },
}

/// Per-forward settings: kernels, whether dropout is on and its seed, whether LoRA adapters
/// take part (off: the frozen base alone, DPO's reference without a second copy).
#[derive(Clone, Copy)]
pub struct Pass {
    pub kernels: Kernels,
    pub train: bool,
    pub adapters: bool,
    pub seed: u64,
}

impl Pass {
    /// No dropout, adapters on: validation.
    pub fn eval(model: &TrainModel) -> Self {
        Self {
            kernels: model.kernels,
            train: false,
            adapters: true,
            seed: 0,
        }
    }
}

impl Lora {
    /// The dropout on the adapter's input in a training pass at `site`: its rate and seed.
    fn dropout(&self, pass: &Pass, site: u64) -> Option<(f64, u64)> {
        (pass.train && self.dropout > 0.0).then(|| {
            (
                self.dropout,
                galley_core::seed::derive_seed(pass.seed, &[site]),
            )
        })
    }
}

impl Proj {
    fn forward(&self, x: &Tensor, pass: &Pass, site: u64) -> Result<Tensor> {
        let y = match pass.kernels {
            // The CPU kernels: one projection is a group of one.
            Kernels::Fused => linear::group(x, vec![self.part(x, pass, site)], None)?,
            Kernels::Reference | Kernels::Cuda => self.forward_ops(x, pass, site)?,
        };
        Ok(match self.bias() {
            Some(b) => y.broadcast_add(&ops::cast(&b, y.dtype())?)?,
            None => y,
        })
    }

    /// The product (no bias) through candle's ops: the reference and the GPU.
    fn forward_ops(&self, x: &Tensor, pass: &Pass, site: u64) -> Result<Tensor> {
        let (w, lora) = match self {
            Proj::Trained { w, .. } => {
                return Ok(ops::linear(x, &ops::cast(w.var.as_tensor(), x.dtype())?)?);
            }
            Proj::Frozen { w, lora, .. } => (w, lora.as_ref().filter(|_| pass.adapters)),
        };
        let base = ops::frozen_matmul(x, w, pass.kernels)?;
        let Some(l) = lora else { return Ok(base) };
        let dt = x.dtype();
        let xd = match (pass.kernels, l.dropout(pass, site)) {
            (_, None) => x.clone(),
            // On a GPU the mask is drawn there: a host-drawn mask per adapted projection
            // (tokens x inputs numbers) would cost more than the step's products.
            (Kernels::Cuda, Some((p, seed))) => (x * device_dropout_mask(x, p, seed)?)?,
            (_, Some((p, seed))) => {
                let m = dropout_mask(x.elem_count(), p, seed);
                (x * Tensor::from_vec(m, x.shape(), x.device())?.to_dtype(dt)?)?
            }
        };
        // The scale goes on B (out x r), not on the product (tokens x out): one
        // activation-sized tensor less per adapted projection.
        let delta = ops::linear(
            &ops::linear(&xd, &ops::cast(l.a.var.as_tensor(), dt)?)?,
            &(ops::cast(l.b.var.as_tensor(), dt)? * l.scale)?,
        )?;
        Ok((base + delta)?)
    }

    /// This projection's product (without its bias) as a part of `linear::group`, the CPU
    /// kernels' op, with the adapter and dropout mask it has at `site` in `pass`.
    fn part(&self, x: &Tensor, pass: &Pass, site: u64) -> GroupPart {
        match self {
            Proj::Trained { w, .. } => GroupPart {
                w: GroupW::Trained {
                    w: w.var.as_tensor().clone(),
                    grad: w.grad.clone(),
                },
                lora: None,
            },
            Proj::Frozen { w, lora, .. } => {
                let lora = lora.as_ref().filter(|_| pass.adapters).map(|l| {
                    let mask = l
                        .dropout(pass, site)
                        .map(|(p, seed)| Arc::new(dropout_mask(x.elem_count(), p, seed)));
                    let lw = LoraW {
                        grad_a: l.a.grad.clone(),
                        grad_b: l.b.grad.clone(),
                        scale: l.scale as f32,
                        mask,
                    };
                    (l.a.var.as_tensor().clone(), l.b.var.as_tensor().clone(), lw)
                });
                GroupPart {
                    w: GroupW::Frozen(w.clone()),
                    lora,
                }
            }
        }
    }

    /// `part` for a fused group of several projections; None with a bias (those run apart).
    fn group_part(&self, x: &Tensor, pass: &Pass, site: u64) -> Option<GroupPart> {
        let biased = matches!(
            self,
            Proj::Trained { bias: Some(_), .. } | Proj::Frozen { bias: Some(_), .. }
        );
        (!biased).then(|| self.part(x, pass, site))
    }

    /// (out, in) of the weight.
    fn dims(&self) -> Result<(usize, usize)> {
        Ok(match self {
            Proj::Trained { w, .. } => w.var.as_tensor().dims2()?,
            Proj::Frozen { w, .. } => w.dims(),
        })
    }

    /// Whether `merge_into` can write this weight: every tensor of it f32 on the CPU.
    fn merges_on_cpu(&self) -> bool {
        let f32_cpu = |t: &Tensor| t.device().is_cpu() && t.dtype() == DType::F32;
        match self {
            Proj::Trained { w, .. } => f32_cpu(w.var.as_tensor()),
            Proj::Frozen { w, lora, .. } => {
                let base = match w {
                    Frozen::Dense(t) => f32_cpu(t),
                    Frozen::Quant(q) => q.device().is_cpu(),
                };
                base && lora
                    .as_ref()
                    .is_none_or(|l| f32_cpu(l.a.var.as_tensor()) && f32_cpu(l.b.var.as_tensor()))
            }
        }
    }

    /// Writes the weight with any adapter merged in (out·in floats, row-major) into `dst`, on
    /// the CPU (`merges_on_cpu`): the base copied in, then `scale·B·A` added by one
    /// accumulating product. (candle's ops took a product, a scaled copy of it, a sum and, for
    /// the engine's fused q|k|v and gate|up, a concatenation: four passes over every weight.)
    fn merge_into(&self, dst: &mut [MaybeUninit<f32>]) -> Result<()> {
        let (out, inp) = self.dims()?;
        assert_eq!(
            dst.len(),
            out * inp,
            "merge_into: a buffer of another shape"
        );
        let copy = |src: &[f32]| {
            dst.par_chunks_mut(1 << 16)
                .zip(src.par_chunks(1 << 16))
                .for_each(|(d, s)| d.iter_mut().zip(s).for_each(|(d, &s)| _ = d.write(s)));
        };
        match self {
            Proj::Trained { w, .. } => with_f32(w.var.as_tensor(), copy)?,
            Proj::Frozen { w, .. } => w.with_dense(copy)?,
        }
        // SAFETY: the copy above wrote all out·in elements (the base has the weight's shape).
        let dst = unsafe { cpu::assume_init_mut(dst) };
        if let Proj::Frozen { lora: Some(l), .. } = self {
            let r = l.a.var.as_tensor().dim(0)?;
            with_f32(l.b.var.as_tensor(), |b| {
                with_f32(l.a.var.as_tensor(), |a| {
                    cpu::gemm(
                        dst,
                        out,
                        inp,
                        r,
                        cpu::rm(b, r),
                        cpu::rm(a, inp),
                        l.scale as f32,
                        true,
                    )
                })
            })??;
        }
        Ok(())
    }

    /// The weight with any adapter merged in (W + scale·B·A), dense. A weight without an
    /// adapter is handed out as it is (no copy).
    pub fn merged(&self) -> Result<Tensor> {
        if matches!(self, Proj::Frozen { lora: Some(_), .. }) && self.merges_on_cpu() {
            let (out, inp) = self.dims()?;
            let mut buf = cpu::uninit(out * inp);
            self.merge_into(&mut buf)?;
            // SAFETY: merge_into wrote every element.
            let data = unsafe { cpu::assume_init(buf) };
            return Ok(Tensor::from_vec(data, (out, inp), &Device::Cpu)?);
        }
        Ok(match self {
            Proj::Trained { w, .. } => w.var.as_tensor().clone(),
            Proj::Frozen { w, lora, .. } => {
                let base = w.dense()?;
                match lora {
                    Some(l) => (base + (l.b.var.matmul(l.a.var.as_tensor())? * l.scale)?)?,
                    None => base,
                }
            }
        })
    }

    pub fn bias(&self) -> Option<Tensor> {
        match self {
            Proj::Trained { bias, .. } => bias.as_ref().map(|b| b.as_tensor().clone()),
            Proj::Frozen { bias, .. } => bias.clone(),
        }
    }

    pub fn frozen_bytes(&self) -> usize {
        match self {
            Proj::Frozen { w, .. } => w.bytes(),
            Proj::Trained { .. } => 0,
        }
    }
}

/// An inverted-dropout mask shaped like `x`, drawn on `x`'s device by its generator seeded
/// with `seed` (so a resumed run on the same kind of device draws the same masks).
fn device_dropout_mask(x: &Tensor, p: f64, seed: u64) -> Result<Tensor> {
    let dev = x.device();
    dev.set_seed(seed)?;
    let keep = Tensor::rand(0f32, 1f32, x.shape(), dev)?.ge(p as f32)?;
    Ok((keep.to_dtype(x.dtype())? * (1.0 / (1.0 - p)))?)
}

/// An inverted-dropout mask drawn from `seed` (so a resumed run draws the same masks).
fn dropout_mask(n: usize, p: f64, seed: u64) -> Vec<f32> {
    let mut rng = StdRng::seed_from_u64(seed);
    let keep = 1.0 / (1.0 - p) as f32;
    (0..n)
        .map(|_| if rng.random::<f64>() < p { 0.0 } else { keep })
        .collect()
}

/// A norm or embedding weight: trained or fixed.
pub enum Param {
    Trained(Trainable),
    Fixed(Tensor),
}

impl Param {
    pub fn t(&self) -> &Tensor {
        match self {
            Param::Trained(v) => v.var.as_tensor(),
            Param::Fixed(t) => t,
        }
    }
}

pub struct Layer {
    pub input_norm: Param,
    pub q: Proj,
    pub k: Proj,
    pub v: Proj,
    pub o: Proj,
    pub q_norm: Option<Param>,
    pub k_norm: Option<Param>,
    /// Gemma's norm of the attention's output (HF `post_attention_layernorm`).
    pub attn_out_norm: Option<Param>,
    /// The norm before the MLP (Llama's `post_attention_layernorm`, Gemma's
    /// `pre_feedforward_layernorm`).
    pub post_norm: Param,
    /// Gemma's norm of the MLP's output (`post_feedforward_layernorm`).
    pub mlp_out_norm: Option<Param>,
    pub gate: Proj,
    pub up: Proj,
    pub down: Proj,
    /// The frozen q|k|v and gate|up weights stacked (their `Frozen::Dense` are views into
    /// these), for the CPU kernels' fused products; None when trained or quantized.
    pub qkv_stack: Option<Tensor>,
    pub gate_up_stack: Option<Tensor>,
}

impl Layer {
    pub fn projs(&self) -> [(&'static str, &'static str, &Proj); 7] {
        [
            ("self_attn", "q_proj", &self.q),
            ("self_attn", "k_proj", &self.k),
            ("self_attn", "v_proj", &self.v),
            ("self_attn", "o_proj", &self.o),
            ("mlp", "gate_proj", &self.gate),
            ("mlp", "up_proj", &self.up),
            ("mlp", "down_proj", &self.down),
        ]
    }
}

pub struct TrainModel {
    pub config: LlamaConfig,
    pub embed: Param,
    pub layers: Vec<Layer>,
    pub norm: Param,
    /// None when the LM head is tied to the embeddings.
    pub lm_head: Option<Proj>,
    pub rope: RopeTables,
    /// The sliding layers' RoPE (Gemma 3's local base), when some layers slide.
    pub rope_local: Option<RopeTables>,
    /// The identity rotation (cos 1, sin 0) for the layers without RoPE (SmolLM3's).
    pub rope_none: Option<RopeTables>,
    pub kernels: Kernels,
    /// The dtype products compute in: f32, or bf16 (mixed precision, the GPU's kernels
    /// only): see `config::Precision`.
    pub compute: DType,
    /// Trained tensors by name (HF names; LoRA ones in PEFT's naming), in a fixed order.
    pub trainable: Vec<Trainable>,
    pub device: Device,
}

impl TrainModel {
    /// Bytes held by frozen projection weights (what QLoRA shrinks).
    pub fn frozen_bytes(&self) -> usize {
        self.layers
            .iter()
            .flat_map(|l| l.projs().map(|(_, _, p)| p.frozen_bytes()))
            .sum()
    }

    pub fn trainable_params(&self) -> usize {
        self.trainable.iter().map(|t| t.var.elem_count()).sum()
    }

    /// Per-position losses (b·t) of `inputs` (b, t) against `targets` (`IGNORE` = no loss).
    pub fn losses(
        &self,
        inputs: &[u32],
        targets: &[u32],
        b: usize,
        t: usize,
        pass: &Pass,
    ) -> Result<Tensor> {
        self.losses_at(inputs, targets, b, t, pass, 1.0)
    }

    /// `losses` under softmax(logits / `temperature`): the negative log-probabilities of the
    /// distribution a sampler at that temperature draws from (GRPO's ratios need them).
    pub fn losses_at(
        &self,
        inputs: &[u32],
        targets: &[u32],
        b: usize,
        t: usize,
        pass: &Pass,
        temperature: f64,
    ) -> Result<Tensor> {
        self.forward_losses(inputs, targets, (b, t), None, pass, temperature)
    }

    /// `losses_at` of a right-padded batch (`Batch::from_samples`) without computing its
    /// padding (`packing::plan`): the rows' real tokens run packed end to end, each row
    /// attending only to itself, and the losses come back in the batch's (b·t) layout with 0
    /// at padding. On the CPU, rows that begin alike (a GRPO group's prompt, a preference
    /// pair's) run their common beginning once. Preference pairs and GRPO groups pad short
    /// rows to the longest, often doubling the products; TRL leaves that padding in on the CPU
    /// (its padding-free mode needs flash-attention kernels) and runs each prompt per row.
    pub fn batch_losses(&self, batch: &Batch, pass: &Pass, temperature: f64) -> Result<Tensor> {
        let (b, t) = (batch.b, batch.t);
        // Branches need the blocked attention's queries after a prefix: the CPU kernels.
        let share = pass.kernels == Kernels::Fused;
        let Some(p) = crate::packing::plan(batch, share) else {
            return self.losses_at(&batch.inputs, &batch.targets, b, t, pass, temperature);
        };
        let n = p.inputs.len();
        let packed =
            self.forward_losses(&p.inputs, &p.targets, (1, n), Some(&p), pass, temperature)?;
        // Padding positions read one extra zero; the gradient they send it goes nowhere.
        let zero = Tensor::zeros(1, packed.dtype(), packed.device())?;
        let all = Tensor::cat(&[&packed, &zero], 0)?;
        Ok(all.index_select(&Tensor::from_vec(p.index, b * t, packed.device())?, 0)?)
    }

    /// The forward pass of (b, t) rows, or with `packed`, of its pieces end to end (b = 1,
    /// t = their sum).
    fn forward_losses(
        &self,
        inputs: &[u32],
        targets: &[u32],
        (b, t): (usize, usize),
        packed: Option<&Packed>,
        pass: &Pass,
        temperature: f64,
    ) -> Result<Tensor> {
        let c = &self.config;
        let longest = packed.map_or(t, Packed::longest);
        if longest > c.max_position_embeddings {
            return Err(TrainError::Stopped(format!(
                "sequence of {longest} tokens is longer than the model's {} positions",
                c.max_position_embeddings
            )));
        }
        let k = pass.kernels;
        let n = b * t;
        let (h, kv, hd) = (c.num_heads, c.num_kv_heads, c.head_dim);
        let ids = Tensor::from_slice(inputs, n, &self.device)?;
        let x = match (&self.embed, k) {
            (Param::Trained(e), Kernels::Fused) => {
                linear::embed(e.var.as_tensor(), inputs, &e.grad)?
            }
            _ => self.embed.t().index_select(&ids, 0)?,
        };
        // Mixed precision: the residual stream, norms, softmax and loss stay f32; products
        // run in `dt` (norm outputs are cast down, product outputs cast back up).
        let dt = self.compute;
        let x32 = |y: Tensor| ops::cast(&y, DType::F32);
        let mut x = x32(x)?;
        let gemma = c.family.is_gemma();
        if gemma {
            // √hidden rounded to f32, as transformers scales Gemma's embeddings.
            x = (x * f64::from((c.hidden_size as f64).sqrt() as f32))?;
        }
        // An output norm (Gemma's) of a sublayer's f32 output.
        let out_norm = |y: Tensor, n: &Option<Param>| -> Result<Tensor> {
            Ok(match n {
                Some(w) => ops::rms_norm(&y, w.t(), c.rms_norm_eps, k)?,
                None => y,
            })
        };
        // The pieces the CPU's attention op runs: the packed ones, or each row whole.
        let cpu_pieces: Option<Vec<Piece>> = (k == Kernels::Fused).then(|| match packed {
            Some(p) => p.pieces.clone(),
            None => vec![
                Piece {
                    len: t,
                    start: 0,
                    after: None,
                };
                b
            ],
        });
        for (li, layer) in self.layers.iter().enumerate() {
            let site = |j: u64| (li as u64) * 16 + j;
            let window = c.window(li);
            let rope = match (window, &self.rope_local, &self.rope_none) {
                (_, _, Some(none)) if !c.rotates(li) => none,
                (Some(_), Some(local), _) => local,
                _ => &self.rope,
            };
            let hn = ops::rms_norm_to(&x, layer.input_norm.t(), c.rms_norm_eps, k, dt)?;
            // The CPU kernels: every row or piece in one op from the fused q|k|v rows
            // (q and k normed per head first where the model says so).
            // One product for the projections of one input, where every part can join.
            let group = |x: &Tensor, projs: &[&Proj], first: u64, stack: &Option<Tensor>| {
                let parts: Option<Vec<GroupPart>> = (projs.iter().enumerate())
                    .map(|(j, p)| p.group_part(x, pass, site(first + j as u64)))
                    .collect();
                parts.map(|parts| linear::group(x, parts, stack.clone()))
            };
            let o = if let Some(pieces) = &cpu_pieces {
                let fused = match layer.q_norm.is_none() && layer.k_norm.is_none() {
                    true => group(&hn, &[&layer.q, &layer.k, &layer.v], 0, &layer.qkv_stack),
                    false => None,
                };
                let rows = |p: &Proj, nh: usize, j: u64, norm: &Option<Param>| -> Result<Tensor> {
                    let y = p.forward(&hn, pass, site(j))?;
                    Ok(match norm {
                        Some(w) => {
                            ops::rms_norm(&y.reshape((n, nh, hd))?, w.t(), c.rms_norm_eps, k)?
                                .reshape((n, nh * hd))?
                        }
                        None => y,
                    })
                };
                let qkv = match fused {
                    Some(qkv) => qkv?,
                    None => Tensor::cat(
                        &[
                            rows(&layer.q, h, 0, &layer.q_norm)?,
                            rows(&layer.k, kv, 1, &layer.k_norm)?,
                            rows(&layer.v, kv, 2, &None)?,
                        ],
                        1,
                    )?,
                };
                let how = (c.attn_scale(), window, c.attn_softcap);
                attention::packed(&qkv, pieces, rope, (h, kv, hd), how)?
            } else {
                let at = (site(0), window, rope);
                self.attention_per_piece(&hn, layer, packed, pass, (b, t), at)?
            };
            let a = x32(layer.o.forward(&o, pass, site(3))?)?;
            x = (x + out_norm(a, &layer.attn_out_norm)?)?;
            let hn = ops::rms_norm_to(&x, layer.post_norm.t(), c.rms_norm_eps, k, dt)?;
            let fused = match cpu_pieces.is_some() {
                true => group(&hn, &[&layer.gate, &layer.up], 4, &layer.gate_up_stack),
                false => None,
            };
            let a = match fused {
                Some(gate_up) if gemma => cpu::gelu_mul_halves(&gate_up?)?,
                Some(gate_up) => cpu::silu_mul_halves(&gate_up?)?,
                None => {
                    let gate = layer.gate.forward(&hn, pass, site(4))?;
                    let up = layer.up.forward(&hn, pass, site(5))?;
                    match gemma {
                        true => ops::gelu_mul(&gate, &up, k)?,
                        false => ops::silu_mul(&gate, &up, k)?,
                    }
                }
            };
            let m = x32(layer.down.forward(&a, pass, site(6))?)?;
            x = (x + out_norm(m, &layer.mlp_out_norm)?)?;
        }
        let x = ops::rms_norm_to(&x, self.norm.t(), c.rms_norm_eps, k, dt)?;
        // The head: fused with the loss on CPU (no logits tensor), plain ops otherwise.
        if k == Kernels::Fused {
            let (w, head) = match (&self.lm_head, &self.embed) {
                (Some(Proj::Trained { w, bias: None }), _) => (
                    w.var.as_tensor().clone(),
                    linear::HeadW::Trained(w.grad.clone()),
                ),
                (
                    Some(Proj::Frozen {
                        w,
                        bias: None,
                        lora: None,
                    }),
                    _,
                ) => (w.dense()?, linear::HeadW::Frozen),
                (None, Param::Trained(e)) => (
                    e.var.as_tensor().clone(),
                    linear::HeadW::Trained(e.grad.clone()),
                ),
                (None, Param::Fixed(e)) => (e.clone(), linear::HeadW::Frozen),
                _ => unreachable!("the LM head has no bias or adapter"),
            };
            return Ok(linear::head_loss(
                &x,
                &w,
                targets,
                head,
                (
                    (1.0 / temperature) as f32,
                    c.final_softcap.map(|c| c as f32),
                ),
            )?);
        }
        let logits = match &self.lm_head {
            Some(p) => p.forward(&x, pass, u64::MAX)?,
            None => match &self.embed {
                Param::Trained(e) => ops::linear(&x, &ops::cast(e.var.as_tensor(), dt)?)?,
                Param::Fixed(e) => ops::frozen_matmul(&x, &Frozen::Dense(e.clone()), k)?,
            },
        };
        #[cfg(feature = "cuda")]
        if k == Kernels::Cuda && ops::cuda_fused() {
            // Straight from the products' dtype: no f32 copy of the logits.
            return Ok(crate::fused_cuda::cross_entropy(
                &logits,
                targets,
                temperature,
                c.final_softcap,
            )?);
        }
        let logits = x32(logits)?;
        // Gemma 2's cap comes before the temperature, as transformers' logits carry it.
        let logits = match c.final_softcap {
            Some(cap) => ((logits / cap)?.tanh()? * cap)?,
            None => logits,
        };
        let logits = if temperature == 1.0 {
            logits
        } else {
            (logits / temperature)?
        };
        Ok(ops::cross_entropy_reference(&logits, targets)?)
    }

    /// The attention of the reference and CUDA kernels: each row, or each packed piece,
    /// through `attention::attend`.
    fn attention_per_piece(
        &self,
        hn: &Tensor,
        layer: &Layer,
        packed: Option<&Packed>,
        pass: &Pass,
        (b, t): (usize, usize),
        (site0, window, rope): (u64, Option<usize>, &RopeTables),
    ) -> Result<Tensor> {
        let c = &self.config;
        let (k, dt) = (pass.kernels, self.compute);
        let (h, kv, hd) = (c.num_heads, c.num_kv_heads, c.head_dim);
        let heads = |p: &Proj, nh: usize, j: u64, norm: &Option<Param>| -> Result<Tensor> {
            let y = p.forward(hn, pass, site0 + j)?;
            let y = y.reshape((b, t, nh, hd))?;
            Ok(match norm {
                Some(w) => ops::rms_norm(&y, w.t(), c.rms_norm_eps, k)?,
                None => y,
            })
        };
        let (qh, kh) = (
            heads(&layer.q, h, 0, &layer.q_norm)?,
            heads(&layer.k, kv, 1, &layer.k_norm)?,
        );
        let vh = heads(&layer.v, kv, 2, &None)?;
        let Some(p) = packed else {
            return attention::attend(c, rope, (&qh, &kh, &vh), (k, dt), window);
        };
        let mut parts = Vec::with_capacity(p.pieces.len());
        let mut at = 0;
        for piece in &p.pieces {
            // These kernels pack without sharing: every piece is a row of its own from 0.
            if piece.after.is_some() || piece.start != 0 {
                return Err(TrainError::Stopped(
                    "a branch after a shared prefix runs on the CPU kernels only".into(),
                ));
            }
            let part = |x: &Tensor| x.narrow(1, at, piece.len);
            let qkv = (&part(&qh)?, &part(&kh)?, &part(&vh)?);
            parts.push(attention::attend(c, rope, qkv, (k, dt), window)?);
            at += piece.len;
        }
        Ok(Tensor::cat(&parts, 0)?)
    }

    /// Every weight by HF name, with adapters merged (for export as a plain checkpoint).
    pub fn merged_tensors(&self) -> Result<Vec<(String, Tensor)>> {
        Ok(self.merged_parts(false)?.0)
    }

    /// The inference engine's weights (rollouts, generating with the weights being trained):
    /// `merged_tensors`, except that on the CPU q|k|v and gate|up are merged straight into the
    /// stacked layout the engine fuses them into, one buffer each, instead of merged apart and
    /// copied together again by `Llama::load`.
    pub fn engine_weights(&self, origin: &str) -> Result<Weights> {
        let (tensors, stacked) = self.merged_parts(true)?;
        Ok(Weights::memory_stacked(tensors, stacked, origin))
    }

    /// `merged_tensors`, and with `stack` the q|k|v and gate|up groups that merge on the CPU
    /// apart, stacked, by their parts' weight names.
    #[allow(clippy::type_complexity)]
    fn merged_parts(
        &self,
        stack: bool,
    ) -> Result<(Vec<(String, Tensor)>, Vec<(Vec<String>, Tensor)>)> {
        let mut stacked = Vec::new();
        let mut out = vec![(
            "model.embed_tokens.weight".to_string(),
            self.embed.t().clone(),
        )];
        for (i, l) in self.layers.iter().enumerate() {
            let p = format!("model.layers.{i}");
            out.push((
                format!("{p}.input_layernorm.weight"),
                l.input_norm.t().clone(),
            ));
            // Gemma's three other norms, or Llama's one before the MLP.
            let norms = [
                ("post_attention_layernorm", l.attn_out_norm.as_ref()),
                ("pre_feedforward_layernorm", Some(&l.post_norm)),
                ("post_feedforward_layernorm", l.mlp_out_norm.as_ref()),
            ];
            match l.attn_out_norm.is_some() {
                true => {
                    for (name, n) in norms {
                        if let Some(n) = n {
                            out.push((format!("{p}.{name}.weight"), n.t().clone()));
                        }
                    }
                }
                false => out.push((
                    format!("{p}.post_attention_layernorm.weight"),
                    l.post_norm.t().clone(),
                )),
            }
            if let Some(n) = &l.q_norm {
                out.push((format!("{p}.self_attn.q_norm.weight"), n.t().clone()));
            }
            if let Some(n) = &l.k_norm {
                out.push((format!("{p}.self_attn.k_norm.weight"), n.t().clone()));
            }
            // Indices into `projs()`: q|k|v and gate|up are the engine's stacks.
            const STACKS: [&[usize]; 4] = [&[0, 1, 2], &[3], &[4, 5], &[6]];
            const APART: [&[usize]; 7] = [&[0], &[1], &[2], &[3], &[4], &[5], &[6]];
            let projs = l.projs();
            let name = |i: usize| format!("{p}.{}.{}.weight", projs[i].0, projs[i].1);
            for group in if stack { &STACKS[..] } else { &APART[..] } {
                let members: Vec<&Proj> = group.iter().map(|&i| projs[i].2).collect();
                if group.len() > 1 && members.iter().all(|m| m.merges_on_cpu()) {
                    stacked.push((
                        group.iter().map(|&i| name(i)).collect(),
                        stack_merged(&members)?,
                    ));
                } else {
                    for &i in *group {
                        out.push((name(i), projs[i].2.merged()?));
                    }
                }
                for &i in *group {
                    if let Some(b) = projs[i].2.bias() {
                        out.push((format!("{p}.{}.{}.bias", projs[i].0, projs[i].1), b));
                    }
                }
            }
        }
        out.push(("model.norm.weight".into(), self.norm.t().clone()));
        if let Some(h) = &self.lm_head {
            out.push(("lm_head.weight".into(), h.merged()?));
        }
        Ok((out, stacked))
    }
}

/// Projections of one input merged into one (rows stacked in order), each written once into
/// its rows of the buffer. They share the input width, checked.
fn stack_merged(projs: &[&Proj]) -> Result<Tensor> {
    let dims: Vec<(usize, usize)> = projs.iter().map(|p| p.dims()).collect::<Result<_>>()?;
    let inp = dims[0].1;
    assert!(
        dims.iter().all(|d| d.1 == inp),
        "stacked projections read one input"
    );
    let rows: usize = dims.iter().map(|d| d.0).sum();
    let mut buf = cpu::uninit(rows * inp);
    let mut rest = &mut buf[..];
    for (p, (out, _)) in projs.iter().zip(&dims) {
        let (mine, tail) = rest.split_at_mut(out * inp);
        p.merge_into(mine)?;
        rest = tail;
    }
    // SAFETY: the parts' rows cover the buffer, and merge_into wrote every element of each.
    let data = unsafe { cpu::assume_init(buf) };
    Ok(Tensor::from_vec(data, (rows, inp), &Device::Cpu)?)
}
