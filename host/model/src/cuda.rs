//! CUDA settings galley applies to a GPU it computes on, and the memory figures its
//! benchmarks report. candle allocates through the driver's stream-ordered pool, whose default
//! release threshold hands freed memory back to the driver at every synchronisation, so a
//! training step re-maps gigabytes each time; galley keeps it pooled (as PyTorch's caching
//! allocator does). Each allocation also records two CUDA events for cross-stream safety,
//! which a single host thread issuing all work does not need.

use candle_core::cuda::cudarc::driver::sys;
use candle_core::cuda::cudarc::driver::{CudaView, DeviceRepr};
use candle_core::cuda::{CudaDType, CudaStorage};
use candle_core::{Device, Layout, Storage};
use std::sync::OnceLock;

/// The CUDA memory of a contiguous tensor (its storage read-locked in `st`), as `T`.
pub fn view<'a, T: CudaDType + DeviceRepr>(
    st: &'a Storage,
    l: &Layout,
    what: &str,
) -> candle_core::Result<CudaView<'a, T>> {
    let Storage::Cuda(cs) = st else {
        candle_core::bail!("galley CUDA kernel: {what} is not on a CUDA device")
    };
    slice(cs, l, what)
}

/// The memory `l` covers in `cs` (an op's own input), checked contiguous, as `T`: how every
/// galley CUDA op (galley-model's and galley-train's) reads its tensors.
pub fn slice<'a, T: CudaDType + DeviceRepr>(
    cs: &'a CudaStorage,
    l: &Layout,
    what: &str,
) -> candle_core::Result<CudaView<'a, T>> {
    let Some((a, b)) = l.contiguous_offsets() else {
        candle_core::bail!("galley CUDA kernel: {what} is not contiguous")
    };
    Ok(cs.as_cuda_slice::<T>()?.slice(a..b))
}

/// `parts` (joined: `cuda_src::PRELUDE` and a module's kernels) compiled by NVRTC once per
/// process (`cell` holds the result, an error included), for every module of galley's CUDA
/// kernels; `what` names them in the error.
pub fn compile_once(
    cell: &'static OnceLock<Result<String, String>>,
    parts: &[&str],
    what: &str,
) -> candle_core::Result<&'static str> {
    cell.get_or_init(|| {
        candle_core::cuda::cudarc::nvrtc::compile_ptx(parts.concat())
            .map(|p| p.to_src())
            .map_err(|e| format!("compiling {what}: {e}"))
    })
    .as_deref()
    .map_err(|e| candle_core::Error::Msg(e.clone()))
}

fn pool(dev: &Device) -> Option<sys::CUmemoryPool> {
    let d = dev.as_cuda_device().ok()?;
    let stream = d.cuda_stream();
    let ctx = stream.context();
    ctx.bind_to_thread().ok()?;
    let mut pool = std::ptr::null_mut();
    // SAFETY: a valid device handle from a live context, and an out-pointer to fill.
    let r = unsafe { sys::cuDeviceGetDefaultMemPool(&mut pool, ctx.cu_device()) };
    (r == sys::CUresult::CUDA_SUCCESS).then_some(pool)
}

fn attr(pool: sys::CUmemoryPool, a: sys::CUmemPool_attribute) -> Option<u64> {
    let mut v: u64 = 0;
    // SAFETY: these attributes are 64-bit values (cuuint64_t).
    let r = unsafe { sys::cuMemPoolGetAttribute(pool, a, &mut v as *mut u64 as *mut _) };
    (r == sys::CUresult::CUDA_SUCCESS).then_some(v)
}

/// Keeps freed GPU memory in the pool for reuse instead of returning it at each sync.
pub fn keep_pool(dev: &Device) {
    if let Some(p) = pool(dev) {
        let mut max = u64::MAX;
        // SAFETY: RELEASE_THRESHOLD takes a cuuint64_t.
        let r = unsafe {
            sys::cuMemPoolSetAttribute(
                p,
                sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
                &mut max as *mut u64 as *mut _,
            )
        };
        if r != sys::CUresult::CUDA_SUCCESS {
            tracing::warn!("could not keep freed GPU memory pooled: {r:?}");
        }
    }
}

/// Stops recording cross-stream events on tensors made from now on. Only for a process in
/// which one host thread issues all the work on `dev` (candle's stream is per thread, and
/// the events are what orders work issued from two threads): training and the benchmarks.
pub fn single_stream(dev: &Device) {
    if let Ok(d) = dev.as_cuda_device() {
        // SAFETY: the caller promises one issuing thread, so every tensor lives on one stream.
        unsafe { d.disable_event_tracking() }
    }
}

/// The pool's high-water marks since the last `reset_peak`: (bytes in use, bytes reserved).
pub fn peak(dev: &Device) -> Option<(u64, u64)> {
    let p = pool(dev)?;
    Some((
        attr(p, sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_HIGH)?,
        attr(
            p,
            sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RESERVED_MEM_HIGH,
        )?,
    ))
}

/// Resets the high-water marks `peak` reports.
pub fn reset_peak(dev: &Device) {
    if let Some(p) = pool(dev) {
        for a in [
            sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_HIGH,
            sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RESERVED_MEM_HIGH,
        ] {
            let mut zero: u64 = 0;
            // SAFETY: the high-water attributes take a cuuint64_t (only 0 is allowed).
            unsafe { sys::cuMemPoolSetAttribute(p, a, &mut zero as *mut u64 as *mut _) };
        }
    }
}
