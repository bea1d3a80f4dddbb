//! The KV cache a batch of sequences carries between passes (`Cache`): each layer's keys and
//! values, and per row which cached slots are real tokens (left padding is not). It owns the
//! ways a cache is reshaped between passes: rows kept, repeated or dropped (finished
//! sequences, GRPO's groups), caches stacked into one batch (continuous batching), one row's
//! positions copied out (the prompt cache, a rollout's next turn).
//!
//! A sliding layer (Gemma's, which sees the last `window` tokens) keeps only the slots a
//! later query can still see: after each pass `trim_sliding` drops the older ones, as
//! llama.cpp's SWA cache does, so its keys and values stay under about twice the window
//! instead of growing with the sequence (Gemma 3 has five sliding layers in six). Every
//! layer holds the *last* slots of the cache, so the first one it holds is the cache's
//! length less its own: nothing else is recorded, and every reshaping below keeps it true.

use crate::kv::Kv;
use candle_core::{DType, Tensor};

/// What a batch of sequences has seen so far: cached keys/values per layer and, per row,
/// which cached positions are real tokens (left padding is not).
#[derive(Clone, Default)]
pub struct Cache {
    pub(crate) layers: Vec<Kv>,
    /// `valid[row][pos]`
    pub(crate) valid: Vec<Vec<bool>>,
    /// The keys' and values' dtype on the CPU (`None`: the model's
    /// [`crate::Llama::kv_dtype`]); a GPU keeps them in the activations' dtype.
    pub(crate) dtype: Option<DType>,
    /// The model's sliding window (0: none): what a trimmed sliding layer must still hold.
    pub(crate) window: usize,
    /// Real tokens a trimmed sliding layer holds beyond what the window needs: a speculative
    /// step's drafted tokens, which it may forget again ([`Cache::forget`]).
    pub(crate) spare: usize,
}

