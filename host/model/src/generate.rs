//! Generation: prompts in, completions out, several sequences of different lengths at once
//! (left-padded into one batch sharing a KV cache), with the sampling of `sample.rs`, stop
//! tokens and stop strings, a token budget, a streaming callback, and each chosen token's
//! log-probability under the model (what the trainers of GRPO and DPO need); optionally held
//! to JSON or a JSON schema ([`generate_guided`]); optionally keeping what finished sequences
//! have seen, so that a later generation continuing them (a rollout's next turn, after its
//! tool results) prefills only what is new ([`generate_resuming`]); optionally, while a
//! sequence decodes alone, checking several tokens a step drafted from what it has seen
//! (`SamplingParams::lookup`, prompt-lookup decoding), which gives the same tokens in fewer
//! passes where answers repeat their context.

use crate::decode::Decoder;
use crate::error::Result;
use crate::json_schema::Guide;
use crate::model::{Cache, Llama};
use crate::sample::{Sampler, SamplingParams, logprob};
use crate::tokenizer::{TextStream, Tokenizer};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    /// The model produced an end-of-sequence or stop token.
    Eos,
    /// A stop string appeared (it is cut from the text).
    Stop,
    /// `max_tokens` were generated.
    Length,
}

#[derive(Debug, Clone)]
pub struct Completion {
    pub text: String,
    /// Generated token ids (the end token included, when one ended it).
    pub tokens: Vec<u32>,
    /// `log p(token)` under the model's distribution (temperature 1, no filtering), per token.
    pub logprobs: Vec<f32>,
    pub prompt_tokens: usize,
    /// Of `prompt_tokens`, those whose keys and values came from a kept cache
    /// ([`generate_resuming`]) and were not prefilled again.
    pub cached_tokens: usize,
    pub finish: Finish,
    /// Tokens drafted by prompt lookup and checked by the model, and those of them kept.
    pub drafted: usize,
    pub accepted: usize,
}

/// Called with (sequence index, new text) as text becomes final.
pub type OnText<'a> = dyn FnMut(usize, &str) + 'a;

struct Row {
    prompt: Vec<u32>,
    cached: usize,
    tokens: Vec<u32>,
    logprobs: Vec<f32>,
    out: Output,
    finish: Option<Finish>,
    sampler: Sampler,
    guide: Option<Guide>,
    drafter: crate::lookup::Drafter,
    drafted: usize,
    accepted: usize,
}

/// A sequence's text as its tokens arrive (`generate`'s rows, `galley serve`'s sequences):
/// stop strings, the token budget, and the part of the text that is safe to show.
#[derive(Debug, Clone, Default)]
pub struct Output {
    text: TextStream,
    /// Bytes of `text` already shown.
    emitted: usize,
}

impl Output {
    /// Takes the sampled token `t`, the `count`th (`eos`: it ends the sequence); returns how
    /// the sequence ends, if it does. A stop string is cut from the text.
    pub fn take(
        &mut self,
        tok: &Tokenizer,
        t: u32,
        eos: bool,
        count: usize,
        params: &SamplingParams,
    ) -> Result<Option<Finish>> {
        if eos {
            self.text.finish(tok)?;
            return Ok(Some(Finish::Eos));
        }
        let added = self.text.push(tok, t)?;
        let text = &mut self.text.text;
        if let Some(at) = find_stop(text, text.len() - added, &params.stop) {
            text.truncate(at);
            return Ok(Some(Finish::Stop));
        }
        if count >= params.max_tokens {
            self.text.finish(tok)?;
            return Ok(Some(Finish::Length));
        }
        Ok(None)
    }

    /// Text not shown before that is safe to show now (all of what is left once `finished`:
    /// no stop string can follow), and marks it shown.
    pub fn fresh(&mut self, finished: bool, stops: &[String]) -> &str {
        let all = self.text.text.as_str();
        let show = if finished { all } else { settled(all, stops) };
        if show.len() > self.emitted && show.is_char_boundary(self.emitted) {
            let from = std::mem::replace(&mut self.emitted, show.len());
            &show[from..]
        } else {
            ""
        }
    }

    /// The text so far (a stop string cut).
    pub fn text(&self) -> &str {
        &self.text.text
    }

    pub fn into_text(self) -> String {
        self.text.text
    }
}

