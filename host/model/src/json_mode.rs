//! JSON mode (OpenAI's `response_format: {"type": "json_object"}`): generation constrained so
//! the text is always a prefix of one JSON object and ends exactly when the object closes.
//! Each step, every vocabulary token whose text would leave the prefix invalid is masked
//! before sampling, and the end-of-sequence tokens are allowed only once the object is
//! complete (and then nothing else is). The state is a small `Copy` value — the nesting is a
//! bit stack, up to 64 levels — so trying all ~50k tokens a step costs a copy and a few
//! transitions each, not an allocation.

/// Where in the JSON text the generation is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// A value is expected (`top`: the document's first, which must be an object).
    Value {
        top: bool,
    },
    /// Just after `[`: a value or `]`.
    ArrayFirst,
    /// Just after `{`: a key or `}`.
    ObjectFirst,
    /// After `,` in an object: a key.
    Key,
    /// After a key: `:`.
    Colon,
    /// After a value: `,` or the container's close.
    After,
    /// Inside a string; `escape`: 0 none, 1 after `\`, 2-5 hex digits of `\u` still due.
    Str {
        key: bool,
        escape: u8,
    },
    Number(Num),
    /// `true`, `false`, `null`: the bytes still due.
    Literal {
        rest: &'static [u8],
    },
    /// The object is closed: only the end of the sequence may follow.
    Done,
}

/// Where in a number: after `-`, after a leading `0`, in the integer digits, after `.`, in
/// the fraction, after `e`, after the exponent's sign, in the exponent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Num {
    Minus,
    Zero,
    Int,
    Dot,
    Frac,
    E,
    ESign,
    Exp,
}

impl Num {
    /// Whether the number may end here.
    pub(crate) fn complete(self) -> bool {
        matches!(self, Num::Zero | Num::Int | Num::Frac | Num::Exp)
    }

    /// The number's state after `c`; `None` where `c` cannot continue it.
    pub(crate) fn next(self, c: char) -> Option<Num> {
        let digit = c.is_ascii_digit();
        Some(match (self, c) {
            (Num::Minus, '0') => Num::Zero,
            (Num::Minus, _) if digit => Num::Int,
            (Num::Int, _) if digit => Num::Int,
            (Num::Zero | Num::Int, '.') => Num::Dot,
            (Num::Dot | Num::Frac, _) if digit => Num::Frac,
            (Num::Zero | Num::Int | Num::Frac, 'e' | 'E') => Num::E,
            (Num::E, '+' | '-') => Num::ESign,
            (Num::E | Num::ESign | Num::Exp, _) if digit => Num::Exp,
            _ => return None,
        })
    }
}

/// Whitespace runs longer than this are refused, so a model cannot stall in blank space
/// (llama.cpp's JSON grammar bounds it the same way); pretty-printed nesting still fits.
pub(crate) const MAX_BLANK: u8 = 20;
const MAX_DEPTH: u8 = 64;

/// A valid prefix of one JSON object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JsonPrefix {
    mode: Mode,
    /// Open containers, innermost in bit `depth - 1`: 1 an object, 0 an array.
    stack: u64,
    depth: u8,
    blank: u8,
}

impl Default for JsonPrefix {
    fn default() -> Self {
        Self::new()
    }
}

impl JsonPrefix {
    /// Nothing generated yet: the text must open an object.
    pub fn new() -> Self {
        Self {
            mode: Mode::Value { top: true },
            stack: 0,
            depth: 0,
            blank: 0,
        }
    }

    /// The object is complete: the sequence must end now.
    pub fn done(&self) -> bool {
        self.mode == Mode::Done
    }

    /// The state after `text`, if the text keeps the prefix valid (an empty text does not:
    /// it would let special tokens through).
    pub fn after(&self, text: &str) -> Option<Self> {
        if text.is_empty() {
            return None;
        }
        let mut s = *self;
        for c in text.chars() {
            s.push(c)?;
        }
        Some(s)
    }

    fn in_object(&self) -> bool {
        self.depth > 0 && (self.stack >> (self.depth - 1)) & 1 == 1
    }

    fn open(&mut self, object: bool) -> Option<()> {
        if self.depth >= MAX_DEPTH {
            return None;
        }
        self.stack = (self.stack & !(1 << self.depth)) | (u64::from(object) << self.depth);
        self.depth += 1;
        self.mode = if object {
            Mode::ObjectFirst
        } else {
            Mode::ArrayFirst
        };
        Some(())
    }

