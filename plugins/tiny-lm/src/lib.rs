//! `tiny-lm`: pre-training from scratch as a recipe. Plans one `pretrain` stage: a Llama of
//! `hidden_size` (256) x `layers` (4) with `heads` (4, and half as many key/value heads), a
//! byte-level BPE tokenizer of `vocab_size` (4096) trained on the run's text, `epochs` (1) at
//! `learning_rate` (1e-3, cosine) with a held-out share of `validation_split` (0.05). Ends
//! pre-training once the held-out loss reaches `target_loss` (off by default); stops on a
//! non-finite loss. The text is the run config's (`defaults.pretrain.data.train.path`).

use galley_sdk::recipe::{Decision, Recipe, Stage};
use galley_sdk::serde_json::json;
use galley_sdk::{Config, Error, Metric};
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct Settings {
    hidden_size: u32,
    layers: u32,
    heads: u32,
    vocab_size: u32,
    epochs: u32,
    learning_rate: f64,
    validation_split: f64,
    target_loss: Option<f64>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            hidden_size: 256,
            layers: 4,
            heads: 4,
            vocab_size: 4096,
            epochs: 1,
            learning_rate: 1e-3,
            validation_split: 0.05,
            target_loss: None,
        }
    }
}

#[derive(Default)]
struct TinyLm {
    target: Option<f64>,
}

impl Recipe for TinyLm {
    fn plan(&mut self, config: &Config) -> Result<Vec<Stage>, Error> {
        let s: Settings = config.parse_into()?;
        if s.heads == 0 || !s.hidden_size.is_multiple_of(s.heads) {
            return Err(Error::config("`hidden_size` must be a multiple of `heads`"));
        }
        if !(0.0..1.0).contains(&s.validation_split) {
            return Err(Error::config("`validation_split` must be in [0, 1)"));
        }
        self.target = s.target_loss;
        Ok(vec![Stage::new(
            "pretrain",
            "pretrain",
            json!({
                "model": {
                    "init": {
                        "hidden_size": s.hidden_size,
                        "intermediate_size": s.hidden_size * 3,
                        "num_layers": s.layers,
                        "num_heads": s.heads,
                        "num_kv_heads": (s.heads / 2).max(1),
                    },
                    "tokenizer": {"train": {"vocab_size": s.vocab_size}},
                },
                "tuning": "full",
                "epochs": s.epochs,
                "learning_rate": s.learning_rate,
                "validation_split": s.validation_split,
                "loss_on": "all",
            }),
        )])
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
        let eval = metrics.iter().find(|m| m.name == "eval_loss");
        Ok(match (self.target, eval) {
            (Some(t), Some(m)) if step > 0 && m.value <= t => Decision::NextStage,
            _ => Decision::Proceed,
        })
    }
}

galley_sdk::export_recipe!(TinyLm);
