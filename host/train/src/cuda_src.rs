//! The CUDA C++ source of galley-train's own GPU kernels, as text: NVRTC compiles it at run
//! time on a GPU (`ops_cuda`, `optim_cuda`, behind the `cuda` feature), and the tests compile
//! the same text for the CPU through galley-cuda-emu. Always built: it is only strings.

/// The attention's causal softmax and its backward pass (`ops_cuda`); needs
/// `galley_model::cuda_src::PRELUDE` before it.
pub const OPS: &str = include_str!("../kernels/ops.cu");

/// The fused AdamW and SGD updates and the gradient norm's sum of squares (`optim_cuda`).
pub const OPTIM: &str = include_str!("../kernels/optim.cu");

/// A kernel launch's shape, as both cudarc's `LaunchConfig` and the emulator's `LaunchCfg`
/// are built from it: the CUDA wrappers and the CPU tests launch exactly the same grids.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    pub grid: u32,
    pub block: u32,
}

/// One block per row (the causal softmax, the RMS norm forward, the cross-entropy).
pub fn per_row(rows: usize, threads: u32) -> Shape {
    Shape {
        grid: rows as u32,
        block: threads,
    }
}

/// Threads per block of the row kernels over a model's hidden size and over its vocabulary.
pub const ROW_THREADS: u32 = 256;
pub const VOCAB_THREADS: u32 = 512;

/// A grid-stride loop over `n` elements: enough blocks to fill an H100/H200 (132 SMs) eight
/// times over, fewer for small `n`.
pub fn elementwise(n: usize) -> Shape {
    Shape {
        grid: n.div_ceil(256).clamp(1, 132 * 8) as u32,
        block: 256,
    }
}

/// Blocks of the RMS norm's backward pass, each writing its share of the weight gradient: at
/// most 128 (`rows` fewer when there are fewer rows), so the shares take 128 x n floats.
pub fn rms_bwd_parts(rows: usize) -> usize {
    rows.clamp(1, 128)
}
