//! The OpenAI-compatible HTTP API over the batchers: `GET /health`, `GET /v1/models`,
//! `POST /v1/chat/completions` (the model's chat template; `stream` as server-sent events
//! ending `data: [DONE]`; `n`, `logprobs` + `top_logprobs`, `stop`, `seed`, `logit_bias`,
//! and the `top_k`, `min_p`, `repetition_penalty` and `cache_salt` of llama.cpp's and vLLM's
//! servers) and `POST /v1/completions` (text or token-id
//! prompts, `echo` with `logprobs`, which is how lm-evaluation-harness's `local-completions`
//! scores log-likelihoods). The request's `model` picks the base or one of its adapters.
//! Errors have OpenAI's body: 400 for a bad parameter or a prompt past the context, 404 for an
//! unknown model, 429 when the queue is full. Sampling defaults are OpenAI's (temperature 1,
//! top-p 1, no top-k), not llama.cpp's.

use crate::batcher::{Batcher, Event, Job, Sampled, Scored, SubmitError};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::Stream;
use galley_core::Message;
use galley_model::{ChatTemplate, Finish, SamplingParams, Tokenizer};
use serde::Deserialize;
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};

/// A model id the server answers to and the batcher that decodes for it.
pub struct Served {
    pub id: String,
    pub batcher: Batcher,
}

/// What every handler shares.
pub struct Shared {
    pub models: Vec<Served>,
    pub tokenizer: Arc<Tokenizer>,
    pub template: Option<ChatTemplate>,
    /// The model's context length (prompt + completion tokens).
    pub context: usize,
    pub created: u64,
    pub next_id: AtomicU64,
}

type AppState = Arc<Shared>;

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/v1/models", get(models))
        .route("/v1/chat/completions", post(chat))
        .route("/v1/completions", post(completions))
        .with_state(state)
}

/// An OpenAI-shaped error response.
pub struct ApiError {
    status: StatusCode,
    message: String,
    kind: &'static str,
    param: Option<std::borrow::Cow<'static, str>>,
    code: Option<&'static str>,
}

impl ApiError {
    fn bad(message: impl Into<String>, param: Option<&'static str>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            kind: "invalid_request_error",
            param: param.map(Into::into),
            code: None,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error": {"message": self.message, "type": self.kind,
                                    "param": self.param, "code": self.code}});
        (self.status, Json(body)).into_response()
    }
}

/// Liveness, and each model's queue: waiting, running, finished, cancelled and failed
/// sequences (waiting is read before running: a sequence moving between them counts in one), and
/// its prompt cache (hits, prompt tokens not prefilled thanks to it, bytes kept).
async fn health(State(s): State<AppState>) -> Json<Value> {
    let load = |a: &std::sync::atomic::AtomicUsize| a.load(Ordering::SeqCst);
    let models: Vec<Value> = s
        .models
        .iter()
        .map(|m| {
            let st = &m.batcher.stats;
            let waiting = load(&st.waiting);
            let running = load(&st.running);
            json!({"id": m.id, "waiting": waiting, "running": running,
                   "finished": load(&st.finished), "cancelled": load(&st.cancelled),
                   "failed": load(&st.failed),
                   "prompt_cache": {"hits": load(&st.prompt_cache_hits),
                                    "tokens": load(&st.prompt_cache_tokens),
                                    "bytes": load(&st.prompt_cache_bytes)}})
        })
        .collect();
    Json(json!({"status": "ok", "models": models}))
}

async fn models(State(s): State<AppState>) -> Json<Value> {
    let data: Vec<Value> = s
        .models
        .iter()
        .map(|m| json!({"id": m.id, "object": "model", "created": s.created, "owned_by": "galley"}))
        .collect();
    Json(json!({"object": "list", "data": data}))
}

