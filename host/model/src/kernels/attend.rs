//! Attention for a decode step: one new query per sequence against its cached keys and
//! values. The general CPU attention (`cpu::attend`) multiplies blocks of queries with the
//! `gemm` crate on rayon's threads; for one query per row its products are 3 x n x 64 (a
//! group of query heads against one KV head's keys), where gemm spends more time packing
//! than multiplying, and rayon's threads woke next to the decode pool's spinning worker (four
//! threads on two cores). Here each (sequence, KV head) task reads every key and value row
//! once for all the query heads that share it, with 16-lane dot products and fused
//! multiply-adds, on the decode pool. A task computes the same bits whatever the batch, the
//! partition or the instruction set (AVX-512, AVX2+FMA, portable).
//!
//! Where a long cache's time went (`perf`, 4,096 keys): folding each score's sixteen lanes
//! one by one, a scalar exponential per key (its sum kept in order), and loading and storing
//! every output element once per value row. Now sixteen keys' sums fold in one shuffle
//! network on AVX-512 (each addition the one the lane-by-lane fold makes: the same bits), the
//! exponentials and their sum run in sixteen lanes, and value rows are added four at a time
//! (in key order: the same bits). SmolLM2-135M, one sequence at depth 4,096: 810 -> ~400 µs
//! a layer. A long cache is split into segments of [`SEGMENT`] keys, each a task, so one
//! sequence's few KV heads keep both threads busy. On AVX-512 every query head's value sums
//! now stay in registers over a segment's keys (`values_in_registers`; the four-row kernel's
//! bits), and an f16 cache (`Elems::F16`) is widened in registers as it is read.

use super::softmax::LANES;
use super::{SendPtr, softmax};
use half::f16;

/// Query heads per KV head this kernel takes (Llama-family models have up to 8; the general
/// attention takes larger groups).
pub const MAX_GROUP: usize = 16;

/// A KV cache's elements: f32, or f16 (llama.cpp's default cache type: half the bytes a long
/// cache streams per step, each element widened exactly as it is read).
#[derive(Clone, Copy)]
pub enum Elems<'a> {
    F32(&'a [f32]),
    F16(&'a [f16]),
}

/// Keys or values of a (b, kv_heads, n, d) tensor with a unit stride along d: element
/// (bi, h, j, c) is `data[start + bi * sb + h * sh + j * sj + c]`.
#[derive(Clone, Copy)]
pub struct Rows<'a> {
    pub data: Elems<'a>,
    pub start: usize,
    pub sb: usize,
    pub sh: usize,
    pub sj: usize,
}

impl<'a> Rows<'a> {
    #[inline(always)]
    fn at(&self, bi: usize, h: usize, j: usize) -> usize {
        self.start + bi * self.sb + h * self.sh + j * self.sj
    }

    /// Row (bi, h, j) as f32: in place, or widened into `buf` (at least `d` long).
    #[inline(always)]
    fn row<'s>(&self, bi: usize, h: usize, j: usize, d: usize, buf: &'s mut [f32]) -> &'s [f32]
    where
        'a: 's,
    {
        let at = self.at(bi, h, j);
        match self.data {
            Elems::F32(x) => &x[at..][..d],
            Elems::F16(x) => {
                let buf = &mut buf[..d];
                widen(&x[at..][..d], buf);
                buf
            }
        }
    }

    /// Asks for row (bi, h, j)'s cache lines (`d` elements), ahead of its use: a long cache
    /// streams from memory, and this VM's prefetchers alone left the kernel at a third of the
    /// bandwidth the weights' kernels reach with the same hint.
    #[inline(always)]
    fn prefetch_row(&self, bi: usize, h: usize, j: usize, d: usize) {
        let at = self.at(bi, h, j);
        let (p, bytes) = match self.data {
            Elems::F32(x) => (x.as_ptr().wrapping_add(at) as *const u8, 4 * d),
            Elems::F16(x) => (x.as_ptr().wrapping_add(at) as *const u8, 2 * d),
        };
        for off in (0..bytes).step_by(64) {
            super::prefetch(p.wrapping_add(off));
        }
    }
}

/// Keys ahead of the one in use whose rows are asked for.
const AHEAD: usize = 16;

/// f16 to f32, exactly (F16C or AVX-512 where the CPU has them: `half` picks at run time).
#[inline]
pub fn widen(src: &[f16], dst: &mut [f32]) {
    use half::slice::HalfFloatSliceExt;
    src.convert_to_f32_slice(dst);
}

/// What one decode step attends with.
pub struct Step<'a> {
    /// (b, heads, d), contiguous.
    pub q: &'a [f32],
    pub k: Rows<'a>,
    pub v: Rows<'a>,
    /// `valid[bi][j]`: key j of row bi is a token (not padding); the query sits at `past`.
    pub valid: &'a [Vec<bool>],
    pub past: usize,
    /// A sliding window: the query sees only the last `window` of the keys it sees.
    pub window: Option<usize>,
    pub heads: usize,
    pub kv_heads: usize,
    pub d: usize,
    pub scale: f32,
    /// Scores become `c·tanh(score/c)` (Gemma 2).
    pub softcap: Option<f32>,
}

