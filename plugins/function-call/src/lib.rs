//! `function-call`: a reward for function calling, scored as `galley eval` scores BFCL — the
//! completion is read as Python calls (`[get_weather(city='Paris')]`, BFCL's prompting mode)
//! and judged by BFCL's AST checker against the example's functions and possible answers.
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
//! `irrelevance`, `relevance`), `functions_key`, `ground_truth_key`, `category_key`
//! (`function`, `ground_truth`, `id`), `correct` (1.0), `incorrect` (0.0).

use galley_bfcl::checker::Checker;
use galley_bfcl::value::Py;
use galley_sdk::reward::{Reward, RewardInput};
use galley_sdk::{Config, Error, Value};
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct Settings {
    checker: String,
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
            functions_key: "function".into(),
            ground_truth_key: "ground_truth".into(),
            category_key: "id".into(),
            correct: 1.0,
            incorrect: 0.0,
        }
    }
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
        let judged = galley_bfcl::judge(kind, &functions, &truth, input.completion);
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
    use galley_sdk::Metadata;

    const FUNCTIONS: &str = r#"[{"name": "math.hypot", "description": "Hypotenuse.", "parameters": {"type": "dict", "properties": {"x": {"type": "integer"}, "y": {"type": "integer"}}, "required": ["x", "y"]}}]"#;
    const TRUTH: &str = r#"[{"math.hypot": {"x": [4], "y": [5]}}]"#;

    fn score(id: &str, completion: &str, truth: bool) -> Option<f64> {
        let mut m = Metadata::default();
        m.insert("function", Value::Json(FUNCTIONS.into()));
        if truth {
            m.insert("ground_truth", Value::Json(TRUTH.into()));
        }
        m.insert("id", Value::Text(id.into()));
        let mut r = FunctionCall::new(&Config::parse("").unwrap()).unwrap();
        r.score(&RewardInput {
            prompt: &[],
            completion,
            metadata: &m,
        })
        .unwrap()
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
        let input = RewardInput {
            prompt: &[],
            completion: "x",
            metadata: &none,
        };
        assert_eq!(r.score(&input).unwrap(), None, "no functions, no opinion");
    }
}
