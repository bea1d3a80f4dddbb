//! The CUDA versions of the fused training ops the CPU trainer owns (`ops`): RMS norm with
//! its output cast to the products' dtype in the same write, the SiLU gate, the rotary
//! embedding fused with the head transpose, and the cross-entropy of the LM head's logits.
//! Each is one kernel forward and one backward (two for the norm: its weight gradient is
//! summed from fixed per-block shares, so it does not depend on scheduling), in place of
//! candle's composites: ~10 launches and as many activation-sized temporaries each, and for
//! the loss an f32 copy of the logits plus the log-softmax kept for the backward pass (at
//! 2,048 tokens and SmolLM2's 49,152-word vocabulary, 400 MB each). The cross-entropy keeps
//! nothing but its per-row losses: the backward pass recovers the log-sum-exp from them.
//!
//! The kernels are `kernels/ops.cu` (compiled with the causal softmax by `ops_cuda::ptx`);
//! the launch shapes come from `cuda_src`, the same ones the CPU emulation tests launch.

use crate::cuda_src::{self, ROW_THREADS, VOCAB_THREADS};
use crate::ops::RopeTables;
use candle_core::backend::BackendStorage;
use candle_core::cuda::cudarc::driver::{CudaSlice, DeviceRepr, LaunchConfig};
use candle_core::cuda::cudarc::driver::{LaunchArgs, PushKernelArg};
use candle_core::cuda::{CudaDType, CudaStorage};
use candle_core::{CustomOp1, CustomOp2, DType, Layout, Result, Shape, Storage};
use candle_core::{Tensor, WithDType, bail};
use galley_model::cuda::slice;
use half::bf16;

/// The `cpu_fwd` of a custom op that only runs on a GPU (arity 1, 2 or 3): an error naming it.
macro_rules! gpu_only {
    (1, $msg:literal) => {
        fn cpu_fwd(
            &self,
            _: &candle_core::CpuStorage,
            _: &candle_core::Layout,
        ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
            candle_core::bail!($msg)
        }
    };
    (2, $msg:literal) => {
        fn cpu_fwd(
            &self,
            _: &candle_core::CpuStorage,
            _: &candle_core::Layout,
            _: &candle_core::CpuStorage,
            _: &candle_core::Layout,
        ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
            candle_core::bail!($msg)
        }
    };
    (3, $msg:literal) => {
        fn cpu_fwd(
            &self,
            _: &candle_core::CpuStorage,
            _: &candle_core::Layout,
            _: &candle_core::CpuStorage,
            _: &candle_core::Layout,
            _: &candle_core::CpuStorage,
            _: &candle_core::Layout,
        ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
            candle_core::bail!($msg)
        }
    };
}
pub(crate) use gpu_only;

fn lc(s: cuda_src::Shape) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (s.grid, 1, 1),
        block_dim: (s.block, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// Runs `body` with a tensor's CUDA storage and layout (a tensor the op holds, not an input).
fn held<R>(t: &Tensor, body: impl FnOnce(&CudaStorage, &Layout) -> Result<R>) -> Result<R> {
    let (s, l) = t.storage_and_layout();
    let Storage::Cuda(c) = &*s else {
        bail!("galley CUDA op: a tensor it holds is not on the GPU")
    };
    body(c, l)
}

fn launch(b: &mut LaunchArgs, shape: cuda_src::Shape) -> Result<()> {
    launch_with(b, lc(shape))
}

/// Launches the kernel whose arguments `b` holds (shared by galley-train's CUDA modules).
pub(crate) fn launch_with(b: &mut LaunchArgs, cfg: LaunchConfig) -> Result<()> {
    // SAFETY: every caller pushes exactly the kernel's parameters, in order, with buffers of
    // the sizes its launch covers (checked by each caller before pushing), and asks for no
    // more dynamic shared memory than the 48 KiB default.
    unsafe { b.launch(cfg) }
        .map(|_| ())
        .map_err(|e| candle_core::Error::Msg(format!("galley CUDA kernel: {e}")))
}

/// Suffix of a kernel instance for a dtype.
pub(crate) fn sfx(d: DType) -> Result<&'static str> {
    Ok(match d {
        DType::F32 => "f32",
        DType::BF16 => "bf16",
        d => bail!("galley's CUDA training ops take f32 or bf16, not {d:?}"),
    })
}

