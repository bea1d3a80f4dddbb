//! Causal attention on the CPU as one op with its own backward pass, the way FlashAttention
//! does it: per block of query positions, the scores against the keys up to the block's last
//! position (never the masked half), their softmax and the product with the values, in a
//! scratch block that is dropped at once. Nothing of size t² outlives the op: the backward pass
//! recomputes each block's probabilities from q and k. Against kept probabilities (one (t, t)
//! matrix per head per layer, alive until the backward pass, and products over all t keys)
//! this halves the attention's products and keeps its memory linear in t.
//!
//! `packed` is that op as the model calls it on the CPU: every row or packed piece of a batch
//! in one op, from the fused q|k|v rows of the projections (rotated inside, from each piece's
//! start position) to the token rows the output projection reads. A branch piece's queries
//! are the last positions of its keys: its shared prefix's rotated keys and values come
//! first. Query heads that share a KV head are rows of one q (grouped-query attention without
//! repeated keys or values). Every result is summed in a fixed order whatever the thread
//! count: the forward blocks and the backward heads are independent tasks, the key and value
//! gradients of the query heads of one KV head are added in head order, and a branch's
//! gradients for its prefix in piece order. `attend` is the attention of the reference and
//! CUDA kernels (the dense or fused CUDA kernels on a GPU, plain candle ops as the reference).
//! A sliding-window layer (Gemma's local layers) gives the keys before its window
//! probability 0; the backward pass then sends them nothing, as the formula gives. Gemma 2's
//! soft-capped scores (`c·tanh(s/c)` of the scaled scores) are recomputed in the backward
//! pass with the probabilities, and their derivative `1 - (capped/c)²` taken from them.

use crate::error::Result as TrainResult;
use crate::ops::{self, Kernels, RopeTables};
use crate::packing::Piece;
use candle_core::{CpuStorage, CustomOp1, DType, Layout, Result, Shape, Tensor};
use galley_model::LlamaConfig;
use galley_model::cpu::{assume_init, gemm1, product1, rm, slice, tr, uninit, with_f32, zeroed};
use galley_model::kernels::rowwise::{softcap_row, softmax_causal};
use rayon::prelude::*;
use std::mem::MaybeUninit;
use std::sync::{Arc, Mutex};

/// Query positions per block: a block's scores are (64, keys) floats, at most 2 MB at 8,192
/// keys, and the products stay wide enough for the GEMM kernels.
const BLOCK: usize = 64;

/// The sizes of one call: q (b·kv, g·tq rows, hd), k and v (b·kv, tk, hd); query i sits at
/// key position tk - tq + i.
#[derive(Clone, Copy)]
struct Dims {
    g: usize,
    tq: usize,
    tk: usize,
    hd: usize,
    scale: f32,
    window: Option<usize>,
    /// Scaled scores become `c·tanh(s/c)` (Gemma 2).
    cap: Option<f32>,
}

impl Dims {
    /// Key position of query 0.
    fn off(&self) -> usize {
        self.tk - self.tq
    }

    /// The keys the block of queries from query `pos` sees: from the first one's window
    /// start (0 without a window) to the last one, `off + pos + n`.
    fn span(&self, pos: usize, n: usize) -> (usize, usize) {
        let at = self.off() + pos;
        let from = self.window.map_or(0, |w| (at + 1).saturating_sub(w));
        (from, at + n)
    }

