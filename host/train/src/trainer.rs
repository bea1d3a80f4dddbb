//! The training loop every objective shares: seeded batches, gradient accumulation with the
//! loss normalised over the whole optimizer step (as one big batch would be), clipping, the
//! schedule, in-place updates, validation, metrics.jsonl, atomic checkpoints and resume. What
//! a micro-batch computes is a `Task`: supervised token loss here (SFT, pre-training), the
//! preference loss in `dpo`, the policy-gradient loss over sampled completions in `grpo`
//! (whose rollouts happen in the task's `prepare_step`, before the step's micro-batches).
//! It reports through `Observer` and `tracing`; it never prints.
//!
//! Data-parallel (a `dist::Collective` group): `training.batch_size` is per rank, so a step's
//! micro-batch is `batch_size x world` items of which each rank trains its slice; the loss is
//! normalised over the whole step on every rank, the gradients summed across ranks before
//! clipping, so a run of W ranks takes the steps of one process with W times the batch.
//! On the CPU the sums of a step's last micro-batch overlap its backward pass (`overlap`).
//! Rank 0 alone writes metrics, evaluations and checkpoints.

use crate::checkpoint::{self, State};
use crate::config::TrainConfig;
use crate::data::{Batch, Sample, epoch_order};
use crate::error::{Result, TrainError, file_err};
use crate::model::{Pass, TrainModel};
use crate::optim::{Optimizer, lr_at};
use candle_core::backprop::GradStore;
use serde::Serialize;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(Debug, Clone, Serialize)]
pub struct StepMetrics {
    pub step: usize,
    pub epoch: f64,
    pub loss: f64,
    pub lr: f64,
    pub grad_norm: f64,
    /// Tokens (non-padding inputs) in this step.
    pub tokens: usize,
    pub tokens_per_s: f64,
    pub elapsed_s: f64,
    /// The task's own metrics (DPO: rewards, margins, accuracy).
    #[serde(flatten)]
    pub extra: Extra,
}

#[derive(Debug, Clone, Serialize)]
pub struct EvalMetrics {
    pub step: usize,
    /// None where the objective has no held-out loss (GRPO reports held-out rewards).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eval_loss: Option<f64>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// Named metrics beside the loss.
pub type Extra = BTreeMap<String, f64>;

/// One micro-batch's forward and backward pass.
pub struct Micro {
    /// This micro-batch's share of the step's loss (already divided by the step's norm).
    pub loss: f64,
    /// Real (non-padding) tokens processed.
    pub tokens: usize,
    /// Metrics, each already divided by the step's norm (they add up to step means).
    pub extra: Extra,
    pub grads: GradStore,
}

/// What an objective computes on lists of items (token sequences, preference pairs).
pub trait Task {
    /// Items in the training set.
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// An item's length in tokens (for `group_by_length`).
    fn item_len(&self, i: usize) -> usize;
    /// What a step's loss is divided by, given its micro-batches (label tokens, pairs).
    fn norm(&self, micro: &[Vec<usize>]) -> f64;
    /// Forward and backward over `items`, the loss divided by `norm`.
    fn micro(&self, model: &TrainModel, items: &[usize], norm: f64, pass: &Pass) -> Result<Micro>;
    /// Validation loss (where the objective has one) and metrics; None without a validation set.
    fn evaluate(&self, model: &TrainModel, batch: usize) -> Result<Option<(Option<f64>, Extra)>>;
    /// Items in a micro-batch of `batch_size` (GRPO: prompts, each sampled into a group).
    fn batch_items(&self, batch_size: usize) -> usize {
        batch_size
    }
    /// The data position of optimizer step `step` (GRPO reuses one batch of rollouts for
    /// `num_iterations` steps).
    fn data_step(&self, step: usize) -> usize {
        step
    }
    /// Called once before the loop with the step it starts from (0, or the resumed one).
    fn start(&self, _step: usize) -> Result<()> {
        Ok(())
    }
    /// Work before step `step`'s micro-batches (GRPO's rollouts and rewards); its metrics
    /// join the step's.
    fn prepare_step(
        &self,
        _model: &TrainModel,
        _step: usize,
        _micros: &[Vec<usize>],
    ) -> Result<Extra> {
        Ok(Extra::new())
    }
    /// Turns the step's summed metrics into their final form (rates from sums).
    fn finish_step(&self, _extra: &mut Extra) {}
}

/// Supervised token loss: SFT and pre-training.
pub struct SftTask<'a> {
    pub train: &'a [Sample],
    pub val: &'a [Sample],
    pub pad: u32,
}

