//! Q8_0 weights (34 bytes per 32 weights): f16 `d`, 32 signed bytes; weight j is `d * q_j`.
//! Against activations rounded to 8 bits (as Q4_1's kernels) for Q8_0 models' projections, and
//! against f32 activations for the LM head, where the next token is chosen and 8-bit
//! activations can flip a close call.

use super::{PREFETCH, Q8Row, QK, f16, prefetch};
#[cfg(target_arch = "x86_64")]
use super::{has_avx2, has_avx512f, hsum};

pub(super) const BLOCK_BYTES: usize = 34;

pub(super) fn dot_q8_0_portable(w: &[u8], a: &Q8Row) -> f32 {
    let mut acc = 0f32;
    for (b, blk) in w.chunks_exact(BLOCK_BYTES).enumerate() {
        let qa = &a.q[b * QK..(b + 1) * QK];
        let sum: i32 = blk[2..]
            .iter()
            .zip(qa)
            .map(|(&q, &x)| i32::from(q as i8) * i32::from(x))
            .sum();
        acc += f16(blk, 0) * a.d[b] * sum as f32;
    }
    acc
}

/// # Safety
/// The CPU must have AVX2, FMA and F16C (callers check); `w` must hold whole Q8_0 blocks,
/// no more than `a` has activation blocks.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_q8_0_avx2(w: &[u8], a: &Q8Row) -> f32 {
    use std::arch::x86_64::*;
    let blocks = w.len() / BLOCK_BYTES;
    // SAFETY: block b's weights are w[34b+2 .. 34b+34], its activations a.q[32b .. 32b+32].
    unsafe {
        let mut acc = _mm256_setzero_ps();
        let ones = _mm256_set1_epi16(1);
        for b in 0..blocks {
            let blk = w.as_ptr().add(b * BLOCK_BYTES);
            prefetch(blk.wrapping_add(PREFETCH));
            let d = _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(i32::from(
                (blk as *const u16).read_unaligned(),
            ))));
            let qw = _mm256_loadu_si256(blk.add(2) as *const __m256i);
            let qa = _mm256_loadu_si256(a.q.as_ptr().add(b * QK) as *const __m256i);
            // Signed x signed via |w| x (a with w's sign), the unsigned x signed form AVX2 has.
            let prod = _mm256_madd_epi16(
                _mm256_maddubs_epi16(_mm256_sign_epi8(qw, qw), _mm256_sign_epi8(qa, qw)),
                ones,
            );
            acc = _mm256_fmadd_ps(_mm256_set1_ps(d * a.d[b]), _mm256_cvtepi32_ps(prod), acc);
        }
        hsum(acc)
    }
}

/// One weight row against a group of activation rows rounded to 8 bits.
pub(super) fn rows(w: &[u8], a: &[Q8Row], out: &mut [f32]) {
    for (row, o) in a.iter().zip(out) {
        #[cfg(target_arch = "x86_64")]
        if has_avx2() {
            // SAFETY: the CPU has AVX2, FMA and F16C (checked at run time).
            *o = unsafe { dot_q8_0_avx2(w, row) };
            continue;
        }
        *o = dot_q8_0_portable(w, row);
    }
}

/// One Q8_0 weight row against f32 activations (no rounding of the activations): for the LM
/// head, where the choice of the next token is made and 8-bit activations can flip a close one.
pub(super) fn dot_q8_0_f32_portable(w: &[u8], x: &[f32]) -> f32 {
    let mut acc = 0f32;
    for (b, blk) in w.chunks_exact(BLOCK_BYTES).enumerate() {
        let xs = &x[b * QK..(b + 1) * QK];
        let sum: f32 = blk[2..]
            .iter()
            .zip(xs)
            .map(|(&q, &v)| f32::from(q as i8) * v)
            .sum();
        acc += f16(blk, 0) * sum;
    }
    acc
}

