//! Tool calls in a model's own words. A chat template teaches its model one way of writing a
//! call, and the server has to read calls back in that way: Hermes' and Qwen's
//! `<tool_call>{"name": ..., "arguments": ...}</tool_call>` blocks (Hermes 2/3, Qwen 2.5/3,
//! SmolLM3), Llama 3.1's bare `{"name": ..., "parameters": ...}` object (`<|python_tag|>`
//! first at times, several joined by `;`), Mistral's `[TOOL_CALLS][{...}, ...]` list, or, for
//! a template that shows no tools, one plain `{"name", "arguments"}` object (galley's own,
//! used only where decoding is held to it). [`ToolFormat::of_template`] finds the format a
//! template writes by rendering a call with it and reading it back; [`parse`] reads a finished answer and [`CallStream`] a streamed one,
//! holding back only text that may open a call. A call that does not parse leaves the whole
//! answer as text, as vLLM's parsers do: nothing the model wrote is lost.

use serde::Deserialize;
use serde_json::value::RawValue;

/// How a model writes a tool call (the names are vLLM's `--tool-call-parser` names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToolFormat {
    Hermes,
    Llama3Json,
    Mistral,
    /// Mistral's later form (Mistral Small 3.2, Devstral, Magistral):
    /// `[TOOL_CALLS]name[ARGS]{...}` (`[CALL_ID]id` between at times), a call after another.
    MistralArgs,
    /// Qwen3-Coder's, Qwen 3.5's and Nemotron 3's XML: `<tool_call><function=name>
    /// <parameter=key>value</parameter>...</function></tool_call>`, values as written (a
    /// value is JSON where it reads as JSON other than a string, else text).
    QwenXml,
    /// DeepSeek V3.1's: `<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>name<｜tool▁sep｜>{...}
    /// <｜tool▁call▁end｜>...<｜tool▁calls▁end｜>`.
    DeepSeekV31,
    /// Kimi K2's: `<|tool_calls_section_begin|><|tool_call_begin|>functions.name:0
    /// <|tool_call_argument_begin|>{...}<|tool_call_end|>...<|tool_calls_section_end|>`.
    KimiK2,
    /// One `{"name": ..., "arguments": ...}` object, nothing around it.
    Json,
}

/// One call read from the text: the function's name and its arguments as JSON text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolCall {
    pub name: String,
    pub arguments: String,
}

/// An answer split into the text around its calls and the calls.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Parsed {
    pub content: Option<String>,
    pub calls: Vec<ToolCall>,
}

const HERMES_OPEN: &str = "<tool_call>";
const HERMES_CLOSE: &str = "</tool_call>";
const PYTHON_TAG: &str = "<|python_tag|>";
const MISTRAL_OPEN: &str = "[TOOL_CALLS]";

