//! Tool calls read from a streamed answer, as vLLM's and OpenAI's servers stream them: text
//! is passed on at once except what may open a call; a call's name is given as soon as it is
//! written and its arguments piece by piece as they come (`{"name": ..., "arguments": {...}}`
//! objects: Hermes' blocks, Llama 3's calls, forced calls); a call written otherwise
//! (Mistral's list, arguments as a JSON string, keys in another order) comes whole at the end.
//! The end ([`CallStream::finish`]) parses everything as [`super::parse`] does and says what
//! the stream still owes.

use super::{
    HERMES_OPEN, MISTRAL_OPEN, PYTHON_TAG, Parsed, ToolFormat, parse_forced, parse_with_tools,
};

/// Part of a call, as it comes: its name first (with an empty argument piece), then pieces
/// of its arguments' JSON text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallDelta {
    pub index: usize,
    pub name: Option<String>,
    pub arguments: String,
}

/// What [`CallStream::push`] lets out: text, and parts of calls.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Pushed {
    pub content: String,
    pub calls: Vec<CallDelta>,
}

/// The end of a streamed answer: the text not passed on yet, the calls (as [`super::parse`]
/// reads the whole), and for each call already begun in the stream its name and the
/// arguments text sent so far.
#[derive(Debug)]
pub struct Finished {
    pub parsed: Parsed,
    pub streamed: Vec<(String, String)>,
}

impl Finished {
    /// What is still owed for call `i` of `parsed`: all of it (None: not begun), the rest
    /// of its arguments, or nothing when the stream's part does not lead to it.
    pub fn owed(&self, i: usize) -> Option<String> {
        let (name, sent) = self.streamed.get(i)?;
        let call = self.parsed.calls.get(i)?;
        Some(match call.arguments.strip_prefix(sent.as_str()) {
            Some(rest) if &call.name == name => rest.to_string(),
            _ => String::new(),
        })
    }
}

/// Where the call being streamed is.
#[derive(Debug)]
enum Scan {
    /// Waiting for a call's object to begin at or after this byte of the text.
    Seek(usize),
    /// In the object opened at this byte, before its arguments.
    Head(usize),
    /// In the arguments: scanned up to `at`, sent up to `sent`.
    Args {
        at: usize,
        sent: usize,
        depth: u32,
        in_str: bool,
        esc: bool,
    },
    /// This call (or the rest of the answer) comes whole at the end.
    Whole,
}

/// A streamed answer read as it comes (see the module's note).
#[derive(Debug)]
pub struct CallStream {
    format: ToolFormat,
    forced: bool,
    text: String,
    /// Bytes of `text` passed on as content.
    sent: usize,
    /// Where the calls begin in `text`, once one has opened.
    calls_at: Option<usize>,
    scan: Scan,
    streamed: Vec<(String, String)>,
    /// The request's tools, which type what a text format's calls write (`parse_with_tools`).
    tools: Option<crate::json_schema::Json>,
}

impl CallStream {
    /// `forced`: the answer is a call from its first token (see [`parse_forced`]).
    pub fn new(format: ToolFormat, forced: bool) -> Self {
        let scan = if format.streams_pieces() {
            Scan::Seek(0)
        } else {
            Scan::Whole
        };
        Self {
            format,
            forced,
            text: String::new(),
            sent: 0,
            calls_at: forced.then_some(0),
            scan,
            streamed: Vec::new(),
            tools: None,
        }
    }

    /// Reads the calls at the end knowing the request's tools (see [`parse_with_tools`]).
    pub fn with_tools(mut self, tools: Option<crate::json_schema::Json>) -> Self {
        self.tools = tools;
        self
    }

    /// Takes the next piece of text.
    pub fn push(&mut self, piece: &str) -> Pushed {
        self.text.push_str(piece);
        let mut out = Pushed::default();
        if self.calls_at.is_none() {
            out.content = self.content();
        }
        if self.calls_at.is_some() {
            self.scan(&mut out.calls);
        }
        out
    }

