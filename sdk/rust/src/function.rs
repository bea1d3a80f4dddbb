//! A function a model may call (tools and environments offer them), as OpenAI's `tools`
//! list describes it.

/// One function the model may call, as OpenAI's `tools` list describes it.
#[derive(Debug, Clone, PartialEq)]
pub struct Function {
    /// 1-64 characters of a-z, A-Z, 0-9, '_' or '-'.
    pub name: String,
    /// What it does, shown to the model.
    pub description: String,
    /// The JSON Schema of the arguments object.
    pub parameters: serde_json::Value,
}

impl Function {
    pub fn new(
        name: impl Into<String>,
        description: impl Into<String>,
        parameters: serde_json::Value,
    ) -> Self {
        Self {
            name: name.into(),
            description: description.into(),
            parameters,
        }
    }
}
