//! The game itself, apart from the plugin's exports (the benchmark compiles it natively as
//! the peer of the sandboxed component): marking a guess, one game's state, its score.

use serde_json::Value;

/// Secrets drawn when the row names none: common words, no plurals.
const WORDS: &[&str] = &[
    "about", "above", "actor", "adult", "after", "again", "agree", "alarm", "album", "alive",
    "allow", "alone", "among", "angle", "apple", "apply", "arena", "argue", "arise", "aside",
    "award", "aware", "basic", "beach", "begin", "being", "below", "bench", "birth", "black",
    "blade", "blame", "blind", "block", "blood", "board", "brain", "brand", "bread", "break",
    "brick", "brief", "bring", "broad", "brown", "build", "buyer", "cabin", "cable", "candy",
    "carry", "catch", "cause", "chain", "chair", "chart", "chase", "cheap", "check", "chest",
    "chief", "child", "civil", "claim", "class", "clean", "clear", "climb", "clock", "close",
    "cloud", "coach", "coast", "count", "court", "cover", "crane", "crash", "cream", "crime",
    "cross", "crowd", "curve", "cycle", "dance", "death", "delay", "depth", "doubt", "draft",
    "drama", "dream", "dress", "drink", "drive", "early", "earth", "eight", "empty", "enemy",
    "enjoy", "enter", "entry", "equal", "error", "event", "exact", "exist", "extra", "faith",
    "false", "fault", "field", "fight", "final", "first", "flame", "floor", "focus", "force",
    "frame", "fresh", "front", "fruit", "funny", "ghost", "giant", "given", "glass", "globe",
    "grace", "grade", "grain", "grand", "grant", "grass", "great", "green", "group", "guard",
    "guess", "guide", "happy", "heart", "heavy", "horse", "hotel", "house", "human", "image",
    "index", "inner", "input", "issue", "joint", "judge", "knife", "label", "large", "laser",
    "later", "laugh", "layer", "learn", "least", "leave", "legal", "level", "light", "limit",
    "local", "logic", "lucky", "lunch", "magic", "major", "maker", "march", "match", "maybe",
    "metal", "minor", "model", "money", "month", "moral", "motor", "mount", "mouse", "mouth",
    "movie", "music", "night", "noise", "north", "novel", "nurse", "ocean", "offer", "order",
    "other", "owner", "paint", "panel", "paper", "party", "peace", "phase", "phone", "piano",
    "piece", "pilot", "pitch", "place", "plain", "plane", "plant", "plate", "point", "pound",
    "power", "press", "price", "pride", "prime", "print", "prize", "proof", "proud", "queen",
    "quick", "quiet", "radio", "raise", "range", "ratio", "reach", "ready", "right", "river",
    "robot", "round", "route", "royal", "rural", "scale", "scene", "scope", "score", "sense",
    "serve", "shape", "share", "sharp", "sheet", "shelf", "shell", "shift", "shirt", "shock",
    "shoot", "short", "sight", "skill", "sleep", "slide", "small", "smart", "smile", "smoke",
    "solid", "solve", "sound", "south", "space", "spare", "speak", "speed", "spend", "sport",
    "staff", "stage", "stand", "start", "state", "steam", "steel", "stick", "still", "stock",
    "stone", "store", "storm", "story", "strip", "study", "stuff", "style", "sugar", "sweet",
    "table", "taste", "teach", "thank", "theme", "thing", "think", "third", "throw", "tiger",
    "title", "today", "topic", "total", "touch", "tower", "track", "trade", "train", "treat",
    "trend", "trial", "truck", "trust", "truth", "uncle", "union", "unity", "upper", "urban",
    "usual", "valid", "value", "video", "visit", "voice", "waste", "watch", "water", "wheel",
    "white", "whole", "woman", "world", "worry", "write", "wrong", "young", "youth", "zebra",
];

/// The words secrets are drawn from when the settings name none.
pub fn default_words() -> &'static [&'static str] {
    WORDS
}

/// What a letter of a guess says about the secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mark {
    /// Right letter, right place.
    Green,
    /// In the word, elsewhere (as many times as the secret has it unmatched).
    Yellow,
    /// Not in the word (or not that many times).
    Gray,
}

