//! Tokenizers as llama.cpp keeps them in a GGUF's `tokenizer.ggml.*` metadata, both ways:
//! [`Tokenizer::from_gguf`] rebuilds one (gpt2-style byte-level BPE from tokens + merges, the
//! `pre` key naming the split rules; SentencePiece-style from tokens + scores, see [`spm`]),
//! following llama.cpp rather than candle's helper (which adds a prefix space and ignores the
//! pre-tokenizer); [`Tokenizer::gguf_metadata`] writes one for `galley export`. Control and
//! user-defined tokens (types 3 and 4) become special tokens, and `add_bos_token` is honoured.
//! `host/model/tests/gguf_vocab.rs` holds both directions to llama.cpp's own test vocabularies.

use super::{Tokenizer, spm, tok_err};
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

const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// DeepSeek LLM's split rules (transformers' tokenizer.json, as llama.cpp lists them): letters
/// of cased scripts, ASCII and full-width punctuation, trailing whitespace and CJK runs, each
/// isolated in turn, then digit runs.
const DEEPSEEK_LLM_LETTERS: &str = r"\s?[A-Za-zµÀ-ÖØ-öø-ƺƼ-ƿǄ-ʓʕ-ʯͰ-ͳͶͷͻ-ͽͿΆΈ-ΊΌΎ-ΡΣ-ϵϷ-ҁҊ-ԯԱ-ՖႠ-ჅᎠ-Ᏽᏸ-ᏽᲐ-ᲺᲽ-Ჿᴀ-ᴫᵫ-ᵷᵹ-ᶚḀ-ἕἘ-Ἕἠ-ὅὈ-Ὅὐ-ὗὙὛὝὟ-ώᾀ-ᾴᾶ-ᾼιῂ-ῄῆ-ῌῐ-ΐῖ-Ίῠ-Ῥῲ-ῴῶ-ῼℂℇℊ-ℓℕℙ-ℝℤΩℨK-ℭℯ-ℴℹℼ-ℿⅅ-ⅉⅎↃↄⰀ-ⱻⱾ-ⳤⳫ-ⳮⳲⳳꙀ-ꙭꚀ-ꚛꜢ-ꝯꝱ-ꞇꞋ-ꞎꭰ-ꮿﬀ-ﬆﬓ-ﬗＡ-Ｚａ-ｚ𐐀-𐑏𐒰-𐓓𐓘-𐓻𐲀-𐲲𐳀-𐳲𑢠-𑣟𞤀-𞥃]+";
const DEEPSEEK_LLM_PUNCT: &str = r"\s?[!-/:-~！-／：-～‘-‟　-。]+";
const CJK_RUNS: &str = r"[一-龥ࠀ-一가-퟿]+";

/// The `pre` names galley builds, in the order export recognises them.
const KNOWN_PRE: [&str; 6] = [
    "gpt-2",
    "smollm",
    "llama-bpe",
    "qwen2",
    "deepseek-llm",
    "deepseek-coder",
];

/// The split rules llama.cpp's `pre` name stands for; `None` for a name galley does not know.
fn pre_tokenizer(pre: &str, space_prefix: bool) -> Result<Option<PreTokenizerWrapper>> {
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
    let seq = |parts: Vec<PreTokenizerWrapper>| PreTokenizerWrapper::Sequence(Sequence::new(parts));
    Ok(Some(match pre {
        "default" | "gpt-2" | "gpt2" => byte_level(true),
        "smollm" => seq(vec![
            PreTokenizerWrapper::Digits(Digits::new(true)),
            byte_level(true),
        ]),
        "llama-bpe" | "llama3" | "llama-v3" | "smaug-bpe" => {
            seq(vec![split(LLAMA3_SPLIT)?, byte_level(false)])
        }
        "qwen2" => seq(vec![split(QWEN2_SPLIT)?, byte_level(false)]),
        "deepseek-llm" => seq(vec![
            split(r"[\r\n]")?,
            split(DEEPSEEK_LLM_LETTERS)?,
            split(DEEPSEEK_LLM_PUNCT)?,
            split(r"\s+$")?,
            split(CJK_RUNS)?,
            PreTokenizerWrapper::Digits(Digits::new(false)),
            byte_level(false),
        ]),
        "deepseek-coder" => seq(vec![
            split(r"[\r\n]")?,
            split(r"\s?\p{L}+")?,
            split(r"\s?\p{P}+")?,
            split(CJK_RUNS)?,
            PreTokenizerWrapper::Digits(Digits::new(true)),
            byte_level(false),
        ]),
        _ => return Ok(None),
    }))
}

