//! Wordle as an environment for GRPO (galley's counterpart of the Wordle environment TRL's
//! `environment_factory` examples train on). Each rollout is a game of its own: `reset`
//! picks the secret word — the row's `word` column where it has one, else one drawn from the
//! seed — and tells the model the rules; the model plays through `guess`, each guess answered
//! with its pattern; `reward` scores the game.
//!
//! Settings: `max_guesses` (default 6); `words`, a list of five-letter words to draw secrets
//! from (default: the list below).
//!
//! The score: 1 for a solve, else 0.1 for each green letter of the best guess (at most 0.4),
//! so a model that gets closer is told so before it ever solves one.

pub mod game;

use galley_sdk::environment::Environment;
use galley_sdk::serde_json::{Value, json};
use galley_sdk::{Config, Error, Function};
pub use game::{Mark, Wordle, marks, word};

impl Environment for Wordle {
    fn new(config: &Config) -> Result<Self, Error> {
        Wordle::with(config.json()).map_err(Error::config)
    }

    fn functions(&self) -> Vec<Function> {
        vec![Function::new(
            "guess",
            "Guess the secret five-letter word. Returns the guess's pattern: G (right letter, right place), Y (in the word, elsewhere), _ (not in the word).",
            json!({
                "type": "object",
                "properties": {"word": {"type": "string", "description": "A five-letter word."}},
                "required": ["word"],
                "additionalProperties": false
            }),
        )]
    }

    fn reset(&mut self, row: &Value, seed: u64) -> Result<Option<String>, Error> {
        self.start(row, seed).map(Some).map_err(Error::input)
    }

    fn call(&mut self, _name: &str, args: &Value) -> Result<String, Error> {
        self.play(args["word"].as_str().unwrap_or(""))
            .map_err(Error::input)
    }

    fn reward(&mut self) -> Result<Option<f64>, Error> {
        Ok(Some(self.score()))
    }
}

galley_sdk::export_environment!(Wordle);
