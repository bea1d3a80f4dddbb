//! The fused element-wise CPU operations training runs through, each with its own backward
//! pass: RMS norm, rotary embedding fused with the attention's head transpose, and the SiLU-gate
//! product; the row kernel of the cross-entropy that `linear`'s products use; the causal
//! softmax's reference (the fused attention is `attention`); and the frozen (possibly
//! quantized) weight type. candle's own fused versions cut the autograd graph and its matmul
//! backward computes gradients for frozen inputs; its composite versions allocate one tensor
//! per elementary step. Every op here has an unfused reference (`Kernels::Reference`, plain
//! candle ops, also the path on GPUs) that the gradient checks compare against. One op runs
//! on every device: the product with a frozen weight, whose backward skips the weight.
//!
//! Reductions run over a fixed number of chunks, never "one per thread", so the result does not
//! depend on the thread count and runs are bit-for-bit repeatable.

use candle_core::quantized::QTensor;
use candle_core::{CpuStorage, CustomOp1, CustomOp2, D, Device, Layout, Result, Shape, Tensor};
use galley_model::cpu::{assume_init, slice, uninit, with_f32, zeroed};
use rayon::prelude::*;
use std::sync::Arc;

/// Which implementation the model's forward pass uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernels {
    /// galley's fused CPU ops (the default on CPU).
    Fused,
    /// Plain candle ops: any device, slower, the reference the fused ops are checked against.
    Reference,
    /// On a CUDA GPU: galley's CUDA kernels where it has them (`ops_cuda`: the causal
    /// softmax; `fused_cuda`: RMS norm, rotary embedding, the SiLU or GELU gate, cross-entropy), plain
    /// candle ops (cuBLAS products) elsewhere. The default there.
    Cuda,
}

/// Whether `Kernels::Cuda` runs galley's fused CUDA ops (`fused_cuda`) rather than candle's
/// composites: on, unless `GALLEY_CUDA_FUSED=0` (so that a benchmark can measure both).
pub fn cuda_fused() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var("GALLEY_CUDA_FUSED").map_or(true, |v| v != "0"))
}

/// Label of a position that does not count in the loss.
pub const IGNORE: u32 = u32::MAX;

fn out(v: Vec<f32>, shape: &Shape) -> Result<Tensor> {
    Tensor::from_vec(v, shape.clone(), &Device::Cpu)
}

/// Rows per parallel task for row-wise kernels.
fn rows_per_task(rows: usize) -> usize {
    rows.div_ceil(64).max(1)
}

// ---------------------------------------------------------------- RMS norm

struct RmsNorm {
    eps: f32,
}

fn rstd(row: &[f32], eps: f32) -> f32 {
    let ss: f32 = row.iter().map(|v| v * v).sum();
    1.0 / (ss / row.len() as f32 + eps).sqrt()
}

impl CustomOp2 for RmsNorm {
    fn name(&self) -> &'static str {
        "galley-rms-norm"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, w) = (slice(s1, l1)?, slice(s2, l2)?);
        let d = w.len();
        let mut y = zeroed(x.len());
        y.par_chunks_mut(d).zip(x.par_chunks(d)).for_each(|(y, x)| {
            let r = rstd(x, self.eps);
            for i in 0..d {
                y[i] = x[i] * r * w[i];
            }
        });
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }
    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let d = w.elem_count();
        let (dx, dw) = with_f32(x, |x| {
            with_f32(w, |w| {
                with_f32(g, |g| {
                    let rows = x.len() / d;
                    let per = rows_per_task(rows);
                    let mut dx = zeroed(x.len());
                    let partial: Vec<Vec<f32>> = dx
                        .par_chunks_mut(per * d)
                        .enumerate()
                        .map(|(c, dxc)| {
                            let mut dw = vec![0f32; d];
                            for (r, dxr) in dxc.chunks_mut(d).enumerate() {
                                let row = c * per + r;
                                let (xr, gr) = (&x[row * d..][..d], &g[row * d..][..d]);
                                let rs = rstd(xr, self.eps);
                                let mut dot = 0f32;
                                for i in 0..d {
                                    dot += gr[i] * w[i] * xr[i];
                                    dw[i] += gr[i] * xr[i] * rs;
                                }
                                let k = rs * rs * rs * dot / d as f32;
                                for i in 0..d {
                                    dxr[i] = rs * gr[i] * w[i] - k * xr[i];
                                }
                            }
                            dw
                        })
                        .collect();
                    let mut dw = vec![0f32; d];
                    for p in partial {
                        for i in 0..d {
                            dw[i] += p[i];
                        }
                    }
                    (dx, dw)
                })
            })
        })???;
        Ok((Some(out(dx, x.shape())?), Some(out(dw, w.shape())?)))
    }
}

