//! Kernels galley owns where candle's are slow: the products of decoding, where a few
//! activation rows meet every weight of the model once per token. candle's Q4_1 dot product is
//! scalar (4x slower than llama.cpp here) and its f32 GEMM packs the whole weight for each
//! product, so decode-sized products come here (`layers::linear` decides which):
//! Q4_1 and Q8_0 weights against activations rounded to 8-bit blocks (as llama.cpp's Q8_1),
//! Q8_0 against f32 activations (the LM head), and f32 against f32.
//!
//! Each thread of the decode pool takes a band of weight rows and reads each weight row once
//! for all the activation rows, in groups of [`GROUP`]: the Q4_1 nibbles are unpacked and the
//! Q8_0 bytes widened once per group, and the weights are prefetched ahead of use (decoding
//! streams far more bytes than it computes on). The instruction set (AVX-512 VNNI, AVX2, or
//! portable code computing the same integers) is picked at run time. A row's result never
//! depends on the other rows it is computed with (each row's operations run in the same order
//! in every group size), so batched and single decoding agree bit for bit.
//!
//! Submodules: `q4_1` and `q8_0` (the block formats), `f32` (dense rows), `attend` (a decode
//! step's attention over the KV cache), `softmax` (the per-token work over a vocabulary's
//! logits: exponential sums, maxima, top-k), `rowwise` (the exponentials around a forward or
//! backward pass's products: causal softmax rows, the SiLU gate, the cross-entropy's sums).

/// Calls the instantiation of `$kernel` (an unsafe fn over `R` activation rows) for the group
/// size of `$acts` (1 to [`GROUP`]): a group of four, three or two in one call, one row alone.
macro_rules! by_group_size {
    ($kernel:ident, $w:expr, $acts:expr, $out:expr) => {
        match $acts.len() {
            4 => $kernel::<4>($w, $acts.try_into().expect("4 rows"), $out),
            3 => $kernel::<3>($w, $acts.try_into().expect("3 rows"), $out),
            2 => $kernel::<2>($w, $acts.try_into().expect("2 rows"), $out),
            _ => {
                for (row, o) in $acts.iter().zip($out) {
                    let one = std::slice::from_ref(row).try_into().expect("1 row");
                    $kernel::<1>($w, one, std::slice::from_mut(o));
                }
            }
        }
    };
}

