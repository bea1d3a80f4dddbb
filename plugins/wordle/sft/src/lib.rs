//! Writes Wordle games as SFT conversations (TRL's tool-calling shape: assistant turns with
//! `tool_calls`, `tool` turns, a `tools` column), played by this plugin's own game code so
//! that the rules, the patterns and the counts are exactly what the environment says in
//! GRPO. The player opens with CRANE and then guesses the first word still consistent with
//! every pattern so far: a warm-up that teaches a small model the calls and a plain strategy.
//!
//!     cargo run --manifest-path plugins/Cargo.toml -p wordle-sft -- N > FILE
//!
//! (`src/main.rs` prints [`games`]).
//!
//! The secrets are every other word of the list from the first (N games at most), so a GRPO
//! run can draw the others.

// The game's source itself (a package depending on `wordle` would link its component exports
// natively, which the host's linker refuses).
#[path = "../../src/game.rs"]
mod game;

use game::{Mark, Wordle, default_words, marks, word};
use serde_json::{Value, json};

const SYSTEM: &str = "You are playing Wordle. Call the guess function with a five-letter word; read its marks, then guess again.";
const USER: &str = "Let's play. Make your first guess.";

/// `n` games (at most one per other word of the list), a JSONL line each.
pub fn games(n: usize) -> Vec<String> {
    let mut lines = Vec::new();
    let words: Vec<[u8; 5]> = default_words().iter().map(|w| word(w).unwrap()).collect();
    // Written as text, key for key as the host offers the environment's function in GRPO
    // (`ToolFunction::openai`, the plugin's schema as its JSON writer orders it), so the
    // warm-up shows the model the very system prompt it will play under.
    let tools = r#"[{"type": "function", "function": {"name": "guess", "description": "Guess the secret five-letter word. Returns the guess's pattern: G (right letter, right place), Y (in the word, elsewhere), _ (not in the word).", "parameters": {"additionalProperties": false, "properties": {"word": {"description": "A five-letter word.", "type": "string"}}, "required": ["word"], "type": "object"}}}]"#;
    for secret in default_words().iter().step_by(2).take(n) {
        let mut game = Wordle::with(&Value::Null).unwrap();
        let rules = game.start(&json!({"word": secret}), 0).unwrap();
        let mut messages = vec![
            json!({"role": "system", "content": SYSTEM}),
            json!({"role": "user", "content": format!("{USER}{rules}")}),
        ];
        let mut seen: Vec<([u8; 5], [Mark; 5])> = Vec::new();
        let mut guess = *b"crane";
        loop {
            let text = String::from_utf8_lossy(&guess).into_owned();
            let answer = game.play(&text).unwrap();
            messages.push(json!({"role": "assistant", "tool_calls": [
                {"type": "function", "function": {"name": "guess", "arguments": {"word": text}}}]}));
            messages.push(json!({"role": "tool", "name": "guess", "content": answer}));
            let m = marks(&word(secret).unwrap(), &guess);
            if m.iter().all(|m| *m == Mark::Green) {
                assert_eq!(game.score(), 1.0);
                messages.push(json!({"role": "assistant",
                    "content": format!("Solved: the word is {}.", text.to_uppercase())}));
                break;
            }
            if answer.contains("(0 guesses left)") {
                messages.push(json!({"role": "assistant", "content": "Out of guesses."}));
                break;
            }
            seen.push((guess, m));
            // The first word every pattern so far allows.
            guess = *words
                .iter()
                .find(|w| seen.iter().all(|(g, m)| marks(w, g) == *m))
                .expect("the secret itself is consistent");
        }
        lines.push(format!(
            "{{\"messages\": {}, \"tools\": {tools}}}",
            Value::Array(messages)
        ));
    }
    lines
}

#[cfg(test)]
mod tests {
    /// The warm-up set the Wordle run example trains on is what this writes: a change to the
    /// game's words, rules or patterns must be followed by writing it again.
    #[test]
    fn the_examples_warm_up_set_is_what_the_game_writes() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../../examples/run/wordle-sft.jsonl"
        );
        let committed = std::fs::read_to_string(path).unwrap();
        let lines: Vec<&str> = committed.lines().collect();
        assert_eq!(
            lines,
            super::games(lines.len()),
            "run `cargo run --manifest-path plugins/Cargo.toml -p wordle-sft -- {} > examples/run/wordle-sft.jsonl`",
            lines.len()
        );
    }

    /// Every game ends solved within six guesses, and every guess is consistent.
    #[test]
    fn the_solver_solves_every_game() {
        for line in super::games(500) {
            let v: serde_json::Value = serde_json::from_str(&line).unwrap();
            let m = v["messages"].as_array().unwrap();
            assert!(
                m.last().unwrap()["content"]
                    .as_str()
                    .unwrap()
                    .starts_with("Solved"),
                "{line}"
            );
            assert!(m.iter().filter(|m| m["role"] == "tool").count() <= 6);
        }
    }
}
