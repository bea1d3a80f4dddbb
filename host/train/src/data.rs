//! Training data: conversation JSONL, Alpaca-style JSON, plain text (a file or a folder of
//! `.txt`) or any `DataSource` (a data-loader plugin), turned into token sequences with a
//! per-token loss mask. Conversations go through the model's chat template; only assistant
//! tokens count (all turns or the last, as configured). Long sequences are truncated, skipped
//! or refused; bad records are refused with file:line or counted and logged, as configured.
//! Batching pads on the right (causal attention never looks at the padding) or packs.

use crate::config::{DataSection, Format, LossOn, OnBad, SourceSection, Truncation};
use crate::error::{Result, TrainError, file_err};
use crate::ops::IGNORE;
use galley_core::seed::{derive_seed, purpose};
use galley_core::{DataSource, Example, Message};
use galley_model::{ChatTemplate, Tokenizer};
use rand::seq::SliceRandom;
use rand::{SeedableRng, rngs::StdRng};
use std::path::{Path, PathBuf};

/// One tokenized sequence; `train[i]` says whether token i is predicted in the loss.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub ids: Vec<u32>,
    pub train: Vec<bool>,
}

/// What loading skipped, by reason (the run reports it; nothing is dropped silently).
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Skipped {
    pub malformed: usize,
    pub no_assistant: usize,
    pub too_long: usize,
    pub empty: usize,
}

impl Skipped {
    pub fn total(&self) -> usize {
        self.malformed + self.no_assistant + self.too_long + self.empty
    }
}

/// Raw records before tokenization: conversations (with where they came from) or text.
pub enum Records {
    Chats(Vec<(String, Example)>),
    Text(Vec<String>),
}

fn data_err(at: impl Into<String>, msg: impl Into<String>) -> TrainError {
    TrainError::Data {
        at: at.into(),
        msg: msg.into(),
    }
}

fn format_of(src: &SourceSection, path: &Path) -> Format {
    match src.format {
        Some(Format::Auto) | None => {
            if path.is_dir() {
                return Format::Text;
            }
            match path.extension().and_then(|e| e.to_str()) {
                Some("json") => Format::Alpaca,
                Some("txt") | Some("text") | Some("md") => Format::Text,
                _ => Format::Conversations,
            }
        }
        Some(f) => f,
    }
}

/// Reads a file source. Bad records are an error (`OnBad::Error`) or counted in `skipped`.
pub fn read_file(
    src: &SourceSection,
    path: &Path,
    on_bad: OnBad,
    skipped: &mut Skipped,
) -> Result<Records> {
    let recs = match format_of(src, path) {
        Format::Text => Records::Text(read_text(path)?),
        Format::Alpaca => Records::Chats(read_alpaca(path, on_bad, skipped)?),
        _ => Records::Chats(read_jsonl(path, on_bad, skipped)?),
    };
    Ok(match (recs, src.limit) {
        (Records::Chats(mut c), Some(n)) => {
            c.truncate(n);
            Records::Chats(c)
        }
        (r, _) => r,
    })
}

fn read_text(path: &Path) -> Result<Vec<String>> {
    let mut files: Vec<PathBuf> = if path.is_dir() {
        std::fs::read_dir(path)
            .map_err(|e| file_err(path, e))?
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "txt"))
            .collect()
    } else {
        vec![path.to_path_buf()]
    };
    files.sort();
    if files.is_empty() {
        return Err(file_err(path, "no .txt files"));
    }
    files
        .iter()
        .map(|f| {
            let bytes = std::fs::read(f).map_err(|e| file_err(f, e))?;
            // Old texts carry stray Latin-1 bytes; keep what decodes rather than refuse a corpus.
            Ok(String::from_utf8_lossy(&bytes).into_owned())
        })
        .collect()
}

fn read_jsonl(path: &Path, on_bad: OnBad, skipped: &mut Skipped) -> Result<Vec<(String, Example)>> {
    read_lines(path, on_bad, skipped, |line| {
        serde_json::from_str::<Example>(line)
            .map_err(|e| format!("not a conversation ({{\"messages\": [...]}}): {e}"))
    })
}

