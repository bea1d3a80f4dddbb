//! The Berkeley Function Calling Leaderboard's single-turn categories (BFCL v4: simple,
//! multiple, parallel, parallel-multiple and irrelevance, live and not) as galley tasks with
//! `output_type: function_calling`. A document is one BFCL entry (`question`, `function`,
//! `ground_truth` as `scripts/fetch-eval-data.sh` joins them); the model is asked as BFCL's
//! prompting handlers ask an open model — its chat template, BFCL's default system prompt
//! listing the functions as JSON, the entry's own system message after it — and its answer is
//! read as a list of Python calls (`python`) and judged by BFCL's AST checker (`checker`).
//!
//! What BFCL does that this does not: its Java and JavaScript categories (their type
//! converters), multi-turn, agentic (web search, memory) and format-sensitivity categories,
//! and models' native tool-calling ("FC") mode.

pub mod checker;
pub mod python;
pub mod task;
pub mod value;

use checker::{Checker, Verdict, ast_checker};
use galley_core::Message;
use value::{Py, dict_get, json_dumps_indent4};

/// A task's `function_calling:` block.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FunctionCalling {
    /// How answers are judged: `simple`, `multiple`, `parallel` (BFCL's parallel and
    /// parallel-multiple), `irrelevance` (no call is right), `relevance` (any call is).
    pub checker: Checker,
}

/// One BFCL entry.
#[derive(Debug, Clone)]
pub struct Entry {
    pub id: String,
    /// The first turn's messages (single-turn categories have one turn).
    pub messages: Vec<Message>,
    pub functions: Vec<Py>,
    pub ground_truth: Vec<Py>,
}

fn get<'a>(d: &'a Py, key: &str) -> Option<&'a Py> {
    match d {
        Py::Dict(kv) => dict_get(kv, &Py::Str(key.into())),
        _ => None,
    }
}

impl Entry {
    /// An entry from its JSON line (read in order: the prompt shows the functions as written).
    pub fn parse(line: &str) -> Result<Entry, String> {
        let v: Py = serde_json::from_str(line).map_err(|e| format!("not JSON: {e}"))?;
        Self::from_py(&v)
    }

    pub fn from_py(v: &Py) -> Result<Entry, String> {
        let id = match get(v, "id") {
            Some(Py::Str(s)) => s.clone(),
            _ => String::new(),
        };
        let Some(Py::List(turns)) = get(v, "question") else {
            return Err("`question` is not a list of turns".into());
        };
        let first = match turns.first() {
            Some(Py::List(m)) => m,
            // One flat list of messages, as some copies of the data have it.
            _ => turns,
        };
        let messages = first
            .iter()
            .map(|m| match (get(m, "role"), get(m, "content")) {
                (Some(Py::Str(r)), Some(Py::Str(c))) => Ok(Message::new(r.as_str(), c.as_str())),
                _ => Err("a message without a string `role` and `content`".to_string()),
            })
            .collect::<Result<Vec<_>, _>>()?;
        let Some(Py::List(functions)) = get(v, "function") else {
            return Err("`function` is not a list of function documents".into());
        };
        let ground_truth = match get(v, "ground_truth") {
            Some(Py::List(g)) => g.clone(),
            None | Some(Py::None) => vec![],
            Some(_) => return Err("`ground_truth` is not a list of calls".into()),
        };
        Ok(Entry {
            id,
            messages,
            functions: functions.clone(),
            ground_truth,
        })
    }

    /// The conversation BFCL sends an open model: its default system prompt first (merged
    /// with the entry's own system message, which comes after it).
    pub fn conversation(&self) -> Vec<Message> {
        let prompt = system_prompt(&self.functions);
        let mut messages = self.messages.clone();
        match messages.first_mut() {
            Some(m) if m.role == "system" => m.content = format!("{prompt}\n\n{}", m.content),
            _ => messages.insert(0, Message::new("system", prompt)),
        }
        messages
    }
}

/// `_func_doc_language_specific_pre_processing` for Python: a note on the syntax at the end
/// of each description.
fn with_python_hint(functions: &[Py]) -> Vec<Py> {
    functions
        .iter()
        .map(|f| {
            let Py::Dict(kv) = f else { return f.clone() };
            let kv = kv
                .iter()
                .map(|(k, v)| match (k, v) {
                    (Py::Str(k), Py::Str(d)) if k == "description" => (
                        Py::Str(k.clone()),
                        Py::Str(format!(
                            "{d} Note that the provided function is in Python 3 syntax."
                        )),
                    ),
                    _ => (k.clone(), v.clone()),
                })
                .collect();
            Py::Dict(kv)
        })
        .collect()
}

