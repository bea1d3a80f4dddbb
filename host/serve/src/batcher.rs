//! Continuous batching over the native model: one thread owns a model and decodes every live
//! sequence in one batch, a step at a time. A request waits in a bounded queue. Short prompts
//! that arrive together are prefilled together in one left-padded pass; a long one is
//! prefilled on its own, a chunk per step (so it does not stall the others' decoding). Either
//! way the new cache rows join the batch at the next step (`Cache::join`) and leave it when
//! their sequence finishes or its client goes away. Each sequence keeps its own sampler (seed,
//! temperature, penalties), stop strings and budget. Every prefilled prompt's keys and values
//! go to the model's prompt cache (`prompt_cache`); a request that begins with a kept prompt
//! copies them and prefills only the rest. With `--lookup N`, a sequence decoding alone
//! checks up to N tokens a step drafted from what it has seen (prompt lookup): the batch's
//! one row then runs its last token and the draft in one pass, and the tokens are sampled
//! as always, a draft kept while they agree. Embeddings requests (`/v1/embeddings`) queue
//! in the same thread: between decode steps their texts go through the model a pass at a time
//! (sorted by length, at most four prefill chunks of padded tokens a pass), so a large request
//! delays the batch's steps by a pass, not by the whole request.

use crate::lazy::{Lazy, LazyState, blank_tokens};
use crate::prompt_cache::PromptCache;
use galley_model::generate::Output;
use galley_model::json_mode;
use galley_model::json_schema::Guide;
use galley_model::sample::LogSoftmax;
use galley_model::{Cache, Embedder, Finish, Llama, Sampler, SamplingParams, Tokenizer};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::Histogram;
use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use tokio::sync::mpsc::UnboundedSender;

/// One generation request.
pub struct Job {
    pub prompt: Vec<u32>,
    pub params: SamplingParams,
    /// The chosen tokens' log-probabilities are wanted (else `Event::Token`'s is NaN: a
    /// normaliser over the vocabulary per token is not free).
    pub logprobs: bool,
    /// Top log-probabilities per generated token (0: only the chosen token's).
    pub top_logprobs: usize,
    /// Also score the prompt's own tokens (completions' `echo` with `logprobs`).
    pub prompt_logprobs: bool,
    /// Added to these tokens' logits before sampling (OpenAI's `logit_bias`).
    pub logit_bias: Vec<(u32, f32)>,
    /// The prompt cache reuses only prompts kept under the same salt (vLLM's `cache_salt`).
    pub cache_salt: Option<String>,
    /// JSON mode or a schema (`response_format`): the answer is one JSON object, held to it
    /// from its first token.
    pub json: Option<Guide>,
    /// A constraint that waits for a trigger in the answer (auto tool calls, JSON after a
    /// thinking block).
    pub lazy: Option<Lazy>,
    /// When the request was taken (time to first token and request time count from here).
    pub submitted: std::time::Instant,
    pub events: UnboundedSender<Event>,
}

/// One embeddings request: rows of token ids already checked ([`Embedder::check`]).
pub struct EmbedJob {
    pub rows: Vec<Vec<u32>>,
    pub dimensions: Option<usize>,
    pub embedder: Arc<Embedder>,
    /// The vectors in the rows' order, or the error that stopped them.
    pub reply: tokio::sync::oneshot::Sender<Result<Vec<Vec<f32>>, String>>,
}

/// What the batcher's queue carries.
enum Work {
    Generate(Box<Job>),
    Embed(EmbedJob),
}

/// An embeddings request being computed, a pass per step.
struct Embedding {
    job: EmbedJob,
    passes: VecDeque<Vec<usize>>,
    out: Vec<Vec<f32>>,
    /// Its first pass has run (it no longer counts as waiting).
    started: bool,
}

/// The most likely tokens at a position and their log-probabilities.
pub type Top = Vec<(u32, f32)>;
/// A prompt token, its log-probability (none for the first) and the alternatives.
pub type Scored = (u32, Option<f32>, Top);
/// A generated token, its log-probability and the alternatives.
pub type Sampled = (u32, f32, Top);

