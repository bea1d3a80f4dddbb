//! What a request to the API may say, read and checked: the bodies of
//! `/v1/chat/completions` and `/v1/completions`, their sampling parameters (OpenAI's, and the
//! `top_k`, `min_p`, `repetition_penalty` and `cache_salt` of llama.cpp's and vLLM's servers)
//! turned into galley's `SamplingParams`, JSON mode and JSON schemas (structured outputs), the
//! turns of a conversation with their tool calls and results (`tools` themselves are
//! [`crate::tools`]'), and what galley does not do — the legacy `functions`, schema keywords
//! it cannot enforce — refused by name rather than ignored.

use crate::api::{ApiError, Shared};
use galley_model::SamplingParams;
use galley_model::json_schema::{Guide, Json, Obj, Schema};
use serde::Deserialize;
use serde_json::{Value, json};

/// Reads a JSON body ourselves, so a malformed one gets OpenAI's error shape, naming the key.
pub(crate) fn parse<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, ApiError> {
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
pub(crate) enum Stop {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
#[serde(untagged)]
pub(crate) enum Content {
    Text(String),
    Parts(Vec<Part>),
}

#[derive(Deserialize)]
pub(crate) struct Part {
    #[serde(rename = "type")]
    pub(crate) kind: String,
    #[serde(default)]
    pub(crate) text: String,
}

#[derive(Deserialize)]
pub(crate) struct ChatMessage {
    pub(crate) role: String,
    #[serde(default)]
    pub(crate) content: Option<Content>,
    /// An assistant turn's calls, as an earlier answer returned them.
    pub(crate) tool_calls: Option<Vec<ToolCallIn>>,
    /// A tool turn: the call it answers.
    pub(crate) tool_call_id: Option<String>,
    pub(crate) name: Option<String>,
    /// An earlier answer's thinking, as galley (and vLLM, llama.cpp) returned it.
    pub(crate) reasoning_content: Option<String>,
}

#[derive(Deserialize)]
pub(crate) struct ToolCallIn {
    pub(crate) id: Option<String>,
    pub(crate) function: FunctionIn,
}

#[derive(Deserialize)]
pub(crate) struct FunctionIn {
    pub(crate) name: String,
    /// OpenAI's clients send the JSON text; some send the object.
    pub(crate) arguments: Json,
}

impl ChatMessage {
    /// The turn as galley's message: `content` as text (the text parts joined), calls'
    /// `arguments` as the JSON text the client sent (or the object it sent, written out).
    pub(crate) fn message(&self) -> galley_core::Message {
        let content = match &self.content {
            None => String::new(),
            Some(Content::Text(t)) => t.clone(),
            Some(Content::Parts(parts)) => parts
                .iter()
                .filter(|p| p.kind == "text")
                .map(|p| p.text.as_str())
                .collect::<Vec<_>>()
                .join(""),
        };
        let tool_calls = self
            .tool_calls
            .iter()
            .flatten()
            .map(|c| galley_core::ToolCall {
                id: c.id.clone(),
                name: c.function.name.clone(),
                arguments: match &c.function.arguments {
                    Json::String(t) => t.clone(),
                    other => other.to_text(),
                },
            })
            .collect();
        galley_core::Message {
            role: self.role.clone(),
            content,
            tool_calls,
            tool_call_id: self.tool_call_id.clone(),
            name: self.name.clone(),
            reasoning_content: self.reasoning_content.clone(),
        }
    }
}

#[derive(Deserialize)]
pub(crate) struct StreamOptions {
    #[serde(default)]
    pub(crate) include_usage: bool,
}

/// Sampling settings shared by both endpoints.
#[derive(Deserialize, Default)]
pub(crate) struct Sampling {
    pub(crate) temperature: Option<f32>,
    pub(crate) top_p: Option<f32>,
    pub(crate) top_k: Option<usize>,
    pub(crate) min_p: Option<f32>,
    pub(crate) repetition_penalty: Option<f32>,
    /// OpenAI's, over the tokens generated so far, in [-2, 2].
    pub(crate) frequency_penalty: Option<f32>,
    pub(crate) presence_penalty: Option<f32>,
    pub(crate) seed: Option<u64>,
    pub(crate) stop: Option<Stop>,
    pub(crate) n: Option<usize>,
    /// Token id (as a string, OpenAI's shape) -> bias added to its logit, in [-100, 100].
    pub(crate) logit_bias: Option<std::collections::HashMap<String, f32>>,
    /// Prompt-cache isolation (vLLM's field): kept prompts are reused only by requests with
    /// the same salt.
    pub(crate) cache_salt: Option<String>,
}

/// What a request adds to its jobs beyond sampling: its logit biases and cache salt.
pub(crate) struct Extras {
    pub(crate) bias: Vec<(u32, f32)>,
    pub(crate) cache_salt: Option<String>,
    /// JSON mode or a schema (`response_format`, chat only).
    pub(crate) json: Option<Guide>,
    /// A constraint waiting for a trigger (auto tool calls; JSON after thinking).
    pub(crate) lazy: Option<crate::lazy::Lazy>,
}

/// `logit_bias` and `cache_salt`, checked.
pub(crate) fn extras(s: &Shared, p: &Sampling) -> Result<Extras, ApiError> {
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
        json: None,
        lazy: None,
    })
}

