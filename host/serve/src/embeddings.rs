//! `POST /v1/embeddings` in OpenAI's shape: `input` as a text, a list of texts, a list of
//! token ids or a list of such lists; `dimensions` (Matryoshka truncation, normalized again
//! where the model normalizes); `encoding_format` `float` or `base64` (little-endian f32, as
//! OpenAI's clients decode it). galley's extension `prompt_name` puts one of a
//! sentence-transformers model's prompts before each text (Qwen3-Embedding's `query`
//! instruction); its `default_prompt_name`, if it has one, applies otherwise. The vectors are
//! computed by the model's batcher ([`crate::batcher::EmbedJob`]), pooled as
//! [`galley_model::Embedder`] says. Every input is checked before any is computed: an empty one,
//! one past the context, an id outside the vocabulary are 400s naming the input.

use crate::api::{ApiError, AppState, batcher, refused};
use crate::batcher::EmbedJob;
use crate::request::parse;
use axum::Json;
use axum::extract::State;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// OpenAI's limit on inputs in one request.
const MAX_INPUTS: usize = 2048;

#[derive(Deserialize)]
#[serde(untagged)]
enum Input {
    Text(String),
    Texts(Vec<String>),
    Tokens(Vec<u32>),
    TokenLists(Vec<Vec<u32>>),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct EmbeddingsRequest {
    model: String,
    input: Input,
    encoding_format: Option<String>,
    dimensions: Option<usize>,
    #[allow(dead_code)]
    user: Option<String>,
    prompt_name: Option<String>,
}

pub(crate) async fn embeddings(
    State(s): State<AppState>,
    body: axum::body::Bytes,
) -> Result<Json<Answer>, ApiError> {
    let req: EmbeddingsRequest = parse(&body)?;
    let b = batcher(&s, &req.model)?;
    let base64 = match req.encoding_format.as_deref() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => {
            return Err(ApiError::bad(
                format!("encoding_format `{other}`: use float or base64"),
                Some("encoding_format"),
            ));
        }
    };
    let texts = |texts: Vec<String>| -> Result<Vec<Vec<u32>>, ApiError> {
        texts
            .iter()
            .map(|t| {
                s.embedder
                    .tokens(&s.tokenizer, t, req.prompt_name.as_deref())
                    .map_err(|e| ApiError::bad(e.to_string(), Some("input")))
            })
            .collect()
    };
    let rows = match req.input {
        Input::Text(t) => texts(vec![t])?,
        Input::Texts(t) => texts(t)?,
        Input::Tokens(ids) => vec![ids],
        Input::TokenLists(rows) => rows,
    };
    if rows.is_empty() {
        return Err(ApiError::bad("`input` is empty", Some("input")));
    }
    if rows.len() > MAX_INPUTS {
        return Err(ApiError::bad(
            format!("{} inputs: at most {MAX_INPUTS} a request", rows.len()),
            Some("input"),
        ));
    }
    // Ids index the embedding matrix: one past the vocabulary is refused, never looked up.
    let vocab = s.config.vocab_size;
    for (i, r) in rows.iter().enumerate() {
        if let Some(id) = r.iter().find(|&&id| id as usize >= vocab) {
            return Err(ApiError::bad(
                format!("input {i}: token id {id} is outside the vocabulary ({vocab} ids)"),
                Some("input"),
            ));
        }
    }
    s.embedder
        .check(&s.config, &rows, req.dimensions)
        .map_err(|e| {
            let msg = e.to_string();
            let param = match msg.starts_with("dimensions") {
                true => "dimensions",
                false => "input",
            };
            ApiError::bad(msg, Some(param))
        })?;
    let tokens: usize = rows.iter().map(Vec::len).sum();
    let (reply, answer) = tokio::sync::oneshot::channel();
    b.submit_embed(EmbedJob {
        rows,
        dimensions: req.dimensions,
        embedder: s.embedder.clone(),
        reply,
    })
    .map_err(refused)?;
    let vectors = match answer.await {
        Ok(Ok(v)) => v,
        Ok(Err(msg)) => return Err(ApiError::server(msg)),
        Err(_) => return Err(ApiError::server("the model's thread dropped the request")),
    };
    let data: Vec<Item> = vectors
        .into_iter()
        .enumerate()
        .map(|(index, v)| Item {
            object: "embedding",
            index,
            embedding: match base64 {
                true => {
                    let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                    Vector::Base64(base64::engine::general_purpose::STANDARD.encode(bytes))
                }
                false => Vector::Float(v),
            },
        })
        .collect();
    Ok(Json(Answer {
        object: "list",
        data,
        model: req.model,
        usage: json!({"prompt_tokens": tokens, "total_tokens": tokens}),
    }))
}

/// The answer, serialized from its own types so the vectors' values are written as f32
/// (shortest round-trip digits), not widened to f64's as serde_json's `Value` holds them.
#[derive(Serialize)]
pub(crate) struct Answer {
    object: &'static str,
    data: Vec<Item>,
    model: String,
    usage: Value,
}

#[derive(Serialize)]
struct Item {
    object: &'static str,
    index: usize,
    embedding: Vector,
}

#[derive(Serialize)]
#[serde(untagged)]
enum Vector {
    Float(Vec<f32>),
    Base64(String),
}
