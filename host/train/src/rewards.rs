//! GRPO's reward functions as the trainer sees them: anything that implements
//! `galley_core::RewardFn` (a sandboxed plugin opened by the caller, or one of the small
//! built-ins here), called once per group, and the failure policy around those calls. Under
//! `skip`, a function whose group call fails is asked again one completion at a time, so only
//! the completions it truly fails on lose their reward; nothing is dropped without a warning
//! naming the function, step, prompt and completion.

use crate::config::OnPluginError;
use crate::error::{Result, TrainError};
use galley_core::{PluginError, PluginErrorKind, RewardFn, RewardInput};

/// The built-in reward functions, by the name a config gives them.
pub const BUILTINS: &[&str] = &["think_format", "exact_match"];

/// TRL's `think_format_reward`: 1.0 when the completion opens with `<think>`, closes it once,
/// and has no second `<think>`; else 0.0.
struct ThinkFormat;

impl RewardFn for ThinkFormat {
    fn name(&self) -> &str {
        "builtin:think_format"
    }
    fn score(&mut self, batch: &[RewardInput]) -> Result<Vec<Option<f64>>, PluginError> {
        Ok(batch
            .iter()
            .map(|r| {
                let ok = r.completion.strip_prefix("<think>").is_some_and(|rest| {
                    rest.find("</think>")
                        .is_some_and(|end| !rest[..end].contains("<think>"))
                        && !rest.contains("<think>")
                });
                Some(if ok { 1.0 } else { 0.0 })
            })
            .collect())
    }
}

/// 1.0 when the trimmed completion equals `metadata.answer` (as text); no opinion without one.
struct ExactMatch;

impl RewardFn for ExactMatch {
    fn name(&self) -> &str {
        "builtin:exact_match"
    }
    fn score(&mut self, batch: &[RewardInput]) -> Result<Vec<Option<f64>>, PluginError> {
        Ok(batch
            .iter()
            .map(|r| {
                let answer = r.metadata.get("answer")?.as_text()?;
                Some(if r.completion.trim() == answer.trim() {
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

/// One function's scores of one group.
pub struct GroupScores {
    pub scores: Vec<Option<f64>>,
    /// Completions the function failed on (their reward is unknown, not "no opinion").
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

/// Where a group's completions come from, for warnings.
pub struct Where<'a> {
    pub step: usize,
    pub prompt: &'a str,
}

fn snippet(s: &str) -> String {
    let one: String = s.chars().take(60).collect::<String>().replace('\n', "\\n");
    if s.chars().count() > 60 {
        format!("{one}...")
    } else {
        one
    }
}

/// Scores one group with `f` under `policy`. Under `Stop` a failure is the error; under
/// `Skip` the group is retried one completion at a time and each completion still failing
/// is marked, with a warning.
pub fn score_group(
    f: &mut dyn RewardFn,
    inputs: &[RewardInput],
    policy: OnPluginError,
    at: &Where,
) -> Result<GroupScores, PluginError> {
    let n = inputs.len();
    let first = f.score(inputs).and_then(|o| check(f, o, n));
    let err = match first {
        Ok(scores) => {
            return Ok(GroupScores {
                scores,
                failed: vec![false; n],
            });
        }
        Err(e) => e,
    };
    if policy == OnPluginError::Stop {
        return Err(err);
    }
    tracing::warn!(
        "step {}: {err}; retrying this group's {n} completions one at a time",
        at.step
    );
    let mut out = GroupScores {
        scores: vec![None; n],
        failed: vec![false; n],
    };
    for (i, input) in inputs.iter().enumerate() {
        match f
            .score(std::slice::from_ref(input))
            .and_then(|o| check(f, o, 1))
        {
            Ok(s) => out.scores[i] = s[0],
            Err(e) => {
                tracing::warn!(
                    "step {}: {e}; completion {i} of prompt {:?} ({:?}) gets no reward and advantage 0 (on_plugin_error: skip)",
                    at.step,
                    snippet(at.prompt),
                    snippet(&input.completion)
                );
                out.failed[i] = true;
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Fails any batch holding a completion with "boom".
    struct Picky;
    impl RewardFn for Picky {
        fn name(&self) -> &str {
            "picky@0.1.0"
        }
        fn score(&mut self, batch: &[RewardInput]) -> Result<Vec<Option<f64>>, PluginError> {
            if batch.iter().any(|r| r.completion.contains("boom")) {
                return Err(PluginError::new(
                    "picky@0.1.0",
                    "score",
                    PluginErrorKind::Trap,
                    "wasm trap",
                ));
            }
            Ok(batch.iter().map(|_| Some(1.0)).collect())
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
        let at = Where {
            step: 3,
            prompt: "p",
        };
        let g = score_group(
            &mut Picky,
            &inputs(&["a", "boom", "c"]),
            OnPluginError::Skip,
            &at,
        )
        .unwrap();
        assert_eq!(g.scores, vec![Some(1.0), None, Some(1.0)]);
        assert_eq!(g.failed, vec![false, true, false]);
        let e = score_group(
            &mut Picky,
            &inputs(&["a", "boom"]),
            OnPluginError::Stop,
            &at,
        )
        .err()
        .unwrap();
        assert_eq!(e.plugin, "picky@0.1.0");
    }

    #[test]
    fn builtins_score_as_documented() {
        let mut t = builtin("think_format").unwrap();
        let s = t
            .score(&inputs(&[
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
        assert_eq!(e.score(&with).unwrap(), vec![Some(1.0), Some(0.0), None]);
        assert!(builtin("nope").is_err());
    }
}