/// A GGUF metadata array of strings.
fn gguf_strings(path: &Path, md: &HashMap<String, Value>, k: &str) -> Result<Vec<String>> {
    let v = md
        .get(k)
        .and_then(|v| v.to_vec().ok())
        .ok_or_else(|| bad(path, format!("GGUF metadata has no `{k}`")))?;
    v.iter()
        .map(|x| {
            x.to_string()
                .cloned()
                .map_err(|e| bad(path, format!("`{k}`: {e}")))
        })
        .collect()
}

impl Tokenizer {
    /// The tokenizer inside a GGUF's metadata.
    pub fn from_gguf(path: &Path, md: &HashMap<String, Value>) -> Result<Self> {
        let get = |k: &str| md.get(k);
        let model = get("tokenizer.ggml.model")
            .and_then(|v| v.to_string().ok())
            .ok_or(ModelError::MissingTokenizer { path: path.into() })?;
        if model != "gpt2" && model != "llama" {
            return Err(bad(
                path,
                format!(
                    "tokenizer model `{model}` is not supported yet (gpt2-style BPE and llama-style SentencePiece are)"
                ),
            ));
        }
        let strings = |k: &str| gguf_strings(path, md, k);
        let tokens = strings("tokenizer.ggml.tokens")?;
        let types: Vec<i32> = get("tokenizer.ggml.token_type")
            .and_then(|v| v.to_vec().ok())
            .map(|v| v.iter().map(|t| t.to_i32().unwrap_or(1)).collect())
            .unwrap_or_default();
        if !types.is_empty() && types.len() != tokens.len() {
            return Err(bad(
                path,
                format!(
                    "{} token types for {} tokens (`tokenizer.ggml.token_type`)",
                    types.len(),
                    tokens.len()
                ),
            ));
        }
        // `add_space_prefix`: a space before the text, as SentencePiece-style models expect.
        let space_prefix = get("tokenizer.ggml.add_space_prefix")
            .and_then(|v| v.to_bool().ok())
            .unwrap_or(model == "llama");
        let mut scores = None;
        let mut inner = if model == "llama" {
            let s: Vec<f32> = get("tokenizer.ggml.scores")
                .and_then(|v| v.to_vec().ok())
                .ok_or_else(|| bad(path, "GGUF metadata has no `tokenizer.ggml.scores`"))?
                .iter()
                .map(|x| {
                    x.to_f32()
                        .map_err(|e| bad(path, format!("`tokenizer.ggml.scores`: {e}")))
                })
                .collect::<Result<_>>()?;
            let inner = spm::tokenizer(&tokens, &s, &types, space_prefix)
                .map_err(|e| bad(path, e.to_string()))?;
            scores = Some(s);
            inner
        } else {
            Self::byte_level_bpe(path, md, &tokens, space_prefix)?
        };
        // Control and user-defined tokens match as whole tokens, before any splitting.
        let special: Vec<AddedToken> = types
            .iter()
            .enumerate()
            .filter(|(_, t)| matches!(**t, spm::CONTROL | spm::USER_DEFINED))
            .map(|(i, _)| AddedToken::from(tokens[i].clone(), true))
            .collect();
        inner.add_special_tokens(&special);
        let id = |k: &str| get(k).and_then(|v| v.to_u32().ok());
        Ok(Self {
            inner,
            add_bos: get("tokenizer.ggml.add_bos_token")
                .and_then(|v| v.to_bool().ok())
                .unwrap_or(model == "llama"),
            add_eos: get("tokenizer.ggml.add_eos_token")
                .and_then(|v| v.to_bool().ok())
                .unwrap_or(false),
            bos: id("tokenizer.ggml.bos_token_id"),
            eos: id("tokenizer.ggml.eos_token_id").into_iter().collect(),
            scores,
            json_vocab: Default::default(),
            plain: Default::default(),
        })
    }