impl ToolFormat {
    /// The format `template` writes calls in, found by asking it: a conversation with one
    /// call is rendered and each format galley knows reads the answer's part back; the one
    /// that finds the same call is the template's. A template whose calls no format reads
    /// (Qwen3-Coder's XML, GLM's tags...) has none, so `auto` is refused rather than read or
    /// held in a format its model does not write.
    pub fn of_template(template: &crate::ChatTemplate) -> Option<Self> {
        use crate::json_schema::Json;
        let json = |s: &str| serde_json::from_str::<Json>(s).expect("a valid probe");
        let tools = json(
            r#"[{"type": "function", "function": {"name": "probe_call", "description": "A probe.",
                "parameters": {"type": "object", "properties": {"key": {"type": "string"}}, "required": ["key"]}}}]"#,
        );
        let user = json(r#"{"role": "user", "content": "Call the probe."}"#);
        let call = json(
            r#"{"role": "assistant", "content": "", "tool_calls": [{"id": "probe0001", "type": "function",
                "function": {"name": "probe_call", "arguments": {"key": "value"}}}]}"#,
        );
        let asked = template
            .render_turns(std::slice::from_ref(&user), true, Some(&tools))
            .ok()?;
        let answered = template
            .render_turns(&[user, call], false, Some(&tools))
            .ok()?;
        // Where the prompt and the answered conversation part ways, the answer begins.
        let start = asked
            .char_indices()
            .zip(answered.chars())
            .find(|((_, a), b)| a != b)
            .map_or(asked.len().min(answered.len()), |((i, _), _)| i);
        // Or from the line or tag it is in (a generation prompt may end with a tag the
        // answered conversation does not have: `<think>` where the answer has `<tool_call>`).
        let line = answered[..start]
            .rfind(['\n', '>', ']'])
            .map_or(start, |i| i + 1);
        let want = serde_json::json!({"key": "value"});
        let reads = |f: Self, said: &str| {
            let p = parse(f, said);
            p.calls.len() == 1
                && p.calls[0].name == "probe_call"
                && serde_json::from_str::<serde_json::Value>(&p.calls[0].arguments).ok()
                    == Some(want.clone())
        };
        let (found, said) = [
            Self::Hermes,
            Self::Mistral,
            Self::MistralArgs,
            Self::QwenXml,
            Self::DeepSeekV31,
            Self::KimiK2,
            Self::Llama3Json,
        ]
        .into_iter()
        .flat_map(|f| [(f, &answered[start..]), (f, &answered[line..])])
        .find(|&(f, said)| reads(f, said))?;
        // A bare object is Llama 3's when it says `parameters`, else plain JSON's.
        Some(match found {
            Self::Llama3Json if !said.contains("\"parameters\"") => Self::Json,
            f => f,
        })
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "hermes" => Self::Hermes,
            "llama3_json" => Self::Llama3Json,
            "mistral" => Self::Mistral,
            "mistral_args" => Self::MistralArgs,
            "qwen3_coder" => Self::QwenXml,
            "deepseek_v31" => Self::DeepSeekV31,
            "kimi_k2" => Self::KimiK2,
            "json" => Self::Json,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Hermes => "hermes",
            Self::Llama3Json => "llama3_json",
            Self::Mistral => "mistral",
            Self::MistralArgs => "mistral_args",
            Self::QwenXml => "qwen3_coder",
            Self::DeepSeekV31 => "deepseek_v31",
            Self::KimiK2 => "kimi_k2",
            Self::Json => "json",
        }
    }

    /// The text that opens a call anywhere in an answer, for formats that have one.
    pub fn opener(self) -> Option<&'static str> {
        match self {
            Self::Hermes | Self::QwenXml => Some(HERMES_OPEN),
            Self::Mistral | Self::MistralArgs => Some(MISTRAL_OPEN),
            Self::DeepSeekV31 => Some(DEEPSEEK.section),
            Self::KimiK2 => Some(KIMI.section),
            Self::Llama3Json | Self::Json => None,
        }
    }

    /// The key a call's arguments go under.
    pub fn arguments_key(self) -> &'static str {
        match self {
            Self::Llama3Json => "parameters",
            _ => "arguments",
        }
    }

    /// What the prompt is given after the generation prompt when a call is required, so the
    /// model writes the call as it was taught to (the JSON after it is held to the tools).
    pub fn forced_prefix(self) -> &'static str {
        match self {
            Self::Hermes => "<tool_call>\n",
            Self::Mistral => MISTRAL_OPEN,
            _ => "",
        }
    }

    /// Whether calls are JSON a schema can hold (not Mistral's `name[ARGS]{...}`: a required
    /// call of that form is written as one bare JSON object instead).
    pub fn holdable(self) -> bool {
        matches!(
            self,
            Self::Hermes | Self::Mistral | Self::Llama3Json | Self::Json
        )
    }

    /// Whether a call's arguments stream piece by piece (calls written as
    /// `{"name", "arguments": {...}}` objects); others come whole at the end.
    pub fn streams_pieces(self) -> bool {
        matches!(self, Self::Hermes | Self::Llama3Json | Self::Json)
    }

    /// Whether a required call is written as a JSON list of calls (Mistral's) rather than
    /// one object.
    pub fn forced_list(self) -> bool {
        self == Self::Mistral
    }

    /// Tool-call ids the template accepts: Mistral's templates refuse any but nine
    /// letters and digits.
    pub fn call_id(self, seed: u64) -> String {
        let mut x = seed;
        let mut next = || {
            // splitmix64: ids only need to differ, not to be secret.
            x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        };
        const ALNUM: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
        let (prefix, n) = match self {
            Self::Mistral | Self::MistralArgs => ("", 9),
            _ => ("call_", 24),
        };
        let tail: String = (0..n)
            .map(|_| ALNUM[(next() % ALNUM.len() as u64) as usize] as char)
            .collect();
        format!("{prefix}{tail}")
    }
}

