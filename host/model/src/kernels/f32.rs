//! f32 weights against f32 activations: sixteen independent sums per row (so the loop
//! vectorizes), added in a fixed order, with no fused multiply-add: the same bits with every
//! instruction set, and for every group size.

use super::{PREFETCH, prefetch};
#[cfg(target_arch = "x86_64")]
use super::{has_avx2, has_avx512f};

/// One row: sixteen running sums, one per lane of a 16-wide chunk, then `finish`.
pub(super) fn dot_portable(w: &[f32], x: &[f32]) -> f32 {
    let (wc, _) = w.as_chunks::<16>();
    let mut acc = [0f32; 16];
    for (wv, xv) in wc.iter().zip(x.as_chunks::<16>().0) {
        prefetch(wv.as_ptr().wrapping_add(PREFETCH / 4) as *const u8);
        for i in 0..16 {
            acc[i] += wv[i] * xv[i];
        }
    }
    finish(&acc, w, x, wc.len() * 16)
}

/// The lanes' sums added in order, then the products past the last whole chunk.
#[inline(always)]
fn finish(lanes: &[f32; 16], w: &[f32], x: &[f32], from: usize) -> f32 {
    let mut s = lanes.iter().sum::<f32>();
    for (a, b) in w[from..].iter().zip(&x[from..]) {
        s += a * b;
    }
    s
}

/// `dot_portable` in AVX-512 registers (one per row's sixteen sums): the same operations in
/// the same order, so the same bits; LLVM kept the portable loop's sums in memory for R > 1.
/// # Safety
/// The CPU must have AVX-512F (callers check); every row of `x` must be as long as `w`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn rows_avx512_n<const R: usize>(w: &[f32], x: &[&[f32]; R], out: &mut [f32]) {
    use std::arch::x86_64::*;
    let chunks = w.len() / 16;
    debug_assert!(x.iter().all(|r| r.len() >= w.len()));
    // SAFETY: chunk c reads w[16c .. 16c+16] and x[r][16c .. 16c+16], inside both (c < chunks).
    unsafe {
        let mut acc = [_mm512_setzero_ps(); R];
        for c in 0..chunks {
            let wp = w.as_ptr().add(16 * c);
            prefetch(wp.wrapping_add(PREFETCH / 4) as *const u8);
            let wv = _mm512_loadu_ps(wp);
            for r in 0..R {
                let xv = _mm512_loadu_ps(x[r].as_ptr().add(16 * c));
                acc[r] = _mm512_add_ps(acc[r], _mm512_mul_ps(wv, xv));
            }
        }
        for r in 0..R {
            let mut lanes = [0f32; 16];
            _mm512_storeu_ps(lanes.as_mut_ptr(), acc[r]);
            out[r] = finish(&lanes, w, x[r], chunks * 16);
        }
    }
}

/// As `rows_avx512_n` with two AVX registers per row (lanes 0-7 and 8-15).
/// # Safety
/// The CPU must have AVX2 (callers check); every row of `x` must be as long as `w`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn rows_avx2_n<const R: usize>(w: &[f32], x: &[&[f32]; R], out: &mut [f32]) {
    use std::arch::x86_64::*;
    let chunks = w.len() / 16;
    debug_assert!(x.iter().all(|r| r.len() >= w.len()));
    // SAFETY: as in rows_avx512_n.
    unsafe {
        let mut lo = [_mm256_setzero_ps(); R];
        let mut hi = [_mm256_setzero_ps(); R];
        for c in 0..chunks {
            let wp = w.as_ptr().add(16 * c);
            prefetch(wp.wrapping_add(PREFETCH / 4) as *const u8);
            let (w0, w1) = (_mm256_loadu_ps(wp), _mm256_loadu_ps(wp.add(8)));
            for r in 0..R {
                let xp = x[r].as_ptr().add(16 * c);
                lo[r] = _mm256_add_ps(lo[r], _mm256_mul_ps(w0, _mm256_loadu_ps(xp)));
                hi[r] = _mm256_add_ps(hi[r], _mm256_mul_ps(w1, _mm256_loadu_ps(xp.add(8))));
            }
        }
        for r in 0..R {
            let mut lanes = [0f32; 16];
            _mm256_storeu_ps(lanes.as_mut_ptr(), lo[r]);
            _mm256_storeu_ps(lanes.as_mut_ptr().add(8), hi[r]);
            out[r] = finish(&lanes, w, x[r], chunks * 16);
        }
    }
}

/// One f32 weight row (`w`'s bytes) against a group of up to [`GROUP`](super::GROUP) rows.
pub(super) fn rows(w: &[u8], x: &[&[f32]], out: &mut [f32]) {
    let w: &[f32] = bytemuck::cast_slice(w);
    #[cfg(target_arch = "x86_64")]
    if has_avx512f() {
        // SAFETY: the CPU has AVX-512F (checked at run time); each arm passes as many rows
        // as its array holds, each as long as `w` (drive cuts both at k).
        return unsafe { by_group_size!(rows_avx512_n, w, x, out) };
    }
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: the CPU has AVX2 (checked at run time); as above.
        return unsafe { by_group_size!(rows_avx2_n, w, x, out) };
    }
    for (row, o) in x.iter().zip(out) {
        *o = dot_portable(w, row);
    }
}