/// Wordle's marking, repeated letters included: greens first, then each remaining letter of
/// the guess is yellow while the secret has an unmatched copy of it left.
pub fn marks(secret: &[u8; 5], guess: &[u8; 5]) -> [Mark; 5] {
    let mut out = [Mark::Gray; 5];
    let mut left = [0u8; 26];
    for i in 0..5 {
        if guess[i] == secret[i] {
            out[i] = Mark::Green;
        } else {
            left[(secret[i] - b'a') as usize] += 1;
        }
    }
    for i in 0..5 {
        let c = (guess[i] - b'a') as usize;
        if out[i] != Mark::Green && left[c] > 0 {
            left[c] -= 1;
            out[i] = Mark::Yellow;
        }
    }
    out
}

/// A word of five ASCII letters, lowercased; anything else is the model's mistake.
pub fn word(text: &str) -> Result<[u8; 5], String> {
    let w = text.trim().to_ascii_lowercase();
    match <[u8; 5]>::try_from(w.as_bytes()) {
        Ok(b) if b.iter().all(u8::is_ascii_lowercase) => Ok(b),
        _ => Err(format!(
            "`{}` is not a five-letter word (letters a-z only)",
            text.chars().take(40).collect::<String>()
        )),
    }
}

/// One game.
pub struct Wordle {
    words: Vec<[u8; 5]>,
    max_guesses: u32,
    secret: [u8; 5],
    guesses: u32,
    solved: bool,
    best_greens: u32,
}

impl Wordle {
    /// A game with these settings, before `reset`.
    pub fn with(config: &Value) -> Result<Self, String> {
        let max_guesses = match &config["max_guesses"] {
            Value::Null => 6,
            v => v
                .as_u64()
                .filter(|n| (1..=100).contains(n))
                .ok_or("`max_guesses` must be a whole number from 1 to 100")?
                as u32,
        };
        let words = match &config["words"] {
            Value::Null => WORDS.iter().map(|w| word(w)).collect::<Result<_, _>>()?,
            Value::Array(list) if !list.is_empty() => list
                .iter()
                .map(|w| word(w.as_str().unwrap_or("")).map_err(|e| format!("`words`: {e}")))
                .collect::<Result<Vec<_>, _>>()?,
            _ => return Err("`words` must be a non-empty list of five-letter words".into()),
        };
        Ok(Self {
            words,
            max_guesses,
            secret: *b"about",
            guesses: 0,
            solved: false,
            best_greens: 0,
        })
    }

    /// Starts the game: the row's `word`, else the seed's pick from the list.
    pub fn start(&mut self, row: &Value, seed: u64) -> Result<String, String> {
        self.secret = match &row["word"] {
            Value::Null => self.words[(seed % self.words.len() as u64) as usize],
            v => word(v.as_str().unwrap_or("")).map_err(|e| format!("the row's `word`: {e}"))?,
        };
        self.guesses = 0;
        self.solved = false;
        self.best_greens = 0;
        Ok(format!(
            "\n\nLet's play Wordle. Guess my secret five-letter word in at most {} guesses with the `guess` function. Each guess is answered with a pattern, one mark per letter: G (right letter, right place), Y (in the word, elsewhere), _ (not in the word).",
            self.max_guesses
        ))
    }

    /// One guess: its pattern, or why it does not count.
    pub fn play(&mut self, guess: &str) -> Result<String, String> {
        if self.solved {
            return Err("the game is over: you already found the word".into());
        }
        if self.guesses >= self.max_guesses {
            return Err(format!(
                "the game is over: no guesses left of {}",
                self.max_guesses
            ));
        }
        let g = word(guess)?;
        self.guesses += 1;
        let m = marks(&self.secret, &g);
        let greens = m.iter().filter(|m| **m == Mark::Green).count() as u32;
        self.best_greens = self.best_greens.max(greens);
        if greens == 5 {
            self.solved = true;
            return Ok(format!(
                "{}: G G G G G, solved in {} {}",
                String::from_utf8_lossy(&g).to_uppercase(),
                self.guesses,
                if self.guesses == 1 {
                    "guess"
                } else {
                    "guesses"
                }
            ));
        }
        let pattern: Vec<&str> = m
            .iter()
            .map(|m| match m {
                Mark::Green => "G",
                Mark::Yellow => "Y",
                Mark::Gray => "_",
            })
            .collect();
        let left = self.max_guesses - self.guesses;
        Ok(format!(
            "{}: {} ({left} {} left)",
            String::from_utf8_lossy(&g).to_uppercase(),
            pattern.join(" "),
            if left == 1 { "guess" } else { "guesses" }
        ))
    }

