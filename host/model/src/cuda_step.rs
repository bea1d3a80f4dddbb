//! The fused decode step for small batches on the GPU: a layer in five kernels instead of
//! nine. `decode::Decoder` replays a step as one CUDA graph whose kernels run as a dependent
//! chain at ~5 µs each (measured on an H200: 276 kernels, 1.4 ms a step for SmolLM2-135M),
//! so the step's time is its kernel count. Here the RMS norm is folded into the product after
//! it (every block renormalises the few rows itself), RoPE and the cache write into the
//! q|k|v product's epilogue, and SiLU into the gate|up product's:
//!
//! `qkv_step` (residual add, norm, q|k|v, RoPE, cache) → `attend` → `gemv` (o) →
//! `mlp_up_step` (residual add, norm, gate|up, SiLU) → `gemv` (down)
//!
//! Gemma's layers take the same chain: each sublayer's output norm folds into the residual add
//! of the kernel after it, GELU's tanh form replaces SiLU, and the decode attention applies
//! Gemma 2's soft cap. Heads normed before their rotation (Gemma 3, Qwen3) make it six
//! kernels: `qkv_step` writes the projection as it is and `rope_kv` norms, rotates and caches.
//!
//! The products are galley's own GEMV (a warp per weight row, read once for every row of the
//! batch), so this path takes at most `cuda_src::FUSED_STEP_MAX_ROWS` rows; larger batches
//! keep cuBLAS. Kernels: `kernels/decode.cu`; launch shapes: `cuda_src`, as the CPU
//! emulation tests launch them.

use crate::cuda::{slice, view};
use crate::cuda_decode::{MODULE, launch_err, ptx};
use crate::cuda_src::{self, StepLaunch};
use crate::layers::rotary::Angles;
use candle_core::backend::BackendStorage;
use candle_core::cuda::cudarc::driver::PushKernelArg;
use candle_core::cuda::cudarc::driver::{CudaSlice, DeviceRepr, LaunchArgs, LaunchConfig};
use candle_core::cuda::{CudaDType, CudaStorage};
use candle_core::{CpuStorage, CustomOp1, DType, Layout, Result, Shape, Tensor, bail};

fn launch(lb: &mut LaunchArgs, l: StepLaunch) -> Result<()> {
    let cfg = LaunchConfig {
        grid_dim: (l.grid.0, l.grid.1, 1),
        block_dim: (l.block, 1, 1),
        shared_mem_bytes: l.shared_bytes as u32,
    };
    // SAFETY: every caller pushes the kernel's parameters in order, with buffers of the sizes
    // checked before; the shared memory is within `fused_step_fits`' 48 KiB.
    unsafe { lb.launch(cfg) }.map(|_| ()).map_err(launch_err)
}

/// A weight and its optional bias, as the ops hold them.
struct Held {
    w: Tensor,
    bias: Option<Tensor>,
}

macro_rules! dispatch {
    ($self:ident, $s:ident, $l:ident, $name:literal, $shape:expr) => {{
        let out = match $s.dtype() {
            DType::F32 => $self.run::<f32>(concat!($name, "_f32"), $s, $l)?,
            DType::BF16 => $self.run::<half::bf16>(concat!($name, "_bf16"), $s, $l)?,
            d => bail!(
                concat!("galley's ", $name, " takes f32 or bf16, not {:?}"),
                d
            ),
        };
        Ok((out, $shape))
    }};
}

// ---------------------------------------------------------------- q|k|v

struct QkvStep {
    d: Tensor,
    /// The previous sublayer's output norm (Gemma's), applied to `d` first.
    dnorm: Option<Tensor>,
    /// Write the projection as it is (heads normed before rotation go through `rope_kv`).
    raw: bool,
    norm: Tensor,
    eps: f32,
    proj: Held,
    cos: Tensor,
    sin: Tensor,
    slot: Tensor,
    k: Tensor,
    v: Tensor,
    /// b, hidden, heads, kv_heads, head_dim, capacity
    dims: [usize; 6],
}

