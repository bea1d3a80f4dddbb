//! The chat-only remote engines: Anthropic's Messages API and Vertex AI's Gemini
//! `generateContent`. Both answer conversations (`Engine::chat`; a judge's, a generation's)
//! and take tools (Anthropic's `tools` and `tool_use` blocks, Gemini's `functionDeclarations`
//! and `functionCall` parts; a tool's parameters go as a JSON value, keys sorted); a plain
//! prompt is sent as one user turn. Neither offers prompt log-likelihoods, so scoring
//! tasks ask for an engine that does. Transport, retries (429/5xx with backoff), timeouts and
//! concurrency are `remote::OpenAiEngine`'s; only the request and answer shapes differ.

use crate::remote::{OpenAiEngine, RemoteOptions};
use galley_core::Message;
use galley_core::engine::{
    ChatRequest, Engine, EngineError, GenerateRequest, Generated, Loglikelihood,
    LoglikelihoodRequest, Progress,
};
use serde_json::{Value, json};

/// Which chat API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    /// `POST {base}/v1/messages`, `x-api-key` and `anthropic-version` headers.
    Anthropic,
    /// `POST {base}/{model}:generateContent`, the base being Vertex's
    /// `.../projects/P/locations/L/publishers/google/models` (bearer token) or the Gemini API's
    /// `.../v1beta/models`.
    Vertex,
}

pub struct ChatApiEngine {
    api: Api,
    http: OpenAiEngine,
    name: String,
}

/// The function objects of an OpenAI tools list (`[{"type": "function", "function": {...}}]`,
/// or the functions themselves), each with at least a name.
fn functions_of(text: &str) -> Result<Vec<Value>, String> {
    let v: Value = serde_json::from_str(text).map_err(|e| format!("tools is not JSON: {e}"))?;
    let items = v.as_array().ok_or("tools is not a list")?;
    items
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let f = t.get("function").unwrap_or(t);
            match f.get("name").and_then(Value::as_str) {
                Some(_) => Ok(f.clone()),
                None => Err(format!("tools[{i}] has no function name")),
            }
        })
        .collect()
}

impl ChatApiEngine {
    /// The calls in an answer: Anthropic's `tool_use` blocks, Gemini's `functionCall` parts.
    fn tool_calls(&self, v: &Value) -> Result<Vec<galley_core::ToolCall>, EngineError> {
        let parts = match self.api {
            Api::Anthropic => v["content"].as_array(),
            Api::Vertex => v["candidates"][0]["content"]["parts"].as_array(),
        };
        let mut calls = vec![];
        for p in parts.into_iter().flatten() {
            let (id, call) = match self.api {
                Api::Anthropic if p["type"] == "tool_use" => (p["id"].as_str(), p),
                Api::Vertex if p.get("functionCall").is_some() => (None, &p["functionCall"]),
                _ => continue,
            };
            let name = call["name"]
                .as_str()
                .ok_or_else(|| self.http.err("a tool call without a name"))?;
            let args = match self.api {
                Api::Anthropic => &call["input"],
                Api::Vertex => &call["args"],
            };
            calls.push(galley_core::ToolCall {
                id: id.map(str::to_string),
                name: name.to_string(),
                arguments: if args.is_null() {
                    "{}".into()
                } else {
                    args.to_string()
                },
            });
        }
        Ok(calls)
    }

    pub fn new(api: Api, opts: RemoteOptions) -> Result<Self, EngineError> {
        let name = format!("{} ({:?}) at {}", opts.model, api, opts.base_url);
        Ok(Self {
            api,
            http: OpenAiEngine::new(opts)?,
            name,
        })
    }

