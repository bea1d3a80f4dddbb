//! The CUDA C++ source of galley-train's own GPU kernels, as text: NVRTC compiles it at run
//! time on a GPU (`ops_cuda`, `optim_cuda`, behind the `cuda` feature), and the tests compile
//! the same text for the CPU through galley-cuda-emu. Always built: it is only strings.

/// The attention's causal softmax and its backward pass (`ops_cuda`); needs
/// `galley_model::cuda_src::PRELUDE` before it.
pub const OPS: &str = include_str!("../kernels/ops.cu");

/// The fused AdamW and SGD updates and the gradient norm's sum of squares (`optim_cuda`).
pub const OPTIM: &str = include_str!("../kernels/optim.cu");
