//! The arithmetic of preference and reinforcement objectives, on plain numbers: DPO losses
//! (sigmoid, IPO, hinge) and GRPO's rewards, group advantages and clipped surrogate (grpo,
//! dr_grpo, dapo aggregation), as TRL defines them. Each loss also returns its derivative with
//! respect to every log-probability it reads, so a trainer can backpropagate with one pass,
//! `sum(coefficient · token NLL)`, through the model's fused per-token losses: the objective
//! itself never enters the autograd graph.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DpoLoss {
    Sigmoid,
    Ipo,
    Hinge,
}

/// One preference pair's sequence log-probabilities under the policy and the reference.
#[derive(Debug, Clone, Copy)]
pub struct PairLogps {
    pub chosen: f64,
    pub rejected: f64,
    pub ref_chosen: f64,
    pub ref_rejected: f64,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DpoOut {
    pub loss: f64,
    /// d loss / d policy chosen log-prob, and / d rejected.
    pub d_chosen: f64,
    pub d_rejected: f64,
    /// beta · (policy - reference), the implicit rewards.
    pub reward_chosen: f64,
    pub reward_rejected: f64,
}

fn log_sigmoid(x: f64) -> f64 {
    // Stable for both signs.
    if x >= 0.0 {
        -(-x).exp().ln_1p()
    } else {
        x - x.exp().ln_1p()
    }
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// The DPO loss of one pair (TRL's `dpo_loss`), with its derivatives.
pub fn dpo(p: PairLogps, kind: DpoLoss, beta: f64, label_smoothing: f64) -> DpoOut {
    let h = (p.chosen - p.rejected) - (p.ref_chosen - p.ref_rejected);
    let (loss, dh) = match kind {
        DpoLoss::Sigmoid => {
            let z = beta * h;
            let loss =
                -log_sigmoid(z) * (1.0 - label_smoothing) - log_sigmoid(-z) * label_smoothing;
            // d/dz -log σ(z) = -σ(-z); d/dz -log σ(-z) = σ(z).
            let dz = -sigmoid(-z) * (1.0 - label_smoothing) + sigmoid(z) * label_smoothing;
            (loss, dz * beta)
        }
        DpoLoss::Ipo => {
            let t = h - 1.0 / (2.0 * beta);
            (t * t, 2.0 * t)
        }
        DpoLoss::Hinge => {
            let m = 1.0 - beta * h;
            if m > 0.0 { (m, -beta) } else { (0.0, 0.0) }
        }
    };
    DpoOut {
        loss,
        d_chosen: dh,
        d_rejected: -dh,
        reward_chosen: beta * (p.chosen - p.ref_chosen),
        reward_rejected: beta * (p.rejected - p.ref_rejected),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScaleRewards {
    /// Divide by each group's standard deviation.
    Group,
    /// Divide by the whole batch's standard deviation.
    Batch,
    /// Centre only (Dr. GRPO).
    None,
}

/// The total reward of each completion: the weighted sum over reward functions of their
/// scores, a `None` ("no opinion") left out of the sum rather than counted as zero.
/// `scores[f][i]` is function f's score of completion i.
pub fn total_rewards(scores: &[Vec<Option<f64>>], weights: &[f64]) -> Vec<f64> {
    let n = scores.first().map_or(0, |s| s.len());
    (0..n)
        .map(|i| {
            scores
                .iter()
                .zip(weights)
                .filter_map(|(s, w)| s[i].map(|v| v * w))
                .sum()
        })
        .collect()
}

fn mean(xs: &[f64]) -> f64 {
    xs.iter().sum::<f64>() / xs.len().max(1) as f64
}

/// Unbiased standard deviation (torch's default), 0 for fewer than two values.
fn std(xs: &[f64]) -> f64 {
    if xs.len() < 2 {
        return 0.0;
    }
    let m = mean(xs);
    (xs.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / (xs.len() - 1) as f64).sqrt()
}

/// GRPO advantages: each reward minus its group's mean (groups of `group` consecutive
/// completions), scaled as `scale` says, with TRL's 1e-4 in the denominator.
pub fn advantages(rewards: &[f64], group: usize, scale: ScaleRewards) -> Vec<f64> {
    advantages_known(rewards, &vec![true; rewards.len()], group, scale)
}

/// `advantages` where some rewards are unknown (`known[i]` false: a reward plugin failed on
/// that completion). An unknown one gets advantage 0 and is left out of its group's mean and
/// standard deviation, and of the batch's, so a failure moves neither it nor its neighbours.
pub fn advantages_known(
    rewards: &[f64],
    known: &[bool],
    group: usize,
    scale: ScaleRewards,
) -> Vec<f64> {
    assert!(
        group > 0 && rewards.len().is_multiple_of(group) && known.len() == rewards.len(),
        "whole groups"
    );
    let kept = |r: &[f64], k: &[bool]| -> Vec<f64> {
        r.iter()
            .zip(k)
            .filter(|(_, k)| **k)
            .map(|(r, _)| *r)
            .collect()
    };
    let batch_std = std(&kept(rewards, known));
    rewards
        .chunks(group)
        .zip(known.chunks(group))
        .flat_map(|(g, k)| {
            let ok = kept(g, k);
            let (m, s) = (mean(&ok), std(&ok));
            g.iter().zip(k).map(move |(r, known)| {
                if !known {
                    return 0.0;
                }
                match scale {
                    ScaleRewards::Group => (r - m) / (s + 1e-4),
                    ScaleRewards::Batch => (r - m) / (batch_std + 1e-4),
                    ScaleRewards::None => r - m,
                }
            })
        })
        .collect()
}

/// Mean and unbiased standard deviation (as torch's), for metrics.
pub fn mean_std(xs: &[f64]) -> (f64, f64) {
    (mean(xs), std(xs))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GrpoLoss {
    /// Mean over each sequence's tokens, then over sequences.
    Grpo,
    /// Sum over tokens / (sequences · max_completion_length).
    DrGrpo,
    /// Sum over tokens / all completion tokens of the batch.
    Dapo,
}

/// The clipped-surrogate settings.
#[derive(Debug, Clone, Copy)]
pub struct Surrogate {
    pub epsilon: f64,
    pub epsilon_high: f64,
    /// KL penalty weight against the reference (0: no reference needed).
    pub beta: f64,
    pub loss: GrpoLoss,
    pub max_completion_length: usize,
}

/// One completion's tokens: log-probs under the policy now, when sampled, and under the
/// reference (only read when beta > 0).
pub struct Completion<'a> {
    pub logp: &'a [f64],
    pub old_logp: &'a [f64],
    pub ref_logp: &'a [f64],
    pub advantage: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct GrpoOut {
    pub loss: f64,
    /// d loss / d logp of every token, per completion.
    pub d_logp: Vec<Vec<f64>>,
    /// Share of tokens whose ratio was clipped.
    pub clip_ratio: f64,
    /// Mean per-token KL estimate (k3) against the reference.
    pub kl: f64,
    /// The sums behind the two ratios, to add up over micro-batches.
    pub clipped: usize,
    pub kl_sum: f64,
    pub tokens: usize,
}

/// The size of the whole optimizer step a batch is part of: its loss is normalised over the
/// step, so micro-batches of a gradient-accumulation step add up to the step's loss.
#[derive(Debug, Clone, Copy)]
pub struct Whole {
    pub sequences: usize,
    /// Completion tokens that enter the loss.
    pub tokens: usize,
}

/// GRPO's loss over a batch of completions (TRL's `_compute_loss`), with its derivatives.
pub fn grpo(batch: &[Completion], s: Surrogate) -> GrpoOut {
    let whole = Whole {
        sequences: batch.len(),
        tokens: batch.iter().map(|c| c.logp.len()).sum(),
    };
    grpo_part(batch, s, whole)
}

/// `grpo` for one micro-batch of the step `whole`.
pub fn grpo_part(batch: &[Completion], s: Surrogate, whole: Whole) -> GrpoOut {
    let total_tokens: usize = batch.iter().map(|c| c.logp.len()).sum();
    let (mut loss, mut clipped, mut kl_sum) = (0.0, 0usize, 0.0);
    let mut d = Vec::with_capacity(batch.len());
    for c in batch {
        let n = c.logp.len();
        // The factor this sequence's per-token losses are summed with.
        let norm = match s.loss {
            GrpoLoss::Grpo => 1.0 / (n.max(1) as f64 * whole.sequences.max(1) as f64),
            GrpoLoss::DrGrpo => 1.0 / (whole.sequences.max(1) * s.max_completion_length) as f64,
            GrpoLoss::Dapo => 1.0 / whole.tokens.max(1) as f64,
        };
        let mut dc = Vec::with_capacity(n);
        for t in 0..n {
            let ratio = (c.logp[t] - c.old_logp[t]).exp();
            let a = c.advantage;
            let lo = 1.0 - s.epsilon;
            let hi = 1.0 + s.epsilon_high;
            let clamped = ratio.clamp(lo, hi);
            // -min(r·A, clip(r)·A): the unclipped term is the smaller one unless clipping
            // binds against the advantage's sign; then the gradient through r is zero.
            let (term, dterm_dr) = if ratio * a <= clamped * a {
                (ratio * a, a)
            } else {
                clipped += 1;
                (clamped * a, 0.0)
            };
            let mut tok = -term;
            let mut dtok = -dterm_dr * ratio; // d r / d logp = r
            if s.beta != 0.0 {
                let x = c.ref_logp[t] - c.logp[t];
                let k3 = x.exp() - x - 1.0;
                kl_sum += k3;
                tok += s.beta * k3;
                // d k3 / d logp = -(e^x - 1)
                dtok += s.beta * -(x.exp() - 1.0);
            }
            loss += tok * norm;
            dc.push(dtok * norm);
        }
        d.push(dc);
    }
    GrpoOut {
        loss,
        d_logp: d,
        clip_ratio: clipped as f64 / total_tokens.max(1) as f64,
        kl: kl_sum / total_tokens.max(1) as f64,
        clipped,
        kl_sum,
        tokens: total_tokens,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, what: &str) {
        assert!((a - b).abs() < 1e-9 * (1.0 + b.abs()), "{what}: {a} vs {b}");
    }

    /// A group of 4 with mixed rewards and one function without an opinion on one sample.
    #[test]
    fn rewards_and_advantages_by_hand() {
        // math-answer: 1, 0, None, 1; format: 1, 1, 0, 0 (weight 0.5).
        let scores = vec![
            vec![Some(1.0), Some(0.0), None, Some(1.0)],
            vec![Some(1.0), Some(1.0), Some(0.0), Some(0.0)],
        ];
        let r = total_rewards(&scores, &[1.0, 0.5]);
        assert_eq!(r, vec![1.5, 0.5, 0.0, 1.0]);
        // mean 0.75; deviations 0.75, -0.25, -0.75, 0.25; unbiased std = sqrt(1.25/3).
        let s = (1.25f64 / 3.0).sqrt();
        let a = advantages(&r, 4, ScaleRewards::Group);
        for (got, dev) in a.iter().zip([0.75, -0.25, -0.75, 0.25]) {
            close(*got, dev / (s + 1e-4), "group-scaled");
        }
        assert_eq!(
            advantages(&r, 4, ScaleRewards::None),
            vec![0.75, -0.25, -0.75, 0.25]
        );
        // Two groups of 2: each centred on its own mean, scaled by the batch's std.
        let b = advantages(&r, 2, ScaleRewards::Batch);
        for (got, dev) in b.iter().zip([0.5, -0.5, -0.5, 0.5]) {
            close(*got, dev / (s + 1e-4), "batch-scaled");
        }
        // Identical rewards: zero advantage, no division by zero.
        assert_eq!(
            advantages(&[1.0, 1.0], 2, ScaleRewards::Group),
            vec![0.0, 0.0]
        );
    }

    /// A group of 4 where a reward plugin failed on one completion: it gets advantage 0 and
    /// the other three are normalised among themselves.
    #[test]
    fn a_failed_completion_leaves_its_group_statistics() {
        let r = [1.0, 0.0, 123.0, 1.0];
        let known = [true, true, false, true];
        // Kept: 1, 0, 1 -> mean 2/3, unbiased std sqrt(((1/3)^2 * 2 + (2/3)^2) / 2) = sqrt(1/3).
        let s = (1.0f64 / 3.0).sqrt();
        let a = advantages_known(&r, &known, 4, ScaleRewards::Group);
        let want = [
            1.0 / 3.0 / (s + 1e-4),
            -2.0 / 3.0 / (s + 1e-4),
            0.0,
            1.0 / 3.0 / (s + 1e-4),
        ];
        for (got, w) in a.iter().zip(want) {
            close(*got, w, "known-only advantages");
        }
        // All known: the same as `advantages`.
        assert_eq!(
            advantages_known(&[1.0, 0.0], &[true, true], 2, ScaleRewards::None),
            advantages(&[1.0, 0.0], 2, ScaleRewards::None)
        );
        // A group with one known completion: nothing to compare it with, advantage 0.
        assert_eq!(
            advantages_known(&[5.0, 1.0], &[true, false], 2, ScaleRewards::Group),
            vec![0.0, 0.0]
        );
    }

    #[test]
    fn dpo_losses_by_hand() {
        let p = PairLogps {
            chosen: -10.0,
            rejected: -12.0,
            ref_chosen: -11.0,
            ref_rejected: -11.5,
        };
        // h = (2) - (0.5) = 1.5
        let o = dpo(p, DpoLoss::Sigmoid, 0.1, 0.0);
        close(o.loss, (1.0 + (-0.15f64).exp()).ln(), "sigmoid");
        close(o.reward_chosen, 0.1, "reward chosen");
        close(o.reward_rejected, -0.05, "reward rejected");
        let o = dpo(p, DpoLoss::Ipo, 0.1, 0.0);
        close(o.loss, (1.5f64 - 5.0).powi(2), "ipo");
        let o = dpo(p, DpoLoss::Hinge, 0.1, 0.0);
        close(o.loss, 1.0 - 0.15, "hinge");
        let o = dpo(p, DpoLoss::Hinge, 1.0, 0.0);
        close(o.loss, 0.0, "hinge past the margin");
    }

    #[test]
    fn dpo_derivatives_match_finite_differences() {
        for kind in [DpoLoss::Sigmoid, DpoLoss::Ipo, DpoLoss::Hinge] {
            let p = PairLogps {
                chosen: -10.0,
                rejected: -12.0,
                ref_chosen: -11.0,
                ref_rejected: -11.5,
            };
            let o = dpo(p, kind, 0.1, 0.1);
            let e = 1e-6;
            let f = |c: f64, r: f64| {
                dpo(
                    PairLogps {
                        chosen: c,
                        rejected: r,
                        ..p
                    },
                    kind,
                    0.1,
                    0.1,
                )
                .loss
            };
            close(
                (f(-10.0 + e, -12.0) - f(-10.0 - e, -12.0)) / (2.0 * e),
                o.d_chosen,
                "d chosen",
            );
            let fd = (f(-10.0, -12.0 + e) - f(-10.0, -12.0 - e)) / (2.0 * e);
            assert!(
                (fd - o.d_rejected).abs() < 1e-6,
                "{kind:?}: {fd} vs {}",
                o.d_rejected
            );
        }
    }

    fn batch<'a>(
        lp: &'a [Vec<f64>; 2],
        old: &'a [Vec<f64>; 2],
        rf: &'a [Vec<f64>; 2],
        adv: [f64; 2],
    ) -> Vec<Completion<'a>> {
        (0..2)
            .map(|i| Completion {
                logp: &lp[i],
                old_logp: &old[i],
                ref_logp: &rf[i],
                advantage: adv[i],
            })
            .collect()
    }

    #[test]
    fn grpo_loss_aggregations_and_derivatives() {
        let s = Surrogate {
            epsilon: 0.2,
            epsilon_high: 0.28,
            beta: 0.04,
            loss: GrpoLoss::Grpo,
            max_completion_length: 4,
        };
        let logp = [vec![-1.0, -2.0], vec![-0.5, -0.7, -0.9]];
        let old = [vec![-1.0, -2.5], vec![-0.5, -0.7, -0.4]];
        let rf = [vec![-1.1, -2.0], vec![-0.6, -0.7, -0.9]];
        let adv = [1.0, -1.0];
        for loss in [GrpoLoss::Grpo, GrpoLoss::DrGrpo, GrpoLoss::Dapo] {
            let s = Surrogate { loss, ..s };
            let o = grpo(&batch(&logp, &old, &rf, adv), s);
            // Token 2 of completion 1: ratio e^0.5 = 1.65 > 1.28 with A = 1: clipped.
            // Token 3 of completion 2: ratio e^-0.5 = 0.61 < 0.8 with A = -1: clipped.
            close(o.clip_ratio, 2.0 / 5.0, "clip ratio");
            for i in 0..2 {
                for t in 0..logp[i].len() {
                    let e = 1e-6;
                    let mut up = logp.clone();
                    up[i][t] += e;
                    let mut down = logp.clone();
                    down[i][t] -= e;
                    let fd = (grpo(&batch(&up, &old, &rf, adv), s).loss
                        - grpo(&batch(&down, &old, &rf, adv), s).loss)
                        / (2.0 * e);
                    assert!(
                        (fd - o.d_logp[i][t]).abs() < 1e-6,
                        "{loss:?} [{i}][{t}]: {fd} vs {}",
                        o.d_logp[i][t]
                    );
                }
            }
        }
        // Two micro-batches of one step add up to the step computed at once.
        for loss in [GrpoLoss::Grpo, GrpoLoss::DrGrpo, GrpoLoss::Dapo] {
            let s = Surrogate { loss, ..s };
            let all = batch(&logp, &old, &rf, adv);
            let at_once = grpo(&all, s);
            let whole = Whole {
                sequences: 2,
                tokens: 5,
            };
            let a = grpo_part(&all[..1], s, whole);
            let b = grpo_part(&all[1..], s, whole);
            close(a.loss + b.loss, at_once.loss, "parts add up");
            assert_eq!(a.d_logp[0], at_once.d_logp[0]);
            assert_eq!(b.d_logp[0], at_once.d_logp[1]);
        }
        // By hand, without KL, on-policy (ratio 1): grpo = mean over sequences of -A.
        let on = [vec![-1.0, -2.0], vec![-0.5, -0.7, -0.9]];
        let c: Vec<Completion> = (0..2)
            .map(|i| Completion {
                logp: &on[i],
                old_logp: &on[i],
                ref_logp: &on[i],
                advantage: adv[i],
            })
            .collect();
        let s0 = Surrogate { beta: 0.0, ..s };
        close(grpo(&c, s0).loss, 0.0, "grpo: (-1 + 1) / 2");
        close(
            grpo(
                &c,
                Surrogate {
                    loss: GrpoLoss::DrGrpo,
                    ..s0
                },
            )
            .loss,
            (-2.0 + 3.0) / 8.0,
            "dr_grpo",
        );
        close(
            grpo(
                &c,
                Surrogate {
                    loss: GrpoLoss::Dapo,
                    ..s0
                },
            )
            .loss,
            (-2.0 + 3.0) / 5.0,
            "dapo",
        );
    }
}
