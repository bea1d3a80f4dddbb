//! A small thread pool for decode-sized work. A decoding step is a chain of products that
//! each take tens of microseconds; waking sleeping threads for every one (as a general pool
//! does) costs as much as the second core gains. Here the workers spin for a short while
//! after each job, so the next product of the same step starts at once, and only then park.
//! The calling thread always does a share of the work itself.

use std::any::Any;
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::Thread;
use std::time::{Duration, Instant};

/// How long an idle worker spins before parking: longer than the gap between two products
/// of one decode step, far shorter than a user would notice as a busy core.
const SPIN: Duration = Duration::from_micros(300);

type Job = dyn Fn(usize, usize) + Sync;

struct Shared {
    /// Bumped once per job; workers run a job when they see a new value.
    epoch: AtomicUsize,
    /// Workers still running the current job.
    pending: AtomicUsize,
    /// The current job, lifetime-erased: `run` does not return before every worker is done.
    job: Mutex<Option<&'static Job>>,
    workers: Mutex<Vec<Thread>>,
    /// The first panic a worker caught in the current job, re-raised by the caller.
    panic: Mutex<Option<Box<dyn Any + Send>>>,
}

/// Waits, when dropped, until no worker still holds the current job, then clears it. Held
/// across the caller's own part, so the job's borrow outlives every use even when the
/// caller's part unwinds (what `std::thread::scope` guarantees for its threads).
struct WaitForWorkers<'a>(&'a Shared);

impl Drop for WaitForWorkers<'_> {
    fn drop(&mut self) {
        while self.0.pending.load(Ordering::Acquire) != 0 {
            std::hint::spin_loop();
        }
        *self.0.job.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }
}

pub struct Pool {
    shared: Arc<Shared>,
    parts: usize,
    /// One job at a time.
    gate: Mutex<()>,
}

impl Pool {
    fn new(threads: usize) -> Self {
        let shared = Arc::new(Shared {
            epoch: AtomicUsize::new(0),
            pending: AtomicUsize::new(0),
            job: Mutex::new(None),
            workers: Mutex::new(vec![]),
            panic: Mutex::new(None),
        });
        for part in 1..threads {
            let s = shared.clone();
            let h = std::thread::Builder::new()
                .name(format!("galley-decode-{part}"))
                .spawn(move || worker(s, part, threads))
                .expect("spawn a decode worker");
            shared
                .workers
                .lock()
                .expect("workers")
                .push(h.thread().clone());
        }
        Self {
            shared,
            parts: threads,
            gate: Mutex::new(()),
        }
    }

    /// The process-wide pool, sized like rayon's (`RAYON_NUM_THREADS`, else the cores).
    pub fn global() -> &'static Pool {
        static POOL: OnceLock<Pool> = OnceLock::new();
        POOL.get_or_init(|| Pool::new(rayon::current_num_threads().max(1)))
    }

    pub fn parts(&self) -> usize {
        self.parts
    }

    /// Runs `f(part, parts)` for every part, the caller taking part 0; returns when all are
    /// done. A panic in any part is re-raised here, after every worker has let go of `f`.
    pub fn run(&self, f: &(dyn Fn(usize, usize) + Sync)) {
        if self.parts == 1 {
            return f(0, 1);
        }
        let _one = self.gate.lock().unwrap_or_else(|e| e.into_inner());
        // SAFETY: workers use the reference only between the epoch bump below and their
        // decrement of `pending`; `wait` is created before the bump and, on return or on
        // unwind alike, does not let this frame (and `f`'s borrow) end before `pending` is 0
        // and the job slot is cleared. Workers catch their own panics, so they always
        // decrement `pending`.
        let job: &'static Job =
            unsafe { std::mem::transmute::<&(dyn Fn(usize, usize) + Sync + '_), &'static Job>(f) };
        *self.shared.job.lock().unwrap_or_else(|e| e.into_inner()) = Some(job);
        self.shared.pending.store(self.parts - 1, Ordering::Release);
        let wait = WaitForWorkers(&self.shared);
        self.shared.epoch.fetch_add(1, Ordering::AcqRel);
        for t in self
            .shared
            .workers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            t.unpark();
        }
        let mine = catch_unwind(AssertUnwindSafe(|| f(0, self.parts)));
        drop(wait);
        let theirs = self
            .shared
            .panic
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Err(p) = mine {
            resume_unwind(p);
        }
        if let Some(p) = theirs {
            resume_unwind(p);
        }
    }
}

