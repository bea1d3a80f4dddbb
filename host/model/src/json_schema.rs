//! Structured outputs (OpenAI's `response_format: {"type": "json_schema", ...}`): generation
//! constrained so the text is always a prefix of one JSON object that validates against a
//! schema, and ends exactly when that object closes. A schema is compiled once into a table
//! of nodes ([`Schema::compile`]; the subset OpenAI's strict mode and pydantic produce:
//! objects with `properties` / `required`, arrays with `items` / `minItems` / `maxItems`,
//! strings with `minLength` / `maxLength` / `pattern` / `format` (date-time, date, time,
//! uuid, email, uri, ipv4; each a DFA over the unescaped string), numbers, integers,
//! booleans, null, `enum`, `const`, `anyOf` / `oneOf` / type lists whose branches begin with
//! different characters or are objects told apart by a first constant property, and `$ref`
//! into `$defs`, recursion included). A keyword that would
//! change what is valid but is not enforced here (`minimum`, `uniqueItems`...) is an error
//! naming where it is, never silently ignored. Properties come in the schema's order, as
//! OpenAI's and llama.cpp's constrained decoders write them, optional ones skippable; no
//! other key is written. The per-sequence state ([`SchemaPrefix`]) is a small `Copy` value
//! (a frame per open container, up to 16), so trying each vocabulary token a step costs a
//! copy and a few transitions, as in JSON mode ([`crate::json_mode`], whose masking and
//! number rules it shares).

mod compile;
mod tree;

use crate::json_mode::{JsonPrefix, MAX_BLANK, Num, Vocab, first_char_memo, mask_by};
use compile::{Node, Prop};
pub use compile::{Schema, SchemaError};
use regex_automata::Anchored;
use regex_automata::dfa::Automaton;
use regex_automata::util::primitives::StateID;
use regex_automata::util::start::Config as StartConfig;
use std::sync::Arc;
pub use tree::{Json, Obj};

/// Open containers a prefix tracks (deeper nesting is refused as it is typed).
const MAX_FRAMES: usize = 16;

/// Where the text is inside an open container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Just after `{` or `[`.
    First,
    /// After `,` in an object: a key.
    Key,
    /// After a key: `:`.
    Colon,
    /// A value is due (after `:` or, in an array, after `,`).
    Value,
    /// After a value: `,` or the close.
    After,
}

/// An open object or array: its node, properties consumed (object) or items begun (array).
#[derive(Debug, Clone, Copy)]
struct Frame {
    node: u16,
    n: u32,
    phase: Phase,
}

/// Inside a scalar (or a key).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lex {
    /// Between tokens: the top frame's phase says what is due.
    Between,
    /// A free string of `node`; `escape` as in JSON mode; `len` characters so far.
    Str {
        node: u16,
        escape: u8,
        len: u32,
        /// The pattern's DFA state, if the string has one.
        dfa: u32,
    },
    /// Matching exact texts: a Choice node's values or (`key`) an object's keys; `mask` the
    /// candidates still matching, `pos` bytes matched.
    Text {
        node: u16,
        key: bool,
        mask: u64,
        pos: u16,
    },
    Number {
        num: Num,
        integer: bool,
    },
}

/// A node's exact texts: an object's keys or a choice's values.
#[derive(Clone, Copy)]
enum Texts<'a> {
    Keys(&'a [Prop]),
    Values(&'a [String]),
}

impl<'a> Texts<'a> {
    fn len(self) -> usize {
        match self {
            Texts::Keys(p) => p.len(),
            Texts::Values(v) => v.len(),
        }
    }

    fn get(self, i: usize) -> &'a str {
        match self {
            Texts::Keys(p) => &p[i].key,
            Texts::Values(v) => &v[i],
        }
    }
}

/// A valid prefix of one JSON object following a [`Schema`].
#[derive(Debug, Clone, Copy)]
pub struct SchemaPrefix {
    frames: [Frame; MAX_FRAMES],
    depth: u8,
    lex: Lex,
    blank: u8,
    done: bool,
}

impl Default for SchemaPrefix {
    fn default() -> Self {
        Self::new()
    }
}

impl SchemaPrefix {
    pub fn new() -> Self {
        Self {
            frames: [Frame {
                node: 0,
                n: 0,
                phase: Phase::First,
            }; MAX_FRAMES],
            depth: 0,
            lex: Lex::Between,
            blank: 0,
            done: false,
        }
    }

    /// The object is complete: the sequence must end now.
    pub fn done(&self) -> bool {
        self.done
    }

    /// Inside a free string with no length limit (plain tokens pass without a walk).
    fn plain_ok(&self, s: &Schema) -> bool {
        matches!(self.lex, Lex::Str { node, escape: 0, .. }
            if matches!(s.nodes[node as usize], Node::Str { max: u32::MAX, pattern: None, .. }))
    }