    fn close(&mut self, object: bool) -> Option<()> {
        if self.depth == 0 || self.in_object() != object {
            return None;
        }
        self.depth -= 1;
        self.mode = if self.depth == 0 {
            Mode::Done
        } else {
            Mode::After
        };
        Some(())
    }

    /// A value begins with `c` (in `Value` or `ArrayFirst` mode).
    fn value(&mut self, c: char, top: bool) -> Option<()> {
        if top && c != '{' {
            return None;
        }
        match c {
            '{' => self.open(true)?,
            '[' => self.open(false)?,
            '"' => {
                self.mode = Mode::Str {
                    key: false,
                    escape: 0,
                }
            }
            '-' => self.mode = Mode::Number(Num::Minus),
            '0' => self.mode = Mode::Number(Num::Zero),
            '1'..='9' => self.mode = Mode::Number(Num::Int),
            't' => self.mode = Mode::Literal { rest: b"rue" },
            'f' => self.mode = Mode::Literal { rest: b"alse" },
            'n' => self.mode = Mode::Literal { rest: b"ull" },
            _ => return None,
        }
        Some(())
    }

    fn push(&mut self, c: char) -> Option<()> {
        let blank = matches!(c, ' ' | '\n' | '\r' | '\t');
        // Blank space between tokens (never before the object or after it).
        let between = matches!(
            self.mode,
            Mode::Value { top: false }
                | Mode::ArrayFirst
                | Mode::ObjectFirst
                | Mode::Key
                | Mode::Colon
                | Mode::After
        );
        if blank && between {
            self.blank += 1;
            return (self.blank <= MAX_BLANK).then_some(());
        }
        if !matches!(self.mode, Mode::Str { .. }) {
            self.blank = 0;
        }
        match self.mode {
            Mode::Done => None,
            Mode::Value { top } => self.value(c, top),
            Mode::ArrayFirst if c == ']' => self.close(false),
            Mode::ArrayFirst => self.value(c, false),
            Mode::ObjectFirst if c == '}' => self.close(true),
            Mode::ObjectFirst | Mode::Key if c == '"' => {
                self.mode = Mode::Str {
                    key: true,
                    escape: 0,
                };
                Some(())
            }
            Mode::ObjectFirst | Mode::Key => None,
            Mode::Colon if c == ':' => {
                self.mode = Mode::Value { top: false };
                Some(())
            }
            Mode::Colon => None,
            Mode::After => match c {
                ',' if self.in_object() => {
                    self.mode = Mode::Key;
                    Some(())
                }
                ',' => {
                    self.mode = Mode::Value { top: false };
                    Some(())
                }
                '}' => self.close(true),
                ']' => self.close(false),
                _ => None,
            },
            Mode::Str { key, escape } => {
                let next = |escape| Mode::Str { key, escape };
                self.mode = match (escape, c) {
                    (0, '"') if key => Mode::Colon,
                    (0, '"') => Mode::After,
                    (0, '\\') => next(1),
                    (0, c) if (c as u32) < 0x20 => return None,
                    (0, _) => next(0),
                    (1, '"' | '\\' | '/' | 'b' | 'f' | 'n' | 'r' | 't') => next(0),
                    (1, 'u') => next(5),
                    (1, _) => return None,
                    (n, c) if c.is_ascii_hexdigit() => next(if n == 2 { 0 } else { n - 1 }),
                    _ => return None,
                };
                Some(())
            }
            Mode::Literal { rest } => {
                let (&first, rest) = rest.split_first()?;
                if c as u32 != u32::from(first) {
                    return None;
                }
                self.mode = if rest.is_empty() {
                    Mode::After
                } else {
                    Mode::Literal { rest }
                };
                Some(())
            }
            Mode::Number(n) => match n.next(c) {
                Some(next) => {
                    self.mode = Mode::Number(next);
                    Some(())
                }
                // The number ends: `c` is what follows it.
                None if n.complete() => {
                    self.mode = Mode::After;
                    self.push(c)
                }
                None => None,
            },
        }
    }
}

