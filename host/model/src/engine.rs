//! The native engine: galley-core's `Engine` over a loaded model. Log-likelihoods follow
//! lm-evaluation-harness's HF backend token for token — the context and the continuation are
//! tokenized as the harness does (trailing spaces of the context move to the continuation; the
//! continuation is what `encode(context + continuation)` adds after `encode(context)`; no
//! special tokens; an empty context is the end-of-text token) — so the numbers are the field's.
//!
//! What is galley's own is the batching. Requests that share a context (a question's choices)
//! prefill it once and copy its cache rows, as GRPO does for a group; contexts that share a
//! long prefix (a task's few-shot examples) compute it once too; contexts are sorted by length
//! so a batch pads little; a one-token continuation (MMLU's " A") needs no second pass, its
//! log-probability is read from the context's last position.

use crate::chat::ChatTemplate;
use crate::generate::generate_sharing;
use crate::model::{Cache, Llama};
use crate::sample::{LogSoftmax, SamplingParams};
use crate::tokenizer::Tokenizer;
use galley_core::engine::{
    ChatRequest, Engine, EngineError, GenerateRequest, Generated, Loglikelihood,
    LoglikelihoodRequest, Progress,
};
use galley_core::{Message, text};
use rayon::prelude::*;
use std::collections::HashMap;

pub struct NativeEngine {
    pub model: Llama,
    pub tokenizer: Tokenizer,
    pub template: Option<ChatTemplate>,
    name: String,
    /// Contexts that share a prefix of at least this many tokens (a task's few-shot examples)
    /// have it computed once and its cache rows copied, as llama.cpp's and vLLM's prompt
    /// caches do. `usize::MAX` turns sharing off.
    pub share_prefix_from: usize,
    /// Token positions (rows x padded length) one forward pass may hold: bounds the attention
    /// scores and the logits kept for a batch.
    pub batch_tokens: usize,
    /// Contexts of at most this many rows per batch.
    pub batch_rows: usize,
    /// Continuation positions (rows x padded length) per batch: bounds the activations of a
    /// continuation pass (the logits are taken [`HEAD_ROWS`] positions at a time).
    pub cont_tokens: usize,
    /// The longest sequence a request is given (the harness's `max_length`): longer contexts
    /// keep their last tokens, longer rolling texts are cut into windows. Default: the model's
    /// `max_position_embeddings`.
    pub max_length: Option<usize>,
    /// How the model writes tool calls (`None`: found from its chat template, as `galley
    /// serve` finds it).
    pub tool_format: Option<crate::tool_calls::ToolFormat>,
}

/// Token positions from which a prefill pass's GEMMs run near their best rate on a CPU
/// (measured with `examples/prefill`): a batch this big stops taking contexts much shorter
/// than its longest, whose padding would cost more than a further pass.
const MIN_PASS_TOKENS: usize = 512;

/// Positions whose logits one LM-head product computes while scoring continuations: 512
/// vocabulary-wide rows (100 MB for SmolLM2's 49k words) per product.
pub const HEAD_ROWS: usize = 512;

/// One distinct context and the continuations scored after it.
struct Group {
    context: Vec<u32>,
    /// (request index, continuation tokens)
    conts: Vec<(usize, Vec<u32>)>,
}

impl NativeEngine {
    pub fn new(
        model: Llama,
        tokenizer: Tokenizer,
        template: Option<ChatTemplate>,
        name: impl Into<String>,
    ) -> Self {
        Self {
            model,
            tokenizer,
            template,
            name: name.into(),
            share_prefix_from: 64,
            batch_tokens: 4096,
            batch_rows: 32,
            cont_tokens: 4096,
            max_length: None,
            tool_format: None,
        }
    }

    /// The model at `path` (a `.gguf` file or HF folder), with PEFT adapters applied in
    /// memory in order, as an engine named after the path.
    pub fn open(
        path: &std::path::Path,
        adapters: &[&std::path::Path],
        device: &candle_core::Device,
        opts: crate::LoadOptions,
    ) -> crate::Result<Self> {
        let m = crate::load_stacked(path, adapters, device, opts)?;
        Ok(Self::new(
            m.model,
            m.tokenizer,
            m.template,
            path.display().to_string(),
        ))
    }