/// What a request hears back, in order: prompt scores (if asked), tokens, then `Done`.
#[derive(Debug, Clone)]
pub enum Event {
    /// Per prompt token: its log-probability (None for the first) and the top alternatives.
    Prompt(Vec<Scored>),
    Token {
        id: u32,
        /// Text that became final with this token (may be empty mid-character).
        text: String,
        /// NaN unless the job asked for log-probabilities.
        logprob: f32,
        top: Vec<(u32, f32)>,
    },
    Done {
        finish: Finish,
        prompt_tokens: usize,
        completion_tokens: usize,
    },
    Error(String),
}

/// Limits of one model's batch.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Sequences decoded together.
    pub max_batch: usize,
    /// Requests waiting for a place; a full queue refuses (HTTP 429).
    pub queue: usize,
    /// Prompt tokens prefilled per step.
    pub prefill_chunk: usize,
    /// Bytes of recent prompts' keys and values kept for requests that begin the same way.
    pub prompt_cache: usize,
    /// Tokens a step a sequence decoding alone may draft by prompt lookup (0: none).
    pub lookup: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_batch: 32,
            queue: 256,
            prefill_chunk: 256,
            prompt_cache: 256 << 20,
            lookup: 0,
        }
    }
}

/// Counters a model's batcher keeps (`/health` and `/metrics` show them).
#[derive(Debug)]
pub struct Stats {
    /// Requests in the queue.
    pub waiting: AtomicUsize,
    /// Sequences being prefilled or decoded.
    pub running: AtomicUsize,
    /// Sequences that ended (EOS, stop, length).
    pub finished: AtomicUsize,
    /// Sequences dropped because their client went away.
    pub cancelled: AtomicUsize,
    /// Sequences ended by an error (their client was told).
    pub failed: AtomicUsize,
    /// Prompts that began with a kept prompt, and the tokens they did not prefill for it.
    pub prompt_cache_hits: AtomicUsize,
    pub prompt_cache_tokens: AtomicUsize,
    /// Bytes of keys and values the prompt cache keeps.
    pub prompt_cache_bytes: AtomicUsize,
    /// Tokens drafted by prompt lookup, and those of them kept.
    pub draft_tokens: AtomicUsize,
    pub draft_accepted: AtomicUsize,
    /// Prompt and generated tokens of the sequences that ended.
    pub prompt_tokens: Counter,
    pub generation_tokens: Counter,
    /// Seconds from a sequence's submission to its first token, and to its end.
    pub ttft: Histogram,
    pub latency: Histogram,
}

impl Default for Stats {
    fn default() -> Self {
        Self {
            waiting: AtomicUsize::new(0),
            running: AtomicUsize::new(0),
            finished: AtomicUsize::new(0),
            cancelled: AtomicUsize::new(0),
            failed: AtomicUsize::new(0),
            prompt_cache_hits: AtomicUsize::new(0),
            prompt_cache_tokens: AtomicUsize::new(0),
            prompt_cache_bytes: AtomicUsize::new(0),
            draft_tokens: AtomicUsize::new(0),
            draft_accepted: AtomicUsize::new(0),
            prompt_tokens: Counter::default(),
            generation_tokens: Counter::default(),
            ttft: crate::metrics::ttft_histogram(),
            latency: crate::metrics::latency_histogram(),
        }
    }
}

/// The handle the HTTP side submits to.
#[derive(Clone)]
pub struct Batcher {
    tx: SyncSender<Work>,
    pub stats: Arc<Stats>,
}

pub enum SubmitError {
    QueueFull,
    Stopped,
}

impl Batcher {
    /// Starts the decoding thread for `model`.
    pub fn start(model: Arc<Llama>, tok: Arc<Tokenizer>, limits: Limits) -> Self {
        let (tx, rx) = sync_channel(limits.queue);
        let stats = Arc::new(Stats::default());
        let st = stats.clone();
        std::thread::Builder::new()
            .name("galley-batcher".into())
            .spawn(move || Loop::new(model, tok, limits, st).run(rx))
            .expect("spawning the batcher thread");
        Self { tx, stats }
    }

