//! The prompt cache: the keys and values of recent prompts, kept so that a request starting
//! with the same tokens (a shared system prompt, the earlier turns of a conversation, a
//! retried request) prefills only what follows them — what llama.cpp's server (`cache_prompt`)
//! and vLLM (prefix caching) do. One per served model, owned by its batcher thread; bounded in
//! bytes, the least recently used prompt leaves first. A request's output does not change with
//! it beyond float rounding: the cached positions hold what the same tokens computed before.
//!
//! A hit is faster than a miss, so timing can tell a client whether another sent a prompt
//! (the side channel every prefix cache has). Entries carry the request's `cache_salt`
//! (vLLM's field): a prompt is reused only by requests with the same salt, so users given
//! salts of their own share nothing.

use galley_model::Cache;

/// Shorter common prefixes are prefilled again: copying their keys saves less than it costs.
pub const MIN_SHARED: usize = 8;

struct Entry {
    salt: Option<String>,
    tokens: Vec<u32>,
    cache: Cache,
    bytes: usize,
    used: u64,
}

pub struct PromptCache {
    entries: Vec<Entry>,
    bytes: usize,
    budget: usize,
    clock: u64,
}

fn shared(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

impl PromptCache {
    /// A cache holding at most `budget` bytes of keys and values (0: none kept).
    pub fn new(budget: usize) -> Self {
        Self {
            entries: Vec::new(),
            bytes: 0,
            budget,
            clock: 0,
        }
    }

    /// How many leading tokens of `prompt` a prompt kept under `salt` holds (0 below
    /// [`MIN_SHARED`]). At most `prompt.len() - 1`: the last token is always run, for the
    /// logits of the first new one.
    pub fn shared_len(&self, prompt: &[u32], salt: Option<&str>) -> usize {
        self.best(prompt, salt).map_or(0, |(_, n)| n)
    }

    fn best(&self, prompt: &[u32], salt: Option<&str>) -> Option<(usize, usize)> {
        let most = prompt.len().saturating_sub(1);
        self.entries
            .iter()
            .enumerate()
            .filter(|(_, e)| e.salt.as_deref() == salt)
            .map(|(i, e)| (i, shared(&e.tokens, prompt).min(most)))
            .filter(|&(_, n)| n >= MIN_SHARED)
            .max_by_key(|&(i, n)| (n, self.entries[i].used))
    }

    /// A one-row cache holding the longest prefix of `prompt` kept under `salt`, and its
    /// length; `room` positions beyond it before the copy reallocates.
    pub fn lookup(
        &mut self,
        prompt: &[u32],
        salt: Option<&str>,
        room: usize,
    ) -> Option<(usize, Cache)> {
        let (i, n) = self.best(prompt, salt)?;
        self.clock += 1;
        let e = &mut self.entries[i];
        e.used = self.clock;
        let cache = e.cache.slice_row(0, 0, n, room).ok()?;
        Some((n, cache))
    }

    /// Keeps `prompt`'s keys and values under `salt`: `cache` is a one-row cache of exactly
    /// its positions. A prompt that a kept one (same salt) already begins with adds nothing;
    /// kept prompts that begin this one are replaced by it.
    pub fn store(&mut self, prompt: &[u32], salt: Option<&str>, cache: Cache) {
        let bytes = cache.bytes();
        if bytes == 0 || bytes > self.budget || prompt.len() < MIN_SHARED {
            return;
        }
        self.clock += 1;
        if let Some(e) = self
            .entries
            .iter_mut()
            .find(|e| e.salt.as_deref() == salt && e.tokens.starts_with(prompt))
        {
            e.used = self.clock;
            return;
        }
        let mut freed = 0;
        self.entries.retain(|e| {
            let covered = e.salt.as_deref() == salt && prompt.starts_with(&e.tokens);
            if covered {
                freed += e.bytes;
            }
            !covered
        });
        self.bytes -= freed;
        while self.bytes + bytes > self.budget {
            let oldest = (0..self.entries.len())
                .min_by_key(|&i| self.entries[i].used)
                .expect("bytes held means an entry is kept");
            self.bytes -= self.entries.swap_remove(oldest).bytes;
        }
        self.bytes += bytes;
        self.entries.push(Entry {
            salt: salt.map(str::to_string),
            tokens: prompt.to_vec(),
            cache,
            bytes,
            used: self.clock,
        });
    }

    /// Whether a prompt kept under `salt` begins with all of `prompt` (storing it would add
    /// nothing).
    pub fn covers(&self, prompt: &[u32], salt: Option<&str>) -> bool {
        self.entries
            .iter()
            .any(|e| e.salt.as_deref() == salt && e.tokens.starts_with(prompt))
    }

    /// Bytes of keys and values kept.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Prompts kept.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use galley_model::Llama;
    use galley_model::weights::Weights;
    use galley_train::config::InitSection;
    use galley_train::model::{TrainModel, init_weights};

    /// A two-layer model with random weights (the trainer's initialisation, wide enough that
    /// logits are of order one): enough for real keys and values.
    fn tiny() -> Llama {
        let init = InitSection {
            hidden_size: 32,
            intermediate_size: 48,
            num_layers: 2,
            num_heads: 4,
            num_kv_heads: 2,
            max_position_embeddings: 256,
            ..Default::default()
        };
        let c = TrainModel::init_config(&init, 64, Some(1), vec![2]);
        let w = init_weights(&c, 0.3, 7).unwrap();
        Llama::load(&Weights::memory(w, "tiny"), c, &Device::Cpu).unwrap()
    }

    /// `prompt`'s cache (one row) and the logits of its last position.
    fn prefill(m: &Llama, prompt: &[u32]) -> (Cache, Vec<f32>) {
        let mut cache = m.new_cache(1);
        let logits = m
            .forward(&[prompt.to_vec()], None, &mut cache, true)
            .unwrap();
        (cache, logits.flatten_all().unwrap().to_vec1().unwrap())
    }

    fn close(a: &[f32], b: &[f32]) {
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() <= 1e-4 * (1.0 + y.abs()), "{x} vs {y}");
        }
    }

    #[test]
    fn a_continued_prompt_computes_what_a_whole_prefill_does() {
        let m = tiny();
        let system: Vec<u32> = (3..23).collect();
        let mut pc = PromptCache::new(1 << 20);
        let (c, _) = prefill(&m, &system);
        pc.store(&system, None, c);
        // The next request: the system prompt and a question.
        let asked: Vec<u32> = system.iter().copied().chain([40, 41, 42]).collect();
        assert_eq!(pc.shared_len(&asked, None), system.len());
        let (n, mut cache) = pc.lookup(&asked, None, 8).unwrap();
        assert_eq!((n, cache.len()), (system.len(), system.len()));
        let logits = m
            .forward(&[asked[n..].to_vec()], None, &mut cache, true)
            .unwrap();
        close(
            &logits.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            &prefill(&m, &asked).1,
        );
        // A repeat runs its last token again (its logits start the answer).
        assert_eq!(pc.shared_len(&system, None), system.len() - 1);
        // Short or different beginnings are prefilled from the start.
        assert_eq!(pc.shared_len(&system[..MIN_SHARED], None), 0);
        assert_eq!(pc.shared_len(&[9, 9, 9, 9, 9, 9, 9, 9, 9, 9], None), 0);
    }

    #[test]
    fn the_least_recently_used_prompt_leaves_and_longer_prompts_replace_their_beginnings() {
        let m = tiny();
        let prompt = |first: u32| -> Vec<u32> { (first..first + 12).collect() };
        let (a, b, c) = (prompt(3), prompt(20), prompt(40));
        let one = prefill(&m, &a).0.bytes();
        // Room for two prompts of twelve tokens, not three.
        let mut pc = PromptCache::new(2 * one + one / 2);
        pc.store(&a, None, prefill(&m, &a).0);
        pc.store(&b, None, prefill(&m, &b).0);
        assert_eq!((pc.len(), pc.bytes()), (2, 2 * one));
        // `a` is used, so `b` is the least recently used when `c` arrives.
        assert!(
            pc.lookup(&[a.clone(), vec![50]].concat(), None, 0)
                .is_some()
        );
        pc.store(&c, None, prefill(&m, &c).0);
        assert_eq!(pc.len(), 2);
        assert!(
            pc.shared_len(&[b.clone(), vec![50]].concat(), None) == 0,
            "b left"
        );
        assert!(
            pc.shared_len(&[a.clone(), vec![50]].concat(), None) > 0,
            "a stayed"
        );
        // A prompt that a kept one begins with adds nothing ...
        pc.store(&a[..10], None, prefill(&m, &a[..10]).0);
        assert_eq!(pc.len(), 2);
        // ... and one that begins with a kept prompt replaces it.
        let longer = [a.clone(), vec![60, 61]].concat();
        pc.store(&longer, None, prefill(&m, &longer).0);
        assert_eq!(pc.len(), 2);
        assert!(!pc.covers(&[a.clone(), vec![50]].concat(), None) && pc.covers(&longer, None));
        assert!(pc.bytes() <= 2 * one + one / 2);
        // A prompt larger than the whole budget is not kept, and nothing else leaves for it.
        let long: Vec<u32> = (3..40).collect();
        pc.store(&long, None, prefill(&m, &long).0);
        assert_eq!(pc.len(), 2);
    }

    /// A prompt kept under one salt serves only requests with that salt: no hit, so no
    /// timing difference, across users given salts of their own.
    #[test]
    fn salted_prompts_are_reused_only_under_the_same_salt() {
        let m = tiny();
        let mut pc = PromptCache::new(1 << 20);
        let system: Vec<u32> = (3..23).collect();
        let asked: Vec<u32> = system.iter().copied().chain([40, 41]).collect();
        pc.store(&system, Some("alice"), prefill(&m, &system).0);
        assert_eq!(pc.shared_len(&asked, Some("alice")), system.len());
        assert_eq!(pc.shared_len(&asked, Some("bob")), 0);
        assert_eq!(pc.shared_len(&asked, None), 0);
        assert!(pc.lookup(&asked, Some("bob"), 0).is_none());
        assert!(pc.covers(&system, Some("alice")) && !pc.covers(&system, None));
        // The same prompt under another salt is a separate entry, not a replacement.
        pc.store(&system, None, prefill(&m, &system).0);
        pc.store(&asked, Some("bob"), prefill(&m, &asked).0);
        assert_eq!(pc.len(), 3);
        assert_eq!(pc.shared_len(&asked, None), system.len());
        assert_eq!(pc.shared_len(&asked, Some("alice")), system.len());
    }

    /// What the batcher does with requests the cache begins: their kept prefixes (of
    /// different lengths) stacked into one cache, their rests left-padded into one pass; each
    /// row's logits are those of its own whole prefill.
    #[test]
    fn stacked_prefixes_continue_together_as_each_alone() {
        let m = tiny();
        let mut pc = PromptCache::new(1 << 20);
        let kept: Vec<Vec<u32>> = vec![(3..15).collect(), (20..40).collect(), (41..50).collect()];
        for k in &kept {
            pc.store(k, None, prefill(&m, k).0);
        }
        let asked: Vec<Vec<u32>> = vec![
            [kept[0].clone(), vec![50, 51, 52]].concat(),
            [kept[1].clone(), vec![53]].concat(),
            [kept[2].clone(), vec![54, 55]].concat(),
        ];
        let (mut starts, mut parts) = (vec![], vec![]);
        for a in &asked {
            let (n, c) = pc.lookup(a, None, 0).unwrap();
            starts.push(n);
            parts.push(c);
        }
        let mut cache = Cache::stack(parts).unwrap();
        assert_eq!((cache.rows(), cache.len()), (3, 20));
        let rests: Vec<&[u32]> = asked.iter().zip(&starts).map(|(a, &n)| &a[n..]).collect();
        let (input, pad) = galley_model::model::left_pad(&rests, 0);
        let logits = m.forward(&input, Some(&pad), &mut cache, true).unwrap();
        let rows = logits.squeeze(1).unwrap().to_vec2::<f32>().unwrap();
        for (row, a) in rows.iter().zip(&asked) {
            close(row, &prefill(&m, a).1);
        }
    }
}
