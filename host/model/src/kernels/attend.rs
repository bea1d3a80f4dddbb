//! Attention for a decode step: one new query per sequence against its cached keys and
//! values. The general CPU attention (`cpu::attend`) multiplies blocks of queries with the
//! `gemm` crate on rayon's threads; for one query per row its products are 3 x n x 64 (a
//! group of query heads against one KV head's keys), where gemm spends more time packing
//! than multiplying, and rayon's threads woke next to the decode pool's spinning worker (four
//! threads on two cores). Here each (sequence, KV head) task reads every key and value row
//! once for all the query heads that share it, with 16-lane dot products and fused
//! multiply-adds, on the decode pool. A task computes the same bits whatever the batch, the
//! partition or the instruction set (AVX-512, AVX2+FMA, portable).

use super::softmax::LANES;
use super::{SendPtr, softmax};

/// Query heads per KV head this kernel takes (Llama-family models have up to 8; the general
/// attention takes larger groups).
pub const MAX_GROUP: usize = 16;

/// Keys or values of a (b, kv_heads, n, d) tensor with a unit stride along d: element
/// (bi, h, j, c) is `data[start + bi * sb + h * sh + j * sj + c]`.
#[derive(Clone, Copy)]
pub struct Rows<'a> {
    pub data: &'a [f32],
    pub start: usize,
    pub sb: usize,
    pub sh: usize,
    pub sj: usize,
}

impl Rows<'_> {
    #[inline(always)]
    fn row(&self, bi: usize, h: usize, j: usize, d: usize) -> &[f32] {
        &self.data[self.start + bi * self.sb + h * self.sh + j * self.sj..][..d]
    }
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
    pub heads: usize,
    pub kv_heads: usize,
    pub d: usize,
    pub scale: f32,
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

/// Task (bi, g): the query heads of KV head g of row bi into `out` (rep x d).
#[inline(always)]
fn task_impl(s: &Step, bi: usize, g: usize, scores: &mut Vec<f32>, out: &mut [f32]) {
    let (d, n) = (s.d, s.past + 1);
    let rep = s.heads / s.kv_heads;
    let q = &s.q[(bi * s.heads + g * rep) * d..][..rep * d];
    let valid = &s.valid[bi];
    let sees = |j: usize| j == s.past || valid[j];
    scores.clear();
    scores.resize(rep * n, f32::NEG_INFINITY);
    // Each query head's largest score, kept as they are computed (the query sees itself, so
    // every head has one).
    let mut maxima = [f32::NEG_INFINITY; MAX_GROUP];
    for j in (0..n).filter(|&j| sees(j)) {
        let kj = s.k.row(bi, g, j, d);
        for (r, m) in maxima[..rep].iter_mut().enumerate() {
            let x = dot(&q[r * d..][..d], kj) * s.scale;
            scores[r * n + j] = x;
            *m = m.max(x);
        }
    }
    for (r, &max) in maxima[..rep].iter().enumerate() {
        let row = &mut scores[r * n..][..n];
        let mut sum = 0f32;
        for x in row.iter_mut() {
            *x = softmax::exp(*x - max);
            sum += *x;
        }
        let inv = 1.0 / sum;
        for x in row.iter_mut() {
            *x *= inv;
        }
    }
    out.fill(0.0);
    for j in (0..n).filter(|&j| sees(j)) {
        let vj = s.v.row(bi, g, j, d);
        for r in 0..rep {
            let p = scores[r * n + j];
            for (o, &x) in out[r * d..][..d].iter_mut().zip(vj) {
                *o = p.mul_add(x, *o);
            }
        }
    }
}

vectorized!(fn task(s: &Step, bi: usize, g: usize, scores: &mut Vec<f32>, out: &mut [f32]) = task_impl);

/// softmax(scale · q · kᵀ over the keys each row sees) · v for one query per row; returns
/// (b, heads, d). Row bi's query sits at `past` and sees itself and the valid keys before it.
pub fn decode(s: &Step) -> Vec<f32> {
    let b = s.valid.len();
    let rep = s.heads / s.kv_heads;
    let tasks = b * s.kv_heads;
    let mut out = vec![0f32; b * s.heads * s.d];
    let dst = SendPtr(out.as_mut_ptr());
    let chunk = rep * s.d;
    crate::pool::Pool::global().run(&|part, parts| {
        let mut scores = Vec::new();
        for t in (part..tasks).step_by(parts) {
            // SAFETY: task t writes only out[t * chunk..(t + 1) * chunk] (row bi's query heads
            // of KV head g are heads g·rep.. of row bi, contiguous), each task in one part,
            // and `out` outlives the job.
            let o = unsafe { std::slice::from_raw_parts_mut(dst.get().add(t * chunk), chunk) };
            task(s, t / s.kv_heads, t % s.kv_heads, &mut scores, o);
        }
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic values in [-1, 1).
    fn values(n: usize, seed: usize) -> Vec<f32> {
        (0..n)
            .map(|i| ((i * 7919 + seed * 104_729) % 2003) as f32 / 1001.5 - 1.0)
            .collect()
    }

    #[test]
    fn a_rows_attention_is_the_same_bits_alone_in_a_batch_and_on_every_instruction_set() {
        let (b, heads, kvh, d, past, cap) = (3, 9, 3, 64, 20, 40);
        let q = values(b * heads * d, 1);
        // Cache buffers with room to spare, as KvCache's views.
        let (kbuf, vbuf) = (values(b * kvh * cap * d, 2), values(b * kvh * cap * d, 3));
        let mut valid = vec![vec![true; past + 1]; b];
        valid[1][..4].fill(false);
        valid[2][7] = false;
        let rows = |data| Rows {
            data,
            start: 0,
            sb: kvh * cap * d,
            sh: cap * d,
            sj: d,
        };
        let step = Step {
            q: &q,
            k: rows(&kbuf),
            v: rows(&vbuf),
            valid: &valid,
            past,
            heads,
            kv_heads: kvh,
            d,
            scale: 0.125,
        };
        let all = decode(&step);
        // Row 1 alone: its query, its keys (the views start at its row), its flags.
        let one = |data| Rows {
            start: kvh * cap * d,
            ..rows(data)
        };
        let alone = decode(&Step {
            q: &q[heads * d..2 * heads * d],
            k: one(&kbuf),
            v: one(&vbuf),
            valid: &valid[1..2],
            ..step
        });
        let bits = |x: &[f32]| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&alone), bits(&all[heads * d..2 * heads * d]));
        // The portable code computes the same bits as the instruction set picked at run time.
        let chunk = heads / kvh * d;
        let mut scores = Vec::new();
        for t in 0..b * kvh {
            let mut o = vec![0f32; chunk];
            task_impl(&step, t / kvh, t % kvh, &mut scores, &mut o);
            assert_eq!(bits(&o), bits(&all[t * chunk..(t + 1) * chunk]), "task {t}");
        }
        // Padding keys carry no weight: changing them changes nothing.
        let mut k2 = kbuf.clone();
        let at = kvh * cap * d;
        k2[at..at + 4 * d].fill(9.0);
        let again = decode(&Step {
            k: rows(&k2),
            ..step
        });
        assert_eq!(bits(&again), bits(&all));
    }
}
