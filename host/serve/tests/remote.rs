//! The remote engines against stand-in servers on loopback. The OpenAI-compatible one, speaking
//! the completions API: a busy server (429 twice, then an answer) is retried, one that never
//! answers in time fails with the timeout named, and a 400 is not retried and keeps the
//! server's message. Anthropic's and Vertex's chat APIs: their request shapes, tools out and
//! calls back.

use axum::Router;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::post;
use galley_core::engine::{Engine, LoglikelihoodRequest};
use galley_serve::remote::{OpenAiEngine, RemoteOptions};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// Serves `app` on a free loopback port in a background runtime; returns its `/v1` URL.
fn stand_in(app: Router) -> String {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async move {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(l.local_addr().unwrap()).unwrap();
            axum::serve(l, app).await.unwrap();
        });
    });
    format!("http://{}/v1", rx.recv().unwrap())
}

fn echo_answer() -> serde_json::Value {
    // "Answer: yes" as three tokens; the continuation " yes" is the last, and the top choice.
    serde_json::json!({"choices": [{"text": "Answer: yes", "logprobs": {
        "tokens": ["Answer", ":", " yes"], "token_logprobs": [null, -0.5, -0.25],
        "top_logprobs": [null, {":": -0.5}, {" yes": -0.25, " no": -1.5}],
        "text_offset": [0, 6, 7]}}]})
}

fn opts(url: &str) -> RemoteOptions {
    RemoteOptions {
        backoff: Duration::from_millis(10),
        ..RemoteOptions::new(url, "m")
    }
}

fn request() -> Vec<LoglikelihoodRequest> {
    vec![LoglikelihoodRequest {
        context: "Answer:".into(),
        continuation: " yes".into(),
    }]
}

#[test]
fn a_busy_server_is_retried_and_its_answer_scored() {
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let app = Router::new().route(
        "/v1/completions",
        post(move || {
            let c = c.clone();
            async move {
                if c.fetch_add(1, Ordering::SeqCst) < 2 {
                    (
                        StatusCode::TOO_MANY_REQUESTS,
                        [("retry-after", "0")],
                        "busy",
                    )
                        .into_response()
                } else {
                    axum::Json(echo_answer()).into_response()
                }
            }
        }),
    );
    let mut e = OpenAiEngine::new(opts(&stand_in(app))).unwrap();
    let r = e.loglikelihood(&request(), &mut |_| {}).unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    assert_eq!(r[0].logprob, -0.25);
    assert!(r[0].greedy);
    assert_eq!(r[0].token_logprobs, vec![-0.25]);
}

#[test]
fn a_server_that_never_answers_times_out_by_name() {
    let app = Router::new().route(
        "/v1/completions",
        post(|| async {
            tokio::time::sleep(Duration::from_secs(5)).await;
            "late"
        }),
    );
    let mut o = opts(&stand_in(app));
    o.timeout = Duration::from_millis(200);
    o.retries = 1;
    let mut e = OpenAiEngine::new(o).unwrap();
    let err = e
        .loglikelihood(&request(), &mut |_| {})
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("timed out") && err.contains("2 attempts"),
        "{err}"
    );
    assert!(err.starts_with("m at http://127.0.0.1:"), "{err}");
}