/// # Safety
/// The CPU must have AVX2, FMA and F16C (callers check); `x` must hold 32 floats per Q8_0
/// block of `w`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_q8_0_f32_avx2(w: &[u8], x: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    let blocks = w.len() / BLOCK_BYTES;
    // SAFETY: block b's weights are w[34b+2 .. 34b+34], its activations x[32b .. 32b+32].
    unsafe {
        let mut acc = _mm256_setzero_ps();
        for b in 0..blocks {
            let blk = w.as_ptr().add(b * BLOCK_BYTES);
            prefetch(blk.wrapping_add(PREFETCH));
            let d = _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(i32::from(
                (blk as *const u16).read_unaligned(),
            ))));
            let mut s = _mm256_setzero_ps();
            for g in 0..4 {
                let q = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(
                    blk.add(2 + 8 * g) as *const __m128i,
                )));
                s = _mm256_fmadd_ps(q, _mm256_loadu_ps(x.as_ptr().add(b * QK + 8 * g)), s);
            }
            acc = _mm256_fmadd_ps(_mm256_set1_ps(d), s, acc);
        }
        hsum(acc)
    }
}

/// One Q8_0 block per step against `R` rows of f32 activations: the block's bytes are widened
/// to f32 and scaled once, then meet every row. Four accumulators per row (even and odd
/// blocks, low and high halves), so a row's chain of fused adds does not wait on itself
/// (a single row was latency-bound) and its result does not depend on `R`.
/// # Safety
/// The CPU must have AVX-512F, AVX2, FMA and F16C (callers check); each row of `x` must hold
/// 32 floats per Q8_0 block of `w`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
unsafe fn rows_f32_avx512<const R: usize>(w: &[u8], x: &[&[f32]; R], out: &mut [f32]) {
    use std::arch::x86_64::*;
    let blocks = w.len() / BLOCK_BYTES;
    debug_assert!(x.iter().all(|r| r.len() >= blocks * QK));
    // SAFETY: block b's weights are w[34b+2 .. 34b+34], its activations x[r][32b .. 32b+32].
    unsafe {
        let mut acc = [[_mm512_setzero_ps(); 4]; R];
        // Block `$b` into accumulators `$a` and `$a + 1` of every row.
        macro_rules! block {
            ($b:expr, $a:expr) => {{
                let b = $b;
                let blk = w.as_ptr().add(b * BLOCK_BYTES);
                prefetch(blk.wrapping_add(PREFETCH));
                let d = _mm512_set1_ps(_mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(i32::from(
                    (blk as *const u16).read_unaligned(),
                )))));
                let q0 = _mm_loadu_si128(blk.add(2) as *const __m128i);
                let q1 = _mm_loadu_si128(blk.add(18) as *const __m128i);
                let w0 = _mm512_mul_ps(d, _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(q0)));
                let w1 = _mm512_mul_ps(d, _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(q1)));
                for r in 0..R {
                    let xs = x[r].as_ptr().add(b * QK);
                    acc[r][$a] = _mm512_fmadd_ps(w0, _mm512_loadu_ps(xs), acc[r][$a]);
                    acc[r][$a + 1] =
                        _mm512_fmadd_ps(w1, _mm512_loadu_ps(xs.add(16)), acc[r][$a + 1]);
                }
            }};
        }
        for p in 0..blocks / 2 {
            block!(2 * p, 0);
            block!(2 * p + 1, 2);
        }
        if blocks % 2 == 1 {
            block!(blocks - 1, 0);
        }
        for r in 0..R {
            let [a, b, c, d] = acc[r];
            out[r] = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a, b), _mm512_add_ps(c, d)));
        }
    }
}

/// One Q8_0 weight row against a group of up to [`GROUP`](super::GROUP) f32 activation rows.
pub(super) fn rows_f32(w: &[u8], x: &[&[f32]], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if has_avx512f() && has_avx2() {
        // SAFETY: the CPU has AVX-512F, AVX2, FMA and F16C (checked at run time); each arm
        // passes as many rows as its array holds.
        unsafe { by_group_size!(rows_f32_avx512, w, x, out) }
        return;
    }
    for (row, o) in x.iter().zip(out) {
        #[cfg(target_arch = "x86_64")]
        if has_avx2() {
            // SAFETY: the CPU has AVX2, FMA and F16C (checked at run time).
            *o = unsafe { dot_q8_0_f32_avx2(w, row) };
            continue;
        }
        *o = dot_q8_0_f32_portable(w, row);
    }
}
