//! Data-parallel gradient sums on GPUs through NCCL (cudarc's bindings, the library loaded at
//! run time): each bucket of ~32 MB of f32 gradients is one `ncclAllReduce` on the stream the
//! trainer computes on, where the TCP group copies every gradient to the host, sums through
//! rank 0 and copies back. The ranks choose together (`choose`): NCCL when every rank is on
//! a GPU of its own (host, device) and has the library, else the TCP path, so one rank can
//! never take the other road alone. NCCL refuses two ranks on one GPU; such a job (as the
//! single-GPU tests run) keeps TCP.

use crate::dist::{Backend, Collective, choose_backend};
use crate::error::{Result, TrainError};
use candle_core::backend::BackendStorage;
use candle_core::cuda::CudaStorage;
use candle_core::cuda::cudarc::nccl::safe::{Comm, Id, ReduceOp};
use candle_core::{CpuStorage, CustomOp1, DType, Layout, Shape, Tensor};

fn nccl_err(e: impl std::fmt::Debug) -> TrainError {
    TrainError::Stopped(format!("NCCL: {e:?}"))
}

/// A communicator, moved between threads only with the group that owns it (the trainer uses
/// the group from one thread at a time).
pub struct Nccl(Comm);

// SAFETY: an NCCL communicator may be used from any thread as long as calls on it do not
// overlap, which the group's `&mut self` methods guarantee.
unsafe impl Send for Nccl {}

/// Whether the NCCL library is in this process, or can be brought in. A toolkit build lists
/// it as needed (loaded at start); the driverless build of `scripts/build-cuda.sh` leaves its
/// symbols to be bound lazily at their first call, which a library opened here with
/// RTLD_GLOBAL satisfies (or one preloaded, as `scripts/gpu-check.sh` does).
fn loaded() -> bool {
    ["libnccl.so.2", "libnccl.so"].iter().any(|name| {
        let c = std::ffi::CString::new(*name).expect("no NUL");
        // SAFETY: dlopen of a library name; NCCL's initialisers are the library's own. The
        // handle is kept (never closed) so that its symbols stay bound.
        unsafe {
            !libc::dlopen(c.as_ptr(), libc::RTLD_NOW | libc::RTLD_NOLOAD).is_null()
                || !libc::dlopen(c.as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL).is_null()
        }
    })
}

/// A 32-bit FNV-1a hash of this machine's name: which ranks share a host.
fn host_id() -> u32 {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    name.trim().bytes().fold(0x811c_9dc5u32, |h, b| {
        (h ^ b as u32).wrapping_mul(0x0100_0193)
    })
}

