use galley_sdk::reward::{Reward, RewardInput};
use galley_sdk::{Config, Error};

/// 1.0 when the answer contains the example's `answer` column, else 0.0.
struct ContainsAnswer;

impl Reward for ContainsAnswer {
    fn new(_config: &Config) -> Result<Self, Error> {
        Ok(ContainsAnswer)
    }

    fn score(&mut self, input: &RewardInput) -> Result<Option<f64>, Error> {
        // No ground truth: no opinion (the trainer leaves this reward out of the sum).
        let Some(answer) = input.metadata.text("answer") else { return Ok(None) };
        // The answer without the reasoning before it (`input.completion` is the whole text;
        // `input.message` also has the tool calls and the reasoning apart).
        Ok(Some(if input.message.content.contains(&answer) { 1.0 } else { 0.0 }))
    }
}

galley_sdk::export_reward!(ContainsAnswer);
