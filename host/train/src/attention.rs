//! Causal attention on the CPU as one op with its own backward pass, the way FlashAttention
//! does it: per block of query positions, the scores against the keys up to the block's last
//! position (never the masked half), their softmax and the product with the values, in a
//! scratch block that is dropped at once. Nothing of size t² outlives the op: the backward pass
//! recomputes each block's probabilities from q and k. Against kept probabilities (one (t, t)
//! matrix per head per layer, alive until the backward pass, and products over all t keys)
//! this halves the attention's products and keeps its memory linear in t.
//!
//! `attend` is the model's attention on every device: the rotation, then this op on the CPU,
//! the dense or fused CUDA kernels on a GPU, plain candle ops as the reference. The queries
//! may be the last positions of the keys (a branch after a shared prefix: its rows see the
//! prefix's keys and their own). Query heads that share a KV head are rows of one q
//! (grouped-query attention without repeated keys or values). Every result is summed in a
//! fixed order whatever the thread count: the forward blocks and the backward heads are
//! independent tasks, and the key and value gradients of the query heads of one KV head are
//! added in head order.

use crate::error::{Result as TrainResult, TrainError};
use crate::ops::{self, Kernels, RopeTables};
use candle_core::{CpuStorage, CustomOp3, DType, Layout, Result, Shape, Tensor};
use galley_model::LlamaConfig;
use galley_model::cpu::{assume_init, gemm1, product1, rm, slice, tr, uninit, with_f32, zeroed};
use galley_model::kernels::rowwise::softmax_causal;
use rayon::prelude::*;
use std::mem::MaybeUninit;

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
}

impl Dims {
    /// Key position of query 0.
    fn off(&self) -> usize {
        self.tk - self.tq
    }

    /// softmax(scale·q·kᵀ) of the block of `n` queries from query `pos` (q's rows from `row`,
    /// KV head `bk`) against the keys they see, 0..off + pos + n, into `s`.
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
    ) -> &'s mut [f32] {
        let (hd, at) = (self.hd, self.off() + pos);
        let keys = at + n;
        let qb = &q[(bk * self.g * self.tq + row) * hd..][..n * hd];
        let kb = &k[bk * self.tk * hd..][..keys * hd];
        let s = product1(&mut s[..n * keys], n, keys, hd, rm(qb, hd), tr(kb, hd), 1.0);
        for (i, r) in s.chunks_mut(keys).enumerate() {
            softmax_causal(r, at + i, &[], self.scale);
        }
        s
    }
}

struct CausalAttention {
    scale: f32,
    /// Query heads per KV head.
    g: usize,
}

impl CausalAttention {
    fn dims(&self, q: (usize, usize), tk: usize) -> Dims {
        let (rows, hd) = q;
        Dims {
            g: self.g,
            tq: rows / self.g,
            tk,
            hd,
            scale: self.scale,
        }
    }
}