    /// Content that may be passed on; marks where calls begin when one opens.
    fn content(&mut self) -> String {
        let unsent = &self.text[self.sent..];
        let keep_from = match self.format {
            ToolFormat::Hermes
            | ToolFormat::MistralArgs
            | ToolFormat::QwenXml
            | ToolFormat::DeepSeekV31
            | ToolFormat::KimiK2 => opening(unsent, self.format.opener().unwrap_or(HERMES_OPEN)),
            ToolFormat::Mistral => {
                if self.sent == 0 && starts_call(unsent, &["["]) {
                    Some((0, unsent.trim_start().starts_with('[')))
                } else {
                    opening(unsent, MISTRAL_OPEN)
                }
            }
            ToolFormat::Llama3Json | ToolFormat::Json => {
                if self.sent == 0 && starts_call(unsent, &["{", PYTHON_TAG]) {
                    let t = unsent.trim_start();
                    Some((0, t.starts_with('{') || t.starts_with(PYTHON_TAG)))
                } else {
                    None
                }
            }
        };
        let end = match keep_from {
            Some((at, opened)) => {
                if opened {
                    self.calls_at = Some(self.sent + at);
                    if let Scan::Seek(p) = &mut self.scan {
                        *p = self.sent + at;
                    }
                }
                self.sent + at
            }
            None => self.text.len(),
        };
        let out = self.text[self.sent..end].to_string();
        self.sent = end;
        out
    }

    /// Moves the scan of the calls on, adding what it lets out to `out`.
    fn scan(&mut self, out: &mut Vec<CallDelta>) {
        loop {
            match self.scan {
                Scan::Whole => return,
                Scan::Seek(from) => {
                    let Some(at) = self.next_object(from) else {
                        return;
                    };
                    self.scan = Scan::Head(at);
                }
                Scan::Head(at) => match head(&self.text[at..]) {
                    Head::More => return,
                    Head::Other => {
                        self.scan = Scan::Whole;
                        return;
                    }
                    Head::Done { name, args } => {
                        out.push(CallDelta {
                            index: self.streamed.len(),
                            name: Some(name.clone()),
                            arguments: String::new(),
                        });
                        self.streamed.push((name, String::new()));
                        let at = at + args;
                        self.scan = Scan::Args {
                            at,
                            sent: at,
                            depth: 0,
                            in_str: false,
                            esc: false,
                        };
                    }
                },
                Scan::Args {
                    ref mut at,
                    ref mut sent,
                    ref mut depth,
                    ref mut in_str,
                    ref mut esc,
                } => {
                    let mut closed = None;
                    for (i, c) in self.text[*at..].char_indices() {
                        let here = *at + i;
                        if *in_str {
                            match (*esc, c) {
                                (true, _) => *esc = false,
                                (false, '\\') => *esc = true,
                                (false, '"') => *in_str = false,
                                _ => {}
                            }
                            continue;
                        }
                        match c {
                            '"' => *in_str = true,
                            '{' | '[' => *depth += 1,
                            '}' | ']' => {
                                *depth = depth.saturating_sub(1);
                                if *depth == 0 {
                                    closed = Some(here + 1);
                                    break;
                                }
                            }
                            _ => {}
                        }
                    }
                    let end = closed.unwrap_or(self.text.len());
                    let piece = &self.text[*sent..end];
                    if !piece.is_empty() {
                        let index = self.streamed.len() - 1;
                        self.streamed[index].1.push_str(piece);
                        out.push(CallDelta {
                            index,
                            name: None,
                            arguments: piece.to_string(),
                        });
                    }
                    *sent = end;
                    *at = end;
                    match closed {
                        Some(end) => self.scan = Scan::Seek(end),
                        None => return,
                    }
                }
            }
        }
    }

    /// Where the next call's object begins, from byte `from` on: after the format's opening
    /// (Hermes), or the next `{` (Llama 3's calls joined by `;`, a forced call).
    fn next_object(&self, from: usize) -> Option<usize> {
        let rest = &self.text[from..];
        let body = match self.format {
            ToolFormat::Hermes if !self.forced => {
                let o = rest.find(HERMES_OPEN)?;
                o + HERMES_OPEN.len()
            }
            _ => 0,
        };
        rest[body..].find('{').map(|b| from + body + b)
    }

