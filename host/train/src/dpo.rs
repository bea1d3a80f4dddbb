//! Direct preference optimisation: (prompt, chosen, rejected) pairs of TRL's preference type,
//! standard or conversational, from any dataset file (LLaMA-Factory's ShareGPT layout too),
//! cut into a shared prompt and two completions as TRL cuts them (loss on the completions). The
//! reference is the starting model: the policy with its LoRA adapters switched off, or a
//! frozen copy; its log-probabilities are computed per batch or once up front and cached.
//! The loss arithmetic is `align::dpo`; its derivatives weight the fused per-token losses.

use crate::align::{self, PairLogps};
use crate::config::DpoSection;
use crate::data::{Batch, Encoder, Sample, Skipped, bad_record};
use crate::dataset::{Item, Record};
use crate::error::Result;
use crate::model::{Pass, TrainModel};
use crate::trainer::{Extra, Micro, Task};
use candle_core::Tensor;

/// A preference pair, tokenized.
#[derive(Debug, Clone)]
pub struct Pair {
    pub chosen: Sample,
    pub rejected: Sample,
}

/// Tokenizes preference records as TRL's DPO does (`Encoder::split_pair`: conversational
/// through the template, standard as plain text with EOS); a pair either side of which is
/// refused is skipped (and counted) or stops the run, as `data.on_bad_example` says.
pub fn encode_pairs(enc: &Encoder, recs: Vec<Record>, skipped: &mut Skipped) -> Result<Vec<Pair>> {
    let mut out = Vec::with_capacity(recs.len());
    for r in recs {
        let Item::Preference {
            prompt,
            chosen,
            rejected,
        } = &r.item
        else {
            let msg = format!(
                "a {} record; DPO reads preference data (`prompt`, `chosen`, `rejected`)",
                r.item.type_name()
            );
            bad_record(&r.at, msg, enc.cfg.on_bad_example, skipped)?;
            continue;
        };
        let (c, j) = enc.split_pair(&r.at, prompt, chosen, rejected, r.tools().as_ref())?;
        if let Some((chosen, rejected)) = enc.encode_pair(&r.at, (&c, &j), skipped)? {
            out.push(Pair { chosen, rejected });
        }
    }
    Ok(out)
}

/// Where reference log-probabilities come from.
pub enum Reference {
    /// Computed once before training: (chosen, rejected) per train pair and per validation pair.
    Cached {
        train: Vec<(f64, f64)>,
        val: Vec<(f64, f64)>,
    },
    /// The policy with adapters off, per batch.
    AdaptersOff,
    /// A frozen copy of the starting model, per batch.
    Copy(Box<TrainModel>),
}

pub struct DpoTask<'a> {
    pub train: &'a [Pair],
    pub val: &'a [Pair],
    pub reference: Reference,
    pub cfg: DpoSection,
    pub pad: u32,
}

/// The batch of `pairs` (chosen rows first, then rejected) and its per-position losses.
fn forward(model: &TrainModel, pairs: &[&Pair], pad: u32, pass: &Pass) -> Result<(Tensor, Batch)> {
    let rows: Vec<&Sample> = pairs
        .iter()
        .map(|p| &p.chosen)
        .chain(pairs.iter().map(|p| &p.rejected))
        .collect();
    let b = Batch::from_samples(&rows, pad);
    let losses = model.batch_losses(&b, pass, 1.0)?;
    Ok((losses, b))
}

/// Sequence log-probabilities (chosen, rejected) per pair from per-position losses.
fn seq_logps(losses: &Tensor, b: &Batch, n: usize) -> Result<Vec<(f64, f64)>> {
    let rows = losses
        .detach()
        .reshape((b.b, b.t))?
        .sum(1)?
        .to_vec1::<f32>()?;
    Ok((0..n)
        .map(|i| (-(rows[i] as f64), -(rows[n + i] as f64)))
        .collect())
}

/// Reference log-probabilities of `pairs` under `reference` (no gradient).
pub fn reference_logps(
    policy: &TrainModel,
    reference: &Reference,
    pairs: &[&Pair],
    pad: u32,
) -> Result<Vec<(f64, f64)>> {
    let (model, adapters) = match reference {
        Reference::Copy(m) => (&**m, true),
        _ => (policy, false),
    };
    let pass = Pass {
        adapters,
        ..Pass::eval(model)
    };
    let (losses, b) = forward(model, pairs, pad, &pass)?;
    seq_logps(&losses, &b, pairs.len())
}

