//! The one reward-scoring policy, for the GRPO trainer and `galley score` alike: reward
//! functions as the trainer sees them (anything that implements `galley_core::RewardFn`: a
//! sandboxed plugin opened by the caller, or one of the small built-ins here), called once
//! per batch of prompt groups, and the failure policy around those calls. A call that fails
//! under `skip` is asked again one completion at a time, so only the completions a function
//! truly fails on lose its score; those are marked failed, which is not the same as "no
//! opinion" (`None`, left out of the weighted sum). Nothing is dropped without a warning
//! naming the function, step, prompt and completion. Under `stop`, the failure is the error.

use crate::config::OnPluginError;
use crate::config::RewardSpec;
use crate::error::{Result, TrainError};
use galley_core::{Completion, PluginError, PluginErrorKind, RewardFn, RewardGroup};

/// The built-in reward functions, by the name a config gives them.
pub const BUILTINS: &[&str] = &["think_format", "exact_match"];

/// TRL's `think_format_reward`: 1.0 when the completion opens with `<think>`, closes it once,
/// and has no second `<think>`; else 0.0.
struct ThinkFormat;

impl RewardFn for ThinkFormat {
    fn name(&self) -> &str {
        "builtin:think_format"
    }
    fn score(&mut self, groups: &[RewardGroup<'_>]) -> Result<Vec<Option<f64>>, PluginError> {
        Ok(completions(groups)
            .map(|(_, c)| {
                let ok = c.text.strip_prefix("<think>").is_some_and(|rest| {
                    rest.find("</think>")
                        .is_some_and(|end| !rest[..end].contains("<think>"))
                        && !rest.contains("<think>")
                });
                Some(if ok { 1.0 } else { 0.0 })
            })
            .collect())
    }
}

/// 1.0 when the trimmed answer (the completion's content: its reasoning and calls apart, where
/// the trainer read them) equals `metadata.answer` (as text); no opinion without one.
struct ExactMatch;

impl RewardFn for ExactMatch {
    fn name(&self) -> &str {
        "builtin:exact_match"
    }
    fn score(&mut self, groups: &[RewardGroup<'_>]) -> Result<Vec<Option<f64>>, PluginError> {
        Ok(completions(groups)
            .map(|(g, c)| {
                let answer = g.metadata.get("answer")?.as_text()?;
                // The answer, not the reasoning before it, is what must match.
                Some(if c.content().trim() == answer.trim() {
                    1.0
                } else {
                    0.0
                })
            })
            .collect())
    }
}

/// A built-in reward function by name.
pub fn builtin(name: &str) -> Result<Box<dyn RewardFn>> {
    match name {
        "think_format" => Ok(Box::new(ThinkFormat)),
        "exact_match" => Ok(Box::new(ExactMatch)),
        other => Err(TrainError::Config {
            file: "grpo.rewards".into(),
            msg: format!(
                "unknown built-in reward `{other}` (known: {})",
                BUILTINS.join(", ")
            ),
        }),
    }
}

/// Every completion of `groups` in order, with its group.
fn completions<'g, 'a>(
    groups: &'g [RewardGroup<'a>],
) -> impl Iterator<Item = (&'g RewardGroup<'a>, Completion<'a>)> + 'g {
    groups
        .iter()
        .flat_map(|g| g.completions.iter().map(move |c| (g, *c)))
}

/// Column labels for reward specs: the plugin or built-in name, `#2`, `#3`... when one repeats.
pub fn labels(specs: &[RewardSpec]) -> Vec<String> {
    let mut labels: Vec<String> = Vec::with_capacity(specs.len());
    for r in specs {
        let base = r.label();
        let n = labels
            .iter()
            .filter(|l| l.split('#').next() == Some(base.as_str()))
            .count();
        labels.push(if n == 0 {
            base
        } else {
            format!("{base}#{}", n + 1)
        });
    }
    labels
}

/// One function's scores of one batch of groups, a slot per completion.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchScores {
    pub scores: Vec<Option<f64>>,
    /// Completions the function failed on (their score is unknown, not "no opinion").
    pub failed: Vec<bool>,
}

fn check(
    f: &dyn RewardFn,
    out: Vec<Option<f64>>,
    n: usize,
) -> Result<Vec<Option<f64>>, PluginError> {
    // The runtime checks plugins' outputs; a native function gets the same contract.
    if out.len() != n {
        return Err(PluginError::new(
            f.name(),
            "score",
            PluginErrorKind::BadOutput,
            format!("returned {} scores for {n} completions", out.len()),
        ));
    }
    if let Some(v) = out.iter().flatten().find(|v| !v.is_finite()) {
        return Err(PluginError::new(
            f.name(),
            "score",
            PluginErrorKind::BadOutput,
            format!("returned the non-finite score {v}"),
        ));
    }
    Ok(out)
}

fn snippet(s: &str) -> String {
    let one: String = s.chars().take(60).collect::<String>().replace('\n', "\\n");
    if s.chars().count() > 60 {
        format!("{one}...")
    } else {
        one
    }
}

/// Scores `groups` with `f` in one call under `policy`. Under `Stop` a failure is the
/// error; under `Skip` the batch is retried one completion at a time and each completion
/// still failing is marked, with a warning. `step` is for the warnings (the trainer's step,
/// or the batch number of `galley score`).
pub fn score_batch(
    f: &mut dyn RewardFn,
    groups: &[RewardGroup<'_>],
    policy: OnPluginError,
    step: usize,
) -> Result<BatchScores, PluginError> {
    let n: usize = groups.iter().map(RewardGroup::len).sum();
    let err = match f.score(groups).and_then(|o| check(f, o, n)) {
        Ok(scores) => {
            return Ok(BatchScores {
                scores,
                failed: vec![false; n],
            });
        }
        Err(e) => e,
    };
    if policy == OnPluginError::Stop {
        return Err(err);
    }
    tracing::warn!("step {step}: {err}; retrying these {n} completions one at a time");
    let mut out = BatchScores {
        scores: vec![None; n],
        failed: vec![false; n],
    };
    for (i, (g, c)) in completions(groups).enumerate() {
        let one = [RewardGroup {
            prompt: g.prompt,
            metadata: g.metadata,
            completions: vec![c],
        }];
        match f.score(&one).and_then(|o| check(f, o, 1)) {
            Ok(s) => out.scores[i] = s[0],
            Err(e) => {
                let prompt = g.prompt.last().map_or("", |m| m.content.as_str());
                tracing::warn!(
                    "step {step}: {e}; completion {:?} of prompt {:?} is marked failed: no score from it, so no reward and advantage 0 in GRPO (on_plugin_error: skip)",
                    snippet(c.text),
                    snippet(prompt),
                );
                out.failed[i] = true;
            }
        }
    }
    Ok(out)
}

/// Splits `groups` into calls of whole groups, at most `max` completions each unless one
/// group alone is larger.
pub fn batches<'a>(groups: Vec<RewardGroup<'a>>, max: usize) -> Vec<Vec<RewardGroup<'a>>> {
    let mut out: Vec<Vec<RewardGroup<'a>>> = Vec::new();
    let mut size = 0;
    for g in groups {
        if out.is_empty() || size + g.len() > max {
            out.push(Vec::new());
            size = 0;
        }
        size += g.len();
        out.last_mut().expect("a batch").push(g);
    }
    out
}

