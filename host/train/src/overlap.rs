//! Data-parallel gradient sums overlapped with the backward pass (what PyTorch's DDP does
//! with its bucket hooks). The backward pass runs from the last layer to the first, and
//! galley's fused CPU ops write each weight's gradient into its buffer as they go
//! (`grad::Grad::write`), so the buckets of the last layers are final long before the pass
//! ends. A communication thread takes the buckets from the last to the first, waits until
//! every parameter of the next one has had all its writes, and sums it across the ranks
//! while the pass computes the layers before.
//!
//! How many writes during the pass make a parameter's gradient final (one for most, two for
//! a tied embedding), and which parameters get theirs only after it (norm weights and
//! biases: autograd returns those when the pass ends, `Optimizer::accumulate` adds them), is
//! learnt from the first step of a run, which sums after its pass, counting. The plan then
//! lays out the buckets: the parameters written during the pass in order, then the others,
//! so a layer's norm weights do not hold back its projections. The ranks check that they
//! learnt the same plan. A parameter written more often than learnt, or after the pass when
//! it was not before, may have been summed too early: that fails the step with a message
//! rather than train on a wrong sum. Every rank takes the buckets in the same order,
//! whatever the timing, so they cannot cross.

use crate::dist::Collective;
use crate::error::{Result, TrainError};
use crate::grad::{End, Writes};
use crate::model::Trainable;
use crate::optim::{all_reduce_bucketed, buckets, sum_params};
use std::ops::Range;

/// Whether the sums overlap the backward pass: yes, unless `GALLEY_DIST_OVERLAP=0` (so that
/// a benchmark can measure both, and as a way out should a run ever need it).
pub fn enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var("GALLEY_DIST_OVERLAP").map_or(true, |v| v != "0"))
}

/// One run's overlap state: the plan, once learnt.
pub struct Overlap {
    cap: usize,
    plan: Option<Plan>,
}

/// The bucket layout learnt from a step's writes.
struct Plan {
    /// Parameter indices: those whose gradients are final when the pass returns, in order,
    /// then the others.
    order: Vec<usize>,
    /// Buckets, as ranges of `order`; the first `streamed` hold only the former.
    buckets: Vec<Range<usize>>,
    streamed: usize,
    /// Writes during the pass that make each parameter's gradient final.
    expected: Vec<usize>,
}

impl Plan {
    fn learn(during: Vec<usize>, after: &[usize], lens: &[usize], cap: usize) -> Self {
        let (first, late): (Vec<usize>, Vec<usize>) = (0..lens.len()).partition(|&i| after[i] == 0);
        let lens_of = |ix: &[usize]| ix.iter().map(|&i| lens[i]).collect::<Vec<_>>();
        let mut bs = buckets(&lens_of(&first), cap);
        let streamed = bs.len();
        let n = first.len();
        bs.extend(
            buckets(&lens_of(&late), cap)
                .into_iter()
                .map(|r| r.start + n..r.end + n),
        );
        Self {
            order: first.into_iter().chain(late).collect(),
            buckets: bs,
            streamed,
            expected: during,
        }
    }

    /// A number every rank that learnt the same plan computes alike (under 2^40, so that sums
    /// of a few of them are exact in f64).
    fn fingerprint(&self) -> f64 {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        let words = self
            .order
            .iter()
            .chain(&self.expected)
            .chain([&self.streamed]);
        for &w in words {
            h = (h ^ w as u64).wrapping_mul(0x100_0000_01b3);
        }
        (h >> 24) as f64
    }
}

/// What a step's overlapped sums did.
#[derive(Debug, Clone, Copy, Default)]
pub struct Summed {
    /// Gradient values summed before the backward pass ended (0 for the step that learns).
    pub early: usize,
    /// Gradient values summed in all.
    pub total: usize,
}

/// Takes the watchers off every buffer however the step ends.
struct Unwatch<'a>(&'a [Trainable]);

impl Drop for Unwatch<'_> {
    fn drop(&mut self) {
        for p in self.0 {
            p.grad.set_watch(None);
        }
    }
}

impl Overlap {
    /// Buckets of up to `cap` floats (a larger gradient goes alone).
    pub fn new(cap: usize) -> Self {
        Self { cap, plan: None }
    }