/// RMS norm over the last dimension, scaled by `w`.
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f64, k: Kernels) -> Result<Tensor> {
    rms_norm_to(x, w, eps, k, x.dtype())
}

/// `rms_norm` with its result in `dt` (on a GPU the cast is part of the norm's write).
pub fn rms_norm_to(
    x: &Tensor,
    w: &Tensor,
    eps: f64,
    k: Kernels,
    dt: candle_core::DType,
) -> Result<Tensor> {
    #[cfg(feature = "cuda")]
    if k == Kernels::Cuda
        && cuda_fused()
        && (x.dtype() == candle_core::DType::F32 || x.dtype() == dt)
    {
        return crate::fused_cuda::rms_norm(x, w, eps, dt);
    }
    cast(&rms_norm_plain(x, w, eps, k)?, dt)
}

fn rms_norm_plain(x: &Tensor, w: &Tensor, eps: f64, k: Kernels) -> Result<Tensor> {
    match k {
        Kernels::Fused => x.contiguous()?.apply_op2(w, RmsNorm { eps: eps as f32 }),
        Kernels::Reference | Kernels::Cuda => {
            candle_nn::ops::rms_norm_slow(x, &cast(w, x.dtype())?, eps as f32)
        }
    }
}

/// `t` in dtype `dt` (the same tensor when it already is; a cast keeps the autograd graph).
pub fn cast(t: &Tensor, dt: candle_core::DType) -> Result<Tensor> {
    match t.dtype() == dt {
        true => Ok(t.clone()),
        false => t.to_dtype(dt),
    }
}

// ---------------------------------------------------------------- rotary embedding

/// cos/sin tables (positions x half head dim) shared by every layer.
#[derive(Clone)]
pub struct RopeTables {
    pub cos: Arc<Vec<f32>>,
    pub sin: Arc<Vec<f32>>,
    pub half: usize,
    cos_t: Tensor,
    sin_t: Tensor,
}

impl RopeTables {
    pub fn new(inv_freq: &[f32], positions: usize, dev: &Device) -> Result<Self> {
        let half = inv_freq.len();
        let mut cos = Vec::with_capacity(positions * half);
        let mut sin = Vec::with_capacity(positions * half);
        for p in 0..positions {
            for f in inv_freq {
                let a = p as f32 * f;
                cos.push(a.cos());
                sin.push(a.sin());
            }
        }
        let cos_t = Tensor::from_slice(&cos, (positions, half), dev)?;
        let sin_t = Tensor::from_slice(&sin, (positions, half), dev)?;
        Ok(Self {
            cos: Arc::new(cos),
            sin: Arc::new(sin),
            half,
            cos_t,
            sin_t,
        })
    }

    /// The (positions, half) cos and sin tables on the model's device, f32.
    pub fn device_tables(&self) -> (&Tensor, &Tensor) {
        (&self.cos_t, &self.sin_t)
    }
}

