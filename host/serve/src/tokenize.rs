//! `POST /tokenize` and `POST /detokenize`, in vLLM's shape (llama.cpp's server has the same
//! pair): the served model's own tokenizer, so a client counts a prompt's tokens against the
//! context, or checks what the chat template makes of its messages, without generating.
//! `/tokenize` takes a `prompt` (special tokens added, as `/v1/completions` encodes it) or
//! `messages` (rendered by the chat template, as `/v1/chat/completions` does); `/detokenize`
//! takes `tokens`. Unknown keys, unknown models and ids outside the vocabulary are 400/404
//! errors in OpenAI's error body.

use crate::api::{ApiError, AppState, Extra, batcher, render};
use crate::request::{ChatMessage, parse, template_kwargs};
use axum::Json;
use axum::extract::State;
use serde::Deserialize;
use serde_json::{Value, json};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TokenizeRequest {
    model: Option<String>,
    prompt: Option<String>,
    messages: Option<Vec<ChatMessage>>,
    /// Rendered with the messages, as a chat request's.
    tools: Option<galley_model::json_schema::Json>,
    chat_template_kwargs: Option<galley_model::json_schema::Json>,
    /// Default: true for a prompt, false for messages (the template writes its own).
    add_special_tokens: Option<bool>,
    add_generation_prompt: Option<bool>,
    #[serde(default)]
    return_token_strs: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DetokenizeRequest {
    model: Option<String>,
    tokens: Vec<u32>,
}

pub(crate) async fn tokenize(
    State(s): State<AppState>,
    body: axum::body::Bytes,
) -> Result<Json<Value>, ApiError> {
    let req: TokenizeRequest = parse(&body)?;
    if let Some(m) = &req.model {
        batcher(&s, m)?;
    }
    let tokens = match (&req.prompt, &req.messages) {
        (Some(p), None) => s
            .tokenizer
            .encode(p, req.add_special_tokens.unwrap_or(true))
            .map_err(|e| ApiError::bad(e.to_string(), Some("prompt")))?,
        (None, Some(m)) => {
            render(
                &s,
                m,
                req.add_generation_prompt.unwrap_or(true),
                req.add_special_tokens.unwrap_or(false),
                Extra {
                    tools: req.tools.as_ref(),
                    kwargs: template_kwargs(req.chat_template_kwargs.as_ref())?,
                    suffix: "",
                },
            )?
            .0
        }
        _ => {
            return Err(ApiError::bad(
                "give either `prompt` or `messages`",
                Some("prompt"),
            ));
        }
    };
    let strs = req.return_token_strs.then(|| {
        tokens
            .iter()
            .map(|&t| s.tokenizer.id_to_token(t).unwrap_or_default())
            .collect::<Vec<_>>()
    });
    Ok(Json(json!({
        "count": tokens.len(),
        "max_model_len": s.context,
        "tokens": tokens,
        "token_strs": strs,
    })))
}

pub(crate) async fn detokenize(
    State(s): State<AppState>,
    body: axum::body::Bytes,
) -> Result<Json<Value>, ApiError> {
    let req: DetokenizeRequest = parse(&body)?;
    if let Some(m) = &req.model {
        batcher(&s, m)?;
    }
    let vocab = s.tokenizer.vocab_size();
    if let Some((i, t)) = req
        .tokens
        .iter()
        .enumerate()
        .find(|(_, t)| **t as usize >= vocab)
    {
        return Err(ApiError::bad(
            format!("tokens[{i}] = {t} is not in the vocabulary ({vocab} tokens)"),
            Some("tokens"),
        ));
    }
    let text = s
        .tokenizer
        .decode(&req.tokens, false)
        .map_err(|e| ApiError::bad(e.to_string(), Some("tokens")))?;
    Ok(Json(json!({ "prompt": text })))
}
