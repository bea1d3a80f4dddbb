//! Choosing the next token from logits: repetition penalty, frequency and presence penalties,
//! temperature, top-k, min-p and top-p (in that order, as llama.cpp, HF and vLLM apply them),
//! with a seeded generator per sequence so the same seed gives the same text. Temperature 0 is
//! greedy.

use crate::kernels::softmax;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use serde::Deserialize;

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SamplingParams {
    /// 0 picks the most likely token (greedy).
    pub temperature: f32,
    /// Keep the k most likely tokens; 0 keeps all.
    pub top_k: usize,
    /// Keep the smallest set whose probability reaches p; 1 keeps all.
    pub top_p: f32,
    /// Drop tokens less likely than `min_p` times the most likely one; 0 keeps all.
    pub min_p: f32,
    /// Divides positive (multiplies negative) logits of tokens already seen (prompt and
    /// output); 1 is off.
    pub repetition_penalty: f32,
    /// OpenAI's: subtracted from a token's logit once per time the output has it; 0 is off.
    pub frequency_penalty: f32,
    /// OpenAI's: subtracted from a token's logit when the output has it at all; 0 is off.
    pub presence_penalty: f32,
    pub seed: u64,
    pub max_tokens: usize,
    /// Generation stops when the text contains one of these (they are cut off).
    pub stop: Vec<String>,
    /// Token ids that end generation besides the model's EOS.
    pub stop_token_ids: Vec<u32>,
    /// Prompt-lookup decoding (`generate` on the growing cache, while a sequence decodes
    /// alone): up to this many tokens a step, drafted from what the sequence has seen
    /// (`lookup::draft`), checked in one pass; 0 is off. The tokens are the ones decoding one at a time would give: each position's
    /// token is sampled as always and a draft is kept only while they agree.
    pub lookup: usize,
}

/// The most tokens `SamplingParams::lookup` may draft a step.
pub const MAX_LOOKUP: usize = 64;

impl Default for SamplingParams {
    fn default() -> Self {
        // llama.cpp's defaults, which users of a local chat expect.
        Self {
            temperature: 0.8,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.05,
            repetition_penalty: 1.0,
            frequency_penalty: 0.0,
            presence_penalty: 0.0,
            seed: 0,
            max_tokens: 512,
            stop: vec![],
            stop_token_ids: vec![],
            lookup: 0,
        }
    }
}

impl SamplingParams {
    pub fn greedy(max_tokens: usize) -> Self {
        Self {
            temperature: 0.0,
            max_tokens,
            ..Self::default()
        }
    }

    pub fn validate(&self) -> Result<(), String> {
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return Err(format!(
                "key `temperature`: {} must be >= 0",
                self.temperature
            ));
        }
        if !(0.0..=1.0).contains(&self.top_p) || self.top_p == 0.0 {
            return Err(format!("key `top_p`: {} must be in (0, 1]", self.top_p));
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return Err(format!("key `min_p`: {} must be in [0, 1]", self.min_p));
        }
        // NaN fails too: it is neither > 0 nor finite.
        if self.repetition_penalty.is_nan() || self.repetition_penalty <= 0.0 {
            return Err(format!(
                "key `repetition_penalty`: {} must be > 0",
                self.repetition_penalty
            ));
        }
        // OpenAI's range; NaN fails too.
        for (key, v) in [
            ("frequency_penalty", self.frequency_penalty),
            ("presence_penalty", self.presence_penalty),
        ] {
            if !(-2.0..=2.0).contains(&v) {
                return Err(format!("key `{key}`: {v} must be in [-2, 2]"));
            }
        }
        // A pass over more drafted tokens than this costs more than most drafts save.
        if self.lookup > MAX_LOOKUP {
            return Err(format!(
                "key `lookup`: {} must be at most {MAX_LOOKUP}",
                self.lookup
            ));
        }
        Ok(())
    }
}

pub struct Sampler {
    params: SamplingParams,
    rng: StdRng,
}

/// `log softmax(logits)[token]`.
pub fn logprob(logits: &[f32], token: u32) -> f32 {
    LogSoftmax::new(logits).at(logits, token)
}

/// A row of logits' normaliser, computed once for scoring several tokens against it.
#[derive(Debug, Clone, Copy)]
pub struct LogSoftmax {
    max: f32,
    ln_sum: f32,
    /// The most likely token (the first, on ties, as torch's argmax).
    pub argmax: usize,
}

impl LogSoftmax {
    pub fn new(logits: &[f32]) -> Self {
        let (argmax, max) = softmax::argmax(logits);
        let sum = softmax::exp_sum(logits, max, 1.0);
        Self {
            max,
            ln_sum: sum.ln() as f32,
            argmax,
        }
    }

