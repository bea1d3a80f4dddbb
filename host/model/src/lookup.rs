//! Drafts for prompt-lookup decoding (HF transformers' `prompt_lookup_num_tokens`, vLLM's
//! n-gram speculator, llama.cpp's `llama-lookup`): when the last few tokens of a sequence
//! appeared before in it, the tokens that followed them then are a good guess of what
//! follows now. Answers that quote their prompt (extraction, summaries, code edits, a JSON
//! object restating its input) are full of such repeats. `generate` runs the guess through
//! the model in one pass and keeps it only as far as the tokens the model itself picks
//! agree with it, so a draft changes speed, never the output.

/// The longest and shortest suffixes looked up: a single repeated token is too weak a cue
/// (its drafts are mostly rejected, and a rejected draft costs a wider pass).
const LONGEST: usize = 4;
const SHORTEST: usize = 2;

/// Up to `max` tokens guessed to follow `seen`: what followed the most recent earlier
/// occurrence of its last tokens (the last 4, else 3, else 2), looked up again after the
/// guess while it falls short (so a loop of period p drafts on past p tokens, as llama.cpp's
/// lookup drafts token after token); empty when nothing repeats.
pub fn draft(seen: &[u32], max: usize) -> Vec<u32> {
    guess(seen.to_vec(), max)
}

/// [`draft`] of `seen`, which it extends by the guess as it goes.
fn guess(mut seen: Vec<u32>, max: usize) -> Vec<u32> {
    let n = seen.len();
    while seen.len() < n + max {
        let more = continuation(&seen, n + max - seen.len());
        if more.is_empty() {
            break;
        }
        seen.extend(more);
    }
    seen.split_off(n)
}

/// Up to `max` tokens that followed the most recent earlier occurrence of `seen`'s last 4,
/// else 3, else 2 tokens.
fn continuation(seen: &[u32], max: usize) -> Vec<u32> {
    let n = seen.len();
    if max == 0 {
        return Vec::new();
    }
    for k in (SHORTEST..=LONGEST.min(n.saturating_sub(1))).rev() {
        let suffix = &seen[n - k..];
        // Latest first: nearby repeats predict better than old ones. The suffix itself
        // (start n - k) is not an occurrence; one that overlaps it is.
        if let Some(start) = (0..n - k).rev().find(|&s| &seen[s..s + k] == suffix) {
            let from = start + k;
            return seen[from..(from + max).min(n)].to_vec();
        }
    }
    Vec::new()
}

/// One sequence's drafting: how long a draft to try next, and how many steps to sit out
/// after drafts the model rejected outright. A step of w tokens costs more than one of 1 (on
/// a 2-core CPU, SmolLM2-135M's 9-token pass is 5.5x its 1-token step: `lookup-bench`), so
/// a draft pays only where most of it is kept: the length doubles while whole drafts are
/// kept, falls to what was kept when a draft is cut short, and a draft kept in nothing
/// makes the sequence wait 1, 2, 4, ... 16 steps before it drafts again.
#[derive(Debug, Clone)]
pub struct Drafter {
    max: usize,
    len: usize,
    wait: usize,
    backoff: usize,
}

impl Drafter {
    /// Drafts of up to `max` tokens (0: none).
    pub fn new(max: usize) -> Self {
        Self {
            max,
            len: max.min(4),
            wait: 0,
            backoff: 1,
        }
    }

    /// The next draft for a sequence of `prompt` then `tokens` that may generate
    /// `max_tokens` in all: a step also gives the token after its draft, so the budget
    /// bounds both.
    pub fn next(&mut self, prompt: &[u32], tokens: &[u32], max_tokens: usize) -> Vec<u32> {
        if self.max == 0 {
            return Vec::new();
        }
        if self.wait > 0 {
            self.wait -= 1;
            return Vec::new();
        }
        let room = max_tokens.saturating_sub(tokens.len() + 1);
        guess([prompt, tokens].concat(), self.len.min(room))
    }

    /// What became of the last draft: `kept` of its `drafted` tokens.
    pub fn took(&mut self, drafted: usize, kept: usize) {
        if drafted == 0 {
            return;
        }
        if kept == drafted {
            self.len = (self.len * 2).min(self.max);
            self.backoff = 1;
        } else if kept == 0 {
            self.len = (self.len / 2).max(1);
            self.wait = self.backoff;
            self.backoff = (self.backoff * 2).min(16);
        } else {
            self.len = kept;
            self.backoff = 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{Drafter, draft};

    #[test]
    fn a_drafter_grows_on_kept_drafts_and_waits_after_rejected_ones() {
        let (prompt, tokens) = ([1, 2, 3, 4, 5, 6, 7, 8, 9], [1, 2]);
        let mut d = Drafter::new(6);
        assert_eq!(d.next(&prompt, &tokens, 100), vec![3, 4, 5, 6]);
        d.took(4, 4);
        assert_eq!(d.next(&prompt, &tokens, 100).len(), 6);
        // A budget of 5 with 2 generated: 2 drafted, the step's own token the fifth.
        assert_eq!(d.next(&prompt, &tokens, 5).len(), 2);
        d.took(6, 2);
        assert_eq!(d.next(&prompt, &tokens, 100).len(), 2);
        // Rejected outright: one step out, then two, then four.
        for wait in [1, 2, 4] {
            d.took(2, 0);
            for _ in 0..wait {
                assert!(d.next(&prompt, &tokens, 100).is_empty());
            }
            assert_eq!(d.next(&prompt, &tokens, 100).len(), 1);
        }
        assert!(Drafter::new(0).next(&prompt, &tokens, 100).is_empty());
    }

    #[test]
    fn a_draft_continues_the_latest_longest_match() {
        // "1 2 3" appeared twice; the later occurrence is followed by 9 9.
        let seen = [1, 2, 3, 4, 5, 1, 2, 3, 9, 9, 7, 1, 2, 3];
        assert_eq!(draft(&seen, 2), vec![9, 9]);
        // Past the end of the match, looked up again: "1 2 3" was last followed by 9 9 7.
        assert_eq!(draft(&seen, 9), vec![9, 9, 7, 1, 2, 3, 9, 9, 7]);
        // A 4-token match wins over a later 2-token one.
        let seen = [5, 6, 7, 8, 20, 0, 7, 8, 30, 5, 6, 7, 8];
        assert_eq!(draft(&seen, 1), vec![20]);
        // An occurrence that overlaps the suffix counts: a run of one token drafts on.
        assert_eq!(draft(&[4, 4, 4], 3), vec![4, 4, 4]);
        // Nothing repeats, a single token repeats, nothing asked: no draft.
        assert!(draft(&[1, 2, 3, 4], 5).is_empty());
        assert!(draft(&[7, 1, 2, 7], 5).is_empty());
        assert!(draft(&[1, 2, 1, 2], 0).is_empty());
        assert!(draft(&[], 3).is_empty());
    }
}