impl CustomOp3 for CausalAttention {
    fn name(&self) -> &'static str {
        "galley-causal-attention"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (q, k, v) = (slice(s1, l1)?, slice(s2, l2)?, slice(s3, l3)?);
        let (b, kv, r, hd) = l1.shape().dims4()?;
        let d = self.dims((r, hd), l2.shape().dims4()?.2);
        let (tq, tk) = (d.tq, d.tk);
        let mut o = uninit(b * kv * r * hd);
        // One task per (query head, block of queries); a head's rows are tq·hd of o.
        o.par_chunks_mut(tq * hd)
            .enumerate()
            .for_each(|(head, oh)| {
                let (bk, row) = (head / d.g, (head % d.g) * tq);
                oh.par_chunks_mut(BLOCK * hd)
                    .enumerate()
                    .for_each(|(blk, ob)| {
                        let (pos, n) = (blk * BLOCK, ob.len() / hd);
                        let keys = d.off() + pos + n;
                        let mut s = uninit(n * keys);
                        let p = d.probs(&mut s, q, k, bk, row + pos, pos, n);
                        let vb = &v[bk * tk * hd..][..keys * hd];
                        product1(ob, n, hd, keys, rm(p, keys), rm(vb, hd), 1.0);
                    });
            });
        // SAFETY: the blocks cover o, and `product1` wrote each whole.
        let o = unsafe { assume_init(o) };
        Ok((CpuStorage::F32(o), l1.shape().clone()))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        _o: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (_, _, r, hd) = q.dims4()?;
        let d = self.dims((r, hd), k.dim(2)?);
        let (dq, dk, dv) = with_f32(q, |qs| {
            with_f32(k, |ks| {
                with_f32(v, |vs| with_f32(g, |gs| backward(&d, qs, ks, vs, gs)))
            })
        })????;
        Ok((
            Some(Tensor::from_vec(dq, q.shape(), q.device())?),
            Some(Tensor::from_vec(dk, k.shape(), k.device())?),
            Some(Tensor::from_vec(dv, v.shape(), v.device())?),
        ))
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
            for (blk, dqb) in dqh.chunks_mut(BLOCK * hd).enumerate() {
                let (pos, n) = (blk * BLOCK, dqb.len() / hd);
                let keys = d.off() + pos + n;
                let at = (bk * d.g * tq + row + pos) * hd;
                let (qb, gb) = (&q[at..][..n * hd], &go[at..][..n * hd]);
                let p = d.probs(&mut s, q, k, bk, row + pos, pos, n);
                // dP = dO·vᵀ, then dS = scale·P·(dP - Σ P·dP) row by row, in place.
                let ds = product1(
                    &mut dp[..n * keys],
                    n,
                    keys,
                    hd,
                    rm(gb, hd),
                    tr(vb, hd),
                    1.0,
                );
                for (i, (pr, gr)) in p.chunks(keys).zip(ds.chunks_mut(keys)).enumerate() {
                    let seen = d.off() + pos + i + 1;
                    let dot: f32 = pr[..seen].iter().zip(&gr[..seen]).map(|(a, b)| a * b).sum();
                    for (gj, pj) in gr[..seen].iter_mut().zip(&pr[..seen]) {
                        *gj = scale * pj * (*gj - dot);
                    }
                    gr[seen..].fill(0.0);
                }
                // dq = dS·k; dk += dSᵀ·q; dv += Pᵀ·dO, over this block's keys only.
                product1(dqb, n, hd, keys, rm(ds, keys), rm(kb, hd), 1.0);
                let (dkb, dvb) = (&mut dk[..keys * hd], &mut dv[..keys * hd]);
                gemm1(dkb, keys, hd, n, tr(ds, keys), rm(qb, hd), 1.0, true);
                gemm1(dvb, keys, hd, n, tr(p, keys), rm(gb, hd), 1.0, true);
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

/// softmax(scale·q·kᵀ, causal)·v for q (b, kv, g·tq, hd) (the g query heads of each KV head
/// stacked as rows: row r is head r / tq, query r % tq) and k, v (b, kv, tk, hd) with
/// tk ≥ tq: query i sits at key position tk - tq + i and sees the keys up to it. The output
/// is laid out as q.
pub fn causal_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    g: usize,
    scale: f64,
) -> Result<Tensor> {
    let (rows, tk) = (q.dim(2)?, k.dim(2)?);
    if g == 0 || !rows.is_multiple_of(g) || rows / g > tk {
        candle_core::bail!("causal attention: {rows} query rows, {g} a KV head, {tk} keys");
    }
    q.contiguous()?.apply_op3(
        &k.contiguous()?,
        &v.contiguous()?,
        CausalAttention {
            scale: scale as f32,
            g,
        },
    )
}

/// Causal attention of (b, t, heads, head dim) projections at positions `start`..,
/// rotated here, after the rotated keys and values of a `prefix` when one is given (a
/// branch; the CPU kernels only): the output as (b·t, heads·head dim) rows for the output
/// projection, and this part's own rotated keys and values for branches that follow it.
pub(crate) fn attend(
    c: &LlamaConfig,
    rope: &RopeTables,
    (qh, kh, vh): (&Tensor, &Tensor, &Tensor),
    start: usize,
    prefix: Option<&(Tensor, Tensor)>,
    k: Kernels,
    dt: DType,
) -> TrainResult<(Tensor, (Tensor, Tensor))> {
    let (b, t) = (qh.dim(0)?, qh.dim(1)?);
    let (h, kv, hd) = (c.num_heads, c.num_kv_heads, c.head_dim);
    let g = h / kv;
    let scale = 1.0 / (hd as f64).sqrt();
    let q = ops::rope_heads_from(qh, rope, k, start)?;
    let kk = ops::rope_heads_from(kh, rope, k, start)?;
    let v = vh.transpose(1, 2)?.contiguous()?;
    // Query heads grouped under their KV head: no repeated keys or values.
    let q = q.reshape((b, kv, g * t, hd))?;
    if prefix.is_some() && k != Kernels::Fused {
        return Err(TrainError::Stopped(
            "a branch after a shared prefix runs on the CPU kernels only".into(),
        ));
    }
    // Long sequences on a GPU: the fused attention, which keeps no score matrix.
    #[cfg(feature = "cuda")]
    let fused = match k == Kernels::Cuda
        && ops::flash_attention_wanted((b, h, t, hd), dt.size_in_bytes(), ops::attention_setting())
    {
        true => Some(crate::flash_cuda::attention(&q, &kk, &v, scale)?),
        false => None,
    };
    #[cfg(not(feature = "cuda"))]
    let fused: Option<Tensor> = {
        let _ = dt;
        None
    };
    let o = match (fused, prefix) {
        (Some(o), _) => o,
        (None, Some((pk, pv))) => {
            let keys = Tensor::cat(&[pk, &kk], 2)?;
            let values = Tensor::cat(&[pv, &v], 2)?;
            causal_attention(&q, &keys, &values, g, scale)?
        }
        // On the CPU, blocks of queries against the unmasked keys only, nothing of t² kept.
        (None, None) if k == Kernels::Fused => causal_attention(&q, &kk, &v, g, scale)?,
        (None, None) => {
            let p = match k {
                Kernels::Fused | Kernels::Reference => {
                    ops::causal_softmax_reference(&q.matmul(&kk.t()?)?, scale)?
                }
                #[cfg(feature = "cuda")]
                Kernels::Cuda => crate::ops_cuda::causal_softmax(&q.matmul(&kk.t()?)?, scale)?,
                #[cfg(not(feature = "cuda"))]
                Kernels::Cuda => ops::causal_softmax_reference(&q.matmul(&kk.t()?)?, scale)?,
            };
            p.matmul(&v)?
        }
    };
    let o = o
        .reshape((b, h, t, hd))?
        .transpose(1, 2)?
        .reshape((b * t, h * hd))?;
    Ok((o, (kk, v)))
}