macro_rules! by_dtype {
    ($d:expr, $f:ident ( $($a:expr),* )) => {
        match $d {
            DType::F32 => $f::<f32>($($a),*),
            DType::BF16 => $f::<bf16>($($a),*),
            d => bail!("galley's CUDA training ops take f32 or bf16, not {d:?}"),
        }
    };
}

// ---------------------------------------------------------------- RMS norm

struct RmsNorm {
    eps: f32,
    out: DType,
}

fn rms_fwd<X: CudaDType + WithDType + DeviceRepr, Y: CudaDType + WithDType + DeviceRepr>(
    op: &RmsNorm,
    x: (&CudaStorage, &Layout),
    w: (&CudaStorage, &Layout),
) -> Result<CudaStorage> {
    let dev = x.0.device().clone();
    let xs = slice::<X>(x.0, x.1, "the norm's input")?;
    let ws = slice::<f32>(w.0, w.1, "the norm's weight")?;
    let n = ws.len();
    if n == 0 || xs.len() % n != 0 {
        bail!("rms norm: {} values are not rows of {n}", xs.len())
    }
    let rows = xs.len() / n;
    // SAFETY: the kernel writes every element of the (rows, n) output.
    let mut y: CudaSlice<Y> = unsafe { dev.alloc::<Y>(xs.len())? };
    let name = format!("rms_fwd_{}_{}", sfx(X::DTYPE)?, sfx(Y::DTYPE)?);
    let f = dev.get_or_load_custom_func(&name, crate::ops_cuda::MODULE, crate::ops_cuda::ptx()?)?;
    let n32 = n as i32;
    let mut b = f.builder();
    b.arg(&xs).arg(&ws).arg(&mut y).arg(&n32).arg(&op.eps);
    launch(&mut b, cuda_src::per_row(rows, ROW_THREADS))?;
    Ok(CudaStorage::wrap_cuda_slice(y, dev))
}

impl CustomOp2 for RmsNorm {
    fn name(&self) -> &'static str {
        "galley-rms-norm-cuda"
    }
    crate::fused_cuda::gpu_only!(2, "galley's CUDA RMS norm was given CPU tensors");
    fn cuda_fwd(
        &self,
        x: &CudaStorage,
        xl: &Layout,
        w: &CudaStorage,
        wl: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let y = match (x.dtype(), self.out) {
            (DType::F32, DType::F32) => rms_fwd::<f32, f32>(self, (x, xl), (w, wl))?,
            (DType::F32, DType::BF16) => rms_fwd::<f32, bf16>(self, (x, xl), (w, wl))?,
            (DType::BF16, DType::BF16) => rms_fwd::<bf16, bf16>(self, (x, xl), (w, wl))?,
            (a, b) => bail!("galley's CUDA RMS norm: no kernel from {a:?} to {b:?}"),
        };
        Ok((y, xl.shape().clone()))
    }
    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let n = w.elem_count();
        let rows = x.elem_count() / n.max(1);
        let parts = cuda_src::rms_bwd_parts(rows);
        // Each block's share of dw; every element is written by the backward kernel.
        let part = Tensor::zeros((parts, n), DType::F32, x.device())?;
        let dx = x.apply_op2_no_bwd(
            w,
            &RmsNormBwd {
                eps: self.eps,
                g: g.to_dtype(self.out)?.contiguous()?,
                part: part.clone(),
            },
        )?;
        let dw = part.apply_op1_no_bwd(&RmsDw)?.reshape(w.shape())?;
        Ok((Some(dx), Some(dw)))
    }
}

