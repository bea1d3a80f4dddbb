//! Plain data that flows between the host's rooms and across the plugin boundary.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// One chat message; `role` is free text ("system", "user", "assistant", "tool"...). An
/// assistant turn may carry tool calls and a tool turn the call it answers, as OpenAI's
/// messages and TRL's tool-calling datasets write them (absent keys stay absent on the wire).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Message {
    pub role: String,
    /// `null` or absent reads as empty: an assistant turn that only calls has no content.
    #[serde(default, deserialize_with = "null_as_empty")]
    pub content: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCall>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
    /// A tool turn's function name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// An assistant turn's thinking, apart from its content (as reasoning models' templates,
    /// Qwen 3's among them, read it back).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning_content: Option<String>,
}

fn null_as_empty<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    Ok(Option::<String>::deserialize(d)?.unwrap_or_default())
}

impl Message {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
            ..Self::default()
        }
    }
}

/// A function call in an assistant turn: `{"id", "type": "function", "function": {"name",
/// "arguments"}}` on the wire; `arguments` is kept as JSON text (OpenAI sends text, TRL's
/// datasets an object, which is written out as text here).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ToolCall {
    pub id: Option<String>,
    pub name: String,
    pub arguments: String,
}

impl Serialize for ToolCall {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut v = serde_json::json!({
            "type": "function",
            "function": {"name": self.name, "arguments": self.arguments},
        });
        if let Some(id) = &self.id {
            v["id"] = id.clone().into();
        }
        v.serialize(s)
    }
}

impl<'de> Deserialize<'de> for ToolCall {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct Wire {
            id: Option<String>,
            function: Function,
        }
        #[derive(Deserialize)]
        struct Function {
            name: String,
            #[serde(default)]
            arguments: serde_json::Value,
        }
        let w = Wire::deserialize(d)?;
        let arguments = match w.function.arguments {
            serde_json::Value::String(s) => s,
            serde_json::Value::Null => "{}".into(),
            other => other.to_string(),
        };
        Ok(ToolCall {
            id: w.id,
            name: w.function.name,
            arguments,
        })
    }
}

/// Puts `system` first in `messages` unless the conversation already opens with a system
/// message (a conversation's own system prompt wins over a default).
pub fn with_system(messages: &mut Vec<Message>, system: Option<&str>) {
    if let Some(s) = system
        && messages.first().is_none_or(|m| m.role != "system")
    {
        messages.insert(0, Message::new("system", s));
    }
}

/// A metadata value. Mirrors the WIT `value` variant so nothing is lost crossing the boundary;
/// nested arrays and objects travel as JSON text.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Text(String),
    /// An array or object, as JSON text.
    Json(String),
}

impl Value {
    /// The value as text if it is a string or a number (ground truths are often either).
    pub fn as_text(&self) -> Option<String> {
        match self {
            Value::Text(s) => Some(s.clone()),
            Value::Int(i) => Some(i.to_string()),
            Value::Float(f) => Some(f.to_string()),
            _ => None,
        }
    }

    pub fn to_json(&self) -> serde_json::Value {
        match self {
            Value::Null => serde_json::Value::Null,
            Value::Bool(b) => (*b).into(),
            Value::Int(i) => (*i).into(),
            Value::Float(f) => serde_json::Number::from_f64(*f)
                .map(serde_json::Value::Number)
                .unwrap_or(serde_json::Value::Null),
            Value::Text(s) => s.clone().into(),
            Value::Json(s) => serde_json::from_str(s).unwrap_or_else(|_| s.clone().into()),
        }
    }
}

impl From<serde_json::Value> for Value {
    fn from(v: serde_json::Value) -> Self {
        match v {
            serde_json::Value::Null => Value::Null,
            serde_json::Value::Bool(b) => Value::Bool(b),
            serde_json::Value::Number(n) => match n.as_i64() {
                Some(i) => Value::Int(i),
                None => Value::Float(n.as_f64().unwrap_or(f64::NAN)),
            },
            serde_json::Value::String(s) => Value::Text(s),
            other => Value::Json(other.to_string()),
        }
    }
}

impl Serialize for Value {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.to_json().serialize(s)
    }
}

impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        serde_json::Value::deserialize(d).map(Value::from)
    }
}

/// Every column of an example other than its conversation, in a stable order.
pub type Metadata = BTreeMap<String, Value>;

/// One training or evaluation example.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Example {
    #[serde(default)]
    pub id: String,
    pub messages: Vec<Message>,
    #[serde(default)]
    pub metadata: Metadata,
}

/// A named scalar.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Metric {
    pub name: String,
    pub value: f64,
}

impl Metric {
    pub fn new(name: impl Into<String>, value: f64) -> Self {
        Self {
            name: name.into(),
            value,
        }
    }
}

