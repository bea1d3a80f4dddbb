//! `length-penalty`: the soft overlong punishment of DAPO. With `max_length` L and `buffer`
//! B, a completion of length n scores 0 when n <= L - B, (L - B - n) / B when L - B < n <= L,
//! and -1 beyond L, times `scale`. Length is counted in `unit`: `words` (whitespace-separated,
//! the default), `chars`, or `bytes`. Tokens belong to the host; use it when it ships.

use galley_sdk::reward::{Reward, RewardInput};
use galley_sdk::{Config, Error};
use serde::Deserialize;

#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "lowercase")]
enum Unit {
    Words,
    Chars,
    Bytes,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    max_length: f64,
    #[serde(default)]
    buffer: Option<f64>,
    #[serde(default = "words")]
    unit: Unit,
    #[serde(default = "one")]
    scale: f64,
}

fn words() -> Unit {
    Unit::Words
}
fn one() -> f64 {
    1.0
}

struct LengthPenalty {
    max: f64,
    buffer: f64,
    unit: Unit,
    scale: f64,
}

impl Reward for LengthPenalty {
    fn new(config: &Config) -> Result<Self, Error> {
        if config.json().get("max_length").is_none() {
            return Err(Error::config(
                "`max_length` is required (e.g. {\"max_length\": 512})",
            ));
        }
        let s: Settings = config.parse_into()?;
        if s.max_length <= 0.0 {
            return Err(Error::config("`max_length` must be positive"));
        }
        let buffer = s.buffer.unwrap_or(s.max_length / 4.0);
        if buffer <= 0.0 || buffer > s.max_length {
            return Err(Error::config("`buffer` must be in (0, max_length]"));
        }
        Ok(Self {
            max: s.max_length,
            buffer,
            unit: s.unit,
            scale: s.scale,
        })
    }

    fn score(&mut self, input: &RewardInput) -> Result<Option<f64>, Error> {
        let c = &input.completion;
        let n = match self.unit {
            Unit::Words => c.split_whitespace().count(),
            Unit::Chars => c.chars().count(),
            Unit::Bytes => c.len(),
        } as f64;
        let free = self.max - self.buffer;
        let p = if n <= free {
            0.0
        } else if n <= self.max {
            (free - n) / self.buffer
        } else {
            -1.0
        };
        Ok(Some(p * self.scale))
    }
}

galley_sdk::export_reward!(LengthPenalty);