struct RmsNormBwd {
    eps: f32,
    g: Tensor,
    part: Tensor,
}

fn rms_bwd<X: CudaDType + WithDType + DeviceRepr, G: CudaDType + WithDType + DeviceRepr>(
    op: &RmsNormBwd,
    x: (&CudaStorage, &Layout),
    w: (&CudaStorage, &Layout),
) -> Result<CudaStorage> {
    let dev = x.0.device().clone();
    let xs = slice::<X>(x.0, x.1, "the norm's input")?;
    let ws = slice::<f32>(w.0, w.1, "the norm's weight")?;
    let n = ws.len();
    let rows = xs.len() / n.max(1);
    let parts = cuda_src::rms_bwd_parts(rows);
    if op.g.elem_count() != xs.len() || op.part.elem_count() != parts * n {
        bail!("rms norm backward: gradient or shares of the wrong size")
    }
    // SAFETY: the kernel writes every element of dx.
    let mut dx: CudaSlice<X> = unsafe { dev.alloc::<X>(xs.len())? };
    let name = format!("rms_bwd_{}_{}", sfx(X::DTYPE)?, sfx(G::DTYPE)?);
    let f = dev.get_or_load_custom_func(&name, crate::ops_cuda::MODULE, crate::ops_cuda::ptx()?)?;
    held(&op.g, |gs, gl| {
        let gv = slice::<G>(gs, gl, "the norm's output gradient")?;
        held(&op.part, |ps, pl| {
            // The kernel writes the shares through this view: `part` is this op's own buffer,
            // made for it and read by nothing before `RmsDw` runs after it on the same stream.
            let pv = slice::<f32>(ps, pl, "the weight gradient's shares")?;
            let (n32, rows64) = (n as i32, rows as i64);
            let mut b = f.builder();
            b.arg(&xs)
                .arg(&ws)
                .arg(&gv)
                .arg(&mut dx)
                .arg(&pv)
                .arg(&n32)
                .arg(&op.eps)
                .arg(&rows64);
            launch(
                &mut b,
                cuda_src::Shape {
                    grid: parts as u32,
                    block: ROW_THREADS,
                },
            )
        })
    })?;
    Ok(CudaStorage::wrap_cuda_slice(dx, dev))
}

impl CustomOp2 for RmsNormBwd {
    fn name(&self) -> &'static str {
        "galley-rms-norm-bwd-cuda"
    }
    crate::fused_cuda::gpu_only!(2, "galley's CUDA RMS norm backward was given CPU tensors");
    fn cuda_fwd(
        &self,
        x: &CudaStorage,
        xl: &Layout,
        w: &CudaStorage,
        wl: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let dx = match (x.dtype(), self.g.dtype()) {
            (DType::F32, DType::F32) => rms_bwd::<f32, f32>(self, (x, xl), (w, wl))?,
            (DType::F32, DType::BF16) => rms_bwd::<f32, bf16>(self, (x, xl), (w, wl))?,
            (DType::BF16, DType::BF16) => rms_bwd::<bf16, bf16>(self, (x, xl), (w, wl))?,
            (a, b) => bail!("galley's CUDA RMS norm backward: no kernel for {a:?} / {b:?}"),
        };
        Ok((dx, xl.shape().clone()))
    }
}

/// The weight gradient: the blocks' shares (parts, n) added in block order.
struct RmsDw;