/// The vocabulary as JSON mode sees it: each token's text (special tokens: empty), and
/// whether it is plain string content — no quote, backslash or control character — which
/// inside a string (where most of an answer's tokens go) passes without being walked.
pub struct Vocab {
    texts: Vec<String>,
    plain: Vec<bool>,
}

impl Vocab {
    /// Each of a model's `vocab_size` tokens' text mid-answer: special tokens have none, so
    /// they never pass; a token holding part of a multi-byte character reads as U+FFFD, which
    /// can only be inside a string, where it passes and nowhere else.
    pub fn for_tokenizer(tok: &crate::Tokenizer, vocab_size: usize) -> Self {
        let special: std::collections::HashSet<u32> = tok
            .inner()
            .get_added_tokens_decoder()
            .into_iter()
            .filter(|(_, t)| t.special)
            .map(|(id, _)| id)
            .collect();
        let texts = (0..vocab_size as u32)
            .map(|id| {
                if special.contains(&id) {
                    return String::new();
                }
                match tok.piece(id).unwrap_or_default() {
                    t if t.is_empty() => "\u{FFFD}".to_string(),
                    t => t,
                }
            })
            .collect();
        Self::new(texts)
    }

    pub fn new(texts: Vec<String>) -> Self {
        let plain = texts
            .iter()
            .map(|t| {
                !t.is_empty()
                    && !t
                        .chars()
                        .any(|c| c == '"' || c == '\\' || (c as u32) < 0x20)
            })
            .collect();
        Self { texts, plain }
    }

    pub fn text(&self, id: u32) -> &str {
        self.texts.get(id as usize).map_or("", String::as_str)
    }
}

/// Masks `logits` for JSON mode at `state`: every token whose text would break the prefix
/// gets -inf; the `eos` tokens are allowed exactly when the object is complete, and then only
/// they are.
pub fn mask(logits: &mut [f32], state: &JsonPrefix, vocab: &Vocab, eos: &[u32]) {
    let in_string = matches!(state.mode, Mode::Str { escape: 0, .. });
    let accepts = first_char_memo(state, |s, t| s.after(t));
    mask_by(logits, vocab, eos, state.done(), in_string, accepts);
}

/// Whether a token's text continues `state`, with the state after each ASCII first character
/// worked out once: most tokens fail on their first character, and ~50k tokens begin with
/// far fewer distinct ones.
pub(crate) fn first_char_memo<S: Copy>(
    state: &S,
    after: impl Fn(&S, &str) -> Option<S>,
) -> impl Fn(&str) -> bool {
    let firsts: std::cell::RefCell<Vec<Option<Option<S>>>> =
        std::cell::RefCell::new(vec![None; 128]);
    move |t: &str| {
        let mut chars = t.chars();
        let Some(c) = chars.next().filter(char::is_ascii) else {
            return after(state, t).is_some();
        };
        let first = *firsts.borrow_mut()[c as usize].get_or_insert_with(|| after(state, &t[..1]));
        match first {
            None => false,
            Some(st) => chars.as_str().is_empty() || after(&st, chars.as_str()).is_some(),
        }
    }
}