/// `logit_bias` as (token, bias) pairs, checked.
pub(crate) fn logit_bias(s: &Shared, p: &Sampling) -> Result<Vec<(u32, f32)>, ApiError> {
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
pub(crate) struct ChatRequest {
    pub(crate) model: String,
    pub(crate) messages: Vec<ChatMessage>,
    pub(crate) max_tokens: Option<usize>,
    pub(crate) max_completion_tokens: Option<usize>,
    #[serde(default)]
    pub(crate) stream: bool,
    pub(crate) stream_options: Option<StreamOptions>,
    #[serde(default)]
    pub(crate) logprobs: bool,
    pub(crate) top_logprobs: Option<usize>,
    /// Refused unless absent or plain text (see [`refuse_unsupported`]).
    pub(crate) response_format: Option<Value>,
    // `tools`, `tool_choice` and `parallel_tool_calls` are read, in order, by
    // [`crate::tools::read`].
    /// Extra variables for the chat template (vLLM's and llama.cpp's: Qwen 3's
    /// `enable_thinking`...).
    pub(crate) chat_template_kwargs: Option<Json>,
    pub(crate) functions: Option<Value>,
    pub(crate) function_call: Option<Value>,
    #[serde(flatten)]
    pub(crate) sampling: Sampling,
}

#[derive(Deserialize)]
#[serde(untagged)]
pub(crate) enum Prompt {
    Text(String),
    Texts(Vec<String>),
    Ids(Vec<u32>),
    IdLists(Vec<Vec<u32>>),
}

#[derive(Deserialize)]
pub(crate) struct CompletionRequest {
    pub(crate) model: String,
    pub(crate) prompt: Prompt,
    pub(crate) max_tokens: Option<usize>,
    #[serde(default)]
    pub(crate) echo: bool,
    /// vLLM's: JSON mode or a schema on the legacy endpoint too.
    pub(crate) response_format: Option<Value>,
    pub(crate) logprobs: Option<usize>,
    #[serde(default)]
    pub(crate) stream: bool,
    pub(crate) stream_options: Option<StreamOptions>,
    #[serde(flatten)]
    pub(crate) sampling: Sampling,
}

/// The request's sampling parameters, checked, for `prompt_len` prompt tokens.
pub(crate) fn params(
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
        frequency_penalty: p.frequency_penalty.unwrap_or(0.0),
        presence_penalty: p.presence_penalty.unwrap_or(0.0),
        seed: p.seed.unwrap_or(0),
        max_tokens: max,
        stop: match &p.stop {
            None => Vec::new(),
            Some(Stop::One(s)) => vec![s.clone()],
            Some(Stop::Many(v)) => v.clone(),
        },
        stop_token_ids: Vec::new(),
        lookup: 0,
    };
    params.validate().map_err(|e| ApiError::bad(e, None))?;
    Ok(params)
}

pub(crate) fn n_of(p: &Sampling) -> Result<usize, ApiError> {
    let n = p.n.unwrap_or(1);
    if !(1..=16).contains(&n) {
        return Err(ApiError::bad(format!("n {n} is not in [1, 16]"), Some("n")));
    }
    Ok(n)
}

