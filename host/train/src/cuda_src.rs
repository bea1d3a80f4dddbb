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

/// The fused causal attention for long sequences (`flash_cuda`); needs
/// `galley_model::cuda_src::PRELUDE` before it.
pub const FLASH: &str = include_str!("../kernels/flash.cu");

/// A launch of the attention kernels: a 2-D grid, threads, dynamic shared memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Launch2 {
    pub grid: (u32, u32),
    pub block: u32,
    pub shared_bytes: usize,
}

/// The dynamic shared memory a kernel may take without raising its limit first.
pub const DEFAULT_SHARED_BYTES: usize = 48 * 1024;

impl Launch2 {
    /// Whether the launch takes more shared memory than a kernel may by default: the caller
    /// raises the kernel's limit first (`CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES`;
    /// an H100/H200 allows 227 KiB), as it does for Gemma's 256-wide heads.
    pub fn opt_in(&self) -> bool {
        self.shared_bytes > DEFAULT_SHARED_BYTES
    }
}

/// Whether the fused attention kernels take head dimension `d`: a multiple of 32, at most
/// 256 (a lane owns at most 8 output dimensions; past 128 the staged keys take 65-82 KiB of
/// shared memory, `Launch2::opt_in`).
pub fn flash_supports(d: usize) -> bool {
    d > 0 && d.is_multiple_of(32) && d <= 256
}

/// Threads per key in the dK/dV kernel: each owns at most 32 of the key's dimensions.
fn flash_threads_per_key(d: usize) -> usize {
    if d <= 128 { 4 } else { 8 }
}

const FLASH_KEYS: usize = 32;
const FLASH_ROWS: usize = 16;
const FLASH_QB: usize = 8;

/// The forward pass over `rows` query rows per (batch, KV head), `bkv` of those.
pub fn flash_fwd(rows: usize, bkv: usize, d: usize) -> Launch2 {
    Launch2 {
        grid: (rows.div_ceil(FLASH_ROWS) as u32, bkv as u32),
        block: 128,
        shared_bytes: (2 * FLASH_KEYS * (d + 1) + 4 * d) * 4,
    }
}

/// The backward pass's dQ (same tiles as the forward pass, two staged rows per warp).
pub fn flash_bwd_q(rows: usize, bkv: usize, d: usize) -> Launch2 {
    Launch2 {
        shared_bytes: (2 * FLASH_KEYS * (d + 1) + 8 * d) * 4,
        ..flash_fwd(rows, bkv, d)
    }
}

/// The backward pass's dK and dV: a block per chunk of 32 keys, 4 or 8 threads a key.
pub fn flash_bwd_kv(t: usize, bkv: usize, d: usize) -> Launch2 {
    Launch2 {
        grid: (t.div_ceil(FLASH_KEYS) as u32, bkv as u32),
        block: (FLASH_KEYS * flash_threads_per_key(d)) as u32,
        shared_bytes: (2 * FLASH_KEYS * (d + 1) + 2 * FLASH_QB * (d + 1) + 2 * FLASH_QB) * 4,
    }
}

/// Each row's dO . O, a warp per row (`all_rows` over the whole batch).
pub fn flash_dot(all_rows: usize) -> Launch2 {
    Launch2 {
        grid: (all_rows.div_ceil(4) as u32, 1),
        block: 128,
        shared_bytes: 0,
    }
}

/// What the attention kernels apply to a score before the softmax, as they take it: the
/// scale, Gemma's sliding window (0: none; a key `window` or more positions back is not
/// seen) and Gemma 2's soft cap (0: none; a scaled score x becomes cap·tanh(x / cap)).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scores {
    pub scale: f32,
    pub window: i32,
    pub cap: f32,
}

impl Scores {
    pub fn new(scale: f64, window: Option<usize>, cap: Option<f64>) -> Result<Self, String> {
        let window = match window {
            // A window of 0 would hide every key: the narrowest that means anything is 1.
            Some(w) => {
                i32::try_from(w.max(1)).map_err(|_| format!("sliding window {w} too wide"))?
            }
            None => 0,
        };
        Ok(Scores {
            scale: scale as f32,
            window,
            cap: cap.unwrap_or(0.0) as f32,
        })
    }
}
