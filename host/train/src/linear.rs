//! The projection op training spends most of its time in: y = x·Wᵀ (+ s·(x·Aᵀ)·Bᵀ for LoRA),
//! one custom op with its own backward, for one projection or for several of one input
//! (q|k|v, gate|up) at once. Weight gradients (W when trained, A and B for LoRA) are
//! accumulated by GEMM straight into the parameter's gradient buffer, which the optimizer
//! reads: no gradient tensor is allocated, zero-filled, transposed or added, and gradient
//! accumulation across micro-batches costs nothing. A frozen W gets no gradient at all, and
//! when x needs none either (the first layer under LoRA) its product is skipped too. The LM
//! head fused with the cross-entropy and the embedding lookup are here too.

use crate::ops::Frozen;
use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor, bail};
use galley_model::cpu::{
    assume_init, gemm, gemm_block, product, product_by_columns_into, rm, slice, tr, uninit, view,
    with_f32, zeroed,
};
use galley_model::kernels::rowwise::softcap_row;
use rayon::prelude::*;
use std::sync::{Arc, Mutex};

pub use crate::grad::GradBuf;

/// LoRA beside a frozen weight.
#[derive(Clone)]
pub struct LoraW {
    pub grad_a: GradBuf,
    pub grad_b: GradBuf,
    pub scale: f32,
    /// Inverted-dropout mask on the adapter's input (None: no dropout).
    pub mask: Option<Arc<Vec<f32>>>,
}

/// x (n, i) times wᵀ for w (o, i): the forward product of every projection.
fn project(x: &[f32], w: &[f32], i: usize, o: usize) -> Vec<f32> {
    let n = x.len() / i;
    // Shapes: x is (n, i), w is (o, i) so wᵀ is (i, o); y is (n, o). In blocks of output
    // columns: gemm's own split packs all of w on one thread (see `product_by_columns`).
    galley_model::cpu::product_by_columns(n, o, i, rm(x, i), tr(w, i), 1.0)
}

fn shape_out(l: &Layout, o: usize) -> Shape {
    let mut dims = l.shape().dims().to_vec();
    *dims.last_mut().expect("rank >= 1") = o;
    Shape::from(dims)
}

// ------------------------------------------------------------------ projections (one, or several of one input)

/// A projection's weight in a group: trained (its gradient into `grad`) or frozen.
#[derive(Clone)]
pub enum GroupW {
    Trained { w: Tensor, grad: GradBuf },
    Frozen(Frozen),
}

/// One projection of a group: its weight and, beside a frozen one, a LoRA adapter (A, B).
#[derive(Clone)]
pub struct GroupPart {
    pub w: GroupW,
    pub lora: Option<(Tensor, Tensor, LoraW)>,
}

impl GroupPart {
    fn dims(&self) -> Result<(usize, usize)> {
        match &self.w {
            GroupW::Trained { w, .. } => w.dims2(),
            GroupW::Frozen(f) => Ok(f.dims()),
        }
    }
}

/// Projections of one input as one op — a single projection is a group of one; q|k|v and
/// gate|up are groups of three and two: one product against the weights stacked (or part
/// by part into column blocks), into one (n, Σout) output whose column blocks are the parts'
/// outputs; each adapter's low-rank product added into its block. The backward pass forms x's
/// gradient with one product over all the parts' output gradients (not one per part and
/// candle's sum of them), and every weight gradient straight into its buffer.
struct Group {
    parts: Vec<GroupPart>,
    /// The frozen weights already stacked (out·in floats, the parts in order), when the
    /// model keeps them so (`Layer`): no copy per call.
    stacked: Option<Tensor>,
    /// Each adapted part's x·Aᵀ (n, r) from the forward pass, for B's gradient.
    kept: Mutex<Vec<Option<Vec<f32>>>>,
}

impl Group {
    /// (Σout, in) and each part's first output column.
    fn layout(&self) -> Result<(usize, usize, Vec<usize>)> {
        let (mut out, mut inp, mut cols) = (0, None, Vec::with_capacity(self.parts.len()));
        for p in &self.parts {
            let (o, i) = p.dims()?;
            if inp.is_some_and(|x| x != i) {
                bail!("galley-linear-group: parts of different input sizes");
            }
            inp = Some(i);
            cols.push(out);
            out += o;
        }
        Ok((out, inp.unwrap_or(0), cols))
    }