/// One head's (d) values rotated by `sign` times the angles whose cos/sin are `c`/`s`, in the
/// HF half-split layout.
pub(crate) fn rotate(x: &[f32], y: &mut [f32], c: &[f32], s: &[f32], sign: f32) {
    let half = c.len();
    // Halves and zipped iterators rather than indices: no bounds checks, so the loop
    // vectorizes (the same arithmetic, the same bits).
    let (x1, x2) = x[..2 * half].split_at(half);
    let (y1, y2) = y[..2 * half].split_at_mut(half);
    let pairs = x1.iter().zip(x2).zip(c.iter().zip(&s[..half]));
    for ((y1, y2), ((&a, &b), (&c, &s))) in y1.iter_mut().zip(y2).zip(pairs) {
        let sn = sign * s;
        *y1 = a * c - b * sn;
        *y2 = b * c + a * sn;
    }
}

/// Rotation fused with the (b, t, heads, d) -> (b, heads, t, d) transpose the attention needs:
/// one pass instead of a copy plus a rotation, and one tensor fewer kept by the graph.
struct RopeHeads {
    tables: RopeTables,
    dims: (usize, usize, usize, usize),
    /// Position of the first row (a branch after a shared prefix starts past 0).
    start: usize,
}

impl RopeHeads {
    /// Rotates by `sign` x angle; `to_heads`: (b, t, h, d) -> (b, h, t, d), else the reverse.
    fn run(&self, x: &[f32], sign: f32, to_heads: bool) -> Vec<f32> {
        let (_, t, h, d) = self.dims;
        let half = d / 2;
        let mut y = zeroed(x.len());
        y.par_chunks_mut(d).enumerate().for_each(|(di, yr)| {
            // The destination row's (sequence, head, position) and its source row.
            let (tt, si) = if to_heads {
                let (bb, hh, tt) = (di / (h * t), (di / t) % h, di % t);
                (tt, (bb * t + tt) * h + hh)
            } else {
                let (bb, tt, hh) = (di / (t * h), (di / h) % t, di % h);
                (tt, (bb * h + hh) * t + tt)
            };
            let xr = &x[si * d..][..d];
            let at = (self.start + tt) * half;
            let (c, s) = (
                &self.tables.cos[at..][..half],
                &self.tables.sin[at..][..half],
            );
            rotate(xr, yr, c, s, sign);
        });
        y
    }
}

impl CustomOp1 for RopeHeads {
    fn name(&self) -> &'static str {
        "galley-rope-heads"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (b, t, h, d) = self.dims;
        Ok((
            CpuStorage::F32(self.run(slice(s, l)?, 1.0, true)),
            Shape::from((b, h, t, d)),
        ))
    }
    fn bwd(&self, x: &Tensor, _res: &Tensor, g: &Tensor) -> Result<Option<Tensor>> {
        let dx = with_f32(g, |g| self.run(g, -1.0, false))?;
        Ok(Some(out(dx, x.shape())?))
    }
}

/// `x` (b, t, heads, d) rotated and laid out as (b, heads, t, d).
pub fn rope_heads(x: &Tensor, tables: &RopeTables, k: Kernels) -> Result<Tensor> {
    rope_heads_from(x, tables, k, 0)
}

/// `rope_heads` for rows at positions `start`.. (a branch after a shared prefix).
pub fn rope_heads_from(
    x: &Tensor,
    tables: &RopeTables,
    k: Kernels,
    start: usize,
) -> Result<Tensor> {
    let t = x.dim(1)?;
    if start + t > tables.cos.len() / tables.half.max(1) {
        candle_core::bail!("rope: positions {start}..{} past the tables", start + t);
    }
    match k {
        Kernels::Fused => {
            let dims = x.dims4()?;
            x.contiguous()?.apply_op1(RopeHeads {
                tables: tables.clone(),
                dims,
                start,
            })
        }
        #[cfg(feature = "cuda")]
        Kernels::Cuda if cuda_fused() && start == 0 => crate::fused_cuda::rope_heads(x, tables),
        Kernels::Reference | Kernels::Cuda => candle_nn::rotary_emb::rope_slow(
            &x.transpose(1, 2)?.contiguous()?,
            &cast(&tables.cos_t.narrow(0, start, t)?, x.dtype())?,
            &cast(&tables.sin_t.narrow(0, start, t)?, x.dtype())?,
        ),
    }
}