impl QkvStep {
    fn run<T: CudaDType + DeviceRepr>(
        &self,
        name: &str,
        s: &CudaStorage,
        l: &Layout,
    ) -> Result<CudaStorage> {
        let [b, n, h, kv, d, cap] = self.dims;
        let width = (h + 2 * kv) * d;
        if self.proj.w.dims() != [width, n]
            || self.d.elem_count() != b * n
            || self.k.dims() != [b, kv, cap, d]
            || self.slot.dims() != [b]
        {
            bail!(
                "qkv_step: weight {:?}, caches {:?}, slots {:?} for {b} rows of {n}",
                self.proj.w.dims(),
                self.k.dims(),
                self.slot.dims()
            )
        }
        let dev = s.device().clone();
        let hs = slice::<T>(s, l, "the residual stream")?;
        let held = [
            &self.d,
            &self.norm,
            &self.proj.w,
            &self.cos,
            &self.sin,
            &self.slot,
            &self.k,
            &self.v,
        ]
        .map(Tensor::storage_and_layout);
        let bias = self.proj.bias.as_ref().map(Tensor::storage_and_layout);
        let dv = view::<T>(&held[0].0, held[0].1, "the sublayer output")?;
        let nw = view::<T>(&held[1].0, held[1].1, "the norm's weight")?;
        let w = view::<T>(&held[2].0, held[2].1, "the q|k|v weight")?;
        let cs = view::<T>(&held[3].0, held[3].1, "cos")?;
        let sn = view::<T>(&held[4].0, held[4].1, "sin")?;
        let slot = view::<u32>(&held[5].0, held[5].1, "slot")?;
        let kc = view::<T>(&held[6].0, held[6].1, "the key cache")?;
        let vc = view::<T>(&held[7].0, held[7].1, "the value cache")?;
        let bv = match &bias {
            Some((st, bl)) => Some(view::<T>(st, bl, "the q|k|v bias")?),
            None => None,
        };
        let dn_held = self.dnorm.as_ref().map(Tensor::storage_and_layout);
        let dnv = match &dn_held {
            Some((st, dl)) => Some(view::<T>(st, dl, "the output norm's weight")?),
            None => None,
        };
        // SAFETY: block (0, 0) writes all b n stream values, the heads' blocks every element of
        // the (b, h, 1, d) queries, or of the (b, 1, (h + 2 kv) d) raw projection.
        let mut out: CudaSlice<T> = unsafe { dev.alloc::<T>(b * n + b * self.q_width())? };
        let (mut hout, mut q) = out.split_at_mut(b * n);
        let f = dev.get_or_load_custom_func(name, MODULE, ptx()?)?;
        let has_bias = bv.is_some() as i32;
        let ints_a = [n as i32, b as i32];
        let ints_b = [h as i32, kv as i32, d as i32, cap as i32];
        let (has_dw, raw) = (dnv.is_some() as i32, self.raw as i32);
        let mut lb = f.builder();
        lb.arg(&hs).arg(&dv);
        // Without an output norm the kernel reads no `dw`: the stream's weight stands in.
        match &dnv {
            Some(dn) => lb.arg(dn),
            None => lb.arg(&nw),
        };
        lb.arg(&has_dw).arg(&nw).arg(&mut hout).arg(&w);
        match &bv {
            Some(bv) => lb.arg(bv),
            None => lb.arg(&w),
        };
        lb.arg(&has_bias)
            .arg(&cs)
            .arg(&sn)
            .arg(&slot)
            .arg(&mut q)
            .arg(&kc)
            .arg(&vc);
        for i in &ints_a {
            lb.arg(i);
        }
        lb.arg(&self.eps);
        for i in &ints_b {
            lb.arg(i);
        }
        lb.arg(&raw);
        // The kernel writes the caches (the decoder's own buffers) only at each row's slot
        // inside them, and none of them in raw mode.
        launch(&mut lb, cuda_src::qkv_step(h + 2 * kv, d, b, n))?;
        Ok(CudaStorage::wrap_cuda_slice(out, dev))
    }
}

impl CustomOp1 for QkvStep {
    fn name(&self) -> &'static str {
        "galley-qkv-step"
    }
    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        bail!("galley's CUDA qkv_step was given a CPU tensor")
    }
    fn cuda_fwd(&self, s: &CudaStorage, l: &Layout) -> Result<(CudaStorage, Shape)> {
        let [b, n, ..] = self.dims;
        dispatch!(
            self,
            s,
            l,
            "qkv_step",
            Shape::from(b * n + b * self.q_width())
        )
    }
}

impl QkvStep {
    /// A row's width in the second output: the rotated queries, or the raw projection.
    fn q_width(&self) -> usize {
        let [_, _, h, kv, d, _] = self.dims;
        match self.raw {
            true => (h + 2 * kv) * d,
            false => h * d,
        }
    }
}