    /// softmax(scale·q·kᵀ) of the block of `n` queries from query `pos` (q's rows from `row`,
    /// KV head `bk`) against the keys they see, `span(pos, n)`, into `s` (one row of
    /// `keys - from` a query; keys before a row's own window get 0). Soft-capped, the capped
    /// scores' derivatives `1 - (capped/c)²` go to `slopes` when given (1 where unseen).
    #[allow(clippy::too_many_arguments)]
    fn probs<'s>(
        &self,
        s: &'s mut [MaybeUninit<f32>],
        q: &[f32],
        k: &[f32],
        bk: usize,
        row: usize,
        pos: usize,
        n: usize,
        mut slopes: Option<&mut [f32]>,
    ) -> &'s mut [f32] {
        let (hd, at) = (self.hd, self.off() + pos);
        let (from, keys) = self.span(pos, n);
        let width = keys - from;
        let qb = &q[(bk * self.g * self.tq + row) * hd..][..n * hd];
        let kb = &k[(bk * self.tk + from) * hd..][..width * hd];
        let s = product1(
            &mut s[..n * width],
            n,
            width,
            hd,
            rm(qb, hd),
            tr(kb, hd),
            1.0,
        );
        for (i, r) in s.chunks_mut(width).enumerate() {
            let lo = self.window.map_or(0, |w| (at + i + 1).saturating_sub(w)) - from;
            let last = at + i - from;
            let scale = match self.cap {
                None => self.scale,
                Some(c) => {
                    let seen = &mut r[lo..=last];
                    seen.iter_mut().for_each(|x| *x *= self.scale);
                    softcap_row(seen, c);
                    if let Some(sl) = slopes.as_deref_mut() {
                        let sl = &mut sl[i * width..][..width];
                        sl.fill(1.0);
                        for (d, &x) in sl[lo..=last].iter_mut().zip(&r[lo..=last]) {
                            let t = x / c;
                            *d = 1.0 - t * t;
                        }
                    }
                    1.0
                }
            };
            softmax_causal(&mut r[lo..], last - lo, &[], scale);
            r[..lo].fill(0.0);
        }
        s
    }
}

/// dq, dk and dv from the output's gradient `go`: one task per query head, its blocks in
/// order, each recomputing its probabilities; the head's key and value gradients accumulate
/// in its own buffers, summed per KV head afterwards in head order.
fn backward(
    d: &Dims,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    go: &[f32],
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let (tq, tk, hd, scale) = (d.tq, d.tk, d.hd, d.scale);
    let mut dq = uninit(q.len());
    let parts: Vec<(Vec<f32>, Vec<f32>)> = dq
        .par_chunks_mut(tq * hd)
        .enumerate()
        .map(|(head, dqh)| {
            let (bk, row) = (head / d.g, (head % d.g) * tq);
            let (kb, vb) = (&k[bk * tk * hd..][..tk * hd], &v[bk * tk * hd..][..tk * hd]);
            let (mut dk, mut dv) = (zeroed(tk * hd), zeroed(tk * hd));
            let mut s = uninit(BLOCK.min(tq) * tk);
            let mut dp = uninit(BLOCK.min(tq) * tk);
            let mut slopes = match d.cap {
                Some(_) => vec![0f32; BLOCK.min(tq) * tk],
                None => Vec::new(),
            };
            for (blk, dqb) in dqh.chunks_mut(BLOCK * hd).enumerate() {
                let (pos, n) = (blk * BLOCK, dqb.len() / hd);
                // Keys from..keys (a sliding window's start on), as the forward pass saw.
                let (from, keys) = d.span(pos, n);
                let width = keys - from;
                let at = (bk * d.g * tq + row + pos) * hd;
                let (qb, gb) = (&q[at..][..n * hd], &go[at..][..n * hd]);
                let sl = d.cap.map(|_| &mut slopes[..n * width]);
                let p = d.probs(&mut s, q, k, bk, row + pos, pos, n, sl);
                let (kw, vw) = (&kb[from * hd..], &vb[from * hd..]);
                // dP = dO·vᵀ, then dS = scale·P·(dP - Σ P·dP) row by row, in place (times
                // the capped scores' slopes under a soft cap).
                let ds = product1(
                    &mut dp[..n * width],
                    n,
                    width,
                    hd,
                    rm(gb, hd),
                    tr(vw, hd),
                    1.0,
                );
                for (i, (pr, gr)) in p.chunks(width).zip(ds.chunks_mut(width)).enumerate() {
                    let seen = d.off() + pos + i + 1 - from;
                    let dot: f32 = pr[..seen].iter().zip(&gr[..seen]).map(|(a, b)| a * b).sum();
                    for (gj, pj) in gr[..seen].iter_mut().zip(&pr[..seen]) {
                        *gj = scale * pj * (*gj - dot);
                    }
                    if d.cap.is_some() {
                        let sl = &slopes[i * width..][..seen];
                        gr[..seen].iter_mut().zip(sl).for_each(|(g, s)| *g *= s);
                    }
                    gr[seen..].fill(0.0);
                }
                // dq = dS·k; dk += dSᵀ·q; dv += Pᵀ·dO, over this block's keys only.
                product1(dqb, n, hd, width, rm(ds, width), rm(kw, hd), 1.0);
                let dkb = &mut dk[from * hd..keys * hd];
                let dvb = &mut dv[from * hd..keys * hd];
                gemm1(dkb, width, hd, n, tr(ds, width), rm(qb, hd), 1.0, true);
                gemm1(dvb, width, hd, n, tr(p, width), rm(gb, hd), 1.0, true);
            }
            (dk, dv)
        })
        .collect();
    // SAFETY: each head's blocks cover its rows of dq and `product1` wrote every one.
    let dq = unsafe { assume_init(dq) };
    let (mut dk, mut dv) = (zeroed(k.len()), zeroed(v.len()));
    dk.par_chunks_mut(tk * hd)
        .zip(dv.par_chunks_mut(tk * hd))
        .enumerate()
        .for_each(|(bk, (dkh, dvh))| {
            for (pk, pv) in &parts[bk * d.g..(bk + 1) * d.g] {
                dkh.iter_mut().zip(pk).for_each(|(a, b)| *a += b);
                dvh.iter_mut().zip(pv).for_each(|(a, b)| *a += b);
            }
        });
    (dq, dk, dv)
}