    /// Runs `f` on each part's weight (out, in) with its first output column.
    fn each_weight(&self, mut f: impl FnMut(usize, &[f32])) -> Result<()> {
        let (_, _, cols) = self.layout()?;
        for (p, &c) in self.parts.iter().zip(&cols) {
            match &p.w {
                GroupW::Trained { w, .. } => with_f32(w, |w| f(c, w))?,
                GroupW::Frozen(fw) => fw.with_dense(|w| f(c, w))?,
            }
        }
        Ok(())
    }
}

impl CustomOp2 for Group {
    fn name(&self) -> &'static str {
        "galley-linear-group"
    }
    fn cpu_fwd(
        &self,
        s: &CpuStorage,
        l: &Layout,
        _anchor: &CpuStorage,
        _anchor_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = slice(s, l)?;
        let (out, i, cols) = self.layout()?;
        let width = l.shape().dims().last().copied().unwrap_or(0);
        if width != i {
            bail!("galley-linear-group: input rows of {width} against weights of {i} columns");
        }
        let n = x.len() / i.max(1);
        // One product against the kept stack; otherwise each weight's product into its
        // block of columns (a stack copied per call cost more than it saved).
        let mut y = match &self.stacked {
            Some(t) => with_f32(t, |w| project(x, w, i, out))?,
            None => {
                let mut y = uninit(n * out);
                self.each_weight(|c, w| {
                    let o = w.len() / i.max(1);
                    // Shapes: x (n, i)·wᵀ (i, o) -> columns c..c + o of y (n, out).
                    product_by_columns_into(&mut y[c..], out, (n, o, i), rm(x, i), tr(w, i), 1.0)
                })?;
                // SAFETY: the parts' column blocks cover all `out` columns of every row.
                unsafe { assume_init(y) }
            }
        };
        let mut kept = Vec::with_capacity(self.parts.len());
        for (p, &c) in self.parts.iter().zip(&cols) {
            let Some((a, b, lw)) = &p.lora else {
                kept.push(None);
                continue;
            };
            let o = p.dims()?.0;
            let u = with_f32(a, |a| {
                let r = a.len() / i;
                let mut tmp = Vec::new();
                let xd = xd(x, &lw.mask, &mut tmp);
                // Shapes: xd (n, i)·Aᵀ (i, r) -> u (n, r).
                product(n, r, i, rm(xd, i), tr(a, i), 1.0)
            })?;
            with_f32(b, |b| {
                let r = b.len() / o;
                // y[:, c..c + o] += s·u (n, r)·Bᵀ (r, o)
                gemm_block(
                    &mut y[c..],
                    out,
                    (n, o, r),
                    rm(&u, r),
                    tr(b, r),
                    lw.scale,
                    true,
                )
            })?;
            kept.push(Some(u));
        }
        *self.kept.lock().expect("group stash") = kept;
        Ok((CpuStorage::F32(y), shape_out(l, out)))
    }
    fn bwd(
        &self,
        x: &Tensor,
        _anchor: &Tensor,
        _res: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (out, i, cols) = self.layout()?;
        let kept = std::mem::take(&mut *self.kept.lock().expect("group stash"));
        if kept.len() != self.parts.len() {
            bail!("galley-linear-group: backward ran twice");
        }
        let need_dx = x.track_op();
        let dx = with_f32(x, |xs| {
            with_f32(g, |gs| -> Result<Option<Vec<f32>>> {
                let n = gs.len() / out;
                // Shapes: g (n, Σout)·W (Σout, i) -> dx (n, i): every part at once, or
                // part by part into one buffer.
                let mut dx = match (need_dx, &self.stacked) {
                    (false, _) => None,
                    (true, Some(t)) => Some(with_f32(t, |w| {
                        product(n, i, out, rm(gs, out), rm(w, i), 1.0)
                    })?),
                    (true, None) => {
                        let mut dx = zeroed(n * i);
                        self.each_weight(|c, w| {
                            let o = w.len() / i.max(1);
                            let gp = view(&gs[c..], out, 1);
                            gemm(&mut dx, n, i, o, gp, rm(w, i), 1.0, true)
                        })?;
                        Some(dx)
                    }
                };
                for ((p, &c), u) in self.parts.iter().zip(&cols).zip(&kept) {
                    let o = p.dims()?.0;
                    // This part's gradient: columns c..c + o of g, and its transpose.
                    let (gp, gpt) = (view(&gs[c..], out, 1), view(&gs[c..], 1, out));
                    if let GroupW::Trained { grad, .. } = &p.w {
                        // dW += gᵀ (o, n)·x (n, i)
                        grad.write(|dw| gemm(dw, o, i, n, gpt, rm(xs, i), 1.0, true));
                    }
                    let (Some((a, b, lw)), Some(u)) = (&p.lora, u) else {
                        continue;
                    };
                    with_f32(a, |a| {
                        with_f32(b, |b| {
                            let r = a.len() / i;
                            let s = lw.scale;
                            let mut tmp = Vec::new();
                            let xd = xd(xs, &lw.mask, &mut tmp);
                            // gb = g·B (n, r)
                            let gb = product(n, r, o, gp, rm(b, r), 1.0);
                            // dA += s·gbᵀ (r, n)·xd (n, i); dB += s·gᵀ (o, n)·u (n, r)
                            lw.grad_a
                                .write(|da| gemm(da, r, i, n, tr(&gb, r), rm(xd, i), s, true));
                            lw.grad_b
                                .write(|db| gemm(db, o, r, n, gpt, rm(u, r), s, true));
                            let Some(dx) = dx.as_mut() else { return };
                            match &lw.mask {
                                // dx += s·gb·A
                                None => gemm(dx, n, i, r, rm(&gb, r), rm(a, i), s, true),
                                Some(m) => {
                                    let t = product(n, i, r, rm(&gb, r), rm(a, i), s);
                                    for ((d, t), m) in dx.iter_mut().zip(&t).zip(m.iter()) {
                                        *d += t * m;
                                    }
                                }
                            }
                        })
                    })??;
                }
                Ok(dx)
            })
        })???;
        let dx = dx
            .map(|d| Tensor::from_vec(d, x.shape(), x.device()))
            .transpose()?;
        Ok((dx, None))
    }
}

