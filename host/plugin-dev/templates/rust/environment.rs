//! An environment a model acts in during GRPO rollouts (`grpo.environment`): guess a number
//! from 1 to 100, each guess answered "higher", "lower" or "correct". galley makes one fresh
//! instance per rollout, so this value is one game: `reset` starts it from the dataset row,
//! the model's `guess` calls play it, `reward` scores it.

use galley_sdk::environment::Environment;
use galley_sdk::serde_json::{Value, json};
use galley_sdk::{Config, Error, Function};

struct Guess {
    secret: i64,
    guesses: u32,
    solved: bool,
}

impl Environment for Guess {
    fn new(_config: &Config) -> Result<Self, Error> {
        Ok(Guess {
            secret: 0,
            guesses: 0,
            solved: false,
        })
    }

    fn functions(&self) -> Vec<Function> {
        vec![Function::new(
            "guess",
            "Guess the secret number; answered higher, lower or correct.",
            json!({
                "type": "object",
                "properties": {"n": {"type": "integer", "description": "Your guess, 1 to 100."}},
                "required": ["n"]
            }),
        )]
    }

    /// The row's `secret` column where it has one, else a number drawn from the seed (every
    /// rollout of a prompt gets the same row and seed, and must start the same game).
    fn reset(&mut self, row: &Value, seed: u64) -> Result<Option<String>, Error> {
        self.secret = row["secret"].as_i64().unwrap_or((seed % 100) as i64 + 1);
        Ok(Some(
            " I am thinking of a number from 1 to 100: find it with `guess`.".into(),
        ))
    }

    fn call(&mut self, _name: &str, args: &Value) -> Result<String, Error> {
        let n = args["n"]
            .as_i64()
            .ok_or_else(|| Error::input("`n` must be an integer"))?;
        self.guesses += 1;
        self.solved |= n == self.secret;
        Ok(match n.cmp(&self.secret) {
            std::cmp::Ordering::Less => "higher",
            std::cmp::Ordering::Greater => "lower",
            std::cmp::Ordering::Equal => "correct",
        }
        .into())
    }

    /// 1 for a solve in one guess, less for more; 0 unsolved.
    fn reward(&mut self) -> Result<Option<f64>, Error> {
        Ok(Some(if self.solved {
            1.0 / self.guesses as f64
        } else {
            0.0
        }))
    }
}

galley_sdk::export_environment!(Guess);
