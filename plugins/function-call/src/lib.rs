//! `function-call`: a reward for function calling, scored as `galley eval` scores BFCL — the
//! completion's tool calls (BFCL's native function-calling mode: the calls the trainer read
//! from the completion in the chat template's format, which `galley:plugin@0.2` hands over)
//! or, where it made none, its answer read as Python calls (`[get_weather(city='Paris')]`,
//! BFCL's prompting mode), judged by BFCL's AST checker against the example's functions and
//! possible answers.
//! The reading and the checker are galley-bfcl, the same code the evaluation runs natively,
//! compiled into this sandboxed component: a model trained on this reward is rewarded for
//! exactly what its BFCL score will count.
//!
//! Columns (BFCL's layout, as `scripts/fetch-bfcl.sh` writes it): `function` (the functions'
//! documents, JSON), `ground_truth` (the possible answers, JSON; absent for irrelevance
//! examples) and `id` (its category prefix picks the checker: `simple_python_3` is simple,
//! `parallel_multiple_0` parallel, `irrelevance_7` wants no call). An example without
//! functions gets no opinion.
//!
//! Settings: `checker` (`auto`: from the id; or `simple`, `multiple`, `parallel`,
//! `irrelevance`, `relevance`), `mode` (`auto`: the tool calls where there are any, else the
//! answer as Python calls; `native`: only tool calls count; `prompting`: only the written
//! answer counts, as 0.1 of this plugin judged), `functions_key`, `ground_truth_key`,
//! `category_key` (`function`, `ground_truth`, `id`), `correct` (1.0), `incorrect` (0.0).
//! The written answer is the completion's content: a thinking model's reasoning is not read
//! as its answer.

use galley_bfcl::checker::Checker;
use galley_bfcl::value::Py;
use galley_sdk::reward::{Reward, RewardInput};
use galley_sdk::{Config, Error, Value};
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct Settings {
    checker: String,
    mode: Mode,
    functions_key: String,
    ground_truth_key: String,
    category_key: String,
    correct: f64,
    incorrect: f64,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            checker: "auto".into(),
            mode: Mode::Auto,
            functions_key: "function".into(),
            ground_truth_key: "ground_truth".into(),
            category_key: "id".into(),
            correct: 1.0,
            incorrect: 0.0,
        }
    }
}

/// Which answer is judged.
#[derive(Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum Mode {
    Auto,
    Native,
    Prompting,
}

struct FunctionCall {
    s: Settings,
    /// The checker every example gets, unless it is read from each example's id.
    fixed: Option<Checker>,
}

/// A column holding a JSON list (as JSON, or as text that is JSON); `Ok(None)` when absent.
fn list(v: Option<&Value>, key: &str) -> Result<Option<Vec<Py>>, Error> {
    let text = match v {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Json(t)) | Some(Value::Text(t)) => t,
        Some(_) => return Err(Error::input(format!("`{key}` is not a JSON list"))),
    };
    match serde_json::from_str::<Py>(text) {
        Ok(Py::List(items)) => Ok(Some(items)),
        Ok(_) => Err(Error::input(format!("`{key}` is not a JSON list"))),
        Err(e) => Err(Error::input(format!("`{key}` is not JSON: {e}"))),
    }
}

fn checker_named(name: &str) -> Option<Checker> {
    Some(match name {
        "simple" => Checker::Simple,
        "multiple" => Checker::Multiple,
        "parallel" => Checker::Parallel,
        "irrelevance" => Checker::Irrelevance,
        "relevance" => Checker::Relevance,
        _ => return None,
    })
}

impl Reward for FunctionCall {
    fn new(config: &Config) -> Result<Self, Error> {
        let s: Settings = config.parse_into()?;
        let fixed = match s.checker.as_str() {
            "auto" => None,
            name => Some(checker_named(name).ok_or_else(|| {
                Error::config(format!(
                    "checker: `{name}` is none of auto, simple, multiple, parallel, irrelevance, relevance"
                ))
            })?),
        };
        Ok(Self { s, fixed })
    }

    fn score(&mut self, input: &RewardInput) -> Result<Option<f64>, Error> {
        let s = &self.s;
        let Some(functions) = list(input.metadata.get(&s.functions_key), &s.functions_key)? else {
            return Ok(None);
        };
        let truth =
            list(input.metadata.get(&s.ground_truth_key), &s.ground_truth_key)?.unwrap_or_default();
        let kind = match self.fixed {
            Some(k) => k,
            None => {
                let category = input
                    .metadata
                    .get(&s.category_key)
                    .and_then(Value::as_text)
                    .unwrap_or_default();
                Checker::for_category(&category)
            }
        };
        let calls = &input.message.tool_calls;
        let native = match s.mode {
            Mode::Native => true,
            Mode::Prompting => false,
            Mode::Auto => !calls.is_empty(),
        };
        let judged = if native {
            let calls: Vec<(String, String)> = calls
                .iter()
                .map(|c| (c.name.clone(), c.arguments.clone()))
                .collect();
            galley_bfcl::judge_calls(kind, &functions, &truth, &calls)
        } else {
            galley_bfcl::judge(kind, &functions, &truth, &input.message.content)
        };
        Ok(Some(if judged.verdict.valid {
            s.correct
        } else {
            s.incorrect
        }))
    }
}

