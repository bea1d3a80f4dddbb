//! The supervised training loop shared by SFT (full, LoRA, QLoRA) and pre-training: seeded
//! batches, gradient accumulation with the loss normalised over every label token of the
//! optimizer step (as one big batch would be), clipping, the schedule, in-place updates,
//! validation, metrics.jsonl, atomic checkpoints and resume. It reports through `Observer`
//! and `tracing`; it never prints.

use crate::checkpoint::{self, State};
use crate::config::TrainConfig;
use crate::data::{Batch, Sample, epoch_order};
use crate::error::{Result, TrainError, file_err};
use crate::model::{Pass, TrainModel};
use crate::optim::{Optimizer, lr_at};
use serde::Serialize;
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
}

#[derive(Debug, Clone, Serialize)]
pub struct EvalMetrics {
    pub step: usize,
    pub eval_loss: f64,
    pub eval_tokens: usize,
}

/// Hooks for whoever drives the loop (the CLI shows a progress bar).
pub trait Observer {
    fn start(&mut self, _done: usize, _total: usize) {}
    fn step(&mut self, _m: &StepMetrics) {}
    fn eval(&mut self, _m: &EvalMetrics) {}
    fn checkpoint(&mut self, _path: &Path) {}
}

pub struct NoObserver;
impl Observer for NoObserver {}

pub struct Trainer<'a> {
    pub cfg: &'a TrainConfig,
    pub model: &'a TrainModel,
    pub train: &'a [Sample],
    pub val: &'a [Sample],
    pub pad: u32,
    pub out_dir: PathBuf,
    pub config_digest: String,
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
}