    fn max_len(&self) -> usize {
        let model = self.model.config.max_position_embeddings.max(1);
        self.max_length.map_or(model, |m| m.clamp(1, model))
    }

    /// What stands before a text with no context: the start-of-text token, else the
    /// end-of-text one (the harness's HF `prefix_token_id`).
    fn prefix_token(&self) -> Result<u32, EngineError> {
        self.tokenizer
            .bos
            .or(self.tokenizer.eos.first().copied())
            .ok_or_else(|| self.err("an empty context needs a start- or end-of-text token"))
    }

    fn err(&self, e: impl std::fmt::Display) -> EngineError {
        EngineError::new(&self.name, e.to_string())
    }

    fn encode(&self, s: &str) -> Result<Vec<u32>, EngineError> {
        self.tokenizer.encode(s, false).map_err(|e| self.err(e))
    }

    /// The harness's `_encode_pair`: (context tokens, continuation tokens).
    fn encode_pair(&self, context: &str, cont: &str) -> Result<(Vec<u32>, Vec<u32>), EngineError> {
        let trimmed = context.trim_end_matches(|c: char| c.is_whitespace());
        let (context, cont) = if trimmed.len() < context.len() {
            (trimmed, format!("{}{cont}", &context[trimmed.len()..]))
        } else {
            (context, cont.to_string())
        };
        if context.is_empty() {
            return Ok((vec![self.prefix_token()?], self.encode(&cont)?));
        }
        let whole = self.encode(&format!("{context}{cont}"))?;
        let ctx = self.encode(context)?;
        let cont = whole.get(ctx.len()..).unwrap_or_default().to_vec();
        Ok((ctx, cont))
    }

    /// Scores (context tokens, continuation tokens) pairs, each fitting the model: contexts
    /// shared by several continuations are prefilled once, batches are of similar lengths.
    fn score_pieces(
        &self,
        pieces: Vec<(Vec<u32>, Vec<u32>)>,
        progress: &mut Progress<'_>,
    ) -> Result<Vec<Loglikelihood>, EngineError> {
        let n = pieces.len();
        let mut groups: Vec<Group> = Vec::new();
        let mut by_context: HashMap<Vec<u32>, usize> = HashMap::new();
        for (i, (ctx, cont)) in pieces.into_iter().enumerate() {
            let g = *by_context.entry(ctx.clone()).or_insert_with(|| {
                groups.push(Group {
                    context: ctx,
                    conts: vec![],
                });
                groups.len() - 1
            });
            groups[g].conts.push((i, cont));
        }
        let mut out: Vec<Option<Loglikelihood>> = vec![None; n];
        let mut done = 0;
        let (families, rest) = families(&groups, self.share_prefix_from);
        for (shared, members) in families {
            // The shared prefix once, one row; its rows are copied for each batch.
            let mut base = self.model.new_exact_cache(1, 512);
            let prefix = &groups[members[0]].context[..shared];
            self.model
                .forward(&[prefix.to_vec()], None, &mut base, true)
                .map_err(|e| self.err(crate::error::first_line(&e)))?;
            let order: Vec<&Group> = members.iter().map(|&g| &groups[g]).collect();
            self.run_batches(&order, Some((&base, shared)), &mut out, &mut done, progress)?;
        }
        let order: Vec<&Group> = rest.iter().map(|&g| &groups[g]).collect();
        self.run_batches(&order, None, &mut out, &mut done, progress)?;
        Ok(out
            .into_iter()
            .map(|o| o.expect("every request scored"))
            .collect())
    }

