//! galley's CUDA training kernels, compiled once per process by NVRTC: the causal softmax of
//! the attention scores (scale, Gemma 2's soft cap, the causal or sliding-window mask and
//! the softmax in one pass, f32 arithmetic on f32 or bf16 data) and its backward pass. candle's composite softmax keeps seven score-sized tensors
//! alive for the backward pass (the f32 copy, the scaled and masked scores, the shifted ones,
//! their exponentials, the sums' quotient and the bf16 result); this op keeps only its input
//! and its output, and reads the scores once forward and twice backward.

use crate::cuda_src::Scores;
use candle_core::backend::BackendStorage;
use candle_core::cuda::cudarc::driver::{CudaSlice, DeviceRepr, LaunchConfig, PushKernelArg};
use candle_core::cuda::{CudaDType, CudaDevice, CudaStorage};
use candle_core::{CustomOp1, CustomOp2, DType, Layout, Result, Shape, Tensor, bail};
use galley_model::cuda_src::PRELUDE;
use std::sync::OnceLock;

pub(crate) const MODULE: &str = "galley_train_ops";
const THREADS: u32 = 256;

pub(crate) fn ptx() -> Result<&'static str> {
    static PTX: OnceLock<std::result::Result<String, String>> = OnceLock::new();
    galley_model::cuda::compile_once(
        &PTX,
        &[PRELUDE, crate::cuda_src::OPS],
        "galley's CUDA training kernels",
    )
}

fn launch_err(e: impl std::fmt::Display) -> candle_core::Error {
    candle_core::Error::Msg(format!("galley CUDA kernel: {e}"))
}

/// Rows and row length of a contiguous (..., t) layout.
fn rows(l: &Layout) -> Result<(usize, usize, usize)> {
    let Some((a, b)) = l.contiguous_offsets() else {
        bail!("galley CUDA op: input is not contiguous")
    };
    let t = *l.shape().dims().last().unwrap_or(&1);
    Ok((a, (b - a) / t.max(1), t))
}

fn cfg(rows: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (rows as u32, 1, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    }
}

fn fwd_typed<T: CudaDType + DeviceRepr>(
    name: &str,
    dev: &CudaDevice,
    s: &CudaStorage,
    l: &Layout,
    how: Scores,
) -> Result<CudaStorage> {
    let (a, rows, t) = rows(l)?;
    let n = rows * t;
    let src = s.as_cuda_slice::<T>()?.slice(a..a + n);
    // SAFETY: the kernel writes every element of the row-major (rows, t) output.
    let mut out: CudaSlice<T> = unsafe { dev.alloc::<T>(n)? };
    let f = dev.get_or_load_custom_func(name, MODULE, ptx()?)?;
    let (t32, mut b) = (t as i32, f.builder());
    b.arg(&src)
        .arg(&mut out)
        .arg(&t32)
        .arg(&how.scale)
        .arg(&how.window)
        .arg(&how.cap);
    // SAFETY: arguments match the kernel's signature; buffers hold rows * t elements.
    unsafe { b.launch(cfg(rows)) }.map_err(launch_err)?;
    Ok(CudaStorage::wrap_cuda_slice(out, dev.clone()))
}

struct CausalSoftmax(Scores);

impl CustomOp1 for CausalSoftmax {
    fn name(&self) -> &'static str {
        "galley-causal-softmax"
    }

    crate::fused_cuda::gpu_only!(1, "galley's CUDA causal softmax was given a CPU tensor");

    fn cuda_fwd(&self, s: &CudaStorage, l: &Layout) -> Result<(CudaStorage, Shape)> {
        let dev = s.device().clone();
        let out = match s.dtype() {
            DType::F32 => fwd_typed::<f32>("causal_softmax_f32", &dev, s, l, self.0)?,
            DType::BF16 => fwd_typed::<half::bf16>("causal_softmax_bf16", &dev, s, l, self.0)?,
            d => bail!("galley's causal softmax takes f32 or bf16 scores, not {d:?}"),
        };
        Ok((out, l.shape().clone()))
    }

    fn bwd(&self, arg: &Tensor, res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let g = grad.to_dtype(res.dtype())?.contiguous()?;
        // The scores themselves only under a cap (its slope); otherwise any tensor of the
        // same dtype stands in, and the kernel does not read it.
        let s = match self.0.cap > 0.0 {
            true => arg.contiguous()?,
            false => res.clone(),
        };
        Ok(Some(res.apply_op2_no_bwd(
            &g,
            &CausalSoftmaxBwd { how: self.0, s },
        )?))
    }
}

