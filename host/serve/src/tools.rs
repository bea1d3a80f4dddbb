//! Tool calling on `/v1/chat/completions`, as OpenAI's API and vLLM's server have it: the
//! request's `tools` are checked and handed to the chat template (which shows them to the
//! model in its own words), `tool_choice` decides what the answer may be, and calls come back
//! as `message.tool_calls` (or streamed `delta.tool_calls`) with `finish_reason: "tool_calls"`.
//! `auto` reads calls out of free text in the format the template teaches
//! ([`galley_model::tool_calls`]); `required` and a named function hold decoding to a call:
//! the format's opening is put after the generation prompt and the JSON that follows is
//! constrained to `{"name": <one of the tools>, "arguments": <that tool's parameters>}`
//! (a tagged union of the tools' schemas), so even a small model answers with a call that
//! parses and validates. `none` shows the tools and reads no call.

use crate::api::{ApiError, Shared};
use crate::lazy::Lazy;
use galley_model::ChatTemplate;
use galley_model::json_schema::{Guide, Json, Obj, Schema};
use galley_model::tool_calls::{Parsed, ToolCall, ToolFormat};
use serde::Deserialize;
use serde_json::{Value, json};
use std::borrow::Cow;
use std::sync::Arc;

/// The most tools `tool_choice: "required"` holds a call to (the schema's tagged union
/// matches the name as one of at most this many constants).
const MAX_REQUIRED: usize = 64;

/// How an answer's tool calls are read.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ToolPlan {
    pub(crate) format: ToolFormat,
    /// The answer is a call from its first token (`required` or a named function).
    pub(crate) forced: bool,
    /// `parallel_tool_calls`: more than one call may be returned.
    pub(crate) parallel: bool,
}

/// What a request's tools change: the list the template renders, how calls are read (none
/// when `tool_choice` is `none` or there are no tools), and the constraint of a forced call.
#[derive(Default)]
pub(crate) struct Tools {
    pub(crate) list: Option<Json>,
    pub(crate) plan: Option<ToolPlan>,
    pub(crate) guide: Option<Guide>,
    /// With `auto`: each call the model opens is held to the tools' schemas.
    pub(crate) lazy: Option<Lazy>,
}

#[derive(Deserialize)]
struct Body {
    tools: Option<Vec<Json>>,
    tool_choice: Option<Json>,
    parallel_tool_calls: Option<bool>,
}

enum Choice {
    None,
    Auto,
    Required,
    Named(String),
}

fn bad(message: impl Into<String>, param: impl Into<Cow<'static, str>>) -> ApiError {
    ApiError {
        param: Some(param.into()),
        ..ApiError::bad(message, None)
    }
}

/// A tool as the request gives it: its name and parameters' schema (an empty object schema
/// when it takes none).
struct Tool {
    name: String,
    parameters: Json,
}