    /// Scores `groups` in batches of similar lengths, after the `prefix` cache (one row holding
    /// the first `.1` tokens every context of `groups` starts with) when given.
    fn run_batches(
        &self,
        groups: &[&Group],
        prefix: Option<(&Cache, usize)>,
        out: &mut [Option<Loglikelihood>],
        done: &mut usize,
        progress: &mut Progress<'_>,
    ) -> Result<(), EngineError> {
        let skip = prefix.map_or(0, |p| p.1);
        // Longest context first: a batch of similar context lengths pads its prefill little,
        // and a memory problem shows early. (Continuations have their own length-sorted passes.)
        let mut order: Vec<&Group> = groups.to_vec();
        order.sort_by_key(|g| {
            std::cmp::Reverse((
                g.context.len(),
                g.conts.iter().map(|c| c.1.len()).max().unwrap_or(0),
            ))
        });
        // A batch's contexts are left-padded to its longest and its continuations run after
        // that: the longest context and the longest continuation must fit the model together
        // (each request fits alone; two near the limit in one batch might not).
        let positions = self.model.config.max_position_embeddings.max(1);
        let cont_len = |g: &Group| g.conts.iter().map(|c| c.1.len()).max().unwrap_or(1);
        let mut at = 0;
        while at < order.len() {
            let mut end = at + 1;
            let mut rows = order[at].conts.len();
            let (mut ctx, mut cont) = (order[at].context.len(), cont_len(order[at]));
            while end < order.len() {
                let g = order[end];
                let (c, k) = (ctx.max(g.context.len()), cont.max(cont_len(g)));
                // Past a pass big enough to keep the GEMMs efficient, a context much
                // shorter than the batch's longest starts a new batch instead of padding.
                let full = (end - at) * (ctx - skip) >= MIN_PASS_TOKENS
                    && (g.context.len() - skip) * 8 < (ctx - skip) * 7;
                if end - at >= self.batch_rows
                    || (end - at + 1) * (c - skip) > self.batch_tokens
                    || (rows + g.conts.len()) * k > self.cont_tokens
                    || c + k - 1 > positions
                    || full
                {
                    break;
                }
                (ctx, cont) = (c, k);
                rows += g.conts.len();
                end += 1;
            }
            self.score_batch(&order[at..end], prefix, out)
                .map_err(|e| self.err(crate::error::first_line(&e)))?;
            *done += order[at..end].iter().map(|g| g.conts.len()).sum::<usize>();
            progress(*done);
            at = end;
        }
        Ok(())
    }