    pub fn submit(&self, job: Job) -> Result<(), SubmitError> {
        self.send(Work::Generate(Box::new(job)))
    }

    /// Queues an embeddings request (counted as waiting until its first pass).
    pub fn submit_embed(&self, job: EmbedJob) -> Result<(), SubmitError> {
        self.send(Work::Embed(job))
    }

    fn send(&self, work: Work) -> Result<(), SubmitError> {
        self.stats.waiting.fetch_add(1, Ordering::SeqCst);
        self.tx.try_send(work).map_err(|e| {
            self.stats.waiting.fetch_sub(1, Ordering::SeqCst);
            match e {
                TrySendError::Full(_) => SubmitError::QueueFull,
                TrySendError::Disconnected(_) => SubmitError::Stopped,
            }
        })
    }
}

/// A sequence in the batch.
struct Seq {
    job: Job,
    sampler: Sampler,
    tokens: Vec<u32>,
    out: Output,
    eos: Vec<u32>,
    /// Where the answer is in its JSON object, in JSON mode.
    json: Option<Guide>,
    lazy: Option<LazyState>,
    drafter: galley_model::lookup::Drafter,
}

/// A prompt being prefilled, a chunk per step.
struct Prefill {
    seq: Seq,
    cache: Cache,
    done: usize,
}

struct Loop {
    model: Arc<Llama>,
    tok: Arc<Tokenizer>,
    /// The vocabulary as JSON mode sees it (special tokens: no text), made on first use.
    texts: std::sync::OnceLock<std::sync::Arc<json_mode::Vocab>>,
    /// The tokens that are only blank space (for lazy constraints), made on first use.
    blanks: std::sync::OnceLock<Vec<u32>>,
    limits: Limits,
    active: Vec<Seq>,
    cache: Cache,
    prefill: Option<Prefill>,
    prompts: PromptCache,
    stats: Arc<Stats>,
    embeds: VecDeque<Embedding>,
}

enum Step {
    Go,
    Finished(Finish),
    /// The client went away.
    Gone,
    /// Ended by an error, already told and counted (`fail`).
    Failed,
}

impl Loop {
    fn new(model: Arc<Llama>, tok: Arc<Tokenizer>, limits: Limits, stats: Arc<Stats>) -> Self {
        let cache = model.new_cache(0);
        Self {
            model,
            tok,
            texts: std::sync::OnceLock::new(),
            blanks: std::sync::OnceLock::new(),
            limits,
            active: Vec::new(),
            cache,
            prefill: None,
            prompts: PromptCache::new(limits.prompt_cache),
            stats,
            embeds: VecDeque::new(),
        }
    }

    fn publish(&self) {
        let n = self.active.len() + usize::from(self.prefill.is_some()) + self.embeds.len();
        self.stats.running.store(n, Ordering::SeqCst);
        let bytes = self.prompts.bytes();
        self.stats.prompt_cache_bytes.store(bytes, Ordering::SeqCst);
    }

    fn run(mut self, rx: Receiver<Work>) {
        // Arrived requests not yet prefilled (still counted as waiting).
        let mut waiting: VecDeque<Job> = VecDeque::new();
        loop {
            if self.active.is_empty()
                && self.prefill.is_none()
                && waiting.is_empty()
                && self.embeds.is_empty()
            {
                // Idle: block for the next request (the thread ends with the server).
                match rx.recv() {
                    Ok(work) => self.arrive(work, &mut waiting),
                    Err(_) => return,
                }
            }
            // Take what has arrived, up to the batch's free places.
            while self.active.len() + usize::from(self.prefill.is_some()) + waiting.len()
                < self.limits.max_batch
            {
                match rx.try_recv() {
                    Ok(work) => self.arrive(work, &mut waiting),
                    Err(_) => break,
                }
            }
            self.embed_pass();
            if self.prefill.is_none() {
                // Prompts the cache begins are prefilled together from where their cached
                // parts end; the others together from the start.
                let cached = waiting.front().is_some_and(|j| self.cached(j) > 0);
                let group = self.take_group(&mut waiting, cached);
                if !group.is_empty() {
                    self.prefill_group(group, cached);
                } else if let Some(job) = waiting.pop_front() {
                    self.begin(job);
                }
            }
            if let Err(e) = self.prefill_chunk()
                && let Some(p) = self.prefill.take()
            {
                self.fail(&p.seq, e);
            }
            if let Err(e) = self.decode() {
                // A failed step fails everyone in it; the batch starts afresh.
                for s in std::mem::take(&mut self.active) {
                    self.fail(&s, &e);
                }
                self.cache = self.model.new_cache(0);
            }
            self.publish();
        }
    }