/// Text safe to show now: not ending in a partial UTF-8 character, and not a prefix of a
/// stop string that the next token might complete.
pub fn settled<'t>(text: &'t str, stops: &[String]) -> &'t str {
    let mut end = text.len();
    if text.ends_with('\u{FFFD}') {
        end -= '\u{FFFD}'.len_utf8();
    }
    for s in stops {
        for k in (1..s.len()).rev() {
            if s.is_char_boundary(k) && text[..end].ends_with(&s[..k]) {
                end = end.min(text[..end].len() - k);
                break;
            }
        }
    }
    &text[..end]
}

/// Where the first of `stops` begins in `text`, looking only at matches that end after
/// `from` (text before it was searched when it arrived): a search per token over the whole
/// text made long generations quadratic.
pub fn find_stop(text: &str, from: usize, stops: &[String]) -> Option<usize> {
    let longest = stops.iter().map(String::len).max()?;
    let mut start = from
        .saturating_sub(longest.saturating_sub(1))
        .min(text.len());
    while !text.is_char_boundary(start) {
        start -= 1;
    }
    stops
        .iter()
        .filter(|s| !s.is_empty())
        .filter_map(|s| text[start..].find(s.as_str()))
        .min()
        .map(|at| start + at)
}

/// Prompts that all start with this many tokens or more (a few-shot prompt's examples, a
/// long system prompt) have that prefix prefilled once and its cache rows copied.
pub const SHARE_PREFIX_FROM: usize = 64;

pub fn generate(
    model: &Llama,
    tok: &Tokenizer,
    prompts: &[Vec<u32>],
    params: &SamplingParams,
    on_text: &mut OnText<'_>,
) -> Result<Vec<Completion>> {
    generate_sharing(model, tok, prompts, params, SHARE_PREFIX_FROM, on_text)
}

/// `generate`, each answer held to `guide` (one JSON object, or one following a schema):
/// every step, tokens that cannot continue it are masked before sampling, and the answer
/// ends when the object closes. Log-probabilities stay the model's own.
pub fn generate_guided(
    model: &Llama,
    tok: &Tokenizer,
    prompts: &[Vec<u32>],
    params: &SamplingParams,
    guide: &Guide,
    on_text: &mut OnText<'_>,
) -> Result<Vec<Completion>> {
    let how = How {
        guide: Some(guide),
        ..How::default()
    };
    run(model, tok, prompts, params, how, on_text).map(|(c, _)| c)
}

/// `generate`, with the prompts' common prefix computed once when it is at least
/// `share_from` tokens long (`usize::MAX`: never).
pub fn generate_sharing(
    model: &Llama,
    tok: &Tokenizer,
    prompts: &[Vec<u32>],
    params: &SamplingParams,
    share_from: usize,
    on_text: &mut OnText<'_>,
) -> Result<Vec<Completion>> {
    let how = How {
        share_from,
        ..How::default()
    };
    run(model, tok, prompts, params, how, on_text).map(|(c, _)| c)
}

/// The keys and values of the tokens a finished sequence was fed (its prompt and its
/// completion but the last token, which was sampled and not fed yet), for a later generation
/// whose prompt continues them.
#[derive(Clone)]
pub struct Kept {
    ids: Vec<u32>,
    cache: Cache,
}

impl Kept {
    /// The tokens whose keys and values are held.
    pub fn ids(&self) -> &[u32] {
        &self.ids
    }

    /// Bytes of keys and values held.
    pub fn bytes(&self) -> usize {
        self.cache.bytes()
    }

    /// Whether `prompt` can resume from this: it starts with these tokens and has at least
    /// one more (the first new token's logits come from feeding it).
    fn continued_by(&self, prompt: &[u32]) -> bool {
        prompt.len() > self.ids.len() && prompt.starts_with(&self.ids)
    }
}

/// Which sequences keep their caches when they finish ([`generate_resuming`]): called with
/// the row, its text and how it ended. Keeping costs memory (SmolLM2-135M in f32: 46 KB a
/// token), so a caller keeps only the sequences it will continue.
pub type KeepIf<'a> = dyn Fn(usize, &str, Finish) -> bool + 'a;

/// How one generation runs beyond its prompts and sampling (each public entry point sets
/// its own part).
struct How<'a> {
    /// Prompts sharing at least this many leading tokens have them prefilled once.
    share_from: usize,
    guide: Option<&'a Guide>,
    /// What each row has already seen (empty: nothing).
    from: Vec<Option<Kept>>,
    keep_if: Option<&'a KeepIf<'a>>,
}