/// Reads a JSONL file a record per non-empty line, each tagged `file:line`; a line `parse`
/// refuses is an error or skipped and counted, as `on_bad` says.
pub fn read_lines<T>(
    path: &Path,
    on_bad: OnBad,
    skipped: &mut Skipped,
    parse: impl Fn(&str) -> std::result::Result<T, String>,
) -> Result<Vec<(String, T)>> {
    let text = std::fs::read_to_string(path).map_err(|e| file_err(path, e))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let at = format!("{}:{}", path.display(), i + 1);
        if line.trim().is_empty() {
            continue;
        }
        match parse(line) {
            Ok(rec) => out.push((at, rec)),
            Err(msg) => bad_record(&at, msg, on_bad, skipped)?,
        }
    }
    Ok(out)
}

/// A record that cannot be read: an error naming it, or a warning and a count.
pub fn bad_record(at: &str, msg: String, on_bad: OnBad, skipped: &mut Skipped) -> Result<()> {
    if on_bad == OnBad::Error {
        return Err(data_err(at, msg));
    }
    tracing::warn!("{at}: skipped: {msg}");
    skipped.malformed += 1;
    Ok(())
}

#[derive(serde::Deserialize)]
struct AlpacaRecord {
    instruction: String,
    #[serde(default)]
    input: String,
    output: String,
    #[serde(default)]
    system: Option<String>,
    /// Earlier (instruction, output) turns.
    #[serde(default)]
    history: Vec<(String, String)>,
}

fn read_alpaca(
    path: &Path,
    on_bad: OnBad,
    skipped: &mut Skipped,
) -> Result<Vec<(String, Example)>> {
    let text = std::fs::read_to_string(path).map_err(|e| file_err(path, e))?;
    let records: Vec<serde_json::Value> = serde_json::from_str(&text).map_err(|e| {
        data_err(
            format!("{}:{}", path.display(), e.line()),
            format!("not a JSON list of Alpaca records: {e}"),
        )
    })?;
    let mut out = Vec::new();
    for (i, v) in records.into_iter().enumerate() {
        let at = format!("{}: record {}", path.display(), i + 1);
        match serde_json::from_value::<AlpacaRecord>(v) {
            Ok(r) => {
                let mut messages = Vec::new();
                if let Some(s) = r.system.filter(|s| !s.is_empty()) {
                    messages.push(Message::new("system", s));
                }
                for (q, a) in r.history {
                    messages.push(Message::new("user", q));
                    messages.push(Message::new("assistant", a));
                }
                let user = if r.input.is_empty() {
                    r.instruction
                } else {
                    format!("{}\n{}", r.instruction, r.input)
                };
                messages.push(Message::new("user", user));
                messages.push(Message::new("assistant", r.output));
                out.push((
                    at,
                    Example {
                        id: format!("{}", i + 1),
                        messages,
                        metadata: Default::default(),
                    },
                ));
            }
            Err(e) => {
                let msg = format!("not an Alpaca record (instruction, input, output): {e}");
                if on_bad == OnBad::Error {
                    return Err(data_err(at, msg));
                }
                tracing::warn!("{at}: skipped: {msg}");
                skipped.malformed += 1;
            }
        }
    }
    Ok(out)
}

/// Examples read from a source that sets no `limit` before it counts as endless.
pub const UNLIMITED_CAP: usize = 1_000_000;

/// Pulls every example from a data source (a plugin), a page at a time. Generators never run
/// dry, so without a `limit` a source that passes `UNLIMITED_CAP` is an error, not a hang.
pub fn read_source(src: &mut dyn DataSource, limit: Option<usize>) -> Result<Records> {
    read_source_capped(src, limit, UNLIMITED_CAP)
}

/// `read_source` with another cap for sources without a limit.
pub fn read_source_capped(
    src: &mut dyn DataSource,
    limit: Option<usize>,
    unlimited_cap: usize,
) -> Result<Records> {
    let mut out = Vec::new();
    loop {
        let cap = limit.unwrap_or(unlimited_cap);
        let want = (cap - out.len()).min(256);
        if want == 0 {
            if limit.is_none() {
                return Err(TrainError::Plugin {
                    plugin: src.name().to_string(),
                    msg: format!(
                        "still producing examples after {unlimited_cap}; set `limit` on this data source"
                    ),
                });
            }
            break;
        }
        let page = src.next_page(want).map_err(|e| TrainError::Plugin {
            plugin: src.name().to_string(),
            msg: e.to_string(),
        })?;
        if page.is_empty() {
            break;
        }
        for ex in page {
            let at = format!(
                "{} example {}",
                src.name(),
                if ex.id.is_empty() {
                    out.len().to_string()
                } else {
                    ex.id.clone()
                }
            );
            out.push((at, ex));
        }
    }
    Ok(Records::Chats(out))
}

