//! Chat templates: the HF Jinja templates a checkpoint ships (`tokenizer_config.json`'s
//! `chat_template`, a `chat_template.jinja` file, or GGUF's `tokenizer.chat_template`),
//! rendered with minijinja plus the Python string methods and helpers (`raise_exception`,
//! `strftime_now`) the templates expect, and `tojson` as transformers writes it (Python's
//! `json.dumps`: `", "` and `": "` separators, `indent`, keys in order, nothing escaped for
//! HTML) since the text of the tools and tool-call arguments a template writes is what the
//! model was trained on. Messages go in as JSON objects ([`ChatTemplate::render_turns`]) so
//! a turn's `tool_calls`, `tool_call_id` and `name` reach the template as sent, and a key
//! not sent stays undefined (templates test `'tool_calls' in message`). Errors name the
//! template's origin.

use crate::error::{ModelError, Result};
use crate::json_schema::{Json, Obj};
use galley_core::Message;
use minijinja::value::{Kwargs, Serde};
use minijinja::{Environment, Error, ErrorKind, Value};

pub struct ChatTemplate {
    env: Environment<'static>,
    pub origin: String,
    /// The Jinja source (written out again with exported models).
    pub source: String,
    pub bos_token: String,
    pub eos_token: String,
}

fn raise_exception(msg: String) -> std::result::Result<Value, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, msg))
}

/// Templates call it for "today's date" (Python's `datetime.now().strftime(fmt)`); galley
/// renders reproducibly, so the date is fixed at 2026-01-01, written in the template's format.
fn strftime_now(fmt: String) -> std::result::Result<String, Error> {
    use std::fmt::Write;
    let day = chrono::NaiveDate::from_ymd_opt(2026, 1, 1)
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .expect("a valid date");
    let mut out = String::new();
    write!(out, "{}", day.format(&fmt)).map_err(|_| {
        Error::new(
            ErrorKind::InvalidOperation,
            format!("strftime_now: {fmt:?} is not a strftime format"),
        )
    })?;
    Ok(out)
}

/// Python's `json.dumps(value, ensure_ascii=ensure_ascii, indent=indent)`, as transformers'
/// `tojson` (`ensure_ascii` false unless asked).
fn tojson(value: Value, kwargs: Kwargs) -> std::result::Result<Value, Error> {
    use serde::Serialize;
    let indent: Option<usize> = kwargs.get("indent")?;
    let ascii: Option<bool> = kwargs.get("ensure_ascii")?;
    kwargs.assert_all_used()?;
    let mut out = Vec::new();
    let res = match indent {
        Some(n) => {
            let pad = vec![b' '; n];
            let fmt = serde_json::ser::PrettyFormatter::with_indent(&pad);
            value.serialize(&mut serde_json::Serializer::with_formatter(&mut out, fmt))
        }
        None => value.serialize(&mut serde_json::Serializer::with_formatter(
            &mut out, Spaced,
        )),
    };
    res.map_err(|e| Error::new(ErrorKind::InvalidOperation, format!("tojson: {e}")))?;
    let mut text = String::from_utf8(out).expect("serde_json writes UTF-8");
    if ascii == Some(true) {
        // Outside strings JSON is ASCII, so escaping every other character escapes strings'.
        let mut esc = String::with_capacity(text.len());
        for c in text.chars() {
            if c.is_ascii() {
                esc.push(c);
            } else {
                let mut units = [0u16; 2];
                for u in c.encode_utf16(&mut units) {
                    esc.push_str(&format!("\\u{u:04x}"));
                }
            }
        }
        text = esc;
    }
    Ok(Value::from_safe_string(text))
}

/// Python's default JSON separators: `", "` between items, `": "` after keys.
struct Spaced;

impl serde_json::ser::Formatter for Spaced {
    fn begin_array_value<W: ?Sized + std::io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        if first { Ok(()) } else { w.write_all(b", ") }
    }

    fn begin_object_key<W: ?Sized + std::io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        if first { Ok(()) } else { w.write_all(b", ") }
    }

    fn begin_object_value<W: ?Sized + std::io::Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        w.write_all(b": ")
    }
}

/// Jinja's `iterable` test as Python has it: `none` is not iterable (minijinja iterates it as
/// empty, and templates guard `tools | length` with `tools is iterable`).
fn is_iterable(v: Value) -> bool {
    !(v.is_none() || v.is_undefined()) && v.try_iter().is_ok()
}

