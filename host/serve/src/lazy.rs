//! Constraints that wait for a trigger (llama.cpp's "lazy grammars"): the answer is free
//! until it writes the trigger, then held to a guide until the guided value closes. With
//! `tool_choice: "auto"` the trigger is the format's call opening (`<tool_call>`,
//! `[TOOL_CALLS]`) and the guide the tools' call schema, so a call the model chooses to make
//! always parses and validates, and text around calls stays free; after a call the answer is
//! free again (the next call re-arms it). Behind a thinking block the trigger is `</think>`
//! and the guide the request's `response_format`, which then ends the answer. Blank tokens
//! pass between the trigger and the value's first character (templates put a newline there).

use galley_model::json_mode::Vocab;
use galley_model::json_schema::Guide;

/// Blank tokens allowed between the trigger and the value.
const MAX_BLANKS: u8 = 8;

/// A constraint and its trigger, as a request asks for it.
#[derive(Debug, Clone)]
pub struct Lazy {
    pub trigger: String,
    pub guide: Guide,
    /// The answer ends when the value closes (else it goes on, free, and may re-arm).
    pub end: bool,
}

/// A sequence's place: waiting for the trigger, or held to the guide.
#[derive(Debug)]
pub(crate) struct LazyState {
    spec: Lazy,
    /// The end of the free text, long enough to hold a trigger split over tokens.
    tail: String,
    active: Option<Guide>,
    /// The guided value has its first character.
    started: bool,
    blanks: u8,
}

impl LazyState {
    pub(crate) fn new(spec: Lazy) -> Self {
        Self {
            spec,
            tail: String::new(),
            active: None,
            started: false,
            blanks: 0,
        }
    }

    /// Whether the guide holds the next token.
    pub(crate) fn holds(&self) -> bool {
        self.active.is_some()
    }

    /// Masks what the guide refuses; before the value's first character, blank tokens
    /// (`blanks`) pass too.
    pub(crate) fn mask(&self, logits: &mut [f32], vocab: &Vocab, eos: &[u32], blanks: &[u32]) {
        let Some(g) = &self.active else {
            return;
        };
        if self.started || self.blanks >= MAX_BLANKS {
            g.mask(logits, vocab, eos);
            return;
        }
        let kept: Vec<(u32, f32)> = blanks
            .iter()
            .filter_map(|&b| logits.get(b as usize).map(|&l| (b, l)))
            .collect();
        g.mask(logits, vocab, eos);
        for (b, l) in kept {
            logits[b as usize] = l;
        }
    }

    /// Moves past a generated token whose text is `piece` (special tokens' text included:
    /// a trigger may be one). Returns false when the answer must end here: the guided value
    /// refused the token (nothing valid could follow).
    pub(crate) fn after(&mut self, piece: &str) -> bool {
        if let Some(g) = &mut self.active {
            if !self.started && piece.trim().is_empty() {
                self.blanks += 1;
                return true;
            }
            let body = if self.started {
                piece
            } else {
                piece.trim_start()
            };
            if !g.advance(body) {
                return false;
            }
            self.started = true;
            if g.done() && !self.spec.end {
                self.active = None;
                self.started = false;
                self.tail.clear();
            }
            return true;
        }
        self.tail.push_str(piece);
        let trigger = self.spec.trigger.as_str();
        let Some(at) = self.tail.find(trigger) else {
            // Keep only what may be the start of a trigger split over tokens.
            let keep = self.tail.len().saturating_sub(trigger.len());
            let cut = (keep..=self.tail.len())
                .find(|&i| self.tail.is_char_boundary(i))
                .unwrap_or(self.tail.len());
            self.tail.drain(..cut);
            return true;
        };
        let rest = self.tail[at + trigger.len()..].trim_start().to_string();
        self.tail.clear();
        let mut g = self.spec.guide.clone();
        self.started = false;
        self.blanks = 0;
        if rest.is_empty() {
            self.active = Some(g);
        } else if g.advance(&rest) {
            // The trigger's token ran on into the value: it goes on from there.
            self.started = true;
            if !g.done() || self.spec.end {
                self.active = Some(g);
            }
        }
        // Else the token ran on into text the guide refuses: the answer stays free.
        true
    }
}