/// Refuses what galley cannot honour instead of answering as if it had: the legacy
/// `functions` and `function_call` (their answers have another shape; `tools` is the same
/// thing in today's shape) and a schema galley cannot enforce (the error names the keyword
/// and where it is). Returns what the answer is held to:
/// nothing, one JSON object (`response_format: json_object`) or one that follows
/// `response_format.json_schema.schema`, read from `body` so that its properties keep the
/// order they are written in.
pub(crate) fn refuse_unsupported(
    req: &ChatRequest,
    body: &[u8],
) -> Result<Option<Guide>, ApiError> {
    let asked = |v: &Option<Value>| match v {
        None | Some(Value::Null) => false,
        Some(Value::Array(a)) => !a.is_empty(),
        Some(Value::String(s)) => s != "none",
        Some(_) => true,
    };
    for (key, v) in [
        ("functions", &req.functions),
        ("function_call", &req.function_call),
    ] {
        if asked(v) {
            return Err(ApiError::bad(
                format!(
                    "`{key}` is OpenAI's deprecated form of `tools`, which galley serve takes instead"
                ),
                Some(key),
            ));
        }
    }
    response_format(req.response_format.as_ref(), body)
}

/// What `response_format` holds the answer to: nothing (absent or `text`), one JSON object
/// (`json_object`) or one that follows `json_schema.schema`, read from the raw `body` so that
/// its properties keep the order they are written in. An unknown type or a schema galley
/// cannot enforce is a 400 naming `response_format`.
pub(crate) fn response_format(f: Option<&Value>, body: &[u8]) -> Result<Option<Guide>, ApiError> {
    let Some(f) = f else {
        return Ok(None);
    };
    let bad = |m: String| ApiError::bad(m, Some("response_format"));
    match f.get("type").and_then(Value::as_str).unwrap_or_default() {
        "text" => Ok(None),
        "json_object" => Ok(Some(Guide::object())),
        "json_schema" => {
            #[derive(Deserialize)]
            struct Body {
                response_format: Format,
            }
            #[derive(Deserialize)]
            struct Format {
                json_schema: Option<Wrapper>,
            }
            #[derive(Deserialize)]
            struct Wrapper {
                schema: Option<Json>,
            }
            let b: Body =
                serde_json::from_slice(body).map_err(|e| bad(format!("`response_format`: {e}")))?;
            let schema = b
                .response_format
                .json_schema
                .and_then(|w| w.schema)
                .ok_or_else(|| bad("`response_format.json_schema.schema` is missing".into()))?;
            // Building a schema's pattern automata can take a while (bounded by their size
            // limits): not on a thread that polls other requests.
            let compiled = blocking(|| Schema::compile(&schema))
                .map_err(|e| bad(format!("`response_format`: {e}")))?;
            Ok(Some(Guide::schema(std::sync::Arc::new(compiled))))
        }
        kind => Err(bad(format!(
            "`response_format` type `{kind}` is not one galley serve knows (text, json_object, json_schema)"
        ))),
    }
}

/// `chat_template_kwargs`, checked: an object whose keys are not the template's own
/// variables (messages, tools, add_generation_prompt, bos_token, eos_token).
pub(crate) fn template_kwargs(k: Option<&Json>) -> Result<Option<&Obj>, ApiError> {
    let bad = |m: String| ApiError::bad(m, Some("chat_template_kwargs"));
    match k {
        None | Some(Json::Null) => Ok(None),
        Some(Json::Object(o)) => {
            const OWN: &[&str] = &[
                "messages",
                "tools",
                "add_generation_prompt",
                "bos_token",
                "eos_token",
            ];
            if let Some(k) = o.keys().find(|k| OWN.contains(&k.as_str())) {
                return Err(bad(format!(
                    "chat_template_kwargs: `{k}` is set by galley, not by the request"
                )));
            }
            Ok(Some(o))
        }
        Some(_) => Err(bad("chat_template_kwargs must be an object".into())),
    }
}

/// Runs `f` where blocking is allowed: on the server's multi-threaded runtime the worker hands
/// its other tasks on first; elsewhere (a test's runtime, no runtime) `f` just runs.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}

