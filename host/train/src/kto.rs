//! Kahneman-Tversky optimisation (Ethayarajh et al., 2024) as TRL's KTOTrainer defines it:
//! unpaired (prompt, completion, desirable?) examples — TRL's unpaired preference type, or
//! preference pairs split into one desirable and one undesirable example. Each completion's
//! implied reward r = log pi(y|x) - log ref(y|x) is compared with a reference point z, the
//! KL estimate mean(log pi(y'|x) - log ref(y'|x)) over mismatched pairs — each prompt of the
//! micro-batch with the previous example's completion, as TRL rotates them — clamped at 0
//! and not differentiated. Losses: desirable `1 - sigmoid(beta (r - z))`, undesirable
//! `1 - sigmoid(beta (z - r))`, weighted, averaged over the batch. `apo_zero_unpaired` drops
//! the reference point. The loss weights the fused per-token losses, as DPO's does.

use crate::config::KtoSection;
use crate::data::{Batch, Encoder, Sample, Skipped, Split, bad_record};
use crate::dataset::{Item, Record};
use crate::error::Result;
use crate::model::{Pass, TrainModel};
use crate::trainer::{Extra, Micro, Task};
use candle_core::Tensor;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KtoLoss {
    /// Eq. 7 of the KTO paper, with the KL reference point.
    Kto,
    /// The unpaired APO-zero loss: no reference point.
    ApoZeroUnpaired,
}

/// One example, tokenized: the prompt's tokens and the completion's (the sequence is their
/// concatenation, held to `max_length`).
#[derive(Debug, Clone)]
pub struct KtoExample {
    pub prompt: Vec<u32>,
    pub completion: Vec<u32>,
    pub desirable: bool,
}

/// Tokenizes unpaired examples (a preference pair gives one of each, as TRL's
/// `unpair_preference_dataset` does); bad ones are skipped and counted or stop the run.
pub fn encode(enc: &Encoder, recs: Vec<Record>, skipped: &mut Skipped) -> Result<Vec<KtoExample>> {
    let mut out = Vec::with_capacity(recs.len());
    for r in recs {
        let parts = match &r.item {
            Item::Unpaired {
                prompt,
                completion,
                label,
            } => vec![(
                enc.split(&r.at, prompt, completion, r.tools().as_ref())?,
                *label,
            )],
            Item::Preference {
                prompt,
                chosen,
                rejected,
            } => vec![
                (enc.split(&r.at, prompt, chosen, r.tools().as_ref())?, true),
                (
                    enc.split(&r.at, prompt, rejected, r.tools().as_ref())?,
                    false,
                ),
            ],
            other => {
                let msg = format!(
                    "a {} record; KTO reads unpaired preference data (`prompt`, `completion`, `label`) or preference pairs",
                    other.type_name()
                );
                bad_record(&r.at, msg, enc.cfg.on_bad_example, skipped)?;
                continue;
            }
        };
        for (split, desirable) in parts {
            // The policy decides about length and emptiness as for any example.
            if enc.encode_split(&r.at, &split, skipped)?.is_some() {
                let Split { prompt, completion } = split;
                out.push(KtoExample {
                    prompt,
                    completion,
                    desirable,
                });
            }
        }
    }
    Ok(out)
}

/// Where reference log-probabilities come from.
pub enum Reference {
    /// The policy with its adapters off.
    AdaptersOff,
    /// A frozen copy of the starting model.
    Copy(Box<TrainModel>),
}

pub struct KtoTask<'a> {
    pub train: &'a [KtoExample],
    pub val: &'a [KtoExample],
    pub reference: Reference,
    pub cfg: KtoSection,
    pub pad: u32,
    pub max_length: usize,
}