    fn arrive(&mut self, work: Work, waiting: &mut VecDeque<Job>) {
        match work {
            Work::Generate(job) => waiting.push_back(*job),
            Work::Embed(job) => {
                let budget = 4 * self.limits.prefill_chunk.max(1);
                self.embeds.push_back(Embedding {
                    passes: Embedder::groups(&job.rows, budget).into(),
                    out: vec![Vec::new(); job.rows.len()],
                    started: false,
                    job,
                });
            }
        }
    }

    /// One pass of the oldest embeddings request; its answer once its last pass is done.
    fn embed_pass(&mut self) {
        let Some(e) = self.embeds.front_mut() else {
            return;
        };
        if !std::mem::replace(&mut e.started, true) {
            self.stats.waiting.fetch_sub(1, Ordering::SeqCst);
        }
        let result = match e.passes.pop_front() {
            // The client went away: nothing more to compute for it.
            _ if e.job.reply.is_closed() => Err(String::new()),
            Some(pass) => {
                let rows: Vec<&[u32]> = pass.iter().map(|&i| &e.job.rows[i][..]).collect();
                match e
                    .job
                    .embedder
                    .embed_pass(&self.model, &rows, e.job.dimensions)
                {
                    Ok(vs) => {
                        for (i, v) in pass.into_iter().zip(vs) {
                            e.out[i] = v;
                        }
                        Ok(())
                    }
                    Err(err) => Err(err.to_string()),
                }
            }
            None => Ok(()),
        };
        if result.is_ok() && !e.passes.is_empty() {
            return;
        }
        let Some(e) = self.embeds.pop_front() else {
            return;
        };
        let tokens: usize = e.job.rows.iter().map(Vec::len).sum();
        match result {
            Ok(()) => {
                self.stats.finished.fetch_add(1, Ordering::SeqCst);
                self.stats.prompt_tokens.inc_by(tokens as u64);
                let _ = e.job.reply.send(Ok(e.out));
            }
            Err(msg) if msg.is_empty() => {
                self.stats.cancelled.fetch_add(1, Ordering::SeqCst);
            }
            Err(msg) => {
                self.stats.failed.fetch_add(1, Ordering::SeqCst);
                let _ = e.job.reply.send(Err(msg));
            }
        }
    }

    /// Short prompts at the front of the queue that fit the batch, to prefill together: all
    /// begun by the prompt cache (`cached`; short counts what follows the cached part) or none.
    fn take_group(&self, waiting: &mut VecDeque<Job>, cached: bool) -> Vec<Job> {
        let chunk = self.limits.prefill_chunk.max(1);
        // Padded positions one grouped prefill may hold.
        let budget = 4 * chunk;
        let mut group: Vec<Job> = Vec::new();
        let mut longest = 0;
        while let Some(j) = waiting.front() {
            let shared = self.cached(j);
            let len = j.prompt.len() - shared;
            let fits = !j.prompt_logprobs
                && (shared > 0) == cached
                && len <= chunk
                && (group.len() + 1) * longest.max(len) <= budget
                && self.active.len() + group.len() < self.limits.max_batch;
            if !fits {
                break;
            }
            longest = longest.max(len);
            group.extend(waiting.pop_front());
        }
        group
    }

