//! BFCL's AST checker (`eval_checker/ast_eval/ast_checker.py`) for Python, rule for rule: a
//! call is right when its function is the expected one, every required parameter is there,
//! no parameter is unexpected, each value has the documented type (an int passes for a float;
//! a string passes where the possible answers are strings, BFCL's "variable" case) and is
//! among the possible answers, compared after BFCL's string standardisation (lower case,
//! without spaces and `,./-_*^`, single quotes as double), with dicts, lists and lists of
//! dicts compared as BFCL compares them. Parallel answers match calls in any order; a
//! "multiple" answer is one call chosen among several functions.
//!
//! Error types are BFCL's own strings, so a galley sample and a BFCL score file can be read
//! side by side; `host/eval/reference/bfcl_parity.py` runs BFCL's checker on galley's decoded answers
//! and compares every verdict.

use crate::python::Call;
use crate::value::{Py, contains, dict_get, iterate};

/// BFCL's result: `valid`, and why not.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    pub valid: bool,
    pub error: Vec<String>,
    pub error_type: String,
}

impl Verdict {
    fn ok() -> Self {
        Verdict {
            valid: true,
            error: vec![],
            error_type: String::new(),
        }
    }

    fn fail(error_type: &str, error: String) -> Self {
        Verdict {
            valid: false,
            error: vec![error],
            error_type: error_type.into(),
        }
    }
}

/// How a category's answers are checked (BFCL's test category decides it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Checker {
    /// One call of the one function.
    Simple,
    /// One call, of the right one among several functions.
    Multiple,
    /// Several calls, in any order.
    Parallel,
    /// No call is right (none of the functions fits).
    Irrelevance,
    /// Any well-formed call is right.
    Relevance,
}

impl Checker {
    /// The checker BFCL's runner picks for a test category (`live_parallel_multiple`:
    /// parallel, since "parallel" is tested before "multiple").
    pub fn for_category(category: &str) -> Checker {
        if category.contains("irrelevance") {
            Checker::Irrelevance
        } else if category.contains("relevance") {
            Checker::Relevance
        } else if category.contains("parallel") {
            Checker::Parallel
        } else if category.contains("multiple") {
            Checker::Multiple
        } else {
            Checker::Simple
        }
    }
}

/// `PYTHON_TYPE_MAPPING`: the Python type a documented type stands for (`tuple` is read as
/// a list, since JSON answers have no tuples; `any` as a string).
fn python_type(t: &str) -> Option<&'static str> {
    Some(match t {
        "string" | "any" => "str",
        "integer" => "int",
        "float" => "float",
        "boolean" => "bool",
        "array" | "tuple" => "list",
        "dict" => "dict",
        _ => return None,
    })
}

fn str_of(v: &Py) -> Option<&str> {
    match v {
        Py::Str(s) => Some(s),
        _ => None,
    }
}

/// `get_possible_answer_type`: the type of the first answer that is not `""` (the mark of
/// an optional parameter).
fn possible_answer_type(answers: &[Py]) -> Option<&'static str> {
    answers
        .iter()
        .find(|a| !matches!(a, Py::Str(s) if s.is_empty()))
        .map(Py::type_name)
}

struct TypeCheck {
    verdict: Verdict,
    is_variable: bool,
}

fn type_checker(
    param: &str,
    value: &Py,
    possible: &[Py],
    expected_desc: &str,
    expected: &str,
    nested: Option<&str>,
) -> TypeCheck {
    let mut result = Verdict {
        valid: true,
        error: vec![],
        error_type: "type_error:simple".into(),
    };
    let pat = possible_answer_type(possible);
    let is_variable = pat.is_some_and(|t| t != expected);
    if value.type_name() == expected {
        let Some(nested) = nested else {
            return TypeCheck {
                verdict: result,
                is_variable,
            };
        };
        for item in possible {
            let mut flag = true;
            if let Py::List(item) = item {
                for v in iterate(value).unwrap_or_default() {
                    let c = type_checker(param, &v, item, nested, nested, None);
                    if !c.verdict.valid {
                        flag = false;
                        break;
                    }
                }
            }
            if flag {
                return TypeCheck {
                    verdict: Verdict::ok(),
                    is_variable,
                };
            }
        }
        result.valid = false;
        result.error = vec![format!(
            "Nested type checking failed for parameter {}. Expected outer type {expected_desc} with inner type {nested}. Parameter value: {}.",
            Py::Str(param.into()).repr(),
            value.repr()
        )];
        result.error_type = "type_error:nested".into();
    }
    if pat.is_some_and(|t| value.type_name() == t) {
        // BFCL returns here whatever `result` holds, a failed nested check included.
        return TypeCheck {
            verdict: result,
            is_variable: true,
        };
    }
    result.valid = false;
    result.error.push(format!(
        "Incorrect type for parameter {}. Expected type {expected_desc}, got {}. Parameter value: {}.",
        Py::Str(param.into()).repr(),
        value.type_name(),
        value.repr()
    ));
    result.error_type = "type_error:simple".into();
    TypeCheck {
        verdict: result,
        is_variable,
    }
}