/// The loss of one example and its derivative by the policy's sequence log-probability.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct KtoOut {
    pub loss: f64,
    pub d_logp: f64,
    pub reward: f64,
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// The KTO loss of an example with policy and reference log-probabilities `logp`,
/// `ref_logp`, given the batch's reference point `kl` (0 for `apo_zero_unpaired`).
pub fn kto(logp: f64, ref_logp: f64, desirable: bool, kl: f64, c: &KtoSection) -> KtoOut {
    let r = logp - ref_logp;
    let kl = if c.loss_type == KtoLoss::Kto { kl } else { 0.0 };
    // desirable: 1 - s(beta (r - z)); undesirable: 1 - s(beta (z - r)) (apo: s(beta r)).
    let (x, sign, w) = if desirable {
        (c.beta * (r - kl), 1.0, c.desirable_weight)
    } else {
        (c.beta * (kl - r), -1.0, c.undesirable_weight)
    };
    let s = sigmoid(x);
    KtoOut {
        loss: w * (1.0 - s),
        // d(1 - s(x))/dr = -s(1-s) dx/dr, dx/dr = sign * beta.
        d_logp: -w * s * (1.0 - s) * sign * c.beta,
        reward: c.beta * r,
    }
}

/// The mismatched (KL) sequence of example `k` of `items`: its prompt with the previous
/// example's completion (the last one's for the first), as TRL rotates them.
fn kl_sample(set: &[KtoExample], items: &[usize], k: usize, max_length: usize) -> Sample {
    let other = &set[items[(k + items.len() - 1) % items.len()]];
    join(&set[items[k]].prompt, &other.completion, max_length)
}

fn sample(e: &KtoExample, max_length: usize) -> Sample {
    join(&e.prompt, &e.completion, max_length)
}

/// `prompt ++ completion`, loss on the completion, cut to `max_length`.
fn join(prompt: &[u32], completion: &[u32], max_length: usize) -> Sample {
    let mut ids = [prompt, completion].concat();
    let mut train = vec![false; prompt.len()];
    train.resize(ids.len(), true);
    ids.truncate(max_length);
    train.truncate(max_length);
    Sample { ids, train }
}

/// Sequence log-probabilities of `rows` (completion tokens summed) and the per-position
/// losses they came from.
fn logps(
    model: &TrainModel,
    rows: &[Sample],
    pad: u32,
    pass: &Pass,
) -> Result<(Tensor, Batch, Vec<f64>)> {
    let refs: Vec<&Sample> = rows.iter().collect();
    let b = Batch::from_samples(&refs, pad);
    let losses = model.batch_losses(&b, pass, 1.0)?;
    let sums = losses
        .detach()
        .reshape((b.b, b.t))?
        .sum(1)?
        .to_vec1::<f32>()?
        .into_iter()
        .map(|x| -(x as f64))
        .collect();
    Ok((losses, b, sums))
}

/// What a batch's examples scored.
struct Scored {
    outs: Vec<KtoOut>,
    kl: f64,
}

