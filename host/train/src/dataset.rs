//! TRL's dataset types, read from any file galley-data reads: language modeling (`text` |
//! `messages`), prompt-only (`prompt`), prompt-completion (`prompt`, `completion`), preference
//! (`prompt`, `chosen`, `rejected`, or the prompt implicit in `chosen`/`rejected`) and unpaired
//! preference (`prompt`, `completion`, `label`), each *standard* (plain strings) or
//! *conversational* (lists of messages). The type is detected from a record's columns as TRL
//! does, or fixed by `type:` in the source; the form from the values. Two galley extensions
//! are read too: Alpaca (`instruction`, `input`, `output`) and ShareGPT / LLaMA-Factory
//! (`conversations` of `from`/`value`, with `chosen`/`rejected` turns for preferences).
//! Columns no type uses travel as metadata (GRPO's reward functions see them).

use crate::config::{DatasetType, OnBad, SourceSection};
use crate::data::{Skipped, bad_record};
use crate::error::{Result, TrainError};
use galley_core::{Message, Metadata};
use galley_data::kind;
use galley_model::json_schema::Json;
use serde_json::{Map, Value};
use std::path::Path;

/// A column's value: plain text (standard form) or messages (conversational form).
#[derive(Debug, Clone, PartialEq)]
pub enum Content {
    Text(String),
    Chat(Vec<Message>),
}

impl Content {
    pub fn is_chat(&self) -> bool {
        matches!(self, Content::Chat(_))
    }
}

/// A record of one of TRL's dataset types.
#[derive(Debug, Clone, PartialEq)]
pub enum Item {
    Lm(Content),
    PromptOnly(Content),
    PromptCompletion {
        prompt: Content,
        completion: Content,
    },
    Preference {
        prompt: Content,
        chosen: Content,
        rejected: Content,
    },
    Unpaired {
        prompt: Content,
        completion: Content,
        label: bool,
    },
}

impl Item {
    /// TRL's name for the type, for messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            Item::Lm(_) => "language modeling",
            Item::PromptOnly(_) => "prompt-only",
            Item::PromptCompletion { .. } => "prompt-completion",
            Item::Preference { .. } => "preference",
            Item::Unpaired { .. } => "unpaired preference",
        }
    }
}

/// A record, where it came from, its id (if any) and its other columns.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub at: String,
    pub id: String,
    pub item: Item,
    pub metadata: Metadata,
}

impl Record {
    /// The record's tools (checked when it was read), for the chat template.
    pub fn tools(&self) -> Option<Json> {
        tools_of(&self.metadata).ok().flatten()
    }

    /// The record as a prompt to sample from (GRPO's, a `generate` stage's) and the columns
    /// that travel with it: a prompt-only record's prompt; a conversation without its
    /// trailing assistant turn (the reference answer); a prompt-completion record's prompt,
    /// its completion kept as the `completion` column. `Err` names what other types are.
    pub fn into_prompt(self) -> std::result::Result<(Content, Metadata), String> {
        let mut metadata = self.metadata;
        let prompt = match self.item {
            Item::PromptOnly(p) => p,
            Item::Lm(c @ Content::Chat(_)) => c,
            Item::PromptCompletion { prompt, completion } => {
                let reference = match completion {
                    Content::Text(t) => t,
                    Content::Chat(m) => m
                        .into_iter()
                        .map(|m| m.content)
                        .collect::<Vec<_>>()
                        .join("\n"),
                };
                metadata.insert("completion".into(), galley_core::Value::Text(reference));
                prompt
            }
            other => {
                return Err(format!(
                    "a {} record; prompts are `prompt` (text or messages) or `messages`",
                    other.type_name()
                ));
            }
        };
        let prompt = match prompt {
            Content::Chat(mut m) => {
                if m.last().is_some_and(|m| m.role == "assistant") {
                    m.pop();
                }
                Content::Chat(m)
            }
            t => t,
        };
        Ok((prompt, metadata))
    }
}

const EXPECTED: &str = "language modeling (`text` or `messages`), prompt-only (`prompt`), prompt-completion (`prompt`, `completion`), preference (`prompt`, `chosen`, `rejected`; or `chosen`, `rejected`), unpaired preference (`prompt`, `completion`, `label`)";