    /// Prefills short prompts together in one left-padded pass, samples each one's first
    /// token, and joins the batch with them.
    fn prefill_group(&mut self, jobs: Vec<Job>, cached: bool) {
        let mut seqs: Vec<Seq> = jobs.into_iter().map(|j| self.new_seq(j)).collect();
        let pad_id = self.tok.eos.first().copied().unwrap_or(0);
        // Where each prompt's prefill starts, and the cache the pass continues.
        let mut starts = vec![0; seqs.len()];
        let mut cache = self.model.new_cache(seqs.len());
        if cached {
            // Stacking copies the kept prefixes once more, so they are cut without room; a
            // lone one is not stacked (copied) again: it gets its whole generation's room, as
            // in `begin` (cut without room, candle's cache grows by its first size, a prompt's
            // length: a reallocation every few tokens).
            let room = match &seqs[..] {
                [s] => Self::room(&s.job),
                _ => 0,
            };
            let mut parts = Vec::with_capacity(seqs.len());
            for (i, s) in seqs.iter().enumerate() {
                let Some((n, c)) = self.reuse(&s.job, room) else {
                    for s in &seqs {
                        self.fail(s, "the prompt cache lost a prompt it held");
                    }
                    return;
                };
                starts[i] = n;
                parts.push(c);
            }
            cache = match Cache::stack(parts) {
                Ok(c) => c,
                Err(e) => {
                    for s in &seqs {
                        self.fail(s, &e);
                    }
                    return;
                }
            };
        }
        let prompts: Vec<&[u32]> = seqs
            .iter()
            .zip(&starts)
            .map(|(s, &n)| &s.job.prompt[n..])
            .collect();
        let (input, pad) = galley_model::model::left_pad(&prompts, pad_id);
        let rows = self
            .model
            .forward(&input, Some(&pad), &mut cache, true)
            .and_then(|l| l.squeeze(1)?.to_vec2::<f32>());
        let rows = match rows {
            Ok(r) => r,
            Err(e) => {
                for s in &seqs {
                    self.fail(s, &e);
                }
                return;
            }
        };
        // Each row's prompt is its last positions (the rows are left-padded; a continued row
        // whose new part was padded has a gap, fails the slice and is not kept again).
        let total = cache.len();
        for (i, s) in seqs.iter().enumerate() {
            let n = s.job.prompt.len();
            let salt = s.job.cache_salt.as_deref();
            if !self.prompts.covers(&s.job.prompt, salt)
                && let Ok(c) = cache.slice_row(i, total - n, total, 0)
            {
                self.prompts.store(&s.job.prompt, salt, c);
            }
        }
        let (mut keep, mut joined) = (Vec::new(), Vec::new());
        for (i, (mut s, l)) in seqs.drain(..).zip(&rows).enumerate() {
            match self.emit(&mut s, l) {
                Step::Go => {
                    keep.push(i);
                    joined.push(s);
                }
                Step::Finished(f) => self.done(&s, f),
                Step::Gone => {
                    self.stats.cancelled.fetch_add(1, Ordering::SeqCst);
                }
                Step::Failed => {}
            }
        }
        if keep.is_empty() {
            return;
        }
        let joinable = (keep.len() == rows.len() || cache.select_rows(&keep).is_ok())
            && self.cache.join(cache).is_ok();
        if joinable {
            self.active.extend(joined);
        } else {
            for s in &joined {
                self.fail(s, "joining the batch failed");
            }
        }
    }

    /// Each token's text, for JSON mode and schemas (built on the first such request).
    fn texts(&self) -> &json_mode::Vocab {
        self.texts
            .get_or_init(|| self.tok.json_vocab(self.model.config.vocab_size))
    }