#[test]
fn a_bad_request_is_not_retried_and_keeps_the_servers_message() {
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let app = Router::new().route(
        "/v1/completions",
        post(move || {
            c.fetch_add(1, Ordering::SeqCst);
            async {
                (
                    StatusCode::BAD_REQUEST,
                    axum::Json(serde_json::json!({"error": {"message": "prompt too long"}})),
                )
            }
        }),
    );
    let mut e = OpenAiEngine::new(opts(&stand_in(app))).unwrap();
    let err = e
        .loglikelihood(&request(), &mut |_| {})
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("400") && err.contains("prompt too long"),
        "{err}"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

fn judge_chat() -> Vec<galley_core::engine::ChatRequest> {
    vec![galley_core::engine::ChatRequest {
        messages: vec![
            galley_core::Message::new("system", "be terse"),
            galley_core::Message::new("user", "Score: 1 to 10?"),
        ],
        until: vec!["\n\n".into()],
        max_tokens: 16,
        temperature: 0.0,
        seed: 0,
        json_schema: None,
        tools: None,
    }]
}

#[test]
fn anthropics_messages_api_is_spoken_and_a_busy_answer_retried() {
    use axum::http::HeaderMap;
    let seen = Arc::new(std::sync::Mutex::new(Vec::<serde_json::Value>::new()));
    let calls = Arc::new(AtomicUsize::new(0));
    let (s2, c2) = (seen.clone(), calls.clone());
    let app = Router::new().route(
        "/v1/messages",
        post(
            move |h: HeaderMap, axum::Json(body): axum::Json<serde_json::Value>| {
                let (s2, c2) = (s2.clone(), c2.clone());
                async move {
                    assert_eq!(h["x-api-key"], "sk-test");
                    assert_eq!(h["anthropic-version"], "2023-06-01");
                    s2.lock().unwrap().push(body);
                    if c2.fetch_add(1, Ordering::SeqCst) == 0 {
                        return (StatusCode::TOO_MANY_REQUESTS, "slow down").into_response();
                    }
                    axum::Json(serde_json::json!({
                    "content": [{"type": "text", "text": "Score: 7"}], "stop_reason": "max_tokens",
                    "usage": {"input_tokens": 12, "output_tokens": 4}}))
                    .into_response()
                }
            },
        ),
    );
    let url = stand_in(app).trim_end_matches("/v1").to_string();
    let mut o = opts(&url);
    o.model = "claude-test".into();
    o.api_key = Some("sk-test".into());
    let mut e =
        galley_serve::chat_apis::ChatApiEngine::new(galley_serve::chat_apis::Api::Anthropic, o)
            .unwrap();
    let r = e.chat(&judge_chat(), &mut |_| {}).unwrap();
    assert_eq!((r[0].text.as_str(), r[0].tokens), ("Score: 7", 4));
    assert!(
        r[0].truncated,
        "Anthropic's `max_tokens` stop is a cut answer"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    let body = seen.lock().unwrap()[1].clone();
    assert_eq!(body["model"], "claude-test");
    assert_eq!(body["system"], "be terse");
    assert_eq!(
        body["messages"],
        serde_json::json!([{"role": "user", "content": "Score: 1 to 10?"}])
    );
    assert_eq!(body["stop_sequences"], serde_json::json!(["\n\n"]));
    assert_eq!(body["max_tokens"], 16);
    // No log-likelihoods from a chat API: said, not faked.
    let err = e
        .loglikelihood(&request(), &mut |_| {})
        .unwrap_err()
        .to_string();
    assert!(err.contains("no prompt log-likelihoods"), "{err}");
}

#[test]
fn vertex_generate_content_is_spoken() {
    use axum::extract::Path as UrlPath;
    use axum::http::HeaderMap;
    let seen = Arc::new(std::sync::Mutex::new(None::<(String, serde_json::Value)>));
    let s2 = seen.clone();
    let app = Router::new().route(
        "/v1/projects/p/locations/l/publishers/google/models/{call}",
        post(move |UrlPath(call): UrlPath<String>, h: HeaderMap, axum::Json(body): axum::Json<serde_json::Value>| {
            let s2 = s2.clone();
            async move {
                assert_eq!(h["authorization"], "Bearer tok");
                *s2.lock().unwrap() = Some((call, body));
                axum::Json(serde_json::json!({
                    "candidates": [{"content": {"role": "model", "parts": [{"text": "Score: "}, {"text": "9"}]}, "finishReason": "STOP"}],
                    "usageMetadata": {"promptTokenCount": 9, "candidatesTokenCount": 2}}))
            }
        }),
    );
    let base = stand_in(app) + "/projects/p/locations/l/publishers/google/models";
    let mut o = opts(&base);
    o.model = "gemini-test".into();
    o.api_key = Some("tok".into());
    let mut e =
        galley_serve::chat_apis::ChatApiEngine::new(galley_serve::chat_apis::Api::Vertex, o)
            .unwrap();
    let r = e.chat(&judge_chat(), &mut |_| {}).unwrap();
    assert_eq!((r[0].text.as_str(), r[0].tokens), ("Score: 9", 2));
    assert!(!r[0].truncated, "Gemini's `STOP` is a finished answer");
    let (call, body) = seen.lock().unwrap().clone().unwrap();
    assert_eq!(call, "gemini-test:generateContent");
    assert_eq!(
        body["contents"],
        serde_json::json!([{"role": "user", "parts": [{"text": "Score: 1 to 10?"}]}])
    );
    assert_eq!(body["systemInstruction"]["parts"][0]["text"], "be terse");
    assert_eq!(body["generationConfig"]["maxOutputTokens"], 16);
    assert_eq!(
        body["generationConfig"]["stopSequences"],
        serde_json::json!(["\n\n"])
    );
}

fn tools_chat() -> Vec<galley_core::engine::ChatRequest> {
    let mut r = judge_chat();
    r[0].tools = Some(
        r#"[{"type": "function", "function": {"name": "get_weather", "description": "Weather in a city.",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]"#
            .into(),
    );
    r
}

/// Tools through Anthropic's Messages API: sent as `tools` with `input_schema`, the answer's
/// `tool_use` blocks returned as calls beside its text.
#[test]
fn anthropic_takes_tools_and_returns_tool_use_as_calls() {
    let seen = Arc::new(std::sync::Mutex::new(None::<serde_json::Value>));
    let s2 = seen.clone();
    let app = Router::new().route(
        "/v1/messages",
        post(move |axum::Json(body): axum::Json<serde_json::Value>| {
            let s2 = s2.clone();
            async move {
                *s2.lock().unwrap() = Some(body);
                axum::Json(serde_json::json!({"content": [
                    {"type": "text", "text": "Let me look."},
                    {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}}],
                    "usage": {"output_tokens": 9}}))
            }
        }),
    );
    let url = stand_in(app).trim_end_matches("/v1").to_string();
    let mut e = galley_serve::chat_apis::ChatApiEngine::new(
        galley_serve::chat_apis::Api::Anthropic,
        opts(&url),
    )
    .unwrap();
    let r = e.chat(&tools_chat(), &mut |_| {}).unwrap();
    assert_eq!(r[0].text, "Let me look.");
    assert_eq!(r[0].tool_calls.len(), 1);
    let c = &r[0].tool_calls[0];
    assert_eq!(
        (c.id.as_deref(), c.name.as_str()),
        (Some("toolu_1"), "get_weather")
    );
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&c.arguments).unwrap(),
        serde_json::json!({"city": "Paris"})
    );
    let body = seen.lock().unwrap().clone().unwrap();
    assert_eq!(
        body["tools"],
        serde_json::json!([{"name": "get_weather", "description": "Weather in a city.",
            "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}])
    );
    // A tools list without names is refused before anything is sent.
    let mut bad = tools_chat();
    bad[0].tools = Some(r#"[{"type": "function", "function": {"description": "x"}}]"#.into());
    let err = e.chat(&bad, &mut |_| {}).unwrap_err().to_string();
    assert!(err.contains("tools[0] has no function name"), "{err}");
}

/// Tools through Gemini's `generateContent`: `functionDeclarations` out, `functionCall`
/// parts back (Gemini gives calls no id).
#[test]
fn vertex_takes_tools_and_returns_function_calls() {
    use axum::extract::Path as UrlPath;
    let seen = Arc::new(std::sync::Mutex::new(None::<serde_json::Value>));
    let s2 = seen.clone();
    let app = Router::new().route(
        "/v1/models/{call}",
        post(
            move |UrlPath(_call): UrlPath<String>,
                  axum::Json(body): axum::Json<serde_json::Value>| {
                let s2 = s2.clone();
                async move {
                    *s2.lock().unwrap() = Some(body);
                    axum::Json(
                        serde_json::json!({"candidates": [{"content": {"role": "model", "parts": [
                    {"functionCall": {"name": "get_weather", "args": {"city": "Oslo"}}},
                    {"functionCall": {"name": "get_weather", "args": {"city": "Rome"}}}]}}]}),
                    )
                }
            },
        ),
    );
    let base = stand_in(app) + "/models";
    let mut e = galley_serve::chat_apis::ChatApiEngine::new(
        galley_serve::chat_apis::Api::Vertex,
        opts(&base),
    )
    .unwrap();
    let r = e.chat(&tools_chat(), &mut |_| {}).unwrap();
    assert_eq!(r[0].text, "");
    let cities: Vec<serde_json::Value> = r[0]
        .tool_calls
        .iter()
        .map(|c| serde_json::from_str::<serde_json::Value>(&c.arguments).unwrap()["city"].clone())
        .collect();
    assert_eq!(
        cities,
        [serde_json::json!("Oslo"), serde_json::json!("Rome")]
    );
    assert!(
        r[0].tool_calls
            .iter()
            .all(|c| c.id.is_none() && c.name == "get_weather")
    );
    let body = seen.lock().unwrap().clone().unwrap();
    assert_eq!(
        body["tools"][0]["functionDeclarations"][0]["name"],
        "get_weather"
    );
    assert_eq!(
        body["tools"][0]["functionDeclarations"][0]["parameters"]["required"],
        serde_json::json!(["city"])
    );
}

/// An OpenAI-compatible server's `finish_reason: length` marks a cut answer (what a synth
/// grader's `truncated` reads); `stop` a finished one.
#[test]
fn an_openai_length_finish_is_a_cut_answer() {
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let app = Router::new().route(
        "/v1/chat/completions",
        post(move || {
            let n = c.fetch_add(1, Ordering::SeqCst);
            async move {
                let reason = if n == 0 { "length" } else { "stop" };
                axum::Json(serde_json::json!({"choices": [{"index": 0, "message":
                    {"role": "assistant", "content": "Score: 3"}, "finish_reason": reason}],
                    "usage": {"prompt_tokens": 5, "completion_tokens": 3}}))
            }
        }),
    );
    let mut e = OpenAiEngine::new(opts(&stand_in(app))).unwrap();
    let first = e.chat(&judge_chat(), &mut |_| {}).unwrap();
    let second = e.chat(&judge_chat(), &mut |_| {}).unwrap();
    assert!(first[0].truncated && !second[0].truncated);
}