    /// Scores one batch of groups; writes results by request index.
    fn score_batch(
        &self,
        groups: &[&Group],
        prefix: Option<(&Cache, usize)>,
        out: &mut [Option<Loglikelihood>],
    ) -> candle_core::Result<()> {
        let skip = prefix.map_or(0, |p| p.1);
        let pad_id = self.tokenizer.eos.first().copied().unwrap_or(0);
        // Padding sits between the shared prefix and a row's own tokens: positions count real
        // tokens only, and no query sees a padding key, so the row scores as if unpadded.
        let own: Vec<&[u32]> = groups.iter().map(|g| &g.context[skip..]).collect();
        let (input, pad) = crate::model::left_pad(&own, pad_id);
        let longest = pad.first().map_or(0, Vec::len);
        tracing::debug!(
            rows = groups.len(),
            longest,
            continuations = groups.iter().map(|g| g.conts.len()).sum::<usize>(),
            "log-likelihood batch"
        );
        let mut cache = match prefix {
            Some((base, _)) => {
                let mut c = base.clone();
                c.select_rows(&vec![0; groups.len()])?;
                c
            }
            // The batch's contexts exactly: each continuation pass copies the rows it needs.
            None => self.model.new_exact_cache(groups.len(), longest),
        };
        let last = self
            .model
            .forward(&input, Some(&pad), &mut cache, true)?
            .squeeze(1)?;
        // Rows of the continuation passes: one per (group, continuation).
        let rows: Vec<(usize, usize)> = groups
            .iter()
            .enumerate()
            .flat_map(|(g, grp)| (0..grp.conts.len()).map(move |c| (g, c)))
            .collect();
        let tokens = |r: usize| &groups[rows[r].0].conts[rows[r].1].1;
        // The first continuation token is scored from the context's last position, whose
        // normaliser the group's choices share.
        let mut firsts = Vec::with_capacity(groups.len());
        for g in 0..groups.len() {
            let row = last.get(g)?.to_vec1::<f32>()?;
            let norm = LogSoftmax::new(&row);
            firsts.push((row, norm));
        }
        let mut scored: Vec<(Vec<f32>, bool)> = Vec::with_capacity(rows.len());
        for (r, &(g, _)) in rows.iter().enumerate() {
            let (row, norm) = &firsts[g];
            let t = tokens(r)[0];
            scored.push((vec![norm.at(row, t)], norm.argmax == t as usize));
        }
        // The rest in passes of similar lengths: padding every row of a batch to its longest
        // continuation (ARC's answers run from 1 to 30 tokens) would cost more than the copy of
        // the context's cache rows each pass makes.
        let mut longer: Vec<usize> = (0..rows.len()).filter(|&r| tokens(r).len() > 1).collect();
        longer.sort_by_key(|&r| std::cmp::Reverse(tokens(r).len()));
        let mut at = 0;
        while at < longer.len() {
            let width = tokens(longer[at]).len() - 1;
            let mut end = at + 1;
            while end < longer.len()
                && (end - at + 1) * width <= self.cont_tokens
                && (tokens(longer[end]).len() - 1) * 4 >= width * 3
            {
                end += 1;
            }
            let chunk = &longer[at..end];
            let mut c = cache.clone();
            c.select_rows(&chunk.iter().map(|&r| rows[r].0).collect::<Vec<_>>())?;
            // Right padding: a causal model's real positions never see what follows them.
            let input: Vec<Vec<u32>> = chunk
                .iter()
                .map(|&r| {
                    let t = tokens(r);
                    let mut row = t[..t.len() - 1].to_vec();
                    row.resize(width, pad_id);
                    row
                })
                .collect();
            let hidden = self.model.hidden(&input, None, &mut c)?;
            let hidden = hidden.reshape((chunk.len() * width, hidden.dim(2)?))?;
            // Only real positions go through the LM head (padding's logits were never read),
            // in chunks that bound the logits' memory.
            let wanted: Vec<(usize, u32, u32)> = chunk
                .iter()
                .enumerate()
                .flat_map(|(i, &r)| {
                    let t = tokens(r);
                    (1..t.len()).map(move |j| (r, (i * width + j - 1) as u32, t[j]))
                })
                .collect();
            let mut got: Vec<(f32, bool)> = Vec::with_capacity(wanted.len());
            for part in wanted.chunks(HEAD_ROWS) {
                let at: Vec<u32> = part.iter().map(|w| w.1).collect();
                let at = candle_core::Tensor::from_vec(at, part.len(), hidden.device())?;
                let logits = self.model.logits(&hidden.index_select(&at, 0)?)?;
                let vocab = logits.dim(1)?;
                // Read in place on the CPU (a GPU's logits come over first).
                let logits = logits.to_device(&candle_core::Device::Cpu)?;
                // Each position's normaliser is a pass over the vocabulary: in parallel.
                crate::cpu::with_f32(&logits, |logits| {
                    got.par_extend(part.par_iter().enumerate().map(|(i, &(_, _, tok))| {
                        let row = &logits[i * vocab..(i + 1) * vocab];
                        let norm = LogSoftmax::new(row);
                        (norm.at(row, tok), norm.argmax == tok as usize)
                    }))
                })?;
            }
            for (&(r, _, _), (lp, greedy)) in wanted.iter().zip(got) {
                scored[r].0.push(lp);
                scored[r].1 &= greedy;
            }
            at = end;
        }
        for (r, (token_logprobs, greedy)) in scored.into_iter().enumerate() {
            let req = groups[rows[r].0].conts[rows[r].1].0;
            out[req] = Some(Loglikelihood {
                logprob: token_logprobs.iter().map(|&x| x as f64).sum(),
                greedy,
                token_logprobs,
            });
        }
        Ok(())
    }
}

impl Engine for NativeEngine {
    fn name(&self) -> &str {
        &self.name
    }

    fn loglikelihood(
        &mut self,
        requests: &[LoglikelihoodRequest],
        progress: &mut Progress<'_>,
    ) -> Result<Vec<Loglikelihood>, EngineError> {
        let max_len = self.max_len();
        let mut pieces = Vec::with_capacity(requests.len());
        for (i, r) in requests.iter().enumerate() {
            let (mut ctx, cont) = self.encode_pair(&r.context, &r.continuation)?;
            if cont.is_empty() {
                return Err(self.err(format!(
                    "request {i}: the continuation {:?} adds no tokens to its context",
                    text::untrusted(&r.continuation, 200)
                )));
            }
            if cont.len() > max_len {
                return Err(self.err(format!(
                    "request {i}: the continuation is {} tokens, more than the model's {max_len}",
                    cont.len()
                )));
            }
            // The harness keeps the last max_len tokens of context + continuation (the model
            // reads all but the continuation's last).
            let room = max_len + 1 - cont.len();
            if ctx.len() > room {
                ctx.drain(..ctx.len() - room);
            }
            pieces.push((ctx, cont));
        }
        self.score_pieces(pieces, progress)
    }

