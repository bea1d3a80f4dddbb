//! A trained parameter's gradient buffer on the host: the fused CPU ops add their weight
//! gradients into it during the backward pass, `Optimizer::accumulate` adds autograd's, the
//! optimizer reads it. It can also report every write to a watcher, which is how the
//! data-parallel trainer (`overlap`) learns that a bucket of gradients is final and starts
//! summing it across the ranks while the backward pass goes on with earlier layers.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};

/// A parameter's gradient buffer, shared by the ops that fill it and the optimizer.
pub type GradBuf = Arc<Grad>;

pub struct Grad {
    buf: Mutex<Vec<f32>>,
    /// Who hears of writes, and as which parameter (None: nobody, the common case).
    watch: Mutex<Option<(Arc<Writes>, usize)>>,
}

impl Grad {
    pub fn new(buf: Vec<f32>) -> GradBuf {
        Arc::new(Self {
            buf: Mutex::new(buf),
            watch: Mutex::new(None),
        })
    }

    pub fn zeros(n: usize) -> GradBuf {
        Self::new(vec![0.0; n])
    }

    /// The buffer, for reading it or for changes that are not a backward pass's (zeroing,
    /// clipping, the sum across ranks). Panics only if a thread panicked while holding it.
    pub fn lock(&self) -> MutexGuard<'_, Vec<f32>> {
        self.buf.lock().expect("gradient buffer")
    }

    /// Adds a gradient into the buffer through `f`, then tells the watcher, if any.
    pub fn write(&self, f: impl FnOnce(&mut [f32])) {
        f(&mut self.lock());
        let watch = self.watch.lock().expect("gradient watch").clone();
        if let Some((writes, i)) = watch {
            writes.wrote(i);
        }
    }

    pub(crate) fn set_watch(&self, w: Option<(Arc<Writes>, usize)>) {
        *self.watch.lock().expect("gradient watch") = w;
    }
}

/// Writes counted per parameter during one backward pass and after it (autograd's
/// gradients, added once the pass has returned them), and whether the pass has ended (or
/// failed), with a condition variable for whoever waits on them.
pub(crate) struct Writes {
    state: Mutex<WriteState>,
    cv: Condvar,
}

struct WriteState {
    during: Vec<usize>,
    after: Vec<usize>,
    returned: bool,
    end: Option<End>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum End {
    /// Every gradient is final.
    Done,
    /// The pass failed: no more sums are to be started.
    Failed,
}

impl Writes {
    pub fn new(params: usize) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(WriteState {
                during: vec![0; params],
                after: vec![0; params],
                returned: false,
                end: None,
            }),
            cv: Condvar::new(),
        })
    }

    fn wrote(&self, i: usize) {
        let mut st = self.state.lock().expect("gradient writes");
        match st.returned {
            false => st.during[i] += 1,
            true => st.after[i] += 1,
        }
        drop(st);
        self.cv.notify_all();
    }

    /// The backward pass has returned: later writes count as after it.
    pub fn returned(&self) {
        self.state.lock().expect("gradient writes").returned = true;
    }

    pub fn end(&self, e: End) {
        self.state.lock().expect("gradient writes").end = Some(e);
        self.cv.notify_all();
    }

    /// Waits until `ready` holds of the writes during the pass, or the gradients are final;
    /// returns the end if it came first (`None`: `ready` held while the pass was running).
    pub fn wait(&self, ready: impl Fn(&[usize]) -> bool) -> Option<End> {
        let mut st = self.state.lock().expect("gradient writes");
        loop {
            if let Some(e) = st.end {
                return Some(e);
            }
            if ready(&st.during) {
                return None;
            }
            st = self.cv.wait(st).expect("gradient writes");
        }
    }

    /// (writes during the pass, writes after it), per parameter.
    pub fn counts(&self) -> (Vec<usize>, Vec<usize>) {
        let st = self.state.lock().expect("gradient writes");
        (st.during.clone(), st.after.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_reach_the_watcher_and_only_while_it_watches() {
        let g = Grad::zeros(3);
        g.write(|b| b[0] += 1.0);
        let w = Writes::new(2);
        g.set_watch(Some((w.clone(), 1)));
        g.write(|b| b[1] += 2.0);
        g.write(|b| b[1] += 2.0);
        g.lock()[2] = 5.0; // not a backward pass's write
        w.returned();
        g.write(|b| b[1] += 1.0);
        g.set_watch(None);
        g.write(|b| b[0] += 1.0);
        assert_eq!(w.counts(), (vec![0, 2], vec![0, 1]));
        assert_eq!(*g.lock(), vec![2.0, 5.0, 5.0]);
    }

    #[test]
    fn a_waiter_wakes_on_the_writes_it_needs_or_on_the_end() {
        let w = Writes::new(1);
        let g = Grad::zeros(1);
        g.set_watch(Some((w.clone(), 0)));
        std::thread::scope(|s| {
            let h = s.spawn(|| w.wait(|c| c[0] >= 2));
            g.write(|b| b[0] += 1.0);
            g.write(|b| b[0] += 1.0);
            assert_eq!(h.join().unwrap(), None);
            let h = s.spawn(|| w.wait(|c| c[0] >= 3));
            w.end(End::Done);
            assert_eq!(h.join().unwrap(), Some(End::Done));
        });
    }
}