/// Turns records into samples.
pub struct Encoder<'a> {
    pub tokenizer: &'a Tokenizer,
    pub template: Option<&'a ChatTemplate>,
    pub cfg: &'a DataSection,
}

impl Encoder<'_> {
    /// Tokenizes every record; text is cut into `max_length` blocks (with EOS between files).
    pub fn encode(&self, recs: Records, skipped: &mut Skipped) -> Result<Vec<Sample>> {
        match recs {
            Records::Text(docs) => self.encode_text(&docs),
            Records::Chats(chats) => {
                let mut out = Vec::with_capacity(chats.len());
                for (at, ex) in chats {
                    out.extend(self.encode_one(&at, &ex.messages, skipped)?);
                }
                Ok(out)
            }
        }
    }

    /// One conversation; a bad one stops the run or is counted in `skipped` and gives None,
    /// as `on_bad_example` (and `truncation: error`) say.
    pub fn encode_one(
        &self,
        at: &str,
        msgs: &[Message],
        skipped: &mut Skipped,
    ) -> Result<Option<Sample>> {
        match self.encode_chat(at, msgs)? {
            Ok(s) => Ok(Some(s)),
            Err((kind, msg)) => {
                if self.cfg.on_bad_example == OnBad::Error
                    || (kind == Bad::TooLong && self.cfg.truncation == Truncation::Error)
                {
                    return Err(data_err(at, msg));
                }
                tracing::warn!("{at}: skipped: {msg}");
                match kind {
                    Bad::NoAssistant => skipped.no_assistant += 1,
                    Bad::TooLong => skipped.too_long += 1,
                    Bad::Empty => skipped.empty += 1,
                }
                Ok(None)
            }
        }
    }

    fn encode_text(&self, docs: &[String]) -> Result<Vec<Sample>> {
        let eos = self.tokenizer.eos.first().copied();
        let mut stream = Vec::new();
        for doc in docs {
            // Line by line: the tokenizer's cost grows with input length on huge strings.
            for chunk in doc.split_inclusive('\n').collect::<Vec<_>>().chunks(64) {
                stream.extend(self.tokenizer.encode(&chunk.concat(), false)?);
            }
            stream.extend(eos);
        }
        let n = self.cfg.max_length;
        Ok(stream
            .chunks_exact(n)
            .map(|c| Sample {
                ids: c.to_vec(),
                train: vec![true; n],
            })
            .collect())
    }

    /// `Ok(Err(..))` is a bad example the policy decides about; `Err` stops the run.
    fn encode_chat(
        &self,
        at: &str,
        msgs: &[Message],
    ) -> Result<std::result::Result<Sample, (Bad, String)>> {
        if msgs.is_empty() {
            return Ok(Err((Bad::Empty, "no messages".into())));
        }
        let assistant: Vec<usize> = msgs
            .iter()
            .enumerate()
            .filter(|(_, m)| m.role == "assistant")
            .map(|(i, _)| i)
            .collect();
        if assistant.is_empty() && self.cfg.loss_on != LossOn::All {
            return Ok(Err((
                Bad::NoAssistant,
                "conversation has no assistant turn to learn from".into(),
            )));
        }
        let tmpl = self.template.ok_or_else(|| {
            data_err(
                at,
                "the model has no chat template: conversations need one (or use plain text)",
            )
        })?;
        let render = |m: &[Message], add_prompt: bool| -> Result<Vec<u32>> {
            let text = tmpl.render(m, add_prompt, None)?;
            Ok(self.tokenizer.encode(&text, false)?)
        };
        let ids = render(msgs, false)?;
        let mut train = vec![self.cfg.loss_on == LossOn::All; ids.len()];
        let turns: &[usize] = match self.cfg.loss_on {
            LossOn::All => &[],
            LossOn::LastAssistant => &assistant[assistant.len() - 1..],
            LossOn::AllAssistant => &assistant,
        };
        for &i in turns {
            // The turn's tokens: after the prompt up to it (with the generation prompt), up to
            // the end of the conversation rendered through it (its end-of-turn token included).
            let start = render(&msgs[..i], true)?;
            let end = render(&msgs[..=i], false)?;
            if ids[..start.len().min(ids.len())] != start[..]
                || ids[..end.len().min(ids.len())] != end[..]
            {
                return Err(data_err(
                    at,
                    "the chat template does not render a conversation's turns as prefixes of the whole; cannot find assistant tokens",
                ));
            }
            train[start.len()..end.len()].fill(true);
        }
        let n = self.cfg.max_length;
        if ids.len() > n {
            match self.cfg.truncation {
                Truncation::Right => {}
                _ => {
                    return Ok(Err((
                        Bad::TooLong,
                        format!("{} tokens, longer than data.max_length = {n}", ids.len()),
                    )));
                }
            }
        }
        let mut s = Sample { ids, train };
        s.ids.truncate(n);
        s.train.truncate(n);
        if !s.train[1..].iter().any(|&t| t) {
            return Ok(Err((
                Bad::TooLong,
                format!("no assistant token left within data.max_length = {n}"),
            )));
        }
        Ok(Ok(s))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Bad {
    NoAssistant,
    TooLong,
    Empty,
}

/// Concatenates samples into rows of exactly `n` tokens (the last partial row is dropped).
pub fn pack(samples: &[Sample], n: usize) -> Vec<Sample> {
    let mut out = Vec::new();
    let mut cur = Sample {
        ids: Vec::new(),
        train: Vec::new(),
    };
    for s in samples {
        let mut i = 0;
        while i < s.ids.len() {
            let take = (n - cur.ids.len()).min(s.ids.len() - i);
            cur.ids.extend_from_slice(&s.ids[i..i + take]);
            cur.train.extend_from_slice(&s.train[i..i + take]);
            i += take;
            if cur.ids.len() == n {
                out.push(std::mem::replace(
                    &mut cur,
                    Sample {
                        ids: Vec::new(),
                        train: Vec::new(),
                    },
                ));
            }
        }
    }
    out
}

/// Splits off `share` of the samples for validation, after a seeded shuffle.
pub fn split<T>(mut samples: Vec<T>, share: f64, seed: u64) -> (Vec<T>, Vec<T>) {
    if share <= 0.0 || samples.len() < 2 {
        return (samples, Vec::new());
    }
    samples.shuffle(&mut StdRng::seed_from_u64(derive_seed(
        seed,
        &[purpose::SPLIT],
    )));
    let n_val = ((samples.len() as f64 * share).round() as usize).clamp(1, samples.len() - 1);
    let val = samples.split_off(samples.len() - n_val);
    (samples, val)
}

/// The order of the samples in `epoch`: a permutation fixed by (seed, epoch), so a resumed run
/// sees exactly the batches the interrupted one would have.
pub fn epoch_order(n: usize, seed: u64, epoch: usize, shuffle: bool) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..n).collect();
    if shuffle {
        idx.shuffle(&mut StdRng::seed_from_u64(derive_seed(
            seed,
            &[purpose::EPOCH, epoch as u64],
        )));
    }
    idx
}

