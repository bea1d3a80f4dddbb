//! The OpenAI-compatible HTTP API over the batchers: `GET /health`, `GET /v1/models`,
//! `POST /v1/chat/completions` (the model's chat template; the parameters `request` reads
//! and checks, JSON mode and JSON schemas among them) and `POST /v1/completions` (text or token-id prompts, `echo` with `logprobs`,
//! which is how lm-evaluation-harness's `local-completions` scores log-likelihoods); both
//! stream as server-sent events (`stream`); `POST /tokenize` and `/detokenize` ([`crate::tokenize`]);
//! `POST /v1/embeddings` ([`crate::embeddings`]);
//! `GET /metrics` ([`crate::metrics`]). The request's `model` picks the base or one of its adapters.
//! Errors have OpenAI's body: 400 for a bad parameter or a prompt past the context, 404 for an
//! unknown model, 429 when the queue is full. Sampling defaults are OpenAI's (temperature 1,
//! top-p 1, no top-k), not llama.cpp's.

use crate::batcher::{Batcher, Event, Job, Sampled, Scored, SubmitError};
use crate::request::*;
use crate::stream::{Shape, events};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::sse::Sse;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use galley_model::{ChatTemplate, Finish, SamplingParams, Tokenizer};
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
    /// How the model writes a tool call (told from its template or `--tool-call-parser`);
    /// `None`: the template shows no format galley knows.
    pub tool_format: Option<galley_model::tool_calls::ToolFormat>,
    /// The template writes thinking blocks: answers' are returned as `reasoning_content`.
    pub thinks: bool,
    /// The model's context length (prompt + completion tokens).
    pub context: usize,
    /// How `/v1/embeddings` pools the model's states, and the model's shape it checks against.
    pub embedder: Arc<galley_model::Embedder>,
    pub config: galley_model::LlamaConfig,
    pub created: u64,
    pub next_id: AtomicU64,
}

pub(crate) type AppState = Arc<Shared>;

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/v1/models", get(models))
        .route("/v1/chat/completions", post(chat))
        .route("/v1/completions", post(completions))
        .route("/v1/embeddings", post(crate::embeddings::embeddings))
        .route("/metrics", get(crate::metrics::metrics))
        .route("/tokenize", post(crate::tokenize::tokenize))
        .route("/detokenize", post(crate::tokenize::detokenize))
        .with_state(state)
}

/// An OpenAI-shaped error response.
#[derive(Debug)]
pub struct ApiError {
    pub(crate) status: StatusCode,
    pub(crate) message: String,
    pub(crate) kind: &'static str,
    pub(crate) param: Option<std::borrow::Cow<'static, str>>,
    pub(crate) code: Option<&'static str>,
}

impl ApiError {
    /// A 500: the model failed on a request it had taken.
    pub(crate) fn server(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message: message.into(),
            kind: "server_error",
            param: None,
            code: None,
        }
    }

    pub(crate) fn bad(message: impl Into<String>, param: Option<&'static str>) -> Self {
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

pub(crate) fn batcher<'a>(s: &'a Shared, model: &str) -> Result<&'a Batcher, ApiError> {
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
            json: extras.json.clone(),
            lazy: extras.lazy.clone(),
            submitted: std::time::Instant::now(),
            events: tx,
        };
        b.submit(job).map_err(refused)?;
        out.push(rx);
    }
    Ok(out)
}

/// A bidirectional model (EmbeddingGemma) embeds; asked to generate, it says so up front.
fn generates(s: &Shared) -> Result<(), ApiError> {
    match s.config.bidirectional {
        true => Err(ApiError::bad(
            "this model attends both ways (an embedding model): use /v1/embeddings; it does not generate",
            Some("model"),
        )),
        false => Ok(()),
    }
}

/// Why the batcher did not take a request, as the client hears it.
pub(crate) fn refused(e: SubmitError) -> ApiError {
    match e {
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
    }
}

pub(crate) fn finish_reason(f: Finish) -> &'static str {
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
            Event::Error(e) => return Err(ApiError::server(e)),
        }
    }
    Ok(g)
}

pub(crate) fn token_text(tok: &Tokenizer, id: u32) -> String {
    tok.piece(id).unwrap_or_default()
}

/// Chat's `logprobs.content` entries.
pub(crate) fn chat_logprobs(tok: &Tokenizer, toks: &[Sampled]) -> Value {
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

/// What a chat prompt holds beside its messages: the request's tools, its
/// `chat_template_kwargs`, and what follows the template's text (a forced tool call's
/// opening).
#[derive(Default, Clone, Copy)]
pub(crate) struct Extra<'a> {
    pub(crate) tools: Option<&'a galley_model::json_schema::Json>,
    pub(crate) kwargs: Option<&'a galley_model::json_schema::Obj>,
    pub(crate) suffix: &'a str,
}

/// `msgs` through the chat template with `extra`, as token ids (`special`: the tokenizer's
/// own BOS rule too, for templates that do not write BOS) and the prompt's text.
pub(crate) fn render(
    s: &Shared,
    msgs: &[ChatMessage],
    generation_prompt: bool,
    special: bool,
    extra: Extra,
) -> Result<(Vec<u32>, String), ApiError> {
    let tmpl = s.template.as_ref().ok_or_else(|| {
        ApiError::bad(
            "this model has no chat template: use /v1/completions, or serve it with --chat-template FILE",
            Some("messages"),
        )
    })?;
    if msgs.is_empty() {
        return Err(ApiError::bad("messages is empty", Some("messages")));
    }
    let messages: Vec<_> = msgs.iter().map(ChatMessage::message).collect();
    let mut text = tmpl
        .render_with(&messages, generation_prompt, extra.tools, extra.kwargs)
        .map_err(|e| ApiError::bad(format!("the chat template failed: {e}"), Some("messages")))?;
    text.push_str(extra.suffix);
    let ids = s
        .tokenizer
        .encode(&text, special)
        .map_err(|e| ApiError::bad(e.to_string(), Some("messages")))?;
    Ok((ids, text))
}