/// `standardize_string`.
pub fn standardize(s: &str) -> String {
    s.chars()
        .filter(|c| !matches!(c, ' ' | ',' | '.' | '/' | '-' | '_' | '*' | '^'))
        .flat_map(char::to_lowercase)
        .map(|c| if c == '\'' { '"' } else { c })
        .collect()
}

fn standardized(v: &Py) -> Py {
    match v {
        Py::Str(s) => Py::Str(standardize(s)),
        other => other.clone(),
    }
}

fn string_checker(param: &str, value: &str, possible: &[Py]) -> Verdict {
    let want: Vec<Py> = possible
        .iter()
        .filter_map(str_of)
        .map(|s| Py::Str(standardize(s)))
        .collect();
    if contains(&want, &Py::Str(standardize(value))) {
        return Verdict::ok();
    }
    Verdict::fail(
        "value_error:string",
        format!(
            "Invalid value for parameter {}: {}. Expected one of {}. Case insensitive.",
            Py::Str(param.into()).repr(),
            Py::Str(value.into()).repr(),
            Py::List(possible.to_vec()).repr()
        ),
    )
}

fn list_checker(param: &str, value: &[Py], possible: &[Py]) -> Verdict {
    let got = Py::List(value.iter().map(standardized).collect());
    let want: Vec<Py> = possible
        .iter()
        .map(|p| {
            Py::List(
                iterate(p)
                    .unwrap_or_default()
                    .iter()
                    .map(standardized)
                    .collect(),
            )
        })
        .collect();
    if contains(&want, &got) {
        return Verdict::ok();
    }
    Verdict::fail(
        "value_error:list/tuple",
        format!(
            "Invalid value for parameter {}: {}. Expected one of {}.",
            Py::Str(param.into()).repr(),
            Py::List(value.to_vec()).repr(),
            Py::List(possible.to_vec()).repr()
        ),
    )
}

fn dict_checker(value: &[(Py, Py)], possible: &[Py]) -> Verdict {
    // What BFCL returns when no answer is a dict to compare with.
    let mut result = Verdict {
        valid: false,
        error: vec![],
        error_type: "dict_checker:unclear".into(),
    };
    for answer in possible {
        if matches!(answer, Py::Str(s) if s.is_empty()) {
            continue;
        }
        result = Verdict {
            valid: false,
            error: vec![],
            error_type: "dict_checker:unclear".into(),
        };
        let Py::Dict(answer) = answer else {
            continue;
        };
        let mut flag = true;
        for (key, v) in value {
            let Some(options) = dict_get(answer, key) else {
                result.error.push(format!(
                    "Unexpected dict key parameter: '{}'.",
                    key_text(key)
                ));
                result.error_type = "value_error:dict_key".into();
                flag = false;
                break;
            };
            let want: Vec<Py> = iterate(options)
                .unwrap_or_default()
                .iter()
                .map(standardized)
                .collect();
            if !contains(&want, &standardized(v)) {
                result.error.push(format!(
                    "Invalid value for parameter {}: {}. Expected one of {}.",
                    key.repr(),
                    v.repr(),
                    Py::List(want).repr()
                ));
                result.error_type = "value_error:dict_value".into();
                flag = false;
                break;
            }
        }
        for (key, options) in answer {
            let optional = iterate(options)
                .unwrap_or_default()
                .iter()
                .any(|o| matches!(o, Py::Str(s) if s.is_empty()));
            if dict_get(value, key).is_none() && !optional {
                result
                    .error
                    .push(format!("Missing dict key parameter: '{}'.", key_text(key)));
                result.error_type = "value_error:dict_key".into();
                flag = false;
                break;
            }
        }
        if flag {
            return Verdict::ok();
        }
    }
    result
}