impl Pool {
    /// Runs `f(i, piece)` for every `chunk`-sized piece of `out` (the last may be shorter),
    /// the pieces handed out one at a time to whichever part is free (tasks of unequal cost
    /// balance). Ops a pass runs between its products use this rather than rayon: while
    /// rayon's threads worked, this pool's workers spun beside them, and a 2-token pass on 2
    /// cores ran its attention on what was left of one.
    pub fn chunks_mut<T: Send>(
        &self,
        out: &mut [T],
        chunk: usize,
        f: &(dyn Fn(usize, &mut [T]) + Sync),
    ) {
        let (len, chunk) = (out.len(), chunk.max(1));
        let pieces = len.div_ceil(chunk);
        let next = AtomicUsize::new(0);
        let base = Base(out.as_mut_ptr());
        let base = &base;
        self.run(&|_, _| {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= pieces {
                    break;
                }
                let start = i * chunk;
                // SAFETY: piece i is out[start..start + chunk] (cut at the end), taken by
                // exactly one part through the counter; the pieces are disjoint and `out`
                // outlives `run`, which returns only when every part is done.
                let piece = unsafe {
                    std::slice::from_raw_parts_mut(base.0.add(start), chunk.min(len - start))
                };
                f(i, piece);
            }
        });
    }
}

/// `out`'s base pointer, shared by the parts of one `chunks_mut`.
struct Base<T>(*mut T);
// SAFETY: the parts write disjoint pieces through it (see `chunks_mut`), which `T: Send`
// allows from any thread.
unsafe impl<T: Send> Sync for Base<T> {}

fn worker(s: Arc<Shared>, part: usize, parts: usize) {
    let mut seen = 0usize;
    loop {
        let started = Instant::now();
        let mut spins = 0u32;
        loop {
            let now = s.epoch.load(Ordering::Acquire);
            if now != seen {
                seen = now;
                break;
            }
            spins += 1;
            if spins.is_multiple_of(1024) && started.elapsed() > SPIN {
                std::thread::park_timeout(Duration::from_millis(50));
            } else {
                std::hint::spin_loop();
            }
        }
        let job = *s.job.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(f) = job {
            // A panicking job must not kill the worker (the caller would wait forever) nor
            // skip the decrement below (the caller would never return).
            if let Err(p) = catch_unwind(AssertUnwindSafe(|| f(part, parts))) {
                s.panic
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get_or_insert(p);
            }
        }
        s.pending.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_piece_is_handed_out_once() {
        let pool = Pool::new(3);
        for (len, chunk) in [(10, 3), (9, 3), (1, 4), (0, 2), (100, 1)] {
            let mut out = vec![0usize; len];
            pool.chunks_mut(&mut out, chunk, &|i, piece| {
                for v in piece.iter_mut() {
                    *v += i + 1;
                }
            });
            let want: Vec<usize> = (0..len).map(|j| j / chunk + 1).collect();
            assert_eq!(out, want, "{len} in pieces of {chunk}");
        }
    }

    #[test]
    fn every_part_runs_once_per_job() {
        let pool = Pool::new(3);
        for round in 0..200 {
            let hits: Vec<AtomicUsize> = (0..3).map(|_| AtomicUsize::new(0)).collect();
            pool.run(&|part, parts| {
                assert_eq!(parts, 3);
                hits[part].fetch_add(round + 1, Ordering::Relaxed);
            });
            assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == round + 1));
        }
    }

    /// The bug this pins: a panic in the caller's part returned while workers still held
    /// the job's borrow (use after free), and a panic in a worker's part left the caller
    /// spinning forever.
    #[test]
    fn a_panicking_job_waits_for_workers_and_reraises_their_panic() {
        let pool = Pool::new(3);
        let finished = AtomicUsize::new(0);
        let caller = catch_unwind(AssertUnwindSafe(|| {
            pool.run(&|part, _| {
                if part == 0 {
                    panic!("caller's part");
                }
                std::thread::sleep(Duration::from_millis(50));
                finished.fetch_add(1, Ordering::SeqCst);
            })
        }));
        assert!(caller.is_err());
        // Every worker was done with the borrowed closure before `run` unwound.
        assert_eq!(finished.load(Ordering::SeqCst), 2);

        let worker = catch_unwind(AssertUnwindSafe(|| {
            pool.run(&|part, _| {
                if part == 2 {
                    panic!("worker's part");
                }
            })
        }));
        let payload = worker.expect_err("the worker's panic reaches the caller");
        assert_eq!(payload.downcast_ref::<&str>(), Some(&"worker's part"));

        // The pool still works afterwards: no worker died, no panic is left over.
        let hits = AtomicUsize::new(0);
        pool.run(&|_, _| {
            hits.fetch_add(1, Ordering::SeqCst);
        });
        assert_eq!(hits.load(Ordering::SeqCst), 3);
    }
}