impl Default for How<'_> {
    fn default() -> Self {
        Self {
            share_from: SHARE_PREFIX_FROM,
            guide: None,
            from: Vec::new(),
            keep_if: None,
        }
    }
}

/// [`generate`], where `from[i]` (when given and `prompts[i]` continues its tokens) spares
/// prefilling what row i has already seen, and which returns, for each row `keep_if` picks
/// as it finishes, what it has seen in turn (`None` for the others). A `from` that `prompts[i]`
/// does not continue is ignored (the row is prefilled whole), so a stale cache costs time,
/// never a wrong result. On a GPU, where the steps after the prefill replay one CUDA graph,
/// nothing is kept: the next generation prefills again.
pub fn generate_resuming(
    model: &Llama,
    tok: &Tokenizer,
    prompts: &[Vec<u32>],
    from: Vec<Option<Kept>>,
    params: &SamplingParams,
    keep_if: &KeepIf<'_>,
    on_text: &mut OnText<'_>,
) -> Result<(Vec<Completion>, Vec<Option<Kept>>)> {
    if !from.is_empty() && from.len() != prompts.len() {
        return Err(crate::error::ModelError::Invalid(format!(
            "{} kept caches for {} prompts",
            from.len(),
            prompts.len()
        )));
    }
    let how = How {
        from,
        keep_if: Some(keep_if),
        ..How::default()
    };
    run(model, tok, prompts, params, how, on_text)
}