/// The tokens whose text is only blank space (they pass before a lazily guided value).
pub(crate) fn blank_tokens(vocab: &Vocab, vocab_size: usize) -> Vec<u32> {
    (0..vocab_size as u32)
        .filter(|&t| {
            let s = vocab.text(t);
            !s.is_empty() && s.chars().all(|c| matches!(c, ' ' | '\n' | '\r' | '\t'))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use galley_model::json_schema::Schema;
    use std::sync::Arc;

    fn lazy(end: bool) -> LazyState {
        let schema = Schema::compile_str(
            r#"{"type": "object", "properties": {"name": {"const": "f"}, "arguments": {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}}, "required": ["name", "arguments"]}"#,
        )
        .unwrap();
        LazyState::new(Lazy {
            trigger: "<tool_call>".into(),
            guide: Guide::schema(Arc::new(schema)),
            end,
        })
    }

    #[test]
    fn free_until_the_trigger_then_held_until_the_value_closes_then_free_again() {
        let mut l = lazy(false);
        for piece in ["Let me ", "call <tool", "_call>"] {
            assert!(!l.holds());
            assert!(l.after(piece));
        }
        assert!(l.holds(), "a trigger split over tokens arms it");
        assert!(l.after("\n"), "a blank passes before the value");
        assert!(l.holds());
        for piece in [r#"{"name":"f","#, r#""arguments":{"n":"#, "12}}"] {
            assert!(l.after(piece), "{piece}");
        }
        assert!(!l.holds(), "free again after the value");
        assert!(l.after("\n</tool_call>\n<tool_call>"));
        assert!(l.holds(), "the next call re-arms it");
        assert!(
            !l.after(r#"{"nope""#),
            "the guide refuses what does not fit"
        );
    }

    #[test]
    fn a_token_that_runs_past_the_trigger_into_the_value_goes_on_from_there() {
        let mut l = lazy(true);
        assert!(l.after("ok <tool_call>\n{\"name\""));
        assert!(l.holds());
        assert!(l.after(":\"f\",\"arguments\":{\"n\":1}}"));
        assert!(
            l.holds(),
            "with `end` the closed value holds: only EOS is left"
        );
        let mut l = lazy(false);
        assert!(l.after("<tool_call> text"));
        assert!(!l.holds(), "text the guide refuses leaves the answer free");
    }

    #[test]
    fn any_pieces_move_it_without_panicking() {
        const BITS: &[&str] = &[
            "<tool_call>",
            "<tool",
            "_call>",
            "{",
            "}",
            "\"",
            "\\",
            ":",
            ",",
            " ",
            "\n",
            "é",
            "😀",
            "\"name\"",
            "\"f\"",
            "\"arguments\"",
            "\"n\"",
            "1",
            "x",
        ];
        let vocab = Vocab::new(BITS.iter().map(|b| b.to_string()).collect());
        let blanks = blank_tokens(&vocab, BITS.len());
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = |n: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % n as u64) as usize
        };
        for end in [false, true] {
            for _ in 0..500 {
                let mut l = lazy(end);
                for _ in 0..next(40) {
                    let mut logits = vec![0.0; BITS.len()];
                    l.mask(&mut logits, &vocab, &[], &blanks);
                    if !l.after(BITS[next(BITS.len())]) {
                        break;
                    }
                }
            }
        }
    }

    #[test]
    fn the_mask_lets_blanks_pass_only_before_the_value() {
        let vocab = Vocab::new(vec![
            "\n".into(),
            "{".into(),
            "x".into(),
            "{\"name\"".into(),
        ]);
        let blanks = blank_tokens(&vocab, 4);
        assert_eq!(blanks, [0]);
        let mut l = lazy(false);
        l.after("<tool_call>");
        let mut logits = vec![1.0; 4];
        l.mask(&mut logits, &vocab, &[], &blanks);
        assert!(
            logits[0] == 1.0 && logits[1] == 1.0 && logits[3] == 1.0,
            "{logits:?}"
        );
        assert_eq!(logits[2], f32::NEG_INFINITY);
        // Past the first character the guide alone decides.
        l.after("{");
        let mut logits = vec![1.0; 4];
        l.mask(&mut logits, &vocab, &[], &blanks);
        assert_eq!(
            (logits[1], logits[2]),
            (f32::NEG_INFINITY, f32::NEG_INFINITY)
        );
    }
}
