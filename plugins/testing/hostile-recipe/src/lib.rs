//! TEST ONLY. A recipe that traps or plans nonsense as its plan settings' `mode` says.

use galley_sdk::recipe::{Decision, Recipe, Stage};
use galley_sdk::serde_json::json;
use galley_sdk::{Config, Error, Metric};

#[derive(Default)]
struct Hostile {
    mode: String,
}

impl Recipe for Hostile {
    fn plan(&mut self, config: &Config) -> Result<Vec<Stage>, Error> {
        self.mode = config.get_str("mode").unwrap_or("ok").to_string();
        match self.mode.as_str() {
            "trap-plan" => panic!("hostile recipe panicked in plan on purpose"),
            "duplicate" => Ok(vec![
                Stage::new("a", "sft", json!({})),
                Stage::new("a", "grpo", json!({})),
            ]),
            _ => Ok(vec![Stage::new("only", "evaluate", json!({}))]),
        }
    }

    fn on_metrics(
        &mut self,
        _stage: &str,
        _step: u64,
        _metrics: &[Metric],
    ) -> Result<Decision, Error> {
        if self.mode == "trap-metrics" {
            panic!("hostile recipe panicked in on-metrics on purpose");
        }
        Ok(Decision::Proceed)
    }
}

galley_sdk::export_recipe!(Hostile);