/// Reads `tools`, `tool_choice` and `parallel_tool_calls` from the raw `body` (so that the
/// tools' properties keep their order in the prompt and in a forced call), checked, for a
/// model with `template` writing calls as `detected`; `json`: whether `response_format`
/// already holds the answer.
pub(crate) fn read(
    template: Option<&ChatTemplate>,
    detected: Option<ToolFormat>,
    body: &[u8],
    json: bool,
) -> Result<Tools, ApiError> {
    let b: Body = serde_json::from_slice(body).map_err(|e| bad(format!("{e}"), "tools"))?;
    let list = b.tools.unwrap_or_default();
    let mut tools: Vec<Tool> = Vec::with_capacity(list.len());
    for (i, t) in list.iter().enumerate() {
        let tool = tool(t, i)?;
        if tools.iter().any(|o| o.name == tool.name) {
            return Err(bad(
                format!("tools[{i}]: the name `{}` is given twice", tool.name),
                format!("tools[{i}].function.name"),
            ));
        }
        tools.push(tool);
    }
    let choice = match &b.tool_choice {
        None | Some(Json::Null) => {
            if tools.is_empty() {
                Choice::None
            } else {
                Choice::Auto
            }
        }
        Some(Json::String(c)) => match c.as_str() {
            "none" => Choice::None,
            "auto" => Choice::Auto,
            "required" => Choice::Required,
            other => {
                return Err(bad(
                    format!("tool_choice `{other}` is not none, auto, required or a function"),
                    "tool_choice",
                ));
            }
        },
        Some(c) => {
            let name = c
                .pointer("/function/name")
                .and_then(Json::as_str)
                .filter(|_| c.pointer("/type").and_then(Json::as_str) == Some("function"))
                .ok_or_else(|| {
                    bad(
                        "tool_choice must be none, auto, required or {\"type\": \"function\", \"function\": {\"name\": ...}}",
                        "tool_choice",
                    )
                })?;
            if !tools.iter().any(|t| t.name == name) {
                return Err(bad(
                    format!("tool_choice names `{name}`, which is not among the tools"),
                    "tool_choice",
                ));
            }
            Choice::Named(name.into())
        }
    };
    if tools.is_empty() && !matches!(choice, Choice::None) {
        return Err(bad("tool_choice needs tools", "tool_choice"));
    }
    let parallel = b.parallel_tool_calls.unwrap_or(true);
    let list = (!tools.is_empty()).then_some(Json::Array(list));
    if matches!(choice, Choice::None) {
        return Ok(Tools {
            list,
            ..Tools::default()
        });
    }
    if json {
        return Err(bad(
            "response_format and tools cannot both decide the answer: send tool_choice none, or no response_format",
            "response_format",
        ));
    }
    let tmpl = template;
    let renders = tmpl.is_some_and(|t| t.renders_tools());
    let origin = tmpl.map_or("(none)", |t| t.origin.as_str());
    let format = match (&choice, renders, detected) {
        (Choice::Auto, false, _) => {
            return Err(bad(
                format!(
                    "the model's chat template ({origin}) does not show `tools` to the model, so it cannot choose to call one: serve it with --chat-template FILE whose template does, or ask tool_choice required or a named function"
                ),
                "tools",
            ));
        }
        (Choice::Auto, true, None) => {
            return Err(bad(
                format!(
                    "galley does not know how the model of this chat template ({origin}) writes a tool call: serve it with --tool-call-parser hermes|llama3_json|mistral|mistral_args|qwen3_coder|deepseek_v31|kimi_k2|json"
                ),
                "tools",
            ));
        }
        (_, true, Some(f)) => f,
        // A template that shows no tools (or no format galley knows): a forced call is
        // written as one bare JSON object.
        _ => ToolFormat::Json,
    };
    let forced = !matches!(choice, Choice::Auto);
    // A call no schema can hold (Mistral's `name[ARGS]{...}`) is forced as one bare object.
    let format = if forced && !format.holdable() {
        ToolFormat::Json
    } else {
        format
    };
    // A forced call tells the tools apart by their name, matched as one of at most 64
    // constants.
    if matches!(choice, Choice::Required) && tools.len() > MAX_REQUIRED {
        return Err(bad(
            format!(
                "tool_choice required: a call among at most {MAX_REQUIRED} tools can be enforced, not {}; name one, or use auto",
                tools.len()
            ),
            "tool_choice",
        ));
    }
    let guide = match &choice {
        Choice::Required => Some(forced_guide(&tools, format, parallel)?),
        Choice::Named(n) => {
            let one: Vec<&Tool> = tools.iter().filter(|t| &t.name == n).collect();
            Some(forced_guide_of(&one, format, false)?)
        }
        _ => None,
    };
    // `auto`: a call the model opens is held to the tools (llama.cpp's lazy grammar); the
    // text around it stays free. Tools whose schemas galley cannot enforce are only read.
    let lazy = match (&choice, format.opener()) {
        (Choice::Auto, Some(trigger)) if tools.len() <= MAX_REQUIRED && format.holdable() => {
            forced_guide(&tools, format, parallel)
                .ok()
                .map(|guide| Lazy {
                    trigger: trigger.into(),
                    guide,
                    end: false,
                })
        }
        _ => None,
    };
    Ok(Tools {
        list,
        lazy,
        plan: Some(ToolPlan {
            format,
            forced,
            parallel: parallel && !matches!(choice, Choice::Named(_)),
        }),
        guide,
    })
}

/// One entry of `tools`, checked: `{"type": "function", "function": {"name", "description"?,
/// "parameters"?}}` with OpenAI's rule for names (1 to 64 letters, digits, `_` or `-`).
fn tool(t: &Json, i: usize) -> Result<Tool, ApiError> {
    let at = |k: &str| format!("tools[{i}]{k}");
    if t.pointer("/type").and_then(Json::as_str) != Some("function") {
        return Err(bad(
            format!("{}: only tools of type `function` are known", at("")),
            at(".type"),
        ));
    }
    let f = t
        .pointer("/function")
        .and_then(Json::as_object)
        .ok_or_else(|| {
            bad(
                format!("{}: `function` is missing", at("")),
                at(".function"),
            )
        })?;
    let name = f.get("name").and_then(Json::as_str).unwrap_or_default();
    if !galley_core::ToolFunction::valid_name(name) {
        return Err(bad(
            format!(
                "{}: the name {name:?} must be 1 to 64 letters, digits, `_` or `-`",
                at("")
            ),
            at(".function.name"),
        ));
    }
    let parameters = match f.get("parameters") {
        None | Some(Json::Null) => Json::Object(Obj(vec![
            ("type".into(), Json::String("object".into())),
            ("properties".into(), Json::Object(Obj::default())),
        ])),
        Some(p @ Json::Object(_)) => p.clone(),
        Some(_) => {
            return Err(bad(
                format!("{}: `parameters` must be a JSON schema object", at("")),
                at(".function.parameters"),
            ));
        }
    };
    Ok(Tool {
        name: name.into(),
        parameters,
    })
}