    /// Runs `pass` (the step's last forward and backward pass) and then `after` (which adds
    /// what the pass returned to the buffers) while summing the gradients of `params` across
    /// `group`; returns what `pass` returned and how much of the sum it overlapped.
    pub fn run<T>(
        &mut self,
        params: &[Trainable],
        group: &mut dyn Collective,
        pass: impl FnOnce() -> Result<T>,
        after: impl FnOnce(&T) -> Result<()>,
    ) -> Result<(T, Summed)> {
        let writes = Writes::new(params.len());
        for (i, p) in params.iter().enumerate() {
            p.grad.set_watch(Some((writes.clone(), i)));
        }
        let unwatch = Unwatch(params);
        let lens: Vec<usize> = params.iter().map(|p| p.var.elem_count()).collect();
        let total = lens.iter().sum();
        let both = || -> Result<T> {
            let out = pass()?;
            writes.returned();
            after(&out)?;
            Ok(out)
        };
        let Some(plan) = &self.plan else {
            // The first step: the sums after the pass, in parameter order; then the plan.
            let out = both()?;
            drop(unwatch);
            sum_params(params, 0..params.len(), group, |s, g| {
                all_reduce_bucketed(s, g, self.cap)
            })?;
            let (during, after) = writes.counts();
            let plan = Plan::learn(during, &after, &lens, self.cap);
            let mut f = [plan.fingerprint()];
            group.all_reduce_f64(&mut f)?;
            if f[0] != plan.fingerprint() * group.world_size() as f64 {
                return Err(TrainError::Stopped(
                    "data-parallel sums: the ranks' backward passes write different gradients \
                     (are they running the same galley and config?)"
                        .into(),
                ));
            }
            self.plan = Some(plan);
            return Ok((out, Summed { early: 0, total }));
        };
        let (out, summed) = std::thread::scope(|s| {
            let comm = s.spawn(|| sum_as_ready(params, &lens, plan, &writes, group));
            let out = both();
            writes.end(if out.is_ok() { End::Done } else { End::Failed });
            let summed = comm.join().unwrap_or_else(|_| {
                Err(TrainError::Stopped(
                    "the gradient sums' thread panicked".into(),
                ))
            });
            (out, summed)
        });
        drop(unwatch);
        let out = out?;
        let early = summed?;
        let (during, after) = writes.counts();
        // The parameters of the streamed buckets: the first ones of `order`.
        let streamed = plan.buckets[..plan.streamed].last().map_or(0, |r| r.end);
        for &i in &plan.order[..streamed] {
            if during[i] > plan.expected[i] || after[i] > 0 {
                return Err(TrainError::Stopped(format!(
                    "data-parallel sums: the gradient of `{}` was written {} times during a \
                     backward pass and {} after it, where the first step wrote it {} times \
                     during and none after, so it may have been summed before it was final; \
                     set GALLEY_DIST_OVERLAP=0 to sum after the pass",
                    params[i].name, during[i], after[i], plan.expected[i]
                )));
            }
        }
        Ok((out, Summed { early, total }))
    }
}

