//! `preference`: align on preference pairs, then measure. Plans `dpo` and `evaluate`; ends
//! DPO early once the held-out preference accuracy (`eval_rewards_accuracy`) reaches
//! `target_accuracy`; stops the run when a reported loss is not finite. Settings: `steps`
//! (100), `beta` (0.1), `target_accuracy` (1.0: never ends early). The pairs and the tasks
//! are the run config's (`defaults.dpo`, `defaults.evaluate`).

use galley_sdk::recipe::{Decision, Recipe, Stage};
use galley_sdk::serde_json::json;
use galley_sdk::{Config, Error, Metric};
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct Settings {
    steps: u32,
    beta: f64,
    target_accuracy: f64,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            steps: 100,
            beta: 0.1,
            target_accuracy: 1.0,
        }
    }
}

#[derive(Default)]
struct Preference {
    target: f64,
}

impl Recipe for Preference {
    fn plan(&mut self, config: &Config) -> Result<Vec<Stage>, Error> {
        let s: Settings = config.parse_into()?;
        if !(s.beta > 0.0 && s.beta.is_finite()) {
            return Err(Error::config("`beta` must be a positive number"));
        }
        self.target = s.target_accuracy;
        Ok(vec![
            Stage::new("dpo", "dpo", json!({"max_steps": s.steps, "beta": s.beta})),
            Stage::new("eval", "evaluate", json!({})),
        ])
    }

    fn on_metrics(
        &mut self,
        stage: &str,
        step: u64,
        metrics: &[Metric],
    ) -> Result<Decision, Error> {
        if let Some(m) = metrics
            .iter()
            .find(|m| m.name.ends_with("loss") && !m.value.is_finite())
        {
            return Ok(Decision::Stop(format!(
                "{} is {} at step {step} of `{stage}`",
                m.name, m.value
            )));
        }
        let acc = metrics
            .iter()
            .find(|m| m.name == "eval_rewards_accuracy")
            .map(|m| m.value);
        Ok(match (stage, acc) {
            ("dpo", Some(a)) if step > 0 && a >= self.target => Decision::NextStage,
            _ => Decision::Proceed,
        })
    }
}

galley_sdk::export_recipe!(Preference);
