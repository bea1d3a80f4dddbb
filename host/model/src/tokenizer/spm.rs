//! SentencePiece-style vocabularies as llama.cpp keeps them (`tokenizer.ggml.model = llama`:
//! Llama 1/2, Mistral 7B, TinyLlama, CodeLlama and their fine-tunes) — tokens, scores and types,
//! no merges — as a `tokenizers` BPE, the shape transformers' `LlamaTokenizerFast` has: spaces
//! become `▁` (one prepended where `add_space_prefix` says), pairs merge while their
//! concatenation is a token, and characters outside the vocabulary fall back to `<0xXX>` byte
//! tokens. llama.cpp merges the adjacent pair whose concatenation scores highest; a BPE merges
//! the pair of lowest rank, so ranking every (left, right) split of every token by the token's
//! score (highest first) makes the two agree. Building the real thing through `tokenizers`
//! rather than a hand-written merger keeps decoding, streaming, offsets and `tokenizer.json`
//! export the same code for every vocabulary.

use crate::error::{ModelError, Result};
use std::collections::HashMap;
use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::decoders::strip::Strip;
use tokenizers::models::bpe::BPE;
use tokenizers::normalizers::prepend::Prepend;
use tokenizers::normalizers::replace::Replace;
use tokenizers::normalizers::utils::Sequence as NormalizerSequence;
use tokenizers::{DecoderWrapper, NormalizerWrapper};

/// llama.cpp's token types (`tokenizer.ggml.token_type`).
pub const UNKNOWN: i32 = 2;
pub const CONTROL: i32 = 3;
pub const USER_DEFINED: i32 = 4;
pub const BYTE: i32 = 6;
/// The score written for padding rows past the vocabulary (never merged into).
pub const UNUSED_SCORE: f32 = -1e9;

fn tok_err(e: impl std::fmt::Display) -> ModelError {
    ModelError::Tokenizer(e.to_string())
}

/// Every way to write each token as two tokens, ranked by the token's score, highest first
/// (ties by id, for a stable order).
pub fn merges_from_scores(tokens: &[String], scores: &[f32]) -> Vec<(String, String)> {
    let ids: HashMap<&str, usize> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.as_str(), i))
        .collect();
    let mut ranked: Vec<(f32, usize, usize)> = Vec::new();
    for (id, t) in tokens.iter().enumerate() {
        for (cut, _) in t.char_indices().skip(1) {
            if ids.contains_key(&t[..cut]) && ids.contains_key(&t[cut..]) {
                ranked.push((scores[id], id, cut));
            }
        }
    }
    ranked.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
    ranked
        .into_iter()
        .map(|(_, id, cut)| {
            let t = &tokens[id];
            (t[..cut].to_string(), t[cut..].to_string())
        })
        .collect()
}

/// Scores that make llama.cpp's highest-score-first merging follow a BPE's merges: a token
/// scores minus the rank of the first merge that makes it. Tokens no merge makes score as
/// SentencePiece scores them: 0 for control, unknown and byte pieces (single characters
/// too; no pair makes them), and below every merge for the others, so that a pair llama.cpp
/// could join but the BPE never does joins last.
pub fn scores_from_merges(tokens: &[Option<String>], types: &[i32], merges: &[String]) -> Vec<f32> {
    let ids: HashMap<&str, usize> = tokens
        .iter()
        .enumerate()
        .filter_map(|(i, t)| Some((t.as_deref()?, i)))
        .collect();
    let mut scores: Vec<Option<f32>> = vec![None; tokens.len()];
    for (rank, m) in merges.iter().enumerate() {
        let merged: String = m.split(' ').collect();
        if let Some(&id) = ids.get(merged.as_str()) {
            scores[id].get_or_insert(-(rank as f32));
        }
    }
    let last = -(merges.len() as f32) - 1.0;
    scores
        .into_iter()
        .enumerate()
        .map(|(i, s)| {
            s.unwrap_or(match (types.get(i), &tokens[i]) {
                (_, None) => UNUSED_SCORE,
                (Some(&(UNKNOWN | CONTROL | BYTE)), _) => 0.0,
                (_, Some(t)) if t.chars().count() == 1 => 0.0,
                _ => last,
            })
        })
        .collect()
}

/// The tokenizer for a SentencePiece vocabulary. `types` marks the unknown token (whose text
/// stands in for what has no byte token either).
pub fn tokenizer(
    tokens: &[String],
    scores: &[f32],
    types: &[i32],
    add_space_prefix: bool,
) -> Result<tokenizers::Tokenizer> {
    if scores.len() != tokens.len() {
        return Err(tok_err(format!(
            "{} scores for {} tokens",
            scores.len(),
            tokens.len()
        )));
    }
    let vocab: tokenizers::models::bpe::Vocab = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), i as u32))
        .collect();
    let mut bpe = BPE::builder()
        .vocab_and_merges(vocab, merges_from_scores(tokens, scores))
        .byte_fallback(true)
        .fuse_unk(true);
    if let Some(unk) = types.iter().position(|&t| t == UNKNOWN) {
        bpe = bpe.unk_token(tokens[unk].clone());
    }
    let mut inner = tokenizers::Tokenizer::new(bpe.build().map_err(tok_err)?);
    let replace = |from: &str, to: &str| Replace::new(from, to).map_err(tok_err);
    let mut normalizers = Vec::new();
    if add_space_prefix {
        normalizers.push(NormalizerWrapper::Prepend(Prepend::new("▁".into())));
    }
    normalizers.push(NormalizerWrapper::Replace(replace(" ", "▁")?));
    inner.with_normalizer(Some(NormalizerSequence::new(normalizers)));
    let mut decoders = vec![
        DecoderWrapper::Replace(replace("▁", " ")?),
        DecoderWrapper::ByteFallback(ByteFallback::new()),
        DecoderWrapper::Fuse(Fuse::new()),
    ];
    if add_space_prefix {
        // The prepended space is not the text's.
        decoders.push(DecoderWrapper::Strip(Strip::new(' ', 1, 0)));
    }
    inner.with_decoder(Some(DecoderSequence::new(decoders)));
    Ok(inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merges_rank_by_the_merged_tokens_score_and_skip_splits_outside_the_vocabulary() {
        let tokens: Vec<String> = ["a", "b", "c", "ab", "bc", "abc", "xy"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let scores = [0.0, 0.0, 0.0, -3.0, -1.0, -2.0, -0.5];
        let m = merges_from_scores(&tokens, &scores);
        let m: Vec<(&str, &str)> = m.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
        // "xy" has no split into tokens; "abc" splits two ways, both at its score.
        assert_eq!(m, [("b", "c"), ("a", "bc"), ("ab", "c"), ("a", "b")]);
    }
}