fn label_tokens(s: &Sample) -> usize {
    s.train.iter().skip(1).filter(|&&t| t).count()
}

impl Task for SftTask<'_> {
    fn len(&self) -> usize {
        self.train.len()
    }
    fn item_len(&self, i: usize) -> usize {
        self.train[i].ids.len()
    }
    fn norm(&self, micro: &[Vec<usize>]) -> f64 {
        micro
            .iter()
            .flatten()
            .map(|&i| label_tokens(&self.train[i]))
            .sum::<usize>()
            .max(1) as f64
    }
    fn micro(&self, model: &TrainModel, items: &[usize], norm: f64, pass: &Pass) -> Result<Micro> {
        let picks: Vec<&Sample> = items.iter().map(|&i| &self.train[i]).collect();
        let b = Batch::from_samples(&picks, self.pad);
        let losses = model.batch_losses(&b, pass, 1.0)?;
        let sum = losses.sum_all()?;
        let loss = sum.to_scalar::<f32>()? as f64 / norm;
        let grads = (sum / norm)?.backward()?;
        Ok(Micro {
            loss,
            tokens: b.real_tokens(),
            extra: Extra::new(),
            grads,
        })
    }
    fn evaluate(&self, model: &TrainModel, batch: usize) -> Result<Option<(Option<f64>, Extra)>> {
        if self.val.is_empty() {
            return Ok(None);
        }
        let (mut nll, mut tokens) = (0f64, 0usize);
        for chunk in self.val.chunks(batch) {
            let refs: Vec<&Sample> = chunk.iter().collect();
            let b = Batch::from_samples(&refs, self.pad);
            let pass = Pass::eval(model);
            let losses = model.batch_losses(&b, &pass, 1.0)?.detach();
            nll += losses.sum_all()?.to_scalar::<f32>()? as f64;
            tokens += b.label_tokens();
        }
        let extra = Extra::from([("eval_tokens".to_string(), tokens as f64)]);
        Ok(Some((Some(nll / tokens.max(1) as f64), extra)))
    }
}

/// Hooks for whoever drives the loop (the CLI shows a progress bar).
pub trait Observer {
    fn start(&mut self, _done: usize, _total: usize) {}
    fn step(&mut self, _m: &StepMetrics) {}
    fn eval(&mut self, _m: &EvalMetrics) {}
    fn checkpoint(&mut self, _path: &Path) {}
    /// Asked after each step, once its metrics, evaluation and checkpoint are done: a reason
    /// ends the run there, after a checkpoint (a recipe's `next-stage` or `stop`).
    fn end_requested(&mut self) -> Option<String> {
        None
    }
}

pub struct NoObserver;
impl Observer for NoObserver {}

pub struct Trainer<'a> {
    pub cfg: &'a TrainConfig,
    pub model: &'a TrainModel,
    pub task: &'a dyn Task,
    pub out_dir: PathBuf,
    pub config_digest: String,
    /// The data-parallel group, when this process is one rank of several.
    pub group: std::cell::RefCell<Option<Box<dyn crate::dist::Collective>>>,
    /// What the group's sums overlapped with the backward pass learn from step to step.
    pub overlap: std::cell::RefCell<crate::overlap::Overlap>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub steps: usize,
    pub first_loss: Option<f64>,
    pub last_loss: Option<f64>,
    pub first_eval_loss: Option<f64>,
    pub last_eval_loss: Option<f64>,
    pub tokens: u64,
    pub tokens_per_s: f64,
    pub resumed_from: Option<usize>,
    /// Why the run ended before its last step, when the observer asked it to.
    pub ended_early: Option<String>,
}