/// BFCL's default system prompt (`ret_fmt=python&tool_call_tag=False&func_doc_fmt=json&
/// prompt_fmt=plaintext&style=classic`), as `formulate_system_prompt` assembles it.
pub fn system_prompt(functions: &[Py]) -> String {
    let docs = json_dumps_indent4(&Py::List(with_python_hint(functions)));
    let persona = "You are an expert in composing functions.";
    let task = "You are given a question and a set of possible functions. Based on the question, you will need to make one or more function/tool calls to achieve the purpose. If none of the functions can be used, point it out. If the given question lacks the parameters required by the function, also point it out.";
    let format = "[func_name1(params_name1=params_value1, params_name2=params_value2...), func_name2(params)]";
    let tool_call = format!(
        "You should only return the function calls in your response.\n\nIf you decide to invoke any of the function(s), you MUST put it in the format of {format}.  You SHOULD NOT include any other text in the response."
    );
    let multiturn = "At each turn, you should try your best to complete the tasks requested by the user within the current turn. Continue to output functions to call until you have fulfilled the user's request to the best of your ability. Once you have no more functions to call, the system will consider the current turn complete and proceed to the next turn or task.";
    let tools =
        format!("Here is a list of functions in json format that you can invoke.\n{docs}\n");
    format!("{persona}{task}\n\n{tool_call}\n\n{multiturn}\n\n{tools}")
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

/// BFCL's `GORILLA_TO_OPENAPI`.
fn openapi_type(t: &str) -> &'static str {
    match t {
        "integer" | "byte" | "short" | "long" | "Bigint" => "integer",
        "number" | "float" | "double" => "number",
        "boolean" | "bool" => "boolean",
        "array" | "list" | "tuple" | "ArrayList" | "Array" | "Queue" | "Stack" => "array",
        "dict" | "object" | "HashMap" | "Hashtable" => "object",
        // string, any, char, String, Any and whatever else: a string.
        _ => "string",
    }
}

fn set(kv: &mut Vec<(Py, Py)>, key: &str, v: Py) {
    match kv
        .iter_mut()
        .find(|(k, _)| matches!(k, Py::Str(s) if s == key))
    {
        Some(slot) => slot.1 = v,
        None => kv.push((Py::Str(key.into()), v)),
    }
}

fn get_mut<'a>(kv: &'a mut [(Py, Py)], key: &str) -> Option<&'a mut Py> {
    kv.iter_mut()
        .find(|(k, _)| matches!(k, Py::Str(s) if s == key))
        .map(|(_, v)| v)
}

fn set_item_type(item: &mut Py) {
    if let Py::Dict(kv) = item
        && let Some(Py::Str(t)) = get_mut(kv, "type")
    {
        *t = openapi_type(t).into();
    }
}

/// BFCL's `_cast_to_openai_type` over a `properties` dict.
fn cast_properties(props: &mut Py) {
    let Py::Dict(props) = props else { return };
    for (_, value) in props.iter_mut() {
        let Py::Dict(v) = value else { continue };
        let var_type = match get(&Py::Dict(v.clone()), "type") {
            Some(Py::Str(t)) => t.clone(),
            _ => {
                set(v, "type", Py::Str("string".into()));
                "string".into()
            }
        };
        if var_type == "float" {
            set(v, "format", Py::Str("float".into()));
            if let Some(Py::Str(d)) = get_mut(v, "description") {
                d.push_str(" This is a float type value.");
            }
        }
        let mapped = openapi_type(&var_type);
        set(v, "type", Py::Str(mapped.into()));
        if matches!(mapped, "array" | "object") {
            if let Some(p) = get_mut(v, "properties") {
                cast_properties(p);
            } else if let Some(Py::Dict(items)) = get_mut(v, "items") {
                if let Some(Py::Str(t)) = get_mut(items, "type") {
                    *t = openapi_type(t).into();
                }
                let inner_type = match get_mut(items, "type") {
                    Some(Py::Str(t)) => t.clone(),
                    _ => String::new(),
                };
                if inner_type == "array"
                    && let Some(inner) = get_mut(items, "items")
                {
                    set_item_type(inner);
                } else if inner_type == "object"
                    && let Some(p) = get_mut(items, "properties")
                {
                    cast_properties(p);
                }
            }
        }
    }
}