/// Reads `path` (any format galley-data reads) as records of TRL's types. Unreadable records
/// stop the run or are skipped and counted, as `on_bad` says; a file that cannot be read at
/// all always stops it.
pub fn read(
    src: &SourceSection,
    path: &Path,
    on_bad: OnBad,
    skipped: &mut Skipped,
) -> Result<Vec<Record>> {
    let rows = galley_data::rows(path, &src.columns).map_err(data_err)?;
    let mut out = Vec::new();
    for row in rows {
        if src.limit.is_some_and(|n| out.len() >= n) {
            break;
        }
        match row {
            Ok(row) => match parse(row.fields, src.r#type) {
                Ok((id, item, metadata)) => out.push(Record {
                    at: row.at,
                    id,
                    item,
                    metadata,
                }),
                Err(msg) => bad_record(&row.at, msg, on_bad, skipped)?,
            },
            Err(e @ galley_data::DataError::File { .. }) => return Err(data_err(e)),
            Err(galley_data::DataError::Row { at, msg }) => bad_record(&at, msg, on_bad, skipped)?,
        }
    }
    Ok(out)
}

fn data_err(e: galley_data::DataError) -> TrainError {
    match e {
        galley_data::DataError::File { path, msg } => TrainError::File { path, msg },
        galley_data::DataError::Row { at, msg } => TrainError::Data { at, msg },
    }
}

/// A record's type, its content and its metadata; `Err` says what was found and expected.
pub fn parse(
    mut row: Map<String, Value>,
    ty: DatasetType,
) -> std::result::Result<(String, Item, Metadata), String> {
    let id = match row.remove("id") {
        Some(Value::String(s)) => s,
        Some(Value::Null) | None => String::new(),
        Some(other) => other.to_string(),
    };
    let ty = match ty {
        DatasetType::Auto => detect(&row)?,
        t => t,
    };
    let take = |row: &mut Map<String, Value>, col: &str| -> std::result::Result<Value, String> {
        row.remove(col)
            .ok_or_else(|| format!("no `{col}` column for a {} record", type_label(ty)))
    };
    let item = match ty {
        DatasetType::LanguageModeling => {
            if let Some(v) = row.remove("messages") {
                Item::Lm(content("messages", v)?)
            } else if let Some(v) = row.remove("conversations") {
                Item::Lm(Content::Chat(sharegpt("conversations", v)?))
            } else if let Some(v) = row.remove("instruction") {
                Item::Lm(Content::Chat(alpaca(v, &mut row)?))
            } else {
                Item::Lm(content("text", take(&mut row, "text")?)?)
            }
        }
        DatasetType::PromptOnly => Item::PromptOnly(content("prompt", take(&mut row, "prompt")?)?),
        DatasetType::PromptCompletion => Item::PromptCompletion {
            prompt: content("prompt", take(&mut row, "prompt")?)?,
            completion: content("completion", take(&mut row, "completion")?)?,
        },
        DatasetType::UnpairedPreference => {
            let label = match take(&mut row, "label")? {
                Value::Bool(b) => b,
                other => {
                    return Err(format!(
                        "column `label` is {}; expected true (desirable) or false",
                        kind(&other)
                    ));
                }
            };
            Item::Unpaired {
                prompt: content("prompt", take(&mut row, "prompt")?)?,
                completion: content("completion", take(&mut row, "completion")?)?,
                label,
            }
        }
        DatasetType::Preference => {
            if let Some(conv) = row.remove("conversations") {
                let mut prompt: Vec<Message> = match row.remove("system") {
                    Some(Value::String(s)) if !s.is_empty() => vec![Message::new("system", s)],
                    _ => Vec::new(),
                };
                prompt.extend(sharegpt("conversations", conv)?);
                let turn = |col: &str, v: Value| sharegpt(col, Value::Array(vec![v]));
                Item::Preference {
                    prompt: Content::Chat(prompt),
                    chosen: Content::Chat(turn("chosen", take(&mut row, "chosen")?)?),
                    rejected: Content::Chat(turn("rejected", take(&mut row, "rejected")?)?),
                }
            } else {
                let chosen = content("chosen", take(&mut row, "chosen")?)?;
                let rejected = content("rejected", take(&mut row, "rejected")?)?;
                match row.remove("prompt") {
                    Some(p) => Item::Preference {
                        prompt: content("prompt", p)?,
                        chosen,
                        rejected,
                    },
                    None => extract_prompt(chosen, rejected)?,
                }
            }
        }
        DatasetType::Auto => unreachable!("detected above"),
    };
    check_forms(&item)?;
    // A `metadata` object (galley's own JSONL shape) is flattened into the other columns.
    let mut metadata: Metadata = match row.remove("metadata") {
        Some(Value::Object(m)) => m.into_iter().map(|(k, v)| (k, v.into())).collect(),
        Some(other) => Metadata::from([("metadata".to_string(), other.into())]),
        None => Metadata::new(),
    };
    metadata.extend(row.into_iter().map(|(k, v)| (k, v.into())));
    tools_of(&metadata)?;
    Ok((id, item, metadata))
}