/// A call as the formats write it; Llama 3.1 says `parameters`, the others `arguments`.
#[derive(Deserialize)]
struct RawCall<'a> {
    name: String,
    #[serde(borrow, alias = "parameters")]
    arguments: Option<&'a RawValue>,
}

impl RawCall<'_> {
    fn call(self) -> ToolCall {
        let arguments = match self.arguments {
            None => "{}".to_string(),
            // Some models write the arguments as a JSON string holding the object.
            Some(raw) => match serde_json::from_str::<String>(raw.get()) {
                Ok(s) => s,
                Err(_) => raw.get().trim().to_string(),
            },
        };
        ToolCall {
            name: self.name,
            arguments,
        }
    }
}

/// The calls at the start of `text`, a JSON object or (`list`) a JSON list of objects, each
/// `{"name", "arguments" | "parameters"}`; objects may follow one another, apart or joined by
/// `;`. Returns them and the text after them.
fn calls_json(text: &str, list: bool) -> Option<(Vec<ToolCall>, &str)> {
    let text = text.trim_start();
    if list {
        let mut de = serde_json::Deserializer::from_str(text).into_iter::<Vec<RawCall>>();
        let calls = de.next()?.ok()?;
        let rest = &text[de.byte_offset()..];
        return (!calls.is_empty()).then(|| (calls.into_iter().map(RawCall::call).collect(), rest));
    }
    let mut out = Vec::new();
    let mut rest = text;
    while rest.starts_with('{') {
        let mut de = serde_json::Deserializer::from_str(rest).into_iter::<RawCall>();
        let call = de.next()?.ok()?;
        let used = de.byte_offset();
        out.push(call.call());
        rest = rest[used..].trim_start();
        if let Some(r) = rest.strip_prefix(';') {
            rest = r.trim_start();
        }
    }
    (!out.is_empty()).then_some((out, rest))
}

/// Every call in `text` and nothing else (blanks aside).
fn only_calls(text: &str, list: bool) -> Option<Vec<ToolCall>> {
    calls_json(text, list)
        .filter(|(_, rest)| rest.trim().is_empty())
        .map(|(c, _)| c)
}

/// The markers of a format that writes `begin name sep {arguments} end` per call inside a
/// section.
struct Marks {
    section: &'static str,
    section_end: &'static str,
    begin: &'static str,
    sep: &'static str,
    end: &'static str,
}

const DEEPSEEK: Marks = Marks {
    section: "<｜tool▁calls▁begin｜>",
    section_end: "<｜tool▁calls▁end｜>",
    begin: "<｜tool▁call▁begin｜>",
    sep: "<｜tool▁sep｜>",
    end: "<｜tool▁call▁end｜>",
};

const KIMI: Marks = Marks {
    section: "<|tool_calls_section_begin|>",
    section_end: "<|tool_calls_section_end|>",
    begin: "<|tool_call_begin|>",
    sep: "<|tool_call_argument_begin|>",
    end: "<|tool_call_end|>",
};

