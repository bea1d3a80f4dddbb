//! The SDK's own data types: what a plugin author reads and returns.

use std::fmt;

/// One chat message.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Message {
    /// "system", "user", "assistant", "tool"...
    pub role: String,
    /// The text, without the reasoning or the calls' markup.
    pub content: String,
    /// An assistant turn's function calls.
    pub tool_calls: Vec<ToolCall>,
    /// A tool turn: the id of the call it answers.
    pub tool_call_id: Option<String>,
    /// A tool turn: the function whose result it is.
    pub name: Option<String>,
    /// An assistant turn's reasoning ("thinking"), apart from its content.
    pub reasoning: Option<String>,
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

/// A function call in an assistant turn.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ToolCall {
    /// The call's id, where the model or the data gave one.
    pub id: Option<String>,
    pub name: String,
    /// The arguments as JSON text (an object, as the model wrote it: it may not parse).
    pub arguments: String,
}

impl ToolCall {
    /// The arguments parsed, or `None` where they are not a JSON object.
    pub fn arguments_json(&self) -> Option<serde_json::Map<String, serde_json::Value>> {
        match serde_json::from_str(&self.arguments).ok()? {
            serde_json::Value::Object(m) => Some(m),
            _ => None,
        }
    }
}

/// A metadata value. Arrays and objects arrive as JSON text in [`Value::Json`].
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Text(String),
    Json(String),
}

impl Value {
    /// Strings as they are and numbers printed, e.g. a ground truth stored as `42` or `"42"`.
    pub fn as_text(&self) -> Option<String> {
        match self {
            Value::Text(s) => Some(s.clone()),
            Value::Int(i) => Some(i.to_string()),
            Value::Float(f) => Some(f.to_string()),
            _ => None,
        }
    }

    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Int(i) => Some(*i as f64),
            Value::Float(f) => Some(*f),
            Value::Text(s) => s.trim().parse().ok(),
            _ => None,
        }
    }
}

/// An example's columns other than its conversation, in the order the host sent them.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Metadata(pub Vec<(String, Value)>);

impl Metadata {
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// The value of `key` as text (see [`Value::as_text`]).
    pub fn text(&self, key: &str) -> Option<String> {
        self.get(key)?.as_text()
    }

    pub fn insert(&mut self, key: impl Into<String>, value: Value) {
        let key = key.into();
        match self.0.iter_mut().find(|(k, _)| *k == key) {
            Some(slot) => slot.1 = value,
            None => self.0.push((key, value)),
        }
    }
}

/// One example produced by a data loader.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Example {
    pub id: String,
    pub messages: Vec<Message>,
    pub metadata: Metadata,
}

/// A named scalar.
#[derive(Debug, Clone, PartialEq)]
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

/// Whose fault an error is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The user's settings are wrong.
    Config,
    /// The input is wrong.
    Input,
    /// The plugin itself failed.
    Failed,
}

/// An error a plugin returns to the host. The host adds the plugin's name and the call.
#[derive(Debug, Clone, PartialEq)]
pub struct Error {
    pub kind: ErrorKind,
    pub message: String,
}