impl Cache {
    pub fn len(&self) -> usize {
        self.valid.first().map_or(0, Vec::len)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Keeps, repeats or drops rows: row i afterwards is row `rows[i]` now. A group of
    /// sequences that share a prompt (GRPO's samples) prefills it once and copies its keys and
    /// values; finished sequences leave the batch.
    pub fn select_rows(&mut self, rows: &[usize]) -> candle_core::Result<()> {
        let Some(dev) = self
            .layers
            .first()
            .and_then(|l| l.k().ok().flatten())
            .map(|t| t.device().clone())
        else {
            self.valid = rows.iter().map(|&r| self.valid[r].clone()).collect();
            return Ok(());
        };
        let ids: Vec<u32> = rows.iter().map(|&r| r as u32).collect();
        let idx = Tensor::from_vec(ids, rows.len(), &dev)?;
        for kv in &mut self.layers {
            let (Some(k), Some(v)) = (kv.k()?, kv.v()?) else {
                continue;
            };
            // Room for 64 more positions (it grows by as much again past that): zeroing the
            // old capacity every time a row finishes would cost more than the copy.
            let mut grown = Kv::new(k.dim(2)? + 64);
            grown.append(
                &k.contiguous()?.index_select(&idx, 0)?,
                &v.contiguous()?.index_select(&idx, 0)?,
            )?;
            *kv = grown;
        }
        self.valid = rows.iter().map(|&r| self.valid[r].clone()).collect();
        Ok(())
    }

    /// Appends `other`'s rows after this cache's: the shorter side is left-padded with
    /// positions marked not valid (attention skips them, positions count valid ones only), so
    /// a sequence prefilled on its own joins a batch that is already decoding — continuous
    /// batching.
    pub fn join(&mut self, other: Cache) -> candle_core::Result<()> {
        // A clone shares the tensors (no copy), and a failed join leaves the batch as it was.
        *self = Cache::stack(vec![self.clone(), other])?;
        Ok(())
    }

    /// The rows of every part, in order, as one cache: each part left-padded to the longest as
    /// in `join`, all copied once (joining n parts one by one would copy the first n times).
    pub fn stack(parts: Vec<Cache>) -> candle_core::Result<Cache> {
        let mut parts: Vec<Cache> = parts.into_iter().filter(|c| !c.valid.is_empty()).collect();
        if parts.len() <= 1 {
            return Ok(parts.pop().unwrap_or_default());
        }
        let total = parts.iter().map(Cache::len).max().unwrap_or(0);
        let layers = parts[0].layers.len();
        let (parts_dtype, parts_window, spare) = (parts[0].dtype, parts[0].window, parts[0].spare);
        if parts.iter().any(|p| p.layers.len() != layers) {
            candle_core::bail!("joining caches of models with different layer counts");
        }
        let mut stacked = Vec::with_capacity(layers);
        for layer in 0..layers {
            // A part that has seen nothing yet (a sequence with nothing to resume from) is
            // all padding: its shape is any other part's.
            let Some(like) = parts
                .iter()
                .find_map(|p| p.layers[layer].k().ok().flatten())
            else {
                candle_core::bail!("joining caches that hold no keys");
            };
            let (_, h, _, d) = like.dims4()?;
            // Every part in the first's dtype (parts made with different settings).
            let same = |t: Tensor| {
                if t.dtype() == like.dtype() {
                    Ok(t)
                } else {
                    t.to_dtype(like.dtype())
                }
            };
            // Each part's layer holds its last slots, which are the stacked cache's last ones
            // (the parts are left-padded): the stacked layer holds as many as the part that
            // holds most, the others padded in front. For a layer that holds every slot that
            // is the longest part's length; a sliding layer's padding in front of a part that
            // was trimmed covers slots no query of that part's rows can see.
            let held = |p: &Cache| -> candle_core::Result<usize> {
                p.layers[layer].k()?.map_or(Ok(0), |k| k.dim(2))
            };
            let mut hold = 0;
            for part in &parts {
                hold = hold.max(held(part)?);
            }
            let (mut k_rows, mut v_rows) = (Vec::new(), Vec::new());
            for part in &parts {
                let kv = &part.layers[layer];
                let missing = hold - held(part)?;
                let (k, v) = match (kv.k()?, kv.v()?) {
                    (Some(k), Some(v)) => (same(k.contiguous()?)?, same(v.contiguous()?)?),
                    _ if part.is_empty() => {
                        let z = Tensor::zeros((part.rows(), h, 0, d), like.dtype(), like.device())?;
                        (z.clone(), z)
                    }
                    _ => candle_core::bail!("joining a cache that holds no keys"),
                };
                if missing == 0 {
                    k_rows.push(k);
                    v_rows.push(v);
                    continue;
                }
                // Left padding along positions, then the part's own keys and values.
                let b = part.rows();
                let z = Tensor::zeros((b, h, missing, d), like.dtype(), like.device())?;
                k_rows.push(Tensor::cat(&[&z, &k], 2)?);
                v_rows.push(Tensor::cat(&[&z, &v], 2)?);
            }
            let mut grown = Kv::new(hold + 64);
            grown.append(&Tensor::cat(&k_rows, 0)?, &Tensor::cat(&v_rows, 0)?)?;
            stacked.push(grown);
        }
        let valid = parts
            .into_iter()
            .flat_map(|p| {
                let missing = total - p.len();
                p.valid.into_iter().map(move |v| {
                    let mut row = vec![false; missing];
                    row.extend(v);
                    row
                })
            })
            .collect();
        Ok(Cache {
            layers: stacked,
            valid,
            dtype: parts_dtype,
            window: parts_window,
            spare,
        })
    }

    /// Sequences held.
    pub fn rows(&self) -> usize {
        self.valid.len()
    }

    /// Positions `from..to` of row `row` as a one-row cache of their own (a copy), with room
    /// for `room` more before it reallocates: a prompt's keys and values kept for the next
    /// request that starts with the same tokens (`galley serve`'s prompt cache). Every copied
    /// position must be a real token (not padding). A trimmed sliding layer copies what it
    /// still holds of them, which must include the last `window - 1` before `to` (what the
    /// next token sees); otherwise the slice fails (a prompt cache then misses, as llama.cpp's
    /// does for a prefix shorter than its SWA cache keeps).
    pub fn slice_row(
        &self,
        row: usize,
        from: usize,
        to: usize,
        room: usize,
    ) -> candle_core::Result<Cache> {
        let real = self
            .valid
            .get(row)
            .and_then(|v| v.get(from..to))
            .is_some_and(|v| from < to && v.iter().all(|x| *x));
        if !real {
            candle_core::bail!(
                "cache row {row} positions {from}..{to}: not all real tokens of a row held"
            );
        }
        let mut layers = Vec::with_capacity(self.layers.len());
        for (i, kv) in self.layers.iter().enumerate() {
            let (Some(k), Some(v)) = (kv.k()?, kv.v()?) else {
                candle_core::bail!("slicing a cache that holds no keys");
            };
            let first = self.len() - k.dim(2)?;
            if first > from && first > to.saturating_sub(self.window.saturating_sub(1)) {
                candle_core::bail!(
                    "cache row {row} positions {from}..{to}: layer {i} holds only positions {first} on (a sliding layer's window)"
                );
            }
            let start = from.max(first);
            let cut = |t: &Tensor| {
                t.narrow(0, row, 1)?
                    .narrow(2, start - first, to - start)?
                    .contiguous()
            };
            let mut copy = Kv::new(to - start + room);
            copy.append(&cut(&k)?, &cut(&v)?)?;
            layers.push(copy);
        }
        Ok(Cache {
            layers,
            valid: vec![vec![true; to - from]],
            dtype: self.dtype,
            window: self.window,
            spare: self.spare,
        })
    }

    /// Row `row`'s real positions (its padding left out) as a one-row cache of its own (a
    /// copy), with room for `room` more: what a finished sequence has seen, kept for a later
    /// generation that continues it (a rollout's next turn after its tool results).
    pub fn take_row(&self, row: usize, room: usize) -> candle_core::Result<Cache> {
        let Some(valid) = self.valid.get(row) else {
            candle_core::bail!("cache row {row}: the cache holds {} rows", self.rows());
        };
        let real: Vec<u32> = (0..valid.len() as u32)
            .filter(|&j| valid[j as usize])
            .collect();
        let n = real.len();
        // The slots each layer gathers, made once per first slot held on the cache's device
        // (none: no padding and every slot held). A trimmed sliding layer gathers the real
        // tokens it holds: the row's last ones, the new cache's last slots.
        let mut idx: Vec<(usize, Option<Tensor>)> = Vec::new();
        let mut layers = Vec::with_capacity(self.layers.len());
        for kv in &self.layers {
            let (Some(k), Some(v)) = (kv.k()?, kv.v()?) else {
                candle_core::bail!("taking a row of a cache that holds no keys");
            };
            let first = self.len() - k.dim(2)?;
            if !idx.iter().any(|(f, _)| *f == first) {
                let held: Vec<u32> = real
                    .iter()
                    .filter(|&&j| j as usize >= first)
                    .map(|&j| j - first as u32)
                    .collect();
                let gather = match held.len() < k.dim(2)? {
                    true => Some(Tensor::new(held.as_slice(), k.device())?),
                    false => None,
                };
                idx.push((first, gather));
            }
            let gather = idx
                .iter()
                .find(|(f, _)| *f == first)
                .and_then(|(_, g)| g.as_ref());
            let cut = |t: &Tensor| {
                let t = t.narrow(0, row, 1)?.contiguous()?;
                match gather {
                    Some(idx) => t.index_select(idx, 2),
                    None => Ok(t),
                }
            };
            let mut copy = Kv::new(n + room.max(1));
            copy.append(&cut(&k)?, &cut(&v)?)?;
            layers.push(copy);
        }
        Ok(Cache {
            layers,
            valid: vec![vec![true; n]],
            dtype: self.dtype,
            window: self.window,
            spare: self.spare,
        })
    }

    /// The first slot layer `i` holds (0 unless a sliding layer was trimmed).
    pub fn first_held(&self, i: usize) -> candle_core::Result<usize> {
        let held = match self.layers.get(i) {
            Some(kv) => kv.k()?.map_or(Ok(self.len()), |k| k.dim(2))?,
            None => self.len(),
        };
        Ok(self.len().saturating_sub(held))
    }

    /// Drops the slots of the layers `slides` marks that no later query of any row can see:
    /// those before the `window - 1` real tokens nearest the end (a query sees itself and
    /// the `window - 1` tokens before it, and a later query's window starts no earlier).
    /// It cuts only once `window` slots or more can go, so the copy of what stays (about a
    /// window) comes once per window of steps, and a layer holds under twice the window
    /// plus the last pass.
    pub(crate) fn trim_sliding(
        &mut self,
        slides: impl Fn(usize) -> bool,
    ) -> candle_core::Result<()> {
        let w = self.window;
        if w < 2 {
            return Ok(());
        }
        let len = self.len();
        let keep_from = self
            .valid
            .iter()
            .map(|v| first_needed(v, w + self.spare))
            .min()
            .unwrap_or(0);
        for i in 0..self.layers.len() {
            if !slides(i) {
                continue;
            }
            let first = self.first_held(i)?;
            let kv = &mut self.layers[i];
            let (Some(k), Some(v)) = (kv.k()?, kv.v()?) else {
                continue;
            };
            let drop = keep_from.saturating_sub(first);
            if drop < w {
                continue;
            }
            let keep = len - first - drop;
            // Room for the steps until the next cut, so the buffer does not grow before it.
            let mut kept = Kv::new(keep + w + 64);
            kept.append(
                &k.narrow(2, drop, keep)?.contiguous()?,
                &v.narrow(2, drop, keep)?.contiguous()?,
            )?;
            *kv = kept;
        }
        Ok(())
    }

    /// Has trimmed sliding layers keep `n` real tokens beyond what their window needs, so a
    /// pass of up to `n` drafted tokens can be forgotten again ([`Cache::forget`]).
    pub fn keep_spare(&mut self, n: usize) {
        self.spare = n;
    }

    /// Forgets the last `n` slots of every row (a speculative step's drafted tokens the model
    /// rejected, all real tokens): the next pass writes where they were. A trimmed sliding
    /// layer must still hold them (it keeps `keep_spare` tokens more for it).
    pub fn forget(&mut self, n: usize) -> candle_core::Result<()> {
        let len = self.len();
        for (row, valid) in self.valid.iter().enumerate() {
            if n > len || !valid[len - n..].iter().all(|v| *v) {
                candle_core::bail!("cache row {row}: its last {n} slots are not all real tokens");
            }
        }
        for (i, kv) in self.layers.iter_mut().enumerate() {
            if kv.k()?.is_some() && kv.len() < n {
                candle_core::bail!(
                    "layer {i} holds {} slots, fewer than the {n} to forget",
                    kv.len()
                );
            }
            kv.truncate(kv.len().saturating_sub(n));
        }
        self.valid.iter_mut().for_each(|v| v.truncate(len - n));
        Ok(())
    }

    /// Bytes its key and value buffers take, room to grow included (what it costs in memory).
    pub fn allocated_bytes(&self) -> usize {
        self.layers.iter().map(Kv::allocated_bytes).sum()
    }

    /// Bytes of keys and values held (what a copy of this cache costs).
    pub fn bytes(&self) -> usize {
        self.layers
            .iter()
            .filter_map(|kv| Some((kv.k().ok()??, kv.v().ok()??)))
            .map(|(k, v)| (k.elem_count() + v.elem_count()) * k.dtype().size_in_bytes())
            .sum()
    }
}

/// The first slot a query after a row's slots (`valid`, true for real tokens) may see under a
/// sliding window of `w`: that of the (w - 1)-th real token from the end, or of the first
/// real token when there are fewer (none: the end).
fn first_needed(valid: &[bool], w: usize) -> usize {
    let mut first = valid.len();
    let mut need = w.saturating_sub(1);
    for (j, _) in valid.iter().enumerate().rev().filter(|(_, v)| **v) {
        if need == 0 {
            break;
        }
        first = j;
        need -= 1;
    }
    first
}