galley_sdk::export_reward!(FunctionCall);

#[cfg(test)]
mod tests {
    use super::*;
    use galley_sdk::{Message, Metadata, ToolCall};

    const FUNCTIONS: &str = r#"[{"name": "math.hypot", "description": "Hypotenuse.", "parameters": {"type": "dict", "properties": {"x": {"type": "integer"}, "y": {"type": "integer"}}, "required": ["x", "y"]}}]"#;
    const TRUTH: &str = r#"[{"math.hypot": {"x": [4], "y": [5]}}]"#;

    fn columns(id: &str, truth: bool) -> Metadata {
        let mut m = Metadata::default();
        m.insert("function", Value::Json(FUNCTIONS.into()));
        if truth {
            m.insert("ground_truth", Value::Json(TRUTH.into()));
        }
        m.insert("id", Value::Text(id.into()));
        m
    }

    fn score_message(settings: &str, id: &str, message: &Message, truth: bool) -> Option<f64> {
        let m = columns(id, truth);
        let mut r = FunctionCall::new(&Config::parse(settings).unwrap()).unwrap();
        r.score(&RewardInput {
            prompt: &[],
            completion: &message.content,
            message,
            truncated: false,
            metadata: &m,
        })
        .unwrap()
    }

    fn score(id: &str, completion: &str, truth: bool) -> Option<f64> {
        score_message("", id, &Message::new("assistant", completion), truth)
    }

    fn called(name: &str, arguments: &str) -> Message {
        let mut m = Message::new("assistant", "");
        m.tool_calls.push(ToolCall {
            id: Some("call_0".into()),
            name: name.into(),
            arguments: arguments.into(),
        });
        m
    }

    #[test]
    fn tool_calls_are_judged_as_bfcl_judges_native_calls() {
        let right = called("math_hypot", r#"{"x": 4, "y": 5}"#);
        let wrong = called("math_hypot", r#"{"x": 4, "y": 6}"#);
        assert_eq!(
            score_message("", "simple_python_2", &right, true),
            Some(1.0)
        );
        assert_eq!(
            score_message("", "simple_python_2", &wrong, true),
            Some(0.0)
        );
        // Not JSON arguments: an answer that does not decode.
        let broken = called("math_hypot", r#"{"x": 4, "#);
        assert_eq!(
            score_message("", "simple_python_2", &broken, true),
            Some(0.0)
        );
        // A call where none is wanted.
        assert_eq!(score_message("", "irrelevance_0", &right, false), Some(0.0));
        // Prompting mode reads only the text, so the call does not count.
        let mut both = called("math_hypot", r#"{"x": 4, "y": 5}"#);
        both.content = "The hypotenuse.".into();
        assert_eq!(
            score_message(r#"{"mode": "prompting"}"#, "simple_python_2", &both, true),
            Some(0.0)
        );
        // Native mode with no calls: no answer.
        let text = Message::new("assistant", "[math.hypot(x=4, y=5)]");
        assert_eq!(score_message("", "simple_python_2", &text, true), Some(1.0));
        assert_eq!(
            score_message(r#"{"mode": "native"}"#, "simple_python_2", &text, true),
            Some(0.0)
        );
    }

    #[test]
    fn the_reasoning_is_not_the_answer() {
        let mut m = Message::new("assistant", "[math.hypot(x=4, y=5)]");
        m.reasoning = Some("maybe [math.hypot(x=1, y=1)]?".into());
        assert_eq!(score_message("", "simple_python_2", &m, true), Some(1.0));
    }

    #[test]
    fn scores_as_bfcl_judges() {
        assert_eq!(
            score("simple_python_2", "[math.hypot(x=4, y=5)]", true),
            Some(1.0)
        );
        assert_eq!(
            score("simple_python_2", "[math.hypot(x=4, y=6)]", true),
            Some(0.0)
        );
        assert_eq!(
            score("simple_python_2", "The answer is 6.4", true),
            Some(0.0)
        );
        assert_eq!(
            score("irrelevance_0", "I cannot do that.", false),
            Some(1.0)
        );
        assert_eq!(
            score("irrelevance_0", "[math.hypot(x=1, y=1)]", false),
            Some(0.0)
        );
        let mut r = FunctionCall::new(&Config::parse("").unwrap()).unwrap();
        let none = Metadata::default();
        let x = Message::new("assistant", "x");
        let input = RewardInput {
            prompt: &[],
            completion: "x",
            message: &x,
            truncated: false,
            metadata: &none,
        };
        assert_eq!(r.score(&input).unwrap(), None, "no functions, no opinion");
    }
}