/// `fn $name(args) -> ret` running `$portable` (an `#[inline(always)]` fn of plain Rust the
/// compiler vectorizes) compiled for AVX-512F or AVX2+FMA when the CPU has them (checked
/// once), else as it is. The code is the same on every path, so are the bits it computes
/// (no fast-math: lane order and fused multiply-adds are the code's).
macro_rules! vectorized {
    ($(#[$meta:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),*) $(-> $ret:ty)? = $portable:ident) => {
        $(#[$meta])*
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f")]
                fn avx512($($arg: $ty),*) $(-> $ret)? {
                    $portable($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                fn avx2($($arg: $ty),*) $(-> $ret)? {
                    $portable($($arg),*)
                }
                if $crate::kernels::has_avx512f() {
                    // SAFETY: the CPU has AVX-512F (checked at run time).
                    return unsafe { avx512($($arg),*) };
                }
                if $crate::kernels::has_avx2() {
                    // SAFETY: the CPU has AVX2 and FMA (checked at run time).
                    return unsafe { avx2($($arg),*) };
                }
            }
            $portable($($arg),*)
        }
    };
}

pub mod attend;
mod f32;
mod q4_1;
mod q8_0;
pub mod rowwise;
pub mod softmax;
#[cfg(test)]
mod tests;

use q4_1::BLOCK_BYTES as Q4_1_BLOCK_BYTES;
use q8_0::BLOCK_BYTES as Q8_0_BLOCK_BYTES;

pub const QK: usize = 32;

/// Activation rows a weight row meets at once: the quantized AVX-512 kernels keep two
/// accumulators per row, 16 registers at four rows, beside the unpacked weights (the f32
/// kernel one per product, for four weight rows at once: `f32::TILE`).
const GROUP: usize = 4;

/// How far ahead of the block being multiplied the kernels ask for weight bytes. Decoding
/// streams every weight once per token and does little work per byte: on a 2-core Xeon VM the
/// Q4_1 kernel read 6.9 GB/s (of 55 the cores can stream) until it prefetched, then 15-17;
/// 320 bytes gained half as much, 960 to 2048 about the same (`bench/RESULTS.md`).
const PREFETCH: usize = 1280;

/// Asks for the cache line holding `p`. A hint: it never faults, so `p` may lie past the end
/// of the weights (it is computed with `wrapping_add` and never dereferenced).
#[inline(always)]
fn prefetch(p: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: SSE is part of x86_64's baseline, and a prefetch reads nothing a program sees.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p as *const i8)
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// Activations of one row rounded to 8 bits per block of 32: scale, scale × sum, values.
/// `pairs` (empty unless asked for) repeats the scales for the AVX-512 kernel, 32 floats per two blocks: the two `d`s
/// eight times each (the lanes their products land in), then each `s` in the first of its
/// eight lanes, zeros elsewhere (so the weights' minimum times it is the exact product).
struct Q8Row {
    d: Vec<f32>,
    s: Vec<f32>,
    q: Vec<i8>,
    pairs: Vec<f32>,
}

/// Each block of [`QK`] values as 8-bit integers times a scale (llama.cpp's Q8_1: the scale
/// maps the largest magnitude to 127, values round half away from zero, and the block's sum
/// of integers times its scale is kept for the Q4_1 minimum term).
#[inline(always)]
fn quantize_blocks_impl(x: &[f32], row: &mut Q8Row) {
    use softmax::{LANES, fold_lanes};
    // `if a > m` is the max instruction exactly (NaN skipped, as `f32::max` would).
    let larger = |m: f32, a: f32| if a > m { a } else { m };
    for (b, chunk) in x.chunks_exact(QK).enumerate() {
        let mut acc = [0f32; LANES];
        for c in chunk.chunks_exact(LANES) {
            for i in 0..LANES {
                acc[i] = larger(acc[i], c[i].abs());
            }
        }
        let d = fold_lanes(acc, larger) / 127.0;
        let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
        let mut sum = 0i32;
        for (v, q) in chunk.iter().zip(&mut row.q[b * QK..(b + 1) * QK]) {
            // `f32::round` (half away from zero) without the libm call that kept this loop
            // scalar: y - trunc(y) is exact, so this is the same integer for every y.
            let y = v * inv;
            let t = y.trunc();
            let r = if (y - t).abs() >= 0.5 {
                t + 1f32.copysign(y)
            } else {
                t
            };
            let r = r as i32;
            *q = r as i8;
            sum += r;
        }
        row.d.push(d);
        row.s.push(d * sum as f32);
    }
}

vectorized!(fn quantize_blocks(x: &[f32], row: &mut Q8Row) = quantize_blocks_impl);

/// `pairs`: also write `pairs` (only the AVX-512 VNNI kernels read them).
fn quantize_row(x: &[f32], pairs: bool) -> Q8Row {
    let blocks = x.len() / QK;
    let mut row = Q8Row {
        d: Vec::with_capacity(blocks),
        s: Vec::with_capacity(blocks),
        q: vec![0; x.len()],
        pairs: Vec::with_capacity(if pairs { blocks / 2 * 32 } else { 0 }),
    };
    quantize_blocks(x, &mut row);
    if pairs {
        for p in 0..blocks / 2 {
            let (b0, b1) = (2 * p, 2 * p + 1);
            row.pairs.extend([row.d[b0]; 8]);
            row.pairs.extend([row.d[b1]; 8]);
            for b in [b0, b1] {
                row.pairs.push(row.s[b]);
                row.pairs.extend([0f32; 7]);
            }
        }
    }
    row
}

/// A pointer the pool's threads may share; each writes its own disjoint part.
#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
// SAFETY: the pointer is only dereferenced inside `Pool::run` jobs, which do not outlive the
// buffer it points into, and each part writes a disjoint set of indices (no data race).
unsafe impl Send for SendPtr {}
// SAFETY: as for Send: shared access never writes the same element from two threads.
unsafe impl Sync for SendPtr {}

impl SendPtr {
    fn get(self) -> *mut f32 {
        self.0
    }
}

#[inline]
fn f16(bytes: &[u8], at: usize) -> f32 {
    half::f16::from_bits(u16::from_le_bytes([bytes[at], bytes[at + 1]])).to_f32()
}

/// The sum of an AVX register's eight lanes.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn hsum(acc: std::arch::x86_64::__m256) -> f32 {
    use std::arch::x86_64::*;
    let quad = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
    let pair = _mm_add_ps(quad, _mm_movehl_ps(quad, quad));
    _mm_cvtss_f32(_mm_add_ss(pair, _mm_shuffle_ps(pair, pair, 1)))
}

fn has_avx512_vnni() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static VNNI: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *VNNI.get_or_init(|| {
            has_avx512f()
                && has_avx2()
                && is_x86_feature_detected!("avx512bw")
                && is_x86_feature_detected!("avx512dq")
                && is_x86_feature_detected!("avx512vnni")
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

fn has_avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static AVX2: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *AVX2.get_or_init(|| {
            is_x86_feature_detected!("avx2")
                && is_x86_feature_detected!("fma")
                && is_x86_feature_detected!("f16c")
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

fn has_avx512f() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static F: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *F.get_or_init(|| {
            std::env::var_os("GALLEY_NO_AVX512").is_none() && is_x86_feature_detected!("avx512f")
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// `x` (n × k) times the Q8_0 matrix `w` transposed, with the activations kept in f32.
pub fn q8_0_matmul_f32(x: &[f32], n: usize, k: usize, w: &[u8], rows: usize) -> Vec<f32> {
    assert!(
        k.is_multiple_of(QK) && x.len() == n * k && w.len() == rows * k / QK * Q8_0_BLOCK_BYTES
    );
    let acts: Vec<&[f32]> = x.chunks_exact(k).collect();
    drive(q8_0::rows_f32, k / QK * Q8_0_BLOCK_BYTES, &acts, w, rows)
}

/// `x` (n × k) times the f32 matrix `w` (rows × k) transposed, for decode-sized n: every
/// output is one dot product of two contiguous rows, split across the decode pool. gemm's
/// AVX-512 path packs the whole weight for each such product: GRPO's f32 rollouts (16 rows)
/// took 1.6x as long through it as through its AVX2 path (`bench/RESULTS.md`).
pub fn f32_matmul(x: &[f32], n: usize, k: usize, w: &[f32], rows: usize) -> Vec<f32> {
    assert!(k > 0 && x.len() == n * k && w.len() == rows * k);
    let acts: Vec<&[f32]> = x.chunks_exact(k).collect();
    let mut out = vec![0f32; n * rows];
    let pool = crate::pool::Pool::global();
    let per = rows.div_ceil(pool.parts());
    let dst = SendPtr(out.as_mut_ptr());
    pool.run(&|part, _| {
        let end = ((part + 1) * per).min(rows);
        let mut row = (part * per).min(rows);
        let mut got = [[0f32; GROUP]; f32::TILE];
        while row < end {
            let t = (end - row).min(f32::TILE);
            // A band's last tile, if short, repeats its last row (computed, not written).
            let ws: [&[f32]; f32::TILE] =
                std::array::from_fn(|i| &w[(row + i.min(t - 1)) * k..][..k]);
            for (g, some) in acts.chunks(GROUP).enumerate() {
                f32::tile(&ws, some, &mut got);
                for (i, products) in got[..t].iter().enumerate() {
                    for (j, v) in products[..some.len()].iter().enumerate() {
                        // SAFETY: `(g * GROUP + j) * rows + row + i` is inside `out` (len
                        // n * rows), and only this part writes its band of weight rows.
                        unsafe { *dst.get().add((g * GROUP + j) * rows + row + i) = *v };
                    }
                }
            }
            row += t;
        }
    });
    out
}

/// The block formats galley's kernels multiply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Blocks {
    Q4_1,
    Q8_0,
}

impl Blocks {
    pub fn of(dtype: candle_core::quantized::GgmlDType) -> Option<Self> {
        match dtype {
            candle_core::quantized::GgmlDType::Q4_1 => Some(Self::Q4_1),
            candle_core::quantized::GgmlDType::Q8_0 => Some(Self::Q8_0),
            _ => None,
        }
    }

    fn bytes(self) -> usize {
        match self {
            Self::Q4_1 => Q4_1_BLOCK_BYTES,
            Self::Q8_0 => Q8_0_BLOCK_BYTES,
        }
    }
}

/// Whole weight rows of `kind`'s blocks (`w`, k values a row) as f32 into `dst`, with the
/// values candle's dequantization gives (the same expressions: `d·q` for Q8_0, `d·q + m`
/// for Q4_1, no fused multiply-add), so a product over them has the bits of one over
/// `QTensor::dequantize`.
pub fn dequantize_rows(kind: Blocks, w: &[u8], dst: &mut [f32]) {
    let bytes = kind.bytes();
    assert_eq!(
        w.len() / bytes * QK,
        dst.len(),
        "dequantize_rows: {} bytes of blocks for {} values",
        w.len(),
        dst.len()
    );
    for (blk, out) in w.chunks_exact(bytes).zip(dst.chunks_exact_mut(QK)) {
        let d = f16(blk, 0);
        match kind {
            Blocks::Q8_0 => {
                for (o, &q) in out.iter_mut().zip(&blk[2..]) {
                    *o = f32::from(q as i8) * d;
                }
            }
            Blocks::Q4_1 => {
                let m = f16(blk, 2);
                let (lo, hi) = out.split_at_mut(QK / 2);
                for ((l, h), &q) in lo.iter_mut().zip(hi).zip(&blk[4..]) {
                    *l = f32::from(q & 0x0f) * d + m;
                    *h = f32::from(q >> 4) * d + m;
                }
            }
        }
    }
}

/// `x` (n × k) times the quantized matrix `w` (rows × k, ggml bytes of `kind`) transposed.
pub fn quant_matmul(
    kind: Blocks,
    x: &[f32],
    n: usize,
    k: usize,
    w: &[u8],
    rows: usize,
) -> Vec<f32> {
    let row_bytes = k / QK * kind.bytes();
    assert!(k.is_multiple_of(QK) && x.len() == n * k && w.len() == rows * row_bytes);
    let pairs = has_avx512_vnni();
    let acts: Vec<Q8Row> = x.chunks_exact(k).map(|r| quantize_row(r, pairs)).collect();
    let group = match kind {
        Blocks::Q4_1 => q4_1::rows,
        Blocks::Q8_0 => q8_0::rows,
    };
    drive(group, row_bytes, &acts, w, rows)
}

/// `x` (n × k, row-major) times the Q4_1 matrix `w` (rows × k, ggml bytes) transposed:
/// returns n × rows. Rows are split across the decode pool's threads.
pub fn q4_1_matmul(x: &[f32], n: usize, k: usize, w: &[u8], rows: usize) -> Vec<f32> {
    quant_matmul(Blocks::Q4_1, x, n, k, w, rows)
}

/// One weight row (`row_bytes` of `w`) against a group of up to [`GROUP`] activation rows,
/// one result per activation row.
type Group<A> = fn(&[u8], &[A], &mut [f32]);

/// Splits `rows` weight rows across the decode pool; each weight row meets the activation
/// rows `GROUP` at a time while it is in cache. (Streaming a thread's band of weight rows once
/// per activation row cost f32 rows, whose bands leave the core's cache: GRPO's rollouts took
/// 28.5 s of generation against 17.6 s.)
fn drive<A: Sync>(
    group: Group<A>,
    row_bytes: usize,
    acts: &[A],
    w: &[u8],
    rows: usize,
) -> Vec<f32> {
    let n = acts.len();
    let mut out = vec![0f32; n * rows];
    let pool = crate::pool::Pool::global();
    let per = rows.div_ceil(pool.parts());
    let dst = SendPtr(out.as_mut_ptr());
    pool.run(&|part, _| {
        let start = (part * per).min(rows);
        let end = ((part + 1) * per).min(rows);
        let mut got = [0f32; GROUP];
        for row in start..end {
            let wr = &w[row * row_bytes..(row + 1) * row_bytes];
            for (g, some) in acts.chunks(GROUP).enumerate() {
                let got = &mut got[..some.len()];
                group(wr, some, got);
                for (j, v) in got.iter().enumerate() {
                    // SAFETY: `(g * GROUP + j) * rows + row` is inside `out` (len n * rows)
                    // and only this part writes rows start..end: the writes never overlap.
                    unsafe { *dst.get().add((g * GROUP + j) * rows + row) = *v };
                }
            }
        }
    });
    out
}