impl Trainer<'_> {
    /// (rank, world size).
    fn place(&self) -> (usize, usize) {
        self.group
            .borrow()
            .as_ref()
            .map_or((0, 1), |g| (g.rank(), g.world_size()))
    }

    /// Items in one micro-batch over all ranks.
    fn batch_items(&self) -> usize {
        self.task.batch_items(self.cfg.training.batch_size).max(1) * self.place().1
    }

    fn batches_per_epoch(&self) -> usize {
        self.task.len().div_ceil(self.batch_items())
    }

    pub fn steps_per_epoch(&self) -> usize {
        (self.batches_per_epoch() / self.cfg.training.gradient_accumulation_steps).max(1)
    }

    pub fn total_steps(&self) -> usize {
        self.cfg
            .training
            .max_steps
            .unwrap_or(self.cfg.training.epochs * self.steps_per_epoch())
    }

    /// The micro-batch `micro` (0-based over the whole run): a function of (seed, position).
    fn micro_items(&self, micro: usize) -> Vec<usize> {
        let t = &self.cfg.training;
        let n = self.task.len();
        let bs = self.batch_items();
        let per_epoch = self.steps_per_epoch() * t.gradient_accumulation_steps;
        let (epoch, j) = (micro / per_epoch, micro % per_epoch);
        let mut order = epoch_order(n, self.cfg.data_seed(), epoch, self.cfg.data.shuffle);
        if self.cfg.data.group_by_length {
            let lens: Vec<usize> = (0..n).map(|i| self.task.item_len(i)).collect();
            let seed = galley_core::seed::derive_seed(
                self.cfg.data_seed(),
                &[galley_core::seed::purpose::GROUP_BY_LENGTH, epoch as u64],
            );
            order = group_by_length(order, &lens, bs, seed);
        }
        let start = (j * bs) % n;
        (0..bs).map(|i| order[(start + i) % n]).collect()
    }

    fn evaluate(&self, step: usize) -> Result<Option<EvalMetrics>> {
        if self.place().0 != 0 {
            return Ok(None);
        }
        Ok(self
            .task
            .evaluate(self.model, self.cfg.training.batch_size)?
            .map(|(eval_loss, extra)| EvalMetrics {
                step,
                eval_loss,
                extra,
            }))
    }

    /// Runs (or resumes) the loop.
    /// Where the run starts: step 0 (refusing a folder that holds another run's
    /// checkpoints), or the newest checkpoint when resuming (its config must be this one);
    /// also returns the step resumed from.
    fn restore(
        &self,
        resume: bool,
        opt: &mut Optimizer,
        total: usize,
    ) -> Result<(State, Option<usize>)> {
        let ck_dir = self.out_dir.join("checkpoints");
        let metrics_path = self.out_dir.join("metrics.jsonl");
        if !resume && !checkpoint::list(&ck_dir).is_empty() {
            return Err(file_err(
                &ck_dir,
                "holds checkpoints of an earlier run: add --resume to continue it, or pick another training.output_dir",
            ));
        }
        let latest = if resume {
            checkpoint::list(&ck_dir).pop()
        } else {
            None
        };
        let Some((_, ck)) = latest else {
            if resume {
                tracing::info!(
                    "--resume: no checkpoint in {}, starting afresh",
                    ck_dir.display()
                );
            }
            if self.place().0 == 0 {
                let _ = std::fs::remove_file(&metrics_path);
            }
            self.task.start(0)?;
            let fresh = State {
                step: 0,
                total_steps: total,
                optimizer_t: 0,
                tokens: 0,
                config_digest: self.config_digest.clone(),
            };
            return Ok((fresh, None));
        };
        let state = checkpoint::load(&ck, &self.model.trainable, opt)?;
        if state.config_digest != self.config_digest {
            return Err(file_err(
                &ck,
                "was written under a different config; resume with the same one (or start a new output_dir)",
            ));
        }
        if self.place().0 == 0 {
            truncate_metrics(&metrics_path, state.step)?;
        }
        self.task.start(state.step)?;
        tracing::info!("resuming from {} (step {})", ck.display(), state.step);
        let step = state.step;
        Ok((state, Some(step)))
    }

    /// One optimizer step from step `step`: the task's preparation (GRPO's rollouts), the
    /// forward and backward pass of every micro-batch, clipping and the update at `lr`.
    /// Returns the loss, the tokens trained on, the task's metrics and the gradient norm.
    fn step(&self, step: usize, opt: &mut Optimizer, lr: f64) -> Result<(f64, usize, Extra, f64)> {
        let t = &self.cfg.training;
        let params = &self.model.trainable;
        let accum = t.gradient_accumulation_steps;
        let at = self.task.data_step(step);
        let micros: Vec<Vec<usize>> = (0..accum)
            .map(|m| self.micro_items(at * accum + m))
            .collect();
        let mut extra = self
            .task
            .prepare_step(self.model, step, &micros)
            .map_err(|e| {
                let kept = match checkpoint::list(&self.out_dir.join("checkpoints")).pop() {
                    Some((_, ck)) => format!("the last checkpoint, {}, is intact", ck.display()),
                    None => "no checkpoint had been written yet".into(),
                };
                TrainError::Stopped(format!("at step {}: {e}; {kept}", step + 1))
            })?;
        let norm = self.task.norm(&micros);
        // This rank's slice of each micro-batch (the norm above is the whole step's).
        let (rank, world) = self.place();
        let micros: Vec<Vec<usize>> = micros
            .iter()
            .map(|g| g.chunks(g.len() / world).nth(rank).unwrap_or(&[]).to_vec())
            .collect();
        let (mut loss, mut tokens) = (0f64, 0usize);
        let mut group = self.group.borrow_mut();
        // The step's last backward pass makes the gradients final: on the CPU its buffers are
        // summed across the ranks bucket by bucket while it runs.
        let overlap = group.is_some() && opt.on_host() && crate::overlap::enabled();
        let mut summed = None;
        for (m, items) in micros.iter().enumerate() {
            let mut streams = vec![
                galley_core::seed::purpose::DROPOUT,
                (step * accum + m) as u64,
            ];
            if world > 1 {
                streams.push(rank as u64);
            }
            let pass = Pass {
                kernels: self.model.kernels,
                train: true,
                adapters: true,
                seed: galley_core::seed::derive_seed(t.seed, &streams),
            };
            let out = match group.as_mut() {
                Some(g) if overlap && m + 1 == micros.len() => {
                    let (out, s) = self.overlap.borrow_mut().run(
                        params,
                        g.as_mut(),
                        || self.task.micro(self.model, items, norm, &pass),
                        |out| opt.accumulate(params, &out.grads),
                    )?;
                    summed = Some(s);
                    out
                }
                _ => {
                    let out = self.task.micro(self.model, items, norm, &pass)?;
                    opt.accumulate(params, &out.grads)?;
                    out
                }
            };
            loss += out.loss;
            tokens += out.tokens;
            for (k, v) in out.extra {
                *extra.entry(k).or_default() += v;
            }
        }
        if let Some(g) = group.as_mut() {
            match summed {
                // The share of the gradients summed before the backward pass ended (rank 0's).
                Some(s) => {
                    extra.insert(
                        "allreduce_overlap".into(),
                        s.early as f64 / s.total.max(1) as f64,
                    );
                }
                None => opt.all_reduce(params, g.as_mut())?,
            }
            let mut sums = [loss, tokens as f64];
            g.all_reduce_f64(&mut sums)?;
            (loss, tokens) = (sums[0], sums[1] as usize);
        }
        let grad_norm = opt.clip(params, t.max_grad_norm)?;
        opt.step(params, lr)?;
        self.task.finish_step(&mut extra);
        Ok((loss, tokens, extra, grad_norm))
    }

    pub fn run(&self, resume: bool, obs: &mut dyn Observer) -> Result<Summary> {
        let t = &self.cfg.training;
        if self.task.is_empty() {
            return Err(TrainError::Stopped(
                "no training examples left after loading".into(),
            ));
        }
        let params = &self.model.trainable;
        let mut opt = Optimizer::new(t, params)?;
        let total = self.total_steps();
        let warmup = if t.warmup_steps > 0 {
            t.warmup_steps
        } else {
            (t.warmup_ratio * total as f64).ceil() as usize
        };
        let ck_dir = self.out_dir.join("checkpoints");
        let metrics_path = self.out_dir.join("metrics.jsonl");
        let (mut state, resumed_from) = self.restore(resume, &mut opt, total)?;
        let lead = self.place().0 == 0;
        let mut metrics = match lead {
            true => Some(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&metrics_path)
                    .map_err(|e| file_err(&metrics_path, e))?,
            ),
            false => None,
        };
        let mut log = |v: &dyn erased::Json| -> Result<()> {
            let Some(metrics) = metrics.as_mut() else {
                return Ok(());
            };
            writeln!(metrics, "{}", v.json()).map_err(|e| file_err(&metrics_path, e))?;
            metrics.flush().map_err(|e| file_err(&metrics_path, e))
        };
        obs.start(state.step, total);
        let (mut first_eval, mut last_eval) = (None, None);
        if t.eval_on_start
            && state.step == 0
            && let Some(e) = self.evaluate(0)?
        {
            first_eval = e.eval_loss;
            log(&e)?;
            obs.eval(&e);
        }
        let (mut first_loss, mut last_loss) = (None, None);
        let started = Instant::now();
        let start_tokens = state.tokens;
        let mut ended_early = None;
        while state.step < total {
            let step_start = Instant::now();
            let lr = lr_at(t.lr_scheduler, t.learning_rate, warmup, state.step, total);
            let (loss, tokens, extra, grad_norm) = self.step(state.step, &mut opt, lr)?;
            state.step += 1;
            state.optimizer_t = opt.t;
            state.tokens += tokens as u64;
            if !loss.is_finite() {
                return Err(TrainError::Stopped(format!(
                    "loss is {loss} at step {}; the last checkpoint is intact",
                    state.step
                )));
            }
            first_loss.get_or_insert(loss);
            last_loss = Some(loss);
            let m = StepMetrics {
                step: state.step,
                epoch: state.step as f64 / self.steps_per_epoch() as f64,
                loss,
                lr,
                grad_norm,
                tokens,
                tokens_per_s: tokens as f64 / step_start.elapsed().as_secs_f64(),
                elapsed_s: started.elapsed().as_secs_f64(),
                extra,
            };
            if state.step.is_multiple_of(t.logging_steps.max(1)) || state.step == total {
                log(&m)?;
            }
            obs.step(&m);
            let eval_now = state.step == total
                || if t.eval_steps > 0 {
                    state.step.is_multiple_of(t.eval_steps)
                } else {
                    state.step.is_multiple_of(self.steps_per_epoch())
                };
            if let Some(e) = if eval_now {
                self.evaluate(state.step)?
            } else {
                None
            } {
                if let Some(l) = e.eval_loss {
                    first_eval.get_or_insert(l);
                    last_eval = Some(l);
                }
                log(&e)?;
                obs.eval(&e);
            }
            let mut saved = !lead;
            if lead
                && ((t.save_steps > 0 && state.step.is_multiple_of(t.save_steps))
                    || state.step == total)
            {
                let path = checkpoint::save(&ck_dir, params, &opt, &state, t.save_total_limit)?;
                obs.checkpoint(&path);
                saved = true;
            }
            if state.step < total
                && let Some(reason) = obs.end_requested()
            {
                // The held-out figures of where the run ended, as at a planned end.
                if !eval_now && let Some(e) = self.evaluate(state.step)? {
                    if let Some(l) = e.eval_loss {
                        first_eval.get_or_insert(l);
                        last_eval = Some(l);
                    }
                    log(&e)?;
                    obs.eval(&e);
                }
                if !saved {
                    let path = checkpoint::save(&ck_dir, params, &opt, &state, t.save_total_limit)?;
                    obs.checkpoint(&path);
                }
                tracing::info!("ending at step {}: {reason}", state.step);
                ended_early = Some(reason);
                break;
            }
        }
        let secs = started.elapsed().as_secs_f64();
        Ok(Summary {
            steps: state.step,
            first_loss,
            last_loss,
            first_eval_loss: first_eval,
            last_eval_loss: last_eval,
            tokens: state.tokens,
            tokens_per_s: (state.tokens - start_tokens) as f64 / secs.max(1e-9),
            resumed_from,
            ended_early,
        })
    }
}