/// transformers' `{% generation %}` blocks (they mark the assistant's tokens for its
/// `return_assistant_tokens_mask`) render their body unchanged; an always-true `if` with the
/// same whitespace control does the same here.
fn generation_blocks(source: &str) -> String {
    let mut out = String::with_capacity(source.len());
    let mut rest = source;
    while let Some(i) = rest.find("{%") {
        out.push_str(&rest[..i]);
        let tag = &rest[i..];
        let Some(end) = tag.find("%}") else {
            out.push_str(tag);
            return out;
        };
        let inner = &tag[2..end];
        let (lead, body) = match inner.strip_prefix('-') {
            Some(b) => ("-", b),
            None => ("", inner),
        };
        let (body, trail) = match body.strip_suffix('-') {
            Some(b) => (b, "-"),
            None => (body, ""),
        };
        match body.trim() {
            "generation" => out.push_str(&format!("{{%{lead} if true {trail}%}}")),
            "endgeneration" => out.push_str(&format!("{{%{lead} endif {trail}%}}")),
            _ => out.push_str(&tag[..end + 2]),
        }
        rest = &tag[end + 2..];
    }
    out.push_str(rest);
    out
}

impl ChatTemplate {
    /// Compiles `source`; `origin` names the file (and key) it came from.
    pub fn new(source: &str, origin: &str, bos_token: &str, eos_token: &str) -> Result<Self> {
        let mut env = Environment::new();
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_filter("tojson", tojson);
        env.add_test("iterable", is_iterable);
        // HF renders with trim_blocks and lstrip_blocks on.
        env.set_syntax(
            minijinja::syntax::SyntaxConfig::builder()
                .trim_blocks(true)
                .lstrip_blocks(true)
                .build()
                .expect("default delimiters"),
        );
        env.add_template_owned("chat", generation_blocks(source))
            .map_err(|e| ModelError::Template {
                origin: origin.into(),
                reason: one_line(&e),
            })?;
        Ok(Self {
            env,
            origin: origin.into(),
            source: source.into(),
            bos_token: bos_token.into(),
            eos_token: eos_token.into(),
        })
    }

    /// Renders `messages` (with `tools`, a JSON list, when given) as the model expects them.
    pub fn render(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
        tools: Option<&Json>,
    ) -> Result<String> {
        self.render_with(messages, add_generation_prompt, tools, None)
    }

    /// [`Self::render`] with `extra` variables for the template (an object: a request's
    /// `chat_template_kwargs`, such as Qwen 3's `enable_thinking`); they cannot replace the
    /// variables galley sets.
    pub fn render_with(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
        tools: Option<&Json>,
        extra: Option<&Obj>,
    ) -> Result<String> {
        let turns: Vec<Json> = messages.iter().map(turn).collect();
        self.render_vars(&turns, add_generation_prompt, tools, extra)
    }

    /// Renders messages given as JSON objects (an OpenAI request's: `role`, `content`,
    /// `tool_calls`, `tool_call_id`, `name`), keys in their order, with `tools` when given.
    pub fn render_turns(
        &self,
        messages: &[Json],
        add_generation_prompt: bool,
        tools: Option<&Json>,
    ) -> Result<String> {
        self.render_vars(messages, add_generation_prompt, tools, None)
    }

    fn render_vars(
        &self,
        messages: &[Json],
        add_generation_prompt: bool,
        tools: Option<&Json>,
        extra: Option<&Obj>,
    ) -> Result<String> {
        let err = |e: Error| ModelError::Template {
            origin: self.origin.clone(),
            reason: one_line(&e),
        };
        let tmpl = self.env.get_template("chat").map_err(err)?;
        let msgs: Vec<Value> = messages.iter().map(|m| Value::from(Serde(m))).collect();
        let tools = tools.map(|t| Value::from(Serde(t)));
        let mut vars: std::collections::BTreeMap<String, Value> = extra
            .into_iter()
            .flat_map(|o| o.0.iter())
            .map(|(k, v)| (k.clone(), Value::from(Serde(v))))
            .collect();
        for (k, v) in [
            ("messages", Value::from(msgs)),
            ("add_generation_prompt", Value::from(add_generation_prompt)),
            ("bos_token", Value::from(self.bos_token.clone())),
            ("eos_token", Value::from(self.eos_token.clone())),
            ("tools", tools.unwrap_or(Value::from(()))),
        ] {
            vars.insert(k.into(), v);
        }
        tmpl.render(Value::from(vars)).map_err(err)
    }

    /// Whether the template reads `tools` at all (one that does not cannot show a model
    /// the functions it may call).
    pub fn renders_tools(&self) -> bool {
        self.source.contains("tools")
    }
}

