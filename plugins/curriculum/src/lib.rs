//! `curriculum`: the common post-training arc as a recipe. Plans `sft` (optional), `grpo`
//! and `evaluate`; moves from GRPO to evaluation once the mean `reward` of a step reaches
//! `target_reward`; stops the run when any reported `loss` is not finite. Settings:
//! `sft_epochs` (1; 0 skips SFT), `grpo_steps` (200), `target_reward` (0.9),
//! `num_generations` (8). The data, reward functions and tasks are the run config's
//! (`defaults.sft`, `defaults.grpo`, `defaults.evaluate`). Stages the host cannot run are
//! still planned but logged, so the user sees it before the run.

use galley_sdk::recipe::{Decision, Recipe, Stage, host};
use galley_sdk::serde_json::json;
use galley_sdk::{Config, Error, Metric};
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct Settings {
    sft_epochs: u32,
    grpo_steps: u32,
    target_reward: f64,
    num_generations: u32,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            sft_epochs: 1,
            grpo_steps: 200,
            target_reward: 0.9,
            num_generations: 8,
        }
    }
}

#[derive(Default)]
struct Curriculum {
    target: f64,
}

impl Recipe for Curriculum {
    fn plan(&mut self, config: &Config) -> Result<Vec<Stage>, Error> {
        let s: Settings = config.parse_into()?;
        if !(0.0..=1e9).contains(&s.target_reward) {
            return Err(Error::config(
                "`target_reward` must be a non-negative number",
            ));
        }
        self.target = s.target_reward;
        let mut stages = Vec::new();
        if s.sft_epochs > 0 {
            stages.push(Stage::new("warmup", "sft", json!({"epochs": s.sft_epochs})));
        }
        stages.push(Stage::new(
            "grpo",
            "grpo",
            json!({"max_steps": s.grpo_steps, "num_generations": s.num_generations}),
        ));
        stages.push(Stage::new("eval", "evaluate", json!({})));
        let kinds = host::stage_kinds();
        for st in &stages {
            if !kinds.contains(&st.kind) {
                galley_sdk::log::warn(&format!(
                    "galley {} cannot run `{}` stages yet (it runs: {})",
                    host::version(),
                    st.kind,
                    kinds.join(", ")
                ));
            }
        }
        Ok(stages)
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
        let reward = metrics.iter().find(|m| m.name == "reward").map(|m| m.value);
        Ok(match (stage, reward) {
            ("grpo", Some(r)) if r >= self.target => Decision::NextStage,
            _ => Decision::Proceed,
        })
    }
}

galley_sdk::export_recipe!(Curriculum);