impl KtoTask<'_> {
    fn needs_kl(&self) -> bool {
        self.cfg.loss_type == KtoLoss::Kto
    }

    /// Reference log-probabilities of the rows (no gradient).
    fn reference(&self, model: &TrainModel, rows: &[Sample]) -> Result<Vec<f64>> {
        let (m, adapters) = match &self.reference {
            Reference::Copy(m) => (&**m, true),
            Reference::AdaptersOff => (model, false),
        };
        let pass = Pass {
            adapters,
            ..Pass::eval(m)
        };
        Ok(logps(m, rows, self.pad, &pass)?.2)
    }

    /// The batch's reference point: mean policy-minus-reference log-ratio of the mismatched
    /// sequences, clamped at 0 (TRL's `kl`), computed without gradient.
    fn kl(
        &self,
        model: &TrainModel,
        set: &[KtoExample],
        items: &[usize],
        pass: &Pass,
    ) -> Result<f64> {
        if !self.needs_kl() {
            return Ok(0.0);
        }
        let rows: Vec<Sample> = (0..items.len())
            .map(|k| kl_sample(set, items, k, self.max_length))
            .collect();
        let pol = logps(model, &rows, self.pad, pass)?.2;
        let refs = self.reference(model, &rows)?;
        let mean = pol.iter().zip(&refs).map(|(p, r)| p - r).sum::<f64>() / rows.len() as f64;
        Ok(mean.max(0.0))
    }

    fn score(
        &self,
        set: &[KtoExample],
        items: &[usize],
        pol: &[f64],
        refs: &[f64],
        kl: f64,
    ) -> Scored {
        let outs = items
            .iter()
            .zip(pol.iter().zip(refs))
            .map(|(&i, (&p, &r))| kto(p, r, set[i].desirable, kl, &self.cfg))
            .collect();
        Scored { outs, kl }
    }

    /// Metric sums of a batch (`finish_step` and `evaluate` turn them into means).
    fn sums(
        &self,
        set: &[KtoExample],
        items: &[usize],
        s: &Scored,
        pol: &[f64],
        extra: &mut Extra,
        prefix: &str,
    ) {
        let mut add = |k: &str, v: f64| *extra.entry(format!("{prefix}{k}")).or_default() += v;
        add("kl", s.kl);
        add("n_batches", 1.0);
        for ((&i, o), &p) in items.iter().zip(&s.outs).zip(pol) {
            let side = if set[i].desirable {
                "chosen"
            } else {
                "rejected"
            };
            add(&format!("rewards_{side}"), o.reward);
            add(&format!("logps_{side}"), p);
            add(&format!("n_{side}"), 1.0);
        }
    }
}

/// Sums to means: the reference point per batch, rewards and log-probabilities per example
/// of each side, and the margin where both sides were seen.
fn means(extra: &mut Extra, prefix: &str) {
    let mut take = |k: &str| extra.remove(&format!("{prefix}{k}")).unwrap_or(0.0);
    let (kl, nb) = (take("kl"), take("n_batches"));
    let (rc, lc, nc) = (
        take("rewards_chosen"),
        take("logps_chosen"),
        take("n_chosen"),
    );
    let (rr, lr, nr) = (
        take("rewards_rejected"),
        take("logps_rejected"),
        take("n_rejected"),
    );
    if nb > 0.0 {
        extra.insert(format!("{prefix}kl"), kl / nb);
    }
    if nc > 0.0 {
        extra.insert(format!("{prefix}rewards_chosen"), rc / nc);
        extra.insert(format!("{prefix}logps_chosen"), lc / nc);
    }
    if nr > 0.0 {
        extra.insert(format!("{prefix}rewards_rejected"), rr / nr);
        extra.insert(format!("{prefix}logps_rejected"), lr / nr);
    }
    if nc > 0.0 && nr > 0.0 {
        extra.insert(format!("{prefix}rewards_margin"), rc / nc - rr / nr);
    }
}

