use galley_sdk::evaluator::{Evaluator, Prediction};
use galley_sdk::{Config, Error, Metric};

/// 1.0 when the prediction equals a reference after trimming and lower-casing.
struct ExactMatch;

impl Evaluator for ExactMatch {
    fn new(_config: &Config) -> Result<Self, Error> {
        Ok(ExactMatch)
    }

    fn score(&mut self, p: &Prediction) -> Result<Vec<Metric>, Error> {
        let pred = p.prediction.trim().to_lowercase();
        let hit = p.references.iter().any(|r| r.trim().to_lowercase() == pred);
        Ok(vec![Metric::new("exact_match", if hit { 1.0 } else { 0.0 })])
    }
    // `aggregate` defaults to the mean of each metric, plus `count`.
}

galley_sdk::export_evaluator!(ExactMatch);
