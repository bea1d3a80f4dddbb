//! A remote engine: any OpenAI-compatible server (vLLM, SGLang, llama.cpp's server, `galley
//! serve`, OpenAI) behind galley-core's `Engine`, so `galley eval` runs on it. Log-likelihoods
//! go through `/v1/completions` with `echo` and `logprobs` (lm-evaluation-harness's
//! `local-completions` way): the continuation is the tokens whose text offset is at or past
//! the context's end, greedy when each was its position's top choice. Generation goes through
//! `/v1/completions`, conversations (a judge's) through `/v1/chat/completions`. Requests run `concurrency` at a time; a 429 or 5xx answer is retried with
//! exponential backoff (a `Retry-After` header wins), and every call has a timeout.

use galley_core::Message;
use galley_core::engine::{
    ChatRequest, Engine, EngineError, GenerateRequest, Generated, Loglikelihood,
    LoglikelihoodRequest, Progress,
};
use serde_json::value::RawValue;
use serde_json::{Value, json};
use std::time::Duration;

/// How to reach an OpenAI-compatible server.
#[derive(Debug, Clone)]
pub struct RemoteOptions {
    /// Up to and including `/v1` (`http://127.0.0.1:8080/v1`).
    pub base_url: String,
    pub model: String,
    /// Sent as a bearer token when set (read from an environment variable by the caller).
    pub api_key: Option<String>,
    pub timeout: Duration,
    /// Attempts after the first on 429, 5xx and connection errors.
    pub retries: u32,
    /// Requests in flight at once.
    pub concurrency: usize,
    /// First backoff; it doubles per attempt.
    pub backoff: Duration,
}

impl RemoteOptions {
    pub fn new(base_url: impl Into<String>, model: impl Into<String>) -> Self {
        Self {
            base_url: base_url.into().trim_end_matches('/').to_string(),
            model: model.into(),
            api_key: None,
            timeout: Duration::from_secs(120),
            retries: 4,
            concurrency: 8,
            backoff: Duration::from_millis(250),
        }
    }
}

pub struct OpenAiEngine {
    opts: RemoteOptions,
    client: reqwest::blocking::Client,
    name: String,
}

impl OpenAiEngine {
    pub fn new(opts: RemoteOptions) -> Result<Self, EngineError> {
        let name = format!("{} at {}", opts.model, opts.base_url);
        let client = reqwest::blocking::Client::builder()
            .timeout(opts.timeout)
            .build()
            .map_err(|e| EngineError::new(&name, e.to_string()))?;
        Ok(Self { opts, client, name })
    }

    pub(crate) fn err(&self, m: impl Into<String>) -> EngineError {
        EngineError::new(&self.name, m)
    }

    /// POSTs `body` to `path` with the key as a bearer token.
    fn post(&self, path: &str, body: &impl serde::Serialize) -> Result<Value, EngineError> {
        let auth: Vec<(&str, String)> = self
            .opts
            .api_key
            .iter()
            .map(|k| ("authorization", format!("Bearer {k}")))
            .collect();
        self.post_with(path, body, &auth)
    }