#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; LANES];
    let (ca, cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let (ta, tb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..LANES {
            acc[i] = x[i].mul_add(y[i], acc[i]);
        }
    }
    for (i, (x, y)) in ta.iter().zip(tb).enumerate() {
        acc[i] = x.mul_add(*y, acc[i]);
    }
    softmax::fold_lanes(acc, |a, b| a + b)
}

/// Keys whose scores are computed together: on AVX-512 their sixteen-lane sums are folded in
/// one network of shuffles (`dots16_avx512`) instead of sixteen lane-by-lane folds.
const KEY_BLOCK: usize = 16;

/// What a task reuses between calls: its segment's scores (rep x keys), and f16 key and
/// value rows widened to f32 where no kernel reads them as they are.
#[derive(Default)]
pub struct Scratch {
    scores: Vec<f32>,
    keys: Vec<f32>,
    values: Vec<f32>,
}

/// A block of key rows as a kernel reads them.
enum KeyBlock<'x> {
    Wide([&'x [f32]; KEY_BLOCK]),
    /// f16 rows read as they are by [`dots16_avx512_f16`] (a full block, AVX-512).
    #[cfg(target_arch = "x86_64")]
    Half([&'x [f16]; KEY_BLOCK]),
}

impl<'a> Rows<'a> {
    /// Rows `js` (`bi`, `h`) for the key kernels; a short block's spare places repeat its last.
    #[inline(always)]
    fn key_block<'s>(
        &self,
        bi: usize,
        h: usize,
        js: &[usize],
        d: usize,
        buf: &'s mut Vec<f32>,
    ) -> KeyBlock<'s>
    where
        'a: 's,
    {
        let pick = |i: usize| self.at(bi, h, js[i.min(js.len() - 1)]);
        match self.data {
            Elems::F32(x) => KeyBlock::Wide(std::array::from_fn(|i| &x[pick(i)..][..d])),
            #[cfg(target_arch = "x86_64")]
            Elems::F16(x)
                if js.len() == KEY_BLOCK && d.is_multiple_of(LANES) && super::has_avx512f() =>
            {
                KeyBlock::Half(std::array::from_fn(|i| &x[pick(i)..][..d]))
            }
            Elems::F16(x) => {
                buf.resize(KEY_BLOCK * d, 0.0);
                for (i, dst) in buf.chunks_exact_mut(d).enumerate().take(js.len()) {
                    widen(&x[pick(i)..][..d], dst);
                }
                let last = js.len() - 1;
                let buf = &buf[..];
                KeyBlock::Wide(std::array::from_fn(|i| &buf[i.min(last) * d..][..d]))
            }
        }
    }
}

/// Keys a task takes at most. A longer cache is split into segments of this many of the
/// keys its row sees, each a task with its own largest score, combined in segment order: at
/// one sequence a step had one task per KV head (three for SmolLM2), so with two threads one
/// did two. Counting the keys a row sees, not positions, keeps a row's segments (and bits)
/// the same whatever padding its batch adds.
const SEGMENT: usize = 512;

/// Value rows a task adds with every query head's accumulators held in registers: `R` heads
/// times `C` sixteen-lane chunks of the output at a time (at most 24 of the 32 registers),
/// all of a segment's keys in order per pass. Adding a key's row to each head's output in key
/// order is what [`add_values4`] does, so the bits are its: only the loads and stores of the
/// output between keys are gone (the kernel's largest cost at depth: `perf`).
const VALUE_REGS: usize = 24;

/// Chunks of sixteen output lanes a pass holds for `rep` heads (0: no register kernel).
fn value_chunks(rep: usize, d: usize) -> usize {
    if rep == 0 || rep > 8 || !d.is_multiple_of(LANES) {
        return 0;
    }
    let c = (VALUE_REGS / rep).min(4);
    let c = [4, 2, 1]
        .into_iter()
        .find(|&k| k <= c && (d / LANES).is_multiple_of(k));
    c.unwrap_or(0)
}

/// `out` (rep x d, zeroed by the caller) = Σ over `keys` in order of each head's probability
/// times the key's value row, read from `data` (f32 or f16: `$load` widens 16 lanes).
macro_rules! values_in_registers {
    ($name:ident, $elem:ty, $load:path) => {
        /// # Safety
        /// The CPU must have AVX-512F; `data` holds every key's row of `d` elements at
        /// `base + j * sj`; `scores` holds `R` rows of `len` probabilities; `out` is R x d,
        /// d a multiple of 16 * C.
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx512f,fma")]
        #[allow(clippy::too_many_arguments)]
        unsafe fn $name<const R: usize, const C: usize>(
            data: &[$elem],
            base: usize,
            sj: usize,
            keys: &[usize],
            scores: &[f32],
            len: usize,
            d: usize,
            out: &mut [f32],
        ) {
            use std::arch::x86_64::*;
            debug_assert!(out.len() == R * d && scores.len() >= R * len && keys.len() <= len);
            // Keys come in increasing order (a row's seen positions), so the last row bounds
            // every read below.
            debug_assert!(keys.is_sorted());
            assert!(keys.last().is_none_or(|&j| base + j * sj + d <= data.len()));
            for c0 in (0..d).step_by(C * LANES) {
                let mut acc = [[_mm512_setzero_ps(); C]; R];
                for (i, &j) in keys.iter().enumerate() {
                    // SAFETY: row j's columns c0 .. c0 + 16C lie inside `data` (j is at most
                    // the last key, checked above; c0 + 16C <= d).
                    let row = unsafe { data.as_ptr().add(base + j * sj + c0) };
                    let mut v = [_mm512_setzero_ps(); C];
                    for (c, v) in v.iter_mut().enumerate() {
                        // SAFETY: as for `row`.
                        *v = unsafe { $load(row.add(c * LANES)) };
                    }
                    for (r, acc) in acc.iter_mut().enumerate() {
                        let p = _mm512_set1_ps(scores[r * len + i]);
                        for c in 0..C {
                            acc[c] = _mm512_fmadd_ps(p, v[c], acc[c]);
                        }
                    }
                }
                for (r, acc) in acc.iter().enumerate() {
                    for c in 0..C {
                        // SAFETY: r * d + c0 + 16c + 16 <= R * d = out.len().
                        unsafe {
                            _mm512_storeu_ps(out.as_mut_ptr().add(r * d + c0 + c * LANES), acc[c])
                        };
                    }
                }
            }
        }
    };
}

/// Sixteen f32 lanes from memory.
/// # Safety
/// The CPU must have AVX-512F; `p` points at 16 readable f32.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn load_f32(p: *const f32) -> std::arch::x86_64::__m512 {
    // SAFETY: as the function's contract says.
    unsafe { std::arch::x86_64::_mm512_loadu_ps(p) }
}

/// Sixteen f16 lanes from memory, widened (exactly).
/// # Safety
/// The CPU must have AVX-512F; `p` points at 16 readable f16.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn load_f16(p: *const f16) -> std::arch::x86_64::__m512 {
    use std::arch::x86_64::*;
    // SAFETY: as the function's contract says.
    unsafe { _mm512_cvtph_ps(_mm256_loadu_si256(p as *const __m256i)) }
}

