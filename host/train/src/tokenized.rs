//! The tokenized training set written out for inspection (`galley train --tokenize-only`):
//! one JSON line per example with its token ids and the loss mask galley trains it with, in
//! the order the data was read — what a user compares with TRL's `input_ids` and
//! `completion_mask`, or decodes to see what the model learns from.

use crate::Data;
use crate::data::Sample;
use crate::error::{Result, file_err};
use serde_json::json;
use std::io::Write;
use std::path::Path;

fn mask(s: &Sample) -> Vec<u8> {
    s.train.iter().map(|&t| t as u8).collect()
}

/// Writes the training examples of `data` to `path` as JSONL; returns how many.
pub fn write(data: &Data, path: &Path) -> Result<usize> {
    let lines: Vec<serde_json::Value> = match data {
        Data::Lm { train, .. } => train
            .iter()
            .map(|s| json!({"input_ids": s.ids, "mask": mask(s)}))
            .collect(),
        Data::Pairs { train, .. } => train
            .iter()
            .map(|p| {
                json!({
                    "chosen_ids": p.chosen.ids, "chosen_mask": mask(&p.chosen),
                    "rejected_ids": p.rejected.ids, "rejected_mask": mask(&p.rejected),
                })
            })
            .collect(),
        Data::Prompts { train, .. } => train
            .iter()
            .map(|p| json!({"prompt_ids": p.ids}))
            .collect(),
        Data::Unpaired { train, .. } => train
            .iter()
            .map(|e| {
                json!({"prompt_ids": e.prompt, "completion_ids": e.completion, "label": e.desirable})
            })
            .collect(),
    };
    let mut f = std::fs::File::create(path).map_err(|e| file_err(path, e))?;
    for l in &lines {
        writeln!(f, "{l}").map_err(|e| file_err(path, e))?;
    }
    Ok(lines.len())
}