/// Reads a JSON body ourselves, so a malformed one gets OpenAI's error shape, naming the key.
fn parse<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, ApiError> {
    let de = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let mut path = e.path().to_string();
        // A flattened field's error has no path (serde buffers [`Sampling`]'s fields): find
        // the key by reading each one alone as `Sampling`, which ignores other keys.
        if path == "." {
            let obj: serde_json::Map<String, Value> =
                serde_json::from_slice(body).unwrap_or_default();
            if let Some((k, _)) = obj.iter().find(|(k, v)| {
                serde_json::from_value::<Sampling>(json!({ k.as_str(): v })).is_err()
            }) {
                path = k.clone();
            }
        }
        ApiError {
            param: (path != ".").then(|| path.clone().into()),
            ..ApiError::bad(
                format!("invalid request body at `{path}`: {}", e.inner()),
                None,
            )
        }
    })
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Stop {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Content {
    Text(String),
    Parts(Vec<Part>),
}

#[derive(Deserialize)]
struct Part {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    text: String,
}

#[derive(Deserialize)]
struct ChatMessage {
    role: String,
    #[serde(default)]
    content: Option<Content>,
}

#[derive(Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: bool,
}

/// Sampling settings shared by both endpoints.
#[derive(Deserialize, Default)]
struct Sampling {
    temperature: Option<f32>,
    top_p: Option<f32>,
    top_k: Option<usize>,
    min_p: Option<f32>,
    repetition_penalty: Option<f32>,
    seed: Option<u64>,
    stop: Option<Stop>,
    n: Option<usize>,
    /// Token id (as a string, OpenAI's shape) -> bias added to its logit, in [-100, 100].
    logit_bias: Option<std::collections::HashMap<String, f32>>,
    /// Prompt-cache isolation (vLLM's field): kept prompts are reused only by requests with
    /// the same salt.
    cache_salt: Option<String>,
}

/// What a request adds to its jobs beyond sampling: its logit biases and cache salt.
struct Extras {
    bias: Vec<(u32, f32)>,
    cache_salt: Option<String>,
}

/// `logit_bias` and `cache_salt`, checked.
fn extras(s: &Shared, p: &Sampling) -> Result<Extras, ApiError> {
    if let Some(salt) = &p.cache_salt
        && (salt.is_empty() || salt.len() > 1024)
    {
        return Err(ApiError::bad(
            format!("cache_salt must be 1 to 1024 bytes, not {}", salt.len()),
            Some("cache_salt"),
        ));
    }
    Ok(Extras {
        bias: logit_bias(s, p)?,
        cache_salt: p.cache_salt.clone(),
    })
}

/// `logit_bias` as (token, bias) pairs, checked.
fn logit_bias(s: &Shared, p: &Sampling) -> Result<Vec<(u32, f32)>, ApiError> {
    let vocab = s.tokenizer.vocab_size() as u32;
    let mut out = Vec::new();
    for (k, &b) in p.logit_bias.iter().flatten() {
        let t: u32 = k.parse().ok().filter(|&t| t < vocab).ok_or_else(|| {
            ApiError::bad(
                format!("logit_bias: `{k}` is not a token id below {vocab}"),
                Some("logit_bias"),
            )
        })?;
        if !(-100.0..=100.0).contains(&b) {
            return Err(ApiError::bad(
                format!("logit_bias: {b} is not in [-100, 100]"),
                Some("logit_bias"),
            ));
        }
        out.push((t, b));
    }
    Ok(out)
}