impl CustomOp1 for RmsDw {
    fn name(&self) -> &'static str {
        "galley-rms-norm-dw-cuda"
    }
    crate::fused_cuda::gpu_only!(1, "galley's CUDA RMS norm backward was given CPU tensors");
    fn cuda_fwd(&self, s: &CudaStorage, l: &Layout) -> Result<(CudaStorage, Shape)> {
        let (parts, n) = l.shape().dims2()?;
        let dev = s.device().clone();
        let pv = slice::<f32>(s, l, "the weight gradient's shares")?;
        // SAFETY: the kernel writes all n elements.
        let mut dw: CudaSlice<f32> = unsafe { dev.alloc::<f32>(n)? };
        let f = dev.get_or_load_custom_func(
            "rms_dw",
            crate::ops_cuda::MODULE,
            crate::ops_cuda::ptx()?,
        )?;
        let (n32, p32) = (n as i32, parts as i32);
        let mut b = f.builder();
        b.arg(&pv).arg(&mut dw).arg(&n32).arg(&p32);
        launch(&mut b, cuda_src::elementwise(n))?;
        Ok((CudaStorage::wrap_cuda_slice(dw, dev), Shape::from(n)))
    }
}

/// RMS norm of `x` over its last dimension scaled by `w` (f32), the result in `out`: f32
/// to f32, f32 to bf16 (the forward pass's cast to the products' dtype, fused) or bf16 to
/// bf16.
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f64, out: DType) -> Result<Tensor> {
    x.contiguous()?.apply_op2(
        &w.to_dtype(DType::F32)?.contiguous()?,
        RmsNorm {
            eps: eps as f32,
            out,
        },
    )
}

// ---------------------------------------------------------------- the MLP's gate

/// The gate's activation: SiLU (Llama, Qwen, SmolLM) or GELU's tanh form (Gemma).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Act {
    Silu,
    GeluTanh,
}

impl Act {
    fn kernel(self) -> &'static str {
        match self {
            Act::Silu => "silu",
            Act::GeluTanh => "gelu",
        }
    }
}

struct Gate(Act);

fn gate_fwd<T: CudaDType + WithDType + DeviceRepr>(
    act: Act,
    g: (&CudaStorage, &Layout),
    u: (&CudaStorage, &Layout),
) -> Result<CudaStorage> {
    let dev = g.0.device().clone();
    let (gv, uv) = (
        slice::<T>(g.0, g.1, "the gate")?,
        slice::<T>(u.0, u.1, "the up projection")?,
    );
    if gv.len() != uv.len() {
        bail!("MLP gate: {} gates for {} values", gv.len(), uv.len())
    }
    let n = gv.len();
    // SAFETY: the kernel writes every element.
    let mut y: CudaSlice<T> = unsafe { dev.alloc::<T>(n)? };
    let name = format!("{}_gate_{}", act.kernel(), sfx(T::DTYPE)?);
    let f = dev.get_or_load_custom_func(&name, crate::ops_cuda::MODULE, crate::ops_cuda::ptx()?)?;
    let n64 = n as i64;
    let mut b = f.builder();
    b.arg(&gv).arg(&uv).arg(&mut y).arg(&n64);
    launch(&mut b, cuda_src::elementwise(n))?;
    Ok(CudaStorage::wrap_cuda_slice(y, dev))
}

impl CustomOp2 for Gate {
    fn name(&self) -> &'static str {
        "galley-gate-cuda"
    }
    crate::fused_cuda::gpu_only!(2, "galley's CUDA MLP gate was given CPU tensors");
    fn cuda_fwd(
        &self,
        g: &CudaStorage,
        gl: &Layout,
        u: &CudaStorage,
        ul: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let y = by_dtype!(g.dtype(), gate_fwd(self.0, (g, gl), (u, ul)))?;
        Ok((y, gl.shape().clone()))
    }
    fn bwd(
        &self,
        g: &Tensor,
        u: &Tensor,
        _res: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        // dg and du in one (2, ...) buffer; the halves are views of it.
        let both = g.apply_op2_no_bwd(
            u,
            &GateBwd {
                act: self.0,
                dy: dy.to_dtype(g.dtype())?.contiguous()?,
            },
        )?;
        Ok((Some(both.get(0)?), Some(both.get(1)?)))
    }
}

struct GateBwd {
    act: Act,
    dy: Tensor,
}