/// Calls written with `m`'s markers at the start of `text` (its section's opening first, or
/// a call's); the calls and the text after them. Kimi's names are `functions.name:index`.
fn marked_calls<'a>(text: &'a str, m: &Marks) -> Option<(Vec<ToolCall>, &'a str)> {
    let mut rest = text.strip_prefix(m.section).unwrap_or(text).trim_start();
    let mut calls = Vec::new();
    while let Some(body) = rest.strip_prefix(m.begin) {
        let s = body.find(m.sep)?;
        let mut name = body[..s].trim();
        if let Some(n) = name.strip_prefix("functions.") {
            name = n.rsplit_once(':').map_or(n, |(n, _)| n);
        }
        let args = &body[s + m.sep.len()..];
        let mut de = serde_json::Deserializer::from_str(args).into_iter::<&RawValue>();
        let raw = de.next()?.ok()?;
        let used = de.byte_offset();
        calls.push(ToolCall {
            name: name.to_string(),
            arguments: raw.get().to_string(),
        });
        rest = args[used..].trim_start();
        rest = rest.strip_prefix(m.end).unwrap_or(rest).trim_start();
    }
    rest = rest.strip_prefix(m.section_end).unwrap_or(rest);
    (!calls.is_empty()).then_some((calls, rest))
}

/// `<tool_call><function=name><parameter=key>value</parameter></function></tool_call>`
/// calls, one after another, at the start of `text`; the calls (arguments as a JSON object in
/// the order written) and the text after them.
fn xml_calls(text: &str) -> Option<(Vec<ToolCall>, &str)> {
    xml_calls_typed(text, &|_, _| None)
}

/// [`xml_calls`] with each parameter's type from its tool's schema (`types(function,
/// parameter)`), which decides how its text reads (see [`xml_value`]).
fn xml_calls_typed<'a>(
    text: &'a str,
    types: &dyn Fn(&str, &str) -> Option<String>,
) -> Option<(Vec<ToolCall>, &'a str)> {
    const FUNCTION: &str = "<function=";
    const PARAM: &str = "<parameter=";
    let mut calls = Vec::new();
    let mut rest = text;
    while let Some(body) = rest.strip_prefix(HERMES_OPEN) {
        let end = body.find(HERMES_CLOSE);
        let (inner, after) = match end {
            Some(e) => (&body[..e], &body[e + HERMES_CLOSE.len()..]),
            None => (body, ""),
        };
        let f = inner.trim_start().strip_prefix(FUNCTION)?;
        let close = f.find('>')?;
        let name = f[..close].trim().to_string();
        let mut args = crate::json_schema::Obj::default();
        let mut p = &f[close + 1..];
        while let Some(at) = p.find(PARAM) {
            let q = &p[at + PARAM.len()..];
            let k_end = q.find('>')?;
            let key = q[..k_end].trim();
            let v = &q[k_end + 1..];
            let v_end = v.find("</parameter>")?;
            let raw = v[..v_end].strip_prefix('\n').unwrap_or(&v[..v_end]);
            let raw = raw.strip_suffix('\n').unwrap_or(raw);
            args.insert(key, xml_value(raw, types(&name, key).as_deref()));
            p = &v[v_end + "</parameter>".len()..];
        }
        if !p.contains("</function>") && end.is_some() {
            return None;
        }
        calls.push(ToolCall {
            name,
            arguments: crate::json_schema::Json::Object(args).to_text(),
        });
        rest = after.trim_start();
    }
    (!calls.is_empty()).then_some((calls, rest))
}

/// A parameter's text as a value: as its schema's type asks (`string`: the text as written,
/// so "1.10" stays "1.10"; `integer`/`number`: a JSON number; `boolean`: true/false in any
/// case; `object`/`array`: JSON), else — no schema, or text that is not of the type — read as
/// JSON when it is JSON other than a string, and kept as text otherwise. vLLM's qwen3_coder
/// parser reads them by schema the same way.
fn xml_value(raw: &str, ty: Option<&str>) -> crate::json_schema::Json {
    use crate::json_schema::Json;
    let json = || serde_json::from_str::<Json>(raw.trim()).ok();
    let typed = match ty {
        Some("string") => Some(Json::String(raw.to_string())),
        Some("integer" | "number") => json().filter(|j| matches!(j, Json::Number(_))),
        Some("boolean") => match raw.trim().to_ascii_lowercase().as_str() {
            "true" => Some(Json::Bool(true)),
            "false" => Some(Json::Bool(false)),
            _ => None,
        },
        Some("object") => json().filter(|j| matches!(j, Json::Object(_))),
        Some("array") => json().filter(|j| matches!(j, Json::Array(_))),
        _ => None,
    };
    typed.unwrap_or_else(|| match json() {
        Some(j) if !matches!(j, Json::String(_)) => j,
        _ => Json::String(raw.to_string()),
    })
}