    fn reply(&self, r: &ChatRequest) -> Result<Generated, EngineError> {
        let o = self.http.options();
        let key = o.api_key.clone().unwrap_or_default();
        // A system turn travels apart in both APIs.
        let system: Vec<&str> = r
            .messages
            .iter()
            .filter(|m| m.role == "system")
            .map(|m| m.content.as_str())
            .collect();
        let turns = r.messages.iter().filter(|m| m.role != "system");
        let functions = match &r.tools {
            Some(text) => Some(functions_of(text).map_err(|e| self.http.err(e))?),
            None => None,
        };
        let v = match self.api {
            Api::Anthropic => {
                let mut body = json!({
                    "model": o.model, "max_tokens": r.max_tokens, "temperature": r.temperature,
                    "messages": turns.map(|m| json!({"role": m.role, "content": m.content})).collect::<Vec<_>>(),
                });
                if !system.is_empty() {
                    body["system"] = json!(system.join("\n"));
                }
                if !r.until.is_empty() {
                    body["stop_sequences"] = json!(r.until);
                }
                if let Some(fns) = &functions {
                    // Anthropic's tool: the function's name and description, its parameters
                    // as `input_schema`.
                    let tools: Vec<Value> = fns
                        .iter()
                        .map(|f| {
                            let mut t = json!({"name": f["name"], "input_schema": f
                                .get("parameters")
                                .cloned()
                                .unwrap_or(json!({"type": "object", "properties": {}}))});
                            if let Some(d) = f.get("description") {
                                t["description"] = d.clone();
                            }
                            t
                        })
                        .collect();
                    body["tools"] = json!(tools);
                }
                let headers = [
                    ("x-api-key", key),
                    ("anthropic-version", "2023-06-01".to_string()),
                ];
                self.http.post_with("/v1/messages", &body, &headers)?
            }
            Api::Vertex => {
                let contents: Vec<Value> = turns
                    .map(|m| {
                        let role = if m.role == "assistant" {
                            "model"
                        } else {
                            "user"
                        };
                        json!({"role": role, "parts": [{"text": m.content}]})
                    })
                    .collect();
                let mut config =
                    json!({"maxOutputTokens": r.max_tokens, "temperature": r.temperature});
                if !r.until.is_empty() {
                    config["stopSequences"] = json!(r.until);
                }
                let mut body = json!({"contents": contents, "generationConfig": config});
                if !system.is_empty() {
                    body["systemInstruction"] = json!({"parts": [{"text": system.join("\n")}]});
                }
                if let Some(fns) = &functions {
                    body["tools"] = json!([{"functionDeclarations": fns}]);
                }
                let headers: Vec<(&str, String)> = if key.is_empty() {
                    Vec::new()
                } else {
                    vec![("authorization", format!("Bearer {key}"))]
                };
                self.http
                    .post_with(&format!("/{}:generateContent", o.model), &body, &headers)?
            }
        };
        let tool_calls = self.tool_calls(&v)?;
        let (text, tokens) = match self.api {
            Api::Anthropic => (
                v["content"]
                    .as_array()
                    .map(|parts| {
                        parts
                            .iter()
                            .filter(|p| p["type"] == "text")
                            .filter_map(|p| p["text"].as_str())
                            .collect::<String>()
                    })
                    .ok_or_else(|| self.http.err("the answer has no `content`"))?,
                v["usage"]["output_tokens"].as_u64(),
            ),
            Api::Vertex => (
                v["candidates"][0]["content"]["parts"]
                    .as_array()
                    .map(|parts| {
                        parts
                            .iter()
                            .filter_map(|p| p["text"].as_str())
                            .collect::<String>()
                    })
                    .ok_or_else(|| self.http.err("the answer has no candidate"))?,
                v["usageMetadata"]["candidatesTokenCount"].as_u64(),
            ),
        };
        let truncated = match self.api {
            Api::Anthropic => v["stop_reason"] == "max_tokens",
            Api::Vertex => v["candidates"][0]["finishReason"] == "MAX_TOKENS",
        };
        Ok(Generated {
            text,
            tokens: tokens.unwrap_or(0) as usize,
            tool_calls,
            truncated,
        })
    }
}

impl Engine for ChatApiEngine {
    fn name(&self) -> &str {
        &self.name
    }

    fn loglikelihood(
        &mut self,
        _requests: &[LoglikelihoodRequest],
        _progress: &mut Progress<'_>,
    ) -> Result<Vec<Loglikelihood>, EngineError> {
        Err(EngineError::new(
            &self.name,
            "this API offers no prompt log-likelihoods: score multiple-choice tasks with a local model or an OpenAI-compatible server",
        ))
    }

    fn generate(
        &mut self,
        requests: &[GenerateRequest],
        progress: &mut Progress<'_>,
    ) -> Result<Vec<Generated>, EngineError> {
        let chats: Vec<ChatRequest> = requests
            .iter()
            .map(|r| ChatRequest {
                messages: vec![Message::new("user", r.prompt.clone())],
                until: r.until.clone(),
                max_tokens: r.max_tokens,
                temperature: r.temperature,
                seed: r.seed,
                json_schema: r.json_schema.clone(),
                tools: None,
            })
            .collect();
        self.chat(&chats, progress)
    }

    fn chat(
        &mut self,
        requests: &[ChatRequest],
        progress: &mut Progress<'_>,
    ) -> Result<Vec<Generated>, EngineError> {
        if requests.iter().any(|r| r.json_schema.is_some()) {
            return Err(EngineError::new(
                self.name(),
                "this API is not given a JSON schema by galley yet; hold answers to one with a local model",
            ));
        }
        self.http.parallel(requests, progress, |r| self.reply(r))
    }

    fn apply_chat_template(&self, _messages: &[Message]) -> Result<String, EngineError> {
        Err(EngineError::new(
            &self.name,
            "a chat API applies its own template; send conversations",
        ))
    }
}