/// A micro-batch: inputs (b, t) right-padded, and the target of each input position.
#[derive(Debug, Clone)]
pub struct Batch {
    pub b: usize,
    pub t: usize,
    pub inputs: Vec<u32>,
    pub targets: Vec<u32>,
    /// Input positions that hold real tokens (not padding).
    pub real_tokens: usize,
}

impl Batch {
    /// Tokens that count in the loss.
    pub fn label_tokens(&self) -> usize {
        self.targets.iter().filter(|&&t| t != IGNORE).count()
    }

    pub fn from_samples(samples: &[&Sample], pad: u32) -> Self {
        let t = samples
            .iter()
            .map(|s| s.ids.len() - 1)
            .max()
            .unwrap_or(1)
            .max(1);
        let b = samples.len();
        let mut inputs = vec![pad; b * t];
        let mut targets = vec![IGNORE; b * t];
        for (r, s) in samples.iter().enumerate() {
            for i in 0..s.ids.len() - 1 {
                inputs[r * t + i] = s.ids[i];
                if s.train[i + 1] {
                    targets[r * t + i] = s.ids[i + 1];
                }
            }
        }
        let real_tokens = samples.iter().map(|s| s.ids.len() - 1).sum();
        Self {
            b,
            t,
            inputs,
            targets,
            real_tokens,
        }
    }
}