/// Causal attention of (b, t, heads, head dim) projections on the reference and CUDA
/// kernels, rotated here: the output as (b·t, heads·head dim) rows for the output projection.
/// (The CPU kernels take `packed`, which runs every row or piece of a batch as one op.)
pub(crate) fn attend(
    c: &LlamaConfig,
    rope: &RopeTables,
    (qh, kh, vh): (&Tensor, &Tensor, &Tensor),
    (k, dt): (Kernels, DType),
    window: Option<usize>,
) -> TrainResult<Tensor> {
    let (b, t) = (qh.dim(0)?, qh.dim(1)?);
    let (h, kv, hd) = (c.num_heads, c.num_kv_heads, c.head_dim);
    let g = h / kv;
    let scale = c.attn_scale();
    let q = ops::rope_heads(qh, rope, k)?;
    let kk = ops::rope_heads(kh, rope, k)?;
    let v = vh.transpose(1, 2)?.contiguous()?;
    // Query heads grouped under their KV head: no repeated keys or values.
    let q = q.reshape((b, kv, g * t, hd))?;
    // Long sequences on a GPU: the fused attention, which keeps no score matrix.
    #[cfg(feature = "cuda")]
    if k == Kernels::Cuda
        && ops::flash_attention_wanted((b, h, t, hd), dt.size_in_bytes(), ops::attention_setting())
    {
        let how = crate::cuda_src::Scores::new(scale, window, c.attn_softcap)
            .map_err(crate::error::TrainError::Stopped)?;
        let o = crate::flash_cuda::attention(&q, &kk, &v, how)?;
        return Ok(o
            .reshape((b, h, t, hd))?
            .transpose(1, 2)?
            .reshape((b * t, h * hd))?);
    }
    #[cfg(not(feature = "cuda"))]
    let _ = dt;
    let p = match (k, c.attn_softcap) {
        #[cfg(feature = "cuda")]
        (Kernels::Cuda, cap) => {
            crate::ops_cuda::causal_softmax(&q.matmul(&kk.t()?)?, scale, window, cap)?
        }
        // Gemma 2: c·tanh(scaled/c), then the softmax (candle's tanh carries the gradient).
        (_, Some(cap)) => {
            let s = (q.matmul(&kk.t()?)? * scale)?;
            let s = ((s / cap)?.tanh()? * cap)?;
            ops::causal_softmax_windowed(&s, 1.0, window)?
        }
        (_, None) => ops::causal_softmax_windowed(&q.matmul(&kk.t()?)?, scale, window)?,
    };
    let o = p.matmul(&v)?;
    Ok(o.reshape((b, h, t, hd))?
        .transpose(1, 2)?
        .reshape((b * t, h * hd))?)
}