/// One completion for a reward function to score; also one line of a completions file,
/// where the prompt may be plain text (a user message) or a list of messages, and the
/// completion plain text or an assistant message (alone, or in a list as TRL writes a
/// conversational completion) whose tool calls and reasoning then reach the function.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(try_from = "RewardInputWire")]
pub struct RewardInput {
    pub prompt: Vec<Message>,
    /// The completion's text (a message's content, when it came as one).
    pub completion: String,
    /// The completion read as an assistant turn, where it came as one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<Message>,
    /// The token budget cut the completion.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
    pub metadata: Metadata,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RewardInputWire {
    #[serde(default, deserialize_with = "text_or_messages")]
    prompt: Vec<Message>,
    completion: serde_json::Value,
    #[serde(default)]
    message: Option<Message>,
    #[serde(default)]
    truncated: bool,
    #[serde(default)]
    metadata: Metadata,
}

impl TryFrom<RewardInputWire> for RewardInput {
    type Error = String;

    fn try_from(w: RewardInputWire) -> Result<Self, String> {
        let one = match w.completion {
            serde_json::Value::String(t) => {
                return Ok(Self {
                    prompt: w.prompt,
                    completion: t,
                    message: w.message,
                    truncated: w.truncated,
                    metadata: w.metadata,
                });
            }
            serde_json::Value::Array(mut m) if m.len() == 1 => m.remove(0),
            serde_json::Value::Array(m) => {
                return Err(format!(
                    "`completion` is a list of {} messages; a completion is one assistant turn",
                    m.len()
                ));
            }
            m @ serde_json::Value::Object(_) => m,
            _ => {
                return Err(
                    "`completion` must be text or an assistant message (alone or in a list)".into(),
                );
            }
        };
        let message: Message = serde_json::from_value(one)
            .map_err(|e| format!("`completion` is not a message: {e}"))?;
        if message.role != "assistant" {
            return Err(format!(
                "`completion` is a `{}` message; a completion is an assistant turn",
                message.role
            ));
        }
        if w.message.is_some() {
            return Err("`completion` is a message and `message` is given too".into());
        }
        Ok(Self {
            prompt: w.prompt,
            completion: message.content.clone(),
            message: Some(message),
            truncated: w.truncated,
            metadata: w.metadata,
        })
    }
}

/// One completion as a reward function receives it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Completion<'a> {
    /// What the model wrote, decoded as it came: reasoning and tool-call markup included.
    pub text: &'a str,
    /// The text read as an assistant turn (content, reasoning and tool calls apart), where
    /// the caller had a reading; `None` stands for an assistant turn whose content is `text`.
    pub message: Option<&'a Message>,
    /// The token budget cut the completion before the model ended it.
    pub truncated: bool,
}

impl<'a> Completion<'a> {
    /// The answer's text without its reasoning and call markup, where there was a reading;
    /// else the text as it came.
    pub fn content(&self) -> &'a str {
        self.message.map_or(self.text, |m| m.content.as_str())
    }

    /// A completion known only as text.
    pub fn text(text: &'a str) -> Self {
        Self {
            text,
            message: None,
            truncated: false,
        }
    }
}

impl<'a> From<&'a str> for Completion<'a> {
    fn from(text: &'a str) -> Self {
        Self::text(text)
    }
}

/// One prompt's completions, as a reward function receives them: the prompt and its metadata
/// once, then every completion (a GRPO group, or a single sample). This is the shape of the
/// WIT's `reward-group`, so data crosses each layer once; it borrows, so nothing is copied
/// to build it.
#[derive(Debug, Clone, PartialEq)]
pub struct RewardGroup<'a> {
    pub prompt: &'a [Message],
    pub metadata: &'a Metadata,
    pub completions: Vec<Completion<'a>>,
}

impl<'a> RewardGroup<'a> {
    /// The number of completions.
    pub fn len(&self) -> usize {
        self.completions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.completions.is_empty()
    }
}

impl RewardInput {
    /// This input's completion, borrowed.
    pub fn as_completion(&self) -> Completion<'_> {
        Completion {
            text: &self.completion,
            message: self.message.as_ref(),
            truncated: self.truncated,
        }
    }

    /// Groups consecutive inputs that share a prompt and metadata, in order.
    pub fn groups(inputs: &[RewardInput]) -> Vec<RewardGroup<'_>> {
        let mut out: Vec<RewardGroup<'_>> = Vec::new();
        for i in inputs {
            match out.last_mut() {
                Some(g) if g.prompt == i.prompt.as_slice() && *g.metadata == i.metadata => {
                    g.completions.push(i.as_completion())
                }
                _ => out.push(RewardGroup {
                    prompt: &i.prompt,
                    metadata: &i.metadata,
                    completions: vec![i.as_completion()],
                }),
            }
        }
        out
    }
}

fn text_or_messages<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<Message>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Prompt {
        Text(String),
        Messages(Vec<Message>),
    }
    Ok(match Option::<Prompt>::deserialize(d)? {
        None => Vec::new(),
        Some(Prompt::Text(t)) => vec![Message::new("user", t)],
        Some(Prompt::Messages(m)) => m,
    })
}

/// One prediction for an evaluator to grade.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Prediction {
    #[serde(default)]
    pub id: String,
    pub prediction: String,
    pub references: Vec<String>,
    #[serde(default)]
    pub metadata: Metadata,
}
