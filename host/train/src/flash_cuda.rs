//! The fused causal attention on CUDA for long sequences (`kernels/flash.cu`): softmax(q kᵀ
//! scale) v in one pass over the keys per query tile, and a backward pass that recomputes the
//! probabilities from each row's log-sum-exp, so neither pass holds a (rows x keys) matrix.
//! The dense path keeps the bf16 scores and probabilities of every layer for the backward
//! pass: b·h·t² values, 4.3 GB a layer for a 32-head model at 8,192 tokens, more than an
//! H200 holds over 24 layers; this one keeps b·h·t floats. Its products run on the CUDA cores
//! rather than the tensor cores, so at lengths the dense path can hold it is the slower one
//! (`ops::flash_attention_wanted` picks).
//!
//! Layout as the model's attention: q (b, kv, g·t, d) (query heads grouped under their KV head,
//! row r being head r / t of the group at position r % t), k and v (b, kv, t, d). The launch
//! shapes come from `cuda_src`, the same ones the CPU emulation tests launch.

use crate::cuda_src::{self, FLASH, Launch2, Scores};
use crate::fused_cuda::sfx;
use candle_core::backend::BackendStorage;
use candle_core::cuda::cudarc::driver::{CudaSlice, DeviceRepr, LaunchConfig};
use candle_core::cuda::cudarc::driver::{LaunchArgs, PushKernelArg};
use candle_core::cuda::{CudaDType, CudaStorage};
use candle_core::{CustomOp1, CustomOp3, DType, Layout, Result, Shape, Storage};
use candle_core::{Tensor, WithDType, bail};
use galley_model::cuda::slice;
use galley_model::cuda_src::PRELUDE;
use half::bf16;
use std::sync::{Arc, Mutex, OnceLock};

const MODULE: &str = "galley_train_flash";

fn ptx() -> Result<&'static str> {
    static PTX: OnceLock<std::result::Result<String, String>> = OnceLock::new();
    galley_model::cuda::compile_once(&PTX, &[PRELUDE, FLASH], "galley's CUDA attention kernels")
}

/// Raises `f`'s dynamic shared memory limit where launch `l` needs more than the default
/// (head dimensions past 128).
fn allow_shared(f: &candle_core::cuda::cudarc::driver::CudaFunction, l: Launch2) -> Result<()> {
    use candle_core::cuda::cudarc::driver::sys::CUfunction_attribute_enum as A;
    if !l.opt_in() {
        return Ok(());
    }
    f.set_attribute(
        A::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
        l.shared_bytes as i32,
    )
    .map_err(|e| candle_core::Error::Msg(format!("galley CUDA attention: {e}")))
}

fn launch(b: &mut LaunchArgs, l: Launch2) -> Result<()> {
    // Past 48 KiB of shared memory the kernel's limit was raised first (`allow_shared`).
    crate::fused_cuda::launch_with(
        b,
        LaunchConfig {
            grid_dim: (l.grid.0, l.grid.1, 1),
            block_dim: (l.block, 1, 1),
            shared_mem_bytes: l.shared_bytes as u32,
        },
    )
}

/// (batch x kv heads, group size, length, head dim).
#[derive(Debug, Clone, Copy)]
struct Dims {
    bkv: usize,
    g: usize,
    t: usize,
    d: usize,
}

impl Dims {
    fn rows(&self) -> usize {
        self.g * self.t
    }
    fn nq(&self) -> usize {
        self.bkv * self.rows() * self.d
    }
    fn nk(&self) -> usize {
        self.bkv * self.t * self.d
    }
}

struct Flash {
    how: Scores,
    dims: Dims,
    /// Each row's log-sum-exp, written by the forward pass for the backward pass.
    lse: Mutex<Option<Arc<CudaSlice<f32>>>>,
}