/// The masking every JSON constraint shares: `done` (only EOS may follow), `plain_ok` (inside
/// a free string, where plain tokens pass without a walk), `accepts` for the rest.
pub(crate) fn mask_by(
    logits: &mut [f32],
    vocab: &Vocab,
    eos: &[u32],
    done: bool,
    plain_ok: bool,
    accepts: impl Fn(&str) -> bool,
) {
    for (id, l) in logits.iter_mut().enumerate() {
        let keep = if eos.contains(&(id as u32)) {
            done
        } else if done {
            false
        } else if plain_ok && vocab.plain.get(id).copied().unwrap_or(false) {
            true
        } else {
            vocab.texts.get(id).is_some_and(|t| accepts(t))
        };
        if !keep {
            *l = f32::NEG_INFINITY;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `text` char by char: the state after it, or where it broke.
    fn feed(text: &str) -> Result<JsonPrefix, usize> {
        let mut s = JsonPrefix::new();
        for (i, c) in text.char_indices() {
            s = s.after(&c.to_string()).ok_or(i)?;
        }
        Ok(s)
    }

    #[test]
    fn whole_objects_end_the_document() {
        for doc in [
            "{}",
            "{\"a\": 1}",
            "{\"a\":[1, -2.5e+3, 0, 0.25, 10E2, true, false, null, \"x\\n\\u00e9\"], \"b\": {}}",
            "{\n  \"k\": [ [], {\"z\": \"Zürich 🚀\"} ]\n}",
            "{\"n\": -0.0e-1}",
        ] {
            let s = feed(doc).unwrap_or_else(|i| panic!("{doc} broke at {i}"));
            assert!(s.done(), "{doc}");
            // Nothing may follow the object, not even blank space.
            assert!(s.after(" ").is_none() && s.after("{").is_none(), "{doc}");
        }
    }

    #[test]
    fn prefixes_are_accepted_and_are_not_done() {
        for prefix in [
            "{",
            "{\"a",
            "{\"a\":",
            "{\"a\": [1, 2",
            "{\"a\": -",
            "{\"a\": tr",
            "{\"b\":\"\\u00",
        ] {
            let s = feed(prefix).unwrap_or_else(|i| panic!("{prefix} broke at {i}"));
            assert!(!s.done(), "{prefix}");
        }
    }

    #[test]
    fn what_json_refuses_is_refused_where_it_goes_wrong() {
        for (bad, at) in [
            ("[1]", 0),
            (" {}", 0),
            ("\"s\"", 0),
            ("{a", 1),
            ("{\"a\" 1", 5),
            ("{\"a\": 01", 7),
            ("{\"a\": 1.}", 8),
            ("{\"a\": tru }", 9),
            ("{\"a\": [1,]}", 9),
            ("{\"a\": 1,}", 8),
            ("{\"a\": \"x\ny\"}", 8),
            ("{\"a\": \"\\q\"}", 8),
            ("{\"a\": \"\\u12g4\"}", 11),
            ("{\"a\": [}", 7),
            ("{\"a\": 1]", 7),
            ("{} {}", 2),
            ("{\"a\": -x}", 7),
        ] {
            assert_eq!(feed(bad).map(|_| ()), Err(at), "{bad}");
        }
    }

    #[test]
    fn a_token_is_judged_whole_and_blank_space_and_depth_are_bounded() {
        let s = feed("{\"a\": ").unwrap();
        assert!(s.after("[1, 2]}").is_some_and(|t| t.done()));
        assert!(s.after("12,").is_some() && s.after("1 2").is_none());
        assert!(s.after("").is_none(), "an empty text is a special token");
        let blank = " ".repeat(MAX_BLANK as usize);
        let colon = feed("{\"a\":").unwrap();
        assert!(colon.after(&blank).is_some() && colon.after(&format!("{blank} ")).is_none());
        // A run is counted from its start: a value in between begins a new one.
        assert!(colon.after(&format!("{blank}1,{blank}\"b\"")).is_some());
        let deep = format!("{{\"a\": {}", "[".repeat(MAX_DEPTH as usize - 1));
        assert!(feed(&deep).is_ok() && feed(&format!("{deep}[")).is_err());
    }

    #[test]
    fn the_mask_leaves_what_continues_the_object_and_eos_only_at_its_end() {
        let texts: Vec<String> = ["{", "}", "\"a\"", ":", " 1", "x", ""]
            .map(String::from)
            .to_vec();
        let n = texts.len();
        let vocab = Vocab::new(texts);
        let eos = [6];
        let allowed = |s: &JsonPrefix| {
            let mut l = vec![0.0f32; n];
            mask(&mut l, s, &vocab, &eos);
            (0..l.len()).filter(|&i| l[i] == 0.0).collect::<Vec<_>>()
        };
        assert_eq!(allowed(&JsonPrefix::new()), [0]);
        assert_eq!(allowed(&feed("{").unwrap()), [1, 2]);
        assert_eq!(allowed(&feed("{\"a\"").unwrap()), [3]);
        assert_eq!(allowed(&feed("{\"a\":").unwrap()), [0, 2, 4]);
        assert_eq!(allowed(&feed("{}").unwrap()), [6]);
        // Inside a string: plain content passes without a walk, the rest is walked.
        assert_eq!(allowed(&feed("{\"").unwrap()), [0, 1, 3, 4, 5]);
        // After a backslash only an escape passes: `"a"` (an escaped quote, then more).
        assert_eq!(allowed(&feed("{\"a\": \"\\").unwrap()), [2]);
    }
}