    /// A token's text as a lazy constraint's trigger is looked for in: the vocabulary's (made
    /// once), or for a special token, which has none there, the tokenizer's (a trigger may be
    /// one: Mistral's `[TOOL_CALLS]`).
    fn trigger_text(&self, t: u32) -> std::borrow::Cow<'_, str> {
        match self.texts().text(t) {
            "" => self.tok.piece(t).unwrap_or_default().into(),
            text => text.into(),
        }
    }

    fn blanks(&self) -> &[u32] {
        self.blanks
            .get_or_init(|| blank_tokens(self.texts(), self.model.config.vocab_size))
    }

    fn new_seq(&self, job: Job) -> Seq {
        // Counted running before it stops counting as waiting, so that `/health` never shows
        // a live sequence as neither (`publish` corrects the count at the end of the step).
        self.stats.running.fetch_add(1, Ordering::SeqCst);
        self.stats.waiting.fetch_sub(1, Ordering::SeqCst);
        let mut eos: Vec<u32> = self
            .tok
            .eos
            .iter()
            .chain(&self.model.config.eos_token_ids)
            .chain(&job.params.stop_token_ids)
            .copied()
            .collect();
        eos.sort_unstable();
        eos.dedup();
        Seq {
            sampler: Sampler::new(job.params.clone(), 0),
            json: job.json.clone(),
            lazy: job.lazy.clone().map(LazyState::new),
            job,
            tokens: Vec::new(),
            out: Output::default(),
            eos,
            drafter: galley_model::lookup::Drafter::new(self.limits.lookup),
        }
    }

    /// Leading tokens of `job`'s prompt the prompt cache holds (0 when its prompt is scored:
    /// that needs every position's logits).
    fn cached(&self, job: &Job) -> usize {
        if job.prompt_logprobs {
            return 0;
        }
        self.prompts
            .shared_len(&job.prompt, job.cache_salt.as_deref())
    }

    /// The longest kept prefix of `job`'s prompt, as a one-row cache with `room` positions to
    /// grow, counted in the stats; none for a prompt that is scored (every position's logits).
    fn reuse(&mut self, job: &Job, room: usize) -> Option<(usize, Cache)> {
        if job.prompt_logprobs {
            return None;
        }
        let salt = job.cache_salt.as_deref();
        let (n, cache) = self.prompts.lookup(&job.prompt, salt, room)?;
        self.stats.prompt_cache_hits.fetch_add(1, Ordering::SeqCst);
        self.stats
            .prompt_cache_tokens
            .fetch_add(n, Ordering::SeqCst);
        Some((n, cache))
    }

    /// Positions a copied prefix of `job`'s prompt keeps free, so that it grows in place
    /// through the prompt's rest and its answer.
    fn room(job: &Job) -> usize {
        job.prompt.len() + job.params.max_tokens.min(4096)
    }

    /// Starts a chunked prefill of one prompt (a long one, one whose prompt is scored, or one
    /// the prompt cache begins: then from the end of the cached part).
    fn begin(&mut self, job: Job) {
        let (done, cache) = self
            .reuse(&job, Self::room(&job))
            .unwrap_or_else(|| (0, self.model.new_cache(1)));
        let seq = self.new_seq(job);
        self.prefill = Some(Prefill { seq, cache, done });
    }

    /// Prefills the next chunk of the pending prompt; at its end the first token is sampled
    /// and the sequence joins the batch.
    fn prefill_chunk(&mut self) -> candle_core::Result<()> {
        let Some(p) = &mut self.prefill else {
            return Ok(());
        };
        if p.seq.job.events.is_closed() {
            self.prefill = None;
            self.stats.cancelled.fetch_add(1, Ordering::SeqCst);
            return Ok(());
        }
        let prompt = &p.seq.job.prompt;
        // Echo scoring needs every position's logits, so that prompt goes in one pass.
        let chunk = if p.seq.job.prompt_logprobs {
            prompt.len()
        } else {
            self.limits.prefill_chunk.max(1)
        };
        let end = (p.done + chunk).min(prompt.len());
        let last = end == prompt.len();
        let all = p.seq.job.prompt_logprobs;
        let logits =
            self.model
                .forward(&[prompt[p.done..end].to_vec()], None, &mut p.cache, !all)?;
        p.done = end;
        if !last {
            return Ok(());
        }
        let salt = p.seq.job.cache_salt.as_deref();
        if !self.prompts.covers(prompt, salt)
            && let Ok(c) = p.cache.slice_row(0, 0, prompt.len(), 0)
        {
            self.prompts.store(prompt, salt, c);
        }
        let rows = logits.squeeze(0)?.to_vec2::<f32>()?;
        if all {
            let k = p.seq.job.top_logprobs;
            let mut scores = vec![(prompt[0], None, Vec::new())];
            for i in 1..prompt.len() {
                let ls = LogSoftmax::new(&rows[i - 1]);
                scores.push((
                    prompt[i],
                    Some(ls.at(&rows[i - 1], prompt[i])),
                    ls.top(&rows[i - 1], k),
                ));
            }
            let _ = p.seq.job.events.send(Event::Prompt(scores));
        }
        let last_row = rows.last().cloned().unwrap_or_default();
        let Prefill { mut seq, cache, .. } = self.prefill.take().expect("checked above");
        match self.emit(&mut seq, &last_row) {
            // The sequence is out of `self.prefill` here: a failed join must fail it itself.
            Step::Go => match self.cache.join(cache) {
                Ok(()) => self.active.push(seq),
                Err(e) => self.fail(&seq, e),
            },
            Step::Finished(f) => self.done(&seq, f),
            Step::Gone => {
                self.stats.cancelled.fetch_add(1, Ordering::SeqCst);
            }
            Step::Failed => {}
        }
        Ok(())
    }

    /// One decode step for every sequence in the batch.
    fn decode(&mut self) -> candle_core::Result<()> {
        if self.active.is_empty() {
            return Ok(());
        }
        // Drafts only for a sequence decoding alone: in a batch the step already shares the
        // weights' reading among rows, and rows drafting unevenly would pad each other.
        if self.limits.lookup > 0 && self.active.len() == 1 {
            return self.decode_drafted();
        }
        let input: Vec<Vec<u32>> = self
            .active
            .iter()
            .map(|s| vec![*s.tokens.last().expect("a joined sequence has a token")])
            .collect();
        let logits = self.model.forward(&input, None, &mut self.cache, true)?;
        let logits = logits.squeeze(1)?.to_vec2::<f32>()?;
        let mut keep = Vec::with_capacity(self.active.len());
        let seqs = std::mem::take(&mut self.active);
        let mut kept = Vec::with_capacity(seqs.len());
        for (i, (mut s, l)) in seqs.into_iter().zip(&logits).enumerate() {
            match self.emit(&mut s, l) {
                Step::Go => {
                    keep.push(i);
                    kept.push(s);
                }
                Step::Finished(f) => self.done(&s, f),
                Step::Gone => {
                    self.stats.cancelled.fetch_add(1, Ordering::SeqCst);
                }
                Step::Failed => {}
            }
        }
        if keep.len() < logits.len() {
            if keep.is_empty() {
                self.cache = self.model.new_cache(0);
            } else {
                self.cache.select_rows(&keep)?;
            }
        }
        self.active = kept;
        Ok(())
    }

    /// `decode` for the one sequence, with a draft by prompt lookup when its drafter has
    /// one: the last token and the draft in one pass, then each position's token sampled
    /// (and sent) in turn while it agrees with the draft; the cache forgets the rest.
    fn decode_drafted(&mut self) -> candle_core::Result<()> {
        let mut s = self.active.pop().expect("one sequence");
        let had = s.tokens.len();
        let draft = s
            .drafter
            .next(&s.job.prompt, &s.tokens, s.job.params.max_tokens);
        let mut input = vec![*s.tokens.last().expect("a joined sequence has a token")];
        input.extend(&draft);
        self.cache.keep_spare(self.limits.lookup);
        let logits = self.model.forward(&[input], None, &mut self.cache, false)?;
        let logits = logits.squeeze(0)?.to_vec2::<f32>()?;
        let mut step = Step::Go;
        let mut kept = 0;
        for (j, l) in logits.iter().enumerate() {
            let before = s.tokens.len();
            step = self.emit(&mut s, l);
            // A client that left gets no token: nothing to compare.
            let agrees = s.tokens.len() > before && draft.get(j) == s.tokens.last();
            kept += agrees as usize;
            if !agrees || !matches!(step, Step::Go) {
                break;
            }
        }
        s.drafter.took(draft.len(), kept);
        self.stats
            .draft_tokens
            .fetch_add(draft.len(), Ordering::SeqCst);
        self.stats.draft_accepted.fetch_add(kept, Ordering::SeqCst);
        match step {
            Step::Go => {
                // The cache holds the last token and the draft; keep what was emitted but
                // the newest token (the next step's input).
                self.cache
                    .forget(draft.len() + 1 - (s.tokens.len() - had))?;
                self.active.push(s);
            }
            Step::Finished(f) => {
                self.done(&s, f);
                self.cache = self.model.new_cache(0);
            }
            Step::Gone => {
                self.stats.cancelled.fetch_add(1, Ordering::SeqCst);
                self.cache = self.model.new_cache(0);
            }
            Step::Failed => self.cache = self.model.new_cache(0),
        }
        Ok(())
    }

    /// Ends a sequence with an error its client is told of.
    fn fail(&self, s: &Seq, e: impl std::fmt::Display) {
        self.stats.failed.fetch_add(1, Ordering::SeqCst);
        let _ = s.job.events.send(Event::Error(e.to_string()));
    }

    fn done(&self, s: &Seq, finish: Finish) {
        self.stats.finished.fetch_add(1, Ordering::SeqCst);
        self.stats.prompt_tokens.inc_by(s.job.prompt.len() as u64);
        self.stats.generation_tokens.inc_by(s.tokens.len() as u64);
        self.stats
            .latency
            .observe(s.job.submitted.elapsed().as_secs_f64());
        let _ = s.job.events.send(Event::Done {
            finish,
            prompt_tokens: s.job.prompt.len(),
            completion_tokens: s.tokens.len(),
        });
    }

    /// Samples the sequence's next token from `logits` and tells its client.
    fn emit(&self, s: &mut Seq, logits: &[f32]) -> Step {
        if s.job.events.is_closed() {
            return Step::Gone;
        }
        let params = &s.job.params;
        if params.max_tokens == 0 {
            return Step::Finished(Finish::Length);
        }
        let biased;
        let held = s.lazy.as_ref().is_some_and(LazyState::holds);
        let logits = if s.job.logit_bias.is_empty() && s.json.is_none() && !held {
            logits
        } else {
            let mut l = logits.to_vec();
            for &(t, b) in &s.job.logit_bias {
                if let Some(x) = l.get_mut(t as usize) {
                    *x += b;
                }
            }
            if let Some(guide) = &s.json {
                guide.mask(&mut l, self.texts(), &s.eos);
            }
            if let Some(lazy) = &s.lazy {
                lazy.mask(&mut l, self.texts(), &s.eos, self.blanks());
            }
            biased = l;
            &biased
        };
        let t = s.sampler.sample(logits, &s.job.prompt, &s.tokens);
        s.tokens.push(t);
        if s.tokens.len() == 1 {
            self.stats
                .ttft
                .observe(s.job.submitted.elapsed().as_secs_f64());
        }
        let mut eos = s.eos.contains(&t);
        if let Some(guide) = &mut s.json
            && !eos
            // Nothing could continue the object (every logit masked): the answer ends.
            && !guide.advance(self.texts().text(t))
        {
            eos = true;
        }
        if let Some(lazy) = &mut s.lazy
            && !eos
            && !lazy.after(&self.trigger_text(t))
        {
            eos = true;
        }
        let finish = match s.out.take(&self.tok, t, eos, s.tokens.len(), params) {
            Ok(f) => f,
            // A detokenizer error (none for byte-level BPE): the client is told.
            Err(e) => {
                self.fail(s, e);
                return Step::Failed;
            }
        };
        let text = s.out.fresh(finish.is_some(), &params.stop).to_string();
        let (logprob, top) = if s.job.logprobs {
            let ls = LogSoftmax::new(logits);
            (ls.at(logits, t), ls.top(logits, s.job.top_logprobs))
        } else {
            (f32::NAN, Vec::new())
        };
        let ev = Event::Token {
            id: t,
            text,
            logprob,
            top,
        };
        if s.job.events.send(ev).is_err() {
            return Step::Gone;
        }
        match finish {
            Some(f) => Step::Finished(f),
            None => Step::Go,
        }
    }
}