/// The adapter's input: x, or x times the dropout mask.
fn xd<'a>(x: &'a [f32], mask: &Option<Arc<Vec<f32>>>, buf: &'a mut Vec<f32>) -> &'a [f32] {
    match mask {
        None => x,
        Some(m) => {
            *buf = x.iter().zip(m.iter()).map(|(a, b)| a * b).collect();
            buf
        }
    }
}

/// The projections `parts` of x as one (n, Σout) product (see `Group`); `stacked` holds the
/// frozen parts' weights already stacked, when the model keeps them so.
pub fn group(x: &Tensor, parts: Vec<GroupPart>, stacked: Option<Tensor>) -> Result<Tensor> {
    // The op's second input is one of its trained tensors (gradient: none; theirs go to
    // their buffers): candle records the op for the backward pass only when an input is
    // tracked, and under LoRA the first layer's x is not.
    let anchor = parts
        .iter()
        .find_map(|p| match (&p.w, &p.lora) {
            (GroupW::Trained { w, .. }, _) => Some(w.clone()),
            (_, Some((a, _, _))) => Some(a.clone()),
            _ => None,
        })
        .unwrap_or_else(|| x.clone());
    x.contiguous()?.apply_op2(
        &anchor,
        Group {
            parts,
            stacked,
            kept: Mutex::new(Vec::new()),
        },
    )
}

/// x (..., in) times the frozen w (out, in) transposed: only x gets a gradient (none is
/// computed when x needs none).
pub fn frozen(x: &Tensor, w: &Frozen) -> Result<Tensor> {
    let part = GroupPart {
        w: GroupW::Frozen(w.clone()),
        lora: None,
    };
    group(x, vec![part], None)
}

// ------------------------------------------------------------------ LM head + cross-entropy

