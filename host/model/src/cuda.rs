//! CUDA settings galley applies to a GPU it computes on, and the memory figures its
//! benchmarks report. candle allocates through the driver's stream-ordered pool, whose default
//! release threshold hands freed memory back to the driver at every synchronisation, so a
//! training step re-maps gigabytes each time; galley keeps it pooled (as PyTorch's caching
//! allocator does). Each allocation also records two CUDA events for cross-stream safety,
//! which a single host thread issuing all work does not need.

use candle_core::Device;
use candle_core::cuda::cudarc::driver::sys;
use std::sync::OnceLock;

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