fn key_text(k: &Py) -> String {
    match k {
        Py::Str(s) => s.clone(),
        other => other.repr(),
    }
}

fn list_dict_checker(value: &[Py], possible: &[Py]) -> Verdict {
    let mut result = Verdict {
        valid: false,
        error: vec![],
        error_type: "list_dict_checker:unclear".into(),
    };
    for answer in possible {
        let items = iterate(answer).unwrap_or_default();
        if value.len() != items.len() {
            result = Verdict::fail(
                "value_error:list_dict_count",
                "Wrong number of dictionaries in the list.".into(),
            );
            continue;
        }
        let mut flag = true;
        for (v, want) in value.iter().zip(&items) {
            result = match v {
                Py::Dict(d) => dict_checker(d, std::slice::from_ref(want)),
                // BFCL calls `.items()` on it and fails; a wrong answer either way.
                other => Verdict::fail(
                    "value_error:dict_value",
                    format!("Expected a dict, got {}.", other.type_name()),
                ),
            };
            if !result.valid {
                flag = false;
                break;
            }
        }
        if flag {
            return Verdict::ok();
        }
    }
    result
}

/// Looks a function up by its (expected) name.
pub fn find_function<'a>(functions: &'a [Py], name: &str) -> Option<&'a Py> {
    functions.iter().find(|f| match f {
        Py::Dict(d) => dict_get(d, &Py::Str("name".into())).and_then(str_of) == Some(name),
        _ => false,
    })
}

fn field<'a>(d: &'a Py, key: &str) -> Option<&'a Py> {
    match d {
        Py::Dict(d) => dict_get(d, &Py::Str(key.into())),
        _ => None,
    }
}

/// `convert_func_name`: models served with OpenAI-style tools call `math.hypot` `math_hypot`.
fn called_name(name: &str, underscore_to_dot: bool) -> String {
    if underscore_to_dot {
        name.replace('.', "_")
    } else {
        name.to_string()
    }
}

/// `simple_function_checker`: one call against one expected call (`{name: {param: [answers]}}`).
pub fn simple_function_checker(
    function: &Py,
    call: &Call,
    expected: &Py,
    underscore_to_dot: bool,
) -> Verdict {
    let Some(possible) = (match expected {
        Py::Dict(d) => d.first().map(|(_, v)| v),
        _ => None,
    }) else {
        return Verdict::fail(
            "simple_function_checker:unclear",
            "No expected call.".into(),
        );
    };
    let Py::Dict(possible) = possible else {
        return Verdict::fail(
            "simple_function_checker:unclear",
            "No expected parameters.".into(),
        );
    };
    let func_name = field(function, "name").and_then(str_of).unwrap_or_default();
    let params = field(function, "parameters");
    let properties = params.and_then(|p| field(p, "properties"));
    let required = params
        .and_then(|p| field(p, "required"))
        .and_then(iterate)
        .unwrap_or_default();
    let func_name = called_name(func_name, underscore_to_dot);
    if call.0 != func_name {
        return Verdict::fail(
            "simple_function_checker:wrong_func_name",
            format!(
                "Function name {} not found in model output.",
                Py::Str(func_name).repr()
            ),
        );
    }
    let Py::Dict(model_params) = &call.1 else {
        return Verdict::fail("simple_function_checker:unclear", "No parameters.".into());
    };
    for r in &required {
        if dict_get(model_params, r).is_none() {
            return Verdict::fail(
                "simple_function_checker:missing_required",
                format!("Missing required parameter: {}.", r.repr()),
            );
        }
    }
    for (param, value) in model_params {
        let pname = key_text(param);
        let details = properties.and_then(|p| field(p, &pname));
        let (Some(details), Some(answers)) = (details, dict_get(possible, param)) else {
            return Verdict::fail(
                "simple_function_checker:unexpected_param",
                format!("Unexpected parameter: {}.", param.repr()),
            );
        };
        let answers = iterate(answers).unwrap_or_default();
        let desc = field(details, "type").and_then(str_of).unwrap_or("string");
        let Some(expected) = python_type(desc) else {
            return Verdict::fail(
                "type_error:simple",
                format!("Unknown type {desc:?} for parameter {}.", param.repr()),
            );
        };
        let nested = if matches!(desc, "array" | "tuple") {
            field(details, "items")
                .and_then(|i| field(i, "type"))
                .and_then(str_of)
                .and_then(python_type)
        } else {
            None
        };
        let mut value = value.clone();
        if desc == "tuple"
            && let Py::Tuple(v) = &value
        {
            value = Py::List(v.clone());
        }
        if desc == "float"
            && let Py::Int(i) = value
        {
            value = Py::Float(i as f64);
        }
        let t = type_checker(&pname, &value, &answers, desc, expected, nested);
        if !t.verdict.valid {
            return t.verdict;
        }
        if !t.is_variable {
            let r = match (&value, expected, nested) {
                (Py::Dict(d), "dict", _) => Some(dict_checker(d, &answers)),
                (Py::List(v), "list", Some("dict")) => Some(list_dict_checker(v, &answers)),
                (Py::Str(s), "str", _) => Some(string_checker(&pname, s, &answers)),
                (Py::List(v), "list", _) => Some(list_checker(&pname, v, &answers)),
                _ => None,
            };
            if let Some(r) = r {
                if !r.valid {
                    return r;
                }
                continue;
            }
        }
        if !contains(&answers, &value) {
            return Verdict::fail(
                "value_error:others",
                format!(
                    "Invalid value for parameter {}: {}. Expected one of {}.",
                    param.repr(),
                    value.repr(),
                    Py::List(answers).repr()
                ),
            );
        }
    }
    for (param, answers) in possible {
        let optional = iterate(answers)
            .unwrap_or_default()
            .iter()
            .any(|o| matches!(o, Py::Str(s) if s.is_empty()));
        if dict_get(model_params, param).is_none() && !optional {
            return Verdict::fail(
                "simple_function_checker:missing_optional",
                format!(
                    "Optional parameter {} not provided and not marked as optional.",
                    param.repr()
                ),
            );
        }
    }
    Verdict::ok()
}

