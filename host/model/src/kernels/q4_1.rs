//! Q4_1 weights (ggml layout, 20 bytes per 32 weights): f16 `d`, f16 `m`, 16 bytes of
//! nibbles; weight j is `d * q_j + m` with q_j the low nibble of byte j (j < 16) or the high
//! nibble of byte j - 16. A block's dot with activations `a ≈ da * qa` is then
//! `d * da * Σ q_j qa_j + m * (da * Σ qa_j)`: the integer sum in SIMD (`vpdpbusd` with AVX-512
//! VNNI, `vpmaddubsw` with AVX2), the rest in f32.

use super::{PREFETCH, Q8Row, QK, f16, prefetch};
#[cfg(target_arch = "x86_64")]
use super::{has_avx2, has_avx512_vnni, hsum};

pub(super) const BLOCK_BYTES: usize = 20;

/// One weight row (its Q4_1 blocks) against one quantized activation row.
pub(super) fn dot_portable(w: &[u8], a: &Q8Row) -> f32 {
    let mut acc = 0f32;
    for (b, blk) in w.chunks_exact(BLOCK_BYTES).enumerate() {
        let (d, m) = (f16(blk, 0), f16(blk, 2));
        let qs = &blk[4..];
        let qa = &a.q[b * QK..(b + 1) * QK];
        let mut sum = 0i32;
        for j in 0..16 {
            sum += i32::from(qs[j] & 0x0F) * i32::from(qa[j])
                + i32::from(qs[j] >> 4) * i32::from(qa[j + 16]);
        }
        acc += d * a.d[b] * sum as f32 + m * a.s[b];
    }
    acc
}

/// # Safety
/// The CPU must have AVX2, FMA and F16C (callers check `is_x86_feature_detected!`); `w`
/// must hold whole Q4_1 blocks, no more than `a` has activation blocks.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn dot_avx2(w: &[u8], a: &Q8Row) -> f32 {
    // SAFETY: same target features as this function; `w` starts at block 0.
    unsafe { dot_avx2_at(w, a, 0) }
}

/// `w` holds the weight blocks that meet activation blocks `first..`; `a` must hold them all.
/// # Safety
/// The CPU must have AVX2, FMA and F16C; `w` must hold whole Q4_1 blocks and `a` must hold
/// activation blocks `first..first + w.len() / BLOCK_BYTES`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_avx2_at(w: &[u8], a: &Q8Row, first: usize) -> f32 {
    use std::arch::x86_64::*;
    let blocks = w.len() / BLOCK_BYTES;
    debug_assert!(a.q.len() >= (first + blocks) * QK);
    // SAFETY: every load reads 16 or 32 bytes inside `w` or `a.q`: block b's nibbles are
    // w[20b+4 .. 20b+20] and its activations a.q[32(first+b) .. 32(first+b)+32], b < blocks.
    unsafe {
        let mut acc = _mm256_setzero_ps();
        let mut mins = 0f32;
        let low = _mm_set1_epi8(0x0F);
        let ones = _mm256_set1_epi16(1);
        for b in 0..blocks {
            let blk = w.as_ptr().add(b * BLOCK_BYTES);
            prefetch(blk.wrapping_add(PREFETCH));
            // The block's f16 scale and minimum, converted together by F16C.
            let dm = _mm_cvtph_ps(_mm_cvtsi32_si128((blk as *const i32).read_unaligned()));
            let d = _mm_cvtss_f32(dm);
            let m = _mm_cvtss_f32(_mm_shuffle_ps(dm, dm, 1));
            let packed = _mm_loadu_si128(blk.add(4) as *const __m128i);
            let lo = _mm_and_si128(packed, low);
            let hi = _mm_and_si128(_mm_srli_epi16(packed, 4), low);
            let q4 = _mm256_set_m128i(hi, lo);
            let q8 = _mm256_loadu_si256(a.q.as_ptr().add((first + b) * QK) as *const __m256i);
            // u8 × i8 pairs summed to i16 (at most 2·15·127, no saturation), then pairs to i32.
            let prod = _mm256_madd_epi16(_mm256_maddubs_epi16(q4, q8), ones);
            acc = _mm256_fmadd_ps(
                _mm256_set1_ps(d * a.d[first + b]),
                _mm256_cvtepi32_ps(prod),
                acc,
            );
            mins += m * a.s[first + b];
        }
        hsum(acc) + mins
    }
}