#[derive(Deserialize)]
struct ChatRequest {
    model: String,
    messages: Vec<ChatMessage>,
    max_tokens: Option<usize>,
    max_completion_tokens: Option<usize>,
    #[serde(default)]
    stream: bool,
    stream_options: Option<StreamOptions>,
    #[serde(default)]
    logprobs: bool,
    top_logprobs: Option<usize>,
    #[serde(flatten)]
    sampling: Sampling,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Prompt {
    Text(String),
    Texts(Vec<String>),
    Ids(Vec<u32>),
    IdLists(Vec<Vec<u32>>),
}

#[derive(Deserialize)]
struct CompletionRequest {
    model: String,
    prompt: Prompt,
    max_tokens: Option<usize>,
    #[serde(default)]
    echo: bool,
    logprobs: Option<usize>,
    #[serde(default)]
    stream: bool,
    #[serde(flatten)]
    sampling: Sampling,
}

fn batcher<'a>(s: &'a Shared, model: &str) -> Result<&'a Batcher, ApiError> {
    s.models
        .iter()
        .find(|m| m.id == model)
        .map(|m| &m.batcher)
        .ok_or_else(|| ApiError {
            status: StatusCode::NOT_FOUND,
            message: format!(
                "The model `{model}` does not exist (this server has: {})",
                s.models
                    .iter()
                    .map(|m| m.id.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            kind: "invalid_request_error",
            param: Some("model".into()),
            code: Some("model_not_found"),
        })
}

/// The request's sampling parameters, checked, for `prompt_len` prompt tokens.
fn params(
    s: &Shared,
    p: &Sampling,
    max_tokens: Option<usize>,
    prompt_len: usize,
) -> Result<SamplingParams, ApiError> {
    let t = p.temperature.unwrap_or(1.0);
    if !(0.0..=2.0).contains(&t) {
        return Err(ApiError::bad(
            format!("temperature {t} is not in [0, 2]"),
            Some("temperature"),
        ));
    }
    let top_p = p.top_p.unwrap_or(1.0);
    if !(top_p > 0.0 && top_p <= 1.0) {
        return Err(ApiError::bad(
            format!("top_p {top_p} is not in (0, 1]"),
            Some("top_p"),
        ));
    }
    let room = s.context.saturating_sub(prompt_len);
    let max = max_tokens.unwrap_or(room);
    if prompt_len + max > s.context {
        return Err(ApiError {
            code: Some("context_length_exceeded"),
            ..ApiError::bad(
                format!(
                    "This model's maximum context length is {} tokens. However, you requested {} tokens ({prompt_len} in the prompt, {max} in the completion).",
                    s.context,
                    prompt_len + max
                ),
                Some("messages"),
            )
        });
    }
    let params = SamplingParams {
        temperature: t,
        top_p,
        top_k: p.top_k.unwrap_or(0),
        min_p: p.min_p.unwrap_or(0.0),
        repetition_penalty: p.repetition_penalty.unwrap_or(1.0),
        seed: p.seed.unwrap_or(0),
        max_tokens: max,
        stop: match &p.stop {
            None => Vec::new(),
            Some(Stop::One(s)) => vec![s.clone()],
            Some(Stop::Many(v)) => v.clone(),
        },
        stop_token_ids: Vec::new(),
    };
    params.validate().map_err(|e| ApiError::bad(e, None))?;
    Ok(params)
}

fn n_of(p: &Sampling) -> Result<usize, ApiError> {
    let n = p.n.unwrap_or(1);
    if !(1..=16).contains(&n) {
        return Err(ApiError::bad(format!("n {n} is not in [1, 16]"), Some("n")));
    }
    Ok(n)
}

/// Submits `n` jobs (seeds `seed`, `seed + 1`, ...) and returns their event streams;
/// `logprobs`: the chosen tokens' log-probabilities and this many alternatives are wanted.
fn submit(
    b: &Batcher,
    prompt: &[u32],
    params: &SamplingParams,
    n: usize,
    logprobs: Option<usize>,
    prompt_logprobs: bool,
    extras: &Extras,
) -> Result<Vec<UnboundedReceiver<Event>>, ApiError> {
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let (tx, rx) = unbounded_channel();
        let job = Job {
            prompt: prompt.to_vec(),
            params: SamplingParams {
                seed: params.seed.wrapping_add(i as u64),
                ..params.clone()
            },
            logprobs: logprobs.is_some(),
            top_logprobs: logprobs.unwrap_or(0),
            prompt_logprobs,
            logit_bias: extras.bias.clone(),
            cache_salt: extras.cache_salt.clone(),
            events: tx,
        };
        b.submit(job).map_err(|e| match e {
            SubmitError::QueueFull => ApiError {
                status: StatusCode::TOO_MANY_REQUESTS,
                message: "the server's queue is full; retry later".into(),
                kind: "rate_limit_error",
                param: None,
                code: Some("queue_full"),
            },
            SubmitError::Stopped => ApiError {
                status: StatusCode::INTERNAL_SERVER_ERROR,
                message: "the model's decoding thread has stopped".into(),
                kind: "server_error",
                param: None,
                code: None,
            },
        })?;
        out.push(rx);
    }
    Ok(out)
}

fn finish_reason(f: Finish) -> &'static str {
    match f {
        Finish::Eos | Finish::Stop => "stop",
        Finish::Length => "length",
    }
}

/// What one sequence produced, gathered from its events.
#[derive(Default)]
struct Gathered {
    text: String,
    tokens: Vec<Sampled>,
    prompt: Vec<Scored>,
    finish: Option<Finish>,
    prompt_tokens: usize,
}