// ---------------------------------------------------------------- packed pieces, one op

/// One piece's operands as the blocked kernel reads them: rotated queries (kv, g·len, hd),
/// rotated keys and values (kv, tk, hd) — its prefix's keys first for a branch.
struct PieceBufs {
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    tk: usize,
}

/// Causal attention over the packed pieces of a batch, from the fused (tokens, q|k|v) rows
/// of the projections to the (tokens, heads·hd) rows the output projection reads: the
/// rotation, the grouping of heads, every piece's attention (a branch after its prefix's
/// keys and values) and the return to token rows happen inside, so the graph keeps neither
/// per-piece slices nor transposed copies, and the backward pass hands the projections one
/// gradient instead of a sum of zero-padded slices per piece (candle's `narrow` backward).
struct PackedAttention {
    pieces: Arc<Vec<Piece>>,
    rope: RopeTables,
    heads: (usize, usize, usize),
    scale: f32,
    window: Option<usize>,
    cap: Option<f32>,
    /// The operands kept for the backward pass (None when nothing will ask for gradients).
    kept: Option<Mutex<Vec<PieceBufs>>>,
}

impl PackedAttention {
    fn width(&self) -> usize {
        let (h, kv, hd) = self.heads;
        (h + 2 * kv) * hd
    }

    /// Token offset of each piece in the packed rows.
    fn offsets(&self) -> Vec<usize> {
        self.pieces
            .iter()
            .scan(0, |at, p| {
                let o = *at;
                *at += p.len;
                Some(o)
            })
            .collect()
    }

    /// Each piece's rotated, head-major operands, in piece order (a branch copies its
    /// prefix's keys and values, built before it).
    fn gather(&self, x: &[f32]) -> Result<Vec<PieceBufs>> {
        let (h, kv, hd) = self.heads;
        let (w, half) = (self.width(), self.rope.half);
        let mut out: Vec<PieceBufs> = Vec::with_capacity(self.pieces.len());
        for (p, off) in self.pieces.iter().zip(self.offsets()) {
            if p.start + p.len > self.rope.cos.len() / half.max(1) {
                candle_core::bail!(
                    "rope: positions {}..{} past the tables",
                    p.start,
                    p.start + p.len
                );
            }
            let (pre, ptk) = match p.after {
                Some(a) if a < out.len() => (Some(&out[a]), out[a].tk),
                Some(a) => {
                    candle_core::bail!("packed attention: piece after piece {a}, not yet built")
                }
                None => (None, 0),
            };
            let (len, tk) = (p.len, ptk + p.len);
            // Row r of a (heads, len, hd) operand: head r / len, token r % len.
            let fill = |dst: &mut [f32],
                        col: usize,
                        rows: usize,
                        rotated: bool,
                        prefix: Option<&[f32]>| {
                dst.par_chunks_mut(hd).enumerate().for_each(|(r, y)| {
                    let (head, i) = (r / rows, r % rows);
                    if i < rows - len {
                        // A branch's first rows: its prefix's, as they are.
                        let src = prefix.expect("prefix rows");
                        y.copy_from_slice(&src[(head * (rows - len) + i) * hd..][..hd]);
                        return;
                    }
                    let t = i - (rows - len);
                    let xr = &x[(off + t) * w + (col + head) * hd..][..hd];
                    match rotated {
                        true => {
                            let at = (p.start + t) * half;
                            let (c, s) =
                                (&self.rope.cos[at..][..half], &self.rope.sin[at..][..half]);
                            ops::rotate(xr, y, c, s, 1.0);
                        }
                        false => y.copy_from_slice(xr),
                    }
                });
            };
            let mut q = zeroed(h * len * hd);
            fill(&mut q, 0, len, true, None);
            let mut k = zeroed(kv * tk * hd);
            fill(&mut k, h, tk, true, pre.map(|b| &b.k[..]));
            let mut v = zeroed(kv * tk * hd);
            fill(&mut v, h + kv, tk, false, pre.map(|b| &b.v[..]));
            out.push(PieceBufs { q, k, v, tk });
        }
        Ok(out)
    }