/// Each tool's parameters' types, from an OpenAI tools list (`{"type": "function",
/// "function": {...}}` or the function itself); a type list (`["string", "null"]`) gives its
/// first type that is not `null`.
fn parameter_types(tools: &crate::json_schema::Json) -> Vec<(String, String, String)> {
    use crate::json_schema::Json;
    let mut out = vec![];
    let Json::Array(tools) = tools else {
        return out;
    };
    for t in tools {
        let Json::Object(t) = t else { continue };
        let f = match t.get("function") {
            Some(Json::Object(f)) => f,
            _ => t,
        };
        let Some(Json::String(name)) = f.get("name") else {
            continue;
        };
        let props = match f.get("parameters") {
            Some(Json::Object(p)) => p.get("properties"),
            _ => None,
        };
        let Some(Json::Object(props)) = props else {
            continue;
        };
        for (key, schema) in &props.0 {
            let ty = match schema {
                Json::Object(o) => match o.get("type") {
                    Some(Json::String(ty)) => Some(ty.clone()),
                    Some(Json::Array(tys)) => tys.iter().find_map(|t| match t {
                        Json::String(t) if t != "null" => Some(t.clone()),
                        _ => None,
                    }),
                    _ => None,
                },
                _ => None,
            };
            if let Some(ty) = ty {
                out.push((name.clone(), key.clone(), ty));
            }
        }
    }
    out
}

/// [`parse`] knowing the tools the answer was asked with. Qwen3-Coder's XML writes every value
/// as text, and what a parameter's schema asks decides how the text reads (a `string`
/// parameter's "1.10" or "007" stays as written); JSON formats type their values themselves.
pub fn parse_with_tools(
    format: ToolFormat,
    text: &str,
    tools: Option<&crate::json_schema::Json>,
) -> Parsed {
    let (ToolFormat::QwenXml, Some(tools)) = (format, tools) else {
        return parse(format, text);
    };
    let Some(i) = text.find(HERMES_OPEN) else {
        return parse(format, text);
    };
    let types = parameter_types(tools);
    let lookup = |f: &str, p: &str| {
        types
            .iter()
            .find(|(n, k, _)| n == f && k == p)
            .map(|(_, _, t)| t.clone())
    };
    match xml_calls_typed(&text[i..], &lookup) {
        Some((calls, rest)) => Parsed {
            content: around(&text[..i], rest),
            calls,
        },
        None => parse(format, text),
    }
}

/// `[TOOL_CALLS]name[CALL_ID]id[ARGS]{...}` calls, one after another, at the start of `text`;
/// the calls and the text after them.
fn args_calls(text: &str) -> Option<(Vec<ToolCall>, &str)> {
    const ARGS: &str = "[ARGS]";
    const CALL_ID: &str = "[CALL_ID]";
    let mut calls = Vec::new();
    let mut rest = text;
    while let Some(body) = rest.strip_prefix(MISTRAL_OPEN) {
        let a = body.find(ARGS)?;
        let name = match body[..a].split_once(CALL_ID) {
            Some((n, _)) => n,
            None => &body[..a],
        };
        let args = &body[a + ARGS.len()..];
        let mut de = serde_json::Deserializer::from_str(args).into_iter::<&RawValue>();
        let raw = de.next()?.ok()?;
        let used = de.byte_offset();
        calls.push(ToolCall {
            name: name.trim().to_string(),
            arguments: raw.get().to_string(),
        });
        rest = args[used..].trim_start();
    }
    (!calls.is_empty()).then_some((calls, rest))
}

/// The text around calls: what came before them and after, blanks at the seam dropped.
fn around(before: &str, after: &str) -> Option<String> {
    nonempty(&format!("{}{}", before.trim_end(), after.trim()))
}

fn nonempty(s: &str) -> Option<String> {
    let s = s.trim();
    (!s.is_empty()).then(|| s.to_string())
}