/// Decides with the other ranks whether the group sums gradients through NCCL on `dev`, and
/// opens the communicator when it does. Every rank must call it at the same point.
pub fn choose(g: &mut dyn Collective, dev: &candle_core::Device) -> Result<Option<Nccl>> {
    let setting = std::env::var("GALLEY_DIST_BACKEND").ok();
    let cuda = dev.as_cuda_device().ok();
    let present = cuda.is_some() && loaded();
    let mine = choose_backend(setting.as_deref(), cuda.is_some(), present)?;
    // Every rank's (wants NCCL, host, GPU): one sum, in which each rank fills its own slots.
    let (rank, world) = (g.rank(), g.world_size());
    let mut table = vec![0f64; 3 * world];
    table[3 * rank] = (mine == Backend::Nccl) as u8 as f64;
    table[3 * rank + 1] = host_id() as f64;
    table[3 * rank + 2] = cuda.map_or(0, |d| d.cuda_stream().context().ordinal()) as f64;
    g.all_reduce_f64(&mut table)?;
    let willing = (0..world).filter(|r| table[3 * r] == 1.0).count();
    let mut places: Vec<(u64, u64)> = (0..world)
        .map(|r| (table[3 * r + 1] as u64, table[3 * r + 2] as u64))
        .collect();
    places.sort_unstable();
    places.dedup();
    let shared = places.len() < world;
    if willing < world || shared {
        if setting.as_deref() == Some("nccl") {
            return Err(TrainError::Config {
                file: "GALLEY_DIST_BACKEND".into(),
                msg: if shared {
                    "nccl: two ranks share a GPU, which NCCL refuses (give each rank its own, or use tcp)".into()
                } else {
                    format!("nccl: {} of {world} ranks cannot use NCCL", world - willing)
                },
            });
        }
        if willing > 0 {
            tracing::warn!(
                "data-parallel gradients over TCP: {}",
                if shared {
                    "ranks share a GPU"
                } else {
                    "not every rank has NCCL"
                }
            );
        }
        return Ok(None);
    }
    let cuda = cuda.expect("a willing rank is on a GPU");
    // Rank 0's unique id to every rank: the others add zeros to its bytes.
    let mut bytes = vec![0f64; 128];
    let id = if rank == 0 {
        let id = Id::new().map_err(nccl_err)?;
        for (b, &c) in bytes.iter_mut().zip(id.internal()) {
            *b = c as u8 as f64;
        }
        g.all_reduce_f64(&mut bytes)?;
        id
    } else {
        g.all_reduce_f64(&mut bytes)?;
        let mut raw = [0 as std::ffi::c_char; 128];
        for (c, &b) in raw.iter_mut().zip(&bytes) {
            *c = b as u8 as std::ffi::c_char;
        }
        Id::uninit(raw)
    };
    let comm = Comm::from_rank(cuda.cuda_stream(), rank, world, id).map_err(nccl_err)?;
    tracing::info!("data-parallel gradients over NCCL ({world} ranks)");
    Ok(Some(Nccl(comm)))
}

struct Sum<'a>(&'a Comm);

impl CustomOp1 for Sum<'_> {
    fn name(&self) -> &'static str {
        "galley-nccl-sum"
    }
    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        candle_core::bail!("NCCL sums GPU tensors")
    }
    fn cuda_fwd(&self, s: &CudaStorage, l: &Layout) -> candle_core::Result<(CudaStorage, Shape)> {
        let Some((a, b)) = l.contiguous_offsets() else {
            candle_core::bail!("NCCL: a gradient bucket is not contiguous")
        };
        let dev = s.device().clone();
        let src = s.as_cuda_slice::<f32>()?.slice(a..b);
        // SAFETY: the all-reduce writes every element.
        let mut out = unsafe { dev.alloc::<f32>(b - a)? };
        self.0
            .all_reduce(&src, &mut out, &ReduceOp::Sum)
            .map_err(|e| candle_core::Error::Msg(format!("NCCL all-reduce: {e:?}")))?;
        Ok((CudaStorage::wrap_cuda_slice(out, dev), l.shape().clone()))
    }
}

impl Nccl {
    /// Sums `grads` (f32, on the communicator's GPU) across the ranks, replacing each with
    /// the sum; small tensors share a bucket, in the same order on every rank.
    pub fn sum(&self, grads: &mut [Tensor]) -> Result<()> {
        let mut i = 0;
        while i < grads.len() {
            let (mut j, mut n) = (i, 0);
            while j < grads.len() && (j == i || n + grads[j].elem_count() <= crate::optim::BUCKET) {
                n += grads[j].elem_count();
                j += 1;
            }
            let flat: Vec<Tensor> = grads[i..j]
                .iter()
                .map(|g| g.to_dtype(DType::F32)?.flatten_all())
                .collect::<candle_core::Result<_>>()?;
            let bucket = if flat.len() == 1 {
                flat[0].clone()
            } else {
                Tensor::cat(&flat, 0)?
            };
            let summed = bucket.contiguous()?.apply_op1_no_bwd(&Sum(&self.0))?;
            let mut at = 0;
            for g in &mut grads[i..j] {
                let len = g.elem_count();
                *g = summed.narrow(0, at, len)?.reshape(g.shape())?;
                at += len;
            }
            i = j;
        }
        Ok(())
    }
}