struct CausalSoftmaxBwd {
    how: Scores,
    /// The scores the forward pass read.
    s: Tensor,
}

fn bwd_typed<T: CudaDType + DeviceRepr>(
    name: &str,
    dev: &CudaDevice,
    p: (&CudaStorage, &Layout),
    dp: (&CudaStorage, &Layout),
    op: &CausalSoftmaxBwd,
) -> Result<CudaStorage> {
    let (pa, rows_, t) = rows(p.1)?;
    let (da, drows, dt) = rows(dp.1)?;
    if (drows, dt) != (rows_, t) {
        bail!("causal softmax backward: gradient shape differs from the output's")
    }
    let n = rows_ * t;
    let ps = p.0.as_cuda_slice::<T>()?.slice(pa..pa + n);
    let ds_in = dp.0.as_cuda_slice::<T>()?.slice(da..da + n);
    // SAFETY: the kernel writes every element.
    let mut out: CudaSlice<T> = unsafe { dev.alloc::<T>(n)? };
    let f = dev.get_or_load_custom_func(name, MODULE, ptx()?)?;
    let (storage, layout) = op.s.storage_and_layout();
    let candle_core::Storage::Cuda(ss) = &*storage else {
        bail!("causal softmax backward: the scores are not on the GPU")
    };
    let (sa, srows, st) = rows(layout)?;
    if (srows, st) != (rows_, t) {
        bail!("causal softmax backward: the scores' shape differs from the output's")
    }
    let sv = ss.as_cuda_slice::<T>()?.slice(sa..sa + n);
    let (t32, how, mut b) = (t as i32, op.how, f.builder());
    b.arg(&sv)
        .arg(&ps)
        .arg(&ds_in)
        .arg(&mut out)
        .arg(&t32)
        .arg(&how.scale)
        .arg(&how.window)
        .arg(&how.cap);
    // SAFETY: arguments match the kernel's signature; buffers hold rows * t elements.
    unsafe { b.launch(cfg(rows_)) }.map_err(launch_err)?;
    Ok(CudaStorage::wrap_cuda_slice(out, dev.clone()))
}

impl CustomOp2 for CausalSoftmaxBwd {
    fn name(&self) -> &'static str {
        "galley-causal-softmax-bwd"
    }

    crate::fused_cuda::gpu_only!(
        2,
        "galley's CUDA causal softmax backward was given CPU tensors"
    );

    fn cuda_fwd(
        &self,
        p: &CudaStorage,
        pl: &Layout,
        dp: &CudaStorage,
        dl: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let dev = p.device().clone();
        let out = match p.dtype() {
            DType::F32 => {
                bwd_typed::<f32>("causal_softmax_bwd_f32", &dev, (p, pl), (dp, dl), self)?
            }
            DType::BF16 => {
                bwd_typed::<half::bf16>("causal_softmax_bwd_bf16", &dev, (p, pl), (dp, dl), self)?
            }
            d => bail!("galley's causal softmax takes f32 or bf16 scores, not {d:?}"),
        };
        Ok((out, pl.shape().clone()))
    }
}

/// softmax(scale · s) over the last dimension with keys after the query masked out, `s`
/// (..., rows, t) on a CUDA device, row r being query position r % t; the probabilities in
/// `s`'s dtype (computed in f32). The same function as `ops::causal_softmax_windowed`
/// (`window`: keys `window` or more positions back masked too), and under `cap` (Gemma 2)
/// softmax(cap · tanh(scale · s / cap)), as the reference path's candle ops compute it.
pub fn causal_softmax(
    s: &Tensor,
    scale: f64,
    window: Option<usize>,
    cap: Option<f64>,
) -> Result<Tensor> {
    let how = Scores::new(scale, window, cap).map_err(candle_core::Error::Msg)?;
    s.contiguous()?.apply_op1(CausalSoftmax(how))
}
