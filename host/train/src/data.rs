//! Training data: conversation JSONL, Alpaca-style JSON, plain text (a file or a folder of
//! `.txt`) or any `DataSource` (a data-loader plugin), turned into token sequences with a
//! per-token loss mask. Conversations go through the model's chat template; only assistant
//! tokens count (all turns or the last, as configured). Long sequences are truncated, skipped
//! or refused; bad records are refused with file:line or counted and logged, as configured.
//! Batching pads on the right (causal attention never looks at the padding) or packs.

use crate::config::{DataSection, Format, LossOn, OnBad, SourceSection, Truncation};
use crate::dataset::{Content, Item, Record};
use crate::error::{Result, TrainError, file_err};
use crate::ops::IGNORE;
use galley_core::seed::{derive_seed, purpose};
use galley_core::{DataSource, Example, Message};
use galley_model::json_schema::Json;
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

/// How many skipped records are named one by one as warnings; the rest go to the debug log
/// (a dataset of long records would otherwise bury a run's progress under identical lines).
pub const WARN_EACH: usize = 5;

impl Skipped {
    pub fn total(&self) -> usize {
        self.malformed + self.no_assistant + self.too_long + self.empty
    }

    /// Names a record just counted: a warning for the first `WARN_EACH`, debug after.
    pub(crate) fn report(&self, at: &str, msg: &str) {
        match self.total() <= WARN_EACH {
            true => tracing::warn!("{at}: skipped: {msg}"),
            false => tracing::debug!("{at}: skipped: {msg}"),
        }
    }

    /// The run's one line about what was skipped (None: nothing was).
    pub fn summary(&self) -> Option<String> {
        let n = self.total();
        let reasons = [
            (self.malformed, "malformed"),
            (self.no_assistant, "without an assistant turn"),
            (self.too_long, "too long"),
            (self.empty, "empty"),
        ];
        let reasons: Vec<String> = reasons
            .iter()
            .filter(|(k, _)| *k > 0)
            .map(|(k, what)| format!("{k} {what}"))
            .collect();
        let more = match n > WARN_EACH {
            true => format!(
                "; the first {WARN_EACH} are named above, `--log galley_train=debug` names all"
            ),
            false => String::new(),
        };
        (n > 0).then(|| format!("skipped {n} examples: {}{more}", reasons.join(", ")))
    }
}

/// Raw records before tokenization: records of TRL's dataset types, or plain text to cut
/// into blocks (pre-training from `.txt`).
pub enum Records {
    Items(Vec<Record>),
    Text(Vec<String>),
}

fn data_err(at: impl Into<String>, msg: impl Into<String>) -> TrainError {
    TrainError::Data {
        at: at.into(),
        msg: msg.into(),
    }
}

fn is_text(src: &SourceSection, path: &Path) -> bool {
    match src.format {
        Some(Format::Text) => true,
        Some(Format::Auto) | None => {
            let ext = path.extension().and_then(|e| e.to_str());
            matches!(ext, Some("txt") | Some("text") | Some("md"))
                || (path.is_dir()
                    && galley_data::files(path).is_err()
                    && !read_dir_txt(path).is_empty())
        }
        Some(_) => false,
    }
}

fn read_dir_txt(path: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(path)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "txt"))
        .collect();
    files.sort();
    files
}

/// Reads a file source: plain text (`.txt`, or a folder of them), or any dataset file
/// galley-data reads, as TRL's types. Bad records are an error (`OnBad::Error`) or counted in
/// `skipped`.
pub fn read_file(
    src: &SourceSection,
    path: &Path,
    on_bad: OnBad,
    skipped: &mut Skipped,
) -> Result<Records> {
    if is_text(src, path) {
        return Ok(Records::Text(read_text(path)?));
    }
    Ok(Records::Items(crate::dataset::read(
        src, path, on_bad, skipped,
    )?))
}