    /// The state after `text`, if it keeps the prefix valid (an empty text does not).
    pub fn after(&self, s: &Schema, text: &str) -> Option<Self> {
        if text.is_empty() {
            return None;
        }
        let mut st = *self;
        for c in text.chars() {
            st.push(s, c)?;
        }
        Some(st)
    }

    fn top(&mut self) -> &mut Frame {
        &mut self.frames[self.depth as usize - 1]
    }

    fn props<'a>(&self, s: &'a Schema, node: u16) -> &'a [Prop] {
        match &s.nodes[node as usize] {
            Node::Object(p) | Node::Tagged { tag: p, .. } => p,
            _ => &[],
        }
    }

    /// The value `choice` of `node` has been written: where it is a tagged union's tag, the
    /// object goes on as the branch that tag names (its own first property, the tag, done).
    fn chose(&mut self, s: &Schema, node: u16, choice: usize) {
        if self.depth == 0 {
            return;
        }
        let f = self.top();
        if let Node::Tagged { tag, branches } = &s.nodes[f.node as usize]
            && tag[0].node == node
            && f.n == 1
        {
            f.node = branches[choice];
        }
    }

    /// A value (of the container's or the root's node) has ended.
    fn value_done(&mut self) {
        self.lex = Lex::Between;
        if self.depth == 0 {
            self.done = true;
        } else {
            self.top().phase = Phase::After;
        }
    }

    fn close(&mut self) -> Option<()> {
        self.depth -= 1;
        self.value_done();
        Some(())
    }

    /// A value of `node` begins with `c`.
    fn start(&mut self, s: &Schema, node: u16, c: char) -> Option<()> {
        match &s.nodes[node as usize] {
            Node::Union(kids) => {
                let kid = kids
                    .iter()
                    .copied()
                    .find(|&k| s.first[k as usize].contains(&c))?;
                self.start(s, kid, c)
            }
            Node::Object(_) | Node::Tagged { .. } | Node::Array { .. } => {
                let want = if !matches!(s.nodes[node as usize], Node::Array { .. }) {
                    '{'
                } else {
                    '['
                };
                if c != want || self.depth as usize >= MAX_FRAMES {
                    return None;
                }
                self.frames[self.depth as usize] = Frame {
                    node,
                    n: 0,
                    phase: Phase::First,
                };
                self.depth += 1;
                Some(())
            }
            Node::Str { pattern, .. } if c == '"' => {
                let dfa = match pattern {
                    Some(p) => {
                        let d = &s.patterns[*p as usize];
                        d.start_state(&StartConfig::new().anchored(Anchored::Yes))
                            .ok()?
                            .as_u32()
                    }
                    None => 0,
                };
                self.lex = Lex::Str {
                    node,
                    escape: 0,
                    len: 0,
                    dfa,
                };
                Some(())
            }
            Node::Number { integer } if c == '-' || c.is_ascii_digit() => {
                let num = match c {
                    '-' => Num::Minus,
                    '0' => Num::Zero,
                    _ => Num::Int,
                };
                self.lex = Lex::Number {
                    num,
                    integer: *integer,
                };
                Some(())
            }
            Node::Choice(_) => {
                self.lex = Lex::Text {
                    node,
                    key: false,
                    mask: u64::MAX,
                    pos: 0,
                };
                self.text(s, c)
            }
            _ => None,
        }
    }

    /// The texts a `Lex::Text` matches against (borrowed: this runs for every token tried).
    fn texts(s: &Schema, node: u16, key: bool) -> Texts<'_> {
        match &s.nodes[node as usize] {
            Node::Object(p) | Node::Tagged { tag: p, .. } if key => Texts::Keys(p),
            Node::Choice(t) => Texts::Values(t),
            _ => Texts::Values(&[]),
        }
    }

    /// `c` inside a `Lex::Text`.
    fn text(&mut self, s: &Schema, c: char) -> Option<()> {
        let Lex::Text {
            node,
            key,
            mask,
            pos,
        } = self.lex
        else {
            return None;
        };
        let texts = Self::texts(s, node, key);
        let mut buf = [0u8; 4];
        let cb = c.encode_utf8(&mut buf).as_bytes();
        let p = pos as usize;
        let mut next = 0u64;
        let mut complete = false;
        for i in 0..texts.len() {
            let t = texts.get(i);
            if mask >> i & 1 == 1 {
                if t.as_bytes()[p..].starts_with(cb) {
                    next |= 1 << i;
                }
                complete |= t.len() == p;
            }
        }
        if next == 0 {
            // A value text that is complete ends here, and `c` follows it.
            if complete && !key {
                if let Some(i) =
                    (0..texts.len()).find(|&i| mask >> i & 1 == 1 && texts.get(i).len() == p)
                {
                    self.chose(s, node, i);
                }
                self.value_done();
                return self.push(s, c);
            }
            return None;
        }
        let pos = p + cb.len();
        let ended = |i: usize| texts.get(i).len() == pos;
        let all_ended = (0..texts.len()).filter(|i| next >> i & 1 == 1).all(ended);
        if key {
            if let Some(j) = (0..texts.len()).find(|&i| next >> i & 1 == 1 && ended(i)) {
                // Keys end in a quote, so the one that ended is the only match.
                let f = self.top();
                f.n = j as u32 + 1;
                f.phase = Phase::Colon;
                self.lex = Lex::Between;
                return Some(());
            }
        } else if all_ended {
            self.chose(s, node, next.trailing_zeros() as usize);
            self.value_done();
            return Some(());
        }
        self.lex = Lex::Text {
            node,
            key,
            mask: next,
            pos: pos as u16,
        };
        Some(())
    }

    /// A key begins (`"`): the candidates are the properties from the next one up to the
    /// first required one.
    fn key(&mut self, s: &Schema) -> Option<()> {
        let f = self.frames[self.depth as usize - 1];
        let props = self.props(s, f.node);
        let mut mask = 0u64;
        for (i, p) in props.iter().enumerate().skip(f.n as usize) {
            mask |= 1 << i;
            if p.required {
                break;
            }
        }
        if mask == 0 {
            return None;
        }
        self.lex = Lex::Text {
            node: f.node,
            key: true,
            mask,
            pos: 0,
        };
        self.text(s, '"')
    }

    /// `c` inside a string of `node`: JSON's escapes, the length limits, and the pattern's
    /// DFA fed the unescaped text (where a pattern holds, `\u` escapes are refused: a model
    /// has no need of them there and their halves would have to be decoded first).
    fn string_char(
        &mut self,
        s: &Schema,
        node: u16,
        escape: u8,
        len: u32,
        dfa: u32,
        c: char,
    ) -> Option<()> {
        let Node::Str { min, max, pattern } = s.nodes[node as usize] else {
            return None;
        };
        let pattern = pattern.map(|p| &s.patterns[p as usize]);
        // The text `c` stands for, when it stands for text (not for the start of an escape).
        let (escape, len, text) = match (escape, c) {
            (0, '"') => {
                let matched = pattern.is_none_or(|d| {
                    let id = StateID::new(dfa as usize).expect("a state of this DFA");
                    d.is_match_state(d.next_eoi_state(id))
                });
                if len < min || !matched {
                    return None;
                }
                self.value_done();
                return Some(());
            }
            (0, '\\') => (1, len.checked_add(1).filter(|&l| l <= max)?, None),
            (0, c) if (c as u32) < 0x20 => return None,
            (0, c) => (0, len.checked_add(1).filter(|&l| l <= max)?, Some(c)),
            (1, '"' | '\\' | '/') => (0, len, Some(c)),
            (1, 'b') => (0, len, Some('\u{8}')),
            (1, 'f') => (0, len, Some('\u{c}')),
            (1, 'n') => (0, len, Some('\n')),
            (1, 'r') => (0, len, Some('\r')),
            (1, 't') => (0, len, Some('\t')),
            (1, 'u') if pattern.is_none() => (5, len, None),
            (1, _) => return None,
            (n, c) if n >= 2 && c.is_ascii_hexdigit() => {
                (if n == 2 { 0 } else { n - 1 }, len, None)
            }
            _ => return None,
        };
        let mut dfa = dfa;
        if let (Some(d), Some(t)) = (pattern, text) {
            let mut id = StateID::new(dfa as usize).expect("a state of this DFA");
            let mut buf = [0u8; 4];
            for &b in t.encode_utf8(&mut buf).as_bytes() {
                id = d.next_state(id, b);
                if d.is_dead_state(id) || d.is_quit_state(id) {
                    return None;
                }
            }
            dfa = id.as_u32();
        }
        self.lex = Lex::Str {
            node,
            escape,
            len,
            dfa,
        };
        Some(())
    }

    fn push(&mut self, s: &Schema, c: char) -> Option<()> {
        match self.lex {
            Lex::Str {
                node,
                escape,
                len,
                dfa,
            } => return self.string_char(s, node, escape, len, dfa, c),
            Lex::Number { num, integer } => {
                let next = num
                    .next(c)
                    .filter(|n| !integer || matches!(n, Num::Zero | Num::Int));
                return match next {
                    Some(num) => {
                        self.lex = Lex::Number { num, integer };
                        Some(())
                    }
                    None if num.complete() => {
                        self.value_done();
                        self.push(s, c)
                    }
                    None => None,
                };
            }
            Lex::Text { .. } => return self.text(s, c),
            Lex::Between => {}
        }
        if self.done {
            return None;
        }
        if matches!(c, ' ' | '\n' | '\r' | '\t') {
            // Blank space between tokens, never before the object.
            if self.depth == 0 {
                return None;
            }
            self.blank += 1;
            return (self.blank <= MAX_BLANK).then_some(());
        }
        self.blank = 0;
        if self.depth == 0 {
            return self.start(s, s.root, c);
        }
        let f = self.frames[self.depth as usize - 1];
        match &s.nodes[f.node as usize] {
            Node::Object(props) | Node::Tagged { tag: props, .. } => {
                let rest_optional = props[f.n as usize..].iter().all(|p| !p.required);
                match (f.phase, c) {
                    (Phase::First | Phase::After, '}') if rest_optional => self.close(),
                    (Phase::First | Phase::Key, '"') => self.key(s),
                    (Phase::Colon, ':') => {
                        self.top().phase = Phase::Value;
                        Some(())
                    }
                    (Phase::Value, _) => self.start(s, props[f.n as usize - 1].node, c),
                    (Phase::After, ',') if (f.n as usize) < props.len() => {
                        self.top().phase = Phase::Key;
                        Some(())
                    }
                    _ => None,
                }
            }
            &Node::Array { items, min, max } => match (f.phase, c) {
                (Phase::First | Phase::After, ']') if f.n >= min => self.close(),
                (Phase::First | Phase::Value, _) if f.n < max => {
                    self.top().n += 1;
                    self.top().phase = Phase::Value;
                    self.start(s, items, c)
                }
                (Phase::After, ',') if f.n < max => {
                    self.top().phase = Phase::Value;
                    Some(())
                }
                _ => None,
            },
            _ => None,
        }
    }
}