    /// The end of the answer: what was held back, and the calls.
    pub fn finish(self) -> Finished {
        let parsed = match self.calls_at {
            _ if self.forced => parse_forced(self.format, &self.text),
            None => Parsed {
                content: Some(self.text[self.sent..].to_string()).filter(|t| !t.is_empty()),
                calls: Vec::new(),
            },
            Some(at) => {
                let rest = &self.text[at..];
                let p = parse_with_tools(self.format, rest, self.tools.as_ref());
                if p.calls.is_empty() {
                    Parsed {
                        content: Some(rest.to_string()),
                        calls: Vec::new(),
                    }
                } else {
                    p
                }
            }
        };
        Finished {
            parsed,
            streamed: self.streamed,
        }
    }
}

enum Head {
    /// The text ends before the arguments begin.
    More,
    /// Not `{"name": "...", "arguments" | "parameters": {` in that order.
    Other,
    /// The name, and the byte the arguments' object begins at.
    Done { name: String, args: usize },
}

/// Reads `{"name": "<name>", "arguments": ` at the start of `s` (blanks anywhere between).
fn head(s: &str) -> Head {
    let mut at = 0;
    let b = s.as_bytes();
    let blank = |at: &mut usize| {
        while *at < b.len() && b[*at].is_ascii_whitespace() {
            *at += 1;
        }
    };
    // Each step: the text so far must be a start of what is expected.
    macro_rules! expect {
        ($lit:expr) => {{
            let lit: &str = $lit;
            let have = &s[at..];
            if have.len() < lit.len() {
                return if lit.starts_with(have) {
                    Head::More
                } else {
                    Head::Other
                };
            }
            if !have.starts_with(lit) {
                return Head::Other;
            }
            at += lit.len();
        }};
    }
    blank(&mut at);
    expect!("{");
    blank(&mut at);
    expect!("\"name\"");
    blank(&mut at);
    expect!(":");
    blank(&mut at);
    // The name: a JSON string.
    let name = match string_at(s, &mut at) {
        Ok(Some(n)) => n,
        Ok(None) => return Head::More,
        Err(()) => return Head::Other,
    };
    blank(&mut at);
    expect!(",");
    blank(&mut at);
    let key_at = at;
    match string_at(s, &mut at) {
        Ok(Some(k)) if k == "arguments" || k == "parameters" => {}
        Ok(None) => {
            let part = &s[key_at..];
            return if "\"arguments\"".starts_with(part) || "\"parameters\"".starts_with(part) {
                Head::More
            } else {
                Head::Other
            };
        }
        _ => return Head::Other,
    }
    blank(&mut at);
    expect!(":");
    blank(&mut at);
    if at >= b.len() {
        return Head::More;
    }
    // Arguments as an object stream; as a JSON string (decoded at the end) they do not.
    if b[at] != b'{' {
        return Head::Other;
    }
    Head::Done { name, args: at }
}

/// The JSON string at byte `at` of `s` (moving `at` past it): `Ok(None)` if `s` ends inside
/// it, `Err` if none begins there.
fn string_at(s: &str, at: &mut usize) -> Result<Option<String>, ()> {
    let b = s.as_bytes();
    if *at >= b.len() {
        return Ok(None);
    }
    if b[*at] != b'"' {
        return Err(());
    }
    let start = *at;
    let mut i = start + 1;
    let mut esc = false;
    while i < b.len() {
        match (esc, b[i]) {
            (true, _) => esc = false,
            (false, b'\\') => esc = true,
            (false, b'"') => {
                *at = i + 1;
                return serde_json::from_str(&s[start..=i])
                    .map(Some)
                    .map_err(|_| ());
            }
            _ => {}
        }
        i += 1;
    }
    Ok(None)
}

/// Where in `text` a call may open: `(at, opened)` for the whole `marker` at `at`, or a tail
/// of `text` that is the start of `marker` (held back, not opened yet).
fn opening(text: &str, marker: &str) -> Option<(usize, bool)> {
    if let Some(i) = text.find(marker) {
        return Some((i, true));
    }
    (1..marker.len())
        .rev()
        .filter(|&n| marker.is_char_boundary(n))
        .find(|&n| text.ends_with(&marker[..n]))
        .map(|n| (text.len() - n, false))
}

/// Whether text at the start of an answer is, or may become, one of `openers` after
/// blanks (blank text alone is held: what follows decides).
fn starts_call(text: &str, openers: &[&str]) -> bool {
    let t = text.trim_start();
    t.is_empty() || openers.iter().any(|o| t.starts_with(o) || o.starts_with(t))
}