    fn loglikelihood_rolling(
        &mut self,
        texts: &[String],
        progress: &mut Progress<'_>,
    ) -> Result<Vec<Loglikelihood>, EngineError> {
        let (max_len, prefix) = (self.max_len(), self.prefix_token()?);
        let mut pieces = Vec::new();
        let mut owners = Vec::new();
        for (i, t) in texts.iter().enumerate() {
            let tokens = self.encode(t)?;
            if tokens.is_empty() {
                return Err(self.err(format!("text {i} is empty: nothing to score")));
            }
            for w in rolling_windows(&tokens, prefix, max_len) {
                pieces.push(w);
                owners.push(i);
            }
        }
        let windows = pieces.len();
        let scored = self.score_pieces(pieces, &mut |done| {
            progress(done * texts.len() / windows.max(1))
        })?;
        // Windows are in text order: sum each text's, its tokens in order.
        let mut out: Vec<Loglikelihood> = texts
            .iter()
            .map(|_| Loglikelihood {
                logprob: 0.0,
                greedy: true,
                token_logprobs: Vec::new(),
            })
            .collect();
        for (s, i) in scored.into_iter().zip(owners) {
            let o = &mut out[i];
            o.logprob += s.logprob;
            o.greedy &= s.greedy;
            o.token_logprobs.extend(s.token_logprobs);
        }
        Ok(out)
    }

    fn generate(
        &mut self,
        requests: &[GenerateRequest],
        progress: &mut Progress<'_>,
    ) -> Result<Vec<Generated>, EngineError> {
        let max_len = self.max_len();
        // Requests with the same settings run as one batch (sorted by prompt length).
        let mut order: Vec<usize> = (0..requests.len()).collect();
        let mut prompts = Vec::with_capacity(requests.len());
        // Each request's token budget, cut to what the context has left after its prompt: a
        // budget past the model's positions (512 tokens asked of a 256-position model) ends
        // the answer there, as a length stop, instead of failing the request.
        let mut budgets = Vec::with_capacity(requests.len());
        for r in requests {
            let mut ids = self.encode(&r.prompt)?;
            // The harness keeps the last (max_len - max_tokens) prompt tokens, and at least
            // half the context when the budget would leave less.
            let room = max_len
                .saturating_sub(r.max_tokens)
                .max(max_len / 2)
                .clamp(1, max_len.saturating_sub(1).max(1));
            if ids.len() > room {
                ids.drain(..ids.len() - room);
            }
            if ids.is_empty() {
                ids.extend(self.tokenizer.eos.first().copied().or(self.tokenizer.bos));
            }
            budgets.push(r.max_tokens.min(max_len.saturating_sub(ids.len())).max(1));
            prompts.push(ids);
        }
        order.sort_by_key(|&i| std::cmp::Reverse(prompts[i].len()));
        let mut out: Vec<Option<Generated>> = vec![None; requests.len()];
        let mut done = 0;
        let mut at = 0;
        let mut guides: Vec<(String, crate::json_schema::Guide)> = Vec::new();
        while at < order.len() {
            let first = &requests[order[at]];
            let budget = budgets[order[at]];
            let same = |i: usize| {
                let r = &requests[i];
                budgets[i] == budget
                    && r.until == first.until
                    && r.temperature == first.temperature
                    && r.seed == first.seed
                    && r.json_schema == first.json_schema
            };
            let mut end = at + 1;
            while end < order.len()
                && end - at < self.batch_rows
                && (end - at + 1) * (prompts[order[at]].len() + budget) <= self.batch_tokens * 2
                && same(order[end])
            {
                end += 1;
            }
            let batch: Vec<Vec<u32>> = order[at..end].iter().map(|&i| prompts[i].clone()).collect();
            let params = SamplingParams {
                temperature: first.temperature,
                top_k: 0,
                top_p: 1.0,
                min_p: 0.0,
                seed: first.seed,
                max_tokens: budget,
                stop: first.until.clone(),
                ..SamplingParams::default()
            };
            let done_here = match &first.json_schema {
                Some(text) => {
                    // Compiled once a call, however many batches share it.
                    let guide = match guides.iter().find(|(t, _)| t == text) {
                        Some((_, g)) => g.clone(),
                        None => {
                            let schema = crate::json_schema::Schema::compile_str(text)
                                .map_err(|e| self.err(e))?;
                            let g = crate::json_schema::Guide::schema(std::sync::Arc::new(schema));
                            guides.push((text.clone(), g.clone()));
                            g
                        }
                    };
                    crate::generate_guided(
                        &self.model,
                        &self.tokenizer,
                        &batch,
                        &params,
                        &guide,
                        &mut |_, _| {},
                    )
                }
                None => generate_sharing(
                    &self.model,
                    &self.tokenizer,
                    &batch,
                    &params,
                    self.share_prefix_from,
                    &mut |_, _| {},
                ),
            }
            .map_err(|e| self.err(e))?;
            for (&i, c) in order[at..end].iter().zip(done_here) {
                out[i] = Some(Generated {
                    truncated: c.finish == crate::Finish::Length,
                    text: c.text,
                    tokens: c.tokens.len(),
                    tool_calls: vec![],
                });
            }
            done += end - at;
            progress(done);
            at = end;
        }
        Ok(out
            .into_iter()
            .map(|o| o.expect("every request generated"))
            .collect())
    }