    /// POSTs `body` to `path` with `headers`, retrying what a busy or failing server answers
    /// (the other chat APIs share this: `chat_apis`).
    pub(crate) fn post_with(
        &self,
        path: &str,
        body: &impl serde::Serialize,
        headers: &[(&str, String)],
    ) -> Result<Value, EngineError> {
        let url = format!("{}{path}", self.opts.base_url);
        let mut attempt = 0;
        loop {
            let mut req = self.client.post(&url).json(body);
            for (k, v) in headers {
                req = req.header(*k, v);
            }
            let wait = match req.send() {
                Ok(r) if r.status().is_success() => {
                    return r
                        .json::<Value>()
                        .map_err(|e| self.err(format!("{url}: not JSON: {e}")));
                }
                Ok(r) if r.status().as_u16() == 429 || r.status().is_server_error() => {
                    let after = r
                        .headers()
                        .get("retry-after")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.parse::<f64>().ok())
                        .map(Duration::from_secs_f64);
                    let status = r.status();
                    if attempt >= self.opts.retries {
                        return Err(self.err(format!(
                            "{url}: {status} after {} attempts: {}",
                            attempt + 1,
                            r.text().unwrap_or_default()
                        )));
                    }
                    after.unwrap_or(self.opts.backoff * 2u32.pow(attempt))
                }
                Ok(r) => {
                    let status = r.status();
                    let text = r.text().unwrap_or_default();
                    let msg = serde_json::from_str::<Value>(&text)
                        .ok()
                        .and_then(|v| v["error"]["message"].as_str().map(String::from))
                        .unwrap_or(text);
                    return Err(self.err(format!("{url}: {status}: {msg}")));
                }
                Err(e) => {
                    if attempt >= self.opts.retries {
                        let what = if e.is_timeout() {
                            format!("timed out after {:?}", self.opts.timeout)
                        } else {
                            e.to_string()
                        };
                        return Err(self.err(format!("{url}: {what} ({} attempts)", attempt + 1)));
                    }
                    self.opts.backoff * 2u32.pow(attempt)
                }
            };
            std::thread::sleep(wait);
            attempt += 1;
        }
    }

    pub(crate) fn options(&self) -> &RemoteOptions {
        &self.opts
    }

    /// Runs `f` over `items`, `concurrency` at a time, results in order.
    pub(crate) fn parallel<T: Sync, R: Send>(
        &self,
        items: &[T],
        progress: &mut Progress<'_>,
        f: impl Fn(&T) -> Result<R, EngineError> + Sync,
    ) -> Result<Vec<R>, EngineError> {
        let mut out = Vec::with_capacity(items.len());
        for chunk in items.chunks(self.opts.concurrency.max(1)) {
            let results: Vec<Result<R, EngineError>> = std::thread::scope(|s| {
                let handles: Vec<_> = chunk.iter().map(|it| s.spawn(|| f(it))).collect();
                handles
                    .into_iter()
                    .map(|h| {
                        h.join()
                            .unwrap_or_else(|_| Err(self.err("a request thread panicked")))
                    })
                    .collect()
            });
            for r in results {
                out.push(r?);
            }
            progress(out.len());
        }
        Ok(out)
    }

    fn score(&self, r: &LoglikelihoodRequest) -> Result<Loglikelihood, EngineError> {
        let body = json!({"model": self.opts.model, "prompt": format!("{}{}", r.context, r.continuation),
                          "max_tokens": 0, "echo": true, "logprobs": 1, "temperature": 0});
        let v = self.post("/completions", &body)?;
        let lp = &v["choices"][0]["logprobs"];
        let (Some(tokens), Some(lps), Some(offsets)) = (
            lp["tokens"].as_array(),
            lp["token_logprobs"].as_array(),
            lp["text_offset"].as_array(),
        ) else {
            return Err(self.err(
                "the server's completion has no echo logprobs (tokens, token_logprobs, text_offset)",
            ));
        };
        // As the harness does: the context's trailing spaces belong to the continuation.
        let start = r.context.trim_end_matches(' ').len();
        let (mut sum, mut greedy, mut per) = (0.0, true, Vec::new());
        for i in 0..tokens.len() {
            if offsets[i].as_u64().unwrap_or(0) < start as u64 {
                continue;
            }
            let Some(l) = lps[i].as_f64() else {
                return Err(self.err("a continuation token without a logprob"));
            };
            sum += l;
            per.push(l as f32);
            // Greedy: no alternative at this position beats the token itself.
            if let Some(top) = lp["top_logprobs"][i].as_object() {
                let best = top
                    .values()
                    .filter_map(Value::as_f64)
                    .fold(f64::MIN, f64::max);
                greedy &= l >= best - 1e-6;
            }
        }
        if per.is_empty() {
            return Err(self.err(format!(
                "no token of the continuation {:?} came back",
                r.continuation
            )));
        }
        Ok(Loglikelihood {
            logprob: sum,
            greedy,
            token_logprobs: per,
        })
    }

    fn continue_text(&self, r: &GenerateRequest) -> Result<Generated, EngineError> {
        let mut body = json!({"model": self.opts.model, "prompt": r.prompt,
                              "max_tokens": r.max_tokens, "temperature": r.temperature,
                              "seed": r.seed});
        if !r.until.is_empty() {
            body["stop"] = json!(r.until);
        }
        let v = self.post("/completions", &body)?;
        let text = v["choices"][0]["text"]
            .as_str()
            .ok_or_else(|| self.err("the completion has no text"))?;
        // Servers cut at the stop string; cut again in case one returns it.
        let cut = r
            .until
            .iter()
            .filter_map(|s| text.find(s.as_str()))
            .min()
            .unwrap_or(text.len());
        Ok(Generated {
            text: text[..cut].to_string(),
            tokens: v["usage"]["completion_tokens"].as_u64().unwrap_or(0) as usize,
            tool_calls: vec![],
            truncated: v["choices"][0]["finish_reason"] == "length",
        })
    }
}

impl OpenAiEngine {
    /// A schema goes to the chat API only (`response_format` is not OpenAI's on completions).
    fn no_schema(&self) -> EngineError {
        self.err("a JSON schema goes through the server's chat API, not its completions; ask through chat")
    }