impl Error {
    pub fn config(message: impl Into<String>) -> Self {
        Self {
            kind: ErrorKind::Config,
            message: message.into(),
        }
    }
    pub fn input(message: impl Into<String>) -> Self {
        Self {
            kind: ErrorKind::Input,
            message: message.into(),
        }
    }
    pub fn failed(message: impl Into<String>) -> Self {
        Self {
            kind: ErrorKind::Failed,
            message: message.into(),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

/// Conversions between the SDK's types and one world's generated bindings. Each world gets its
/// own copy of the shared WIT types, so this is a macro instantiated once per kind module.
#[doc(hidden)]
#[macro_export]
macro_rules! __conversions {
    ($types:path) => {
        use $types as wit;

        #[allow(dead_code)]
        pub(crate) fn value_in(v: wit::Value) -> $crate::Value {
            match v {
                wit::Value::Null => $crate::Value::Null,
                wit::Value::Boolean(b) => $crate::Value::Bool(b),
                wit::Value::Integer(i) => $crate::Value::Int(i),
                wit::Value::Number(f) => $crate::Value::Float(f),
                wit::Value::Text(s) => $crate::Value::Text(s),
                wit::Value::Json(s) => $crate::Value::Json(s),
            }
        }

        #[allow(dead_code)]
        pub(crate) fn value_out(v: $crate::Value) -> wit::Value {
            match v {
                $crate::Value::Null => wit::Value::Null,
                $crate::Value::Bool(b) => wit::Value::Boolean(b),
                $crate::Value::Int(i) => wit::Value::Integer(i),
                $crate::Value::Float(f) => wit::Value::Number(f),
                $crate::Value::Text(s) => wit::Value::Text(s),
                $crate::Value::Json(s) => wit::Value::Json(s),
            }
        }

        #[allow(dead_code)]
        pub(crate) fn metadata_in(m: Vec<wit::Entry>) -> $crate::Metadata {
            $crate::Metadata(m.into_iter().map(|e| (e.key, value_in(e.value))).collect())
        }

        #[allow(dead_code)]
        pub(crate) fn metadata_out(m: $crate::Metadata) -> Vec<wit::Entry> {
            m.0.into_iter()
                .map(|(key, v)| wit::Entry {
                    key,
                    value: value_out(v),
                })
                .collect()
        }

        #[allow(dead_code)]
        pub(crate) fn message_in(m: wit::Message) -> $crate::Message {
            $crate::Message {
                role: m.role,
                content: m.content,
                tool_calls: m
                    .tool_calls
                    .into_iter()
                    .map(|c| $crate::ToolCall {
                        id: c.id,
                        name: c.name,
                        arguments: c.arguments,
                    })
                    .collect(),
                tool_call_id: m.tool_call_id,
                name: m.name,
                reasoning: m.reasoning,
            }
        }

        #[allow(dead_code)]
        pub(crate) fn messages_in(m: Vec<wit::Message>) -> Vec<$crate::Message> {
            m.into_iter().map(message_in).collect()
        }

        #[allow(dead_code)]
        pub(crate) fn messages_out(m: Vec<$crate::Message>) -> Vec<wit::Message> {
            m.into_iter()
                .map(|m| wit::Message {
                    role: m.role,
                    content: m.content,
                    tool_calls: m
                        .tool_calls
                        .into_iter()
                        .map(|c| wit::ToolCall {
                            id: c.id,
                            name: c.name,
                            arguments: c.arguments,
                        })
                        .collect(),
                    tool_call_id: m.tool_call_id,
                    name: m.name,
                    reasoning: m.reasoning,
                })
                .collect()
        }

        #[allow(dead_code)]
        pub(crate) fn metrics_in(m: Vec<wit::Metric>) -> Vec<$crate::Metric> {
            m.into_iter()
                .map(|m| $crate::Metric {
                    name: m.name,
                    value: m.value,
                })
                .collect()
        }

        #[allow(dead_code)]
        pub(crate) fn metrics_out(m: Vec<$crate::Metric>) -> Vec<wit::Metric> {
            m.into_iter()
                .map(|m| wit::Metric {
                    name: m.name,
                    value: m.value,
                })
                .collect()
        }

        #[allow(dead_code)]
        pub(crate) fn error_out(e: $crate::Error) -> wit::PluginError {
            match e.kind {
                $crate::ErrorKind::Config => wit::PluginError::InvalidConfig(e.message),
                $crate::ErrorKind::Input => wit::PluginError::InvalidInput(e.message),
                $crate::ErrorKind::Failed => wit::PluginError::Failed(e.message),
            }
        }

        #[allow(dead_code)]
        pub(crate) fn not_initialised() -> wit::PluginError {
            wit::PluginError::Failed("the host called the plugin before init".into())
        }
    };
}
