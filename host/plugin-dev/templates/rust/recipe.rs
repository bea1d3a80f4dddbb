use galley_sdk::recipe::{Decision, Recipe, Stage};
use galley_sdk::serde_json::json;
use galley_sdk::{Config, Error, Metric};

/// SFT, then GRPO until the mean reward reaches `target`, then evaluation.
#[derive(Default)]
struct Plan {
    target: f64,
}

impl Recipe for Plan {
    fn plan(&mut self, config: &Config) -> Result<Vec<Stage>, Error> {
        self.target = config.get_f64("target").unwrap_or(0.9);
        Ok(vec![
            Stage::new("sft", "sft", json!({"epochs": 1})),
            Stage::new("grpo", "grpo", json!({"num_generations": 8})),
            Stage::new("eval", "evaluate", json!({})),
        ])
    }

    fn on_metrics(&mut self, stage: &str, _step: u64, metrics: &[Metric]) -> Result<Decision, Error> {
        let reward = metrics.iter().find(|m| m.name == "reward").map(|m| m.value);
        Ok(match (stage, reward) {
            ("grpo", Some(r)) if r >= self.target => Decision::NextStage,
            _ => Decision::Proceed,
        })
    }
}

galley_sdk::export_recipe!(Plan);