impl Trainer<'_> {
    fn batches_per_epoch(&self) -> usize {
        self.train.len().div_ceil(self.cfg.training.batch_size)
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
    fn micro_batch(&self, micro: usize) -> Batch {
        let t = &self.cfg.training;
        let per_epoch = self.steps_per_epoch() * t.gradient_accumulation_steps;
        let (epoch, j) = (micro / per_epoch, micro % per_epoch);
        let mut order = epoch_order(
            self.train.len(),
            self.cfg.data_seed(),
            epoch,
            self.cfg.data.shuffle,
        );
        if self.cfg.data.group_by_length {
            order = group_by_length(
                order,
                self.train,
                t.batch_size,
                self.cfg.data_seed() ^ epoch as u64,
            );
        }
        let start = (j * t.batch_size) % self.train.len();
        let picks: Vec<&Sample> = (0..t.batch_size)
            .map(|i| &self.train[order[(start + i) % self.train.len()]])
            .collect();
        Batch::from_samples(&picks, self.pad)
    }

    fn evaluate(&self, step: usize) -> Result<EvalMetrics> {
        let (mut nll, mut tokens) = (0f64, 0usize);
        for chunk in self.val.chunks(self.cfg.training.batch_size) {
            let refs: Vec<&Sample> = chunk.iter().collect();
            let b = Batch::from_samples(&refs, self.pad);
            let pass = Pass {
                kernels: self.model.kernels,
                train: false,
                seed: 0,
            };
            let losses = self
                .model
                .losses(&b.inputs, &b.targets, b.b, b.t, &pass)?
                .detach();
            nll += losses.sum_all()?.to_scalar::<f32>()? as f64;
            tokens += b.label_tokens();
        }
        Ok(EvalMetrics {
            step,
            eval_loss: nll / tokens.max(1) as f64,
            eval_tokens: tokens,
        })
    }

    /// Runs (or resumes) the loop.
    pub fn run(&self, resume: bool, obs: &mut dyn Observer) -> Result<Summary> {
        let t = &self.cfg.training;
        if self.train.is_empty() {
            return Err(TrainError::Stopped(
                "no training examples left after loading".into(),
            ));
        }
        let params = &self.model.trainable;
        let mut opt = Optimizer::new(t, params);
        let total = self.total_steps();
        let warmup = if t.warmup_steps > 0 {
            t.warmup_steps
        } else {
            (t.warmup_ratio * total as f64).ceil() as usize
        };
        let ck_dir = self.out_dir.join("checkpoints");
        let metrics_path = self.out_dir.join("metrics.jsonl");
        let mut state = State {
            step: 0,
            total_steps: total,
            optimizer_t: 0,
            tokens: 0,
            config_digest: self.config_digest.clone(),
        };
        let mut resumed_from = None;
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
        if resume && latest.is_none() {
            tracing::info!(
                "--resume: no checkpoint in {}, starting afresh",
                ck_dir.display()
            );
        }
        if let Some((_, ck)) = latest {
            state = checkpoint::load(&ck, params, &mut opt)?;
            if state.config_digest != self.config_digest {
                return Err(file_err(
                    &ck,
                    "was written under a different config; resume with the same one (or start a new output_dir)",
                ));
            }
            resumed_from = Some(state.step);
            truncate_metrics(&metrics_path, state.step)?;
            tracing::info!("resuming from {} (step {})", ck.display(), state.step);
        } else {
            let _ = std::fs::remove_file(&metrics_path);
        }
        let mut metrics = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&metrics_path)
            .map_err(|e| file_err(&metrics_path, e))?;
        let mut log = |v: &dyn erased::Json| -> Result<()> {
            writeln!(metrics, "{}", v.json()).map_err(|e| file_err(&metrics_path, e))?;
            metrics.flush().map_err(|e| file_err(&metrics_path, e))
        };
        obs.start(state.step, total);
        let (mut first_eval, mut last_eval) = (None, None);
        if t.eval_on_start && state.step == 0 && !self.val.is_empty() {
            let e = self.evaluate(0)?;
            first_eval = Some(e.eval_loss);
            log(&e)?;
            obs.eval(&e);
        }
        let (mut first_loss, mut last_loss) = (None, None);
        let started = Instant::now();
        let start_tokens = state.tokens;
        let accum = t.gradient_accumulation_steps;
        while state.step < total {
            let step_start = Instant::now();
            let batches: Vec<Batch> = (0..accum)
                .map(|m| self.micro_batch(state.step * accum + m))
                .collect();
            let label_tokens: usize = batches.iter().map(|b| b.label_tokens()).sum();
            let mut loss_sum = 0f64;
            let mut tokens = 0;
            for (m, b) in batches.iter().enumerate() {
                tokens += b.real_tokens;
                let pass = Pass {
                    kernels: self.model.kernels,
                    train: true,
                    seed: self.cfg.training.seed
                        ^ ((state.step * accum + m) as u64).wrapping_mul(0x2545_f491_4f6c_dd1d),
                };
                let losses = self.model.losses(&b.inputs, &b.targets, b.b, b.t, &pass)?;
                let sum = losses.sum_all()?;
                loss_sum += sum.to_scalar::<f32>()? as f64;
                let loss = (sum / label_tokens.max(1) as f64)?;
                let grads = loss.backward()?;
                opt.accumulate(params, &grads)?;
            }
            let grad_norm = opt.clip(params, t.max_grad_norm);
            let lr = lr_at(t.lr_scheduler, t.learning_rate, warmup, state.step, total);
            opt.step(params, lr)?;
            state.step += 1;
            state.optimizer_t = opt.t;
            state.tokens += tokens as u64;
            let loss = loss_sum / label_tokens.max(1) as f64;
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
            };
            if state.step.is_multiple_of(t.logging_steps.max(1)) || state.step == total {
                log(&m)?;
            }
            obs.step(&m);
            let eval_now = !self.val.is_empty()
                && if t.eval_steps > 0 {
                    state.step.is_multiple_of(t.eval_steps)
                } else {
                    state.step.is_multiple_of(self.steps_per_epoch())
                }
                || (!self.val.is_empty() && state.step == total);
            if eval_now {
                let e = self.evaluate(state.step)?;
                first_eval.get_or_insert(e.eval_loss);
                last_eval = Some(e.eval_loss);
                log(&e)?;
                obs.eval(&e);
            }
            if (t.save_steps > 0 && state.step.is_multiple_of(t.save_steps)) || state.step == total
            {
                let path = checkpoint::save(&ck_dir, params, &opt, &state, t.save_total_limit)?;
                obs.checkpoint(&path);
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
        })
    }
}

/// Reorders an epoch so each batch holds examples of similar length: windows of 50 batches
/// sorted by length (longest first), then whole batches shuffled, all from `seed`.
fn group_by_length(order: Vec<usize>, samples: &[Sample], batch: usize, seed: u64) -> Vec<usize> {
    use rand::seq::SliceRandom;
    use rand::{SeedableRng, rngs::StdRng};
    let mut sorted: Vec<usize> = Vec::with_capacity(order.len());
    for window in order.chunks(batch * 50) {
        let mut w = window.to_vec();
        w.sort_by_key(|&i| std::cmp::Reverse(samples[i].ids.len()));
        sorted.extend(w);
    }
    let mut batches: Vec<&[usize]> = sorted.chunks(batch).collect();
    batches.shuffle(&mut StdRng::seed_from_u64(seed.wrapping_add(0x6b5)));
    batches.concat()
}

/// Drops metrics lines past `step` (written after the checkpoint a resume starts from).
fn truncate_metrics(path: &Path, step: usize) -> Result<()> {
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
        let grouped = group_by_length(order, &samples, 4, 7);
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