    fn apply_chat_template(&self, messages: &[Message]) -> Result<String, EngineError> {
        let t = self
            .template
            .as_ref()
            .ok_or_else(|| self.err("the model has no chat template"))?;
        t.render(messages, true, None).map_err(|e| self.err(e))
    }

    /// As the default, and with tools: the template shows them to the model and the
    /// answer's calls are read back in the format the template writes them in.
    fn chat(
        &mut self,
        requests: &[ChatRequest],
        progress: &mut Progress<'_>,
    ) -> Result<Vec<Generated>, EngineError> {
        let t = self
            .template
            .as_ref()
            .ok_or_else(|| self.err("the model has no chat template"))?;
        let with_tools = requests.iter().any(|r| r.tools.is_some());
        let format = if with_tools {
            if !t.renders_tools() {
                return Err(self.err(
                    "the model's chat template shows no tools: ask it in prompting mode (BFCL's system prompt) instead",
                ));
            }
            Some(
                self.tool_format
                    .or_else(|| crate::tool_calls::ToolFormat::of_template(t))
                    .ok_or_else(|| {
                        self.err(
                            "galley cannot read the tool calls this model's chat template writes",
                        )
                    })?,
            )
        } else {
            None
        };
        let tools: Vec<Option<crate::json_schema::Json>> = requests
            .iter()
            .map(|r| match &r.tools {
                None => Ok(None),
                Some(text) => serde_json::from_str::<crate::json_schema::Json>(text)
                    .map(Some)
                    .map_err(|e| self.err(format!("tools is not JSON: {e}"))),
            })
            .collect::<Result<_, EngineError>>()?;
        let prompts = requests
            .iter()
            .zip(&tools)
            .map(|(r, tools)| {
                let prompt = t
                    .render(&r.messages, true, tools.as_ref())
                    .map_err(|e| self.err(e))?;
                Ok(r.continuing(prompt))
            })
            .collect::<Result<Vec<_>, EngineError>>()?;
        let mut out = self.generate(&prompts, progress)?;
        if let Some(format) = format {
            // Calls only; an evaluation reads the answer whole, reasoning included.
            let reader = crate::answer::AnswerReader {
                thinks: false,
                tool_format: Some(format),
            };
            for (g, tools) in out.iter_mut().zip(&tools) {
                if tools.is_none() {
                    continue;
                }
                let m = reader.read(&g.text, false, tools.as_ref());
                if !m.tool_calls.is_empty() {
                    g.text = m.content;
                    g.tool_calls = m.tool_calls;
                }
            }
        }
        Ok(out)
    }
}