    /// gpt2-style byte-level BPE: the merges, and the split rules llama.cpp's `pre` names.
    fn byte_level_bpe(
        path: &Path,
        md: &HashMap<String, Value>,
        tokens: &[String],
        space_prefix: bool,
    ) -> Result<tokenizers::Tokenizer> {
        let get = |k: &str| md.get(k);
        let strings = |k: &str| gguf_strings(path, md, k);
        let pre = get("tokenizer.ggml.pre")
            .and_then(|v| v.to_string().ok())
            .map(String::as_str)
            .unwrap_or("default");
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
        // llama.cpp takes a piece that is itself a token whole, without merging, for the
        // Llama 3 family's vocabularies (transformers' `ignore_merges`); merging can miss it
        // (" Việt" is one token but no chain of merges reaches it).
        let ignore_merges = matches!(pre, "llama-bpe" | "llama3" | "llama-v3");
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .ignore_merges(ignore_merges)
            .build()
            .map_err(tok_err)?;
        let mut inner = tokenizers::Tokenizer::new(bpe);
        let pre_tok = pre_tokenizer(pre, space_prefix)?.ok_or_else(|| {
            bad(
                path,
                format!(
                    "tokenizer pre-tokenizer `{pre}` is not supported yet ({})",
                    KNOWN_PRE.join(", ")
                ),
            )
        })?;
        inner.with_pre_tokenizer(Some(pre_tok));
        inner.with_decoder(Some(tokenizers::DecoderWrapper::ByteLevel(
            ByteLevel::default(),
        )));
        Ok(inner)
    }

