//! The CUDA C++ source of galley-model's own GPU kernels, as text: NVRTC compiles it at run
//! time on a GPU (`cuda`, `cuda_decode`, behind the `cuda` feature), and the tests compile
//! the same text for the CPU through galley-cuda-emu, so the kernels' logic is checked on
//! machines without a GPU. Always built: it is only strings.

/// What every module of galley's kernels starts with (galley-model's decode kernels,
/// galley-train's training kernels): bf16 loads and stores around f32 arithmetic (stores
/// round to nearest even), and warp and block reductions (max or sum; blocks of a multiple
/// of 32 threads).
pub const PRELUDE: &str = include_str!("../kernels/prelude.cuh");

/// The fused kernels of a decode step (`cuda_decode`); needs `PRELUDE` before it.
pub const DECODE: &str = include_str!("../kernels/decode.cu");

/// The fused decode step's limits: at most this many rows (a warp keeps one partial sum per
/// row and weight row), and their normed activations (rows x hidden f32) in shared memory,
/// which leaves room under the 48 KiB a block has for the block reduction's static 128 bytes.
pub const FUSED_STEP_MAX_ROWS: usize = 8;
const FUSED_STEP_MAX_SHARED: usize = 47 * 1024;

/// Whether a decode step of `rows` rows of a `hidden`-wide model can take the fused kernels.
pub fn fused_step_fits(rows: usize, hidden: usize) -> bool {
    (1..=FUSED_STEP_MAX_ROWS).contains(&rows) && rows * hidden * 4 <= FUSED_STEP_MAX_SHARED
}

/// A launch of the fused decode step's kernels: a 2-D grid, threads, dynamic shared bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepLaunch {
    pub grid: (u32, u32),
    pub block: u32,
    pub shared_bytes: usize,
}

/// Warps per block of the fused step's kernels, each taking one pair of weight rows (or one).
const STEP_WARPS: usize = 8;

/// `qkv_step` over `heads` (queries, keys and values) of `head_dim`, `rows` x `hidden` normed.
pub fn qkv_step(heads: usize, head_dim: usize, rows: usize, hidden: usize) -> StepLaunch {
    StepLaunch {
        grid: (heads as u32, (head_dim / 2).div_ceil(STEP_WARPS) as u32),
        block: (STEP_WARPS * 32) as u32,
        shared_bytes: rows * hidden * 4,
    }
}

/// `mlp_up_step` over an intermediate size of `inter`.
pub fn mlp_up_step(inter: usize, rows: usize, hidden: usize) -> StepLaunch {
    StepLaunch {
        grid: (inter.div_ceil(STEP_WARPS) as u32, 1),
        block: (STEP_WARPS * 32) as u32,
        shared_bytes: rows * hidden * 4,
    }
}

/// `gemv_rows` producing `out` values per row.
pub fn gemv_rows(out: usize) -> StepLaunch {
    StepLaunch {
        grid: (out.div_ceil(STEP_WARPS) as u32, 1),
        block: (STEP_WARPS * 32) as u32,
        shared_bytes: 0,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_fused_step_takes_batches_whose_rows_fit_shared_memory() {
        assert!(super::fused_step_fits(1, 576));
        assert!(super::fused_step_fits(8, 576)); // SmolLM2-135M: 18 KiB
        assert!(super::fused_step_fits(4, 2048)); // a 2,048-wide model: 32 KiB
        // 8 x 1,536 floats are the whole 48 KiB, with no room for the reduction's 128 bytes.
        assert!(!super::fused_step_fits(8, 1536));
        assert!(!super::fused_step_fits(9, 64));
        assert!(!super::fused_step_fits(0, 64));
    }
}