/// The communication thread: the buckets of parameters written during the pass, last first,
/// each once its gradients are final, then the others once the pass has ended; returns the
/// values summed before the end.
fn sum_as_ready(
    params: &[Trainable],
    lens: &[usize],
    plan: &Plan,
    writes: &Writes,
    group: &mut dyn Collective,
) -> Result<usize> {
    let (streamed, late) = plan.buckets.split_at(plan.streamed);
    let mut early = 0;
    let buckets = streamed.iter().rev().map(|r| (r, true));
    for (r, is_streamed) in buckets.chain(late.iter().map(|r| (r, false))) {
        let ix = &plan.order[r.clone()];
        let ready = writes.wait(|c| is_streamed && ix.iter().all(|&i| c[i] >= plan.expected[i]));
        match ready {
            Some(End::Failed) => return Ok(early),
            Some(End::Done) => {}
            None => early += ix.iter().map(|&i| lens[i]).sum::<usize>(),
        }
        sum_params(params, ix.iter().copied(), group, |s, g| {
            g.all_reduce_f32_parts(s)
        })?;
    }
    Ok(early)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor, Var};
    use std::sync::mpsc::{Receiver, Sender, channel};
    use std::time::Duration;

    /// A group of two ranks whose other rank holds the same gradients: every sum doubles.
    /// It reports each message's length, and can be told to disagree on the plan.
    struct Twin {
        sent: Sender<usize>,
        skew: f64,
    }

    impl Collective for Twin {
        fn rank(&self) -> usize {
            0
        }
        fn world_size(&self) -> usize {
            2
        }
        fn all_reduce_f32(&mut self, buf: &mut [f32]) -> Result<()> {
            buf.iter_mut().for_each(|x| *x *= 2.0);
            self.sent.send(buf.len()).unwrap();
            Ok(())
        }
        fn all_reduce_f64(&mut self, buf: &mut [f64]) -> Result<()> {
            buf.iter_mut().for_each(|x| *x = *x * 2.0 + self.skew);
            Ok(())
        }
    }

    fn params(lens: &[usize]) -> Vec<Trainable> {
        lens.iter()
            .enumerate()
            .map(|(i, &n)| Trainable {
                name: format!("p{i}"),
                var: Var::from_tensor(
                    &Tensor::zeros(n, candle_core::DType::F32, &Device::Cpu).unwrap(),
                )
                .unwrap(),
                grad: crate::grad::Grad::zeros(n),
            })
            .collect()
    }

    fn add(p: &Trainable, v: f32) {
        p.grad.write(|g| g.iter_mut().for_each(|x| *x += v));
    }

    /// The next message's length, waiting up to a minute (a bucket that never comes fails).
    fn next(rx: &Receiver<usize>) -> usize {
        rx.recv_timeout(Duration::from_secs(60))
            .expect("a bucket summed")
    }

    /// The buffers hold twice what `learn`'s pass and `after` write (the twin's share).
    fn assert_doubled(ps: &[Trainable]) {
        let sums: Vec<Vec<f32>> = ps.iter().map(|p| p.grad.lock().clone()).collect();
        assert_eq!(
            sums,
            [vec![4.0; 4], vec![4.0; 4], vec![6.0; 4], vec![8.0; 2]]
        );
    }

    /// Four parameters and an overlap that has learnt its plan from `learn`'s step, with the
    /// twin group and the lengths of the messages it sends.
    fn learnt() -> (Vec<Trainable>, Overlap, Twin, Receiver<usize>) {
        let ps = params(&[4, 4, 4, 2]);
        let (tx, rx) = channel();
        let mut g = Twin {
            sent: tx,
            skew: 0.0,
        };
        let mut ov = Overlap::new(4);
        learn(&ps, &mut ov, &mut g, &rx);
        (ps, ov, g, rx)
    }

    /// p0 is a tied embedding (written twice), p3 a norm weight (its gradient comes after the
    /// pass); buckets of 4 values, one per parameter.
    fn learn(ps: &[Trainable], ov: &mut Overlap, g: &mut Twin, rx: &Receiver<usize>) {
        let (_, s) = ov
            .run(
                ps,
                g,
                || {
                    add(&ps[0], 1.0);
                    add(&ps[2], 3.0);
                    add(&ps[1], 2.0);
                    add(&ps[0], 1.0);
                    Ok(())
                },
                |_| {
                    add(&ps[3], 4.0);
                    Ok(())
                },
            )
            .unwrap();
        assert_eq!((s.early, s.total), (0, 14));
        // The first step sums after the pass, in parameter order.
        let lens: Vec<usize> = (0..4).map(|_| next(rx)).collect();
        assert_eq!(lens, [4, 4, 4, 2]);
        assert_doubled(ps);
        for p in ps {
            p.grad.lock().fill(0.0);
        }
    }

    #[test]
    fn buckets_are_summed_while_the_pass_still_runs_and_the_late_ones_after_it() {
        let (ps, mut ov, mut g, rx) = learnt();
        // Each bucket is summed before the pass goes on: the pass waits for the sum of the
        // bucket it has just finished, so it would hang (and fail) without the overlap.
        let (_, s) = ov
            .run(
                &ps,
                &mut g,
                || {
                    add(&ps[0], 1.0);
                    add(&ps[2], 3.0);
                    assert_eq!(next(&rx), 4, "p2's bucket");
                    add(&ps[1], 2.0);
                    assert_eq!(next(&rx), 4, "p1's bucket");
                    add(&ps[0], 1.0);
                    assert_eq!(next(&rx), 4, "p0's bucket, after its second write");
                    Ok(())
                },
                |_| {
                    add(&ps[3], 4.0);
                    Ok(())
                },
            )
            .unwrap();
        assert_eq!(next(&rx), 2, "the norm's bucket, at the end");
        assert_eq!((s.early, s.total), (12, 14));
        assert_doubled(&ps);
        assert!(rx.try_recv().is_err(), "no other message");
    }

    #[test]
    fn a_gradient_written_after_its_bucket_was_summed_fails_the_step() {
        let (ps, mut ov, mut g, rx) = learnt();
        let e = ov
            .run(
                &ps,
                &mut g,
                || {
                    add(&ps[0], 1.0);
                    add(&ps[2], 3.0);
                    assert_eq!(next(&rx), 4);
                    add(&ps[2], 3.0);
                    add(&ps[1], 2.0);
                    add(&ps[0], 1.0);
                    Ok(())
                },
                |_| Ok(()),
            )
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("`p2`") && e.contains("GALLEY_DIST_OVERLAP=0"),
            "{e}"
        );
    }

    #[test]
    fn a_failed_pass_stops_the_sums_and_ranks_with_another_plan_are_refused() {
        let (ps, mut ov, mut g, rx) = learnt();
        let e = ov
            .run(
                &ps,
                &mut g,
                || -> Result<()> {
                    add(&ps[2], 3.0);
                    assert_eq!(next(&rx), 4);
                    Err(TrainError::Stopped("out of memory".into()))
                },
                |_| Ok(()),
            )
            .unwrap_err();
        assert!(e.to_string().contains("out of memory"), "{e}");
        assert!(rx.try_recv().is_err(), "no bucket after the failure");
        // A rank that learnt another plan.
        let (tx, rx) = channel();
        let mut g = Twin {
            sent: tx,
            skew: 1.0,
        };
        let mut ov = Overlap::new(4);
        let e = ov
            .run(&ps, &mut g, || Ok(()), |_| Ok(()))
            .unwrap_err()
            .to_string();
        assert!(e.contains("different gradients"), "{e}");
        drop(rx);
    }
}
