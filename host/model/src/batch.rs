//! Batch generation over a dataset: rows of a JSONL file (`{"messages": [...]}` or
//! `{"prompt": "..."}`, every other column kept), each rendered through the model's chat
//! template (with an optional system message), generated in batches, and written back as
//! the row plus `completion`, `finish_reason` and token counts. `galley infer -i` runs it;
//! a `generate` stage of a run will too.

use crate::error::{ModelError, Result};
use crate::generate::{Completion, Finish, generate};
use crate::load::LoadedModel;
use crate::sample::SamplingParams;
use galley_core::Message;

/// One input row: its columns as read, and its conversation.
#[derive(Debug, Clone)]
pub struct Row {
    pub columns: serde_json::Map<String, serde_json::Value>,
    pub messages: Vec<Message>,
}

/// Reads rows from JSONL text; `name` is the file in errors (`FILE:LINE: ...`).
pub fn read_rows(text: &str, name: &str) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let bad = |msg: &str| ModelError::Invalid(format!("{name}:{}: {msg}", i + 1));
        let columns: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(line).map_err(|e| bad(&format!("not a JSON object ({e})")))?;
        let messages = match (columns.get("messages"), columns.get("prompt")) {
            (Some(ms), _) => serde_json::from_value(ms.clone())
                .map_err(|_| bad("key `messages`: expected [{\"role\", \"content\"}]"))?,
            (None, Some(serde_json::Value::String(p))) => vec![Message::new("user", p.clone())],
            _ => return Err(bad("needs `messages` (a list) or `prompt` (a string)")),
        };
        rows.push(Row { columns, messages });
    }
    Ok(rows)
}

/// The prompt tokens of a conversation: `system` put first unless it has a system message,
/// then the chat template with the generation prompt (no template: the contents, one per line).
pub fn render(m: &LoadedModel, system: Option<&str>, messages: &[Message]) -> Result<Vec<u32>> {
    let mut msgs = messages.to_vec();
    galley_core::with_system(&mut msgs, system);
    match &m.template {
        Some(t) => m.tokenizer.encode(&t.render(&msgs, true, None)?, false),
        None => {
            let text: Vec<&str> = msgs.iter().map(|m| m.content.as_str()).collect();
            m.tokenizer.encode(&text.join("\n"), true)
        }
    }
}

/// OpenAI's name for why generation ended.
pub fn finish_reason(f: Finish) -> &'static str {
    match f {
        Finish::Eos | Finish::Stop => "stop",
        Finish::Length => "length",
    }
}

/// A row with its completion, as written out.
pub fn output_row(row: &Row, c: &Completion) -> serde_json::Value {
    let mut obj = row.columns.clone();
    obj.insert("completion".into(), c.text.clone().into());
    obj.insert("finish_reason".into(), finish_reason(c.finish).into());
    obj.insert("prompt_tokens".into(), c.prompt_tokens.into());
    obj.insert("completion_tokens".into(), c.tokens.len().into());
    serde_json::Value::Object(obj)
}

/// Receives each batch's rows and their completions.
pub type OnBatch<'a> = dyn FnMut(&[Row], Vec<Completion>) -> Result<()> + 'a;

/// Generates a completion for every row, `batch_size` rows at a time; `done` sees each batch's
/// rows and completions in order. Every row is rendered before the first batch, so a bad
/// conversation fails before any generation.
pub fn generate_rows(
    m: &LoadedModel,
    rows: &[Row],
    system: Option<&str>,
    sampling: &SamplingParams,
    batch_size: usize,
    guide: Option<&crate::json_schema::Guide>,
    done: &mut OnBatch<'_>,
) -> Result<()> {
    let mut prompts = Vec::with_capacity(rows.len());
    for (i, r) in rows.iter().enumerate() {
        prompts.push(
            render(m, system, &r.messages)
                .map_err(|e| ModelError::Invalid(format!("conversation {}: {e}", i + 1)))?,
        );
    }
    for (rows, prompts) in rows
        .chunks(batch_size.max(1))
        .zip(prompts.chunks(batch_size.max(1)))
    {
        let out = match guide {
            Some(g) => crate::generate_guided(
                &m.model,
                &m.tokenizer,
                prompts,
                sampling,
                g,
                &mut |_, _| {},
            )?,
            None => generate(&m.model, &m.tokenizer, prompts, sampling, &mut |_, _| {})?,
        };
        done(rows, out)?;
    }
    Ok(())
}