fn fwd_typed<T: CudaDType + WithDType + DeviceRepr>(
    op: &Flash,
    q: (&CudaStorage, &Layout),
    k: (&CudaStorage, &Layout),
    v: (&CudaStorage, &Layout),
) -> Result<CudaStorage> {
    let dev = q.0.device().clone();
    let dm = op.dims;
    let (qv, kv, vv) = (
        slice::<T>(q.0, q.1, "q")?,
        slice::<T>(k.0, k.1, "k")?,
        slice::<T>(v.0, v.1, "v")?,
    );
    if qv.len() != dm.nq() || kv.len() != dm.nk() || vv.len() != dm.nk() {
        bail!("galley CUDA attention: q, k, v do not match {dm:?}")
    }
    // SAFETY: the kernel writes every output row and every row's log-sum-exp.
    let mut o: CudaSlice<T> = unsafe { dev.alloc::<T>(dm.nq())? };
    let mut lse: CudaSlice<f32> = unsafe { dev.alloc::<f32>(dm.bkv * dm.rows())? };
    let f =
        dev.get_or_load_custom_func(&format!("flash_fwd_{}", sfx(T::DTYPE)?), MODULE, ptx()?)?;
    let shape = cuda_src::flash_fwd(dm.rows(), dm.bkv, dm.d);
    allow_shared(&f, shape)?;
    let ints = [dm.rows() as i32, dm.t as i32, dm.d as i32];
    let mut b = f.builder();
    b.arg(&qv).arg(&kv).arg(&vv).arg(&mut o).arg(&mut lse);
    for i in &ints {
        b.arg(i);
    }
    b.arg(&op.how.scale).arg(&op.how.window).arg(&op.how.cap);
    launch(&mut b, shape)?;
    *op.lse.lock().expect("attention state") = Some(Arc::new(lse));
    Ok(CudaStorage::wrap_cuda_slice(o, dev))
}

impl CustomOp3 for Flash {
    fn name(&self) -> &'static str {
        "galley-flash-attention-cuda"
    }
    crate::fused_cuda::gpu_only!(3, "galley's CUDA attention was given CPU tensors");
    fn cuda_fwd(
        &self,
        q: &CudaStorage,
        ql: &Layout,
        k: &CudaStorage,
        kl: &Layout,
        v: &CudaStorage,
        vl: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let o = match q.dtype() {
            DType::F32 => fwd_typed::<f32>(self, (q, ql), (k, kl), (v, vl))?,
            DType::BF16 => fwd_typed::<bf16>(self, (q, ql), (k, kl), (v, vl))?,
            d => bail!("galley's CUDA attention takes f32 or bf16, not {d:?}"),
        };
        Ok((o, ql.shape().clone()))
    }
    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        o: &Tensor,
        dout: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let Some(lse) = self.lse.lock().expect("attention state").clone() else {
            bail!("galley CUDA attention: backward pass before the forward pass")
        };
        let dm = self.dims;
        // dQ, dK and dV in one buffer; each gradient is a view of its part.
        let all = dout
            .to_dtype(q.dtype())?
            .contiguous()?
            .apply_op1_no_bwd(&FlashBwd {
                how: self.how,
                dims: dm,
                q: q.clone(),
                k: k.clone(),
                v: v.clone(),
                o: o.clone(),
                lse,
            })?;
        let (nq, nk) = (dm.nq(), dm.nk());
        Ok((
            Some(all.narrow(0, 0, nq)?.reshape(q.shape())?),
            Some(all.narrow(0, nq, nk)?.reshape(k.shape())?),
            Some(all.narrow(0, nq + nk, nk)?.reshape(v.shape())?),
        ))
    }
}

struct FlashBwd {
    how: Scores,
    dims: Dims,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    o: Tensor,
    lse: Arc<CudaSlice<f32>>,
}

/// Runs `body` with the CUDA storage and layout of the four tensors the backward pass holds.
fn with_held<R>(
    ts: [&Tensor; 4],
    body: impl FnOnce([(&CudaStorage, &Layout); 4]) -> Result<R>,
) -> Result<R> {
    let held = ts.map(|t| t.storage_and_layout());
    let mut out = Vec::with_capacity(4);
    for (s, l) in &held {
        let Storage::Cuda(c) = &**s else {
            bail!("galley CUDA attention: a tensor it holds is not on the GPU")
        };
        out.push((c, *l));
    }
    body([out[0], out[1], out[2], out[3]])
}