fn gate_bwd<T: CudaDType + WithDType + DeviceRepr>(
    op: &GateBwd,
    g: (&CudaStorage, &Layout),
    u: (&CudaStorage, &Layout),
) -> Result<CudaStorage> {
    let dev = g.0.device().clone();
    let (gv, uv) = (
        slice::<T>(g.0, g.1, "the gate")?,
        slice::<T>(u.0, u.1, "the up projection")?,
    );
    let n = gv.len();
    if uv.len() != n || op.dy.elem_count() != n {
        bail!("MLP gate backward: sizes differ")
    }
    // SAFETY: the kernel writes every element of both halves.
    let mut out: CudaSlice<T> = unsafe { dev.alloc::<T>(2 * n)? };
    let name = format!("{}_gate_bwd_{}", op.act.kernel(), sfx(T::DTYPE)?);
    let f = dev.get_or_load_custom_func(&name, crate::ops_cuda::MODULE, crate::ops_cuda::ptx()?)?;
    held(&op.dy, |ds, dl| {
        let dv = slice::<T>(ds, dl, "the gate's output gradient")?;
        let (mut dg, mut du) = out.split_at_mut(n);
        let n64 = n as i64;
        let mut b = f.builder();
        b.arg(&gv)
            .arg(&uv)
            .arg(&dv)
            .arg(&mut dg)
            .arg(&mut du)
            .arg(&n64);
        launch(&mut b, cuda_src::elementwise(n))
    })?;
    Ok(CudaStorage::wrap_cuda_slice(out, dev))
}

impl CustomOp2 for GateBwd {
    fn name(&self) -> &'static str {
        "galley-gate-bwd-cuda"
    }
    crate::fused_cuda::gpu_only!(2, "galley's CUDA MLP gate backward was given CPU tensors");
    fn cuda_fwd(
        &self,
        g: &CudaStorage,
        gl: &Layout,
        u: &CudaStorage,
        ul: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let out = by_dtype!(g.dtype(), gate_bwd(self, (g, gl), (u, ul)))?;
        let mut dims = vec![2];
        dims.extend_from_slice(gl.dims());
        Ok((out, Shape::from(dims)))
    }
}

/// act(g) * u elementwise (f32 arithmetic on f32 or bf16 data).
pub fn gate(g: &Tensor, u: &Tensor, act: Act) -> Result<Tensor> {
    g.contiguous()?
        .apply_op2(&u.to_dtype(g.dtype())?.contiguous()?, Gate(act))
}

// ---------------------------------------------------------------- rotary embedding

struct RopeHeads {
    cos: Tensor,
    sin: Tensor,
    /// (B, t, h, d) of the un-transposed side.
    dims: (usize, usize, usize, usize),
    /// Forward: (B, t, h, d) -> (B, h, t, d) rotated by +angle; else the backward.
    to_heads: bool,
}

fn rope_run<T: CudaDType + WithDType + DeviceRepr>(
    op: &RopeHeads,
    s: &CudaStorage,
    l: &Layout,
) -> Result<CudaStorage> {
    let dev = s.device().clone();
    let x = slice::<T>(s, l, "the rotary embedding's input")?;
    let (b, t, h, d) = op.dims;
    if x.len() != b * t * h * d || d % 2 != 0 || op.cos.dim(0)? < t || op.cos.dim(1)? != d / 2 {
        bail!(
            "rotary embedding: {:?} against tables {:?}",
            op.dims,
            op.cos.dims()
        )
    }
    // SAFETY: the kernel writes every element (each (row, i) pair once).
    let mut y: CudaSlice<T> = unsafe { dev.alloc::<T>(x.len())? };
    let name = format!("rope_heads_{}", sfx(T::DTYPE)?);
    let f = dev.get_or_load_custom_func(&name, crate::ops_cuda::MODULE, crate::ops_cuda::ptx()?)?;
    held(&op.cos, |cs, cl| {
        held(&op.sin, |ss, sl| {
            let (cv, sv) = (slice::<f32>(cs, cl, "cos")?, slice::<f32>(ss, sl, "sin")?);
            let ints = [b as i32, t as i32, h as i32, d as i32, op.to_heads as i32];
            let mut lb = f.builder();
            lb.arg(&x).arg(&cv).arg(&sv).arg(&mut y);
            for i in &ints {
                lb.arg(i);
            }
            launch(&mut lb, cuda_src::elementwise(x.len() / 2))
        })
    })?;
    Ok(CudaStorage::wrap_cuda_slice(y, dev))
}