/// A schema as a flag or a config gives it, read and compiled: its JSON (`{...}`), or a file
/// holding it, relative to `base`. Returns the text (what a server is sent) and the compiled
/// schema; the error says which file and where in the schema.
pub fn load(spec: &str, base: &std::path::Path) -> Result<(String, Schema), String> {
    let (text, origin) = if spec.trim_start().starts_with('{') {
        (spec.to_string(), None)
    } else {
        let path = base.join(spec);
        let text = std::fs::read_to_string(&path)
            .map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
        (text, Some(path))
    };
    let schema = Schema::compile_str(&text).map_err(|e| match &origin {
        Some(p) => format!("{}: {e}", p.display()),
        None => e.to_string(),
    })?;
    Ok((text, schema))
}

/// What a sequence's text is held to, and where in it the sequence is: one JSON object
/// (JSON mode) or one that follows a schema.
#[derive(Debug, Clone)]
pub enum Guide {
    Object(JsonPrefix),
    Schema(Arc<Schema>, SchemaPrefix),
}

impl Guide {
    /// JSON mode, before the first token.
    pub fn object() -> Self {
        Guide::Object(JsonPrefix::new())
    }

    /// `schema`, before the first token.
    pub fn schema(schema: Arc<Schema>) -> Self {
        Guide::Schema(schema, SchemaPrefix::new())
    }

