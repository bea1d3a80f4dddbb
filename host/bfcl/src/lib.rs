//! galley-bfcl: the Berkeley Function Calling Leaderboard's reading and judging of
//! function-calling answers, as one piece that both sides of galley use: `galley eval` runs
//! BFCL's categories natively with it (galley-eval's `bfcl`), and the `galley/function-call`
//! reward plugin compiles it to WebAssembly to score completions in the sandbox, so a model
//! trained with that reward is scored the way it will be evaluated. It depends on serde alone.
//!
//! An answer is read as a list of Python calls (`python`, BFCL's prompting mode) or taken as
//! tool calls (BFCL's FC mode), and judged by BFCL's AST checker (`checker`) against the
//! entry's functions and possible answers. The functions are shown to a model as BFCL shows
//! them: its default system prompt (`system_prompt`) or OpenAI tools (`openai_tools`).

pub mod checker;
mod entry;
pub mod python;
pub mod value;

pub use entry::{Entry, Msg};

use checker::{Checker, Verdict, ast_checker};
use value::{Py, dict_get, json_dumps_indent4};

/// A key of a JSON object (`None` for a missing key or a non-object).
pub(crate) fn get<'a>(d: &'a Py, key: &str) -> Option<&'a Py> {
    match d {
        Py::Dict(kv) => dict_get(kv, &Py::Str(key.into())),
        _ => None,
    }
}

/// `_func_doc_language_specific_pre_processing` for Python: a note on the syntax at the end
/// of each description.
pub fn with_python_hint(functions: &[Py]) -> Vec<Py> {
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
        let var_type = match dict_get(v, &Py::Str("type".into())) {
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

/// Judges an answer given as tool calls (FC mode: each a name and its arguments' JSON text),
/// as BFCL's FC handlers decode them: each call's arguments parsed as JSON; no calls, or
/// arguments that are not a JSON object, is an answer that does not decode. Names are
/// compared in their underscored form.
pub fn judge_calls(
    kind: Checker,
    functions: &[Py],
    ground_truth: &[Py],
    calls: &[(String, String)],
) -> Judged {
    let decoded: Result<Vec<python::Call>, String> = if calls.is_empty() {
        Err("the model made no tool call".into())
    } else {
        calls
            .iter()
            .map(
                |(name, arguments)| match serde_json::from_str::<Py>(arguments) {
                    Ok(args @ Py::Dict(_)) => Ok((name.clone(), args)),
                    Ok(other) => Err(format!(
                        "arguments are a {}, not an object",
                        other.type_name()
                    )),
                    Err(e) => Err(format!("arguments are not JSON: {e}")),
                },
            )
            .collect()
    };
    verdict(kind, functions, ground_truth, decoded, true)
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

/// Judges a written `answer` (BFCL's prompting mode: Python calls) against `functions` and
/// `ground_truth` as BFCL's evaluation runner does for the checker's category.
pub fn judge(kind: Checker, functions: &[Py], ground_truth: &[Py], answer: &str) -> Judged {
    verdict(
        kind,
        functions,
        ground_truth,
        python::decode_calls(answer),
        false,
    )
}

fn verdict(
    kind: Checker,
    functions: &[Py],
    ground_truth: &[Py],
    decoded: Result<Vec<python::Call>, String>,
    underscore_to_dot: bool,
) -> Judged {
    let verdict = match (&decoded, kind) {
        (Ok(calls), _) => ast_checker(kind, functions, calls, ground_truth, underscore_to_dot),
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
