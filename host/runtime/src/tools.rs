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

/// A name OpenAI's API accepts for a function: 1-64 of a-z, A-Z, 0-9, '_' or '-'.
pub fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

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
        if !valid_name(&name) {
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
