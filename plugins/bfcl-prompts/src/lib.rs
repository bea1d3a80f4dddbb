//! `bfcl-prompts`: BFCL entries as training prompts. Each line of a BFCL file (as
//! `scripts/fetch-bfcl.sh` writes them: `question`, `function`, `ground_truth`, `id`) becomes
//! an example whose conversation is what `galley eval` asks the model in BFCL's prompting
//! mode — BFCL's default system prompt listing the functions, then the entry's messages — and
//! whose metadata carries `id`, `function` and `ground_truth` (JSON, in their written order)
//! for the `galley/function-call` reward. Built on galley-bfcl, the code the evaluation runs,
//! so training prompts and evaluation prompts cannot drift apart.
//!
//! In `mode: native` (BFCL's function-calling mode, `galley eval --function-calling native`)
//! the conversation is the entry's own messages and the functions travel as TRL's `tools`
//! column (BFCL's OpenAI tools, `.` in names written `_`): the trainer shows them through the
//! model's chat template and reads the calls back, and `function-call` judges those calls.
//!
//! Settings: `path` (relative to the granted `data` directory, required), `mode`
//! (`prompting` or `native`), `shuffle` (with the run's seed), `limit`. A malformed line is
//! an error naming the file and line.

use galley_bfcl::Entry;
use galley_bfcl::openai_tools;
use galley_bfcl::value::{Py, json_dumps};
use galley_sdk::data_loader::{DataLoader, granted_path, shuffle};
use galley_sdk::{Config, Error, Example, Message, Metadata, Value};
use serde::Deserialize;
use std::io::{BufRead, BufReader};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    path: String,
    #[serde(default)]
    mode: Mode,
    #[serde(default)]
    shuffle: bool,
    #[serde(default)]
    limit: Option<usize>,
}

/// How the functions reach the model: in BFCL's system prompt, or as tools.
#[derive(Deserialize, Default, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum Mode {
    #[default]
    Prompting,
    Native,
}

struct BfclPrompts {
    path: String,
    mode: Mode,
    lines: std::vec::IntoIter<(usize, String)>,
    limit: Option<usize>,
    emitted: usize,
}

impl DataLoader for BfclPrompts {
    fn new(config: &Config, seed: u64) -> Result<Self, Error> {
        let s: Settings = config.parse_into()?;
        let file = std::fs::File::open(granted_path("data", &s.path)?).map_err(|e| {
            Error::config(format!(
                "cannot open {} in the granted `data` directory: {e}",
                s.path
            ))
        })?;
        let mut lines = vec![];
        for (i, l) in BufReader::new(file).lines().enumerate() {
            let l =
                l.map_err(|e| Error::failed(format!("{}:{}: read error: {e}", s.path, i + 1)))?;
            if !l.trim().is_empty() {
                lines.push((i + 1, l));
            }
        }
        if s.shuffle {
            shuffle(&mut lines, seed);
        }
        Ok(Self {
            path: s.path,
            mode: s.mode,
            lines: lines.into_iter(),
            limit: s.limit,
            emitted: 0,
        })
    }

    fn next_page(&mut self, max: usize) -> Result<Vec<Example>, Error> {
        let mut page = Vec::new();
        while page.len() < max && self.limit.is_none_or(|l| self.emitted < l) {
            let Some((line_no, line)) = self.lines.next() else {
                break;
            };
            let e = Entry::parse(&line)
                .map_err(|e| Error::input(format!("{}:{line_no}: {e}", self.path)))?;
            let mut metadata = Metadata::default();
            metadata.insert("id", Value::Text(e.id.clone()));
            metadata.insert(
                "function",
                Value::Json(json_dumps(&Py::List(e.functions.clone()))),
            );
            if !e.ground_truth.is_empty() {
                metadata.insert(
                    "ground_truth",
                    Value::Json(json_dumps(&Py::List(e.ground_truth.clone()))),
                );
            }
            let turns = match self.mode {
                Mode::Prompting => e.conversation(),
                Mode::Native => {
                    metadata.insert(
                        "tools",
                        Value::Json(json_dumps(&openai_tools(&e.functions))),
                    );
                    e.messages.clone()
                }
            };
            let messages = turns
                .into_iter()
                .map(|m| Message::new(&m.role, &m.content))
                .collect();
            self.emitted += 1;
            page.push(Example {
                id: if e.id.is_empty() {
                    format!("{}:{line_no}", self.path)
                } else {
                    e.id
                },
                messages,
                metadata,
            });
        }
        Ok(page)
    }
}

galley_sdk::export_data_loader!(BfclPrompts);