fn read_text(path: &Path) -> Result<Vec<String>> {
    let files = if path.is_dir() {
        read_dir_txt(path)
    } else {
        vec![path.to_path_buf()]
    };
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

/// A record that cannot be read: an error naming it, or a warning and a count.
pub fn bad_record(at: &str, msg: String, on_bad: OnBad, skipped: &mut Skipped) -> Result<()> {
    if on_bad == OnBad::Error {
        return Err(data_err(at, msg));
    }
    skipped.malformed += 1;
    skipped.report(at, &msg);
    Ok(())
}

/// A data-loader plugin's example as a record: its conversation is language-modeling data
/// (or, for GRPO, the prompt), its metadata the other columns.
pub fn plugin_record(at: String, ex: Example) -> Record {
    Record {
        at,
        id: ex.id,
        item: Item::Lm(Content::Chat(ex.messages)),
        metadata: ex.metadata,
    }
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
            out.push(plugin_record(at, ex));
        }
    }
    Ok(Records::Items(out))
}

/// A sequence cut where its completion starts, as TRL cuts it: `prompt` is the longest
/// start the tokenized prompt and the tokenized whole share (BPE may merge tokens across the
/// boundary, and some templates render a prompt alone differently), `completion` the rest.
#[derive(Debug, Clone, PartialEq)]
pub struct Split {
    pub prompt: Vec<u32>,
    pub completion: Vec<u32>,
}

/// How many leading tokens `a` and `b` share.
pub fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// Turns records into samples.
pub struct Encoder<'a> {
    pub tokenizer: &'a Tokenizer,
    pub template: Option<&'a ChatTemplate>,
    pub cfg: &'a DataSection,
}

/// A bad example the policy decides about (`Err` of `Encoded`), or a sample.
type Encoded = std::result::Result<Sample, (Bad, String)>;

