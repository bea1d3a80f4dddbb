//! `math-answer`'s logic compiled natively into the host (`plugins/math-answer/src/answer.rs`):
//! the peer a sandboxed plugin is measured against — what a Python platform would run
//! in-process.

#[path = "../plugins/math-answer/src/answer.rs"]
#[allow(dead_code)]
mod answer;

use galley_core::{PluginError, RewardFn, RewardGroup, Value};

pub struct NativeMathAnswer;

impl RewardFn for NativeMathAnswer {
    fn name(&self) -> &str {
        "native"
    }
    fn score(&mut self, groups: &[RewardGroup<'_>]) -> Result<Vec<Option<f64>>, PluginError> {
        Ok(groups
            .iter()
            .flat_map(|g| g.completions.iter().map(move |c| (g, *c)))
            .map(|(g, completion)| {
                let printed;
                let truth = match g.metadata.get("answer") {
                    Some(Value::Text(t)) => Some(t.as_str()),
                    Some(v) => {
                        printed = v.as_text();
                        printed.as_deref()
                    }
                    None => None,
                };
                answer::score(completion.text, truth, true).map(|ok| if ok { 1.0 } else { 0.0 })
            })
            .collect())
    }
}