async fn gather(mut rx: UnboundedReceiver<Event>) -> Result<Gathered, ApiError> {
    let mut g = Gathered::default();
    while let Some(ev) = rx.recv().await {
        match ev {
            Event::Prompt(p) => g.prompt = p,
            Event::Token {
                id,
                text,
                logprob,
                top,
            } => {
                g.text.push_str(&text);
                g.tokens.push((id, logprob, top));
            }
            Event::Done {
                finish,
                prompt_tokens,
                ..
            } => {
                g.finish = Some(finish);
                g.prompt_tokens = prompt_tokens;
                break;
            }
            Event::Error(e) => {
                return Err(ApiError {
                    status: StatusCode::INTERNAL_SERVER_ERROR,
                    message: e,
                    kind: "server_error",
                    param: None,
                    code: None,
                });
            }
        }
    }
    Ok(g)
}

fn token_text(tok: &Tokenizer, id: u32) -> String {
    tok.decode(&[id], false).unwrap_or_default()
}

/// Chat's `logprobs.content` entries.
fn chat_logprobs(tok: &Tokenizer, toks: &[Sampled]) -> Value {
    let entry = |id: u32, lp: f32| {
        let t = token_text(tok, id);
        json!({"token": t, "logprob": lp, "bytes": t.as_bytes()})
    };
    let content: Vec<Value> = toks
        .iter()
        .map(|(id, lp, top)| {
            let mut e = entry(*id, *lp);
            e["top_logprobs"] = top.iter().map(|(i, l)| entry(*i, *l)).collect();
            e
        })
        .collect();
    json!({"content": content})
}

fn render(s: &Shared, msgs: &[ChatMessage]) -> Result<Vec<u32>, ApiError> {
    let tmpl = s.template.as_ref().ok_or_else(|| {
        ApiError::bad(
            "this model has no chat template: use /v1/completions",
            Some("messages"),
        )
    })?;
    if msgs.is_empty() {
        return Err(ApiError::bad("messages is empty", Some("messages")));
    }
    let messages: Vec<Message> = msgs
        .iter()
        .map(|m| {
            let content = match &m.content {
                None => String::new(),
                Some(Content::Text(t)) => t.clone(),
                Some(Content::Parts(parts)) => parts
                    .iter()
                    .filter(|p| p.kind == "text")
                    .map(|p| p.text.as_str())
                    .collect::<Vec<_>>()
                    .join(""),
            };
            Message::new(m.role.clone(), content)
        })
        .collect();
    let text = tmpl
        .render(&messages, true, None)
        .map_err(|e| ApiError::bad(format!("the chat template failed: {e}"), Some("messages")))?;
    s.tokenizer
        .encode(&text, false)
        .map_err(|e| ApiError::bad(e.to_string(), Some("messages")))
}