/// Generates for every row and writes each row with its completion to `output` as JSON
/// lines, in input order; `progress` hears the rows and tokens done after each batch.
/// Returns the tokens generated.
pub fn write_rows(
    m: &LoadedModel,
    cfg: &InferConfig,
    rows: &[Row],
    output: &std::path::Path,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<usize> {
    use std::io::Write;
    let at = |e: std::io::Error| ModelError::Invalid(format!("{}: {e}", output.display()));
    let mut out = std::io::BufWriter::new(std::fs::File::create(output).map_err(at)?);
    let (mut done, mut generated) = (0, 0);
    let system = cfg.system.as_deref();
    generate_rows(
        m,
        rows,
        system,
        &cfg.sampling,
        cfg.batch_size,
        cfg.guide.as_ref(),
        &mut |rows, completions| {
            for (row, c) in rows.iter().zip(&completions) {
                generated += c.tokens.len();
                writeln!(out, "{}", output_row(row, c)).map_err(at)?;
            }
            done += rows.len();
            progress(done, generated);
            Ok(())
        },
    )?;
    out.flush().map_err(at)?;
    Ok(generated)
}

#[cfg(feature = "clap")]
/// `galley infer`'s own flags (the binary adds the engine's), beside the settings they fill.
#[derive(clap::Args, Debug)]
pub struct InferFlags {
    /// YAML settings (model, sampling, system, batch_size).
    pub config: Option<std::path::PathBuf>,
    /// The model: a .gguf file or an HF checkpoint folder (overrides `model`).
    #[arg(long, short)]
    pub model: Option<String>,
    /// Answer this one prompt and exit.
    #[arg(long, short)]
    pub prompt: Option<String>,
    /// JSONL in: one {"messages": [...]} or {"prompt": "..."} per line (other keys are kept).
    #[arg(long, short, requires = "output")]
    pub input: Option<std::path::PathBuf>,
    /// JSONL out: each input line plus completion, finish_reason and token counts.
    #[arg(long, short)]
    pub output: Option<std::path::PathBuf>,
    /// Override a setting: `sampling.temperature=0`, `max_tokens=64` is `sampling.max_tokens=64`.
    #[arg(long = "set", short = 's', value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Hold every answer to a JSON schema: the schema's JSON, or a file holding it (as
    /// llama.cpp's `--json-schema`; the answer is one object that validates).
    #[arg(long, short = 'j', value_name = "SCHEMA")]
    pub json_schema: Option<String>,
}

#[cfg(feature = "clap")]
impl InferFlags {
    /// The settings file with `--set` over it and `--model` over both; the model named, and
    /// the folder a relative model path is relative to (the settings file's for its `model:`,
    /// the current one for `--model`).
    pub fn settings(&self) -> Result<(InferConfig, String, std::path::PathBuf)> {
        let mut cfg = InferConfig::load(self.config.as_deref(), &self.set)?;
        let config_dir = self
            .config
            .as_deref()
            .and_then(|c| c.parent())
            .map(std::path::Path::to_path_buf)
            .unwrap_or_default();
        let mut base = config_dir.clone();
        if self.model.is_some() {
            cfg.model.clone_from(&self.model);
            base = std::path::PathBuf::new();
        }
        let schema = match (&self.json_schema, &cfg.json_schema) {
            (Some(spec), _) => Some((spec.clone(), std::path::PathBuf::new(), "--json-schema")),
            (None, Some(spec)) => Some((spec.clone(), config_dir, "json_schema")),
            (None, None) => None,
        };
        if let Some((spec, dir, from)) = schema {
            let (text, schema) = crate::json_schema::load(&spec, &dir)
                .map_err(|e| ModelError::Invalid(format!("{from} {e}")))?;
            cfg.guide = Some(crate::json_schema::Guide::schema(std::sync::Arc::new(
                schema,
            )));
            cfg.schema_text = Some(text);
        }
        let no_model = "no model: pass --model PATH (or `model:` in the settings file)";
        let model = cfg
            .model
            .clone()
            .ok_or_else(|| ModelError::Invalid(no_model.into()))?;
        Ok((cfg, model, base))
    }

    /// The input rows, read and checked whole before any model loads (none without --input).
    pub fn rows(&self) -> Result<Option<Vec<Row>>> {
        let Some(input) = &self.input else {
            return Ok(None);
        };
        let text = std::fs::read_to_string(input)
            .map_err(|e| ModelError::Invalid(format!("{}: cannot read: {e}", input.display())))?;
        read_rows(&text, &input.display().to_string()).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_keep_their_columns_and_errors_name_the_line() {
        let rows = read_rows(
            "{\"prompt\": \"hi\", \"id\": 7}\n\n{\"messages\": [{\"role\": \"user\", \"content\": \"yo\"}]}\n",
            "in.jsonl",
        )
        .unwrap();
        assert_eq!(rows[0].messages, vec![Message::new("user", "hi")]);
        assert_eq!(rows[0].columns["id"], 7);
        assert_eq!(rows[1].messages[0].content, "yo");
        let e = read_rows("{\"prompt\": 3}\n", "in.jsonl")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("in.jsonl:1: needs `messages`"), "{e}");
        let e = read_rows("{}\n[1]\n", "in.jsonl").unwrap_err().to_string();
        assert!(e.starts_with("in.jsonl:1:"), "{e}");
    }
}

/// `galley infer`'s settings (a YAML file with `--set` overrides): the model, sampling, a
/// system message and the batch size.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InferConfig {
    pub model: Option<String>,
    /// Run every matmul in f32 (dequantize GGUF blocks at load): slower, closest to the
    /// checkpoint's own numbers.
    #[serde(default)]
    pub dequantize: bool,
    /// What the KV cache keeps keys and values in: `f16` (the default on a CPU) or `f32`.
    #[serde(default)]
    pub kv_cache_dtype: Option<crate::KvCacheDtype>,
    /// A system message put before every conversation that has none.
    #[serde(default)]
    pub system: Option<String>,
    #[serde(default)]
    pub sampling: SamplingParams,
    /// Conversations generated together in batch mode.
    #[serde(default = "default_batch")]
    pub batch_size: usize,
    /// Every answer held to this JSON schema: its JSON, or a file holding it (relative to
    /// this settings file). `--json-schema` overrides it.
    #[serde(default)]
    pub json_schema: Option<String>,
    /// The compiled `json_schema`, and its text (what a remote engine is sent).
    #[serde(skip)]
    pub guide: Option<crate::json_schema::Guide>,
    #[serde(skip)]
    pub schema_text: Option<String>,
}