/// Every function's scores of one batch: `scores[f][i]`, and which completions any function
/// failed on, plus each function's failure count and seconds spent in it.
#[derive(Debug, Clone, Default)]
pub struct Scored {
    pub scores: Vec<Vec<Option<f64>>>,
    pub failed: Vec<bool>,
    pub failures: Vec<usize>,
    pub secs: Vec<f64>,
}

/// Scores `groups` with every function in turn (one call each), under `policy`.
pub fn score_all(
    fns: &mut [Box<dyn RewardFn>],
    groups: &[RewardGroup<'_>],
    policy: OnPluginError,
    step: usize,
) -> Result<Scored, PluginError> {
    let n: usize = groups.iter().map(RewardGroup::len).sum();
    let mut out = Scored {
        scores: Vec::with_capacity(fns.len()),
        failed: vec![false; n],
        failures: Vec::with_capacity(fns.len()),
        secs: Vec::with_capacity(fns.len()),
    };
    for f in fns.iter_mut() {
        let t = std::time::Instant::now();
        let b = score_batch(&mut **f, groups, policy, step);
        out.secs.push(t.elapsed().as_secs_f64());
        let b = b?;
        out.failures.push(b.failed.iter().filter(|x| **x).count());
        out.failed
            .iter_mut()
            .zip(&b.failed)
            .for_each(|(a, f)| *a |= f);
        out.scores.push(b.scores);
    }
    Ok(out)
}

impl Scored {
    /// Each function's mean over the completions it gave an opinion on, and how many.
    pub fn means(&self) -> Vec<(f64, usize)> {
        self.scores
            .iter()
            .map(|s| {
                let vals: Vec<f64> = s.iter().flatten().copied().collect();
                let n = vals.len();
                (vals.iter().sum::<f64>() / n.max(1) as f64, n)
            })
            .collect()
    }
}

/// Scores every completion of `inputs` with every function: consecutive inputs with the same
/// prompt and metadata are one group, and each call takes whole groups of at most
/// `batch_size` completions. This is `galley score`; a GRPO step is one such call.
pub fn score_inputs(
    fns: &mut [Box<dyn RewardFn>],
    inputs: &[galley_core::RewardInput],
    batch_size: usize,
    policy: OnPluginError,
) -> Result<Scored, PluginError> {
    let mut all = Scored {
        scores: vec![Vec::with_capacity(inputs.len()); fns.len()],
        failures: vec![0; fns.len()],
        secs: vec![0.0; fns.len()],
        failed: Vec::with_capacity(inputs.len()),
    };
    let groups = galley_core::RewardInput::groups(inputs);
    for (b, batch) in batches(groups, batch_size).iter().enumerate() {
        let s = score_all(fns, batch, policy, b)?;
        for f in 0..fns.len() {
            all.scores[f].extend(&s.scores[f]);
            all.failures[f] += s.failures[f];
            all.secs[f] += s.secs[f];
        }
        all.failed.extend(s.failed);
    }
    Ok(all)
}

#[cfg(test)]
mod tests {
    use super::*;
    use galley_core::{RewardFnExt, RewardInput};

    /// Fails any batch holding a completion with "boom".
    struct Picky;
    impl RewardFn for Picky {
        fn name(&self) -> &str {
            "picky@0.1.0"
        }
        fn score(&mut self, groups: &[RewardGroup<'_>]) -> Result<Vec<Option<f64>>, PluginError> {
            if completions(groups).any(|(_, c)| c.text.contains("boom")) {
                return Err(PluginError::new(
                    "picky@0.1.0",
                    "score",
                    PluginErrorKind::Trap,
                    "wasm trap",
                ));
            }
            Ok(completions(groups).map(|_| Some(1.0)).collect())
        }
    }

    fn inputs(texts: &[&str]) -> Vec<RewardInput> {
        texts
            .iter()
            .map(|t| RewardInput {
                completion: t.to_string(),
                ..Default::default()
            })
            .collect()
    }

    #[test]
    fn skip_retries_one_by_one_and_marks_only_the_failures() {
        let mut rows = inputs(&["a", "boom", "c", "d"]);
        // Two groups: the retry keeps each completion's own prompt.
        rows[3].prompt = vec![galley_core::Message::new("user", "q2")];
        let g = score_batch(
            &mut Picky,
            &RewardInput::groups(&rows),
            OnPluginError::Skip,
            3,
        )
        .unwrap();
        assert_eq!(g.scores, vec![Some(1.0), None, Some(1.0), Some(1.0)]);
        assert_eq!(g.failed, vec![false, true, false, false]);
        let e = score_batch(
            &mut Picky,
            &RewardInput::groups(&inputs(&["a", "boom"])),
            OnPluginError::Stop,
            3,
        )
        .err()
        .unwrap();
        assert_eq!(e.plugin, "picky@0.1.0");
        // "Failed" stays apart from "no opinion", and counts per function.
        let mut fns: Vec<Box<dyn RewardFn>> =
            vec![Box::new(Picky), builtin("exact_match").unwrap()];
        let all = score_all(
            &mut fns,
            &RewardInput::groups(&rows),
            OnPluginError::Skip,
            0,
        )
        .unwrap();
        assert_eq!(all.failures, vec![1, 0]);
        assert_eq!(all.failed, vec![false, true, false, false]);
        assert_eq!(all.scores[1], vec![None; 4]);
    }

    #[test]
    fn batches_keep_groups_whole() {
        let rows: Vec<RewardInput> = ["a", "a", "a", "b", "c", "c"]
            .iter()
            .map(|p| RewardInput {
                prompt: vec![galley_core::Message::new("user", *p)],
                completion: "x".into(),
                ..Default::default()
            })
            .collect();
        let sizes = |max| -> Vec<Vec<usize>> {
            batches(RewardInput::groups(&rows), max)
                .iter()
                .map(|b| b.iter().map(RewardGroup::len).collect())
                .collect()
        };
        assert_eq!(sizes(4), vec![vec![3, 1], vec![2]]);
        assert_eq!(sizes(2), vec![vec![3], vec![1], vec![2]]);
    }

    #[test]
    fn builtins_score_as_documented() {
        let mut t = builtin("think_format").unwrap();
        let s = t
            .score_inputs(&inputs(&[
                "<think>a</think>42",
                "42",
                "<think>a<think>b</think>",
            ]))
            .unwrap();
        assert_eq!(s, vec![Some(1.0), Some(0.0), Some(0.0)]);
        let mut e = builtin("exact_match").unwrap();
        let mut with = inputs(&[" 42 ", "41", "x"]);
        for r in &mut with[..2] {
            r.metadata
                .insert("answer".into(), galley_core::Value::Int(42));
        }
        assert_eq!(
            e.score_inputs(&with).unwrap(),
            vec![Some(1.0), Some(0.0), None]
        );
        assert!(builtin("nope").is_err());
    }
}