/// TRL's `tools` column: the functions a conversation may call, which the chat template
/// shows the model (as `apply_chat_template(..., tools=...)`). A list of tools, or that list
/// as JSON text (datasets often keep it so, since rows' schemas differ); the text keeps its
/// keys' order, and so does a list (JSON objects keep their keys in the order written, as
/// TRL's Python dicts do).
pub fn tools_of(m: &Metadata) -> std::result::Result<Option<Json>, String> {
    let bad = || "column `tools` is not a list of tools (nor that list as JSON text)".to_string();
    match m.get("tools") {
        None | Some(galley_core::Value::Null) => Ok(None),
        Some(galley_core::Value::Json(t) | galley_core::Value::Text(t)) => {
            match serde_json::from_str::<Json>(t) {
                Ok(list @ Json::Array(_)) => Ok(Some(list)),
                Ok(Json::Null) => Ok(None),
                _ => Err(bad()),
            }
        }
        Some(_) => Err(bad()),
    }
}

fn type_label(t: DatasetType) -> &'static str {
    match t {
        DatasetType::Auto => "detected",
        DatasetType::LanguageModeling => "language modeling",
        DatasetType::PromptOnly => "prompt-only",
        DatasetType::PromptCompletion => "prompt-completion",
        DatasetType::Preference => "preference",
        DatasetType::UnpairedPreference => "unpaired preference",
    }
}

/// The type a record's columns say, as TRL decides it.
fn detect(row: &Map<String, Value>) -> std::result::Result<DatasetType, String> {
    let has = |c: &str| row.contains_key(c);
    Ok(if has("chosen") && has("rejected") {
        DatasetType::Preference
    } else if has("prompt") && has("completion") && has("label") {
        DatasetType::UnpairedPreference
    } else if has("prompt") && has("completion") {
        DatasetType::PromptCompletion
    } else if has("prompt") {
        DatasetType::PromptOnly
    } else if has("messages")
        || has("text")
        || has("conversations")
        || (has("instruction") && has("output"))
    {
        DatasetType::LanguageModeling
    } else {
        let cols: Vec<&str> = row.keys().map(String::as_str).collect();
        return Err(format!(
            "columns {} match no dataset type; expected {EXPECTED} (map other names with `columns:`)",
            if cols.is_empty() {
                "(none)".to_string()
            } else {
                cols.join(", ")
            }
        ));
    })
}

/// A column as text or messages.
fn content(col: &str, v: Value) -> std::result::Result<Content, String> {
    match v {
        Value::String(s) => Ok(Content::Text(s)),
        Value::Array(mut turns) => {
            // An assistant turn that only calls tools has no content (TRL's tool-calling
            // rows) or a null one (OpenAI's): it is an empty text.
            for t in &mut turns {
                if let Value::Object(m) = t
                    && m.get("tool_calls").is_some_and(|c| !c.is_null())
                    && m.get("content").is_none_or(Value::is_null)
                {
                    m.insert("content".into(), Value::String(String::new()));
                }
            }
            serde_json::from_value::<Vec<Message>>(Value::Array(turns))
                .map(Content::Chat)
                .map_err(|e| {
                    format!(
                        "column `{col}` is a list but not of messages ({{role, content}}, with tool_calls or tool_call_id where they belong): {e}"
                    )
                })
        }
        other => Err(format!(
            "column `{col}` is {}; expected text or a list of messages",
            kind(&other)
        )),
    }
}

/// ShareGPT turns (`from`: human | gpt | system, `value`) as messages (TRL's
/// `maybe_convert_to_chatml`).
fn sharegpt(col: &str, v: Value) -> std::result::Result<Vec<Message>, String> {
    #[derive(serde::Deserialize)]
    struct Turn {
        from: String,
        value: String,
    }
    let turns: Vec<Turn> = serde_json::from_value(v).map_err(|e| {
        format!("column `{col}` is not a list of ShareGPT turns (from, value): {e}")
    })?;
    Ok(turns
        .into_iter()
        .map(|t| {
            let role = match t.from.as_str() {
                "human" | "user" => "user",
                "gpt" | "assistant" => "assistant",
                other => other,
            };
            Message::new(role, t.value)
        })
        .collect())
}