/// The keys of a request body that neither endpoint reads, for a warning in the server's
/// log (vLLM's behaviour): a client that sends a parameter galley does not know learns why
/// it had no effect. Keys OpenAI clients send that change nothing here are not listed.
pub(crate) fn ignored_keys(body: &[u8], chat: bool) -> Vec<String> {
    const SAMPLING: &[&str] = &[
        "temperature",
        "top_p",
        "top_k",
        "min_p",
        "repetition_penalty",
        "frequency_penalty",
        "presence_penalty",
        "seed",
        "stop",
        "n",
        "logit_bias",
        "cache_salt",
    ];
    const CHAT: &[&str] = &[
        "model",
        "messages",
        "max_tokens",
        "max_completion_tokens",
        "stream",
        "stream_options",
        "logprobs",
        "top_logprobs",
        "response_format",
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "chat_template_kwargs",
        "functions",
        "function_call",
    ];
    const COMPLETION: &[&str] = &[
        "model",
        "prompt",
        "max_tokens",
        "echo",
        "logprobs",
        "stream",
        "stream_options",
        "response_format",
    ];
    // Bookkeeping fields that do not change an answer.
    const HARMLESS: &[&str] = &["user", "metadata", "store", "service_tier"];
    let known = if chat { CHAT } else { COMPLETION };
    let Ok(serde_json::Value::Object(obj)) = serde_json::from_slice::<Value>(body) else {
        return Vec::new();
    };
    obj.keys()
        .filter(|k| {
            let k = k.as_str();
            !SAMPLING.contains(&k) && !known.contains(&k) && !HARMLESS.contains(&k)
        })
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chat(extra: Value) -> ChatRequest {
        let mut body = json!({"model": "m", "messages": []});
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        serde_json::from_value(body).unwrap()
    }

    #[test]
    fn legacy_functions_and_unenforceable_schemas_are_refused_by_name_and_json_output_is_asked() {
        for (extra, key) in [
            (json!({"functions": [{"name": "f"}]}), "functions"),
            (json!({"function_call": "auto"}), "function_call"),
            (
                json!({"response_format": {"type": "grammar"}}),
                "response_format",
            ),
            (
                json!({"response_format": {"type": "json_schema", "json_schema": {}}}),
                "response_format",
            ),
            (
                json!({"response_format": {"type": "json_schema", "json_schema": {"name": "x",
                    "schema": {"type": "object", "properties": {"n": {"type": "integer", "minimum": 0}}}}}}),
                "response_format",
            ),
        ] {
            let body = serde_json::to_vec(&extra_body(&extra)).unwrap();
            let e = refuse_unsupported(&chat(extra.clone()), &body).unwrap_err();
            assert_eq!(e.param.as_deref(), Some(key), "{extra}");
            assert!(e.message.contains(key), "{}", e.message);
        }
        let asked = |extra: Value| {
            let body = serde_json::to_vec(&extra_body(&extra)).unwrap();
            refuse_unsupported(&chat(extra), &body).ok()
        };
        for extra in [
            json!({"tools": []}),
            json!({"tool_choice": "none"}),
            json!({"response_format": {"type": "text"}}),
            json!({"tools": null}),
        ] {
            assert!(matches!(asked(extra.clone()), Some(None)), "{extra}");
        }
        assert!(matches!(
            asked(json!({"response_format": {"type": "json_object"}})),
            Some(Some(Guide::Object(_)))
        ));
        let schema = json!({"response_format": {"type": "json_schema", "json_schema": {"name": "p",
            "schema": {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}}}});
        assert!(matches!(asked(schema), Some(Some(Guide::Schema(..)))));
    }

    /// A chat body with `extra`'s keys.
    fn extra_body(extra: &Value) -> Value {
        let mut body = json!({"model": "m", "messages": []});
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        body
    }

    #[test]
    fn keys_no_endpoint_reads_are_named_and_harmless_ones_are_not() {
        let body = br#"{"model": "m", "messages": [], "user": "u", "temperature": 1,
                        "frequency_penalty": 0.5, "best_of": 2, "mirostat": 2}"#;
        assert_eq!(ignored_keys(body, true), ["best_of", "mirostat"]);
        // `echo` belongs to completions only.
        let body = br#"{"model": "m", "prompt": "p", "echo": true, "messages": []}"#;
        assert!(ignored_keys(body, false) == ["messages"]);
        assert_eq!(
            ignored_keys(br#"{"model": "m", "echo": true}"#, true),
            ["echo"]
        );
        // Completions read these (a warning said otherwise for stream_options).
        let body = br#"{"model": "m", "prompt": "p", "stream_options": {"include_usage": true},
                        "response_format": {"type": "json_object"}}"#;
        assert!(ignored_keys(body, false).is_empty());
    }
}