impl Encoder<'_> {
    /// Tokenizes every record; text is cut into `max_length` blocks (with EOS between files).
    pub fn encode(&self, recs: Records, skipped: &mut Skipped) -> Result<Vec<Sample>> {
        match recs {
            Records::Text(docs) => self.encode_text(&docs),
            Records::Items(items) => {
                let mut out = Vec::with_capacity(items.len());
                for r in items {
                    let tools = r.tools();
                    let tools = tools.as_ref();
                    let encoded = match &r.item {
                        Item::Lm(Content::Chat(msgs)) => self.encode_chat(&r.at, msgs, tools)?,
                        Item::Lm(Content::Text(text)) => self.encode_plain(text)?,
                        Item::PromptCompletion { prompt, completion } => {
                            let s = self.split(&r.at, prompt, completion, tools)?;
                            self.sample(s.prompt, s.completion)
                        }
                        other => {
                            return Err(data_err(
                                &r.at,
                                format!(
                                    "a {} record; SFT and pre-training read language modeling (`text` | `messages`) or prompt-completion (`prompt`, `completion`) data",
                                    other.type_name()
                                ),
                            ));
                        }
                    };
                    out.extend(self.settle(&r.at, encoded, skipped)?);
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
        let e = self.encode_chat(at, msgs, None)?;
        self.settle(at, e, skipped)
    }

    /// A prompt and its completion as a sample (loss on the completion), refused or skipped
    /// like any example.
    pub fn encode_split(
        &self,
        at: &str,
        s: &Split,
        skipped: &mut Skipped,
    ) -> Result<Option<Sample>> {
        self.settle(
            at,
            self.sample(s.prompt.clone(), s.completion.clone()),
            skipped,
        )
    }

    /// A preference pair's two samples (the same prompt, each answer): kept together,
    /// or refused or skipped as one example (counted once) when either side is bad.
    pub fn encode_pair(
        &self,
        at: &str,
        (chosen, rejected): (&Split, &Split),
        skipped: &mut Skipped,
    ) -> Result<Option<(Sample, Sample)>> {
        let side = |s: &Split| self.sample(s.prompt.clone(), s.completion.clone());
        let bad = match (side(chosen), side(rejected)) {
            (Ok(c), Ok(j)) => return Ok(Some((c, j))),
            (Err((k, m)), Ok(_)) => (k, format!("the chosen answer: {m}")),
            (Ok(_), Err((k, m))) => (k, format!("the rejected answer: {m}")),
            (Err((k, m)), Err(_)) => (k, format!("both answers: {m}")),
        };
        self.settle(at, Err(bad), skipped).map(|_| None)
    }

    /// The example, or the policy's answer to a bad one.
    fn settle(&self, at: &str, e: Encoded, skipped: &mut Skipped) -> Result<Option<Sample>> {
        match e {
            Ok(s) => Ok(Some(s)),
            Err((kind, msg)) => {
                if self.cfg.on_bad_example == OnBad::Error
                    || (kind == Bad::TooLong && self.cfg.truncation == Truncation::Error)
                {
                    return Err(data_err(at, msg));
                }
                match kind {
                    Bad::NoAssistant => skipped.no_assistant += 1,
                    Bad::TooLong => skipped.too_long += 1,
                    Bad::Empty => skipped.empty += 1,
                }
                skipped.report(at, &msg);
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

    /// Standard text as TRL tokenizes it: the tokenizer's own special tokens, EOS appended.
    fn tokenize_plain(&self, text: &str) -> Result<Vec<u32>> {
        let mut ids = self.tokenizer.encode(text, true)?;
        if let Some(&eos) = self.tokenizer.eos.first()
            && ids.last() != Some(&eos)
        {
            ids.push(eos);
        }
        Ok(ids)
    }

    /// A standard language-modeling example: every token counts.
    fn encode_plain(&self, text: &str) -> Result<Encoded> {
        if text.is_empty() {
            return Ok(Err((Bad::Empty, "empty text".into())));
        }
        let ids = self.tokenize_plain(text)?;
        Ok(self.sample(Vec::new(), ids))
    }

    fn template(&self, at: &str) -> Result<&ChatTemplate> {
        self.template.ok_or_else(|| {
            data_err(
                at,
                "the model has no chat template: conversational data needs one (or give the columns as plain text)",
            )
        })
    }

    /// `m` through the chat template (with the record's `tools`), as token ids.
    fn render(
        &self,
        at: &str,
        m: &[Message],
        add_prompt: bool,
        tools: Option<&Json>,
    ) -> Result<Vec<u32>> {
        let text = self.template(at)?.render(m, add_prompt, tools)?;
        Ok(self.tokenizer.encode(&text, false)?)
    }

    /// A prompt and a completion cut as TRL cuts them: conversational through the template
    /// (the prompt with the generation prompt), standard as plain concatenation with EOS.
    pub fn split(
        &self,
        at: &str,
        prompt: &Content,
        completion: &Content,
        tools: Option<&Json>,
    ) -> Result<Split> {
        let (p, whole) = self.tokenize_pair(at, prompt, completion, tools)?;
        let n = common_prefix(&p, &whole);
        Ok(Split {
            prompt: whole[..n].to_vec(),
            completion: whole[n..].to_vec(),
        })
    }

    /// A preference pair cut where either answer leaves the shared prompt (TRL takes the
    /// shorter of the two common prefixes).
    pub fn split_pair(
        &self,
        at: &str,
        prompt: &Content,
        chosen: &Content,
        rejected: &Content,
        tools: Option<&Json>,
    ) -> Result<(Split, Split)> {
        let (p, c) = self.tokenize_pair(at, prompt, chosen, tools)?;
        let (_, r) = self.tokenize_pair(at, prompt, rejected, tools)?;
        let n = common_prefix(&p, &c).min(common_prefix(&p, &r));
        let cut = |w: Vec<u32>| Split {
            prompt: w[..n].to_vec(),
            completion: w[n..].to_vec(),
        };
        Ok((cut(c), cut(r)))
    }

    /// (the prompt's tokens, the whole's tokens).
    fn tokenize_pair(
        &self,
        at: &str,
        prompt: &Content,
        completion: &Content,
        tools: Option<&Json>,
    ) -> Result<(Vec<u32>, Vec<u32>)> {
        match (prompt, completion) {
            (Content::Chat(p), Content::Chat(c)) => {
                let mut all = p.clone();
                all.extend(c.iter().cloned());
                Ok((
                    self.render(at, p, true, tools)?,
                    self.render(at, &all, false, tools)?,
                ))
            }
            (Content::Text(p), Content::Text(c)) => Ok((
                self.tokenizer.encode(p, true)?,
                self.tokenize_plain(&format!("{p}{c}"))?,
            )),
            _ => Err(data_err(
                at,
                "the prompt and the completion mix text and messages",
            )),
        }
    }

    /// The sample `prompt ++ completion`, loss on the completion (on everything with
    /// `loss_on: all`), held to `max_length` as `truncation` says.
    fn sample(&self, prompt: Vec<u32>, completion: Vec<u32>) -> Encoded {
        if completion.is_empty() {
            return Err((Bad::Empty, "the completion has no tokens".into()));
        }
        let all = self.cfg.loss_on == LossOn::All;
        let mut train = vec![all; prompt.len()];
        train.resize(prompt.len() + completion.len(), true);
        let mut ids = prompt;
        ids.extend(completion);
        self.limit(Sample { ids, train })
    }

    /// Holds a sample to `max_length`: cut on the right, or refused as too long.
    fn limit(&self, mut s: Sample) -> Encoded {
        let n = self.cfg.max_length;
        if s.ids.len() > n && self.cfg.truncation != Truncation::Right {
            return Err((
                Bad::TooLong,
                format!("{} tokens, longer than data.max_length = {n}", s.ids.len()),
            ));
        }
        s.ids.truncate(n);
        s.train.truncate(n);
        if s.train.len() < 2 || !s.train[1..].iter().any(|&t| t) {
            return Err((
                Bad::TooLong,
                format!("no completion token left within data.max_length = {n}"),
            ));
        }
        Ok(s)
    }

    /// `Ok(Err(..))` is a bad example the policy decides about; `Err` stops the run.
    fn encode_chat(&self, at: &str, msgs: &[Message], tools: Option<&Json>) -> Result<Encoded> {
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
        let ids = self.render(at, msgs, false, tools)?;
        let mut train = vec![self.cfg.loss_on == LossOn::All; ids.len()];
        let turns: &[usize] = match self.cfg.loss_on {
            LossOn::All => &[],
            LossOn::LastAssistant => &assistant[assistant.len() - 1..],
            LossOn::AllAssistant => &assistant,
        };
        for &i in turns {
            // The turn's tokens: from where the prompt up to it (with the generation prompt)
            // and the whole part ways, to where the conversation rendered through it (its
            // end-of-turn token included) does. Where a template renders a prefix differently
            // or BPE merges across the boundary, the tokens both share decide (TRL's rule).
            let start = common_prefix(&self.render(at, &msgs[..i], true, tools)?, &ids);
            let end = common_prefix(&self.render(at, &msgs[..=i], false, tools)?, &ids);
            if end > start {
                train[start..end].fill(true);
            }
        }
        Ok(self.limit(Sample { ids, train }))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bad {
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
    /// Each row's real input positions (the rest of its `t` is padding, at the end).
    pub lens: Vec<usize>,
}

impl Batch {
    /// Input positions that hold real tokens (not padding).
    pub fn real_tokens(&self) -> usize {
        self.lens.iter().sum()
    }

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
        let lens: Vec<usize> = samples.iter().map(|s| s.ids.len() - 1).collect();
        Self {
            b,
            t,
            inputs,
            targets,
            lens,
        }
    }
}
