//! Tokenizers: one type over the `tokenizers` crate, whether it came from an HF
//! `tokenizer.json` or was rebuilt from the vocabulary a GGUF carries ([`gguf`]: byte-level
//! BPE and SentencePiece-style vocabularies, as llama.cpp reads them, and back). Encoding,
//! decoding, and decoding a generation as its tokens arrive ([`TextStream`]).

mod gguf;
pub mod spm;

use crate::error::{ModelError, Result, bad};
use std::path::Path;

pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    /// Prepend BOS to plain (untemplated) text.
    pub add_bos: bool,
    /// Append EOS to plain text (GGUF's `add_eos_token`: an embedding model that pools its
    /// last token, as Qwen3-Embedding's, reads it there).
    pub add_eos: bool,
    pub bos: Option<u32>,
    pub eos: Vec<u32>,
    /// A SentencePiece vocabulary's scores, as its GGUF had them (written back on export).
    scores: Option<Vec<f32>>,
    /// Each token's text for constrained decoding, made once (see [`Tokenizer::json_vocab`]).
    json_vocab: std::sync::Mutex<Option<(usize, std::sync::Arc<crate::json_mode::Vocab>)>>,
    /// A copy that reads special tokens' spellings as plain text (see [`Tokenizer::encode_plain`]).
    plain: std::sync::OnceLock<tokenizers::Tokenizer>,
}

fn tok_err(e: impl std::fmt::Display) -> ModelError {
    ModelError::Tokenizer(e.to_string())
}

impl Tokenizer {
    /// `tokenizer.json`; BOS/EOS come from the model's config (ids) when known.
    pub fn from_file(path: &Path, bos: Option<u32>, eos: Vec<u32>) -> Result<Self> {
        let inner = tokenizers::Tokenizer::from_file(path)
            .map_err(|e| bad(path, format!("not a tokenizer.json: {e}")))?;
        Ok(Self {
            inner,
            add_bos: false,
            add_eos: false,
            bos,
            eos,
            scores: None,
            json_vocab: Default::default(),
            plain: Default::default(),
        })
    }

    /// Token ids of `text`. `special`: apply the tokenizer's own post-processing / BOS rule
    /// (for plain prompts); chat-templated text already spells its special tokens.
    pub fn encode(&self, text: &str, special: bool) -> Result<Vec<u32>> {
        let enc = self.inner.encode(text, special).map_err(tok_err)?;
        let mut ids = enc.get_ids().to_vec();
        if special
            && self.add_bos
            && let Some(b) = self.bos
            && ids.first() != Some(&b)
        {
            ids.insert(0, b);
        }
        if special
            && self.add_eos
            && let Some(&e) = self.eos.first()
            && ids.last() != Some(&e)
        {
            ids.push(e);
        }
        Ok(ids)
    }

    /// Token ids of `text` read as ordinary characters: a special token's spelling inside it
    /// (`<|im_end|>`) becomes the pieces of that spelling, never the token. For text that
    /// comes from outside the model (a tool's result) and must not end a turn or open one.
    pub fn encode_plain(&self, text: &str) -> Result<Vec<u32>> {
        let plain = self.plain.get_or_init(|| {
            let mut t = self.inner.clone();
            t.set_encode_special_tokens(true);
            t
        });
        let enc = plain.encode(text, false).map_err(tok_err)?;
        Ok(enc.get_ids().to_vec())
    }

    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        self.inner.decode(ids, skip_special).map_err(tok_err)
    }

    /// The text one token adds in the middle of a text: for SentencePiece vocabularies a
    /// token's leading `▁` is a space there, though decoding the token alone strips it (the
    /// space the tokenizer prepended). Read after an ordinary token, as the difference.
    pub fn piece(&self, id: u32) -> Result<String> {
        let Some(anchor) = self.token_to_id("a").filter(|&a| a != id) else {
            return self.decode(&[id], false);
        };
        let before = self.decode(&[anchor], false)?;
        let both = self.decode(&[anchor, id], false)?;
        Ok(match both.strip_prefix(before.as_str()) {
            Some(rest) => rest.to_string(),
            None => self.decode(&[id], false)?,
        })
    }

    /// The vocabulary as JSON mode and schemas see it, for a model of `vocab_size` rows:
    /// built on first use (three decodes a token, ~40 ms for 49k tokens) and kept, so a
    /// server, an engine and every batch of a run share one.
    pub fn json_vocab(&self, vocab_size: usize) -> std::sync::Arc<crate::json_mode::Vocab> {
        let mut kept = self.json_vocab.lock().unwrap_or_else(|e| e.into_inner());
        match &*kept {
            Some((n, v)) if *n == vocab_size => v.clone(),
            _ => {
                let v =
                    std::sync::Arc::new(crate::json_mode::Vocab::for_tokenizer(self, vocab_size));
                *kept = Some((vocab_size, v.clone()));
                v
            }
        }
    }

    /// The underlying `tokenizers` tokenizer (to save as tokenizer.json, or to read offsets).
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }

    /// Wraps a tokenizer built or trained elsewhere.
    pub fn from_inner(inner: tokenizers::Tokenizer, bos: Option<u32>, eos: Vec<u32>) -> Self {
        Self {
            inner,
            add_bos: false,
            add_eos: false,
            bos,
            eos,
            scores: None,
            json_vocab: Default::default(),
            plain: Default::default(),
        }
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }
}

