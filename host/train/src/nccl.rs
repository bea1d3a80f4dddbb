//! Data-parallel gradient sums on GPUs through NCCL: each bucket of ~32 MB of f32 gradients
//! is one `ncclAllReduce` on the stream the trainer computes on, where the TCP group copies
//! every gradient to the host, sums through rank 0 and copies back. The ranks choose together
//! (`choose`): NCCL when every rank is on a GPU of its own (host, device) and has the library,
//! else the TCP path, so one rank can never take the other road alone. NCCL refuses two ranks
//! on one GPU; such a job (as the single-GPU tests run) keeps TCP.
//!
//! The library is opened at run time (`libnccl.so.2`, five entry points of NCCL 2's stable C
//! API) rather than through cudarc's bindings: candle links cudarc's libraries when the
//! binary loads, which would make every CUDA build of galley refuse to start on a machine
//! without NCCL.

use crate::dist::{Backend, Collective, choose_backend};
use crate::error::{Result, TrainError};
use candle_core::backend::BackendStorage;
use candle_core::cuda::CudaStorage;
use candle_core::cuda::cudarc::driver::{DevicePtr, DevicePtrMut};
use candle_core::{CustomOp1, DType, Layout, Shape, Tensor};
use std::ffi::{c_char, c_int, c_void};
use std::sync::OnceLock;

/// `ncclUniqueId`: 128 opaque bytes, passed by value.
#[repr(C)]
#[derive(Clone, Copy)]
struct UniqueId([c_char; 128]);

type CommPtr = *mut c_void;
/// `ncclFloat32` and `ncclSum` in `nccl.h`.
const NCCL_FLOAT32: c_int = 7;
const NCCL_SUM: c_int = 0;

type AllReduce = unsafe extern "C" fn(
    *const c_void,
    *mut c_void,
    usize,
    c_int,
    c_int,
    CommPtr,
    *mut c_void,
) -> c_int;

/// The entry points galley calls, from the library opened once per process.
struct Api {
    get_unique_id: unsafe extern "C" fn(*mut UniqueId) -> c_int,
    comm_init_rank: unsafe extern "C" fn(*mut CommPtr, c_int, UniqueId, c_int) -> c_int,
    all_reduce: AllReduce,
    comm_destroy: unsafe extern "C" fn(CommPtr) -> c_int,
    error_string: unsafe extern "C" fn(c_int) -> *const c_char,
    _lib: libloading::Library,
}

fn api() -> Option<&'static Api> {
    static API: OnceLock<Option<Api>> = OnceLock::new();
    API.get_or_init(|| {
        let lib = ["libnccl.so.2", "libnccl.so"].iter().find_map(|name| {
            // SAFETY: opening NCCL runs only its own initialisers.
            unsafe { libloading::Library::new(*name) }.ok()
        })?;
        // SAFETY: NCCL 2's symbols with the C signatures `nccl.h` gives them (ncclGetUniqueId,
        // ncclCommInitRank, ncclAllReduce, ncclCommDestroy, ncclGetErrorString); the library
        // stays loaded inside the struct for as long as the pointers are used.
        unsafe {
            Some(Api {
                get_unique_id: *lib.get(b"ncclGetUniqueId\0").ok()?,
                comm_init_rank: *lib.get(b"ncclCommInitRank\0").ok()?,
                all_reduce: *lib.get(b"ncclAllReduce\0").ok()?,
                comm_destroy: *lib.get(b"ncclCommDestroy\0").ok()?,
                error_string: *lib.get(b"ncclGetErrorString\0").ok()?,
                _lib: lib,
            })
        }
    })
    .as_ref()
}

fn check(api: &Api, what: &str, r: c_int) -> Result<()> {
    if r == 0 {
        return Ok(());
    }
    // SAFETY: NCCL returns a static, NUL-terminated string for any result code.
    let msg = unsafe { std::ffi::CStr::from_ptr((api.error_string)(r)) };
    Err(TrainError::Stopped(format!(
        "NCCL {what}: {}",
        msg.to_string_lossy()
    )))
}

/// A communicator of the group's ranks on their GPUs.
pub struct Nccl {
    comm: CommPtr,
    api: &'static Api,
}

// SAFETY: an NCCL communicator may be used from any thread as long as calls on it do not
// overlap, which the group's `&mut self` methods guarantee.
unsafe impl Send for Nccl {}