// ---------------------------------------------------------------- causal softmax (reference)

/// Plain candle: softmax(scale * s) over the last dimension with keys after the query masked
/// out, and with `window` those more than `window - 1` positions before it (a sliding-window
/// layer's); `s` is (..., rows, t) where row r is query position r % t. The reference for
/// the CPU attention op's probabilities (`attention::packed`). Computed in f32 whatever
/// `s`'s dtype (as autocast does), the probabilities returned in `s`'s dtype.
pub fn causal_softmax_windowed(s: &Tensor, scale: f64, window: Option<usize>) -> Result<Tensor> {
    let (rows, t) = (s.dim(D::Minus2)?, s.dim(D::Minus1)?);
    let dev = s.device();
    let mask = if let Some(w) = window {
        let mask: Vec<f32> = (0..rows)
            .flat_map(|r| {
                let at = r % t;
                (0..t).map(move |j| match j > at || j + w <= at {
                    true => f32::NEG_INFINITY,
                    false => 0.0,
                })
            })
            .collect();
        Tensor::from_vec(mask, (rows, t), dev)?
    } else if rows % t == 0 && !dev.is_cpu() {
        // Built on the device: no rows x t upload per layer and step.
        let q = Tensor::arange(0u32, t as u32, dev)?.repeat(rows / t)?;
        let k = Tensor::arange(0u32, t as u32, dev)?;
        let future = k.unsqueeze(0)?.broadcast_gt(&q.unsqueeze(1)?)?;
        let neg = Tensor::new(f32::NEG_INFINITY, dev)?.broadcast_as((rows, t))?;
        future.where_cond(
            &neg,
            &Tensor::zeros((rows, t), candle_core::DType::F32, dev)?,
        )?
    } else {
        let mask: Vec<f32> = (0..rows)
            .flat_map(|r| (0..t).map(move |j| if j > r % t { f32::NEG_INFINITY } else { 0.0 }))
            .collect();
        Tensor::from_vec(mask, (rows, t), dev)?
    };
    let s32 = cast(s, candle_core::DType::F32)?;
    let p = candle_nn::ops::softmax(&(s32 * scale)?.broadcast_add(&mask)?, D::Minus1)?;
    cast(&p, s.dtype())
}

/// `GALLEY_CUDA_ATTENTION` (`auto`, `flash` or `dense`), read once per process.
pub fn attention_setting() -> Option<&'static str> {
    static SETTING: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    SETTING
        .get_or_init(|| std::env::var("GALLEY_CUDA_ATTENTION").ok())
        .as_deref()
}

/// Dense attention's kept scores past which the fused attention (`flash_cuda`) is used on a
/// GPU: the dense path keeps b·h·t² scores and as many probabilities per layer for the
/// backward pass, and the fused one runs on the CUDA cores, so it pays only where the
/// dense path's memory does not fit a layer budget.
pub const FLASH_FROM_BYTES: usize = 1 << 30;

/// Whether the GPU attention of a (b, h heads, t positions, d head dim) batch with
/// `elem_bytes`-byte scores goes through the fused kernels: `setting` (the value of
/// `GALLEY_CUDA_ATTENTION`) `flash` or `dense` decides; otherwise (`auto`) the fused kernels
/// take head dimensions they support once the dense scores of a layer pass
/// `FLASH_FROM_BYTES`.
pub fn flash_attention_wanted(
    (b, h, t, d): (usize, usize, usize, usize),
    elem_bytes: usize,
    setting: Option<&str>,
) -> bool {
    let supported = crate::cuda_src::flash_supports(d);
    match setting {
        Some("flash") => supported,
        Some("dense") => false,
        _ => supported && b * h * t * t * elem_bytes > FLASH_FROM_BYTES,
    }
}

// ---------------------------------------------------------------- SiLU gate