impl CustomOp1 for RopeHeads {
    fn name(&self) -> &'static str {
        "galley-rope-heads-cuda"
    }
    crate::fused_cuda::gpu_only!(1, "galley's CUDA rotary embedding was given a CPU tensor");
    fn cuda_fwd(&self, s: &CudaStorage, l: &Layout) -> Result<(CudaStorage, Shape)> {
        let y = by_dtype!(s.dtype(), rope_run(self, s, l))?;
        let (b, t, h, d) = self.dims;
        let shape = if self.to_heads {
            Shape::from((b, h, t, d))
        } else {
            Shape::from((b, t, h, d))
        };
        Ok((y, shape))
    }
    fn bwd(&self, _x: &Tensor, _res: &Tensor, g: &Tensor) -> Result<Option<Tensor>> {
        let back = RopeHeads {
            cos: self.cos.clone(),
            sin: self.sin.clone(),
            dims: self.dims,
            to_heads: false,
        };
        Ok(Some(g.contiguous()?.apply_op1_no_bwd(&back)?))
    }
}

/// `x` (b, t, heads, d) rotated and laid out as (b, heads, t, d), as `ops::rope_heads`.
pub fn rope_heads(x: &Tensor, tables: &RopeTables) -> Result<Tensor> {
    let (cos, sin) = tables.device_tables();
    x.contiguous()?.apply_op1(RopeHeads {
        cos: cos.clone(),
        sin: sin.clone(),
        dims: x.dims4()?,
        to_heads: true,
    })
}

// ---------------------------------------------------------------- cross-entropy

struct Xent {
    targets: Tensor,
    inv_t: f32,
    /// Gemma 2's final soft cap (0: none).
    cap: f32,
}

fn xent_fwd<T: CudaDType + WithDType + DeviceRepr>(
    op: &Xent,
    s: &CudaStorage,
    l: &Layout,
) -> Result<CudaStorage> {
    let dev = s.device().clone();
    let (rows, v) = l.shape().dims2()?;
    if op.targets.elem_count() != rows {
        bail!(
            "cross-entropy: {} targets for {rows} rows",
            op.targets.elem_count()
        )
    }
    let z = slice::<T>(s, l, "the logits")?;
    // SAFETY: the kernel writes one loss per row.
    let mut nll: CudaSlice<f32> = unsafe { dev.alloc::<f32>(rows)? };
    let name = format!("xent_{}", sfx(T::DTYPE)?);
    let f = dev.get_or_load_custom_func(&name, crate::ops_cuda::MODULE, crate::ops_cuda::ptx()?)?;
    held(&op.targets, |ts, tl| {
        let tv = slice::<u32>(ts, tl, "the targets")?;
        let v32 = v as i32;
        let mut b = f.builder();
        b.arg(&z)
            .arg(&tv)
            .arg(&mut nll)
            .arg(&v32)
            .arg(&op.inv_t)
            .arg(&op.cap);
        launch(&mut b, cuda_src::per_row(rows, VOCAB_THREADS))
    })?;
    Ok(CudaStorage::wrap_cuda_slice(nll, dev))
}