/// Reorders an epoch so each batch holds examples of similar length: windows of 50 batches
/// sorted by length (longest first), then whole batches shuffled, all from `seed`.
fn group_by_length(order: Vec<usize>, lens: &[usize], batch: usize, seed: u64) -> Vec<usize> {
    use rand::seq::SliceRandom;
    use rand::{SeedableRng, rngs::StdRng};
    let mut sorted: Vec<usize> = Vec::with_capacity(order.len());
    for window in order.chunks(batch * 50) {
        let mut w = window.to_vec();
        w.sort_by_key(|&i| std::cmp::Reverse(lens[i]));
        sorted.extend(w);
    }
    let mut batches: Vec<&[usize]> = sorted.chunks(batch).collect();
    batches.shuffle(&mut StdRng::seed_from_u64(seed));
    batches.concat()
}

/// Drops metrics lines past `step` (written after the checkpoint a resume starts from).
fn truncate_metrics(path: &Path, step: usize) -> Result<()> {
    truncate_jsonl(path, step)
}

/// Keeps the lines of a JSONL log whose `step` is at most `step` (none for step 0).
pub(crate) fn truncate_jsonl(path: &Path, step: usize) -> Result<()> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Ok(());
    };
    let kept: Vec<&str> = text
        .lines()
        .filter(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .ok()
                .and_then(|v| v.get("step")?.as_u64())
                .is_some_and(|s| s as usize <= step)
        })
        .collect();
    let mut out = kept.join("\n");
    if !out.is_empty() {
        out.push('\n');
    }
    std::fs::write(path, out).map_err(|e| file_err(path, e))
}