values_in_registers!(values_f32, f32, load_f32);
values_in_registers!(values_f16, f16, load_f16);

/// Calls `$kernel::<R, C>` for the task's `rep` and [`value_chunks`]; false when none fits.
macro_rules! by_heads_and_chunks {
    ($kernel:ident, $rep:expr, $chunks:expr, $($arg:expr),*) => {
        by_heads_and_chunks!(@arms $kernel, ($rep, $chunks), ($($arg),*), [1 2 3 4 5 6 7 8])
    };
    (@arms $kernel:ident, $key:expr, $args:tt, [$($r:literal)*]) => {
        match $key {
            $(
                ($r, 4) => { by_heads_and_chunks!(@call $kernel, $r, 4, $args); true }
                ($r, 2) => { by_heads_and_chunks!(@call $kernel, $r, 2, $args); true }
                ($r, 1) => { by_heads_and_chunks!(@call $kernel, $r, 1, $args); true }
            )*
            _ => false,
        }
    };
    (@call $kernel:ident, $r:literal, $c:literal, ($($arg:expr),*)) => {
        $kernel::<$r, $c>($($arg),*)
    };
}

/// Task (bi, g, keys): the query heads of KV head g of row bi over `keys` (a segment of the
/// keys the row sees): into `out` (rep x d) each head's value rows weighted by
/// exp(score - the segment's largest), into `stats` (rep x 2) that largest and the weights' sum.
#[inline(always)]
fn task_impl(
    s: &Step,
    bi: usize,
    g: usize,
    keys: &[usize],
    scratch: &mut Scratch,
    out: &mut [f32],
    stats: &mut [f32],
) {
    let d = s.d;
    let (rep, len) = (s.heads / s.kv_heads, keys.len());
    let q = &s.q[(bi * s.heads + g * rep) * d..][..rep * d];
    let Scratch {
        scores,
        keys: kbuf,
        values: vbuf,
    } = scratch;
    scores.clear();
    scores.resize(rep * len, 0.0);
    // Each query head's largest score, kept lane by lane as they are computed (a segment is
    // never empty).
    let mut maxima = [[f32::NEG_INFINITY; LANES]; MAX_GROUP];
    let mut dots = [0f32; KEY_BLOCK];
    for (b, block) in keys.chunks(KEY_BLOCK).enumerate() {
        for &j in keys.iter().skip(b * KEY_BLOCK + AHEAD).take(KEY_BLOCK) {
            s.k.prefetch_row(bi, g, j, d);
        }
        let rows = s.k.key_block(bi, g, block, d, kbuf);
        for (r, m) in maxima[..rep].iter_mut().enumerate() {
            let q = &q[r * d..][..d];
            match &rows {
                KeyBlock::Wide(rows) => dots_block(q, &rows[..block.len()], &mut dots),
                // SAFETY: `key_block` reads rows as they are only on AVX-512, for a full
                // block, d a multiple of 16; every row is d long.
                #[cfg(target_arch = "x86_64")]
                KeyBlock::Half(rows) => unsafe { dots16_avx512_f16(q, rows, &mut dots) },
            }
            let xs = match s.softcap {
                None => dots.map(|dot| dot * s.scale),
                Some(cap) => dots.map(|dot| super::rowwise::softcap(dot * s.scale, cap)),
            };
            scores[r * len + b * KEY_BLOCK..][..block.len()].copy_from_slice(&xs[..block.len()]);
            // Lane by lane, the largest so far (a short block's spare lanes repeat its last
            // key); folded once at the end. A maximum is the same in any order (NaN skipped
            // as `f32::max` skips it; which zero wins never changes a score minus it).
            let last = xs[block.len() - 1];
            for (i, m) in m.iter_mut().enumerate() {
                let x = if i < block.len() { xs[i] } else { last };
                *m = if x > *m { x } else { *m };
            }
        }
    }
    let maxima = maxima.map(|m| softmax::fold_lanes(m, f32::max));
    for (r, &max) in maxima[..rep].iter().enumerate() {
        let row = &mut scores[r * len..][..len];
        // Exponentials and their sum in sixteen lanes.
        let mut acc = [0f32; LANES];
        let mut chunks = row.chunks_exact_mut(LANES);
        for c in &mut chunks {
            for i in 0..LANES {
                c[i] = softmax::exp(c[i] - max);
                acc[i] += c[i];
            }
        }
        for (i, x) in chunks.into_remainder().iter_mut().enumerate() {
            *x = softmax::exp(*x - max);
            acc[i] += *x;
        }
        stats[2 * r] = max;
        stats[2 * r + 1] = softmax::fold_lanes(acc, |a, b| a + b);
    }
    let scores = &scores[..];
    out.fill(0.0);
    #[cfg(target_arch = "x86_64")]
    if super::has_avx512f() {
        let chunks = value_chunks(rep, d);
        let (base, sj) = (s.v.at(bi, g, 0), s.v.sj);
        // SAFETY: AVX-512F checked; the value rows of `keys` are views of the cache, d long
        // from `base + j * sj`; `scores` is rep x len, `out` rep x d with d a multiple of
        // 16 * chunks (`value_chunks`).
        let done = unsafe {
            match s.v.data {
                Elems::F32(x) => by_heads_and_chunks!(
                    values_f32, rep, chunks, x, base, sj, keys, scores, len, d, out
                ),
                Elems::F16(x) => by_heads_and_chunks!(
                    values_f16, rep, chunks, x, base, sj, keys, scores, len, d, out
                ),
            }
        };
        if done {
            return;
        }
    }
    // Four value rows at a time: each output element takes their four products in key order
    // (the bits of one row at a time) with one load and store of it instead of four.
    let mut quads = keys.chunks_exact(4);
    for (i, quad) in (&mut quads).enumerate() {
        for &j in keys.iter().skip(4 * i + AHEAD).take(4) {
            s.v.prefetch_row(bi, g, j, d);
        }
        let quad: &[usize; 4] = quad.try_into().expect("4 keys");
        let at = quad.map(|j| s.v.at(bi, g, j));
        match s.v.data {
            Elems::F32(x) => {
                let rows = at.map(|a| &x[a..][..d]);
                add_values4(&rows, 4 * i, scores, len, out);
            }
            Elems::F16(x) => {
                vbuf.resize(4 * d, 0.0);
                for (dst, a) in vbuf.chunks_exact_mut(d).zip(at) {
                    widen(&x[a..][..d], dst);
                }
                let rows = std::array::from_fn(|k| &vbuf[k * d..][..d]);
                add_values4(&rows, 4 * i, scores, len, out);
            }
        }
    }
    let done = len - quads.remainder().len();
    vbuf.resize(vbuf.len().max(d), 0.0);
    for (i, &j) in quads.remainder().iter().enumerate() {
        let vj = s.v.row(bi, g, j, d, vbuf);
        for r in 0..rep {
            let p = scores[r * len + done + i];
            for (o, &x) in out[r * d..][..d].iter_mut().zip(vj) {
                *o = p.mul_add(x, *o);
            }
        }
    }
}