impl Task for KtoTask<'_> {
    fn len(&self) -> usize {
        self.train.len()
    }
    fn item_len(&self, i: usize) -> usize {
        self.train[i].prompt.len() + self.train[i].completion.len()
    }
    /// Examples per step: each micro-batch's mean loss weighs by its share, as a Trainer
    /// with gradient accumulation averages equal micro-batches.
    fn norm(&self, micro: &[Vec<usize>]) -> f64 {
        micro.iter().map(|m| m.len()).sum::<usize>().max(1) as f64
    }
    fn micro(&self, model: &TrainModel, items: &[usize], norm: f64, pass: &Pass) -> Result<Micro> {
        let rows: Vec<Sample> = items
            .iter()
            .map(|&i| sample(&self.train[i], self.max_length))
            .collect();
        let kl = self.kl(model, self.train, items, pass)?;
        let refs = self.reference(model, &rows)?;
        let (losses, b, pol) = logps(model, &rows, self.pad, pass)?;
        let s = self.score(self.train, items, &pol, &refs, kl);
        // d loss / d token NLL = -(d loss / d sequence log-prob) for each token of a row.
        let mut coef = Vec::with_capacity(b.b * b.t);
        for o in &s.outs {
            coef.extend(std::iter::repeat_n((-o.d_logp / norm) as f32, b.t));
        }
        let coef = Tensor::from_vec(coef, b.b * b.t, losses.device())?;
        let grads = (losses * coef)?.sum_all()?.backward()?;
        let mut extra = Extra::new();
        self.sums(self.train, items, &s, &pol, &mut extra, "");
        Ok(Micro {
            loss: s.outs.iter().map(|o| o.loss).sum::<f64>() / norm,
            tokens: b.real_tokens(),
            extra,
            grads,
        })
    }
    fn finish_step(&self, extra: &mut Extra) {
        means(extra, "");
    }
    fn evaluate(&self, model: &TrainModel, batch: usize) -> Result<Option<(Option<f64>, Extra)>> {
        if self.val.is_empty() {
            return Ok(None);
        }
        let (mut loss, mut extra) = (0.0, Extra::new());
        let all: Vec<usize> = (0..self.val.len()).collect();
        let pass = Pass::eval(model);
        for items in all.chunks(batch.max(2)) {
            let rows: Vec<Sample> = items
                .iter()
                .map(|&i| sample(&self.val[i], self.max_length))
                .collect();
            let kl = self.kl(model, self.val, items, &pass)?;
            let refs = self.reference(model, &rows)?;
            let pol = logps(model, &rows, self.pad, &pass)?.2;
            let s = self.score(self.val, items, &pol, &refs, kl);
            loss += s.outs.iter().map(|o| o.loss).sum::<f64>();
            self.sums(self.val, items, &s, &pol, &mut extra, "eval_");
        }
        means(&mut extra, "eval_");
        Ok(Some((Some(loss / self.val.len() as f64), extra)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(loss_type: KtoLoss) -> KtoSection {
        KtoSection {
            beta: 0.1,
            loss_type,
            desirable_weight: 1.0,
            undesirable_weight: 1.33,
            ..Default::default()
        }
    }

    #[test]
    fn losses_by_hand_and_derivatives_by_finite_differences() {
        let c = cfg(KtoLoss::Kto);
        // r = 2, z = 0.5: desirable 1 - s(0.15); undesirable 1.33 (1 - s(-0.15)).
        let o = kto(-10.0, -12.0, true, 0.5, &c);
        assert!((o.loss - (1.0 - sigmoid(0.15))).abs() < 1e-12);
        assert!((o.reward - 0.2).abs() < 1e-12);
        let u = kto(-10.0, -12.0, false, 0.5, &c);
        assert!((u.loss - 1.33 * (1.0 - sigmoid(-0.15))).abs() < 1e-12);
        for c in [cfg(KtoLoss::Kto), cfg(KtoLoss::ApoZeroUnpaired)] {
            for d in [true, false] {
                let h = 1e-6;
                let f = |x: f64| kto(x, -12.0, d, 0.5, &c).loss;
                let num = (f(-10.0 + h) - f(-10.0 - h)) / (2.0 * h);
                let an = kto(-10.0, -12.0, d, 0.5, &c).d_logp;
                assert!((num - an).abs() < 1e-8, "{d}: {num} vs {an}");
            }
        }
        // apo_zero_unpaired ignores the reference point.
        let a = cfg(KtoLoss::ApoZeroUnpaired);
        assert_eq!(
            kto(-10.0, -12.0, true, 0.5, &a),
            kto(-10.0, -12.0, true, 0.0, &a)
        );
    }

    #[test]
    fn the_kl_sequences_rotate_completions_within_the_batch() {
        let ex = |p: u32, c: u32| KtoExample {
            prompt: vec![p, p],
            completion: vec![c],
            desirable: true,
        };
        let set = vec![ex(1, 10), ex(2, 20), ex(3, 30)];
        let items = [2, 0, 1];
        let ids: Vec<Vec<u32>> = (0..3).map(|k| kl_sample(&set, &items, k, 8).ids).collect();
        // (x_3, y_2), (x_1, y_3), (x_2, y_1): each prompt with the previous example's answer.
        assert_eq!(ids, vec![vec![3, 3, 20], vec![1, 1, 30], vec![2, 2, 10]]);
    }
}