/// A message as chat templates read it (HF's message dicts): `tool_calls` with their
/// `arguments` as an object (templates write them with `tojson`; text there would be written
/// quoted), `tool_call_id` and `name` where set, and no key for what is not.
pub fn turn(m: &Message) -> Json {
    let mut o = Obj(vec![
        ("role".into(), Json::String(m.role.clone())),
        ("content".into(), Json::String(m.content.clone())),
    ]);
    if let Some(n) = &m.name {
        o.insert("name", Json::String(n.clone()));
    }
    if let Some(id) = &m.tool_call_id {
        o.insert("tool_call_id", Json::String(id.clone()));
    }
    if let Some(r) = &m.reasoning_content {
        o.insert("reasoning_content", Json::String(r.clone()));
    }
    if !m.tool_calls.is_empty() {
        let calls = m
            .tool_calls
            .iter()
            .map(|c| {
                let args = match serde_json::from_str::<Json>(&c.arguments) {
                    Ok(v @ Json::Object(_)) => v,
                    _ => Json::String(c.arguments.clone()),
                };
                let mut call = Obj::default();
                if let Some(id) = &c.id {
                    call.insert("id", Json::String(id.clone()));
                }
                call.insert("type", Json::String("function".into()));
                call.insert(
                    "function",
                    Json::Object(Obj(vec![
                        ("name".into(), Json::String(c.name.clone())),
                        ("arguments".into(), args),
                    ])),
                );
                Json::Object(call)
            })
            .collect();
        o.insert("tool_calls", Json::Array(calls));
    }
    Json::Object(o)
}

fn one_line(e: &Error) -> String {
    let mut s = e.to_string();
    if let Some(line) = e.line() {
        s = format!("line {line}: {s}");
    }
    s.replace('\n', " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(role: &str, content: &str) -> Message {
        Message::new(role, content)
    }

    /// The ChatML template SmolLM2 and Qwen ship (abridged to its logic).
    const CHATML: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

    #[test]
    fn chatml_with_and_without_system() {
        let t = ChatTemplate::new(CHATML, "t", "", "<|im_end|>").unwrap();
        let out = t.render(&[msg("user", "Hi")], true, None).unwrap();
        assert_eq!(
            out,
            "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
        let out = t
            .render(
                &[
                    msg("system", "Be brief."),
                    msg("user", "Hi"),
                    msg("assistant", "Hello"),
                    msg("tool", "42"),
                ],
                false,
                None,
            )
            .unwrap();
        assert!(
            out.starts_with("<|im_start|>system\nBe brief.<|im_end|>")
                && out.ends_with("<|im_start|>tool\n42<|im_end|>\n"),
            "{out}"
        );
    }

    #[test]
    fn python_methods_and_raise_exception() {
        let src = "{% if messages[0]['role'] != 'user' %}{{ raise_exception('first message must be from the user') }}{% endif %}{{ messages[0]['content'].strip().upper() }}";
        let t = ChatTemplate::new(src, "tokenizer_config.json: chat_template", "", "").unwrap();
        assert_eq!(
            t.render(&[msg("user", "  hi ")], false, None).unwrap(),
            "HI"
        );
        let e = t
            .render(&[msg("system", "x")], false, None)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("tokenizer_config.json: chat_template: ")
                && e.contains("first message must be from the user"),
            "{e}"
        );
        assert!(!e.contains('\n'));
    }

    #[test]
    fn generation_blocks_none_tools_and_the_date_render_as_in_transformers() {
        let src = "{% for m in messages %}{%- generation -%} [{{ m.content }}] {%- endgeneration %}{% endfor %}|{{ tools is iterable }}|{{ 'ab' is iterable }}|{{ strftime_now('%Y-%m-%d %b') }}";
        let t = ChatTemplate::new(src, "t", "", "").unwrap();
        assert_eq!(
            t.render(&[msg("user", "a"), msg("assistant", "b")], false, None)
                .unwrap(),
            "[a][b]|False|True|2026-01-01 Jan"
        );
    }

    #[test]
    fn a_broken_template_is_one_line_naming_its_origin() {
        let e = ChatTemplate::new(
            "{% for m in messages %}{{ m.content }",
            "model/tokenizer_config.json: chat_template",
            "",
            "",
        )
        .err()
        .unwrap()
        .to_string();
        assert!(
            e.starts_with("model/tokenizer_config.json: chat_template: ") && !e.contains('\n'),
            "{e}"
        );
    }
}