fn run(
    model: &Llama,
    tok: &Tokenizer,
    prompts: &[Vec<u32>],
    params: &SamplingParams,
    how: How<'_>,
    on_text: &mut OnText<'_>,
) -> Result<(Vec<Completion>, Vec<Option<Kept>>)> {
    let How {
        share_from,
        guide,
        from,
        keep_if,
    } = how;
    if prompts.is_empty() {
        return Ok((vec![], vec![]));
    }
    if let Some(i) = prompts.iter().position(Vec::is_empty) {
        return Err(crate::error::ModelError::Invalid(format!(
            "prompt {i} is empty"
        )));
    }
    let mut eos: Vec<u32> = tok
        .eos
        .iter()
        .chain(&model.config.eos_token_ids)
        .chain(&params.stop_token_ids)
        .copied()
        .collect();
    eos.sort_unstable();
    eos.dedup();
    let mut rows: Vec<Row> = prompts
        .iter()
        .enumerate()
        .map(|(i, p)| Row {
            prompt: p.clone(),
            cached: 0,
            tokens: vec![],
            logprobs: vec![],
            out: Output::default(),
            finish: None,
            sampler: Sampler::new(params.clone(), i as u64),
            guide: guide.cloned(),
            drafter: crate::lookup::Drafter::new(params.lookup),
            drafted: 0,
            accepted: 0,
        })
        .collect();
    let vocab = guide.map(|_| tok.json_vocab(model.config.vocab_size));
    // Identical prompts (a GRPO group's samples) are prefilled once, then their cache rows copied.
    let mut distinct: Vec<&Vec<u32>> = Vec::new();
    let of: Vec<usize> = prompts
        .iter()
        .map(|p| match distinct.iter().position(|d| *d == p) {
            Some(i) => i,
            None => {
                distinct.push(p);
                distinct.len() - 1
            }
        })
        .collect();
    let pad_id = eos.first().copied().unwrap_or(0);
    // What each distinct prompt resumes from: the first kept cache of its rows that it
    // continues.
    let mut resumed: Vec<Option<Kept>> = vec![None; distinct.len()];
    for (i, k) in from.into_iter().enumerate() {
        let d = of[i];
        if resumed[d].is_none() && k.as_ref().is_some_and(|k| k.continued_by(distinct[d])) {
            resumed[d] = k;
        }
    }
    let resuming = resumed.iter().any(Option::is_some);
    for (r, &d) in rows.iter_mut().zip(&of) {
        r.cached = resumed[d].as_ref().map_or(0, |k| k.ids.len());
    }
    // The prefix every distinct prompt starts with, each keeping a token of its own (its
    // prefill gives the first logits). Left padding then sits between the prefix and a row's
    // own tokens: positions count real tokens only, so each row decodes as if alone.
    let shared = if distinct.len() > 1 && !resuming {
        let lcp = distinct[1..].iter().fold(distinct[0].len(), |n, p| {
            n.min(
                distinct[0]
                    .iter()
                    .zip(p.iter())
                    .take_while(|(a, b)| a == b)
                    .count(),
            )
        });
        let shortest = distinct.iter().map(|p| p.len()).min().unwrap_or(0);
        Some(lcp.min(shortest.saturating_sub(1))).filter(|&n| n >= share_from)
    } else {
        None
    };
    let skip = shared.unwrap_or(0);
    let own: Vec<&[u32]> = distinct
        .iter()
        .zip(&resumed)
        .map(|(p, k)| &p[k.as_ref().map_or(skip, |k| k.ids.len())..])
        .collect();
    let (mut input, pad) = crate::model::left_pad(&own, pad_id);
    let mut cache = match shared {
        // Each row's own cache, stacked (left-padded to the longest); a row with nothing to
        // resume from starts as all padding and is prefilled whole.
        None if resuming => Cache::stack(
            resumed
                .into_iter()
                .map(|k| k.map_or_else(|| model.new_cache_with(1, 1), |k| k.cache))
                .collect(),
        )?,
        Some(n) => {
            let mut base = model.new_cache(1);
            model.forward(&[distinct[0][..n].to_vec()], None, &mut base, true)?;
            base.select_rows(&vec![0; distinct.len()])?;
            base
        }
        None => model.new_cache(distinct.len()),
    };
    // Drafted tokens a pass may add and a step then forget: the sliding layers keep as many
    // more (see `Cache::forget`).
    cache.keep_spare(params.lookup);
    let mut kept: Vec<Option<Kept>> = vec![None; rows.len()];
    let mut first = true;
    if params.max_tokens == 0 {
        rows.iter_mut()
            .for_each(|r| r.finish = Some(Finish::Length));
    }
    // Batch position -> row. Finished rows leave the batch (their cache rows are dropped), so
    // a batch of mostly short completions stops paying for the long tail's decode steps.
    let mut active: Vec<usize> = (0..rows.len())
        .filter(|&i| rows[i].finish.is_none())
        .collect();
    // On a GPU the steps after the prefill replay one CUDA graph (`decode`); every row then
    // stays in the batch, a finished row's step being wasted work rather than a new graph.
    let mut decoder: Option<Decoder<'_>> = None;
    while !active.is_empty() {
        // The tokens drafted this step (prompt lookup, for a sequence alone: its row's), and
        // each active row's logits after its last token and after each drafted one.
        let mut draft: Vec<u32> = Vec::new();
        let steps: Vec<Vec<Vec<f32>>> = match decoder.as_mut() {
            Some(d) => {
                let last = |r: &Row| *r.tokens.last().unwrap_or(&pad_id);
                let ids: Vec<u32> = rows.iter().map(last).collect();
                let mut all = d.step(&ids)?.to_vec2::<f32>()?;
                active
                    .iter()
                    .map(|&i| vec![std::mem::take(&mut all[i])])
                    .collect()
            }
            // Drafts only for a sequence decoding alone (a batch's last): in a batch the step
            // already shares the weights among rows, and every row would pay for the widest
            // draft (SmolLM2's four lookup-bench prompts as one batch: 0.58x).
            None if !first && params.lookup > 0 && active.len() == 1 => {
                let r = &mut rows[active[0]];
                draft = r.drafter.next(&r.prompt, &r.tokens, params.max_tokens);
                let ids = [&input[0][..], &draft[..]].concat();
                let logits = model.forward(&[ids], None, &mut cache, false)?;
                vec![logits.squeeze(0)?.to_vec2::<f32>()?]
            }
            None => {
                let pad = if first { Some(pad.as_slice()) } else { None };
                let logits = model.forward(&input, pad, &mut cache, true)?;
                let mut logits = logits.squeeze(1)?.to_vec2::<f32>()?;
                if first && distinct.len() < rows.len() {
                    cache.select_rows(&of)?;
                    logits = of.iter().map(|&d| logits[d].clone()).collect();
                }
                logits.into_iter().map(|l| vec![l]).collect()
            }
        };
        if first {
            decoder = crate::decode::for_generation(model, &cache, params.max_tokens);
        }
        first = false;
        // The drafted tokens the cache must forget: those after the first whose position's
        // token disagreed (that token is the step's last).
        let mut forget = 0;
        for (&i, ls) in active.iter().zip(&steps) {
            let row = &mut rows[i];
            if row.finish.is_some() {
                continue;
            }
            row.drafted += draft.len();
            let accepted = row.accepted;
            for (j, l) in ls.iter().enumerate() {
                let t = match (&row.guide, &vocab) {
                    (Some(g), Some(v)) => {
                        let mut masked = l.clone();
                        g.mask(&mut masked, v, &eos);
                        row.sampler.sample(&masked, &row.prompt, &row.tokens)
                    }
                    _ => row.sampler.sample(l, &row.prompt, &row.tokens),
                };
                row.tokens.push(t);
                row.logprobs.push(logprob(l, t));
                let count = row.tokens.len();
                let mut end = eos.contains(&t);
                if let (Some(g), Some(v)) = (&mut row.guide, &vocab)
                    && !end
                    // Nothing could continue the object (every logit masked): the answer ends.
                    && !g.advance(v.text(t))
                {
                    end = true;
                }
                row.finish = row.out.take(tok, t, end, count, params)?;
                let fresh = row.out.fresh(row.finish.is_some(), &params.stop);
                if !fresh.is_empty() {
                    on_text(i, fresh);
                }
                // The next position's logits hold only if this token is the drafted one.
                let agrees = draft.get(j) == Some(&t);
                row.accepted += agrees as usize;
                if !agrees || row.finish.is_some() {
                    forget = draft.len() - j;
                    break;
                }
            }
            row.drafter.took(draft.len(), row.accepted - accepted);
        }
        if forget > 0 {
            cache.forget(forget)?;
        }
        if let (Some(keep_if), None) = (keep_if, &decoder) {
            // Cache row p is row active[p]; it holds the prompt and every token but the last.
            for (p, &i) in active.iter().enumerate() {
                let r = &rows[i];
                if let Some(f) = r.finish
                    && keep_if(i, r.out.text(), f)
                {
                    let mut ids = r.prompt.clone();
                    ids.extend(&r.tokens[..r.tokens.len() - 1]);
                    let cache = cache.take_row(p, 64)?;
                    kept[i] = Some(Kept { ids, cache });
                }
            }
        }
        let keep: Vec<usize> = (0..active.len())
            .filter(|&p| rows[active[p]].finish.is_none())
            .collect();
        if decoder.is_none() && keep.len() < active.len() && !keep.is_empty() {
            cache.select_rows(&keep)?;
        }
        active = keep.iter().map(|&p| active[p]).collect();
        input = active
            .iter()
            .map(|&i| vec![*rows[i].tokens.last().unwrap_or(&pad_id)])
            .collect();
    }
    let completions = rows
        .into_iter()
        .map(|r| Completion {
            text: r.out.into_text(),
            prompt_tokens: r.prompt.len(),
            cached_tokens: r.cached,
            tokens: r.tokens,
            logprobs: r.logprobs,
            finish: r.finish.unwrap_or(Finish::Length),
            drafted: r.drafted,
            accepted: r.accepted,
        })
        .collect();
    Ok((completions, kept))
}

#[cfg(test)]
mod tests {
    use super::settled;

    #[test]
    fn settled_text_holds_back_stop_prefixes_and_partial_chars() {
        let stops = vec!["\nUser:".to_string()];
        assert_eq!(settled("Paris.\nUs", &stops), "Paris.");
        assert_eq!(settled("Paris.", &stops), "Paris.");
        assert_eq!(settled("caf\u{FFFD}", &[]), "caf");
    }
}

#[cfg(test)]
mod stop_tests {
    use super::find_stop;

    #[test]
    fn a_stop_is_found_where_it_ends_in_the_new_text_only() {
        let stops = vec!["\nUser:".to_string(), "END".to_string()];
        // Spanning the old and the new text.
        assert_eq!(find_stop("Paris.\nUser: hi", 9, &stops), Some(6));
        // Wholly in the old text: found when it arrived, not again.
        assert_eq!(find_stop("END and more", 6, &stops), None);
        assert_eq!(find_stop("aEND", 0, &stops), Some(1));
        // Multi-byte text before the window's start.
        assert_eq!(find_stop("日本語END", 9, &stops), Some(9));
        assert_eq!(find_stop("日本語EN", 8, &stops), None);
        assert_eq!(find_stop("anything", 0, &[]), None);
    }
}