async fn chat(State(s): State<AppState>, body: axum::body::Bytes) -> Result<Response, ApiError> {
    let req: ChatRequest = parse(&body)?;
    warn_ignored(&body, true);
    let json = refuse_unsupported(&req, &body)?;
    let tools = crate::tools::read(s.template.as_ref(), s.tool_format, &body, json.is_some())?;
    let b = batcher(&s, &req.model)?;
    generates(&s)?;
    let plan = tools.plan;
    let suffix = plan
        .filter(|p| p.forced)
        .map_or("", |p| p.format.forced_prefix());
    let kwargs = template_kwargs(req.chat_template_kwargs.as_ref())?;
    let extra = Extra {
        tools: tools.list.as_ref(),
        kwargs,
        suffix,
    };
    let (prompt, text) = render(&s, &req.messages, true, false, extra)?;
    // A thinking model's block is returned apart, unless decoding is held to JSON from the
    // first token (then there is no block).
    let opens = s.thinks && galley_model::reasoning::prompt_opens(&text);
    // A thinking model's block is returned apart. JSON asked of it (`response_format`) is
    // held from the block's end when the prompt opened one (vLLM's structured outputs with
    // a reasoning parser); held from the first token otherwise (then there is no block).
    let (json, think_lazy) = match json {
        Some(guide) if opens => (
            None,
            Some(crate::lazy::Lazy {
                trigger: galley_model::reasoning::CLOSE.into(),
                guide,
                end: true,
            }),
        ),
        other => (other, None),
    };
    let guided = json.is_some() || tools.guide.is_some();
    let think = (s.thinks && !guided).then_some(opens);
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
    let extras = Extras {
        json: json.or(tools.guide),
        lazy: think_lazy.or(tools.lazy),
        ..extras(&s, &req.sampling)?
    };
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
        let shape = Shape::Chat {
            logprobs: req.logprobs,
            tools: plan,
            think,
        };
        let usage = usage.then_some(prompt.len());
        return Ok(Sse::new(events(
            s.clone(),
            rxs,
            id,
            req.model,
            shape,
            usage,
            tools.list.clone(),
        ))
        .into_response());
    }
    let mut choices = Vec::with_capacity(n);
    let mut completion_tokens = 0;
    for (i, rx) in rxs.into_iter().enumerate() {
        let g = gather(rx).await?;
        completion_tokens += g.tokens.len();
        let finish = g.finish.unwrap_or(Finish::Length);
        let (reasoning, text) = match think {
            Some(open) => galley_model::reasoning::split(&g.text, open),
            None => (None, g.text),
        };
        let mut message = json!({"role": "assistant", "content": text});
        if let Some(r) = reasoning {
            message["reasoning_content"] = r.into();
        }
        let mut reason = finish_reason(finish);
        if let Some(plan) = &plan {
            let p = crate::tools::parse(plan, &text, tools.list.as_ref());
            if !p.calls.is_empty() {
                message["content"] = p.content.map_or(Value::Null, Value::String);
                message["tool_calls"] =
                    crate::tools::calls_json(plan, &p.calls, crate::tools::id_seed(&s, i));
                if !matches!(finish, Finish::Length) {
                    reason = "tool_calls";
                }
            }
        }
        choices.push(json!({
            "index": i,
            "message": message,
            "logprobs": if req.logprobs { chat_logprobs(&s.tokenizer, &g.tokens) } else { Value::Null },
            "finish_reason": reason,
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

/// Says in the server's log, once per key for the server's life, that a request carried a
/// key galley does not read.
fn warn_ignored(body: &[u8], chat: bool) {
    static SEEN: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    for key in ignored_keys(body, chat) {
        let mut seen = SEEN.lock().unwrap_or_else(|e| e.into_inner());
        if !seen.contains(&key) && seen.len() < 256 {
            tracing::warn!(
                "a request carried `{key}`, which galley serve does not read: it had no effect"
            );
            seen.push(key);
        }
    }
}

pub(crate) fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The legacy completions `logprobs` object over (token, logprob, top) rows, text offsets
/// counted from `start`.
pub(crate) fn legacy_logprobs(tok: &Tokenizer, rows: &[Scored], start: usize) -> Value {
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
    warn_ignored(&body, false);
    if req.stream && req.echo {
        return Err(ApiError::bad(
            "echo with stream is not supported: ask for the echo without streaming",
            Some("echo"),
        ));
    }
    let b = batcher(&s, &req.model)?;
    generates(&s)?;
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
    let json = response_format(req.response_format.as_ref(), &body)?;
    if json.is_some() && req.echo {
        return Err(ApiError::bad(
            "`echo` repeats the prompt before an answer `response_format` holds to JSON; send one or the other",
            Some("echo"),
        ));
    }
    let extras = Extras {
        json,
        ..extras(&s, &req.sampling)?
    };
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
    let id = format!("cmpl-{}", s.next_id.fetch_add(1, Ordering::Relaxed));
    if req.stream {
        // Choice k of prompt j is index j * n + k, as without streaming.
        let usage = req.stream_options.is_some_and(|o| o.include_usage);
        let usage = usage.then(|| prompts.iter().map(Vec::len).sum());
        let rxs = pending.into_iter().flat_map(|(_, rxs)| rxs).collect();
        let shape = Shape::Text {
            logprobs: req.logprobs.is_some(),
        };
        return Ok(
            Sse::new(events(s.clone(), rxs, id, req.model, shape, usage, None)).into_response(),
        );
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
