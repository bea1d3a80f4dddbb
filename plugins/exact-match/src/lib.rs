//! `exact-match`: 1 when the prediction equals any reference after normalisation, else 0;
//! aggregated as `exact_match` (accuracy) and `count`. Settings (all booleans):
//! `ignore_case` (true), `ignore_punctuation` (false), `collapse_whitespace` (true),
//! `strip_articles` (false; SQuAD-style "a", "an", "the"), `first_line` (false: compare only
//! the prediction's first non-empty line).

use galley_sdk::evaluator::{Evaluator, Prediction};
use galley_sdk::{Config, Error, Metric};
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct Settings {
    ignore_case: bool,
    ignore_punctuation: bool,
    collapse_whitespace: bool,
    strip_articles: bool,
    first_line: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            ignore_case: true,
            ignore_punctuation: false,
            collapse_whitespace: true,
            strip_articles: false,
            first_line: false,
        }
    }
}

struct ExactMatch(Settings);

impl ExactMatch {
    fn normalize(&self, text: &str) -> String {
        let s = &self.0;
        let mut t = text.to_string();
        if s.ignore_case {
            t = t.to_lowercase();
        }
        if s.ignore_punctuation {
            t = t.chars().filter(|c| !c.is_ascii_punctuation()).collect();
        }
        if s.strip_articles {
            t = t
                .split_whitespace()
                .filter(|w| !["a", "an", "the"].contains(&w.to_lowercase().as_str()))
                .collect::<Vec<_>>()
                .join(" ");
        }
        if s.collapse_whitespace {
            t = t.split_whitespace().collect::<Vec<_>>().join(" ");
        }
        t
    }
}

impl Evaluator for ExactMatch {
    fn new(config: &Config) -> Result<Self, Error> {
        Ok(Self(config.parse_into()?))
    }

    fn score(&mut self, p: &Prediction) -> Result<Vec<Metric>, Error> {
        if p.references.is_empty() {
            return Err(Error::input(format!(
                "prediction `{}` has no references",
                p.id
            )));
        }
        let pred = if self.0.first_line {
            p.prediction
                .lines()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("")
        } else {
            &p.prediction
        };
        let pred = self.normalize(pred);
        let hit = p.references.iter().any(|r| self.normalize(r) == pred);
        Ok(vec![Metric::new(
            "exact_match",
            if hit { 1.0 } else { 0.0 },
        )])
    }
}

galley_sdk::export_evaluator!(ExactMatch);
