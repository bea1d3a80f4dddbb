//! GRPO's side of environments (`grpo.environment(s)`): each step's prompts as the model is
//! asked them — an episode started per rollout, its start appended to the prompt, checked and
//! re-tokenized — and the episodes' own scores as reward columns, one per environment.

use super::{GrpoTask, Prompt};
use crate::error::{Result, TrainError};
use crate::rewards;
use std::borrow::Cow;

/// The episodes of a step, ended: how many environments the run has, and per row its
/// environment and the episode's score (`None`: the row had no episode).
type Ended = (
    usize,
    Vec<
        Option<(
            usize,
            std::result::Result<Option<f64>, galley_core::PluginError>,
        )>,
    >,
);

impl GrpoTask<'_> {
    /// The prompts of a step, `set`'s `order`, as the model is asked them: where the run
    /// has an environment, `per` episodes start for each (its row, and a seed from `stream`
    /// and the prompt), and the text they add is appended to the prompt's last message.
    /// A prompt is copied only where a start changes it; the others are borrowed.
    pub(super) fn ask<'s>(
        &self,
        set: &'s [Prompt],
        order: &[usize],
        per: usize,
        stream: u64,
    ) -> Result<Vec<Cow<'s, Prompt>>> {
        let mut asked: Vec<Cow<'s, Prompt>> =
            order.iter().map(|&p| Cow::Borrowed(&set[p])).collect();
        let Some((toolbox, template)) = &self.tools else {
            return Ok(asked);
        };
        let mut toolbox = toolbox.borrow_mut();
        if !toolbox.has_environments() {
            return Ok(asked);
        }
        let starts: Vec<(Option<usize>, serde_json::Value, u64)> = order
            .iter()
            .map(|&p| {
                let seed = galley_core::seed::derive_seed(
                    self.seed,
                    &[galley_core::seed::purpose::EPISODE, stream, p as u64],
                );
                let row = galley_core::episode_row(&set[p].messages, &set[p].metadata);
                (set[p].env, row, seed)
            })
            .collect();
        let at: Vec<&str> = order.iter().map(|&p| set[p].at.as_str()).collect();
        let shown = toolbox.start(&starts, per, &at)?;
        let thinks = galley_model::reasoning::template_thinks(&template.source);
        for (q, text) in asked.iter_mut().zip(shown) {
            let Some(text) = text else { continue };
            let q = q.to_mut();
            let env = toolbox.describe(q.env.expect("a prompt with a start has an environment"));
            let bad = |msg: String| TrainError::Data {
                at: q.at.clone(),
                msg: format!("{env}: {msg}"),
            };
            // The start's text is the environment's, not the data's: it may not spell the
            // tokenizer's markers (it would end the user's turn and write the model's).
            if self.tokenizer.encode(&text, false)? != self.tokenizer.encode_plain(&text)? {
                return Err(bad(
                    "the text its reset appends to the prompt spells a special token of the tokenizer".into(),
                ));
            }
            let last = q.messages.last_mut().expect("prompts are not empty");
            last.content.push_str(&text);
            let rendered = template.render(&q.messages, true, q.tools.as_ref())?;
            q.ids = self.tokenizer.encode(&rendered, false)?;
            q.opens = thinks && galley_model::reasoning::prompt_opens(&rendered);
            if q.ids.len() + self.cfg.max_completion_length > self.max_length {
                return Err(bad(format!(
                    "with the text its reset appends, the prompt's {} tokens leave no room for grpo.max_completion_length = {} within data.max_length = {}",
                    q.ids.len(),
                    self.cfg.max_completion_length,
                    self.max_length
                )));
            }
        }
        Ok(asked)
    }

    /// Ends the episodes of the rollouts just made: how many environments the run has, and
    /// per row its environment and the episode's score (`None`: the run has none).
    pub(super) fn end_episodes(&self, rows: usize) -> Option<Ended> {
        let (toolbox, _) = self.tools.as_ref()?;
        let mut toolbox = toolbox.borrow_mut();
        if !toolbox.has_environments() {
            return None;
        }
        let out = toolbox.end();
        debug_assert_eq!(out.len(), rows);
        Some((toolbox.environments(), out))
    }

    /// Adds the episodes' own scores (`ended`, one per row) as the last function's column,
    /// under the run's failure policy: an episode that failed is a reward function failing
    /// on that completion.
    pub(super) fn add_episode_scores(
        &self,
        scored: &mut rewards::Scored,
        (envs, ended): Ended,
        step: usize,
        asked: &[Cow<'_, Prompt>],
        per: usize,
    ) -> Result<()> {
        // One column per environment, in the run's order; a row scores only in its own.
        let mut columns = vec![vec![None; ended.len()]; envs];
        let mut failures = vec![0; envs];
        for (i, r) in ended.into_iter().enumerate() {
            let Some((e, r)) = r else { continue };
            match r {
                Ok(v) => columns[e][i] = v,
                Err(err) if self.cfg.on_plugin_error == crate::config::OnPluginError::Stop => {
                    return Err(TrainError::Reward(format!(
                        "{err} (on_plugin_error: stop, so the run stops here)"
                    )));
                }
                Err(err) => {
                    tracing::warn!(
                        "step {step}: {err}; completion {} of prompt {:?} is marked failed: no score from its episode, so advantage 0 (on_plugin_error: skip)",
                        i % per,
                        asked[i / per].at
                    );
                    scored.failed[i] = true;
                    failures[e] += 1;
                }
            }
        }
        scored.scores.extend(columns);
        scored.failures.extend(failures);
        Ok(())
    }
}