    /// `log softmax(logits)[token]` for the row this was made from.
    pub fn at(&self, logits: &[f32], token: u32) -> f32 {
        (logits[token as usize] - self.max) - self.ln_sum
    }

    /// The `k` most likely tokens and their log-probabilities, most likely first (ties in
    /// vocabulary order).
    pub fn top(&self, logits: &[f32], k: usize) -> Vec<(u32, f32)> {
        softmax::top_k(logits, k)
            .into_iter()
            .map(|i| (i, (logits[i as usize] - self.max) - self.ln_sum))
            .collect()
    }
}

impl Sampler {
    /// `stream` separates the generators of the sequences of one batch.
    pub fn new(params: SamplingParams, stream: u64) -> Self {
        let seed = galley_core::seed::derive_seed(
            params.seed,
            &[galley_core::seed::purpose::SAMPLER_ROW, stream],
        );
        Self {
            rng: StdRng::seed_from_u64(seed),
            params,
        }
    }

    /// Picks a token after `prompt` and the `output` generated so far: the repetition
    /// penalty counts both, the frequency and presence penalties the output only (as OpenAI
    /// and vLLM do).
    pub fn sample(&mut self, logits: &[f32], prompt: &[u32], output: &[u32]) -> u32 {
        let p = &self.params;
        // Copied only when a penalty changes them.
        let penalised;
        let counted = p.frequency_penalty != 0.0 || p.presence_penalty != 0.0;
        let logits: &[f32] = if p.repetition_penalty != 1.0 || counted {
            let mut logits = logits.to_vec();
            if p.repetition_penalty != 1.0 {
                let mut done = std::collections::HashSet::new();
                for &t in prompt.iter().chain(output) {
                    if done.insert(t)
                        && let Some(l) = logits.get_mut(t as usize)
                    {
                        *l = if *l > 0.0 {
                            *l / p.repetition_penalty
                        } else {
                            *l * p.repetition_penalty
                        };
                    }
                }
            }
            if counted {
                let mut counts = std::collections::HashMap::<u32, u32>::new();
                for &t in output {
                    *counts.entry(t).or_default() += 1;
                }
                for (t, n) in counts {
                    if let Some(l) = logits.get_mut(t as usize) {
                        *l -= n as f32 * p.frequency_penalty + p.presence_penalty;
                    }
                }
            }
            penalised = logits;
            &penalised
        } else {
            logits
        };
        if p.temperature == 0.0 {
            // The first most likely token, as torch's argmax (NaN never).
            return softmax::argmax(logits).0 as u32;
        }
        if (p.top_k == 0 || p.top_k >= logits.len()) && p.min_p == 0.0 && p.top_p >= 1.0 {
            return self.sample_all(logits);
        }
        // Top-k first, from the few logits that can be among the k largest (sorting a whole
        // vocabulary every token costs milliseconds); min-p and top-p then need only the k
        // survivors in order.
        let top_k = p.top_k > 0 && p.top_k < logits.len();
        // Without top-k, min-p alone bounds what can be drawn: the tokens within its factor of
        // the most likely one (found in one pass; a little below the bound, so that rounding
        // never leaves out one the floor below keeps) are sorted, not the whole vocabulary.
        let min_p_bound = (!top_k && p.min_p > 0.0)
            .then(|| {
                let (_, top) = softmax::argmax(logits);
                top + p.temperature * p.min_p.ln() - 1e-3 * p.temperature.max(1.0)
            })
            .filter(|b| b.is_finite());
        let filtered = min_p_bound.is_some();
        let kept: Vec<u32> = match min_p_bound {
            Some(bound) => softmax::at_least(logits, bound),
            None if top_k => softmax::top_k(logits, p.top_k),
            None => softmax::top_k(logits, logits.len()),
        };
        let cand: Vec<(u32, f32)> = kept
            .into_iter()
            .map(|i| (i, logits[i as usize] / p.temperature))
            .collect();
        let max = cand[0].1;
        let mut probs: Vec<f64> = cand.iter().map(|c| ((c.1 - max) as f64).exp()).collect();
        // Top-p counts mass over the whole vocabulary, filtered tokens included.
        let sum: f64 = if filtered && p.top_p < 1.0 {
            softmax::exp_sum(logits, logits[cand[0].0 as usize], 1.0 / p.temperature)
        } else {
            probs.iter().sum()
        };
        probs.iter_mut().for_each(|x| *x /= sum);
        let mut keep = probs.len();
        if p.min_p > 0.0 {
            let floor = p.min_p as f64 * probs[0];
            keep = probs.iter().take_while(|&&x| x >= floor).count().max(1);
        }
        if p.top_p < 1.0 {
            let mut acc = 0.0;
            let mut n = 0;
            for &x in &probs[..keep] {
                acc += x;
                n += 1;
                if acc >= p.top_p as f64 {
                    break;
                }
            }
            keep = n.max(1);
        }
        let total: f64 = probs[..keep].iter().sum();
        let mut r = self.rng.random::<f64>() * total;
        for i in 0..keep {
            r -= probs[i];
            if r <= 0.0 {
                return cand[i].0;
            }
        }
        cand[keep - 1].0
    }