/// `out` (rep x d) plus four keys' value rows `v` weighted by their probabilities, added
/// in key order.
/// `at`: the first key's place in the segment (its scores' column).
#[inline(always)]
fn add_values4(v: &[&[f32]; 4], at: usize, scores: &[f32], len: usize, out: &mut [f32]) {
    let d = v[0].len();
    for (r, o) in out.chunks_exact_mut(d).enumerate() {
        let p: [f32; 4] = std::array::from_fn(|k| scores[r * len + at + k]);
        let rows = v[0].iter().zip(v[1]).zip(v[2].iter().zip(v[3]));
        for (o, ((a, b), (c, e))) in o.iter_mut().zip(rows) {
            let acc = p[0].mul_add(*a, *o);
            let acc = p[1].mul_add(*b, acc);
            let acc = p[2].mul_add(*c, acc);
            *o = p[3].mul_add(*e, acc);
        }
    }
}

vectorized!(fn task(s: &Step, bi: usize, g: usize, keys: &[usize], scratch: &mut Scratch, out: &mut [f32], stats: &mut [f32]) = task_impl);

type Task = fn(&Step, usize, usize, &[usize], &mut Scratch, &mut [f32], &mut [f32]);

/// `dots[i]` = `q` · `keys[i]` (each as [`dot`] computes it) for up to [`KEY_BLOCK`] keys.
#[inline(always)]
fn dots_block(q: &[f32], keys: &[&[f32]], dots: &mut [f32; KEY_BLOCK]) {
    #[cfg(target_arch = "x86_64")]
    if keys.len() == KEY_BLOCK && q.len().is_multiple_of(LANES) && super::has_avx512f() {
        // SAFETY: the CPU has AVX-512F (checked at run time); every key is as long as q.
        unsafe { dots16_avx512(q, keys.try_into().expect("16 keys"), dots) };
        return;
    }
    for (k, o) in keys.iter().zip(dots.iter_mut()) {
        *o = dot(q, k);
    }
}

