//! Reading records from JSON Lines (or one JSON array) text, as every galley input file that
//! holds records is written; an error names the file and the line.

use serde::de::DeserializeOwned;

/// A record that could not be read: `at` is `FILE:LINE` (or `FILE` for an array).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{at}: bad {what} line: {msg}")]
pub struct JsonlError {
    pub at: String,
    pub what: String,
    pub msg: String,
}

/// Parses `text` (JSON lines, or a JSON array when it starts with `[`) into records; `name`
/// is the file for errors, `what` the kind of record ("completion", "input").
pub fn parse<T: DeserializeOwned>(
    text: &str,
    name: &str,
    what: &str,
) -> Result<Vec<T>, JsonlError> {
    let err = |at: String, e: serde_json::Error| JsonlError {
        at,
        what: what.into(),
        msg: e.to_string(),
    };
    if text.trim_start().starts_with('[') {
        return serde_json::from_str(text).map_err(|e| err(name.to_string(), e));
    }
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        out.push(serde_json::from_str(line).map_err(|e| err(format!("{name}:{}", i + 1), e))?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::RewardInput;

    #[test]
    fn lines_or_an_array_and_errors_name_the_line() {
        let rows: Vec<RewardInput> = parse(
            "{\"prompt\": \"q\", \"completion\": \"a\"}\n\n{\"prompt\": [{\"role\": \"user\", \"content\": \"q\"}], \"completion\": \"b\"}\n",
            "c.jsonl",
            "completion",
        )
        .unwrap();
        assert_eq!(rows[0].prompt, rows[1].prompt);
        let arr: Vec<RewardInput> = parse("[{\"completion\": \"x\"}]", "c.json", "input").unwrap();
        assert!(arr[0].prompt.is_empty());
        let e = parse::<RewardInput>(
            "{\"completion\": \"x\"}\n{\"completion\": 5}\n",
            "c.jsonl",
            "completion",
        )
        .unwrap_err();
        assert!(
            e.to_string().starts_with("c.jsonl:2: bad completion line"),
            "{e}"
        );
        let e = parse::<RewardInput>("{\"completion\": \"x\", \"typo\": 1}\n", "c.jsonl", "input")
            .unwrap_err();
        assert!(e.msg.contains("typo"), "{e}");
    }
}
