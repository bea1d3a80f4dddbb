//! `format`: a reward for structure, not content. Two modes:
//! - `tags` (default `["think", "answer"]`): each `<tag>...</tag>` appears exactly once, in
//!   the given order, and nothing but whitespace sits outside them when `strict` is true.
//! - `pattern`: a regular expression that must match the whole completion (`(?s)` is implied).
//!
//! Scores `correct` (1.0) on success, else `incorrect` (0.0); with `partial: true` in tag
//! mode, the share of tags that are well-formed.

use galley_sdk::reward::{Reward, RewardInput};
use galley_sdk::{Config, Error};
use regex::Regex;
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct Settings {
    tags: Vec<String>,
    pattern: Option<String>,
    strict: bool,
    partial: bool,
    correct: f64,
    incorrect: f64,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            tags: vec!["think".into(), "answer".into()],
            pattern: None,
            strict: true,
            partial: false,
            correct: 1.0,
            incorrect: 0.0,
        }
    }
}

struct Format {
    s: Settings,
    regex: Regex,
}

impl Reward for Format {
    fn new(config: &Config) -> Result<Self, Error> {
        let s: Settings = config.parse_into()?;
        let pattern = match &s.pattern {
            Some(p) => format!("(?s)^(?:{p})$"),
            None => {
                if s.tags.is_empty() {
                    return Err(Error::config("`tags` is empty and no `pattern` is given"));
                }
                let body: Vec<String> = s
                    .tags
                    .iter()
                    .map(|t| {
                        let t = regex::escape(t);
                        format!("<{t}>.*?</{t}>")
                    })
                    .collect();
                let sep = if s.strict { r"\s*" } else { ".*?" };
                let edge = if s.strict { r"\s*" } else { ".*?" };
                format!("(?s)^{edge}{}{edge}$", body.join(sep))
            }
        };
        // Tag mode also requires each tag exactly once (checked in `score`), which the regex
        // crate cannot say without look-around.
        let regex =
            Regex::new(&pattern).map_err(|e| Error::config(format!("bad `pattern`: {e}")))?;
        Ok(Self { s, regex })
    }

    fn score(&mut self, input: &RewardInput) -> Result<Option<f64>, Error> {
        let c = &input.completion;
        if self.s.pattern.is_some() {
            return Ok(Some(if self.regex.is_match(c) {
                self.s.correct
            } else {
                self.s.incorrect
            }));
        }
        let once = |t: &str| {
            c.matches(&format!("<{t}>")).count() == 1 && c.matches(&format!("</{t}>")).count() == 1
        };
        let all_once = self.s.tags.iter().all(|t| once(t));
        if all_once && self.regex.is_match(c) {
            return Ok(Some(self.s.correct));
        }
        if self.s.partial {
            let good = self
                .s
                .tags
                .iter()
                .filter(|t| {
                    once(t) && matches!((c.find(&format!("<{t}>")), c.find(&format!("</{t}>"))), (Some(a), Some(b)) if a < b)
                })
                .count();
            let frac = good as f64 / self.s.tags.len() as f64;
            return Ok(Some(
                self.s.incorrect + frac * (self.s.correct - self.s.incorrect),
            ));
        }
        Ok(Some(self.s.incorrect))
    }
}

galley_sdk::export_reward!(Format);