macro_rules! dots16 {
    ($(#[$meta:meta])* $vis:vis fn $name:ident($elem:ty) = $load:path) => {
        $(#[$meta])*
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx512f,fma")]
        $vis unsafe fn $name(
            q: &[f32],
            keys: &[&[$elem]; KEY_BLOCK],
            dots: &mut [f32; KEY_BLOCK],
        ) {
            use std::arch::x86_64::*;
            let chunks = q.len() / LANES;
            debug_assert!(
                q.len().is_multiple_of(LANES) && keys.iter().all(|k| k.len() >= q.len())
            );
            // SAFETY: chunk c reads [16c, 16c + 16) of q and of every key, inside each (c <
            // chunks).
            unsafe {
                let mut a = [_mm512_setzero_ps(); KEY_BLOCK];
                for c in 0..chunks {
                    let qv = _mm512_loadu_ps(q.as_ptr().add(LANES * c));
                    for (acc, k) in a.iter_mut().zip(keys) {
                        *acc = _mm512_fmadd_ps(qv, $load(k.as_ptr().add(LANES * c)), *acc);
                    }
                }
                fold16(&a, dots);
            }
        }
    };
}

dots16!(
    /// Sixteen [`dot`]s at once: sixteen-lane sums over `q`'s chunks, then the sixteen folds of
    /// `fold_lanes` (lane i plus lane i + 8, + 4, + 2, + 1) as one network over all the keys, each
    /// addition the one `fold_lanes` makes, so each key's bits are [`dot`]'s.
    /// # Safety
    /// The CPU must have AVX-512F; `q.len()` must be a multiple of 16, every key at least as long.
    pub(super) fn dots16_avx512(f32) = load_f32
);

dots16!(
    /// [`dots16_avx512`] for f16 keys, widened in registers (exactly): the bits of the same
    /// keys widened first.
    /// # Safety
    /// As for [`dots16_avx512`].
    fn dots16_avx512_f16(f16) = load_f16
);

/// Each of sixteen keys' sixteen-lane sums folded as `fold_lanes` folds one (lane i plus lane
/// i + 8, + 4, + 2, + 1), all in one network of shuffles; `dots[i]` is key i's.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
fn fold16(a: &[std::arch::x86_64::__m512; KEY_BLOCK], dots: &mut [f32; KEY_BLOCK]) {
    use std::arch::x86_64::*;
    {
        // Lanes i + 8: keys 2m and 2m + 1 side by side, eight lanes each.
        let b: [__m512; 8] = std::array::from_fn(|m| {
            let (x, y) = (a[2 * m], a[2 * m + 1]);
            _mm512_add_ps(
                _mm512_shuffle_f32x4::<0x44>(x, y),
                _mm512_shuffle_f32x4::<0xEE>(x, y),
            )
        });
        // Lanes i + 4: keys 4m .. 4m + 3, a 128-bit block each.
        let c: [__m512; 4] = std::array::from_fn(|m| {
            let (x, y) = (b[2 * m], b[2 * m + 1]);
            _mm512_add_ps(
                _mm512_shuffle_f32x4::<0x88>(x, y),
                _mm512_shuffle_f32x4::<0xDD>(x, y),
            )
        });
        // Lanes i + 2: block t holds keys 8m + t and 8m + 4 + t, two lanes each.
        let e: [__m512; 2] = std::array::from_fn(|m| {
            let (x, y) = (_mm512_castps_pd(c[2 * m]), _mm512_castps_pd(c[2 * m + 1]));
            _mm512_add_ps(
                _mm512_castpd_ps(_mm512_unpacklo_pd(x, y)),
                _mm512_castpd_ps(_mm512_unpackhi_pd(x, y)),
            )
        });
        // Lanes i + 1: lane 4t + u holds key 4u + t.
        let f = _mm512_add_ps(
            _mm512_shuffle_ps::<0x88>(e[0], e[1]),
            _mm512_shuffle_ps::<0xDD>(e[0], e[1]),
        );
        let order: [i32; 16] = [0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15];
        // SAFETY: both are 16 floats (or 16 i32) long.
        unsafe {
            let idx = _mm512_loadu_si512(order.as_ptr() as *const __m512i);
            _mm512_storeu_ps(dots.as_mut_ptr(), _mm512_permutexvar_ps(idx, f));
        }
    }
}

/// softmax(scale · q · kᵀ over the keys each row sees) · v for one query per row; returns
/// (b, heads, d). Row bi's query sits at `past` and sees itself and the valid keys before it.
pub fn decode(s: &Step) -> Vec<f32> {
    decode_by(s, task)
}

fn decode_by(s: &Step, task: Task) -> Vec<f32> {
    let (b, n, d) = (s.valid.len(), s.past + 1, s.d);
    let rep = s.heads / s.kv_heads;
    let keys: Vec<Vec<usize>> = s
        .valid
        .iter()
        .map(|valid| {
            let mut keys: Vec<usize> = (0..n).filter(|&j| j == s.past || valid[j]).collect();
            if let Some(w) = s.window {
                keys.drain(..keys.len().saturating_sub(w.max(1)));
            }
            keys
        })
        .collect();
    // (row, KV head, segment), a row's segments side by side.
    let tasks: Vec<(usize, usize, usize)> = (0..b)
        .flat_map(|bi| {
            let segments = keys[bi].len().div_ceil(SEGMENT);
            (0..s.kv_heads).flat_map(move |g| (0..segments).map(move |sg| (bi, g, sg)))
        })
        .collect();
    let chunk = rep * d;
    let mut parts = vec![0f32; tasks.len() * chunk];
    let mut stats = vec![0f32; tasks.len() * rep * 2];
    let (dst, dst_stats) = (SendPtr(parts.as_mut_ptr()), SendPtr(stats.as_mut_ptr()));
    crate::pool::Pool::global().run(&|part, threads| {
        let mut scratch = Scratch::default();
        for t in (part..tasks.len()).step_by(threads) {
            let (bi, g, sg) = tasks[t];
            let seg = &keys[bi][sg * SEGMENT..((sg + 1) * SEGMENT).min(keys[bi].len())];
            // SAFETY: task t writes only parts[t * chunk..][..chunk] and
            // stats[t * 2rep..][..2rep], each task in one part; both outlive the job.
            let (o, st) = unsafe {
                (
                    std::slice::from_raw_parts_mut(dst.get().add(t * chunk), chunk),
                    std::slice::from_raw_parts_mut(dst_stats.get().add(t * rep * 2), rep * 2),
                )
            };
            task(s, bi, g, seg, &mut scratch, o, st);
        }
    });
    combine(s, &keys, &parts, &stats)
}

/// Each (row, KV head)'s segments, in order, rescaled to the largest score of them all: the
/// attention output (b, heads, d). (Compiled for the CPU's FMA like the kernels: a scalar
/// `mul_add` elsewhere is a call to libm's `fmaf`, which `perf` found here.)
#[inline(always)]
fn combine_impl(s: &Step, keys: &[Vec<usize>], parts: &[f32], stats: &[f32]) -> Vec<f32> {
    let d = s.d;
    let rep = s.heads / s.kv_heads;
    let chunk = rep * d;
    let mut out = vec![0f32; keys.len() * s.heads * d];
    let mut t = 0;
    for (bi, row_keys) in keys.iter().enumerate() {
        let segments = row_keys.len().div_ceil(SEGMENT);
        for g in 0..s.kv_heads {
            for r in 0..rep {
                let stat = |sg: usize| &stats[((t + sg) * rep + r) * 2..][..2];
                let max = (0..segments)
                    .map(|sg| stat(sg)[0])
                    .fold(f32::NEG_INFINITY, f32::max);
                let o = &mut out[(bi * s.heads + g * rep + r) * d..][..d];
                let mut sum = 0f32;
                for sg in 0..segments {
                    let w = softmax::exp(stat(sg)[0] - max);
                    sum = w.mul_add(stat(sg)[1], sum);
                    let part = &parts[(t + sg) * chunk + r * d..][..d];
                    for (o, &x) in o.iter_mut().zip(part) {
                        *o = w.mul_add(x, *o);
                    }
                }
                let inv = 1.0 / sum;
                o.iter_mut().for_each(|x| *x *= inv);
            }
            t += segments;
        }
    }
    out
}

vectorized!(fn combine(s: &Step, keys: &[Vec<usize>], parts: &[f32], stats: &[f32]) -> Vec<f32> = combine_impl);

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic values in [-1, 1).
    fn values(n: usize, seed: usize) -> Vec<f32> {
        (0..n)
            .map(|i| ((i * 7919 + seed * 104_729) % 2003) as f32 / 1001.5 - 1.0)
            .collect()
    }

    /// The folding network gives each key the bits of its own dot product (which the
    /// portable code computes), for head sizes of 64 and 128.
    #[test]
    #[cfg(target_arch = "x86_64")]
    fn sixteen_dots_at_once_are_sixteen_dots() {
        if !crate::kernels::has_avx512f() {
            return;
        }
        for d in [64, 128] {
            let q = values(d, 5);
            let keys: Vec<Vec<f32>> = (0..KEY_BLOCK).map(|i| values(d, 10 + i)).collect();
            let rows: [&[f32]; KEY_BLOCK] = std::array::from_fn(|i| &keys[i][..]);
            let mut got = [0f32; KEY_BLOCK];
            // SAFETY: AVX-512F checked above; every key is d long, d a multiple of 16.
            unsafe { dots16_avx512(&q, &rows, &mut got) };
            for (i, k) in keys.iter().enumerate() {
                assert_eq!(got[i].to_bits(), dot(&q, k).to_bits(), "d {d}, key {i}");
            }
        }
    }

    /// The value kernel holding each head's sums in registers adds the same products in the
    /// same order as [`add_values4`] (and one row at a time for the rest): the same bits, for
    /// f32 and f16 rows, every register shape it takes.
    #[test]
    #[cfg(target_arch = "x86_64")]
    fn values_in_registers_are_the_four_row_kernels_bits() {
        if !crate::kernels::has_avx512f() {
            return;
        }
        let (len, sj) = (103, 200);
        for (rep, d) in [(3, 64), (1, 64), (4, 128), (7, 64), (8, 80), (2, 48)] {
            let chunks = value_chunks(rep, d);
            assert!(chunks > 0, "rep {rep}, d {d}");
            let data = values(len * sj, rep + d);
            let half: Vec<f16> = data.iter().map(|&x| f16::from_f32(x)).collect();
            let scores = values(rep * len, 7)
                .iter()
                .map(|x| x.abs())
                .collect::<Vec<_>>();
            // Every other key, as padding leaves them.
            let keys: Vec<usize> = (0..len).step_by(2).collect();
            let n = keys.len();
            let wide: Vec<f32> = half.iter().map(|x| x.to_f32()).collect();
            for (rows, name) in [(&data, "f32"), (&wide, "f16")] {
                let mut want = vec![0f32; rep * d];
                let row = |j: usize| &rows[j * sj + 3..][..d];
                let mut quads = keys.chunks_exact(4);
                for (i, q) in (&mut quads).enumerate() {
                    let v = [row(q[0]), row(q[1]), row(q[2]), row(q[3])];
                    add_values4(&v, 4 * i, &scores, n, &mut want);
                }
                let done = n - quads.remainder().len();
                for (i, &j) in quads.remainder().iter().enumerate() {
                    for r in 0..rep {
                        let p = scores[r * n + done + i];
                        for (o, &x) in want[r * d..][..d].iter_mut().zip(row(j)) {
                            *o = p.mul_add(x, *o);
                        }
                    }
                }
                let mut got = vec![0f32; rep * d];
                // SAFETY: AVX-512F checked; rows of d from 3 + j * sj lie inside the data.
                let ran = unsafe {
                    if name == "f32" {
                        by_heads_and_chunks!(
                            values_f32, rep, chunks, &data, 3, sj, &keys, &scores, n, d, &mut got
                        )
                    } else {
                        by_heads_and_chunks!(
                            values_f16, rep, chunks, &half, 3, sj, &keys, &scores, n, d, &mut got
                        )
                    }
                };
                assert!(ran);
                let bits = |x: &[f32]| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&got), bits(&want), "{name}, rep {rep}, d {d}");
            }
        }
        // Shapes without a register kernel fall back to the four-row one.
        assert_eq!(value_chunks(9, 64), 0);
        assert_eq!(value_chunks(3, 40), 0);
    }

    /// A short cache (one segment a row) and a long one (three, the last ones of different
    /// lengths in rows with padding).
    #[test]
    fn a_rows_attention_is_the_same_bits_alone_in_a_batch_and_on_every_instruction_set() {
        for (past, cap) in [(20, 40), (2 * SEGMENT + 276, 2 * SEGMENT + 290)] {
            same_bits_alone_in_a_batch_and_on_every_instruction_set(past, cap);
        }
    }

    fn same_bits_alone_in_a_batch_and_on_every_instruction_set(past: usize, cap: usize) {
        let (b, heads, kvh, d) = (3, 9, 3, 64);
        let q = values(b * heads * d, 1);
        // Cache buffers with room to spare, as KvCache's views.
        let leak = |v: Vec<f32>| -> &'static [f32] { Vec::leak(v) };
        let (kbuf, vbuf) = (
            leak(values(b * kvh * cap * d, 2)),
            leak(values(b * kvh * cap * d, 3)),
        );
        let mut valid = vec![vec![true; past + 1]; b];
        valid[1][..4].fill(false);
        valid[2][7] = false;
        let rows = |data: &'static [f32]| Rows {
            data: Elems::F32(data),
            start: 0,
            sb: kvh * cap * d,
            sh: cap * d,
            sj: d,
        };
        let step = Step {
            q: &q,
            k: rows(kbuf),
            v: rows(vbuf),
            valid: &valid,
            past,
            window: None,
            heads,
            kv_heads: kvh,
            d,
            scale: 0.125,
            softcap: None,
        };
        let all = decode(&step);
        // Row 1 alone: its query, its keys (the views start at its row), its flags.
        let one = |data| Rows {
            start: kvh * cap * d,
            ..rows(data)
        };
        let alone = decode(&Step {
            q: &q[heads * d..2 * heads * d],
            k: one(kbuf),
            v: one(vbuf),
            valid: &valid[1..2],
            ..step
        });
        let bits = |x: &[f32]| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&alone), bits(&all[heads * d..2 * heads * d]));
        // The portable code computes the same bits as the instruction set picked at run time.
        assert_eq!(bits(&decode_by(&step, task_impl)), bits(&all));
        // And it is attention: softmax(scale q k) v over the keys each row sees, in f64,
        // from the first key on (a sliding window's start).
        let rep = heads / kvh;
        let check = |all: &[f32], window: usize| {
            for bi in 0..b {
                for h in 0..heads {
                    let (g, qh) = (h / rep, &q[(bi * heads + h) * d..][..d]);
                    let mut sees: Vec<usize> =
                        (0..=past).filter(|&j| j == past || valid[bi][j]).collect();
                    sees.drain(..sees.len().saturating_sub(window));
                    let key = |j: usize| &kbuf[bi * kvh * cap * d + g * cap * d + j * d..][..d];
                    let val = |j: usize| &vbuf[bi * kvh * cap * d + g * cap * d + j * d..][..d];
                    let logits: Vec<f64> = sees
                        .iter()
                        .map(|&j| {
                            let dot: f64 = qh
                                .iter()
                                .zip(key(j))
                                .map(|(a, b)| *a as f64 * *b as f64)
                                .sum();
                            dot * 0.125
                        })
                        .collect();
                    let max = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let w: Vec<f64> = logits.iter().map(|l| (l - max).exp()).collect();
                    let total: f64 = w.iter().sum();
                    for c in 0..d {
                        let want: f64 = sees
                            .iter()
                            .zip(&w)
                            .map(|(&j, p)| p / total * val(j)[c] as f64)
                            .sum();
                        let got = all[(bi * heads + h) * d + c] as f64;
                        assert!((got - want).abs() < 1e-5, "{bi},{h},{c}: {got} vs {want}");
                    }
                }
            }
        };
        check(&all, usize::MAX);
        // A sliding window: only the last 6 tokens (padding not counted) carry weight.
        let windowed = decode(&Step {
            window: Some(6),
            ..step
        });
        check(&windowed, 6);
        assert_ne!(bits(&windowed), bits(&all));
        // Padding keys carry no weight: changing them changes nothing.
        let mut k2 = kbuf.to_vec();
        let at = kvh * cap * d;
        k2[at..at + 4 * d].fill(9.0);
        let again = decode(&Step {
            k: rows(leak(k2)),
            ..step
        });
        assert_eq!(bits(&again), bits(&all));
        // An f16 cache: the bits of the same values widened first, whichever kernel reads
        // them (in registers on AVX-512, widened rows elsewhere and in the portable code).
        let half = |x: &[f32]| -> &'static [f16] {
            Vec::leak(x.iter().map(|&v| f16::from_f32(v)).collect::<Vec<_>>())
        };
        let (kh, vh) = (half(kbuf), half(vbuf));
        let wide = |x: &[f16]| x.iter().map(|v| v.to_f32()).collect::<Vec<_>>();
        let halves = |data: &'static [f16]| Rows {
            data: Elems::F16(data),
            ..rows(kbuf)
        };
        let f16_step = Step {
            k: halves(kh),
            v: halves(vh),
            ..step
        };
        let widened = decode(&Step {
            k: rows(leak(wide(kh))),
            v: rows(leak(wide(vh))),
            ..step
        });
        assert_eq!(bits(&decode(&f16_step)), bits(&widened));
        assert_eq!(bits(&decode_by(&f16_step, task_impl)), bits(&widened));
        // Rounding the cache to f16 moves the outputs by about its precision (2^-11).
        let worst = widened
            .iter()
            .zip(&all)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(worst > 0.0 && worst < 2e-3, "f16 cache off by {worst}");
    }
}