/// An Alpaca record as a conversation: system, history turns, the instruction (and its
/// input) as the user's turn, the output as the assistant's.
fn alpaca(
    instruction: Value,
    row: &mut Map<String, Value>,
) -> std::result::Result<Vec<Message>, String> {
    let text = |v: Option<Value>, col: &str| -> std::result::Result<String, String> {
        match v {
            None | Some(Value::Null) => Ok(String::new()),
            Some(Value::String(s)) => Ok(s),
            Some(other) => Err(format!("column `{col}` is {}; expected text", kind(&other))),
        }
    };
    let instruction = text(Some(instruction), "instruction")?;
    let input = text(row.remove("input"), "input")?;
    let output = text(row.remove("output"), "output")?;
    let mut msgs = Vec::new();
    let system = text(row.remove("system"), "system")?;
    if !system.is_empty() {
        msgs.push(Message::new("system", system));
    }
    if let Some(h) = row.remove("history") {
        let turns: Vec<(String, String)> = serde_json::from_value(h)
            .map_err(|e| format!("column `history` is not a list of [instruction, output]: {e}"))?;
        for (q, a) in turns {
            msgs.push(Message::new("user", q));
            msgs.push(Message::new("assistant", a));
        }
    }
    let user = if input.is_empty() {
        instruction
    } else {
        format!("{instruction}\n{input}")
    };
    msgs.push(Message::new("user", user));
    msgs.push(Message::new("assistant", output));
    Ok(msgs)
}

/// A preference record with the prompt implicit: the shared start of `chosen` and
/// `rejected` (TRL's `extract_prompt`: whole messages, or characters backed off a space).
fn extract_prompt(chosen: Content, rejected: Content) -> std::result::Result<Item, String> {
    match (chosen, rejected) {
        (Content::Chat(c), Content::Chat(r)) => {
            let n = c.iter().zip(&r).take_while(|(a, b)| a == b).count();
            Ok(Item::Preference {
                prompt: Content::Chat(c[..n].to_vec()),
                chosen: Content::Chat(c[n..].to_vec()),
                rejected: Content::Chat(r[n..].to_vec()),
            })
        }
        (Content::Text(c), Content::Text(r)) => {
            let (cb, rb) = (c.as_bytes(), r.as_bytes());
            let mut n = cb.iter().zip(rb).take_while(|(a, b)| a == b).count();
            if n < cb.len().min(rb.len()) && n > 0 && cb[n - 1] == b' ' {
                n -= 1;
            }
            // Back off to a character boundary (the shared bytes may end inside one).
            while !c.is_char_boundary(n) {
                n -= 1;
            }
            Ok(Item::Preference {
                prompt: Content::Text(c[..n].to_string()),
                chosen: Content::Text(c[n..].to_string()),
                rejected: Content::Text(r[n..].to_string()),
            })
        }
        _ => Err("`chosen` and `rejected` mix text and messages".into()),
    }
}

