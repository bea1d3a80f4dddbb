//! `calculate`: the arithmetic tool of tool-use RL recipes (the model writes an expression,
//! reads back its value). Numbers are decimals; `+ - * / %`, `^` (or `**`) for powers,
//! unary minus and parentheses, with the usual precedence (`^` binds tightest and groups to
//! the right). Whole results print without a decimal point, others with up to 12
//! significant digits, so the model reads what it would write. Anything else is an
//! `invalid-input` error the model reads back.

mod expr;

pub use expr::{evaluate, format_number};
use galley_sdk::serde_json::{Value, json};
use galley_sdk::tool::{Function, Tool};
use galley_sdk::{Config, Error};

#[derive(Default)]
pub struct Calculator;

impl Tool for Calculator {
    fn new(_config: &Config) -> Result<Self, Error> {
        Ok(Calculator)
    }

    fn functions(&self) -> Vec<Function> {
        vec![Function::new(
            "calculate",
            "Evaluates an arithmetic expression (numbers, + - * / % ^ and parentheses) and returns its value.",
            json!({
                "type": "object",
                "properties": {
                    "expression": {
                        "type": "string",
                        "description": "The expression, e.g. \"(12 + 30) * 2\""
                    }
                },
                "required": ["expression"]
            }),
        )]
    }

    fn call(&mut self, name: &str, arguments: &Value) -> Result<String, Error> {
        if name != "calculate" {
            return Err(Error::input(format!("no function named `{name}`")));
        }
        let expr = match &arguments["expression"] {
            Value::String(s) => s.clone(),
            // A model often writes the number itself.
            Value::Number(n) => n.to_string(),
            _ => return Err(Error::input("`expression` must be a string")),
        };
        evaluate(&expr).map(format_number).map_err(Error::input)
    }
}

galley_sdk::export_tool!(Calculator);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_function_reads_its_arguments() {
        let mut c = Calculator;
        assert_eq!(
            c.call("calculate", &json!({"expression": "6*7"})).unwrap(),
            "42"
        );
        assert_eq!(
            c.call("calculate", &json!({"expression": 42})).unwrap(),
            "42"
        );
        assert!(c.call("calculate", &json!({})).is_err());
        assert!(c.call("other", &json!({})).is_err());
    }
}