struct SiluMul;

impl CustomOp2 for SiluMul {
    fn name(&self) -> &'static str {
        "galley-silu-mul"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (g, u) = (slice(s1, l1)?, slice(s2, l2)?);
        let mut y = uninit(g.len());
        y.par_chunks_mut(4096)
            .zip(g.par_chunks(4096).zip(u.par_chunks(4096)))
            .for_each(|(y, (g, u))| galley_model::kernels::rowwise::silu_gate(y, g, u));
        // SAFETY: the chunks cover `y` and every element of each was written.
        let y = unsafe { assume_init(y) };
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }
    fn bwd(
        &self,
        g: &Tensor,
        u: &Tensor,
        _res: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (dg, du) = with_f32(g, |g| {
            with_f32(u, |u| {
                with_f32(dy, |dy| {
                    let mut dg = uninit(g.len());
                    let mut du = uninit(g.len());
                    dg.par_chunks_mut(4096)
                        .zip(du.par_chunks_mut(4096))
                        .enumerate()
                        .for_each(|(c, (dg, du))| {
                            let o = c * 4096..c * 4096 + dg.len();
                            let (g, u, dy) = (&g[o.clone()], &u[o.clone()], &dy[o]);
                            galley_model::kernels::rowwise::silu_gate_grad(dg, du, g, u, dy);
                        });
                    // SAFETY: the chunks cover both buffers, every element written.
                    unsafe { (assume_init(dg), assume_init(du)) }
                })
            })
        })???;
        Ok((Some(out(dg, g.shape())?), Some(out(du, u.shape())?)))
    }
}

/// silu(g) * u, elementwise.
pub fn silu_mul(g: &Tensor, u: &Tensor, k: Kernels) -> Result<Tensor> {
    match k {
        Kernels::Fused => g.contiguous()?.apply_op2(&u.contiguous()?, SiluMul),
        #[cfg(feature = "cuda")]
        Kernels::Cuda if cuda_fused() => {
            crate::fused_cuda::gate(g, u, crate::fused_cuda::Act::Silu)
        }
        Kernels::Reference | Kernels::Cuda => g.silu()? * u,
    }
}

/// gelu(g) * u elementwise, GELU's tanh form (Gemma's `gelu_pytorch_tanh`, candle's `gelu`),
/// on the reference and CUDA kernels (the CPU kernels fuse it with the gate/up product).
pub fn gelu_mul(g: &Tensor, u: &Tensor, k: Kernels) -> Result<Tensor> {
    match k {
        #[cfg(feature = "cuda")]
        Kernels::Cuda if cuda_fused() => {
            crate::fused_cuda::gate(g, u, crate::fused_cuda::Act::GeluTanh)
        }
        _ => g.gelu()? * u,
    }
}

// ---------------------------------------------------------------- cross-entropy

/// Each row's log-sum-exp and the negative log-likelihood of its target ((0, 0) for rows
/// whose target is `IGNORE`).
pub(crate) fn nll_rows(logits: &[f32], v: usize, targets: &[u32]) -> (Vec<f32>, Vec<f32>) {
    logits
        .par_chunks(v)
        .zip(targets.par_iter())
        .map(|(row, &t)| {
            if t == IGNORE {
                return (0.0, 0.0);
            }
            let lse = galley_model::kernels::rowwise::log_sum_exp(row);
            (lse, lse - row[t as usize])
        })
        .unzip()
}

/// Turns a row of logits into the gradient of `g` times its NLL, in place: g·(softmax - onehot).
pub(crate) fn nll_grad_row(row: &mut [f32], target: u32, g: f32, lse: f32) {
    if target == IGNORE {
        row.fill(0.0);
        return;
    }
    galley_model::kernels::rowwise::scaled_exp(row, lse, g);
    row[target as usize] -= g;
}