impl Drop for Nccl {
    fn drop(&mut self) {
        // SAFETY: a communicator this value created and that nothing else holds.
        unsafe { (self.api.comm_destroy)(self.comm) };
    }
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
    let present = cuda.is_some() && api().is_some();
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
        if setting.as_deref().map(str::trim) == Some("nccl") {
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
    let (api, cuda) = (
        api().expect("a willing rank has NCCL"),
        cuda.expect("a willing rank is on a GPU"),
    );
    // Rank 0's unique id to every rank: the others add zeros to its bytes.
    let mut id = UniqueId([0; 128]);
    let mut bytes = vec![0f64; 128];
    if rank == 0 {
        // SAFETY: fills the 128-byte id.
        check(api, "ncclGetUniqueId", unsafe {
            (api.get_unique_id)(&mut id)
        })?;
        for (b, &c) in bytes.iter_mut().zip(&id.0) {
            *b = c as u8 as f64;
        }
    }
    g.all_reduce_f64(&mut bytes)?;
    for (c, &b) in id.0.iter_mut().zip(&bytes) {
        *c = b as u8 as c_char;
    }
    // The communicator belongs to the device current on this thread: this rank's.
    cuda.cuda_stream()
        .context()
        .bind_to_thread()
        .map_err(|e| TrainError::Stopped(format!("CUDA: {e}")))?;
    let mut comm: CommPtr = std::ptr::null_mut();
    // SAFETY: every rank passes the same id, its own rank and the world size.
    check(api, "ncclCommInitRank", unsafe {
        (api.comm_init_rank)(&mut comm, world as c_int, id, rank as c_int)
    })?;
    tracing::info!("data-parallel gradients over NCCL ({world} ranks)");
    Ok(Some(Nccl { comm, api }))
}

struct Sum<'a>(&'a Nccl);

impl CustomOp1 for Sum<'_> {
    fn name(&self) -> &'static str {
        "galley-nccl-sum"
    }
    crate::fused_cuda::gpu_only!(1, "NCCL sums GPU tensors");
    fn cuda_fwd(&self, s: &CudaStorage, l: &Layout) -> candle_core::Result<(CudaStorage, Shape)> {
        let Some((a, b)) = l.contiguous_offsets() else {
            candle_core::bail!("NCCL: a gradient bucket is not contiguous")
        };
        let dev = s.device().clone();
        let stream = dev.cuda_stream();
        let src = s.as_cuda_slice::<f32>()?.slice(a..b);
        // SAFETY: the all-reduce writes every element.
        let mut out = unsafe { dev.alloc::<f32>(b - a)? };
        let r = {
            let (sp, _read) = src.device_ptr(&stream);
            let (dp, _write) = out.device_ptr_mut(&stream);
            // SAFETY: two device buffers of b - a floats on this rank's GPU, enqueued on the
            // stream they belong to; the guards drop after the call is enqueued.
            unsafe {
                (self.0.api.all_reduce)(
                    sp as *const c_void,
                    dp as *mut c_void,
                    b - a,
                    NCCL_FLOAT32,
                    NCCL_SUM,
                    self.0.comm,
                    stream.cu_stream() as *mut c_void,
                )
            }
        };
        check(self.0.api, "ncclAllReduce", r)
            .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        Ok((CudaStorage::wrap_cuda_slice(out, dev), l.shape().clone()))
    }
}

impl Nccl {
    /// Sums `grads` (f32, on the communicator's GPU) across the ranks, replacing each with
    /// the sum; small tensors share a bucket, in the same order on every rank.
    pub fn sum(&self, grads: &mut [Tensor], cap: usize) -> Result<()> {
        let lens: Vec<usize> = grads.iter().map(Tensor::elem_count).collect();
        for r in crate::optim::buckets(&lens, cap) {
            let flat: Vec<Tensor> = grads[r.clone()]
                .iter()
                .map(|g| g.to_dtype(DType::F32)?.flatten_all())
                .collect::<candle_core::Result<_>>()?;
            let bucket = if flat.len() == 1 {
                flat[0].clone()
            } else {
                Tensor::cat(&flat, 0)?
            };
            let summed = bucket.contiguous()?.apply_op1_no_bwd(&Sum(self))?;
            let mut at = 0;
            for g in &mut grads[r] {
                let len = g.elem_count();
                *g = summed.narrow(0, at, len)?.reshape(g.shape())?;
                at += len;
            }
        }
        Ok(())
    }
}