    /// The `tokenizer.ggml.*` metadata llama.cpp builds this tokenizer from — the reverse of
    /// [`Tokenizer::from_gguf`]: tokens by id (padded to `vocab_size` rows of embeddings with
    /// unused `[PAD<i>]` tokens, as llama.cpp's converter does) and their types (added special
    /// tokens are control tokens); for byte-level BPE the merges by rank and the pre-tokenizer
    /// by llama.cpp's name for it, for a SentencePiece-style vocabulary (a BPE over `▁` with
    /// byte fallback, as transformers holds Llama 2's and Mistral's) the scores. Any other
    /// tokenizer is an error rather than a GGUF that tokenizes differently.
    pub fn gguf_metadata(&self, vocab_size: usize) -> Result<Vec<(String, Value)>> {
        let model = serde_json::to_value(self.inner.get_model()).map_err(tok_err)?;
        if model.get("type").and_then(|t| t.as_str()) != Some("BPE") {
            return Err(unsupported(format!(
                "only BPE tokenizers (byte-level or SentencePiece-style) are written (this one is {})",
                model.get("type").unwrap_or(&serde_json::Value::Null)
            )));
        }
        let merges: Vec<String> = model
            .get("merges")
            .and_then(|m| m.as_array())
            .ok_or_else(|| unsupported("the BPE model has no merges".into()))?
            .iter()
            .map(|m| match m {
                // The tokenizers crate writes pairs; older tokenizer.json files "a b" strings.
                serde_json::Value::Array(p) if p.len() == 2 => Ok(format!(
                    "{} {}",
                    p[0].as_str().unwrap_or_default(),
                    p[1].as_str().unwrap_or_default()
                )),
                serde_json::Value::String(s) => Ok(s.clone()),
                other => Err(unsupported(format!("malformed merge {other}"))),
            })
            .collect::<Result<_>>()?;
        let vocab = self.inner.get_vocab(true);
        let n = vocab_size.max(vocab.values().map(|&i| i as usize + 1).max().unwrap_or(0));
        let mut tokens: Vec<Option<String>> = vec![None; n];
        for (t, &i) in &vocab {
            tokens[i as usize] = Some(t.clone());
        }
        let added = self.inner.get_added_tokens_decoder();
        let spm_prefix = self.sentencepiece_prefix(&model);
        let unk = model.get("unk_token").and_then(|u| u.as_str());
        let mut types = Vec::with_capacity(n);
        for (i, t) in tokens.iter().enumerate() {
            // llama.cpp's types: 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused,
            // 6 byte.
            types.push(match (t, added.get(&(i as u32))) {
                (None, _) => 5,
                (_, Some(a)) if a.special => 3,
                (_, Some(_)) => 4,
                (Some(t), _) if spm_prefix.is_some() && Some(t.as_str()) == unk => spm::UNKNOWN,
                (Some(t), _) if spm_prefix.is_some() && is_byte_token(t) => spm::BYTE,
                _ => 1,
            });
        }
        let mut md = vec![(
            "tokenizer.ggml.model".to_string(),
            Value::String(
                if spm_prefix.is_some() {
                    "llama"
                } else {
                    "gpt2"
                }
                .into(),
            ),
        )];
        if let Some(prefix) = spm_prefix {
            let scores = match &self.scores {
                Some(s) if s.len() <= n => s.clone(),
                _ => spm::scores_from_merges(&tokens, &types, &merges),
            };
            let mut scores: Vec<Value> = scores.into_iter().map(Value::F32).collect();
            scores.resize(n, Value::F32(spm::UNUSED_SCORE));
            md.push(("tokenizer.ggml.scores".into(), Value::Array(scores)));
            md.push((
                "tokenizer.ggml.add_space_prefix".into(),
                Value::Bool(prefix),
            ));
            if let Some(u) = unk.and_then(|u| self.token_to_id(u)) {
                md.push(("tokenizer.ggml.unknown_token_id".into(), Value::U32(u)));
            }
        } else {
            let pre = serde_json::to_value(self.inner.get_pre_tokenizer()).map_err(tok_err)?;
            let name = llama_cpp_pre(&pre).ok_or_else(|| {
                unsupported(format!(
                    "the pre-tokenizer {pre} has no llama.cpp name galley knows ({})",
                    KNOWN_PRE.join(", ")
                ))
            })?;
            md.push(("tokenizer.ggml.pre".into(), Value::String(name.into())));
            let merges = merges.into_iter().map(Value::String).collect();
            md.push(("tokenizer.ggml.merges".into(), Value::Array(merges)));
        }
        let tokens = tokens
            .into_iter()
            .enumerate()
            .map(|(i, t)| Value::String(t.unwrap_or_else(|| format!("[PAD{i}]"))))
            .collect();
        md.push(("tokenizer.ggml.tokens".into(), Value::Array(tokens)));
        let types = types.into_iter().map(Value::I32).collect();
        md.push(("tokenizer.ggml.token_type".into(), Value::Array(types)));
        md.push((
            "tokenizer.ggml.add_bos_token".into(),
            Value::Bool(self.adds_bos()),
        ));
        if self.adds_eos() {
            md.push(("tokenizer.ggml.add_eos_token".into(), Value::Bool(true)));
        }
        if let Some(b) = self.bos {
            md.push(("tokenizer.ggml.bos_token_id".into(), Value::U32(b)));
        }
        if let Some(&e) = self.eos.first() {
            md.push(("tokenizer.ggml.eos_token_id".into(), Value::U32(e)));
        }
        Ok(md)
    }

