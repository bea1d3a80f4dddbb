//! A finished answer read as an assistant turn, the way `galley serve` returns one: the
//! reasoning block taken out into `reasoning_content` (for templates that think), and, where
//! tools were offered, the calls taken out into `tool_calls` in the format the chat template
//! writes them. The trainer hands this reading to reward functions beside the raw text, so a
//! function judging tool calls or answers never re-implements a model family's markup.

use crate::chat::ChatTemplate;
use crate::json_schema::Json;
use crate::tool_calls::{self, ToolFormat};
use galley_core::{Message, ToolCall};

/// How one chat template's answers are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AnswerReader {
    /// The template writes thinking blocks.
    pub thinks: bool,
    /// How its model writes tool calls (`None`: galley cannot read them; calls stay text).
    pub tool_format: Option<ToolFormat>,
}

impl AnswerReader {
    /// The reading `template` implies, found as `galley serve` finds it.
    pub fn of_template(template: &ChatTemplate) -> Self {
        Self {
            thinks: crate::reasoning::template_thinks(&template.source),
            tool_format: template
                .renders_tools()
                .then(|| ToolFormat::of_template(template))
                .flatten(),
        }
    }

    /// Whether reading can take anything out of an answer: the template thinks, or tools
    /// were offered and galley reads the template's calls. Otherwise the reading is the text.
    pub fn reads(&self, tools_offered: bool) -> bool {
        self.thinks || (tools_offered && self.tool_format.is_some())
    }

    /// `text` as an assistant turn. `opens`: the prompt left a thinking block open
    /// ([`crate::reasoning::prompt_opens`]); `tools`: the tools the prompt offered (calls are
    /// read only then, as a server reads them only for a request with tools).
    pub fn read(&self, text: &str, opens: bool, tools: Option<&Json>) -> Message {
        let (reasoning, content) = if self.thinks {
            crate::reasoning::split(text, opens)
        } else {
            (None, text.to_string())
        };
        let mut m = Message::new("assistant", content);
        m.reasoning_content = reasoning;
        if let (Some(format), Some(_)) = (self.tool_format, tools) {
            let parsed = tool_calls::parse_with_tools(format, &m.content, tools);
            if !parsed.calls.is_empty() {
                m.content = parsed.content.unwrap_or_default();
                m.tool_calls = parsed
                    .calls
                    .into_iter()
                    .enumerate()
                    .map(|(i, c)| ToolCall {
                        id: Some(format!("call_{i}")),
                        name: c.name,
                        arguments: c.arguments,
                    })
                    .collect();
            }
        }
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tools() -> Json {
        serde_json::from_str(
            r#"[{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]"#,
        )
        .unwrap()
    }

    #[test]
    fn reasoning_and_hermes_calls_come_apart() {
        let r = AnswerReader {
            thinks: true,
            tool_format: Some(ToolFormat::Hermes),
        };
        let text = "<think>Paris, then.</think>\nLet me look.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>";
        let m = r.read(text, false, Some(&tools()));
        assert_eq!(m.role, "assistant");
        assert_eq!(m.reasoning_content.as_deref(), Some("Paris, then."));
        assert_eq!(m.content, "Let me look.");
        assert_eq!(m.tool_calls.len(), 1);
        assert_eq!(m.tool_calls[0].name, "get_weather");
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&m.tool_calls[0].arguments).unwrap(),
            serde_json::json!({"city": "Paris"})
        );
    }

    #[test]
    fn calls_are_read_only_where_tools_were_offered() {
        let r = AnswerReader {
            thinks: false,
            tool_format: Some(ToolFormat::Hermes),
        };
        assert!(r.reads(true) && !r.reads(false));
        let text = "<tool_call>{\"name\": \"get_weather\", \"arguments\": {}}</tool_call>";
        let m = r.read(text, false, None);
        assert!(m.tool_calls.is_empty());
        assert_eq!(m.content, text);
        assert!(m.reasoning_content.is_none());
    }

    #[test]
    fn a_block_the_prompt_opened_is_reasoning() {
        let r = AnswerReader {
            thinks: true,
            tool_format: None,
        };
        assert!(r.reads(false));
        let m = r.read("the sum is 4</think>\n\n4", true, None);
        assert_eq!(m.reasoning_content.as_deref(), Some("the sum is 4"));
        assert_eq!(m.content, "4");
    }

    #[test]
    fn a_call_that_does_not_parse_stays_text() {
        let r = AnswerReader {
            thinks: false,
            tool_format: Some(ToolFormat::Hermes),
        };
        let text = "<tool_call>{\"name\": \"get_weather\", \"arguments\": {</tool_call>";
        let m = r.read(text, false, Some(&tools()));
        assert!(m.tool_calls.is_empty());
        assert_eq!(m.content, text);
    }
}
