//! f32 weights against f32 activations, in tiles of up to [`TILE`] weight rows by
//! [`GROUP`](super::GROUP) activation rows. Each product keeps sixteen running sums (one per
//! lane of a 16-wide chunk, fused multiply-adds in chunk order), folded in halves (lanes
//! i + 8, i + 4, i + 2, i + 1) and then the products past the last whole chunk. That order is
//! the same on every instruction set and in every tile shape: the same bits with AVX-512,
//! AVX2 or the portable loop, and a row's result never depends on its batch.
//!
//! Why tiles: decoding a batch of rows is compute-bound past ~8 rows. One weight row against
//! four activation rows kept four dependent chains in flight and folded each sum lane by lane
//! in sixteen dependent additions; four weight rows against four activation rows keep sixteen
//! chains in flight, load each chunk once for four products, and fold in four steps.

use super::softmax::fold_lanes;
use super::{PREFETCH, prefetch};
#[cfg(target_arch = "x86_64")]
use super::{has_avx2, has_avx512f};

/// Weight rows a tile multiplies at once: sixteen AVX-512 accumulators at four activation
/// rows, beside four weight and one activation register (of 32).
pub(super) const TILE: usize = 4;

/// One product, portably: sixteen running sums, then `finish`.
pub(super) fn dot_portable(w: &[f32], x: &[f32]) -> f32 {
    let (wc, _) = w.as_chunks::<16>();
    let mut acc = [0f32; 16];
    for (wv, xv) in wc.iter().zip(x.as_chunks::<16>().0) {
        prefetch(wv.as_ptr().wrapping_add(PREFETCH / 4) as *const u8);
        for i in 0..16 {
            acc[i] = wv[i].mul_add(xv[i], acc[i]);
        }
    }
    finish(fold_lanes(acc, |a, b| a + b), w, x, wc.len() * 16)
}

/// The folded sum, then the products past the last whole chunk in order.
#[inline(always)]
fn finish(folded: f32, w: &[f32], x: &[f32], from: usize) -> f32 {
    let mut s = folded;
    for (a, b) in w[from..].iter().zip(&x[from..]) {
        s = a.mul_add(*b, s);
    }
    s
}

/// An AVX-512 register's sixteen lanes folded as `fold_lanes` does (upper half onto lower
/// half, four times).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn fold512(v: std::arch::x86_64::__m512) -> f32 {
    use std::arch::x86_64::*;
    let lo = _mm512_castps512_ps256(v);
    let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(v)));
    fold256(_mm256_add_ps(lo, hi))
}

/// Eight lanes (the sums of lanes i and i + 8) folded on: i + 4, i + 2, i + 1.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn fold256(v: std::arch::x86_64::__m256) -> f32 {
    use std::arch::x86_64::*;
    let quad = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let pair = _mm_add_ps(quad, _mm_movehl_ps(quad, quad));
    _mm_cvtss_f32(_mm_add_ss(pair, _mm_shuffle_ps::<1>(pair, pair)))
}

/// `T` weight rows against `R` activation rows in AVX-512 registers, one per product's
/// sixteen sums: `dot_portable`'s operations in its order.
/// # Safety
/// The CPU must have AVX-512F (callers check); every row of `x` and `w` must be as long as
/// `w[0]`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
unsafe fn tile_avx512<const T: usize, const R: usize>(
    w: &[&[f32]; T],
    x: &[&[f32]; R],
    out: &mut [[f32; super::GROUP]; T],
) {
    use std::arch::x86_64::*;
    let k = w[0].len();
    let chunks = k / 16;
    debug_assert!(x.iter().chain(w).all(|r| r.len() >= k));
    // SAFETY: chunk c reads [16c, 16c + 16) of every row, inside each (c < chunks, all >= k).
    unsafe {
        let mut acc = [[_mm512_setzero_ps(); R]; T];
        for c in 0..chunks {
            let mut wv = [_mm512_setzero_ps(); T];
            for t in 0..T {
                let wp = w[t].as_ptr().add(16 * c);
                prefetch(wp.wrapping_add(PREFETCH / 4) as *const u8);
                wv[t] = _mm512_loadu_ps(wp);
            }
            for r in 0..R {
                let xv = _mm512_loadu_ps(x[r].as_ptr().add(16 * c));
                for t in 0..T {
                    acc[t][r] = _mm512_fmadd_ps(wv[t], xv, acc[t][r]);
                }
            }
        }
        for t in 0..T {
            for r in 0..R {
                out[t][r] = finish(fold512(acc[t][r]), w[t], x[r], chunks * 16);
            }
        }
    }
}