/// The LM head's weight for `head_loss`: trained (gradient into its buffer) or frozen.
#[derive(Clone)]
pub enum HeadW {
    Trained(GradBuf),
    Frozen,
}

/// What the forward pass keeps for the backward pass: the scored rows' logits (turned into
/// their gradient in place, so one (rows, vocab) buffer serves both passes), their
/// log-sum-exps, and which rows of the input they are with those rows packed (None: every
/// row, the input itself).
struct Kept {
    logits: Vec<f32>,
    lse: Vec<f32>,
    rows: Option<(Vec<usize>, Vec<f32>)>,
}

struct HeadLoss {
    targets: Arc<Vec<u32>>,
    w: HeadW,
    /// Logits are x·Eᵀ times this (1 / temperature for GRPO's sampled distribution).
    scale: f32,
    /// Gemma 2: the logits are `c·tanh(x·Eᵀ/c)` before the scale.
    cap: Option<f32>,
    stash: Mutex<Option<Kept>>,
}

/// Rows `rows` of the (n, d) matrix `x`, packed.
fn gather_rows(x: &[f32], d: usize, rows: &[usize]) -> Vec<f32> {
    let mut out = Vec::with_capacity(rows.len() * d);
    for &r in rows {
        out.extend_from_slice(&x[r * d..][..d]);
    }
    out
}

impl CustomOp2 for HeadLoss {
    fn name(&self) -> &'static str {
        "galley-head-loss"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, e) = (slice(s1, l1)?, slice(s2, l2)?);
        let (v, d) = l2.shape().dims2()?;
        let n = x.len() / d;
        // Only rows with a target are multiplied by the head: prompt tokens of a completion
        // loss (SFT's completion-only loss, DPO, GRPO) and padding cost nothing here. Each
        // such row was a vocabulary's products and exponentials twice (forward, backward).
        let scored: Vec<usize> = (0..n)
            .filter(|&r| self.targets[r] != crate::ops::IGNORE)
            .collect();
        let rows = (scored.len() < n).then(|| {
            let packed = gather_rows(x, d, &scored);
            (scored, packed)
        });
        let xk = rows.as_ref().map_or(x, |r| &r.1[..]);
        let k = xk.len() / d;
        let targets: Vec<u32> = match &rows {
            Some((r, _)) => r.iter().map(|&i| self.targets[i]).collect(),
            None => self.targets.to_vec(),
        };
        // Shapes: x (k, d), eᵀ (d, v) -> logits (k, v).
        let logits = match self.cap {
            None => product(k, v, d, rm(xk, d), tr(e, d), self.scale),
            Some(c) => {
                let mut z = product(k, v, d, rm(xk, d), tr(e, d), 1.0);
                z.par_chunks_mut(v).for_each(|row| {
                    softcap_row(row, c);
                    row.iter_mut().for_each(|y| *y *= self.scale);
                });
                z
            }
        };
        let (lse, loss_k) = crate::ops::nll_rows(&logits, v, &targets);
        let loss = match &rows {
            None => loss_k,
            Some((r, _)) => {
                let mut loss = zeroed(n);
                for (&i, l) in r.iter().zip(loss_k) {
                    loss[i] = l;
                }
                loss
            }
        };
        *self.stash.lock().expect("head stash") = Some(Kept { logits, lse, rows });
        Ok((CpuStorage::F32(loss), Shape::from(n)))
    }
    fn bwd(
        &self,
        x: &Tensor,
        e: &Tensor,
        _res: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        use rayon::prelude::*;
        let (v, d) = e.dims2()?;
        let Some(Kept {
            logits: mut dl,
            lse,
            rows,
        }) = self.stash.lock().expect("head stash").take()
        else {
            bail!("galley-head-loss: backward ran twice")
        };
        let gs = g.to_vec1::<f32>()?;
        let n = gs.len();
        let at = |r: usize| rows.as_ref().map_or(r, |rows| rows.0[r]);
        dl.par_chunks_mut(v).enumerate().for_each(|(r, row)| {
            let i = at(r);
            // Under a cap, each logit's slope 1 - tanh², read before the row becomes its
            // gradient (tanh = logit / (scale·c)); the scale is the products' below.
            let slopes: Option<Vec<f32>> = self.cap.map(|c| {
                let sc = self.scale * c;
                row.iter().map(|&y| 1.0 - (y / sc) * (y / sc)).collect()
            });
            crate::ops::nll_grad_row(row, self.targets[i], gs[i], lse[r]);
            if let Some(sl) = slopes {
                row.iter_mut().zip(sl).for_each(|(g, s)| *g *= s);
            }
        });
        let k = dl.len() / v;
        let dx = with_f32(x, |xs| {
            with_f32(e, |es| {
                let xk = rows.as_ref().map_or(xs, |r| &r.1[..]);
                if let HeadW::Trained(buf) = &self.w
                    && k > 0
                {
                    buf.write(|de| {
                        // Shapes: dlᵀ (v, k)·x (k, d) -> de (v, d).
                        gemm(de, v, d, k, tr(&dl, v), rm(xk, d), self.scale, true)
                    });
                }
                if !x.track_op() {
                    return None;
                }
                // Shapes: dl (k, v)·e (v, d) -> dx (k, d), then into the scored rows.
                let dk = product(k, d, v, rm(&dl, v), rm(es, d), self.scale);
                Some(match &rows {
                    None => dk,
                    Some((r, _)) => {
                        let mut dx = zeroed(n * d);
                        for (&i, row) in r.iter().zip(dk.chunks(d)) {
                            dx[i * d..][..d].copy_from_slice(row);
                        }
                        dx
                    }
                })
            })
        })??;
        Ok((
            dx.map(|d| Tensor::from_vec(d, x.shape(), x.device()))
                .transpose()?,
            None,
        ))
    }
}