/// The attention half's first kernel: `h + d` (the residual stream after the last sublayer,
/// returned as (b, 1, n)), its RMS norm with `norm` (weight, eps), the fused q|k|v product
/// with `w` ((heads + 2 kv) head_dim, n) and `bias`, the queries rotated ((b, heads, 1,
/// head_dim), returned), the rotated keys and the values written into the caches at each
/// row's slot (`slot` (b,) u32). The residual stream after `d` joins it (normed first by
/// `dnorm`, Gemma's previous output norm). With `head_norms` (Qwen3, Gemma 3) the projection goes through
/// `cuda_decode::rope_kv`, which norms each head before rotating it.
#[allow(clippy::too_many_arguments)]
pub fn qkv_step(
    h: &Tensor,
    (d, dnorm): (&Tensor, Option<&Tensor>),
    (norm, eps): (&Tensor, f32),
    (w, bias): (&Tensor, Option<&Tensor>),
    angles: &Angles,
    slot: &Tensor,
    (k_cache, v_cache): (&Tensor, &Tensor),
    (heads, head_norms): (usize, Option<(&Tensor, &Tensor, f32)>),
) -> Result<(Tensor, Tensor)> {
    let (b, kv, cap, hd) = k_cache.dims4()?;
    let n = h.dim(candle_core::D::Minus1)?;
    let op = QkvStep {
        d: d.contiguous()?,
        dnorm: dnorm.cloned(),
        raw: head_norms.is_some(),
        norm: norm.clone(),
        eps,
        proj: Held {
            w: w.clone(),
            bias: bias.cloned(),
        },
        cos: angles.cos().clone(),
        sin: angles.sin().clone(),
        slot: slot.clone(),
        k: k_cache.clone(),
        v: v_cache.clone(),
        dims: [b, n, heads, kv, hd, cap],
    };
    let both = h.contiguous()?.apply_op1_no_bwd(&op)?;
    let stream = both.narrow(0, 0, b * n)?.reshape((b, 1, n))?;
    let q = match head_norms {
        Some(norms) => {
            let fused = both.narrow(0, b * n, b * op.q_width())?;
            let fused = fused.reshape((b, 1, op.q_width()))?;
            let kv = (k_cache, v_cache);
            crate::cuda_decode::rope_kv(&fused, angles, slot, kv, heads, Some(norms))?
        }
        None => both
            .narrow(0, b * n, b * heads * hd)?
            .reshape((b, heads, 1, hd))?,
    };
    Ok((stream, q))
}

// ---------------------------------------------------------------- gate|up

struct MlpUpStep {
    d: Tensor,
    /// The attention's output norm (Gemma's), applied to `d` first.
    dnorm: Option<Tensor>,
    /// GELU's tanh form (Gemma) instead of SiLU.
    gelu: bool,
    norm: Tensor,
    eps: f32,
    w: Tensor,
    /// b, hidden, intermediate
    dims: [usize; 3],
}

impl MlpUpStep {
    fn run<T: CudaDType + DeviceRepr>(
        &self,
        name: &str,
        s: &CudaStorage,
        l: &Layout,
    ) -> Result<CudaStorage> {
        let [b, n, inter] = self.dims;
        if self.w.dims() != [2 * inter, n] || self.d.elem_count() != b * n {
            bail!(
                "mlp_up_step: weight {:?} for {b} rows of {n}",
                self.w.dims()
            )
        }
        let dev = s.device().clone();
        let hs = slice::<T>(s, l, "the residual stream")?;
        let held = [&self.d, &self.norm, &self.w].map(Tensor::storage_and_layout);
        let dv = view::<T>(&held[0].0, held[0].1, "the attention output")?;
        let nw = view::<T>(&held[1].0, held[1].1, "the norm's weight")?;
        let w = view::<T>(&held[2].0, held[2].1, "the gate|up weight")?;
        let dn_held = self.dnorm.as_ref().map(Tensor::storage_and_layout);
        let dnv = match &dn_held {
            Some((st, dl)) => Some(view::<T>(st, dl, "the output norm's weight")?),
            None => None,
        };
        // SAFETY: block 0 writes the b n stream values, the warps every (row, i) activation.
        let mut out: CudaSlice<T> = unsafe { dev.alloc::<T>(b * n + b * inter)? };
        let (mut hout, mut act) = out.split_at_mut(b * n);
        let f = dev.get_or_load_custom_func(name, MODULE, ptx()?)?;
        let (n32, b32, i32_) = (n as i32, b as i32, inter as i32);
        let (has_dw, gelu) = (dnv.is_some() as i32, self.gelu as i32);
        let mut lb = f.builder();
        lb.arg(&hs).arg(&dv);
        // Without an output norm the kernel reads no `dw`: the stream's weight stands in.
        match &dnv {
            Some(dn) => lb.arg(dn),
            None => lb.arg(&nw),
        };
        lb.arg(&has_dw)
            .arg(&nw)
            .arg(&mut hout)
            .arg(&w)
            .arg(&mut act)
            .arg(&n32)
            .arg(&b32)
            .arg(&self.eps)
            .arg(&i32_)
            .arg(&gelu);
        launch(&mut lb, cuda_src::mlp_up_step(inter, b, n))?;
        Ok(CudaStorage::wrap_cuda_slice(out, dev))
    }
}

