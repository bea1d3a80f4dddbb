//! Q8_0 weights (34 bytes per 32 weights): f16 `d`, 32 signed bytes; weight j is `d * q_j`.
//! Against activations rounded to 8 bits (as Q4_1's kernels) for Q8_0 models' projections
//! (two blocks per `vpdpbusd` with AVX-512 VNNI, one per `vpmaddubsw` pair with AVX2), and
//! against f32 activations for the LM head, where the next token is chosen and 8-bit
//! activations can flip a close call.

use super::{PREFETCH, Q8Row, QK, f16, prefetch};
#[cfg(target_arch = "x86_64")]
use super::{has_avx2, has_avx512_vnni, has_avx512f, hsum};

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
    // SAFETY: same target features as this function; `w` starts at block 0.
    unsafe { dot_q8_0_avx2_at(w, a, 0) }
}

/// `w` holds the weight blocks that meet activation blocks `first..`.
/// # Safety
/// The CPU must have AVX2, FMA and F16C; `w` must hold whole Q8_0 blocks and `a` activation
/// blocks `first..first + w.len() / BLOCK_BYTES`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_q8_0_avx2_at(w: &[u8], a: &Q8Row, first: usize) -> f32 {
    use std::arch::x86_64::*;
    let blocks = w.len() / BLOCK_BYTES;
    debug_assert!(a.q.len() >= (first + blocks) * QK && a.d.len() >= first + blocks);
    // SAFETY: block b's weights are w[34b+2 .. 34b+34], its activations
    // a.q[32(first+b) .. 32(first+b)+32].
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
            let qa = _mm256_loadu_si256(a.q.as_ptr().add((first + b) * QK) as *const __m256i);
            // Signed x signed via |w| x (a with w's sign), the unsigned x signed form AVX2 has.
            let prod = _mm256_madd_epi16(
                _mm256_maddubs_epi16(_mm256_sign_epi8(qw, qw), _mm256_sign_epi8(qa, qw)),
                ones,
            );
            acc = _mm256_fmadd_ps(
                _mm256_set1_ps(d * a.d[first + b]),
                _mm256_cvtepi32_ps(prod),
                acc,
            );
        }
        hsum(acc)
    }
}

/// Two Q8_0 blocks per step against `R` activation rows rounded to 8 bits: the blocks' 64
/// signed bytes meet each row's 64 in one `vpdpbusd` (|w| unsigned against the row's bytes
/// with w's signs, as AVX2's form), lanes 0-7 block b's sums and 8-15 block b + 1's, scaled
/// by both scales at once. Each row keeps its own accumulator, so its result does not depend
/// on `R`; an odd last block takes the AVX2 step.
/// # Safety
/// The CPU must have AVX-512 F/BW/DQ/VNNI, AVX2, FMA and F16C (callers check); each row must
/// hold 32 activations per block of `w` and `pairs` for every whole pair of them
/// (`quantize_row(.., true)`).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vnni,avx2,fma,f16c")]
unsafe fn rows_avx512<const R: usize>(w: &[u8], a: &[Q8Row; R], out: &mut [f32]) {
    use std::arch::x86_64::*;
    let blocks = w.len() / BLOCK_BYTES;
    let pairs = blocks / 2;
    debug_assert!(
        a.iter()
            .all(|r| r.pairs.len() >= pairs * 32 && r.q.len() >= blocks * QK)
    );
    // SAFETY: blocks b and b+1 (b = 2p, b + 1 < blocks) are w[34b .. 34b+68]: scales at +0
    // and +34, bytes at +2 and +36; their activations are q[32b .. 32b+64] and
    // pairs[32p .. 32p+16] of each row (written for every whole pair, as checked above).
    unsafe {
        // [d0, d1] -> d0 (lanes 0-7), d1 (8-15).
        let pick_d = _mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0);
        let zero = _mm512_setzero_si512();
        let mut acc = [_mm512_setzero_ps(); R];
        for p in 0..pairs {
            let b = 2 * p;
            let blk0 = w.as_ptr().add(b * BLOCK_BYTES);
            let blk1 = blk0.add(BLOCK_BYTES);
            prefetch(blk0.wrapping_add(PREFETCH));
            let w0 = _mm256_loadu_si256(blk0.add(2) as *const __m256i);
            let w1 = _mm256_loadu_si256(blk1.add(2) as *const __m256i);
            let qw = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(w0), w1);
            let negative = _mm512_movepi8_mask(qw);
            let magnitude = _mm512_abs_epi8(qw);
            let scales = i32::from((blk0 as *const u16).read_unaligned())
                | (i32::from((blk1 as *const u16).read_unaligned()) << 16);
            let dd = _mm512_castps128_ps512(_mm_cvtph_ps(_mm_cvtsi32_si128(scales)));
            let dw = _mm512_permutexvar_ps(pick_d, dd);
            for r in 0..R {
                let qa = _mm512_loadu_si512(a[r].q.as_ptr().add(b * QK) as *const __m512i);
                let signed = _mm512_mask_sub_epi8(qa, negative, zero, qa);
                let dots = _mm512_dpbusd_epi32(zero, magnitude, signed);
                let da = _mm512_loadu_ps(a[r].pairs.as_ptr().add(32 * p));
                acc[r] = _mm512_fmadd_ps(_mm512_mul_ps(dw, da), _mm512_cvtepi32_ps(dots), acc[r]);
            }
        }
        for r in 0..R {
            let mut total = _mm512_reduce_add_ps(acc[r]);
            if blocks % 2 == 1 {
                let b = blocks - 1;
                total += dot_q8_0_avx2_at(&w[b * BLOCK_BYTES..], &a[r], b);
            }
            out[r] = total;
        }
    }
}

/// One weight row against a group of activation rows rounded to 8 bits.
pub(super) fn rows(w: &[u8], a: &[Q8Row], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if has_avx512_vnni() {
        // SAFETY: the CPU has AVX-512 F/BW/DQ/VNNI, AVX2, FMA and F16C (checked at run time);
        // each arm passes as many rows as its array holds.
        unsafe { by_group_size!(rows_avx512, w, a, out) }
        return;
    }
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
