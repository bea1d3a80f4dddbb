//! The prompt cache: the keys and values of recent prompts, kept so that a request starting
//! with the same tokens (a shared system prompt, the earlier turns of a conversation, a
//! retried request) prefills only what follows them — what llama.cpp's server (`cache_prompt`)
//! and vLLM (prefix caching) do. One per served model, owned by its batcher thread; bounded in
//! bytes, the least recently used prompt leaves first. A request's output does not change with
//! it beyond float rounding: the cached positions hold what the same tokens computed before.

use galley_model::Cache;

/// Shorter common prefixes are prefilled again: copying their keys saves less than it costs.
pub const MIN_SHARED: usize = 8;

struct Entry {
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

    /// How many leading tokens of `prompt` a kept prompt holds (0 below [`MIN_SHARED`]). At
    /// most `prompt.len() - 1`: the last token is always run, for the logits of the first new one.
    pub fn shared_len(&self, prompt: &[u32]) -> usize {
        self.best(prompt).map_or(0, |(_, n)| n)
    }

    fn best(&self, prompt: &[u32]) -> Option<(usize, usize)> {
        let most = prompt.len().saturating_sub(1);
        self.entries
            .iter()
            .enumerate()
            .map(|(i, e)| (i, shared(&e.tokens, prompt).min(most)))
            .filter(|&(_, n)| n >= MIN_SHARED)
            .max_by_key(|&(i, n)| (n, self.entries[i].used))
    }

    /// A one-row cache holding the longest kept prefix of `prompt`, and its length; `room`
    /// positions beyond it before the copy reallocates.
    pub fn lookup(&mut self, prompt: &[u32], room: usize) -> Option<(usize, Cache)> {
        let (i, n) = self.best(prompt)?;
        self.clock += 1;
        let e = &mut self.entries[i];
        e.used = self.clock;
        let cache = e.cache.slice_row(0, 0, n, room).ok()?;
        Some((n, cache))
    }

    /// Keeps `prompt`'s keys and values: `cache` is a one-row cache of exactly its positions.
    /// A prompt that a kept one already begins with adds nothing; kept prompts that begin this
    /// one are replaced by it.
    pub fn store(&mut self, prompt: &[u32], cache: Cache) {
        let bytes = cache.bytes();
        if bytes == 0 || bytes > self.budget || prompt.len() < MIN_SHARED {
            return;
        }
        self.clock += 1;
        if let Some(e) = self
            .entries
            .iter_mut()
            .find(|e| e.tokens.starts_with(prompt))
        {
            e.used = self.clock;
            return;
        }
        let mut freed = 0;
        self.entries.retain(|e| {
            let covered = prompt.starts_with(&e.tokens);
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
            tokens: prompt.to_vec(),
            cache,
            bytes,
            used: self.clock,
        });
    }

    /// Whether a kept prompt begins with all of `prompt` (storing it would add nothing).
    pub fn covers(&self, prompt: &[u32]) -> bool {
        self.entries.iter().any(|e| e.tokens.starts_with(prompt))
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
