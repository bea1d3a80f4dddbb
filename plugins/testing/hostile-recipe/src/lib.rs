//! TEST ONLY. A recipe that traps, loops forever or plans nonsense as its plan settings'
//! `mode` says (`trap-plan`, `loop-plan`, `trap-metrics`, `loop-metrics`, `duplicate`), or plans an
//! SFT stage on its own data file (`sft-data`, with `path`).

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
            "loop-plan" => spin(),
            "duplicate" => Ok(vec![
                Stage::new("a", "sft", json!({})),
                Stage::new("a", "grpo", json!({})),
            ]),
            // A recipe bringing its own data (two of them fused: a mixture).
            "sft-data" => Ok(vec![Stage::new(
                "train",
                "sft",
                json!({"data": {"train": {"path": config.get_str("path").unwrap_or("missing")}}}),
            )]),
            // A training stage, so a failing `on-metrics` meets a checkpoint to keep.
            "trap-metrics" | "loop-metrics" => Ok(vec![Stage::new("train", "sft", json!({}))]),
            _ => Ok(vec![Stage::new("only", "evaluate", json!({}))]),
        }
    }

    fn on_metrics(
        &mut self,
        _stage: &str,
        _step: u64,
        _metrics: &[Metric],
    ) -> Result<Decision, Error> {
        match self.mode.as_str() {
            "trap-metrics" => panic!("hostile recipe panicked in on-metrics on purpose"),
            "loop-metrics" => spin(),
            _ => {}
        }
        Ok(Decision::Proceed)
    }
}

/// Never returns: the host's time budget must end the call.
fn spin() -> ! {
    let mut x = 0u64;
    loop {
        x = std::hint::black_box(x.wrapping_add(1));
    }
}

galley_sdk::export_recipe!(Hostile);