    /// 1 for a solve, else 0.1 per green letter of the best guess.
    pub fn score(&self) -> f64 {
        if self.solved {
            1.0
        } else {
            0.1 * self.best_greens as f64
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn w(s: &str) -> [u8; 5] {
        word(s).unwrap()
    }

    fn pattern(secret: &str, guess: &str) -> String {
        marks(&w(secret), &w(guess))
            .iter()
            .map(|m| match m {
                Mark::Green => 'G',
                Mark::Yellow => 'Y',
                Mark::Gray => '_',
            })
            .collect()
    }

    #[test]
    fn repeated_letters_are_marked_as_wordle_marks_them() {
        assert_eq!(pattern("crane", "crane"), "GGGGG");
        assert_eq!(pattern("crane", "nacre"), "YYYYG");
        // Both of the secret's e's are matched green: the guess's third e is gray.
        assert_eq!(pattern("theme", "geese"), "__G_G");
    }

    #[test]
    fn duplicate_guess_letters_take_only_the_copies_left() {
        // secret "apple": two p's; the guess "ppppp" greens both and grays the rest.
        assert_eq!(pattern("apple", "ppppp"), "_GG__");
        // secret "abbey" vs guess "babes": b, a and e in the word, elsewhere; the second b green.
        assert_eq!(pattern("abbey", "babes"), "YYGG_");
        assert_eq!(pattern("sweet", "eerie"), "YY___");
    }

    #[test]
    fn a_game_runs_from_reset_to_score() {
        let mut g = Wordle::with(&json!({"max_guesses": 3})).unwrap();
        let rules = g.start(&json!({"word": "Crane"}), 0).unwrap();
        assert!(rules.contains("at most 3 guesses"), "{rules}");
        assert_eq!(
            g.play("trace").unwrap(),
            "TRACE: _ G G Y G (2 guesses left)"
        );
        assert_eq!(g.score(), 0.30000000000000004);
        assert!(
            g.play("cran")
                .unwrap_err()
                .contains("not a five-letter word")
        );
        assert_eq!(
            g.play("CRANE").unwrap(),
            "CRANE: G G G G G, solved in 2 guesses"
        );
        assert_eq!(g.score(), 1.0);
        assert!(g.play("crane").unwrap_err().contains("already found"));
    }

    #[test]
    fn guesses_run_out() {
        let mut g = Wordle::with(&json!({"max_guesses": 1})).unwrap();
        g.start(&json!({"word": "crane"}), 0).unwrap();
        assert_eq!(
            g.play("plate").unwrap(),
            "PLATE: _ _ G _ G (0 guesses left)"
        );
        assert!(g.play("crane").unwrap_err().contains("no guesses left"));
        assert_eq!(g.score(), 0.2);
    }

    #[test]
    fn the_secret_is_the_rows_or_the_seeds() {
        let mut g = Wordle::with(&json!({"words": ["alpha", "bravo"]})).unwrap();
        g.start(&json!({}), 3).unwrap();
        assert_eq!(&g.secret, b"bravo");
        g.start(&json!({"word": "delta"}), 3).unwrap();
        assert_eq!(&g.secret, b"delta");
        assert!(g.start(&json!({"word": 5}), 0).is_err());
        assert!(Wordle::with(&json!({"words": ["toolong"]})).is_err());
        assert!(Wordle::with(&json!({"max_guesses": 0})).is_err());
        for w in WORDS {
            word(w).unwrap();
        }
    }
}