fn expected_name(expected: &Py) -> String {
    match expected {
        Py::Dict(d) => d.first().map(|(k, _)| key_text(k)).unwrap_or_default(),
        _ => String::new(),
    }
}

fn check_against(functions: &[Py], call: &Call, expected: &Py, u2d: bool) -> Verdict {
    match find_function(functions, &expected_name(expected)) {
        Some(f) => simple_function_checker(f, call, expected, u2d),
        None => Verdict::fail(
            "simple_function_checker:unclear",
            format!(
                "No function {} among the functions.",
                expected_name(expected)
            ),
        ),
    }
}

/// `ast_checker`: `calls` (decoded) against `ground_truth` (a list of expected calls).
pub fn ast_checker(
    kind: Checker,
    functions: &[Py],
    calls: &[Call],
    ground_truth: &[Py],
    underscore_to_dot: bool,
) -> Verdict {
    match kind {
        Checker::Parallel => {
            if calls.len() != ground_truth.len() {
                return Verdict::fail(
                    "parallel_function_checker_no_order:wrong_count",
                    "Wrong number of functions.".into(),
                );
            }
            let mut matched: Vec<usize> = vec![];
            for (i, expected) in ground_truth.iter().enumerate() {
                let mut last = None;
                for (j, call) in calls.iter().enumerate() {
                    if matched.contains(&j) {
                        continue;
                    }
                    let r = check_against(functions, call, expected, underscore_to_dot);
                    let valid = r.valid;
                    last = Some(r);
                    if valid {
                        matched.push(j);
                        break;
                    }
                }
                if last.is_some_and(|r| !r.valid) {
                    return Verdict::fail(
                        "parallel_function_checker_no_order:cannot_find_match",
                        format!(
                            "Could not find a matching function among the model's unmatched calls for index {i} of possible answers."
                        ),
                    );
                }
            }
            Verdict::ok()
        }
        Checker::Multiple => {
            if calls.len() != ground_truth.len() {
                return Verdict::fail(
                    "multiple_function_checker:wrong_count",
                    "Wrong number of functions.".into(),
                );
            }
            check_against(functions, &calls[0], &ground_truth[0], underscore_to_dot)
        }
        Checker::Simple => {
            if calls.len() != 1 {
                return Verdict::fail(
                    "simple_function_checker:wrong_count",
                    "Wrong number of functions.".into(),
                );
            }
            match (functions.first(), ground_truth.first()) {
                (Some(f), Some(g)) => simple_function_checker(f, &calls[0], g, underscore_to_dot),
                _ => Verdict::fail("simple_function_checker:unclear", "No function.".into()),
            }
        }
        Checker::Irrelevance | Checker::Relevance => {
            let has_call = !calls.is_empty();
            if (kind == Checker::Irrelevance) != has_call {
                Verdict::ok()
            } else if has_call {
                Verdict::fail(
                    "irrelevance_error:decoder_success",
                    "Valid syntax. Successfully decode AST when it should not.".into(),
                )
            } else {
                Verdict::fail(
                    "relevance_error:decoder_failed",
                    "Valid syntax. Successfully decode AST when it should not.".into(),
                )
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::python::decode_calls;

    fn py(json: &str) -> Py {
        serde_json::from_str(json).unwrap()
    }

    fn check(kind: Checker, functions: &str, answer: &str, truth: &str) -> Verdict {
        let Py::List(functions) = py(functions) else {
            panic!()
        };
        let Py::List(truth) = py(truth) else { panic!() };
        let calls = decode_calls(answer).unwrap();
        ast_checker(kind, &functions, &calls, &truth, false)
    }

    const AREA: &str = r#"[{"name": "calc.area", "parameters": {"type": "dict", "properties": {"base": {"type": "integer"}, "height": {"type": "float"}, "unit": {"type": "string"}, "dims": {"type": "array", "items": {"type": "integer"}}}, "required": ["base"]}}]"#;
    const TRUTH: &str = r#"[{"calc.area": {"base": [10], "height": [5.0, ""], "unit": ["square cm", ""], "dims": [[1, 2], ""]}}]"#;

    #[test]
    fn the_checker_rules() {
        let v = |a: &str| check(Checker::Simple, AREA, a, TRUTH);
        assert!(v("[calc.area(base=10)]").valid);
        assert!(
            v("[calc.area(base=10, height=5, unit='Square-CM', dims=[1, 2])]").valid,
            "int for float, standardised string"
        );
        assert_eq!(
            v("[calc.area(height=5.0)]").error_type,
            "simple_function_checker:missing_required"
        );
        assert_eq!(
            v("[calc.area(base=10, depth=1)]").error_type,
            "simple_function_checker:unexpected_param"
        );
        assert_eq!(v("[calc.area(base=10.0)]").error_type, "type_error:simple");
        assert_eq!(v("[calc.area(base=11)]").error_type, "value_error:others");
        assert_eq!(
            v("[calc.area(base=10, unit='m')]").error_type,
            "value_error:string"
        );
        assert_eq!(
            v("[calc.area(base=10, dims=[2, 1])]").error_type,
            "value_error:list/tuple"
        );
        // BFCL's nested type check passes on the optional mark `""` (not a list), so a
        // wrong inner type falls to the value check.
        assert_eq!(
            v("[calc.area(base=10, dims=['a'])]").error_type,
            "value_error:list/tuple"
        );
        assert_eq!(
            v("[area(base=10)]").error_type,
            "simple_function_checker:wrong_func_name"
        );
        assert_eq!(
            v("[calc.area(base=10), calc.area(base=10)]").error_type,
            "simple_function_checker:wrong_count"
        );
        assert!(!v("[calc.area(base=True)]").valid, "a bool is not an int");
    }

    #[test]
    fn parallel_answers_match_in_any_order_and_irrelevance_wants_none() {
        let truth = r#"[{"calc.area": {"base": [1]}}, {"calc.area": {"base": [2]}}]"#;
        assert!(
            check(
                Checker::Parallel,
                AREA,
                "[calc.area(base=2), calc.area(base=1)]",
                truth
            )
            .valid
        );
        assert!(
            !check(
                Checker::Parallel,
                AREA,
                "[calc.area(base=2), calc.area(base=2)]",
                truth
            )
            .valid
        );
        assert!(check(Checker::Irrelevance, AREA, "[]", "[]").valid);
        assert!(!check(Checker::Irrelevance, AREA, "[calc.area(base=1)]", "[]").valid);
        assert!(check(Checker::Relevance, AREA, "[calc.area(base=1)]", "[]").valid);
    }
}
