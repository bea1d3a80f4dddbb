//! `output_type: function_calling` inside `galley eval`: reading a task's BFCL entries,
//! asking the engine (one chat request per entry, BFCL's conversation), and grading each
//! answer with BFCL's checker. `evaluate` calls these where a harness task would build
//! prompts from templates and grade with the harness's metrics.

use super::checker::Checker;
use super::value::{Py, json_dumps_indent4};
use super::{Entry, Judged, Mode, judge, judge_calls, openai_tools};
use crate::EvalError;
use crate::task::{GenerationKwargs, Task};
use galley_core::engine::Progress;
use galley_core::{ChatRequest, Engine};
use std::io::BufRead;
use std::path::PathBuf;

/// The checker of `task`: its `function_calling.checker`, else BFCL's choice for the
/// category its `dataset_name` (or its name) names.
pub fn checker_of(task: &Task) -> Checker {
    let c = &task.config;
    c.function_calling
        .as_ref()
        .map(|f| f.checker)
        .unwrap_or_else(|| Checker::for_category(c.dataset_name.as_deref().unwrap_or(&c.task)))
}

/// The entries of `files`. JSON lines are read in their written order (BFCL's prompt lists
/// the functions as written); other formats through galley-data, whose objects come with
/// sorted keys.
pub fn read_entries(task: &Task, files: &[PathBuf]) -> Result<Vec<Entry>, EvalError> {
    let bad = |f: &std::path::Path, line: usize, e: String| {
        EvalError::Doc(format!(
            "{}:{line}: task `{}`: {e}",
            f.display(),
            task.config.task
        ))
    };
    let mut out = vec![];
    for f in files {
        let lines = f.extension().is_some_and(|e| e == "jsonl") && f.is_file();
        if lines {
            let file = std::fs::File::open(f)
                .map_err(|e| EvalError::Data(format!("{}: cannot read: {e}", f.display())))?;
            for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
                let line = line.map_err(|e| bad(f, i + 1, e.to_string()))?;
                if line.trim().is_empty() {
                    continue;
                }
                out.push(Entry::parse(&line).map_err(|e| bad(f, i + 1, e))?);
            }
        } else {
            for (i, d) in crate::docs::read(std::slice::from_ref(f))?
                .into_iter()
                .enumerate()
            {
                let v = Py::from_json(&serde_json::Value::Object(d));
                out.push(Entry::from_py(&v).map_err(|e| bad(f, i + 1, e))?);
            }
        }
    }
    Ok(out)
}

/// What a sample records as its prompt. Prompting mode: the conversation through the
/// model's chat template where the engine has one here, else the conversation as JSON (a
/// remote chat API renders it itself). Native mode: the messages and the tools, as JSON.
pub fn prompt_text(engine: &dyn Engine, entry: &Entry, mode: Mode) -> String {
    if mode == Mode::Native {
        return serde_json::json!({
            "messages": entry.messages,
            "tools": openai_tools(&entry.functions).to_json(),
        })
        .to_string();
    }
    let conversation = super::messages(&entry.conversation());
    engine
        .apply_chat_template(&conversation)
        .unwrap_or_else(|_| serde_json::to_string(&conversation).unwrap_or_default())
}

/// The engine's answers, one chat request per entry (greedy unless the task samples): in
/// prompting mode BFCL's conversation, in native mode the entry's own messages with the
/// functions as tools.
pub fn answers(
    engine: &mut dyn Engine,
    entries: &[Entry],
    mode: Mode,
    g: &GenerationKwargs,
    seed: u64,
    progress: &mut Progress<'_>,
) -> Result<Vec<galley_core::Generated>, EvalError> {
    let temperature = g.request_temperature();
    let requests: Vec<ChatRequest> = entries
        .iter()
        .map(|e| ChatRequest {
            messages: match mode {
                Mode::Prompt => super::messages(&e.conversation()),
                Mode::Native => super::messages(&e.messages),
            },
            until: g.until.clone(),
            max_tokens: g.max_gen_toks,
            temperature,
            seed,
            json_schema: None,
            tools: (mode == Mode::Native).then(|| json_dumps_indent4(&openai_tools(&e.functions))),
        })
        .collect();
    Ok(engine.chat(&requests, progress)?)
}

/// The grade of one answer (1 or 0) and what the sample records of it: the text in
/// prompting mode, the tool calls in native mode.
pub fn grade(
    kind: Checker,
    entry: &Entry,
    mode: Mode,
    text: &str,
    calls: &[galley_core::ToolCall],
) -> (f64, serde_json::Value) {
    let j: Judged = match mode {
        Mode::Prompt => judge(kind, entry, text),
        Mode::Native => judge_calls(kind, entry, calls),
    };
    let mut out = j.to_json();
    if mode == Mode::Native {
        out["tool_calls"] = serde_json::to_value(calls).unwrap_or_default();
    }
    (f64::from(u8::from(j.verdict.valid)), out)
}