impl CustomOp1 for Xent {
    fn name(&self) -> &'static str {
        "galley-cross-entropy-cuda"
    }
    crate::fused_cuda::gpu_only!(1, "galley's CUDA cross-entropy was given a CPU tensor");
    fn cuda_fwd(&self, s: &CudaStorage, l: &Layout) -> Result<(CudaStorage, Shape)> {
        let nll = by_dtype!(s.dtype(), xent_fwd(self, s, l))?;
        Ok((nll, Shape::from(l.shape().dims2()?.0)))
    }
    fn bwd(&self, z: &Tensor, res: &Tensor, g: &Tensor) -> Result<Option<Tensor>> {
        let back = XentBwd {
            targets: self.targets.clone(),
            nll: res.contiguous()?,
            gout: g.to_dtype(DType::F32)?.contiguous()?,
            inv_t: self.inv_t,
            cap: self.cap,
        };
        Ok(Some(z.apply_op1_no_bwd(&back)?))
    }
}

struct XentBwd {
    targets: Tensor,
    nll: Tensor,
    gout: Tensor,
    inv_t: f32,
    cap: f32,
}

fn xent_bwd<T: CudaDType + WithDType + DeviceRepr>(
    op: &XentBwd,
    s: &CudaStorage,
    l: &Layout,
) -> Result<CudaStorage> {
    let dev = s.device().clone();
    let (rows, v) = l.shape().dims2()?;
    if op.nll.elem_count() != rows || op.gout.elem_count() != rows {
        bail!("cross-entropy backward: losses or gradients for other than {rows} rows")
    }
    let z = slice::<T>(s, l, "the logits")?;
    // SAFETY: the kernel writes every element of every row.
    let mut dz: CudaSlice<T> = unsafe { dev.alloc::<T>(rows * v)? };
    let name = format!("xent_bwd_{}", sfx(T::DTYPE)?);
    let f = dev.get_or_load_custom_func(&name, crate::ops_cuda::MODULE, crate::ops_cuda::ptx()?)?;
    held(&op.targets, |ts, tl| {
        held(&op.nll, |ns, nl| {
            held(&op.gout, |gs, gl| {
                let tv = slice::<u32>(ts, tl, "the targets")?;
                let nv = slice::<f32>(ns, nl, "the losses")?;
                let gv = slice::<f32>(gs, gl, "the losses' gradient")?;
                let v32 = v as i32;
                let mut b = f.builder();
                b.arg(&z)
                    .arg(&tv)
                    .arg(&nv)
                    .arg(&gv)
                    .arg(&mut dz)
                    .arg(&v32)
                    .arg(&op.inv_t)
                    .arg(&op.cap);
                launch(&mut b, cuda_src::per_row(rows, VOCAB_THREADS))
            })
        })
    })?;
    Ok(CudaStorage::wrap_cuda_slice(dz, dev))
}

impl CustomOp1 for XentBwd {
    fn name(&self) -> &'static str {
        "galley-cross-entropy-bwd-cuda"
    }
    crate::fused_cuda::gpu_only!(
        1,
        "galley's CUDA cross-entropy backward was given a CPU tensor"
    );
    fn cuda_fwd(&self, s: &CudaStorage, l: &Layout) -> Result<(CudaStorage, Shape)> {
        let dz = by_dtype!(s.dtype(), xent_bwd(self, s, l))?;
        Ok((dz, l.shape().clone()))
    }
}

/// Per-row negative log-likelihood of `targets` under softmax(c(`logits`) / temperature)
/// (`logits` (n, vocab) f32 or bf16, on the GPU; `IGNORE` rows give 0), as
/// `ops::cross_entropy_reference` of the f32 logits divided by the temperature; c is
/// `cap`·tanh(x / `cap`) under Gemma 2's final soft cap, else the identity.
pub fn cross_entropy(
    logits: &Tensor,
    targets: &[u32],
    temperature: f64,
    cap: Option<f64>,
) -> Result<Tensor> {
    let targets = Tensor::from_slice(targets, targets.len(), logits.device())?;
    logits.contiguous()?.apply_op1(Xent {
        targets,
        inv_t: (1.0 / temperature) as f32,
        cap: cap.unwrap_or(0.0) as f32,
    })
}
