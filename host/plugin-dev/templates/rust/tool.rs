//! A tool a model may call while it answers (GRPO rollouts with `grpo.tools`): counts the
//! words of a text. The host reads the model's call, hands its arguments here as JSON, and
//! feeds the text returned back to the model as the tool's turn.

use galley_sdk::serde_json::{Value, json};
use galley_sdk::tool::{Function, Tool};
use galley_sdk::{Config, Error};

struct WordCount;

impl Tool for WordCount {
    fn new(_config: &Config) -> Result<Self, Error> {
        Ok(WordCount)
    }

    /// What the model is shown (OpenAI's `tools` shape: a name, a description, a JSON Schema).
    fn functions(&self) -> Vec<Function> {
        vec![Function::new(
            "count_words",
            "Counts the words of a text.",
            json!({
                "type": "object",
                "properties": {"text": {"type": "string", "description": "The text"}},
                "required": ["text"]
            }),
        )]
    }

    fn call(&mut self, _name: &str, arguments: &Value) -> Result<String, Error> {
        // An input error is shown to the model, which can then correct its call.
        let text = arguments["text"]
            .as_str()
            .ok_or_else(|| Error::input("`text` must be a string"))?;
        Ok(text.split_whitespace().count().to_string())
    }
}

galley_sdk::export_tool!(WordCount);