    /// For a SentencePiece-style vocabulary (a BPE with byte fallback whose spaces become
    /// `▁`, by transformers' legacy normalizer or its `Metaspace` pre-tokenizer), whether a
    /// `▁` goes before the text; `None` for any other tokenizer.
    fn sentencepiece_prefix(&self, model: &serde_json::Value) -> Option<bool> {
        if model.get("byte_fallback").and_then(|b| b.as_bool()) != Some(true) {
            return None;
        }
        let kind = |v: &serde_json::Value| v.get("type").and_then(|t| t.as_str()).map(String::from);
        let normalizer = serde_json::to_value(self.inner.get_normalizer()).ok()?;
        let parts = match normalizer.get("normalizers").and_then(|n| n.as_array()) {
            Some(parts) => parts.clone(),
            None => vec![normalizer],
        };
        let replaces_spaces = parts.iter().any(|p| {
            kind(p).as_deref() == Some("Replace")
                && p.pointer("/pattern/String").and_then(|s| s.as_str()) == Some(" ")
                && p.get("content").and_then(|c| c.as_str()) == Some("▁")
        });
        if replaces_spaces {
            return Some(parts.iter().any(|p| {
                kind(p).as_deref() == Some("Prepend")
                    && p.get("prepend").and_then(|c| c.as_str()) == Some("▁")
            }));
        }
        let pre = serde_json::to_value(self.inner.get_pre_tokenizer()).ok()?;
        (kind(&pre).as_deref() == Some("Metaspace")
            && pre.get("replacement").and_then(|r| r.as_str()) == Some("▁"))
        .then(|| pre.get("prepend_scheme").and_then(|p| p.as_str()) != Some("never"))
    }
}

fn unsupported(what: String) -> ModelError {
    ModelError::Tokenizer(format!("GGUF export: {what}"))
}

/// SentencePiece's byte pieces, `<0x00>` to `<0xFF>`.
fn is_byte_token(t: &str) -> bool {
    t.len() == 6
        && t.starts_with("<0x")
        && t.ends_with('>')
        && t[3..5].chars().all(|c| c.is_ascii_hexdigit())
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

    /// Whether plain text gets EOS last: GGUF's `add_eos_token`, or a tokenizer.json whose
    /// post-processor ends a single sequence with the EOS token (Qwen3-Embedding's).
    fn adds_eos(&self) -> bool {
        if self.add_eos {
            return true;
        }
        let Some(eos) = self.eos.first().and_then(|&e| self.id_to_token(e)) else {
            return false;
        };
        let post = serde_json::to_value(self.inner.get_post_processor()).unwrap_or_default();
        let last = post
            .get("single")
            .and_then(|s| s.as_array())
            .and_then(|s| s.last())
            .and_then(|t| t.get("SpecialToken"))
            .and_then(|t| t.get("id"))
            .and_then(|id| id.as_str());
        last == Some(eos.as_str())
    }
}

/// llama.cpp's name for a tokenizer.json pre-tokenizer: the known one that is the same rules
/// (ByteLevel's prefix-space and offset-trimming flags aside, which change no ids here).
fn llama_cpp_pre(pre: &serde_json::Value) -> Option<&'static str> {
    fn canonical(v: &serde_json::Value) -> serde_json::Value {
        match v {
            serde_json::Value::Object(o) => o
                .iter()
                .filter(|(k, _)| !matches!(k.as_str(), "add_prefix_space" | "trim_offsets"))
                .map(|(k, v)| (k.clone(), canonical(v)))
                .collect(),
            serde_json::Value::Array(a) => a.iter().map(canonical).collect(),
            other => other.clone(),
        }
    }
    let want = canonical(pre);
    KNOWN_PRE.into_iter().find(|name| {
        pre_tokenizer(name, false)
            .ok()
            .flatten()
            .and_then(|p| serde_json::to_value(p).ok())
            .is_some_and(|p| canonical(&p) == want)
    })
}