async fn chat(State(s): State<AppState>, body: axum::body::Bytes) -> Result<Response, ApiError> {
    let req: ChatRequest = parse(&body)?;
    let b = batcher(&s, &req.model)?;
    let prompt = render(&s, &req.messages)?;
    let top = req.top_logprobs.unwrap_or(0);
    if top > 20 {
        return Err(ApiError::bad(
            format!("top_logprobs {top} is not in [0, 20]"),
            Some("top_logprobs"),
        ));
    }
    let params = params(
        &s,
        &req.sampling,
        req.max_completion_tokens.or(req.max_tokens),
        prompt.len(),
    )?;
    let n = n_of(&req.sampling)?;
    let extras = extras(&s, &req.sampling)?;
    let rxs = submit(
        b,
        &prompt,
        &params,
        n,
        req.logprobs.then_some(top),
        false,
        &extras,
    )?;
    let id = format!("chatcmpl-{}", s.next_id.fetch_add(1, Ordering::Relaxed));
    if req.stream {
        let usage = req.stream_options.is_some_and(|o| o.include_usage);
        return Ok(Sse::new(chat_stream(
            s.clone(),
            rxs,
            id,
            req.model,
            req.logprobs,
            usage,
        ))
        .into_response());
    }
    let mut choices = Vec::with_capacity(n);
    let mut completion_tokens = 0;
    for (i, rx) in rxs.into_iter().enumerate() {
        let g = gather(rx).await?;
        completion_tokens += g.tokens.len();
        choices.push(json!({
            "index": i,
            "message": {"role": "assistant", "content": g.text},
            "logprobs": if req.logprobs { chat_logprobs(&s.tokenizer, &g.tokens) } else { Value::Null },
            "finish_reason": finish_reason(g.finish.unwrap_or(Finish::Length)),
        }));
    }
    Ok(Json(json!({
        "id": id, "object": "chat.completion", "created": now(), "model": req.model,
        "choices": choices,
        "usage": {"prompt_tokens": prompt.len(), "completion_tokens": completion_tokens,
                  "total_tokens": prompt.len() + completion_tokens},
    }))
    .into_response())
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The `n` sequences' events as chat chunks, in the order they come, then `[DONE]`.
fn chat_stream(
    s: AppState,
    rxs: Vec<UnboundedReceiver<Event>>,
    id: String,
    model: String,
    logprobs: bool,
    usage: bool,
) -> impl Stream<Item = Result<SseEvent, std::convert::Infallible>> {
    let (tx, rx) = unbounded_channel::<(usize, Event)>();
    let n = rxs.len();
    for (i, mut r) in rxs.into_iter().enumerate() {
        let tx = tx.clone();
        tokio::spawn(async move {
            while let Some(ev) = r.recv().await {
                let last = matches!(ev, Event::Done { .. } | Event::Error(_));
                if tx.send((i, ev)).is_err() || last {
                    break;
                }
            }
        });
    }
    drop(tx);
    let created = now();
    let chunk = move |choices: Value, usage: Option<Value>| {
        let mut c = json!({"id": id, "object": "chat.completion.chunk", "created": created,
                           "model": model, "choices": choices});
        if let Some(u) = usage {
            c["usage"] = u;
        }
        SseEvent::default().data(c.to_string())
    };
    let first: Vec<Result<SseEvent, std::convert::Infallible>> = (0..n)
        .map(|i| {
            Ok(chunk(
                json!([{"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": null, "finish_reason": null}]),
                None,
            ))
        })
        .collect();
    let state = (rx, 0usize, 0usize, 0usize, false);
    let rest = futures_util::stream::unfold(
        state,
        move |(mut rx, done, prompt, completion, over)| {
            let s = s.clone();
            let chunk = chunk.clone();
            async move {
                if over {
                    return None;
                }
                loop {
                    let Some((i, ev)) = rx.recv().await else {
                        // Every sequence done: usage (if asked), then the end marker.
                        let mut out = Vec::new();
                        if usage {
                            out.push(chunk(
                                json!([]),
                                Some(json!({"prompt_tokens": prompt,
                            "completion_tokens": completion, "total_tokens": prompt + completion})),
                            ));
                        }
                        out.push(SseEvent::default().data("[DONE]"));
                        return Some((out, (rx, done, prompt, completion, true)));
                    };
                    match ev {
                        Event::Token {
                            id,
                            text,
                            logprob,
                            top,
                        } => {
                            let lp = if logprobs {
                                chat_logprobs(&s.tokenizer, &[(id, logprob, top)])
                            } else {
                                Value::Null
                            };
                            let c = chunk(
                                json!([{"index": i, "delta": {"content": text}, "logprobs": lp, "finish_reason": null}]),
                                None,
                            );
                            return Some((vec![c], (rx, done, prompt, completion + 1, false)));
                        }
                        Event::Done {
                            finish,
                            prompt_tokens,
                            ..
                        } => {
                            let c = chunk(
                                json!([{"index": i, "delta": {}, "logprobs": null, "finish_reason": finish_reason(finish)}]),
                                None,
                            );
                            return Some((
                                vec![c],
                                (rx, done + 1, prompt_tokens, completion, false),
                            ));
                        }
                        Event::Error(e) => {
                            let c = SseEvent::default().data(
                                json!({"error": {"message": e, "type": "server_error"}})
                                    .to_string(),
                            );
                            return Some((vec![c], (rx, done, prompt, completion, true)));
                        }
                        Event::Prompt(_) => continue,
                    }
                }
            }
        },
    );
    use futures_util::StreamExt;
    futures_util::stream::iter(first)
        .chain(rest.flat_map(|evs| futures_util::stream::iter(evs.into_iter().map(Ok))))
}

/// The legacy completions `logprobs` object over (token, logprob, top) rows, text offsets
/// counted from `start`.
fn legacy_logprobs(tok: &Tokenizer, rows: &[Scored], start: usize) -> Value {
    let mut offset = start;
    let (mut tokens, mut lps, mut tops, mut offsets) = (vec![], vec![], vec![], vec![]);
    for (i, (id, lp, top)) in rows.iter().enumerate() {
        let t = token_text(tok, *id);
        offsets.push(offset);
        offset += t.len();
        tokens.push(Value::String(t));
        lps.push(lp.map_or(Value::Null, |l| json!(l)));
        tops.push(if lp.is_none() && i == 0 {
            Value::Null
        } else {
            let m: serde_json::Map<String, Value> = top
                .iter()
                .map(|(i, l)| (token_text(tok, *i), json!(l)))
                .collect();
            Value::Object(m)
        });
    }
    json!({"tokens": tokens, "token_logprobs": lps, "top_logprobs": tops, "text_offset": offsets})
}

async fn completions(
    State(s): State<AppState>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let req: CompletionRequest = parse(&body)?;
    if req.stream {
        return Err(ApiError::bad(
            "stream is not supported on /v1/completions in this version; use /v1/chat/completions",
            Some("stream"),
        ));
    }
    let b = batcher(&s, &req.model)?;
    let prompts: Vec<Vec<u32>> = match &req.prompt {
        Prompt::Text(t) => vec![encode(&s, t)?],
        Prompt::Texts(ts) => ts.iter().map(|t| encode(&s, t)).collect::<Result<_, _>>()?,
        Prompt::Ids(ids) => vec![ids.clone()],
        Prompt::IdLists(l) => l.clone(),
    };
    let vocab = s.tokenizer.vocab_size() as u32;
    for p in &prompts {
        if p.is_empty() {
            return Err(ApiError::bad("a prompt is empty", Some("prompt")));
        }
        if let Some(bad) = p.iter().find(|&&t| t >= vocab) {
            return Err(ApiError::bad(
                format!("token id {bad} is outside the vocabulary ({vocab})"),
                Some("prompt"),
            ));
        }
    }
    let top = req.logprobs.unwrap_or(0);
    if top > 20 {
        return Err(ApiError::bad(
            format!("logprobs {top} is not in [0, 20]"),
            Some("logprobs"),
        ));
    }
    let n = n_of(&req.sampling)?;
    let extras = extras(&s, &req.sampling)?;
    let mut pending = Vec::new();
    for p in &prompts {
        // The legacy endpoint's default completion length.
        let params = params(
            &s,
            &req.sampling,
            Some(req.max_tokens.unwrap_or(16)),
            p.len(),
        )?;
        let echo_scores = req.echo && req.logprobs.is_some();
        pending.push((
            p.clone(),
            submit(b, p, &params, n, req.logprobs, echo_scores, &extras)?,
        ));
    }
    let mut choices = Vec::new();
    let (mut prompt_tokens, mut completion_tokens) = (0, 0);
    for (p, rxs) in pending {
        prompt_tokens += p.len();
        for rx in rxs {
            let g = gather(rx).await?;
            completion_tokens += g.tokens.len();
            let prompt_text = if req.echo {
                s.tokenizer.decode(&p, false).unwrap_or_default()
            } else {
                String::new()
            };
            let logprobs = if req.logprobs.is_some() {
                let mut rows: Vec<Scored> = if req.echo {
                    g.prompt.clone()
                } else {
                    Vec::new()
                };
                rows.extend(g.tokens.iter().map(|(i, l, t)| (*i, Some(*l), t.clone())));
                legacy_logprobs(&s.tokenizer, &rows, 0)
            } else {
                Value::Null
            };
            choices.push(json!({
                "index": choices.len(),
                "text": format!("{prompt_text}{}", g.text),
                "logprobs": logprobs,
                "finish_reason": finish_reason(g.finish.unwrap_or(Finish::Length)),
            }));
        }
    }
    let id = format!("cmpl-{}", s.next_id.fetch_add(1, Ordering::Relaxed));
    Ok(Json(json!({
        "id": id, "object": "text_completion", "created": now(), "model": req.model,
        "choices": choices,
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                  "total_tokens": prompt_tokens + completion_tokens},
    }))
    .into_response())
}

fn encode(s: &Shared, text: &str) -> Result<Vec<u32>, ApiError> {
    s.tokenizer
        .encode(text, true)
        .map_err(|e| ApiError::bad(e.to_string(), Some("prompt")))
}
