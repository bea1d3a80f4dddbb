//! Prompts for synthesis, from a dataset file (any format galley-data reads, with its column
//! mapping) or a data-loader plugin. A row becomes a conversation either through the config's
//! template (minijinja over the row's columns, strict: a column the template names and the row
//! lacks is an error naming the row) or as GRPO reads prompts (galley-train's
//! `Record::into_prompt`). The row's other columns travel with it: reward functions see them
//! as metadata and the output keeps them.

use crate::SynthError;
use crate::config::PromptsSection;
use galley_core::{DataSource, Message, Metadata};
use galley_train::dataset::{Content, Record};
use serde_json::{Map, Value};
use std::path::Path;

/// One prompt and what travels with it.
#[derive(Debug, Clone, PartialEq)]
pub struct Prompt {
    /// Where it came from (`FILE:LINE`, `PLUGIN example ID`).
    pub at: String,
    pub messages: Vec<Message>,
    /// The columns the output keeps (and reward functions see).
    pub columns: Map<String, Value>,
}

impl Prompt {
    pub fn metadata(&self) -> Metadata {
        self.columns
            .iter()
            .map(|(k, v)| (k.clone(), galley_core::Value::from(v.clone())))
            .collect()
    }

    /// TRL's `tools` column as JSON text for the engine (`None` without one); a column that
    /// is not a list of tools is an error naming the prompt.
    pub fn tools(&self) -> Result<Option<String>, SynthError> {
        match self.columns.get("tools") {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(t)) => {
                galley_train::dataset::tools_of(&self.metadata())
                    .map_err(|m| data_err(&self.at, m))?;
                Ok(Some(t.clone()))
            }
            Some(list @ Value::Array(_)) => Ok(Some(list.to_string())),
            Some(_) => Err(data_err(
                &self.at,
                "column `tools` is not a list of tools (nor that list as JSON text)",
            )),
        }
    }

    /// The last user turn: what a judge is shown as the question.
    pub fn question(&self) -> &str {
        self.messages
            .iter()
            .rev()
            .find(|m| m.role == "user")
            .map_or("", |m| m.content.as_str())
    }
}

fn data_err(at: &str, msg: impl std::fmt::Display) -> SynthError {
    SynthError::Data {
        at: at.to_string(),
        msg: msg.to_string(),
    }
}

struct Shaper<'a> {
    section: &'a PromptsSection,
    env: Option<minijinja::Environment<'a>>,
}

impl<'a> Shaper<'a> {
    fn new(section: &'a PromptsSection) -> Result<Self, SynthError> {
        let env = match &section.template {
            Some(t) => {
                let mut env = minijinja::Environment::new();
                env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
                env.add_template_owned("prompt", t.clone())
                    .map_err(|e| SynthError::Config {
                        key: "prompts.template".into(),
                        msg: e.to_string(),
                    })?;
                Some(env)
            }
            None => None,
        };
        Ok(Self { section, env })
    }

    fn with_system(&self, mut messages: Vec<Message>) -> Vec<Message> {
        galley_core::with_system(&mut messages, self.section.system.as_deref());
        messages
    }

    /// A row (its raw columns) as a prompt.
    fn row(&self, at: String, fields: Map<String, Value>) -> Result<Prompt, SynthError> {
        if let Some(env) = &self.env {
            let t = env.get_template("prompt").expect("added");
            let text = t
                .render(minijinja::Value::from(minijinja::value::Serde(&fields)))
                .map_err(|e| {
                    let cols: Vec<&str> = fields.keys().map(String::as_str).collect();
                    data_err(
                        &at,
                        format!(
                            "prompts.template: {} (the row's columns: {})",
                            e,
                            cols.join(", ")
                        ),
                    )
                })?;
            return Ok(Prompt {
                messages: self.with_system(vec![Message::new("user", text)]),
                columns: fields,
                at,
            });
        }
        let (id, item, metadata) = galley_train::dataset::parse(fields, self.section.data.r#type)
            .map_err(|m| data_err(&at, m))?;
        self.record(Record {
            at,
            id,
            item,
            metadata,
        })
    }

    fn record(&self, r: Record) -> Result<Prompt, SynthError> {
        let (at, id) = (r.at.clone(), r.id.clone());
        let (prompt, metadata) = r.into_prompt().map_err(|m| data_err(&at, m))?;
        let messages = match prompt {
            Content::Chat(m) => m,
            Content::Text(t) => vec![Message::new("user", t)],
        };
        let mut columns: Map<String, Value> = metadata
            .iter()
            .map(|(k, v)| (k.clone(), v.to_json()))
            .collect();
        if !id.is_empty() {
            columns.insert("id".into(), id.into());
        }
        if messages.is_empty() {
            return Err(data_err(&at, "an empty conversation"));
        }
        Ok(Prompt {
            messages: self.with_system(messages),
            columns,
            at,
        })
    }
}

/// The prompts of a dataset file, `base` being the config's folder.
pub fn from_file(section: &PromptsSection, base: &Path) -> Result<Vec<Prompt>, SynthError> {
    let path = base.join(section.data.path.as_deref().unwrap_or(Path::new("")));
    let shaper = Shaper::new(section)?;
    let rows = galley_data::rows(&path, &section.data.columns).map_err(|e| match e {
        galley_data::DataError::File { path, msg } => data_err(&path.display().to_string(), msg),
        galley_data::DataError::Row { at, msg } => data_err(&at, msg),
    })?;
    let mut out = Vec::new();
    for row in rows {
        if section.data.limit.is_some_and(|n| out.len() >= n) {
            break;
        }
        let row = row.map_err(|e| match e {
            galley_data::DataError::File { path, msg } => {
                data_err(&path.display().to_string(), msg)
            }
            galley_data::DataError::Row { at, msg } => data_err(&at, msg),
        })?;
        out.push(shaper.row(row.at, row.fields)?);
    }
    Ok(out)
}

/// The prompts a data-loader plugin gives (at most `prompts.data.limit`; a plugin that never
/// runs dry needs one).
pub fn from_source(
    section: &PromptsSection,
    src: &mut dyn DataSource,
) -> Result<Vec<Prompt>, SynthError> {
    let shaper = Shaper::new(section)?;
    let records = match galley_train::data::read_source(src, section.data.limit)
        .map_err(|e| SynthError::Plugin(e.to_string()))?
    {
        galley_train::data::Records::Items(r) => r,
        galley_train::data::Records::Text(_) => unreachable!("a plugin gives examples"),
    };
    records
        .into_iter()
        .map(|r| {
            if shaper.env.is_some() {
                // The template sees the example's metadata, its id and its messages.
                let mut fields: Map<String, Value> = r
                    .metadata
                    .iter()
                    .map(|(k, v)| (k.clone(), v.to_json()))
                    .collect();
                if !r.id.is_empty() {
                    fields.insert("id".into(), r.id.clone().into());
                }
                if let galley_train::dataset::Item::Lm(Content::Chat(m)) = &r.item {
                    fields.insert(
                        "messages".into(),
                        serde_json::to_value(m).expect("messages"),
                    );
                }
                shaper.row(r.at, fields)
            } else {
                shaper.record(r)
            }
        })
        .collect()
}