/// Per-row cross-entropy of `targets` under the logits x·Eᵀ, without a logits tensor in the
/// graph: the forward pass's logits buffer becomes the backward pass's gradient in place.
/// The logits are soft-capped at `cap` where given (Gemma 2), then scaled by `scale` (the
/// chain rule carries both into the gradients).
pub fn head_loss(
    x: &Tensor,
    e: &Tensor,
    targets: &[u32],
    w: HeadW,
    (scale, cap): (f32, Option<f32>),
) -> Result<Tensor> {
    x.contiguous()?.apply_op2(
        e,
        HeadLoss {
            targets: Arc::new(targets.to_vec()),
            w,
            scale,
            cap,
            stash: Mutex::new(None),
        },
    )
}

// ------------------------------------------------------------------ embedding lookup

struct Embed {
    ids: Arc<Vec<u32>>,
    grad: GradBuf,
}

impl CustomOp1 for Embed {
    fn name(&self) -> &'static str {
        "galley-embedding"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let e = slice(s, l)?;
        let (v, d) = l.shape().dims2()?;
        let mut y = zeroed(self.ids.len() * d);
        for (row, &id) in y.chunks_mut(d).zip(self.ids.iter()) {
            if id as usize >= v {
                bail!("token id {id} is outside the vocabulary of {v}");
            }
            row.copy_from_slice(&e[id as usize * d..][..d]);
        }
        Ok((CpuStorage::F32(y), Shape::from((self.ids.len(), d))))
    }
    fn bwd(&self, e: &Tensor, _res: &Tensor, g: &Tensor) -> Result<Option<Tensor>> {
        let d = e.dim(1)?;
        with_f32(g, |gs| {
            self.grad.write(|de| {
                // Rows in order: the same sums on every run.
                for (row, &id) in gs.chunks(d).zip(self.ids.iter()) {
                    for (a, b) in de[id as usize * d..][..d].iter_mut().zip(row) {
                        *a += b;
                    }
                }
            })
        })?;
        Ok(None)
    }
}

/// Rows `ids` of the trained embedding `e`; its gradient is scattered straight into `grad`
/// (no vocabulary-sized zero tensor, index-add and add, which candle's backward would make).
pub fn embed(e: &Tensor, ids: &[u32], grad: &GradBuf) -> Result<Tensor> {
    e.apply_op1(Embed {
        ids: Arc::new(ids.to_vec()),
        grad: grad.clone(),
    })
}