/// Plain candle: per-row negative log-likelihood of `targets` under `logits` (n, vocab); rows
/// whose target is `IGNORE` give 0. The reference for `linear::head_loss`.
pub fn cross_entropy_reference(logits: &Tensor, targets: &[u32]) -> Result<Tensor> {
    let keep: Vec<f32> = targets
        .iter()
        .map(|&t| if t == IGNORE { 0.0 } else { 1.0 })
        .collect();
    let idx: Vec<u32> = targets
        .iter()
        .map(|&t| if t == IGNORE { 0 } else { t })
        .collect();
    let (dev, n) = (logits.device(), targets.len());
    let lsm = candle_nn::ops::log_softmax(logits, D::Minus1)?;
    let picked = lsm
        .gather(&Tensor::from_vec(idx, (n, 1), dev)?, 1)?
        .squeeze(1)?;
    picked.neg()? * Tensor::from_vec(keep, n, dev)?
}

// ---------------------------------------------------------------- frozen weights

/// A weight (out, in) that is never trained: dense f32, or quantized blocks dequantized for
/// each product (QLoRA keeps the base this way).
#[derive(Clone)]
pub enum Frozen {
    Dense(Tensor),
    Quant(Arc<QTensor>),
}

impl Frozen {
    pub fn dims(&self) -> (usize, usize) {
        let d = match self {
            Frozen::Dense(t) => t.dims().to_vec(),
            Frozen::Quant(q) => q.shape().dims().to_vec(),
        };
        (d[0], d[1])
    }

    /// The weight as a dense f32 tensor (dequantized when stored quantized).
    pub fn dense(&self) -> Result<Tensor> {
        match self {
            Frozen::Dense(t) => Ok(t.clone()),
            Frozen::Quant(q) => q.dequantize(&q.device()),
        }
    }

    /// Runs `f` on the weight as dense f32 (out, in): a dense tensor's own data, or quantized
    /// blocks dequantized into a per-thread scratch buffer that is reused product after
    /// product (a fresh tensor per product would fragment the heap and eat QLoRA's savings).
    pub fn with_dense<R>(&self, f: impl FnOnce(&[f32]) -> R) -> Result<R> {
        use candle_core::quantized::GgmlDType;
        use candle_core::quantized::k_quants::{BlockQ4_0, BlockQ4_1, BlockQ8_0, GgmlType};
        thread_local! {
            static SCRATCH: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        fn unpack<B: GgmlType>(bytes: &[u8], out: &mut [f32]) {
            let n = bytes.len() / std::mem::size_of::<B>();
            assert_eq!(bytes.as_ptr().align_offset(std::mem::align_of::<B>()), 0);
            // SAFETY: CPU QTensor storage is a Vec<B> viewed as bytes (candle's `data`), so the
            // pointer is aligned for B and holds exactly `n` blocks of plain-old-data.
            let blocks = unsafe { std::slice::from_raw_parts(bytes.as_ptr() as *const B, n) };
            B::to_float(blocks, out);
        }
        let q = match self {
            Frozen::Dense(t) => return with_f32(t, f),
            Frozen::Quant(q) => q,
        };
        let (o, i) = self.dims();
        let unpack: fn(&[u8], &mut [f32]) = match q.dtype() {
            GgmlDType::Q4_0 => unpack::<BlockQ4_0>,
            GgmlDType::Q4_1 => unpack::<BlockQ4_1>,
            GgmlDType::Q8_0 => unpack::<BlockQ8_0>,
            _ => return with_f32(&q.dequantize(&Device::Cpu)?, f),
        };
        let data = q.data()?;
        SCRATCH.with(|s| {
            let mut buf = s.borrow_mut();
            buf.resize(o * i, 0.0);
            unpack(&data, &mut buf[..o * i]);
            Ok(f(&buf[..o * i]))
        })
    }

    /// Bytes the weight occupies in memory.
    pub fn bytes(&self) -> usize {
        match self {
            Frozen::Dense(t) => t.elem_count() * 4,
            Frozen::Quant(q) => q.storage_size_in_bytes(),
        }
    }
}

/// `x` (..., in) times the frozen `w` (out, in) transposed; only `x` receives a gradient.
pub fn frozen_matmul(x: &Tensor, w: &Frozen, k: Kernels) -> Result<Tensor> {
    match k {
        Kernels::Fused if x.device().is_cpu() => crate::linear::frozen(x, w),
        Kernels::Cuda => frozen_product(x, &cast(&w.dense()?, x.dtype())?),
        _ => x.broadcast_matmul(&cast(&w.dense()?, x.dtype())?.t()?),
    }
}

/// x·wᵀ on any device, with a backward pass for `x` alone. candle's matmul backward computes
/// the gradient of both operands, trained or not: for a frozen weight one more product as
/// large as the forward's, then a weight-sized zero fill and add, all thrown away. On a GPU
/// under LoRA that was a third of the backward pass's products.
struct FrozenProduct;

/// (n, i)·(o, i)ᵀ through the backend's own matmul (cuBLAS on a GPU).
fn frozen_product_fwd<S: candle_core::backend::BackendStorage>(
    x: &S,
    lx: &Layout,
    w: &S,
    lw: &Layout,
) -> Result<(S, Shape)> {
    let ((n, i), (o, wi)) = (lx.shape().dims2()?, lw.shape().dims2()?);
    if i != wi {
        candle_core::bail!("frozen product: {n}x{i} input against a {o}x{wi} weight");
    }
    let y = x.matmul(w, (1, n, o, i), lx, &lw.transpose(0, 1)?)?;
    Ok((y, Shape::from((n, o))))
}

impl CustomOp2 for FrozenProduct {
    fn name(&self) -> &'static str {
        "galley-frozen-product"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        frozen_product_fwd(s1, l1, s2, l2)
    }
    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::cuda::CudaStorage,
        l1: &Layout,
        s2: &candle_core::cuda::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::cuda::CudaStorage, Shape)> {
        frozen_product_fwd(s1, l1, s2, l2)
    }
    fn bwd(
        &self,
        _x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        // Shapes: g (n, o)·w (o, i) -> dx (n, i).
        Ok((Some(g.contiguous()?.matmul(w)?), None))
    }
}