/// Splits a finished answer into its text and its calls (none, and the whole answer as
/// text, when the calls it opens do not parse).
pub fn parse(format: ToolFormat, text: &str) -> Parsed {
    let whole = || Parsed {
        content: Some(text.to_string()),
        calls: Vec::new(),
    };
    let found = match format {
        ToolFormat::Hermes => {
            let Some(start) = text.find(HERMES_OPEN) else {
                return whole();
            };
            let mut calls = Vec::new();
            let mut rest = &text[start..];
            let mut after = String::new();
            while let Some(body) = rest.strip_prefix(HERMES_OPEN) {
                let (inner, next) = match (body.find(HERMES_CLOSE), body.find(HERMES_OPEN)) {
                    // No close before the next call: that call ends this one.
                    (Some(end), Some(o)) if o < end => (&body[..o], &body[o..]),
                    (None, Some(o)) => (&body[..o], &body[o..]),
                    (Some(end), _) => (&body[..end], &body[end + HERMES_CLOSE.len()..]),
                    // The answer ended (a stop token) before the close.
                    (None, None) => (body, ""),
                };
                match only_calls(inner, false) {
                    Some(c) => calls.extend(c),
                    None => return whole(),
                }
                let next = next.trim_start();
                match next.find(HERMES_OPEN) {
                    Some(i) => {
                        after.push_str(&next[..i]);
                        rest = &next[i..];
                    }
                    None => {
                        after.push_str(next);
                        rest = "";
                    }
                }
                if rest.is_empty() {
                    break;
                }
            }
            let content = around(&text[..start], &after);
            Some(Parsed { content, calls })
        }
        ToolFormat::Mistral => {
            let (before, body) = match text.find(MISTRAL_OPEN) {
                Some(i) => (&text[..i], &text[i + MISTRAL_OPEN.len()..]),
                None if text.trim_start().starts_with('[') => ("", text),
                None => return whole(),
            };
            calls_json(body, true).map(|(calls, rest)| Parsed {
                content: around(before, rest),
                calls,
            })
        }
        ToolFormat::DeepSeekV31 | ToolFormat::KimiK2 => {
            let m = if format == ToolFormat::KimiK2 {
                &KIMI
            } else {
                &DEEPSEEK
            };
            let Some(i) = text.find(m.section).or_else(|| text.find(m.begin)) else {
                return whole();
            };
            marked_calls(&text[i..], m).map(|(calls, rest)| Parsed {
                content: around(&text[..i], rest),
                calls,
            })
        }
        ToolFormat::QwenXml => {
            let Some(i) = text.find(HERMES_OPEN) else {
                return whole();
            };
            xml_calls(&text[i..]).map(|(calls, rest)| Parsed {
                content: around(&text[..i], rest),
                calls,
            })
        }
        ToolFormat::MistralArgs => {
            let Some(i) = text.find(MISTRAL_OPEN) else {
                return whole();
            };
            args_calls(&text[i..]).map(|(calls, rest)| Parsed {
                content: around(&text[..i], rest),
                calls,
            })
        }
        ToolFormat::Llama3Json | ToolFormat::Json => {
            let t = text.trim_start();
            let t = t.strip_prefix(PYTHON_TAG).unwrap_or(t);
            if !t.trim_start().starts_with('{') {
                return whole();
            }
            calls_json(t, false).map(|(calls, rest)| Parsed {
                content: nonempty(rest),
                calls,
            })
        }
    };
    found.unwrap_or_else(whole)
}

/// What a forced call (`tool_choice` required or named) wrote after the prompt's
/// [`ToolFormat::forced_prefix`]: one object, or Mistral's list.
pub fn parse_forced(format: ToolFormat, text: &str) -> Parsed {
    let body = text.trim();
    let body = body.strip_suffix(HERMES_CLOSE).unwrap_or(body);
    match only_calls(body, format.forced_list()) {
        Some(calls) => Parsed {
            content: None,
            calls,
        },
        None => Parsed {
            content: Some(text.to_string()),
            calls: Vec::new(),
        },
    }
}

mod stream;
pub use stream::{CallDelta, CallStream, Finished, Pushed};

#[cfg(test)]
mod tests;
