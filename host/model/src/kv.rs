//! One layer's growing key and value buffers (`Kv`), as candle's `KvCache` keeps them — a
//! buffer with room to spare along the positions, views of its filled part handed out — plus
//! what that type cannot do: shrink. A speculative decoding step runs drafted tokens through
//! the model and must then drop the keys and values of those the model rejected; with a
//! length of its own the cache forgets them in O(1), and the next pass overwrites their slots.
//!
//! Growth follows candle's policy (by the initial room, zeros added) so that memory figures
//! measured before stay comparable.

use candle_core::{DType, Tensor};

/// Keys and values (b, kv_heads, positions, head_dim), filled along positions up to `len`.
#[derive(Clone, Debug)]
pub struct Kv {
    bufs: Option<(Tensor, Tensor)>,
    len: usize,
    /// Positions of room the buffers are made with, and grow by when full.
    room: usize,
}

impl Kv {
    /// Empty, with room for `room` positions once the first keys arrive (their shape and dtype
    /// set the buffers').
    pub fn new(room: usize) -> Self {
        Self {
            bufs: None,
            len: 0,
            room: room.max(1),
        }
    }

    /// Positions held.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The keys held, (b, kv_heads, len, head_dim): a view of the buffer (none before the
    /// first append).
    pub fn k(&self) -> candle_core::Result<Option<Tensor>> {
        self.bufs
            .as_ref()
            .map(|(k, _)| k.narrow(2, 0, self.len))
            .transpose()
    }

    /// The values held, as [`Kv::k`].
    pub fn v(&self) -> candle_core::Result<Option<Tensor>> {
        self.bufs
            .as_ref()
            .map(|(_, v)| v.narrow(2, 0, self.len))
            .transpose()
    }

    /// The dtype the buffers hold (none before the first append).
    pub fn dtype(&self) -> Option<DType> {
        self.bufs.as_ref().map(|(k, _)| k.dtype())
    }

    /// Bytes the buffers take, room included.
    pub fn allocated_bytes(&self) -> usize {
        self.bufs.as_ref().map_or(0, |(k, v)| {
            (k.elem_count() + v.elem_count()) * k.dtype().size_in_bytes()
        })
    }

    /// Appends keys and values (b, kv_heads, t, head_dim) after those held and returns
    /// everything held, as views.
    pub fn append(&mut self, k: &Tensor, v: &Tensor) -> candle_core::Result<(Tensor, Tensor)> {
        let t = k.dim(2)?;
        if v.dims() != k.dims() {
            candle_core::bail!("keys {:?} and values {:?} differ", k.dims(), v.dims());
        }
        let cap = self.bufs.as_ref().map_or(Ok(0), |(b, _)| b.dim(2))?;
        if self.len + t > cap {
            // Grown by whole rooms, as candle's cache grows; the filled part is copied once.
            let grown = cap + (self.len + t - cap).div_ceil(self.room) * self.room;
            let mut shape = k.dims().to_vec();
            shape[2] = grown - cap;
            let more = Tensor::zeros(shape, k.dtype(), k.device())?;
            self.bufs = Some(match self.bufs.take() {
                Some((bk, bv)) => (
                    Tensor::cat(&[&bk, &more], 2)?,
                    Tensor::cat(&[&bv, &more], 2)?,
                ),
                None => (more.clone(), more.zeros_like()?),
            });
        }
        let (bk, bv) = self.bufs.as_ref().expect("buffers made above");
        bk.slice_set(k, 2, self.len)?;
        bv.slice_set(v, 2, self.len)?;
        self.len += t;
        Ok((bk.narrow(2, 0, self.len)?, bv.narrow(2, 0, self.len)?))
    }

    /// Forgets every position from `len` on (their slots are written again by the next
    /// append). Views handed out before still show the old contents until then.
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }
}

#[cfg(test)]
mod tests {
    use super::Kv;
    use candle_core::{Device, Tensor};

    fn filled(t: usize, from: f32) -> Tensor {
        Tensor::arange(from, from + (2 * t * 3) as f32, &Device::Cpu)
            .unwrap()
            .reshape((1, 2, t, 3))
            .unwrap()
    }

    #[test]
    fn appends_grow_by_the_room_and_a_truncation_is_overwritten() {
        let mut kv = Kv::new(4);
        assert!(kv.k().unwrap().is_none());
        let (a, b) = (filled(3, 0.0), filled(3, 100.0));
        kv.append(&a, &a).unwrap();
        assert_eq!(kv.allocated_bytes(), 2 * 2 * 4 * 3 * 4);
        // 6 positions: the buffers grow by one room (to 8), the first three copied over.
        let (k, _) = kv.append(&b, &b).unwrap();
        assert_eq!(k.dims(), [1, 2, 6, 3]);
        assert_eq!(kv.allocated_bytes(), 2 * 2 * 8 * 3 * 4);
        let want = Tensor::cat(&[&a, &b], 2).unwrap();
        assert_eq!(
            k.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            want.flatten_all().unwrap().to_vec1::<f32>().unwrap()
        );
        // Two rejected: the next append writes where they were.
        kv.truncate(4);
        assert_eq!(kv.len(), 4);
        let c = filled(1, 500.0);
        let (k, v) = kv.append(&c, &c).unwrap();
        assert_eq!(k.dims(), [1, 2, 5, 3]);
        let got = v.narrow(2, 4, 1).unwrap();
        assert_eq!(
            got.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            c.flatten_all().unwrap().to_vec1::<f32>().unwrap()
        );
        let kept = k.narrow(2, 0, 4).unwrap().flatten_all().unwrap();
        let want = want.narrow(2, 0, 4).unwrap().flatten_all().unwrap();
        assert_eq!(
            kept.to_vec1::<f32>().unwrap(),
            want.to_vec1::<f32>().unwrap()
        );
        // Truncating never lengthens.
        kv.truncate(9);
        assert_eq!(kv.len(), 5);
    }
}
