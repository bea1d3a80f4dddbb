//! What the host checks of a tool plugin's answers before a model reads them: the functions
//! it declares (names a chat template and a call parser can carry, descriptions and schemas
//! of bounded size) and the length of a call's result.

use galley_core::ToolFunction;

/// The most functions one tool plugin may declare.
pub const MAX_FUNCTIONS: usize = 64;
/// The longest description kept, in bytes.
pub const MAX_DESCRIPTION: usize = 4096;
/// The longest parameters schema, in bytes of JSON.
pub const MAX_PARAMETERS: usize = 16 << 10;
/// The longest result handed to the model, in bytes; the rest is cut and the cut said.
pub const MAX_RESULT: usize = 64 << 10;

/// The declared functions, checked: every name valid and unique, every description and
/// schema within its size, every schema a JSON object. The error says which and why.
pub fn check_functions(raw: Vec<(String, String, String)>) -> Result<Vec<ToolFunction>, String> {
    if raw.is_empty() {
        return Err("declares no function".into());
    }
    if raw.len() > MAX_FUNCTIONS {
        return Err(format!(
            "declares {} functions (at most {MAX_FUNCTIONS})",
            raw.len()
        ));
    }
    let mut out: Vec<ToolFunction> = Vec::with_capacity(raw.len());
    for (name, description, parameters) in raw {
        let shown = galley_core::text::untrusted(&name, 80);
        if !ToolFunction::valid_name(&name) {
            return Err(format!(
                "declares a function named `{shown}`: a name is 1-64 characters of a-z, A-Z, 0-9, '_' or '-'"
            ));
        }
        if out.iter().any(|f| f.name == name) {
            return Err(format!("declares two functions named `{name}`"));
        }
        if description.len() > MAX_DESCRIPTION {
            return Err(format!(
                "function `{name}`: its description has {} bytes (at most {MAX_DESCRIPTION})",
                description.len()
            ));
        }
        if parameters.len() > MAX_PARAMETERS {
            return Err(format!(
                "function `{name}`: its parameters schema has {} bytes (at most {MAX_PARAMETERS})",
                parameters.len()
            ));
        }
        let schema: serde_json::Value = serde_json::from_str(&parameters)
            .map_err(|e| format!("function `{name}`: its parameters are not JSON: {e}"))?;
        if !schema.is_object() {
            return Err(format!(
                "function `{name}`: its parameters must be a JSON Schema object"
            ));
        }
        out.push(ToolFunction {
            name,
            description,
            parameters: schema,
        });
    }
    Ok(out)
}

/// Checks a call's arguments against the top level of its function's schema before they
/// cross: every `required` key present, every property whose schema names a JSON `type`
/// (or a list of them) of that type, no other key where `additionalProperties` is `false`.
/// Deeper keywords are the tool's to check. The error names the argument, for the model.
pub fn check_arguments(
    schema: &serde_json::Value,
    args: &serde_json::Map<String, serde_json::Value>,
) -> Result<(), String> {
    use serde_json::Value;
    let props = schema.get("properties").and_then(Value::as_object);
    if let Some(required) = schema.get("required").and_then(Value::as_array) {
        for key in required.iter().filter_map(Value::as_str) {
            if !args.contains_key(key) {
                return Err(format!("missing the required argument `{key}`"));
            }
        }
    }
    for (key, value) in args {
        let Some(p) = props.and_then(|p| p.get(key)) else {
            if schema.get("additionalProperties") == Some(&Value::Bool(false)) {
                let key = galley_core::text::untrusted(key, 64);
                return Err(format!("takes no argument `{key}`"));
            }
            continue;
        };
        let types: Vec<&str> = match p.get("type") {
            Some(Value::String(t)) => vec![t.as_str()],
            Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).collect(),
            _ => continue,
        };
        let is = |t: &str| match t {
            "string" => value.is_string(),
            "integer" => value.is_i64() || value.is_u64(),
            "number" => value.is_number(),
            "boolean" => value.is_boolean(),
            "array" => value.is_array(),
            "object" => value.is_object(),
            "null" => value.is_null(),
            // A type this check does not know: the tool's to judge.
            _ => true,
        };
        if !types.is_empty() && !types.iter().any(|t| is(t)) {
            return Err(format!("`{key}` must be {}", types.join(" or ")));
        }
    }
    Ok(())
}

/// A result within [`MAX_RESULT`] bytes, cut at a character boundary with the cut said, so
/// the model (and whoever reads the rollouts) knows the text ends there.
pub fn cap_result(mut text: String) -> String {
    if text.len() <= MAX_RESULT {
        return text;
    }
    let total = text.len();
    let mut end = MAX_RESULT;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
    text.push_str(&format!(" [... cut: {total} bytes, {MAX_RESULT} kept]"));
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(name: &str, params: &str) -> (String, String, String) {
        (name.into(), "d".into(), params.into())
    }

    #[test]
    fn functions_are_checked() {
        assert!(check_functions(vec![f("add", r#"{"type":"object"}"#)]).is_ok());
        let err = |v| check_functions(v).unwrap_err();
        assert!(err(vec![]).contains("no function"));
        assert!(err(vec![f("a b", "{}")]).contains("`a b`"));
        assert!(err(vec![f("", "{}")]).contains("1-64"));
        assert!(err(vec![f("x\n<|im_start|>", "{}")]).contains("\\n"));
        assert!(err(vec![f("add", "{}"), f("add", "{}")]).contains("two functions"));
        assert!(err(vec![f("add", "[1]")]).contains("JSON Schema object"));
        assert!(err(vec![f("add", "{")]).contains("not JSON"));
        let long = (
            String::from("add"),
            "d".repeat(MAX_DESCRIPTION + 1),
            "{}".into(),
        );
        assert!(err(vec![long]).contains("description"));
        let many: Vec<_> = (0..=MAX_FUNCTIONS)
            .map(|i| f(&format!("f{i}"), "{}"))
            .collect();
        assert!(err(many).contains("at most 64"));
    }

    #[test]
    fn arguments_are_checked_against_the_top_of_the_schema() {
        let schema = serde_json::json!({"type": "object", "properties": {
            "a": {"type": "integer"}, "s": {"type": ["string", "null"]}, "x": {"minimum": 3}},
            "required": ["a"]});
        let args = |v: serde_json::Value| v.as_object().unwrap().clone();
        let check = |v| check_arguments(&schema, &args(v));
        assert_eq!(
            check(serde_json::json!({"a": 1, "s": null, "x": "any", "extra": 1})),
            Ok(())
        );
        assert_eq!(
            check(serde_json::json!({"s": "t"})),
            Err("missing the required argument `a`".into())
        );
        assert_eq!(
            check(serde_json::json!({"a": 1.5})),
            Err("`a` must be integer".into())
        );
        assert_eq!(
            check(serde_json::json!({"a": 1, "s": 2})),
            Err("`s` must be string or null".into())
        );
        let closed = serde_json::json!({"properties": {}, "additionalProperties": false});
        assert_eq!(
            check_arguments(&closed, &args(serde_json::json!({"b": 1}))),
            Err("takes no argument `b`".into())
        );
    }

    #[test]
    fn results_are_capped_at_a_char_boundary() {
        assert_eq!(cap_result("ok".into()), "ok");
        let s = "é".repeat(MAX_RESULT); // two bytes each
        let out = cap_result(s);
        assert!(out.ends_with(&format!(
            "[... cut: {} bytes, {MAX_RESULT} kept]",
            2 * MAX_RESULT
        )));
        assert!(out.len() < MAX_RESULT + 64);
    }
}