    fn reply(&self, r: &ChatRequest) -> Result<Generated, EngineError> {
        let messages: Vec<Value> = r
            .messages
            .iter()
            .map(|m| json!({"role": m.role, "content": m.content}))
            .collect();
        let mut body = json!({"model": self.opts.model, "messages": messages,
                              "max_tokens": r.max_tokens, "temperature": r.temperature,
                              "seed": r.seed});
        if !r.until.is_empty() {
            body["stop"] = json!(r.until);
        }
        // The schema and the tools go as written (a `Value` would sort their keys, and the
        // properties' order is the answer's, and what the model is shown).
        let raw = |text: &String, what: &str| {
            RawValue::from_string(text.clone())
                .map_err(|e| self.err(format!("{what} is not JSON: {e}")))
        };
        let schema = r
            .json_schema
            .as_ref()
            .map(|s| raw(s, "json_schema"))
            .transpose()?;
        let tools = r.tools.as_ref().map(|t| raw(t, "tools")).transpose()?;
        let with = WithExtras {
            body: &body,
            tools: tools.as_deref(),
            response_format: schema.as_deref().map(|schema| Format {
                kind: "json_schema",
                json_schema: Named {
                    name: "galley",
                    strict: true,
                    schema,
                },
            }),
        };
        let v = self.post("/chat/completions", &with)?;
        let message = &v["choices"][0]["message"];
        let tool_calls = match &message["tool_calls"] {
            Value::Null => vec![],
            Value::Array(calls) => calls
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    let f = &c["function"];
                    match (f["name"].as_str(), &f["arguments"]) {
                        (Some(name), Value::String(args)) => Ok(galley_core::ToolCall {
                            id: c["id"].as_str().map(str::to_string),
                            name: name.to_string(),
                            arguments: args.clone(),
                        }),
                        // Some servers send the arguments as an object.
                        (Some(name), args @ Value::Object(_)) => Ok(galley_core::ToolCall {
                            id: c["id"].as_str().map(str::to_string),
                            name: name.to_string(),
                            arguments: args.to_string(),
                        }),
                        _ => Err(self.err(format!(
                            "tool_calls[{i}] has no function name and arguments"
                        ))),
                    }
                })
                .collect::<Result<_, _>>()?,
            _ => return Err(self.err("the message's tool_calls is not a list")),
        };
        let text = match (message["content"].as_str(), tool_calls.is_empty()) {
            (Some(t), _) => t,
            // A message of calls has no content.
            (None, false) => "",
            (None, true) => return Err(self.err("the chat completion has no message content")),
        };
        Ok(Generated {
            text: text.to_string(),
            tokens: v["usage"]["completion_tokens"].as_u64().unwrap_or(0) as usize,
            tool_calls,
            truncated: v["choices"][0]["finish_reason"] == "length",
        })
    }
}

impl Engine for OpenAiEngine {
    fn name(&self) -> &str {
        &self.name
    }

    fn loglikelihood(
        &mut self,
        requests: &[LoglikelihoodRequest],
        progress: &mut Progress<'_>,
    ) -> Result<Vec<Loglikelihood>, EngineError> {
        self.parallel(requests, progress, |r| self.score(r))
    }

    fn generate(
        &mut self,
        requests: &[GenerateRequest],
        progress: &mut Progress<'_>,
    ) -> Result<Vec<Generated>, EngineError> {
        if requests.iter().any(|r| r.json_schema.is_some()) {
            return Err(self.no_schema());
        }
        self.parallel(requests, progress, |r| self.continue_text(r))
    }

    /// The server's chat API applies the model's template.
    fn chat(
        &mut self,
        requests: &[ChatRequest],
        progress: &mut Progress<'_>,
    ) -> Result<Vec<Generated>, EngineError> {
        self.parallel(requests, progress, |r| self.reply(r))
    }

    fn apply_chat_template(&self, _messages: &[Message]) -> Result<String, EngineError> {
        Err(self.err(
            "a remote completions API does not expose the model's chat template; evaluate without --apply-chat-template",
        ))
    }
}

/// A chat body with `tools` and OpenAI's `response_format: {"type": "json_schema", ...}`
/// beside its keys, each as written.
#[derive(serde::Serialize)]
struct WithExtras<'a> {
    #[serde(flatten)]
    body: &'a Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    tools: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    response_format: Option<Format<'a>>,
}

#[derive(serde::Serialize)]
struct Format<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    json_schema: Named<'a>,
}

#[derive(serde::Serialize)]
struct Named<'a> {
    name: &'static str,
    strict: bool,
    schema: &'a RawValue,
}