    /// Nothing cut (GRPO's and TRL's default sampling): draw from the whole tempered softmax
    /// in vocabulary order. Sorting 49k logits per token would cost more than the draw.
    fn sample_all(&mut self, logits: &[f32]) -> u32 {
        let scale = 1.0 / self.params.temperature;
        let (_, max) = softmax::argmax(logits);
        // Weights summed per block, then the draw walks the blocks and only its own block's
        // logits one by one.
        let mut blocks = Vec::with_capacity(logits.len().div_ceil(softmax::BLOCK));
        let total = softmax::block_sums(logits, max, scale, &mut blocks);
        let mut r = self.rng.random::<f64>() * total;
        for (b, &sum) in blocks.iter().enumerate() {
            if r - sum as f64 > 0.0 {
                r -= sum as f64;
                continue;
            }
            let start = b * softmax::BLOCK;
            let end = (start + softmax::BLOCK).min(logits.len());
            for (i, &l) in logits[start..end].iter().enumerate() {
                let w = softmax::exp((l - max) * scale) as f64;
                r -= w;
                if r <= 0.0 && w > 0.0 {
                    return (start + i) as u32;
                }
            }
        }
        // Rounding left a sliver of r: the last token with weight.
        let weighs = |l: &f32| softmax::exp((l - max) * scale) > 0.0;
        logits.iter().rposition(weighs).unwrap_or(0) as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Min-p without top-k finds its candidates in one pass instead of sorting the
    /// vocabulary: the draws must be those of the sorted path (top-k of all but one logit,
    /// which min-p cuts anyway), seed for seed, with and without top-p.
    #[test]
    fn min_p_draws_as_if_the_whole_vocabulary_were_sorted() {
        let n = 5000;
        let logits: Vec<f32> = (0..n)
            .map(|i| {
                let u = ((i * 7919) % 10007) as f32 / 10007.0;
                -6.0 * u + if i % 331 == 0 { 5.0 } else { 0.0 } + if i == 17 { -30.0 } else { 0.0 }
            })
            .collect();
        for (min_p, top_p, t) in [
            (0.05, 1.0, 1.0),
            (0.02, 0.9, 0.7),
            (0.3, 0.5, 1.3),
            (1.0, 1.0, 1.0),
        ] {
            let params = |top_k| SamplingParams {
                temperature: t,
                top_k,
                top_p,
                min_p,
                seed: 5,
                ..SamplingParams::default()
            };
            let (mut fast, mut sorted) =
                (Sampler::new(params(0), 1), Sampler::new(params(n - 1), 1));
            let mut seen = std::collections::HashSet::new();
            for _ in 0..2000 {
                let t = fast.sample(&logits, &[], &[]);
                assert_eq!(
                    t,
                    sorted.sample(&logits, &[], &[]),
                    "min-p {min_p}, top-p {top_p}"
                );
                seen.insert(t);
            }
            // Draws spread over the candidates (not one token every time), except at min-p 1.
            assert_eq!(seen.len() > 1, min_p < 1.0, "{seen:?}");
        }
    }

    /// With nothing cut, draws follow softmax(logits / T) (checked on 40k draws).
    #[test]
    fn uncut_sampling_follows_the_tempered_softmax() {
        let logits = [1.0f32, 0.0, 2.5, -1.0, 0.5];
        let t = 0.7f32;
        let mut s = Sampler::new(
            SamplingParams {
                temperature: t,
                top_k: 0,
                top_p: 1.0,
                min_p: 0.0,
                seed: 11,
                ..SamplingParams::default()
            },
            0,
        );
        let n = 40_000;
        let mut counts = [0usize; 5];
        for _ in 0..n {
            counts[s.sample(&logits, &[], &[]) as usize] += 1;
        }
        let z: f64 = logits.iter().map(|&l| ((l / t) as f64).exp()).sum();
        for (i, &c) in counts.iter().enumerate() {
            let want = ((logits[i] / t) as f64).exp() / z;
            let got = c as f64 / n as f64;
            // 4 standard errors.
            let se = (want * (1.0 - want) / n as f64).sqrt();
            assert!(
                (got - want).abs() < 4.0 * se + 1e-9,
                "token {i}: {got} vs {want}"
            );
        }
    }

    #[test]
    fn greedy_takes_the_argmax_and_penalty_can_change_it() {
        let mut s = Sampler::new(SamplingParams::greedy(1), 0);
        assert_eq!(s.sample(&[0.1, 2.0, 1.9], &[], &[]), 1);
        let mut s = Sampler::new(
            SamplingParams {
                repetition_penalty: 1.2,
                ..SamplingParams::greedy(1)
            },
            0,
        );
        assert_eq!(s.sample(&[0.1, 2.0, 1.9], &[1], &[]), 2);
    }

    /// OpenAI's penalties count the output only, the frequency one per occurrence.
    #[test]
    fn frequency_and_presence_penalties_count_the_output() {
        let logits = [0.1, 2.0, 1.9];
        let pick = |frequency_penalty, presence_penalty, prompt: &[u32], output: &[u32]| {
            let p = SamplingParams {
                frequency_penalty,
                presence_penalty,
                ..SamplingParams::greedy(1)
            };
            p.validate().unwrap();
            Sampler::new(p, 0).sample(&logits, prompt, output)
        };
        // 2.0 - 0.06 stays above 1.9; twice it falls below.
        assert_eq!(pick(0.06, 0.0, &[], &[1]), 1);
        assert_eq!(pick(0.06, 0.0, &[], &[1, 1]), 2);
        // Presence counts once however often.
        assert_eq!(pick(0.0, 0.06, &[], &[1, 1, 1]), 1);
        assert_eq!(pick(0.0, 0.2, &[], &[1]), 2);
        // The prompt does not count.
        assert_eq!(pick(1.0, 1.0, &[1, 1, 1], &[]), 1);
        // A negative penalty favours repeats.
        assert_eq!(pick(-0.5, 0.0, &[], &[2]), 2);
        for bad in [2.5, -2.1, f32::NAN] {
            let p = SamplingParams {
                presence_penalty: bad,
                ..SamplingParams::greedy(1)
            };
            assert!(p.validate().unwrap_err().contains("presence_penalty"));
        }
    }

    #[test]
    fn same_seed_same_choices_and_filters_hold() {
        let logits: Vec<f32> = (0..50).map(|i| (i as f32 * 0.37).sin() * 3.0).collect();
        let params = SamplingParams {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            ..SamplingParams::default()
        };
        let run = |p: SamplingParams| {
            let mut s = Sampler::new(p, 7);
            (0..200)
                .map(|_| s.sample(&logits, &[], &[]))
                .collect::<Vec<_>>()
        };
        assert_eq!(run(params.clone()), run(params.clone()));
        assert_ne!(
            run(params.clone()),
            run(SamplingParams {
                seed: 1,
                ..params.clone()
            })
        );
        let mut order: Vec<usize> = (0..50).collect();
        order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
        let top3 = &order[..3];
        assert!(
            run(SamplingParams {
                top_k: 3,
                ..params.clone()
            })
            .iter()
            .all(|t| top3.contains(&(*t as usize)))
        );
        // top_p tiny: only the most likely token.
        assert!(
            run(SamplingParams {
                top_p: 1e-6,
                ..params.clone()
            })
            .iter()
            .all(|&t| t as usize == order[0])
        );
        // min_p 1: only tokens as likely as the best.
        assert!(
            run(SamplingParams {
                min_p: 1.0,
                ..params
            })
            .iter()
            .all(|&t| t as usize == order[0])
        );
    }

    #[test]
    fn logprob_is_log_softmax() {
        let l = [1.0f32, 2.0, 3.0];
        let z: f32 = l.iter().map(|x| x.exp()).sum();
        assert!((logprob(&l, 2) - (3f32.exp() / z).ln()).abs() < 1e-6);
    }

    #[test]
    fn log_softmax_matches_the_definition_and_ties_go_first() {
        let l = [1.0f32, 3.0, 2.0, 3.0];
        let z: f64 = l.iter().map(|&x| (x as f64).exp()).sum();
        let n = LogSoftmax::new(&l);
        assert_eq!(n.argmax, 1);
        assert!((n.at(&l, 2) as f64 - (2.0 - z.ln())).abs() < 1e-6);
        assert_eq!(logprob(&l, 2), n.at(&l, 2));
    }
}