/// Groups whose contexts share a prefix of at least `min` tokens (few-shot
/// examples every question of a task repeats), as (prefix length, members), and the rest.
/// Contexts are sorted so that those sharing a prefix are neighbours; a family grows while
/// the next context shares enough of its prefix, and each member keeps at least its last
/// token out of the prefix (its last position's logits score the first continuation
/// token).
fn families(groups: &[Group], min: usize) -> (Vec<(usize, Vec<usize>)>, Vec<usize>) {
    let mut idx: Vec<usize> = (0..groups.len()).collect();
    idx.sort_by(|&a, &b| groups[a].context.cmp(&groups[b].context));
    let (mut families, mut rest) = (Vec::new(), Vec::new());
    let mut i = 0;
    while i < idx.len() {
        let first = &groups[idx[i]].context;
        let mut shared = first.len().saturating_sub(1);
        let mut j = i + 1;
        while j < idx.len() {
            let c = &groups[idx[j]].context;
            let common = first[..shared]
                .iter()
                .zip(c)
                .take_while(|(a, b)| a == b)
                .count()
                .min(c.len().saturating_sub(1));
            if common < min.max(1) {
                break;
            }
            shared = common;
            j += 1;
        }
        if j - i >= 2 {
            families.push((shared, idx[i..j].to_vec()));
        } else {
            rest.push(idx[i]);
        }
        i = j;
    }
    (families, rest)
}

/// lm-evaluation-harness's rolling windows (`get_rolling_token_windows` with `context_len`
/// 1, each made disjoint): the first window predicts up to `max_len` tokens after the prefix;
/// each next one predicts the tokens that follow, reading as many tokens before them as fit,
/// so every token is scored exactly once with as much context as the model takes.
pub fn rolling_windows(tokens: &[u32], prefix: u32, max_len: usize) -> Vec<(Vec<u32>, Vec<u32>)> {
    let max_len = max_len.max(1);
    let first = tokens.len().min(max_len);
    let mut out = vec![(vec![prefix], tokens[..first].to_vec())];
    let mut predicted = first;
    while predicted < tokens.len() {
        let len = (tokens.len() - predicted).min(max_len);
        let end = predicted + len;
        // The harness's context is the max_len tokens before the window's last, cut so that
        // context + predictions - 1 = max_len.
        let start = end - 1 - max_len;
        let ctx = tokens[start..start + max_len - len + 1].to_vec();
        out.push((ctx, tokens[end - len..end].to_vec()));
        predicted = end;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contexts_sharing_a_long_prefix_form_a_family_and_keep_a_token_each() {
        let group = |c: &[u32]| Group {
            context: c.to_vec(),
            conts: vec![],
        };
        let p: Vec<u32> = (100..110).collect();
        let with = |tail: &[u32]| [p.as_slice(), tail].concat();
        let groups = vec![
            group(&with(&[1, 2])),
            group(&[7, 8, 9]),
            group(&with(&[3])),
            // Only the prefix: it keeps its last token, so the family shares 9.
            group(&p),
            group(&with(&[1, 5, 6])),
        ];
        let (fams, rest) = families(&groups, 8);
        assert_eq!(rest, vec![1]);
        assert_eq!(fams.len(), 1);
        let (shared, mut members) = fams[0].clone();
        members.sort();
        assert_eq!((shared, members), (9, vec![0, 2, 3, 4]));
        // A longer threshold takes only the two that share p + [1].
        let (fams, rest) = families(&groups, 11);
        assert_eq!(fams, vec![(11, vec![0, 4])]);
        assert_eq!(rest.len(), 3);
        // Past every common prefix nothing is shared.
        let (fams, rest) = families(&groups, 12);
        assert!(fams.is_empty());
        assert_eq!(rest.len(), 5);
    }

    #[test]
    fn rolling_windows_are_the_harness_s() {
        // lm-eval's get_rolling_token_windows(range(10), prefix=99, max_seq_len=4,
        // context_len=1), each through make_disjoint_window.
        let tokens: Vec<u32> = (0..10).collect();
        assert_eq!(
            super::rolling_windows(&tokens, 99, 4),
            vec![
                (vec![99], vec![0, 1, 2, 3]),
                (vec![3], vec![4, 5, 6, 7]),
                (vec![5, 6, 7], vec![8, 9]),
            ]
        );
        assert_eq!(
            super::rolling_windows(&[7, 8], 99, 4),
            vec![(vec![99], vec![7, 8])]
        );
    }
}