/// Two Q4_1 blocks per step against `R` activation rows: the weights' nibbles, scales and
/// minimums are unpacked once and meet every row (`vpdpbusd`: u8 x i8 products summed into
/// i32 in one instruction); an odd last block goes through the AVX2 path. Each row keeps its
/// own two accumulators, so its result does not depend on `R`.
/// # Safety
/// The CPU must have every feature named in `target_feature` (callers check); `w` must hold
/// whole Q4_1 blocks, no more than each row of `a` has activation blocks.
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
    // SAFETY: blocks b and b+1 (b = 2p, b + 1 < blocks) are w[20b .. 20b+40]: nibbles at
    // +4 and +24, `d` and `m` at +0 and +20; their activations are q[32b .. 32b+64] and
    // pairs[32p .. 32p+32] of each row (quantize_row writes both for every whole pair when
    // asked, as quant_matmul does wherever this kernel runs).
    unsafe {
        let low = _mm_set1_epi8(0x0F);
        // [d0, m0, d1, m1] -> d0 (lanes 0-7), d1 (8-15); m0, m1 the same way.
        let pick_d = _mm512_set_epi32(2, 2, 2, 2, 2, 2, 2, 2, 0, 0, 0, 0, 0, 0, 0, 0);
        let pick_m = _mm512_set_epi32(3, 3, 3, 3, 3, 3, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1);
        let mut acc = [_mm512_setzero_ps(); R];
        let mut mins = [_mm512_setzero_ps(); R];
        for p in 0..pairs {
            let b = 2 * p;
            let blk0 = w.as_ptr().add(b * BLOCK_BYTES);
            let blk1 = blk0.add(BLOCK_BYTES);
            prefetch(blk0.wrapping_add(PREFETCH));
            let n0 = _mm_loadu_si128(blk0.add(4) as *const __m128i);
            let n1 = _mm_loadu_si128(blk1.add(4) as *const __m128i);
            let mut q4 = _mm512_castsi128_si512(_mm_and_si128(n0, low));
            q4 = _mm512_inserti32x4::<1>(q4, _mm_and_si128(_mm_srli_epi16(n0, 4), low));
            q4 = _mm512_inserti32x4::<2>(q4, _mm_and_si128(n1, low));
            q4 = _mm512_inserti32x4::<3>(q4, _mm_and_si128(_mm_srli_epi16(n1, 4), low));
            let halves = _mm_set_epi32(
                0,
                0,
                (blk1 as *const i32).read_unaligned(),
                (blk0 as *const i32).read_unaligned(),
            );
            let dm = _mm512_castps128_ps512(_mm_cvtph_ps(halves));
            let dw = _mm512_permutexvar_ps(pick_d, dm);
            let mw = _mm512_permutexvar_ps(pick_m, dm);
            for r in 0..R {
                let q8 = _mm512_loadu_si512(a[r].q.as_ptr().add(b * QK) as *const __m512i);
                let dots = _mm512_dpbusd_epi32(_mm512_setzero_si512(), q4, q8);
                let scales = a[r].pairs.as_ptr().add(32 * p);
                let da = _mm512_loadu_ps(scales);
                acc[r] = _mm512_fmadd_ps(_mm512_mul_ps(dw, da), _mm512_cvtepi32_ps(dots), acc[r]);
                mins[r] = _mm512_fmadd_ps(mw, _mm512_loadu_ps(scales.add(16)), mins[r]);
            }
        }
        for r in 0..R {
            let mut total = _mm512_reduce_add_ps(_mm512_add_ps(acc[r], mins[r]));
            if blocks % 2 == 1 {
                let b = blocks - 1;
                total += dot_avx2_at(&w[b * BLOCK_BYTES..], &a[r], b);
            }
            out[r] = total;
        }
    }
}

/// One weight row against a group of up to [`GROUP`](super::GROUP) activation rows.
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
            *o = unsafe { dot_avx2(w, row) };
            continue;
        }
        *o = dot_portable(w, row);
    }
}