fn default_batch() -> usize {
    8
}

/// `temperature=0` is short for `sampling.temperature=0`, and so on for every sampling key.
fn expand(key: &str) -> Option<String> {
    matches!(
        key,
        "temperature"
            | "top_k"
            | "top_p"
            | "min_p"
            | "repetition_penalty"
            | "frequency_penalty"
            | "presence_penalty"
            | "seed"
            | "max_tokens"
            | "stop"
            | "lookup"
    )
    .then(|| format!("sampling.{key}"))
}

impl InferConfig {
    /// Reads the settings (none: every default) with `KEY=VALUE` overrides on top.
    pub fn load(path: Option<&std::path::Path>, sets: &[String]) -> Result<Self> {
        let cfg: InferConfig = galley_core::config::load(path, sets, &expand)
            .map_err(|e| ModelError::Invalid(e.to_string()))?;
        cfg.sampling
            .validate()
            .map_err(|e| ModelError::Invalid(format!("sampling: {e}")))?;
        if cfg.batch_size == 0 {
            return Err(ModelError::Invalid(
                "key `batch_size`: must be at least 1".into(),
            ));
        }
        Ok(cfg)
    }

    /// What a remote engine cannot honour: it takes temperature, max_tokens, stop and seed
    /// only, and serves its own weights; refuse rather than ignore the rest silently.
    pub fn check_remote(&self) -> Result<()> {
        let d = SamplingParams::default();
        let s = &self.sampling;
        for (key, differs) in [
            ("top_k", s.top_k != d.top_k),
            ("top_p", s.top_p != d.top_p),
            ("min_p", s.min_p != d.min_p),
            (
                "repetition_penalty",
                s.repetition_penalty != d.repetition_penalty,
            ),
            (
                "frequency_penalty",
                s.frequency_penalty != d.frequency_penalty,
            ),
            ("presence_penalty", s.presence_penalty != d.presence_penalty),
            ("stop_token_ids", s.stop_token_ids != d.stop_token_ids),
            ("lookup", s.lookup != d.lookup),
        ] {
            if differs {
                return Err(ModelError::Invalid(format!(
                    "sampling.{key}: a remote engine takes temperature, max_tokens, stop and seed only"
                )));
            }
        }
        if self.dequantize {
            return Err(ModelError::Invalid(
                "dequantize: applies to a model galley loads, not to a server's".into(),
            ));
        }
        if self.kv_cache_dtype.is_some() {
            return Err(ModelError::Invalid(
                "kv_cache_dtype: applies to a model galley loads, not to a server's".into(),
            ));
        }
        Ok(())
    }
}