/// `x` (..., in) times `w` (out, in, same dtype and device) transposed, as a frozen weight:
/// `x` gets a gradient, `w` never does (not even when it is a variable).
pub fn frozen_product(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    let (&i, lead) = x.dims().split_last().expect("rank >= 1");
    let n = lead.iter().product::<usize>();
    let x2 = x.contiguous()?.reshape((n, i))?;
    let y = x2.apply_op2(&w.contiguous()?, FrozenProduct)?;
    let mut dims = lead.to_vec();
    dims.push(w.dim(0)?);
    y.reshape(dims)
}

/// `x` (..., in) times the trained `w` (out, in) transposed.
pub fn linear(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    x.broadcast_matmul(&w.t()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fused_gpu_attention_is_picked_by_memory_or_by_setting() {
        // SmolLM2-1.7B's shape (32 heads of 64) in bf16: 2,048 tokens keep 256 MiB of scores
        // a layer (dense), 8,192 keep 4 GiB (fused).
        assert!(!flash_attention_wanted((1, 32, 2048, 64), 2, None));
        assert!(flash_attention_wanted((1, 32, 8192, 64), 2, None));
        assert!(flash_attention_wanted((1, 32, 8192, 64), 2, Some("auto")));
        assert!(!flash_attention_wanted((1, 32, 8192, 64), 2, Some("dense")));
        assert!(flash_attention_wanted((1, 32, 128, 64), 2, Some("flash")));
        // Head dimensions the kernels do not take stay dense whatever the setting.
        assert!(!flash_attention_wanted((1, 32, 8192, 80), 2, Some("flash")));
        assert!(!flash_attention_wanted((1, 32, 8192, 288), 2, None));
        // Gemma's 256-wide heads take it.
        assert!(flash_attention_wanted((1, 8, 16384, 256), 2, None));
    }
}