    /// The object is complete: the sequence must end.
    pub fn done(&self) -> bool {
        match self {
            Guide::Object(p) => p.done(),
            Guide::Schema(_, p) => p.done(),
        }
    }

    /// Moves past a generated token's text; false if the text cannot continue the prefix.
    pub fn advance(&mut self, text: &str) -> bool {
        let next = match self {
            Guide::Object(p) => p.after(text).map(|n| *p = n),
            Guide::Schema(s, p) => p.after(s, text).map(|n| *p = n),
        };
        next.is_some()
    }

    /// Masks every token that cannot come next (see [`crate::json_mode::mask`]).
    pub fn mask(&self, logits: &mut [f32], vocab: &Vocab, eos: &[u32]) {
        match self {
            Guide::Object(p) => crate::json_mode::mask(logits, p, vocab, eos),
            Guide::Schema(s, p) => mask(logits, s, p, vocab, eos),
        }
    }
}

/// Masks `logits` for a schema at `state`, as [`crate::json_mode::mask`] does for JSON mode.
pub fn mask(logits: &mut [f32], schema: &Schema, state: &SchemaPrefix, vocab: &Vocab, eos: &[u32]) {
    let accepts = first_char_memo(state, |s, t| s.after(schema, t));
    mask_by(
        logits,
        vocab,
        eos,
        state.done(),
        state.plain_ok(schema),
        accepts,
    );
}

#[cfg(test)]
mod tests;
