//! `math-answer`'s logic compiled natively into the host (`plugins/math-answer/src/answer.rs`):
//! the peer a sandboxed plugin is measured against — what a Python platform would run
//! in-process.

#[path = "../plugins/math-answer/src/answer.rs"]
#[allow(dead_code)]
mod answer;

use galley_core::{PluginError, RewardFn, RewardInput, Value};

pub struct NativeMathAnswer;

impl RewardFn for NativeMathAnswer {
    fn name(&self) -> &str {
        "native"
    }
    fn score(&mut self, batch: &[RewardInput]) -> Result<Vec<Option<f64>>, PluginError> {
        Ok(batch
            .iter()
            .map(|i| {
                let printed;
                let truth = match i.metadata.get("answer") {
                    Some(Value::Text(t)) => Some(t.as_str()),
                    Some(v) => {
                        printed = v.as_text();
                        printed.as_deref()
                    }
                    None => None,
                };
                answer::score(&i.completion, truth, true).map(|ok| if ok { 1.0 } else { 0.0 })
            })
            .collect())
    }
}
