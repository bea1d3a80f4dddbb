//! Tokenizers: HF `tokenizer.json` through the `tokenizers` crate, or one built from the
//! vocabulary a GGUF file carries (gpt2-style byte-level BPE from tokens + merges). The GGUF
//! build follows llama.cpp, not candle's helper (which adds a prefix space and ignores the
//! pre-tokenizer): the `pre` key picks the split rules, token types 3 (control) and 4
//! (user-defined) become special tokens, and `add_bos_token` is honoured.

use crate::error::{ModelError, Result, bad};
use candle_core::quantized::gguf_file::Value;
use std::collections::HashMap;
use std::path::Path;
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, PreTokenizerWrapper, SplitDelimiterBehavior};

pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    /// Prepend BOS to plain (untemplated) text.
    pub add_bos: bool,
    pub bos: Option<u32>,
    pub eos: Vec<u32>,
}

const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

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
            bos,
            eos,
        })
    }

    /// The tokenizer inside a GGUF's metadata.
    pub fn from_gguf(path: &Path, md: &HashMap<String, Value>) -> Result<Self> {
        let get = |k: &str| md.get(k);
        let model = get("tokenizer.ggml.model")
            .and_then(|v| v.to_string().ok())
            .ok_or(ModelError::MissingTokenizer { path: path.into() })?;
        if model != "gpt2" {
            return Err(bad(
                path,
                format!("tokenizer model `{model}` is not supported yet (gpt2-style BPE is)"),
            ));
        }
        let strings = |k: &str| -> Result<Vec<String>> {
            let v = get(k)
                .and_then(|v| v.to_vec().ok())
                .ok_or_else(|| bad(path, format!("GGUF metadata has no `{k}`")))?;
            v.iter()
                .map(|x| {
                    x.to_string()
                        .cloned()
                        .map_err(|e| bad(path, format!("`{k}`: {e}")))
                })
                .collect()
        };
        let tokens = strings("tokenizer.ggml.tokens")?;
        let merges: Vec<(String, String)> = strings("tokenizer.ggml.merges")?
            .into_iter()
            .map(|m| {
                m.split_once(' ')
                    .map(|(a, b)| (a.to_string(), b.to_string()))
                    .ok_or_else(|| bad(path, format!("malformed merge `{m}`")))
            })
            .collect::<Result<_>>()?;
        let vocab: tokenizers::models::bpe::Vocab = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), i as u32))
            .collect();
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .build()
            .map_err(tok_err)?;
        let mut inner = tokenizers::Tokenizer::new(bpe);
        let pre = get("tokenizer.ggml.pre")
            .and_then(|v| v.to_string().ok())
            .map(String::as_str)
            .unwrap_or("default");
        // `add_space_prefix`: a space before the text, as SentencePiece-style models expect.
        let space_prefix = get("tokenizer.ggml.add_space_prefix")
            .and_then(|v| v.to_bool().ok())
            .unwrap_or(false);
        let byte_level = |use_regex: bool| {
            PreTokenizerWrapper::ByteLevel(ByteLevel::new(space_prefix, true, use_regex))
        };
        let split = |re: &str| -> Result<PreTokenizerWrapper> {
            Ok(PreTokenizerWrapper::Split(
                Split::new(
                    SplitPattern::Regex(re.into()),
                    SplitDelimiterBehavior::Isolated,
                    false,
                )
                .map_err(tok_err)?,
            ))
        };
        let pre_tok = match pre {
            "default" | "gpt-2" | "gpt2" => byte_level(true),
            "smollm" => PreTokenizerWrapper::Sequence(Sequence::new(vec![
                PreTokenizerWrapper::Digits(Digits::new(true)),
                byte_level(true),
            ])),
            "llama-bpe" | "llama3" | "smaug-bpe" => {
                PreTokenizerWrapper::Sequence(Sequence::new(vec![
                    split(LLAMA3_SPLIT)?,
                    byte_level(false),
                ]))
            }
            "qwen2" => PreTokenizerWrapper::Sequence(Sequence::new(vec![
                split(QWEN2_SPLIT)?,
                byte_level(false),
            ])),
            other => {
                return Err(bad(
                    path,
                    format!(
                        "tokenizer pre-tokenizer `{other}` is not supported yet (gpt-2, smollm, llama-bpe, qwen2)"
                    ),
                ));
            }
        };
        inner.with_pre_tokenizer(Some(pre_tok));
        inner.with_decoder(Some(tokenizers::DecoderWrapper::ByteLevel(
            ByteLevel::default(),
        )));
        if let Some(types) = get("tokenizer.ggml.token_type").and_then(|v| v.to_vec().ok()) {
            let special: Vec<AddedToken> = types
                .iter()
                .enumerate()
                .filter(|(_, t)| matches!(t.to_i32().ok(), Some(3 | 4)))
                .map(|(i, _)| AddedToken::from(tokens[i].clone(), true))
                .collect();
            inner.add_special_tokens(&special);
        }
        let id = |k: &str| get(k).and_then(|v| v.to_u32().ok());
        Ok(Self {
            inner,
            add_bos: get("tokenizer.ggml.add_bos_token")
                .and_then(|v| v.to_bool().ok())
                .unwrap_or(false),
            bos: id("tokenizer.ggml.bos_token_id"),
            eos: id("tokenizer.ggml.eos_token_id").into_iter().collect(),
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
        Ok(ids)
    }

    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        self.inner.decode(ids, skip_special).map_err(tok_err)
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
            bos,
            eos,
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

    /// The `tokenizer.ggml.*` metadata llama.cpp builds this tokenizer from — the reverse of
    /// [`Tokenizer::from_gguf`]: tokens by id (padded to `vocab_size` rows of embeddings with
    /// unused `[PAD<i>]` tokens, as llama.cpp's converter does), their types (added special
    /// tokens are control tokens), the merges by rank, and the pre-tokenizer by llama.cpp's
    /// name for it. Only byte-level BPE is written; another model or an unnamed pre-tokenizer
    /// is an error rather than a GGUF that tokenizes differently.
    pub fn gguf_metadata(&self, vocab_size: usize) -> Result<Vec<(String, Value)>> {
        let unsupported = |what: String| ModelError::Tokenizer(format!("GGUF export: {what}"));
        let model = serde_json::to_value(self.inner.get_model()).map_err(tok_err)?;
        if model.get("type").and_then(|t| t.as_str()) != Some("BPE") {
            return Err(unsupported(format!(
                "only byte-level BPE tokenizers are written (this one is {})",
                model.get("type").unwrap_or(&serde_json::Value::Null)
            )));
        }
        let merges: Vec<Value> = model
            .get("merges")
            .and_then(|m| m.as_array())
            .ok_or_else(|| unsupported("the BPE model has no merges".into()))?
            .iter()
            .map(|m| match m {
                // The tokenizers crate writes pairs; older tokenizer.json files "a b" strings.
                serde_json::Value::Array(p) if p.len() == 2 => Ok(Value::String(format!(
                    "{} {}",
                    p[0].as_str().unwrap_or_default(),
                    p[1].as_str().unwrap_or_default()
                ))),
                serde_json::Value::String(s) => Ok(Value::String(s.clone())),
                other => Err(unsupported(format!("malformed merge {other}"))),
            })
            .collect::<Result<_>>()?;
        let pre = serde_json::to_value(self.inner.get_pre_tokenizer()).map_err(tok_err)?;
        let pre = llama_cpp_pre(&pre).ok_or_else(|| {
            unsupported(format!(
                "the pre-tokenizer {pre} has no llama.cpp name galley knows (gpt-2, smollm, llama-bpe, qwen2)"
            ))
        })?;
        let vocab = self.inner.get_vocab(true);
        let n = vocab_size.max(vocab.values().map(|&i| i as usize + 1).max().unwrap_or(0));
        let mut tokens: Vec<Option<String>> = vec![None; n];
        for (t, &i) in &vocab {
            tokens[i as usize] = Some(t.clone());
        }
        let added = self.inner.get_added_tokens_decoder();
        let mut types = Vec::with_capacity(n);
        let tokens: Vec<Value> = tokens
            .into_iter()
            .enumerate()
            .map(|(i, t)| {
                // llama.cpp's types: 1 normal, 3 control, 4 user-defined, 5 unused.
                let kind = match (&t, added.get(&(i as u32))) {
                    (None, _) => 5,
                    (_, Some(a)) if a.special => 3,
                    (_, Some(_)) => 4,
                    _ => 1,
                };
                types.push(Value::I32(kind));
                Value::String(t.unwrap_or_else(|| format!("[PAD{i}]")))
            })
            .collect();
        let mut md = vec![
            ("tokenizer.ggml.model".into(), Value::String("gpt2".into())),
            ("tokenizer.ggml.pre".into(), Value::String(pre.into())),
            ("tokenizer.ggml.tokens".into(), Value::Array(tokens)),
            ("tokenizer.ggml.token_type".into(), Value::Array(types)),
            ("tokenizer.ggml.merges".into(), Value::Array(merges)),
            (
                "tokenizer.ggml.add_bos_token".into(),
                Value::Bool(self.adds_bos()),
            ),
        ];
        if let Some(b) = self.bos {
            md.push(("tokenizer.ggml.bos_token_id".into(), Value::U32(b)));
        }
        if let Some(&e) = self.eos.first() {
            md.push(("tokenizer.ggml.eos_token_id".into(), Value::U32(e)));
        }
        Ok(md)
    }
}

