//! The Berkeley Function Calling Leaderboard's single-turn categories (BFCL v4: simple,
//! multiple, parallel, parallel-multiple and irrelevance, live and not) as galley tasks with
//! `output_type: function_calling`. A document is one BFCL entry (`question`, `function`,
//! `ground_truth` as `scripts/fetch-eval-data.sh` joins them); the model is asked as BFCL's
//! prompting handlers ask an open model — its chat template, BFCL's default system prompt
//! listing the functions as JSON, the entry's own system message after it — and its answer is
//! read as a list of Python calls (`python`) and judged by BFCL's AST checker (`checker`).
//!
//! In native mode (BFCL's FC mode) the functions go to the model as tools instead and its
//! tool calls are judged. The reading and judging themselves are galley-bfcl's, shared with
//! the `galley/function-call` reward plugin; this module owns the tasks' side: entries,
//! conversations, modes.
//!
//! What BFCL does that this does not: its Java and JavaScript categories (their type
//! converters), multi-turn, agentic (web search, memory) and format-sensitivity categories.

pub mod task;

pub use galley_bfcl::{Entry, Judged, Msg, checker, openai_tools, python, system_prompt, value};

use checker::Checker;
use galley_core::Message;

/// BFCL's messages as galley's.
pub fn messages(m: &[Msg]) -> Vec<Message> {
    m.iter()
        .map(|m| Message::new(m.role.as_str(), m.content.as_str()))
        .collect()
}

/// A task's `function_calling:` block.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FunctionCalling {
    /// How answers are judged: `simple`, `multiple`, `parallel` (BFCL's parallel and
    /// parallel-multiple), `irrelevance` (no call is right), `relevance` (any call is).
    pub checker: Checker,
}

/// How the model is asked: BFCL's prompting mode (the functions in its system prompt, calls
/// written as Python) or its function-calling ("FC") mode (the functions as tools, through
/// the model's chat template or a server's `tools`, calls returned as tool calls).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum Mode {
    #[default]
    Prompt,
    Native,
}

/// Judges a written answer (prompting mode) to `entry`.
pub fn judge(kind: Checker, entry: &Entry, answer: &str) -> Judged {
    galley_bfcl::judge(kind, &entry.functions, &entry.ground_truth, answer)
}

/// Judges an answer given as tool calls (native mode) to `entry`.
pub fn judge_calls(kind: Checker, entry: &Entry, calls: &[galley_core::ToolCall]) -> Judged {
    let calls: Vec<(String, String)> = calls
        .iter()
        .map(|c| (c.name.clone(), c.arguments.clone()))
        .collect();
    galley_bfcl::judge_calls(kind, &entry.functions, &entry.ground_truth, &calls)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LINE: &str = r#"{"id": "simple_python_0", "question": [[{"role": "user", "content": "Find the area of a triangle with a base of 10 units and height of 5 units."}]], "function": [{"name": "calculate_triangle_area", "description": "Calculate the area of a triangle given its base and height.", "parameters": {"type": "dict", "properties": {"base": {"type": "integer", "description": "The base of the triangle."}, "height": {"type": "integer", "description": "The height of the triangle."}, "unit": {"type": "string", "description": "The unit of measure (defaults to 'units' if not specified)"}}, "required": ["base", "height"]}}], "ground_truth": [{"calculate_triangle_area": {"base": [10], "height": [5], "unit": ["units", ""]}}]}"#;

    #[test]
    fn an_entry_is_asked_and_judged_as_bfcl_does() {
        let e = Entry::parse(LINE).unwrap();
        let c = e.conversation();
        assert_eq!(c.len(), 2);
        assert_eq!(c[0].role, "system");
        // The functions keep their written order, with Python's json.dumps layout.
        assert!(c[0].content.contains("[\n    {\n        \"name\": \"calculate_triangle_area\",\n        \"description\": \"Calculate the area of a triangle given its base and height. Note that the provided function is in Python 3 syntax.\",\n        \"parameters\": {\n            \"type\": \"dict\","), "{}", c[0].content);
        assert!(
            c[0].content
                .starts_with("You are an expert in composing functions.You are given")
        );
        assert!(
            judge(
                Checker::Simple,
                &e,
                "[calculate_triangle_area(base=10, height=5)]"
            )
            .verdict
            .valid
        );
        let j = judge(Checker::Simple, &e, "The area is 25 square units.");
        assert_eq!(j.verdict.error_type, "ast_decoder:decoder_failed");
        assert!(
            judge(Checker::Irrelevance, &e, "The area is 25 square units.")
                .verdict
                .valid
        );
        assert!(
            !judge(Checker::Relevance, &e, "The area is 25.")
                .verdict
                .valid
        );
    }
}