/// The functions as OpenAI tools, as BFCL's `convert_to_tool(functions, GORILLA_TO_OPENAPI,
/// OPENAI_COMPLETIONS)` makes them for a model asked in FC mode: names with dots written with
/// underscores (OpenAI's rule for names), `dict` as `object`, `float` as `number` (with
/// `"format": "float"` and a note in the description), each wrapped as `{"type":
/// "function", "function": ...}`; keys in their order.
pub fn openai_tools(functions: &[Py]) -> Py {
    // BFCL adds the language note to every entry when it loads them, for both modes.
    let tools = with_python_hint(functions)
        .iter()
        .map(|f| {
            let mut f = f.clone();
            if let Py::Dict(kv) = &mut f {
                if let Some(Py::Str(name)) = get_mut(kv, "name") {
                    *name = name.replace('.', "_");
                }
                if let Some(Py::Dict(params)) = get_mut(kv, "parameters") {
                    set(params, "type", Py::Str("object".into()));
                    if let Some(p) = get_mut(params, "properties") {
                        cast_properties(p);
                    }
                }
            }
            Py::Dict(vec![
                (Py::Str("type".into()), Py::Str("function".into())),
                (Py::Str("function".into()), f),
            ])
        })
        .collect();
    Py::List(tools)
}

/// Judges an answer given as tool calls (FC mode), as BFCL's FC handlers decode them: each
/// call's arguments parsed as JSON; no calls, or arguments that are not a JSON object, is an
/// answer that does not decode. Names are compared in their underscored form.
pub fn judge_calls(kind: Checker, entry: &Entry, calls: &[galley_core::ToolCall]) -> Judged {
    let decoded: Result<Vec<python::Call>, String> = if calls.is_empty() {
        Err("the model made no tool call".into())
    } else {
        calls
            .iter()
            .map(|c| match serde_json::from_str::<Py>(&c.arguments) {
                Ok(args @ Py::Dict(_)) => Ok((c.name.clone(), args)),
                Ok(other) => Err(format!(
                    "arguments are a {}, not an object",
                    other.type_name()
                )),
                Err(e) => Err(format!("arguments are not JSON: {e}")),
            })
            .collect()
    };
    verdict(kind, entry, decoded, true)
}

/// A judged answer: the verdict and the calls read from it (`None`: it did not read as calls).
pub struct Judged {
    pub verdict: Verdict,
    pub calls: Option<Vec<python::Call>>,
}

impl Judged {
    /// What `samples.jsonl` records beside the grade.
    pub fn to_json(&self) -> serde_json::Value {
        let calls = self.calls.as_ref().map(|c| {
            c.iter()
                .map(|(name, args)| serde_json::json!({ name.as_str(): args.to_json() }))
                .collect::<Vec<_>>()
        });
        serde_json::json!({
            "valid": self.verdict.valid,
            "error": self.verdict.error,
            "error_type": self.verdict.error_type,
            "decoded": calls,
        })
    }
}

/// Judges `answer` for `entry` as BFCL's evaluation runner does for the checker's category.
pub fn judge(kind: Checker, entry: &Entry, answer: &str) -> Judged {
    verdict(kind, entry, python::decode_calls(answer), false)
}

fn verdict(
    kind: Checker,
    entry: &Entry,
    decoded: Result<Vec<python::Call>, String>,
    underscore_to_dot: bool,
) -> Judged {
    let verdict = match (&decoded, kind) {
        (Ok(calls), _) => ast_checker(
            kind,
            &entry.functions,
            calls,
            &entry.ground_truth,
            underscore_to_dot,
        ),
        (Err(_), Checker::Irrelevance) => Verdict {
            valid: true,
            error: vec![],
            error_type: String::new(),
        },
        (Err(e), Checker::Relevance) => Verdict {
            valid: false,
            error: vec![format!("Invalid syntax. Failed to decode AST. {e}")],
            error_type: "relevance_error:decoder_failed".into(),
        },
        (Err(e), _) => Verdict {
            valid: false,
            error: vec![format!("Invalid syntax. Failed to decode AST. {e}")],
            error_type: "ast_decoder:decoder_failed".into(),
        },
    };
    Judged {
        verdict,
        calls: decoded.ok(),
    }
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
