//! TEST ONLY. An evaluator that traps or returns garbage as its `mode` setting says.

use galley_sdk::evaluator::{Evaluator, Prediction};
use galley_sdk::{Config, Error, Metric};

struct Hostile {
    mode: String,
}

impl Evaluator for Hostile {
    fn new(config: &Config) -> Result<Self, Error> {
        let mode = config.get_str("mode").unwrap_or("ok").to_string();
        if mode == "trap-init" {
            panic!("hostile evaluator panicked in init on purpose");
        }
        Ok(Self { mode })
    }

    fn score(&mut self, _p: &Prediction) -> Result<Vec<Metric>, Error> {
        match self.mode.as_str() {
            "trap-score" => panic!("hostile evaluator panicked in score on purpose"),
            "nan" => Ok(vec![Metric::new("score", f64::NAN)]),
            _ => Ok(vec![Metric::new("score", 1.0)]),
        }
    }

    fn aggregate(&mut self, scores: &[Vec<Metric>]) -> Result<Vec<Metric>, Error> {
        if self.mode == "trap-aggregate" {
            panic!("hostile evaluator panicked in aggregate on purpose");
        }
        Ok(galley_sdk::evaluator::mean_by_name(scores))
    }
}

galley_sdk::export_evaluator!(Hostile);
