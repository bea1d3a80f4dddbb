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