impl Tokenizer {
    /// Whether plain text gets BOS first: galley's own rule (GGUF's `add_bos_token`), or a
    /// tokenizer.json whose post-processor puts the BOS token before a single sequence
    /// (Llama 3's `TemplateProcessing`), which llama.cpp knows only as `add_bos_token`.
    fn adds_bos(&self) -> bool {
        if self.add_bos {
            return true;
        }
        let Some(bos) = self.bos.and_then(|b| self.id_to_token(b)) else {
            return false;
        };
        let post = serde_json::to_value(self.inner.get_post_processor()).unwrap_or_default();
        let first = post
            .get("single")
            .and_then(|s| s.get(0))
            .and_then(|t| t.get("SpecialToken"))
            .and_then(|t| t.get("id"))
            .and_then(|id| id.as_str());
        first == Some(bos.as_str())
    }
}

/// llama.cpp's name for a tokenizer.json pre-tokenizer (the ones [`Tokenizer::from_gguf`]
/// builds), read from its structure.
fn llama_cpp_pre(pre: &serde_json::Value) -> Option<&'static str> {
    let kind = |v: &serde_json::Value| v.get("type").and_then(|t| t.as_str()).map(String::from);
    let byte_level = |v: &serde_json::Value, regex: bool| {
        kind(v).as_deref() == Some("ByteLevel")
            && v.get("use_regex").and_then(|r| r.as_bool()).unwrap_or(true) == regex
    };
    if byte_level(pre, true) {
        return Some("gpt-2");
    }
    let parts = pre.get("pretokenizers")?.as_array()?;
    match parts.as_slice() {
        [d, b] if kind(d).as_deref() == Some("Digits") && byte_level(b, true) => {
            d.get("individual_digits")?.as_bool()?.then_some("smollm")
        }
        [s, b] if kind(s).as_deref() == Some("Split") && byte_level(b, false) => {
            match s.get("pattern")?.get("Regex")?.as_str()? {
                LLAMA3_SPLIT => Some("llama-bpe"),
                QWEN2_SPLIT => Some("qwen2"),
                _ => None,
            }
        }
        _ => None,
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