fn forced_guide(tools: &[Tool], format: ToolFormat, parallel: bool) -> Result<Guide, ApiError> {
    let all: Vec<&Tool> = tools.iter().collect();
    forced_guide_of(&all, format, parallel)
}

/// The schema a forced call is held to: `{"name": const, <arguments key>: parameters}` for
/// each tool (a union told apart by the name when there are several), in a list for
/// Mistral's format (one call unless `parallel`).
fn forced_guide_of(tools: &[&Tool], format: ToolFormat, parallel: bool) -> Result<Guide, ApiError> {
    let key = format.arguments_key();
    let list = format.forced_list();
    let base = if list { "#/items" } else { "#" };
    let mut branches = Vec::with_capacity(tools.len());
    for (i, t) in tools.iter().enumerate() {
        // Each tool's schema alone first, so a keyword galley cannot enforce is reported
        // where the client wrote it.
        Schema::compile(&t.parameters)
            .map_err(|e| bad(format!("tool `{}`: its parameters: {e}", t.name), "tools"))?;
        let at = if tools.len() > 1 {
            format!("{base}/anyOf/{i}/properties/{key}")
        } else {
            format!("{base}/properties/{key}")
        };
        let mut params = t.parameters.clone();
        rebase_refs(&mut params, &at);
        branches.push(obj(vec![
            ("type", Json::String("object".into())),
            (
                "properties",
                obj(vec![
                    ("name", obj(vec![("const", Json::String(t.name.clone()))])),
                    (key, params),
                ]),
            ),
            (
                "required",
                Json::Array(vec![Json::String("name".into()), Json::String(key.into())]),
            ),
        ]));
    }
    let call = if branches.len() == 1 {
        branches.pop().expect("one branch")
    } else {
        obj(vec![("anyOf", Json::Array(branches))])
    };
    let schema = if list {
        let mut items = vec![
            ("type", Json::String("array".into())),
            ("items", call),
            ("minItems", Json::Number(1.into())),
        ];
        if !parallel {
            items.push(("maxItems", Json::Number(1.into())));
        }
        obj(items)
    } else {
        call
    };
    let compiled = if list {
        Schema::compile_list(&schema)
    } else {
        Schema::compile(&schema)
    }
    .map_err(|e| bad(format!("the tools as one call schema: {e}"), "tools"))?;
    Ok(Guide::schema(Arc::new(compiled)))
}

fn obj(entries: Vec<(&str, Json)>) -> Json {
    Json::Object(Obj(entries
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()))
}

/// A tool's `$ref`s point into its own schema (`#/$defs/X`); inside the call schema that
/// schema sits at `at`.
fn rebase_refs(v: &mut Json, at: &str) {
    match v {
        Json::Object(o) => {
            for (k, x) in o.0.iter_mut() {
                match x {
                    Json::String(r) if k == "$ref" && r.starts_with('#') => {
                        *r = format!("{at}{}", &r[1..]);
                    }
                    _ => rebase_refs(x, at),
                }
            }
        }
        Json::Array(a) => a.iter_mut().for_each(|x| rebase_refs(x, at)),
        _ => {}
    }
}

/// `text`'s calls under `plan` (at most one unless parallel), read with the request's tools
/// (`tools`: what the template was given).
pub(crate) fn parse(plan: &ToolPlan, text: &str, tools: Option<&Json>) -> Parsed {
    let mut p = if plan.forced {
        galley_model::tool_calls::parse_forced(plan.format, text)
    } else {
        galley_model::tool_calls::parse_with_tools(plan.format, text, tools)
    };
    limit(plan, &mut p);
    p
}

/// Keeps the first call only, unless parallel calls were allowed.
pub(crate) fn limit(plan: &ToolPlan, p: &mut Parsed) {
    if !plan.parallel {
        p.calls.truncate(1);
    }
}

/// Calls as OpenAI writes them in a message's `tool_calls` (streams write them as deltas,
/// `stream::call_delta`), each with a fresh id from `seed`.
pub(crate) fn calls_json(plan: &ToolPlan, calls: &[ToolCall], seed: u64) -> Value {
    calls
        .iter()
        .enumerate()
        .map(|(k, c)| {
            json!({
                "id": plan.format.call_id(seed.wrapping_mul(31).wrapping_add(k as u64)),
                "type": "function",
                "function": {"name": c.name, "arguments": c.arguments},
            })
        })
        .collect()
}

/// A seed for call ids no other answer of this server shares.
pub(crate) fn id_seed(s: &Shared, choice: usize) -> u64 {
    let n = s.next_id.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    (s.created << 32) ^ (n << 8) ^ choice as u64
}

#[cfg(test)]
mod tests;