/// A generation's text as its tokens arrive. Each token decodes a short window — the tokens
/// since the text last settled, after the few before them for context — with the tokenizers
/// crate's stream decoding: decoding every token so far cost O(n) a token (75 us at 1,000
/// tokens with SmolLM2's tokenizer, and a serving step decodes one per sequence). `text` holds
/// what is settled; a partial UTF-8 character waits for the token that completes it, and
/// [`TextStream::finish`] adds what is left as a whole decode shows it.
#[derive(Debug, Clone, Default)]
pub struct TextStream {
    /// The settled text.
    pub text: String,
    window: Vec<u32>,
    prefix: String,
    prefix_index: usize,
}

impl TextStream {
    /// Adds a generated token; returns the bytes of text it settled (appended to `text`).
    pub fn push(&mut self, tok: &Tokenizer, id: u32) -> Result<usize> {
        let before = self.text.len();
        let step = tokenizers::tokenizer::step_decode_stream(
            &tok.inner,
            vec![id],
            false,
            &mut self.window,
            &mut self.prefix,
            &mut self.prefix_index,
        );
        match step {
            Ok(Some(s)) => self.text.push_str(&s),
            Ok(None) => {}
            // The window's text no longer begins with its context's (a decoder that rewrites
            // across tokens): start a new window at this token, its text as decoded alone.
            Err(_) => {
                self.text.push_str(&tok.decode(&[id], false)?);
                *self = Self {
                    text: std::mem::take(&mut self.text),
                    window: vec![id],
                    ..Self::default()
                };
            }
        }
        Ok(self.text.len() - before)
    }

    /// Settles what waits (a character cut short shows as U+FFFD, as in a whole decode).
    pub fn finish(&mut self, tok: &Tokenizer) -> Result<()> {
        let whole = tok.decode(&self.window, false)?;
        if let Some(rest) = whole.strip_prefix(self.prefix.as_str()) {
            self.text.push_str(rest);
        }
        self.window.clear();
        self.prefix.clear();
        self.prefix_index = 0;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokenizers::PreTokenizerWrapper;
    use tokenizers::models::bpe::BPE;
    use tokenizers::pre_tokenizers::byte_level::ByteLevel;

    /// A byte-level tokenizer with one token per byte (no merges): a multi-byte character
    /// takes several tokens, the first of which decodes to U+FFFD alone.
    fn bytes_tokenizer() -> Tokenizer {
        let vocab: tokenizers::models::bpe::Vocab = ByteLevel::alphabet()
            .into_iter()
            .map(|c| c.to_string())
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .enumerate()
            .map(|(i, t)| (t, i as u32))
            .collect();
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, vec![])
            .build()
            .unwrap();
        let mut inner = tokenizers::Tokenizer::new(bpe);
        inner.with_pre_tokenizer(Some(PreTokenizerWrapper::ByteLevel(ByteLevel::new(
            false, true, false,
        ))));
        inner.with_decoder(Some(tokenizers::DecoderWrapper::ByteLevel(
            ByteLevel::default(),
        )));
        Tokenizer::from_inner(inner, None, vec![])
    }

    #[test]
    fn a_text_stream_settles_whole_characters_and_ends_as_a_whole_decode() {
        let tok = bytes_tokenizer();
        let text = "héllo wörld, 日本語 and 🦀!";
        let ids = tok.encode(text, false).unwrap();
        assert!(
            ids.len() > text.chars().count(),
            "multi-byte characters split"
        );
        let mut s = TextStream::default();
        let mut chunks = String::new();
        for &id in &ids {
            let before = s.text.len();
            let added = s.push(&tok, id).unwrap();
            assert_eq!(s.text.len(), before + added);
            chunks.push_str(&s.text[before..]);
            assert!(!s.text.contains('\u{FFFD}'), "{:?}", s.text);
            assert!(text.starts_with(&s.text));
        }
        s.finish(&tok).unwrap();
        assert_eq!(s.text, text);
        assert_eq!(chunks, text);
        // Cut inside the crab: what waits shows as a whole decode shows it.
        let mut s = TextStream::default();
        for &id in &ids[..ids.len() - 2] {
            s.push(&tok, id).unwrap();
        }
        assert!(s.text.ends_with("and "));
        s.finish(&tok).unwrap();
        assert_eq!(s.text, tok.decode(&ids[..ids.len() - 2], false).unwrap());
    }
}