impl CustomOp1 for MlpUpStep {
    fn name(&self) -> &'static str {
        "galley-mlp-up-step"
    }
    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        bail!("galley's CUDA mlp_up_step was given a CPU tensor")
    }
    fn cuda_fwd(&self, s: &CudaStorage, l: &Layout) -> Result<(CudaStorage, Shape)> {
        let [b, n, inter] = self.dims;
        dispatch!(self, s, l, "mlp_up_step", Shape::from(b * n + b * inter))
    }
}

/// The MLP's first kernel: `h + d` (returned, (b, 1, n)), its RMS norm, the fused gate|up
/// product with `w` (2 I, n), and silu(gate) * up (returned, (b, 1, I)).
/// The residual stream after the attention's output `d` joins it (normed first by `dnorm`,
/// Gemma's), and the gated activation act(gate) * up of the normed stream (GELU's tanh form
/// with `gelu`, else SiLU).
pub fn mlp_up_step(
    h: &Tensor,
    (d, dnorm): (&Tensor, Option<&Tensor>),
    (norm, eps): (&Tensor, f32),
    (w, gelu): (&Tensor, bool),
) -> Result<(Tensor, Tensor)> {
    let (b, _, n) = h.dims3()?;
    let inter = w.dim(0)? / 2;
    let both = h.contiguous()?.apply_op1_no_bwd(&MlpUpStep {
        d: d.contiguous()?,
        dnorm: dnorm.cloned(),
        gelu,
        norm: norm.clone(),
        eps,
        w: w.clone(),
        dims: [b, n, inter],
    })?;
    Ok((
        both.narrow(0, 0, b * n)?.reshape((b, 1, n))?,
        both.narrow(0, b * n, b * inter)?.reshape((b, 1, inter))?,
    ))
}

// ---------------------------------------------------------------- plain products

struct Gemv {
    proj: Held,
    /// rows, in, out
    dims: [usize; 3],
}

impl Gemv {
    fn run<T: CudaDType + DeviceRepr>(
        &self,
        name: &str,
        s: &CudaStorage,
        l: &Layout,
    ) -> Result<CudaStorage> {
        let [b, n, out] = self.dims;
        if self.proj.w.dims() != [out, n] {
            bail!("gemv: weight {:?} for rows of {n}", self.proj.w.dims())
        }
        let dev = s.device().clone();
        let x = slice::<T>(s, l, "the product's input")?;
        let (ws, wl) = self.proj.w.storage_and_layout();
        let w = view::<T>(&ws, wl, "the weight")?;
        let bias = self.proj.bias.as_ref().map(Tensor::storage_and_layout);
        let bv = match &bias {
            Some((st, bl)) => Some(view::<T>(st, bl, "the bias")?),
            None => None,
        };
        // SAFETY: a warp per weight row writes that row's value for every batch row.
        let mut y: CudaSlice<T> = unsafe { dev.alloc::<T>(b * out)? };
        let f = dev.get_or_load_custom_func(name, MODULE, ptx()?)?;
        let has_bias = bv.is_some() as i32;
        let ints = [n as i32, out as i32, b as i32];
        let mut lb = f.builder();
        lb.arg(&x).arg(&w);
        match &bv {
            Some(bv) => lb.arg(bv),
            None => lb.arg(&w),
        };
        lb.arg(&has_bias).arg(&mut y);
        for i in &ints {
            lb.arg(i);
        }
        launch(&mut lb, cuda_src::gemv_rows(out))?;
        Ok(CudaStorage::wrap_cuda_slice(y, dev))
    }
}

impl CustomOp1 for Gemv {
    fn name(&self) -> &'static str {
        "galley-gemv-rows"
    }
    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        bail!("galley's CUDA gemv was given a CPU tensor")
    }
    fn cuda_fwd(&self, s: &CudaStorage, l: &Layout) -> Result<(CudaStorage, Shape)> {
        let [b, _, out] = self.dims;
        dispatch!(self, s, l, "gemv_rows", Shape::from((b, 1, out)))
    }
}

/// `x` (b, 1, n) times `w`ᵀ ((out, n)) plus `bias`: (b, 1, out).
pub fn gemv(x: &Tensor, w: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    let (b, _, n) = x.dims3()?;
    x.contiguous()?.apply_op1_no_bwd(&Gemv {
        proj: Held {
            w: w.clone(),
            bias: bias.cloned(),
        },
        dims: [b, n, w.dim(0)?],
    })
}