fn bwd_typed<T: CudaDType + WithDType + DeviceRepr>(
    op: &FlashBwd,
    dout: (&CudaStorage, &Layout),
) -> Result<CudaStorage> {
    let dev = dout.0.device().clone();
    let dm = op.dims;
    let (nq, nk, rows) = (dm.nq(), dm.nk(), dm.bkv * dm.rows());
    let dov = slice::<T>(dout.0, dout.1, "the output gradient")?;
    if dov.len() != nq || op.lse.len() != rows {
        bail!("galley CUDA attention backward: gradient or state does not match {dm:?}")
    }
    let s = sfx(T::DTYPE)?;
    let f_dot = dev.get_or_load_custom_func(&format!("flash_dot_{s}"), MODULE, ptx()?)?;
    let f_kv = dev.get_or_load_custom_func(&format!("flash_bwd_kv_{s}"), MODULE, ptx()?)?;
    let f_q = dev.get_or_load_custom_func(&format!("flash_bwd_q_{s}"), MODULE, ptx()?)?;
    let (kv_shape, q_shape) = (
        cuda_src::flash_bwd_kv(dm.t, dm.bkv, dm.d),
        cuda_src::flash_bwd_q(dm.rows(), dm.bkv, dm.d),
    );
    allow_shared(&f_kv, kv_shape)?;
    allow_shared(&f_q, q_shape)?;
    // SAFETY: the dot kernel writes every row; the gradient kernels every element of dQ, dK, dV.
    let mut dr: CudaSlice<f32> = unsafe { dev.alloc::<f32>(rows)? };
    let mut all: CudaSlice<T> = unsafe { dev.alloc::<T>(nq + 2 * nk)? };
    let lse = op.lse.as_ref();
    let (r32, t32, g32, d32) = (dm.rows() as i32, dm.t as i32, dm.g as i32, dm.d as i32);
    with_held([&op.q, &op.k, &op.v, &op.o], |[q, k, v, o]| {
        let (qv, kv, vv, ov) = (
            slice::<T>(q.0, q.1, "q")?,
            slice::<T>(k.0, k.1, "k")?,
            slice::<T>(v.0, v.1, "v")?,
            slice::<T>(o.0, o.1, "the output")?,
        );
        let rows64 = rows as i64;
        let mut b = f_dot.builder();
        b.arg(&ov).arg(&dov).arg(&mut dr).arg(&rows64).arg(&d32);
        launch(&mut b, cuda_src::flash_dot(rows))?;

        let (mut dq, mut dkv) = all.split_at_mut(nq);
        let (mut dk, mut dv) = dkv.split_at_mut(nk);
        let mut b = f_kv.builder();
        b.arg(&qv)
            .arg(&kv)
            .arg(&vv)
            .arg(&dov)
            .arg(lse)
            .arg(&dr)
            .arg(&mut dk)
            .arg(&mut dv)
            .arg(&r32)
            .arg(&t32)
            .arg(&g32)
            .arg(&d32)
            .arg(&op.how.scale)
            .arg(&op.how.window)
            .arg(&op.how.cap);
        launch(&mut b, kv_shape)?;

        let mut b = f_q.builder();
        b.arg(&qv)
            .arg(&kv)
            .arg(&vv)
            .arg(&dov)
            .arg(lse)
            .arg(&dr)
            .arg(&mut dq)
            .arg(&r32)
            .arg(&t32)
            .arg(&d32)
            .arg(&op.how.scale)
            .arg(&op.how.window)
            .arg(&op.how.cap);
        launch(&mut b, q_shape)
    })?;
    Ok(CudaStorage::wrap_cuda_slice(all, dev))
}

impl CustomOp1 for FlashBwd {
    fn name(&self) -> &'static str {
        "galley-flash-attention-bwd-cuda"
    }
    crate::fused_cuda::gpu_only!(1, "galley's CUDA attention backward was given a CPU tensor");
    fn cuda_fwd(&self, s: &CudaStorage, l: &Layout) -> Result<(CudaStorage, Shape)> {
        let all = match s.dtype() {
            DType::F32 => bwd_typed::<f32>(self, (s, l))?,
            DType::BF16 => bwd_typed::<bf16>(self, (s, l))?,
            d => bail!("galley's CUDA attention takes f32 or bf16, not {d:?}"),
        };
        Ok((all, Shape::from(self.dims.nq() + 2 * self.dims.nk())))
    }
}

/// Causal attention of `q` (b, kv, g·t, d) over `k`, `v` (b, kv, t, d) with scores as `how`
/// says (scale, sliding window, soft cap): (b, kv, g·t, d), as `causal_softmax(q kᵀ) v`. `d`
/// must pass `cuda_src::flash_supports`.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, how: Scores) -> Result<Tensor> {
    let (b, kv, rows, d) = q.dims4()?;
    let t = k.dim(2)?;
    if !cuda_src::flash_supports(d) || t == 0 || rows % t != 0 || k.dims4()? != (b, kv, t, d) {
        bail!(
            "galley CUDA attention: q {:?}, k {:?} (head dim a multiple of 32 up to 256)",
            q.dims(),
            k.dims()
        )
    }
    let dt = q.dtype();
    let op = Flash {
        how,
        dims: Dims {
            bkv: b * kv,
            g: rows / t,
            t,
            d,
        },
        lse: Mutex::new(None),
    };
    q.contiguous()?.apply_op3(
        &k.to_dtype(dt)?.contiguous()?,
        &v.to_dtype(dt)?.contiguous()?,
        op,
    )
}
