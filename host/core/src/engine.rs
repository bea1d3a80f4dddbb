//! The engine trait: what evaluation, judging and data generation need from a language
//! model, and nothing about where it runs. The native engine (galley-model) implements it over
//! the host's own weights; remote engines (OpenAI-compatible servers and others) implement the
//! same calls, so `galley eval` and `galley judge` take any of them.
//!
//! The requests are lm-evaluation-harness's: a (context, continuation) pair scored by the
//! log-probability of the continuation, and a prompt continued greedily or by sampling until a
//! stop string. Batching is the engine's business: callers hand over whole lists.

use crate::data::Message;

/// Score `continuation` after `context`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LoglikelihoodRequest {
    pub context: String,
    pub continuation: String,
}

/// The continuation's log-probability under the model.
#[derive(Debug, Clone, PartialEq)]
pub struct Loglikelihood {
    /// Sum of the continuation tokens' log-probabilities (natural log).
    pub logprob: f64,
    /// Whether greedy decoding from the context would produce exactly the continuation.
    pub greedy: bool,
    /// Per continuation token, its log-probability.
    pub token_logprobs: Vec<f32>,
}

/// Continue `prompt`.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerateRequest {
    pub prompt: String,
    /// Generation stops at the first of these (which is cut off), or at end of sequence.
    pub until: Vec<String>,
    pub max_tokens: usize,
    /// 0 is greedy.
    pub temperature: f32,
    pub seed: u64,
    /// A JSON schema (its JSON text, properties in the order written) the answer is held to:
    /// one object that validates. An engine that cannot hold to one refuses the request.
    pub json_schema: Option<String>,
}

/// Answer a conversation (it ends with the user's turn) as the assistant.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatRequest {
    pub messages: Vec<Message>,
    pub until: Vec<String>,
    pub max_tokens: usize,
    /// 0 is greedy.
    pub temperature: f32,
    pub seed: u64,
    /// As [`GenerateRequest::json_schema`].
    pub json_schema: Option<String>,
    /// Functions the model may call, as the JSON text of OpenAI's list (`[{"type":
    /// "function", "function": {"name", "description", "parameters"}}]`; text, as
    /// `json_schema` is, so the properties keep the order they are shown in): shown to the
    /// model by its chat template (or sent to a remote API), its calls returned in
    /// [`Generated::tool_calls`]. An engine that cannot show them refuses the request.
    pub tools: Option<String>,
}

impl ChatRequest {
    /// The request as a continuation of `prompt`, the conversation as the model's template
    /// rendered it.
    pub fn continuing(&self, prompt: String) -> GenerateRequest {
        GenerateRequest {
            prompt,
            until: self.until.clone(),
            max_tokens: self.max_tokens,
            temperature: self.temperature,
            seed: self.seed,
            json_schema: self.json_schema.clone(),
        }
    }
}

/// A continuation.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Generated {
    /// The text; for a chat request with tools, the text around the model's calls.
    pub text: String,
    pub tokens: usize,
    /// The calls a chat request with tools was answered with.
    pub tool_calls: Vec<crate::ToolCall>,
    /// The token budget cut the answer (OpenAI's `finish_reason: length`, Anthropic's
    /// `max_tokens`, Gemini's `MAX_TOKENS`).
    pub truncated: bool,
}

/// Why an engine call failed, in one line naming the engine.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{engine}: {message}")]
pub struct EngineError {
    pub engine: String,
    pub message: String,
}

impl EngineError {
    pub fn new(engine: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            engine: engine.into(),
            message: message.into(),
        }
    }
}

/// Told how many requests of the current call are done (a running count).
pub type Progress<'a> = dyn FnMut(usize) + 'a;

/// A language model that can score and continue text.
pub trait Engine: Send {
    /// What results should record: a path, a model id, a URL.
    fn name(&self) -> &str;
    /// One result per request, in order.
    fn loglikelihood(
        &mut self,
        requests: &[LoglikelihoodRequest],
        progress: &mut Progress<'_>,
    ) -> Result<Vec<Loglikelihood>, EngineError>;
    /// Each text's log-probability as a whole, with nothing before it but the model's
    /// start-of-text token: lm-evaluation-harness's `loglikelihood_rolling` (perplexity
    /// tasks). The default scores each text as one empty-context request, which fits a text
    /// within the model's context; the native engine scores a longer one in the harness's
    /// rolling windows.
    fn loglikelihood_rolling(
        &mut self,
        texts: &[String],
        progress: &mut Progress<'_>,
    ) -> Result<Vec<Loglikelihood>, EngineError> {
        let requests: Vec<LoglikelihoodRequest> = texts
            .iter()
            .map(|t| LoglikelihoodRequest {
                context: String::new(),
                continuation: t.clone(),
            })
            .collect();
        self.loglikelihood(&requests, progress)
    }
    /// One result per request, in order.
    fn generate(
        &mut self,
        requests: &[GenerateRequest],
        progress: &mut Progress<'_>,
    ) -> Result<Vec<Generated>, EngineError>;
    /// `messages` rendered with the model's chat template, ending with the assistant's turn
    /// opened; an error when the model has none.
    fn apply_chat_template(&self, messages: &[Message]) -> Result<String, EngineError>;
    /// One reply per conversation, in order. The default renders the chat template and
    /// generates; an engine behind a chat API (a remote one) answers directly.
    fn chat(
        &mut self,
        requests: &[ChatRequest],
        progress: &mut Progress<'_>,
    ) -> Result<Vec<Generated>, EngineError> {
        if requests.iter().any(|r| r.tools.is_some()) {
            return Err(EngineError::new(
                self.name(),
                "this engine cannot show a model tools (use the native engine or an OpenAI-compatible server)",
            ));
        }
        let prompts = requests
            .iter()
            .map(|r| Ok(r.continuing(self.apply_chat_template(&r.messages)?)))
            .collect::<Result<Vec<_>, EngineError>>()?;
        self.generate(&prompts, progress)
    }
}
