//! A small thread pool for decode-sized work. A decoding step is a chain of products that
//! each take tens of microseconds; waking sleeping threads for every one (as a general pool
//! does) costs as much as the second core gains. Here the workers spin for a short while
//! after each job, so the next product of the same step starts at once, and only then park.
//! The calling thread always does a share of the work itself.

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

    /// Runs `f(part, parts)` for every part, the caller taking part 0; returns when all are done.
    pub fn run(&self, f: &(dyn Fn(usize, usize) + Sync)) {
        if self.parts == 1 {
            return f(0, 1);
        }
        let _one = self.gate.lock().unwrap_or_else(|e| e.into_inner());
        // SAFETY: the reference is only used by workers between the epoch bump below and the
        // moment `pending` reaches zero, which this function waits for before returning.
        let job: &'static Job =
            unsafe { std::mem::transmute::<&(dyn Fn(usize, usize) + Sync + '_), &'static Job>(f) };
        *self.shared.job.lock().expect("job") = Some(job);
        self.shared.pending.store(self.parts - 1, Ordering::Release);
        self.shared.epoch.fetch_add(1, Ordering::AcqRel);
        for t in self.shared.workers.lock().expect("workers").iter() {
            t.unpark();
        }
        f(0, self.parts);
        while self.shared.pending.load(Ordering::Acquire) != 0 {
            std::hint::spin_loop();
        }
        *self.shared.job.lock().expect("job") = None;
    }
}

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
            if spins % 1024 == 0 && started.elapsed() > SPIN {
                std::thread::park_timeout(Duration::from_millis(50));
            } else {
                std::hint::spin_loop();
            }
        }
        let job = *s.job.lock().expect("job");
        if let Some(f) = job {
            f(part, parts);
        }
        s.pending.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