impl DpoTask<'_> {
    fn refs(&self, model: &TrainModel, items: &[usize], val: bool) -> Result<Vec<(f64, f64)>> {
        match &self.reference {
            Reference::Cached { train, val: v } => Ok(items
                .iter()
                .map(|&i| if val { v[i] } else { train[i] })
                .collect()),
            r => {
                let set = if val { self.val } else { self.train };
                let pairs: Vec<&Pair> = items.iter().map(|&i| &set[i]).collect();
                reference_logps(model, r, &pairs, self.pad)
            }
        }
    }

    /// Loss and metric sums of pairs with policy and reference log-probs.
    fn score(&self, pol: &[(f64, f64)], refs: &[(f64, f64)]) -> (Vec<align::DpoOut>, Extra) {
        let outs: Vec<align::DpoOut> = pol
            .iter()
            .zip(refs)
            .map(|(&(c, r), &(rc, rr))| {
                align::dpo(
                    PairLogps {
                        chosen: c,
                        rejected: r,
                        ref_chosen: rc,
                        ref_rejected: rr,
                    },
                    self.cfg.loss_type,
                    self.cfg.beta,
                    self.cfg.label_smoothing,
                )
            })
            .collect();
        let mut extra = Extra::new();
        for o in &outs {
            *extra.entry("rewards_chosen".into()).or_default() += o.reward_chosen;
            *extra.entry("rewards_rejected".into()).or_default() += o.reward_rejected;
            *extra.entry("rewards_margin".into()).or_default() +=
                o.reward_chosen - o.reward_rejected;
            *extra.entry("rewards_accuracy".into()).or_default() +=
                if o.reward_chosen > o.reward_rejected {
                    1.0
                } else {
                    0.0
                };
        }
        (outs, extra)
    }
}

impl Task for DpoTask<'_> {
    fn len(&self) -> usize {
        self.train.len()
    }
    fn item_len(&self, i: usize) -> usize {
        self.train[i]
            .chosen
            .ids
            .len()
            .max(self.train[i].rejected.ids.len())
    }
    fn norm(&self, micro: &[Vec<usize>]) -> f64 {
        micro.iter().map(|m| m.len()).sum::<usize>().max(1) as f64
    }
    fn micro(&self, model: &TrainModel, items: &[usize], norm: f64, pass: &Pass) -> Result<Micro> {
        let refs = self.refs(model, items, false)?;
        let pairs: Vec<&Pair> = items.iter().map(|&i| &self.train[i]).collect();
        let (losses, b) = forward(model, &pairs, self.pad, pass)?;
        let pol = seq_logps(&losses, &b, pairs.len())?;
        let (outs, mut extra) = self.score(&pol, &refs);
        // d loss / d token NLL = -(d loss / d sequence log-prob), the same for every token of
        // a row (padding and prompt positions carry zero loss, so their weight is moot).
        let n = pairs.len();
        let mut coef = Vec::with_capacity(b.b * b.t);
        for row in 0..b.b {
            let d = if row < n {
                outs[row].d_chosen
            } else {
                outs[row - n].d_rejected
            };
            coef.extend(std::iter::repeat_n((-d / norm) as f32, b.t));
        }
        let coef = Tensor::from_vec(coef, b.b * b.t, losses.device())?;
        let grads = (losses * coef)?.sum_all()?.backward()?;
        extra.values_mut().for_each(|v| *v /= norm);
        Ok(Micro {
            loss: outs.iter().map(|o| o.loss).sum::<f64>() / norm,
            tokens: b.real_tokens(),
            extra,
            grads,
        })
    }
    fn evaluate(&self, model: &TrainModel, batch: usize) -> Result<Option<(Option<f64>, Extra)>> {
        if self.val.is_empty() {
            return Ok(None);
        }
        let (mut loss, mut extra) = (0.0, Extra::new());
        let all: Vec<usize> = (0..self.val.len()).collect();
        for items in all.chunks(batch) {
            let refs = self.refs(model, items, true)?;
            let pairs: Vec<&Pair> = items.iter().map(|&i| &self.val[i]).collect();
            let (losses, b) = forward(model, &pairs, self.pad, &Pass::eval(model))?;
            let (outs, e) = self.score(&seq_logps(&losses, &b, pairs.len())?, &refs);
            loss += outs.iter().map(|o| o.loss).sum::<f64>();
            for (k, v) in e {
                *extra.entry(format!("eval_{k}")).or_default() += v;
            }
        }
        let n = self.val.len() as f64;
        extra.values_mut().for_each(|v| *v /= n);
        Ok(Some((Some(loss / n), extra)))
    }
}
