//! The user's settings for a plugin: the JSON object the host passes to `init`.

use crate::types::Error;
use serde::de::DeserializeOwned;

/// The settings a user gave this plugin in their run config, as a JSON object.
#[derive(Debug, Clone, Default)]
pub struct Config {
    value: serde_json::Value,
}

impl Config {
    /// Parses the host's JSON text. An empty string is an empty object.
    pub fn parse(text: &str) -> Result<Self, Error> {
        if text.trim().is_empty() {
            return Ok(Self {
                value: serde_json::Value::Object(Default::default()),
            });
        }
        let value: serde_json::Value = serde_json::from_str(text)
            .map_err(|e| Error::config(format!("settings are not valid JSON: {e}")))?;
        if !value.is_object() {
            return Err(Error::config("settings must be a JSON object"));
        }
        Ok(Self { value })
    }

    /// The whole settings object.
    pub fn json(&self) -> &serde_json::Value {
        &self.value
    }

    /// Deserializes the settings into a typed struct. Use `#[serde(deny_unknown_fields)]` so
    /// a misspelt key is an error rather than a silently ignored setting.
    pub fn parse_into<T: DeserializeOwned>(&self) -> Result<T, Error> {
        serde_json::from_value(self.value.clone()).map_err(|e| Error::config(e.to_string()))
    }

    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.value.get(key)?.as_str()
    }

    pub fn get_f64(&self, key: &str) -> Option<f64> {
        self.value.get(key)?.as_f64()
    }

    pub fn get_bool(&self, key: &str) -> Option<bool> {
        self.value.get(key)?.as_bool()
    }
}
