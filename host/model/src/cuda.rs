//! CUDA settings galley applies to a GPU it computes on, and the memory figures its
//! benchmarks report. candle allocates through the driver's stream-ordered pool, whose default
//! release threshold hands freed memory back to the driver at every synchronisation, so a
//! training step re-maps gigabytes each time; galley keeps it pooled (as PyTorch's caching
//! allocator does). Each allocation also records two CUDA events for cross-stream safety,
//! which a single host thread issuing all work does not need.

use candle_core::Device;
use candle_core::cuda::cudarc::driver::sys;
use std::sync::OnceLock;

/// The CUDA source every module of galley's kernels starts with (galley-model's decode
/// kernels, galley-train's training kernels): bf16 loads and stores around f32 arithmetic
/// (stores round to nearest even), and warp and block reductions (max or sum; blocks of a
/// multiple of 32 threads). A macro so that modules can `concat!` it with their own source.
#[macro_export]
macro_rules! cuda_prelude {
    () => {
        r#"
typedef unsigned short bf16_t;
__device__ __forceinline__ float ld(const float* p, long long i) { return p[i]; }
__device__ __forceinline__ float ld(const bf16_t* p, long long i) {
    return __uint_as_float(((unsigned int)p[i]) << 16);
}
__device__ __forceinline__ void st(float* p, long long i, float v) { p[i] = v; }
__device__ __forceinline__ void st(bf16_t* p, long long i, float v) {
    unsigned int u = __float_as_uint(v);
    if ((u & 0x7fffffffu) > 0x7f800000u) { p[i] = 0x7fc0; return; }
    u += 0x7fffu + ((u >> 16) & 1u);  // round to nearest even
    p[i] = (bf16_t)(u >> 16);
}
__device__ __forceinline__ float warp_red(float v, bool mx) {
    for (int o = 16; o > 0; o >>= 1) {
        float w = __shfl_xor_sync(0xffffffffu, v, o);
        v = mx ? fmaxf(v, w) : v + w;
    }
    return v;
}
// Every thread of the block gets the block's max (mx) or sum.
__device__ float block_red(float v, bool mx) {
    __shared__ float sh[32];
    const float id = mx ? __int_as_float(0xff800000) : 0.0f;
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    v = warp_red(v, mx);
    __syncthreads();
    if (lane == 0) sh[w] = v;
    __syncthreads();
    v = threadIdx.x < (blockDim.x >> 5) ? sh[threadIdx.x] : id;
    if (w == 0) v = warp_red(v, mx);
    if (threadIdx.x == 0) sh[0] = v;
    __syncthreads();
    return sh[0];
}
"#
    };
}

/// `src` compiled by NVRTC once per process (`cell` holds the result, an error included),
/// for every module of galley's CUDA kernels; `what` names them in the error.
pub fn compile_once(
    cell: &'static OnceLock<Result<String, String>>,
    src: &str,
    what: &str,
) -> candle_core::Result<&'static str> {
    cell.get_or_init(|| {
        candle_core::cuda::cudarc::nvrtc::compile_ptx(src)
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