mod erased {
    /// A metrics record as one JSON line.
    pub trait Json {
        fn json(&self) -> String;
    }
    impl<T: serde::Serialize> Json for T {
        fn json(&self) -> String {
            serde_json::to_string(self).expect("metrics serialize")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grouping_by_length_is_a_permutation_of_similar_lengths() {
        let samples: Vec<Sample> = (0..40)
            .map(|i| Sample {
                ids: vec![0; 2 + (i * 37) % 50],
                train: vec![true; 2 + (i * 37) % 50],
            })
            .collect();
        let order = epoch_order(40, 7, 0, true);
        let lens: Vec<usize> = samples.iter().map(|s| s.ids.len()).collect();
        let grouped = group_by_length(order, &lens, 4, 7);
        let mut sorted = grouped.clone();
        sorted.sort();
        assert_eq!(sorted, (0..40).collect::<Vec<_>>());
        let padding = |o: &[usize]| -> usize {
            o.chunks(4)
                .map(|b| {
                    let max = b.iter().map(|&i| samples[i].ids.len()).max().unwrap();
                    b.iter().map(|&i| max - samples[i].ids.len()).sum::<usize>()
                })
                .sum()
        };
        assert!(padding(&grouped) * 4 < padding(&epoch_order(40, 7, 0, true)));
    }
}
