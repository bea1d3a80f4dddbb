//! `math-answer`: a reward of 1.0 when a completion's final answer matches the example's
//! ground truth, 0.0 when it does not, and "no opinion" when the example has none.
//!
//! Settings: `answer_key` (metadata column, default "answer"), `correct` (1.0), `incorrect`
//! (0.0), `fallback_last_number` (true: with no explicit marker, the last number counts).

pub mod answer;

use galley_sdk::reward::{Reward, RewardInput};
use galley_sdk::{Config, Error, Value};
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct Settings {
    answer_key: String,
    correct: f64,
    incorrect: f64,
    fallback_last_number: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            answer_key: "answer".into(),
            correct: 1.0,
            incorrect: 0.0,
            fallback_last_number: true,
        }
    }
}

struct MathAnswer(Settings);

impl Reward for MathAnswer {
    fn new(config: &Config) -> Result<Self, Error> {
        Ok(Self(config.parse_into()?))
    }

    fn score(&mut self, input: &RewardInput) -> Result<Option<f64>, Error> {
        let s = &self.0;
        // Borrow a text ground truth rather than copy it; numbers are printed.
        let printed;
        let truth = match input.metadata.get(&s.answer_key) {
            Some(Value::Text(t)) => Some(t.as_str()),
            Some(v) => {
                printed = v.as_text();
                printed.as_deref()
            }
            None => None,
        };
        Ok(
            answer::score(input.completion, truth, s.fallback_last_number)
                .map(|ok| if ok { s.correct } else { s.incorrect }),
        )
    }
}

galley_sdk::export_reward!(MathAnswer);