/// Every field of one record in one form: TRL has no meaning for a text prompt with a
/// conversational completion.
fn check_forms(item: &Item) -> std::result::Result<(), String> {
    let parts: Vec<(&str, &Content)> = match item {
        Item::Lm(_) | Item::PromptOnly(_) => return Ok(()),
        Item::PromptCompletion { prompt, completion }
        | Item::Unpaired {
            prompt, completion, ..
        } => {
            vec![("prompt", prompt), ("completion", completion)]
        }
        Item::Preference {
            prompt,
            chosen,
            rejected,
        } => vec![
            ("prompt", prompt),
            ("chosen", chosen),
            ("rejected", rejected),
        ],
    };
    let chat = parts[0].1.is_chat();
    if let Some((col, _)) = parts.iter().find(|(_, c)| c.is_chat() != chat) {
        return Err(format!(
            "`{}` is {} but `{col}` is not: give every column as text (standard) or every one as messages (conversational)",
            parts[0].0,
            if chat { "messages" } else { "text" }
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn p(v: Value) -> std::result::Result<Item, String> {
        let Value::Object(m) = v else { unreachable!() };
        parse(m, DatasetType::Auto).map(|(_, i, _)| i)
    }

    fn text(s: &str) -> Content {
        Content::Text(s.into())
    }

    #[test]
    fn types_and_forms_are_detected_from_the_columns() {
        assert_eq!(p(json!({"text": "a"})).unwrap(), Item::Lm(text("a")));
        assert!(matches!(
            p(json!({"messages": [{"role": "user", "content": "hi"}]})).unwrap(),
            Item::Lm(Content::Chat(_))
        ));
        assert_eq!(
            p(json!({"prompt": "a"})).unwrap(),
            Item::PromptOnly(text("a"))
        );
        assert_eq!(
            p(json!({"prompt": "a", "completion": "b"})).unwrap(),
            Item::PromptCompletion {
                prompt: text("a"),
                completion: text("b")
            }
        );
        assert_eq!(
            p(json!({"prompt": "Question: What is 2 + 3? Answer:", "chosen": " 5.", "rejected": " 7."}))
                .unwrap(),
            Item::Preference {
                prompt: text("Question: What is 2 + 3? Answer:"),
                chosen: text(" 5."),
                rejected: text(" 7.")
            }
        );
        assert_eq!(
            p(json!({"prompt": "a", "completion": "b", "label": false})).unwrap(),
            Item::Unpaired {
                prompt: text("a"),
                completion: text("b"),
                label: false
            }
        );
    }

    #[test]
    fn an_implicit_prompt_is_the_shared_start() {
        // TRL's documented example: the space before the answers stays with them.
        assert_eq!(
            p(json!({"chosen": "The sky is blue.", "rejected": "The sky is green."})).unwrap(),
            Item::Preference {
                prompt: text("The sky is"),
                chosen: text(" blue."),
                rejected: text(" green.")
            }
        );
        let u = json!({"role": "user", "content": "What color is the sky?"});
        let Item::Preference { prompt, chosen, .. } = p(json!({
            "chosen": [u, {"role": "assistant", "content": "blue"}],
            "rejected": [u, {"role": "assistant", "content": "green"}],
        }))
        .unwrap() else {
            panic!()
        };
        assert_eq!(
            prompt,
            Content::Chat(vec![Message::new("user", "What color is the sky?")])
        );
        assert_eq!(
            chosen,
            Content::Chat(vec![Message::new("assistant", "blue")])
        );
    }

    #[test]
    fn bad_records_say_what_was_found_and_expected() {
        let e = p(json!({"question": "a", "answer": "b"})).unwrap_err();
        assert!(
            e.contains("columns question, answer") || e.contains("columns answer, question"),
            "{e}"
        );
        assert!(
            e.contains("prompt-completion (`prompt`, `completion`)"),
            "{e}"
        );
        let e = p(json!({"prompt": 3, "completion": "b"})).unwrap_err();
        assert!(e.contains("column `prompt` is a number"), "{e}");
        let e = p(json!({"prompt": "a", "completion": [{"role": "assistant", "content": "b"}]}))
            .unwrap_err();
        assert!(e.contains("every column as text"), "{e}");
        let e = p(json!({"prompt": "a", "completion": "b", "label": "yes"})).unwrap_err();
        assert!(e.contains("`label` is a string"), "{e}");
        let Value::Object(m) = json!({"prompt": "a"}) else {
            unreachable!()
        };
        let e = parse(m, DatasetType::Preference).unwrap_err();
        assert!(
            e.contains("no `chosen` column for a preference record"),
            "{e}"
        );
    }

    #[test]
    fn other_columns_are_metadata_and_alpaca_and_sharegpt_read_as_chats() {
        let Value::Object(m) = json!({"id": 7, "prompt": "a", "solution": "4"}) else {
            unreachable!()
        };
        let (id, _, meta) = parse(m, DatasetType::Auto).unwrap();
        assert_eq!(id, "7");
        assert_eq!(meta["solution"], galley_core::Value::Text("4".into()));
        let Item::Lm(Content::Chat(m)) =
            p(json!({"instruction": "add", "input": "1 1", "output": "2", "system": "be brief"}))
                .unwrap()
        else {
            panic!()
        };
        assert_eq!(m.len(), 3);
        assert_eq!(m[1].content, "add\n1 1");
        let Item::Preference {
            prompt, rejected, ..
        } = p(json!({
            "conversations": [{"from": "human", "value": "hi"}],
            "chosen": {"from": "gpt", "value": "hello"},
            "rejected": {"from": "gpt", "value": "go away"},
        }))
        .unwrap()
        else {
            panic!()
        };
        assert_eq!(prompt, Content::Chat(vec![Message::new("user", "hi")]));
        assert_eq!(
            rejected,
            Content::Chat(vec![Message::new("assistant", "go away")])
        );
    }
}