    fn dims(&self, p: &Piece, b: &PieceBufs) -> Dims {
        let (h, kv, hd) = self.heads;
        Dims {
            g: h / kv,
            tq: p.len,
            tk: b.tk,
            hd,
            scale: self.scale,
            window: self.window,
            cap: self.cap,
        }
    }
}

/// A (heads, len, hd) head-major buffer's rows written into the (len, stride) token rows of
/// `dst` from column block `col` (rotated back by `sign` when given).
fn scatter_rows(
    src: &[f32],
    dst: &mut [f32],
    (len, stride, hd): (usize, usize, usize),
    col: usize,
    unrotate: Option<(&RopeTables, usize)>,
) {
    let heads = src.len() / (len * hd);
    dst.par_chunks_mut(stride).enumerate().for_each(|(t, row)| {
        for head in 0..heads {
            let s = &src[(head * len + t) * hd..][..hd];
            let y = &mut row[(col + head) * hd..][..hd];
            match unrotate {
                Some((rope, start)) => {
                    let (half, at) = (rope.half, (start + t) * rope.half);
                    ops::rotate(s, y, &rope.cos[at..][..half], &rope.sin[at..][..half], -1.0);
                }
                None => y.copy_from_slice(s),
            }
        }
    });
}

impl CustomOp1 for PackedAttention {
    fn name(&self) -> &'static str {
        "galley-packed-attention"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = slice(s, l)?;
        let (h, _, hd) = self.heads;
        let (n, w) = l.shape().dims2()?;
        if w != self.width() || n != self.pieces.iter().map(|p| p.len).sum::<usize>() {
            candle_core::bail!("packed attention: ({n}, {w}) rows for these pieces and heads");
        }
        let bufs = self.gather(x)?;
        let mut o = zeroed(n * h * hd);
        let offsets = self.offsets();
        // Pieces in parallel, each piece's heads and blocks in parallel within it.
        let outs: Vec<Vec<f32>> = self
            .pieces
            .par_iter()
            .zip(bufs.par_iter())
            .map(|(p, b)| {
                let d = self.dims(p, b);
                let mut oh = uninit(h * p.len * hd);
                oh.par_chunks_mut(p.len * hd)
                    .enumerate()
                    .for_each(|(head, oh)| {
                        let (bk, row) = (head / d.g, (head % d.g) * d.tq);
                        oh.par_chunks_mut(BLOCK * hd)
                            .enumerate()
                            .for_each(|(blk, ob)| {
                                let (pos, m) = (blk * BLOCK, ob.len() / hd);
                                let (from, keys) = d.span(pos, m);
                                let width = keys - from;
                                let mut sc = uninit(m * width);
                                let pr = d.probs(&mut sc, &b.q, &b.k, bk, row + pos, pos, m, None);
                                let vb = &b.v[(bk * d.tk + from) * hd..][..width * hd];
                                product1(ob, m, hd, width, rm(pr, width), rm(vb, hd), 1.0);
                            });
                    });
                // SAFETY: the blocks cover every head's rows, each written whole by product1.
                unsafe { assume_init(oh) }
            })
            .collect();
        for ((p, off), oh) in self.pieces.iter().zip(&offsets).zip(&outs) {
            let dst = &mut o[off * h * hd..][..p.len * h * hd];
            scatter_rows(oh, dst, (p.len, h * hd, hd), 0, None);
        }
        if let Some(kept) = &self.kept {
            *kept.lock().expect("attention stash") = bufs;
        }
        Ok((CpuStorage::F32(o), Shape::from((n, h * hd))))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, g: &Tensor) -> Result<Option<Tensor>> {
        let (h, kv, hd) = self.heads;
        let w = self.width();
        let bufs = match &self.kept {
            Some(k) => std::mem::take(&mut *k.lock().expect("attention stash")),
            None => Vec::new(),
        };
        if bufs.len() != self.pieces.len() {
            candle_core::bail!("galley-packed-attention: backward without its forward's operands");
        }
        let offsets = self.offsets();
        // Each piece's gradients from its output rows, head-major like its operands.
        let mut grads: Vec<(Vec<f32>, Vec<f32>, Vec<f32>)> = with_f32(g, |gs| {
            self.pieces
                .par_iter()
                .zip(bufs.par_iter())
                .zip(offsets.par_iter())
                .map(|((p, b), &off)| {
                    let len = p.len;
                    let mut go = zeroed(h * len * hd);
                    go.par_chunks_mut(hd).enumerate().for_each(|(r, y)| {
                        let (head, t) = (r / len, r % len);
                        y.copy_from_slice(&gs[(off + t) * h * hd + head * hd..][..hd]);
                    });
                    backward(&self.dims(p, b), &b.q, &b.k, &b.v, &go)
                })
                .collect()
        })?;
        // A branch's gradients for its prefix's keys and values go to the prefix, latest
        // piece first (a prefix comes before its branches), in a fixed order.
        for i in (0..self.pieces.len()).rev() {
            let Some(a) = self.pieces[i].after else {
                continue;
            };
            let (ptk, tk) = (bufs[a].tk, bufs[i].tk);
            let (head, tail) = grads.split_at_mut(i);
            let (src, dst) = (&tail[0], &mut head[a]);
            for bk in 0..kv {
                let add = |d: &mut [f32], s: &[f32]| {
                    let d = &mut d[bk * ptk * hd..][..ptk * hd];
                    d.iter_mut()
                        .zip(&s[bk * tk * hd..][..ptk * hd])
                        .for_each(|(a, b)| *a += b);
                };
                add(&mut dst.1, &src.1);
                add(&mut dst.2, &src.2);
            }
        }
        let n = offsets
            .last()
            .map_or(0, |o| o + self.pieces.last().map_or(0, |p| p.len));
        let mut dx = zeroed(n * w);
        for (((p, off), (dq, dk, dv)), b) in self.pieces.iter().zip(&offsets).zip(&grads).zip(&bufs)
        {
            let (len, tk) = (p.len, b.tk);
            let rows = &mut dx[off * w..][..len * w];
            scatter_rows(dq, rows, (len, w, hd), 0, Some((&self.rope, p.start)));
            // The piece's own keys and values: the last `len` of its tk rows per KV head.
            let own = |t: &[f32]| -> Vec<f32> {
                (0..kv)
                    .flat_map(|bk| t[(bk * tk + tk - len) * hd..][..len * hd].iter().copied())
                    .collect()
            };
            scatter_rows(&own(dk), rows, (len, w, hd), h, Some((&self.rope, p.start)));
            scatter_rows(&own(dv), rows, (len, w, hd), h + kv, None);
        }
        Ok(Some(Tensor::from_vec(dx, x.shape(), x.device())?))
    }
}

/// Causal attention of the packed `pieces` from the fused (tokens, (h + 2·kv)·hd) rows of the
/// q, k and v projections (unrotated): each piece attends to itself from its start position,
/// a branch after its prefix's keys too, scores scaled by `scale` (then soft-capped at `cap`
/// where given), over the last `window` positions where given. Returns (tokens, h·hd) rows.
/// CPU kernels only. `heads` is (query heads, KV heads, head dim).
pub fn packed(
    qkv: &Tensor,
    pieces: &[Piece],
    rope: &RopeTables,
    (h, kv, hd): (usize, usize, usize),
    (scale, window, cap): (f64, Option<usize>, Option<f64>),
) -> Result<Tensor> {
    if kv == 0 || !h.is_multiple_of(kv) {
        candle_core::bail!("packed attention: {h} heads over {kv} KV heads");
    }
    let op = PackedAttention {
        pieces: Arc::new(pieces.to_vec()),
        rope: rope.clone(),
        heads: (h, kv, hd),
        scale: scale as f32,
        window,
        cap: cap.map(|c| c as f32),
        kept: qkv.track_op().then(|| Mutex::new(Vec::new())),
    };
    qkv.contiguous()?.apply_op1(op)
}
