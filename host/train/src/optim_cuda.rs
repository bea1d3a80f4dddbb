//! The optimizer's state and update on a CUDA device: gradients stay the tensors autograd
//! produced (summed across micro-batches on the device), the moments are device buffers the
//! optimizer owns, and AdamW or SGD updates each parameter in place in one fused kernel that
//! also applies the clipping scale — one read of p, g, m, v and one write of p, m, v per
//! element, as the CPU's fused pass does. The kernel is compiled once per process by NVRTC.

use crate::config::OptimizerKind;
use crate::error::{Result, TrainError};
use crate::model::Trainable;
use candle_core::cuda::cudarc::driver::{CudaSlice, LaunchConfig, PushKernelArg};
use candle_core::cuda::{CudaDevice, CudaStorage};
use candle_core::{DType, InplaceOp1, Layout, Storage, Tensor};
use std::sync::{Mutex, OnceLock};

/// Blocks of the sum-of-squares kernel per tensor.
const NORM_BLOCKS: usize = 264;

fn ptx() -> Result<&'static str> {
    static PTX: OnceLock<std::result::Result<String, String>> = OnceLock::new();
    Ok(galley_model::cuda::compile_once(
        &PTX,
        &[crate::cuda_src::OPTIM],
        "the optimizer kernels",
    )?)
}

fn cuda_err(e: impl std::fmt::Display) -> TrainError {
    TrainError::Stopped(format!("CUDA optimizer: {e}"))
}

/// Per-parameter state on the device.
pub struct DeviceState {
    dev: CudaDevice,
    /// This step's gradient, summed over micro-batches (None: no gradient yet).
    pub g: Vec<Option<Tensor>>,
    /// First moments (AdamW) or momentum buffers (SGD); empty when unused.
    pub m: Vec<CudaSlice<f32>>,
    /// Second moments (AdamW only).
    pub v: Vec<CudaSlice<f32>>,
}

impl DeviceState {
    pub fn new(params: &[Trainable], first: bool, second: bool) -> Result<Self> {
        let dev = params
            .first()
            .map(|p| p.var.device().as_cuda_device().cloned())
            .transpose()?
            .ok_or_else(|| TrainError::Stopped("no trainable parameters".into()))?;
        let zeros = |on: bool| -> Result<Vec<CudaSlice<f32>>> {
            if !on {
                return Ok(Vec::new());
            }
            params
                .iter()
                .map(|p| {
                    dev.alloc_zeros::<f32>(p.var.elem_count())
                        .map_err(Into::into)
                })
                .collect()
        };
        Ok(Self {
            g: vec![None; params.len()],
            m: zeros(first)?,
            v: zeros(second)?,
            dev,
        })
    }

    pub fn accumulate(&mut self, i: usize, g: &Tensor) -> Result<()> {
        let g = g.to_dtype(DType::F32)?;
        self.g[i] = Some(match self.g[i].take() {
            Some(acc) => (acc + g)?,
            None => g,
        });
        Ok(())
    }