/// As `tile_avx512` with two AVX registers per product (lanes 0-7 and 8-15), one weight row at
/// a time (sixteen registers cannot hold more accumulators beside the loads).
/// # Safety
/// The CPU must have AVX2 and FMA (callers check); every row of `x` must be as long as `w`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn row_avx2<const R: usize>(w: &[f32], x: &[&[f32]; R], out: &mut [f32; super::GROUP]) {
    use std::arch::x86_64::*;
    let chunks = w.len() / 16;
    debug_assert!(x.iter().all(|r| r.len() >= w.len()));
    // SAFETY: as in tile_avx512.
    unsafe {
        let mut lo = [_mm256_setzero_ps(); R];
        let mut hi = [_mm256_setzero_ps(); R];
        for c in 0..chunks {
            let wp = w.as_ptr().add(16 * c);
            prefetch(wp.wrapping_add(PREFETCH / 4) as *const u8);
            let (w0, w1) = (_mm256_loadu_ps(wp), _mm256_loadu_ps(wp.add(8)));
            for r in 0..R {
                let xp = x[r].as_ptr().add(16 * c);
                lo[r] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(xp), lo[r]);
                hi[r] = _mm256_fmadd_ps(w1, _mm256_loadu_ps(xp.add(8)), hi[r]);
            }
        }
        for r in 0..R {
            out[r] = finish(fold256(_mm256_add_ps(lo[r], hi[r])), w, x[r], chunks * 16);
        }
    }
}

/// One weight row against up to [`GROUP`](super::GROUP) activation rows in AVX2 registers.
/// # Safety
/// The CPU must have AVX2 and FMA; every row of `x` must be as long as `w`.
#[cfg(target_arch = "x86_64")]
pub(super) unsafe fn by_avx2(w: &[f32], x: &[&[f32]], out: &mut [f32; super::GROUP]) {
    // SAFETY: the caller's promise, passed on with as many rows as each array holds.
    unsafe {
        match x.len() {
            4 => row_avx2::<4>(w, x.try_into().expect("4"), out),
            3 => row_avx2::<3>(w, x.try_into().expect("3"), out),
            2 => row_avx2::<2>(w, x.try_into().expect("2"), out),
            _ => row_avx2::<1>(w, x.try_into().expect("1"), out),
        }
    }
}

/// [`TILE`] weight rows (`w`, all of one length; a band's last tile repeats its last row)
/// against a group of up to [`GROUP`](super::GROUP) activation rows: `out[t][r]` is row `t`
/// of `w` times row `r` of `x`.
pub(super) fn tile(w: &[&[f32]; TILE], x: &[&[f32]], out: &mut [[f32; super::GROUP]; TILE]) {
    assert!(!x.is_empty() && x.len() <= super::GROUP);
    #[cfg(target_arch = "x86_64")]
    if has_avx512f() {
        // SAFETY: the CPU has AVX-512F (checked at run time; it implies FMA); each arm passes
        // as many rows as its array holds, each as long as `w[0]` (the caller cuts all at k).
        unsafe {
            match x.len() {
                4 => tile_avx512::<TILE, 4>(w, x.try_into().expect("4"), out),
                3 => tile_avx512::<TILE, 3>(w, x.try_into().expect("3"), out),
                2 => tile_avx512::<TILE, 2>(w, x.try_into().expect("2"), out),
                _ => tile_avx512::<TILE, 1>(w, x.try_into().expect("1"), out),
            }
        }
        return;
    }
    for (wr, o) in w.iter().zip(out.iter_mut()) {
        #[cfg(target_arch = "x86_64")]
        if has_avx2() {
            // SAFETY: the CPU has AVX2 and FMA (checked at run time); every row is k long.
            unsafe { by_avx2(wr, x, o) };
            continue;
        }
        for (xr, v) in x.iter().zip(o.iter_mut()) {
            *v = dot_portable(wr, xr);
        }
    }
}