    /// Sums the gradients across a data-parallel group: on the GPUs through NCCL where the
    /// ranks can (`Collective::all_reduce_device`), else through host copies (a parameter
    /// without a gradient on this rank takes part as zeros, so every rank makes the same calls).
    pub fn all_reduce(
        &mut self,
        params: &[Trainable],
        group: &mut dyn crate::dist::Collective,
        cap: usize,
    ) -> Result<()> {
        let mut grads = params
            .iter()
            .zip(&self.g)
            .map(|(p, g)| match g {
                Some(g) => Ok(g.clone()),
                None => Tensor::zeros(p.var.shape(), DType::F32, p.var.device()),
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        if let Some(done) = group.all_reduce_device(&mut grads, cap) {
            done?;
            for (g, t) in self.g.iter_mut().zip(grads) {
                *g = Some(t);
            }
            return Ok(());
        }
        drop(grads);
        let mut host = params
            .iter()
            .zip(&self.g)
            .map(|(p, g)| match g {
                Some(g) => g.flatten_all()?.to_vec1::<f32>(),
                None => Ok(vec![0f32; p.var.elem_count()]),
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        let mut slices: Vec<&mut [f32]> = host.iter_mut().map(|h| h.as_mut_slice()).collect();
        crate::optim::all_reduce_bucketed(&mut slices, group, cap)?;
        for ((p, g), h) in params.iter().zip(&mut self.g).zip(host) {
            *g = Some(Tensor::from_vec(h, p.var.shape(), p.var.device())?);
        }
        Ok(())
    }

    /// The global gradient norm: a sum-of-squares kernel per gradient (candle's `sum_all`
    /// reduces a whole tensor in one thread block: 169 ms a step for 1.7B parameters on an
    /// H200), the blocks' partial sums copied back once and added in order on the host.
    pub fn norm(&self) -> Result<f64> {
        let grads: Vec<Tensor> = self
            .g
            .iter()
            .flatten()
            .map(|g| g.contiguous())
            .collect::<candle_core::Result<_>>()?;
        if grads.is_empty() {
            return Ok(0.0);
        }
        let src = ptx()?;
        let f = self
            .dev
            .get_or_load_custom_func("galley_sumsq", "galley_optim", src)?;
        let mut partial = self.dev.alloc_zeros::<f64>(NORM_BLOCKS * grads.len())?;
        let cfg = LaunchConfig {
            grid_dim: (NORM_BLOCKS as u32, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        for (k, g) in grads.iter().enumerate() {
            let (gs, gl) = g.storage_and_layout();
            let Storage::Cuda(gc) = &*gs else {
                return Err(cuda_err("gradient is not on the GPU"));
            };
            let n = g.elem_count();
            let gsl = gc
                .as_cuda_slice::<f32>()?
                .slice(gl.start_offset()..gl.start_offset() + n);
            let mut out = partial.slice_mut(k * NORM_BLOCKS..(k + 1) * NORM_BLOCKS);
            let n64 = n as u64;
            let mut b = f.builder();
            b.arg(&gsl).arg(&n64).arg(&mut out);
            // SAFETY: the kernel reads n floats of the gradient and writes NORM_BLOCKS
            // doubles of its slice of `partial`, one per block of the grid launched.
            unsafe { b.launch(cfg) }.map_err(cuda_err)?;
        }
        let host = self
            .dev
            .cuda_stream()
            .clone_dtoh(&partial)
            .map_err(cuda_err)?;
        Ok(host.iter().sum::<f64>().sqrt())
    }

    /// A moment buffer copied to the host (for checkpoints).
    pub fn host(&self, which: &[CudaSlice<f32>], i: usize) -> Result<Option<Vec<f32>>> {
        which
            .get(i)
            .map(|s| self.dev.cuda_stream().clone_dtoh(s).map_err(cuda_err))
            .transpose()
    }

    /// Overwrites a moment buffer from host data of the same length.
    pub fn restore(&mut self, second: bool, i: usize, data: &[f32]) -> Result<bool> {
        let stream = self.dev.cuda_stream();
        let buf = match second {
            false => self.m.get_mut(i),
            true => self.v.get_mut(i),
        };
        match buf {
            Some(b) => {
                stream.memcpy_htod(data, b).map_err(cuda_err)?;
                Ok(true)
            }
            None => Ok(false),
        }
    }
}

/// The settings of one update.
pub struct Hyper {
    pub kind: OptimizerKind,
    pub lr: f64,
    pub wd: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub momentum: f64,
    pub t: u64,
    pub gscale: f32,
}

/// Updates parameter `i` in place and drops its gradient.
pub fn step(st: &mut DeviceState, p: &Trainable, i: usize, h: &Hyper) -> Result<()> {
    let Some(g) = st.g[i].take() else {
        return Ok(());
    };
    let g = g.contiguous()?;
    let (gs, gl) = g.storage_and_layout();
    let Storage::Cuda(gc) = &*gs else {
        return Err(cuda_err("gradient is not on the GPU"));
    };
    let gsl = gc.as_cuda_slice::<f32>()?.slice(gl.start_offset()..);
    let op = Update {
        dev: st.dev.clone(),
        h,
        g: &gsl,
        m: Mutex::new(st.m.get_mut(i)),
        v: Mutex::new(st.v.get_mut(i)),
    };
    p.var.as_tensor().inplace_op1(&op)?;
    Ok(())
}

struct Update<'a> {
    dev: CudaDevice,
    h: &'a Hyper,
    g: &'a candle_core::cuda::cudarc::driver::CudaView<'a, f32>,
    m: Mutex<Option<&'a mut CudaSlice<f32>>>,
    v: Mutex<Option<&'a mut CudaSlice<f32>>>,
}

impl InplaceOp1 for Update<'_> {
    fn name(&self) -> &'static str {
        "galley-optimizer-step-cuda"
    }

    fn cpu_fwd(&self, _: &mut candle_core::CpuStorage, _: &Layout) -> candle_core::Result<()> {
        candle_core::bail!("the CUDA optimizer step was given a CPU tensor")
    }

    fn cuda_fwd(&self, storage: &mut CudaStorage, layout: &Layout) -> candle_core::Result<()> {
        let Some((a, b)) = layout.contiguous_offsets() else {
            candle_core::bail!("parameter is not contiguous")
        };
        let n = b - a;
        if self.g.len() < n {
            candle_core::bail!("gradient has {} values for {n} parameters", self.g.len())
        }
        let h = self.h;
        let src = ptx().map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        let decay = (1.0 - h.lr * h.wd) as f32;
        let mut p = storage.as_cuda_slice_mut::<f32>()?.slice_mut(a..b);
        let cfg = LaunchConfig {
            grid_dim: (n.div_ceil(256).clamp(1, 132 * 16) as u32, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        let n64 = n as u64;
        let mut m = self.m.lock().expect("optimizer state");
        let mut v = self.v.lock().expect("optimizer state");
        match h.kind {
            OptimizerKind::Adamw => {
                let (Some(m), Some(v)) = (m.as_deref_mut(), v.as_deref_mut()) else {
                    candle_core::bail!("AdamW state missing")
                };
                let f = self
                    .dev
                    .get_or_load_custom_func("galley_adamw", "galley_optim", src)?;
                let bc1 = 1.0 - h.beta1.powi(h.t as i32);
                let bc2 = 1.0 - h.beta2.powi(h.t as i32);
                let (step, sbc2) = ((h.lr / bc1) as f32, bc2.sqrt() as f32);
                let (b1, b2, eps) = (h.beta1 as f32, h.beta2 as f32, h.eps as f32);
                // 1 - beta in f64 first (as PyTorch passes it): 1 - 0.999f in f32 is off by
                // 1.3e-5 relative, which the second moments then carry.
                let (omb1, omb2) = ((1.0 - h.beta1) as f32, (1.0 - h.beta2) as f32);
                let mut l = f.builder();
                l.arg(&mut p)
                    .arg(self.g)
                    .arg(m)
                    .arg(v)
                    .arg(&n64)
                    .arg(&decay)
                    .arg(&step)
                    .arg(&b1)
                    .arg(&b2)
                    .arg(&omb1)
                    .arg(&omb2)
                    .arg(&sbc2)
                    .arg(&eps)
                    .arg(&h.gscale);
                // SAFETY: the kernel's signature is the argument list above; every buffer
                // holds at least n floats (checked above and by construction).
                unsafe { l.launch(cfg) }.map_err(|e| candle_core::Error::Msg(e.to_string()))?;
            }
            OptimizerKind::Sgd => {
                let f = self
                    .dev
                    .get_or_load_custom_func("galley_sgd", "galley_optim", src)?;
                let (lr, mu) = (h.lr as f32, h.momentum as f32);
                let on = m.is_some() as i32;
                // Without momentum the kernel never touches `buf`; it is given the gradient
                // so that the argument is a valid device pointer.
                let mut l = f.builder();
                l.arg(&mut p).arg(self.g);
                match m.as_deref_mut() {
                    Some(buf) => l.arg(buf),
                    None => l.arg(self.g),
                };
                l.arg(&n64)
                    .arg(&decay)
                    .arg(&lr)
                    .arg(&mu)
                    .arg(&h.gscale)
                    .arg(&on);
                // SAFETY: as above.
                unsafe { l.launch(cfg) }.map_err(|e| candle_core::Error::Msg(e.to_string()))?;
            }
        }
        Ok(())
    }
}
