//! What an evaluation is asked to do, as a user writes it: the settings file of `galley eval`
//! and the `evaluate` stage of `galley run` are the same struct, so a stage's settings and a
//! standalone evaluation mean the same thing. Also the record an evaluation leaves behind
//! (`results.json`, `samples.jsonl`), written the same way by both.

use crate::builtin::Catalog;
use crate::{EvalError, EvalOptions, GroupConfig, Report, Task};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EvalSettings {
    /// A `.gguf` file or an HF checkpoint folder (or a name `galley infer` resolves).
    pub model: Option<String>,
    /// A PEFT LoRA adapter folder applied over the model in memory.
    pub adapter: Option<PathBuf>,
    /// The model that grades `metric: judge` (default: the evaluated model judges itself).
    pub judge_model: Option<String>,
    /// Tasks, groups or task files: a list, or one string (`arc_easy,hellaswag` as on the
    /// command line).
    #[serde(deserialize_with = "names")]
    pub tasks: Vec<String>,
    pub num_fewshot: Option<usize>,
    /// Evaluate only the first N documents of each task.
    pub limit: Option<usize>,
    /// Folder for results.json and samples.jsonl.
    pub output: Option<PathBuf>,
    pub apply_chat_template: bool,
    pub system_prompt: Option<String>,
    /// A reasoning model's end of thinking (`</think>`): each generation is scored from
    /// after its last one (the harness's `think_end_token` model argument).
    pub think_end_token: Option<String>,
    /// How function-calling tasks (BFCL) ask the model: `prompt` or `native`.
    pub function_calling: crate::bfcl::Mode,
    /// Generation settings over every generation task's own (`max_gen_toks=64,...` or a map).
    pub gen_kwargs: Option<crate::task::GenKwargs>,
    /// Where built-in tasks' data is (default: GALLEY_EVAL_DATA, else galley's cache).
    pub data_dir: Option<PathBuf>,
    /// Folders of task files whose names `tasks` may use: a list, or one folder (as the
    /// harness's `--include_path` takes).
    #[serde(deserialize_with = "folders")]
    pub include_path: Vec<PathBuf>,
    /// Run every matmul in f32 (GGUF blocks dequantized at load), as the harness's HF
    /// backend runs a GGUF; off: quantized weights stay quantized.
    pub dequantize: bool,
    pub fewshot_seed: u64,
    pub seed: u64,
    /// Token positions one forward pass may hold (bounds memory).
    pub batch_tokens: usize,
    /// The longest sequence the model is given (the harness's `max_length` model argument):
    /// longer contexts keep their last tokens, longer `loglikelihood_rolling` documents are
    /// scored in windows of it. Default: the model's context length.
    pub max_length: Option<usize>,
}

impl Default for EvalSettings {
    fn default() -> Self {
        Self {
            model: None,
            adapter: None,
            judge_model: None,
            tasks: Vec::new(),
            num_fewshot: None,
            limit: None,
            output: None,
            apply_chat_template: false,
            system_prompt: None,
            think_end_token: None,
            function_calling: crate::bfcl::Mode::Prompt,
            gen_kwargs: None,
            data_dir: None,
            include_path: Vec::new(),
            dequantize: true,
            // The harness's default few-shot seed.
            fewshot_seed: 1234,
            seed: 0,
            batch_tokens: 4096,
            max_length: None,
        }
    }
}

/// A list of names, or one string of comma-separated names.
fn names<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    Ok(match crate::task::OneOrMany::deserialize(d)? {
        crate::task::OneOrMany::One(s) => s
            .split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(String::from)
            .collect(),
        crate::task::OneOrMany::Many(v) => v,
    })
}

/// A list of folders, or one.
fn folders<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<PathBuf>, D::Error> {
    Ok(match crate::task::OneOrMany::deserialize(d)? {
        crate::task::OneOrMany::One(s) => vec![PathBuf::from(s)],
        crate::task::OneOrMany::Many(v) => v.into_iter().map(PathBuf::from).collect(),
    })
}

impl EvalSettings {
    /// An `evaluate` stage's settings (a run config's JSON), an error naming the key.
    pub fn from_value(value: serde_json::Value) -> Result<Self, String> {
        serde_path_to_error::deserialize(value)
            .map_err(|e| format!("`{}`: {}", e.path(), e.inner()))
    }

    /// Takes relative paths (model, adapter, output, data and task folders, task files) as
    /// relative to `base`, the folder of the file that wrote them.
    pub fn relative_to(&mut self, base: &Path) {
        if base.as_os_str().is_empty() {
            return;
        }
        let rel = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        self.adapter.iter_mut().for_each(rel);
        self.output.iter_mut().for_each(rel);
        self.data_dir.iter_mut().for_each(rel);
        self.include_path.iter_mut().for_each(rel);
        for t in self
            .tasks
            .iter_mut()
            .filter(|t| t.ends_with(".yaml") || t.ends_with(".yml"))
        {
            let mut p = PathBuf::from(&*t);
            rel(&mut p);
            *t = p.display().to_string();
        }
        for m in [&mut self.model, &mut self.judge_model] {
            if let Some(m) = m.as_mut().filter(|m| !m.contains("://"))
                && Path::new(m.as_str()).is_relative()
            {
                *m = base.join(&*m).display().to_string();
            }
        }
    }

    /// The tasks and groups `tasks` names, from the built-in catalog and `include_path`.
    pub fn select(&self) -> Result<(Vec<Task>, Vec<GroupConfig>), EvalError> {
        let mut catalog = Catalog::builtin();
        for dir in &self.include_path {
            catalog.add_dir(dir)?;
        }
        if self.tasks.is_empty() {
            return Err(EvalError::Unknown(format!(
                "no tasks: name some (available: {})",
                catalog.names().join(", ")
            )));
        }
        catalog.select(&self.tasks)
    }

    pub fn options(&self) -> EvalOptions {
        EvalOptions {
            limit: self.limit,
            num_fewshot: self.num_fewshot,
            fewshot_seed: self.fewshot_seed,
            seed: self.seed,
            apply_chat_template: self.apply_chat_template,
            system_prompt: self.system_prompt.clone(),
            think_end_token: self.think_end_token.clone(),
            function_calling: self.function_calling,
            gen_kwargs: self.gen_kwargs.clone(),
            data_root: self
                .data_dir
                .clone()
                .unwrap_or_else(galley_core::dirs::eval_data_dir),
        }
    }

    /// `results.json` as the harness shapes it, plus what was evaluated and how.
    pub fn results_json(
        &self,
        report: &Report,
        model: serde_json::Value,
        seconds: f64,
        peak_memory_mib: Option<f64>,
    ) -> serde_json::Value {
        let (results, groups) = report.results_maps();
        serde_json::json!({
            "results": results,
            "groups": groups,
            "model": model,
            "settings": {
                "tasks": self.tasks,
                "num_fewshot": self.num_fewshot,
                "limit": self.limit,
                "apply_chat_template": self.apply_chat_template,
                "system_prompt": self.system_prompt,
                "think_end_token": self.think_end_token,
                "function_calling": self.function_calling,
                "gen_kwargs": self.gen_kwargs,
                "fewshot_seed": self.fewshot_seed,
                "batch_tokens": self.batch_tokens,
                "max_length": self.max_length,
                "dequantize": self.dequantize,
            },
            "seed": self.seed,
            "galley_version": env!("CARGO_PKG_VERSION"),
            "seconds": seconds,
            "peak_memory_mib": peak_memory_mib,
        })
    }
}

/// Writes `results.json` and one line per graded document to `samples.jsonl` in `out`.
pub fn write_outputs(
    out: &Path,
    results: &serde_json::Value,
    report: &Report,
) -> Result<(), EvalError> {
    let io = |p: &Path, e: std::io::Error| EvalError::Data(format!("{}: {e}", p.display()));
    std::fs::create_dir_all(out).map_err(|e| io(out, e))?;
    let path = out.join("results.json");
    let text = serde_json::to_string_pretty(results).expect("json values serialize") + "\n";
    std::fs::write(&path, text).map_err(|e| io(&path, e))?;
    let path = out.join("samples.jsonl");
    let file = std::fs::File::create(&path).map_err(|e| io(&path, e))?;
    let mut f = std::io::BufWriter::new(file);
    for s in &report.samples {
        serde_json::to_writer(&mut f, s).expect("samples serialize");
        f.write_all(b"\n").map_err(|e| io(&path, e))?;
    }
    f.flush().map_err(|e| io(&path, e))
}

impl EvalSettings {
    /// The engine these settings evaluate: with a server (`flags.base_url`), its model
    /// `model_id` (an adapter is then the server's to serve, as a model id); else the model
    /// galley loads, with the adapter over it in memory and the engine settings.
    pub fn engine_spec(
        &self,
        flags: galley_core::EngineSpec,
        model_id: Option<String>,
    ) -> Result<galley_core::EngineSpec, EvalError> {
        let bad = |m: &str| EvalError::Unknown(m.to_string());
        if flags.base_url.is_some() {
            let id = model_id
                .ok_or_else(|| bad("--base-url needs --model-id (the server's model id)"))?;
            if self.adapter.is_some() {
                return Err(bad(
                    "--adapter applies to a model galley loads; a server serves adapters as model ids (--model-id)",
                ));
            }
            return Ok(galley_core::EngineSpec {
                model: Some(id),
                ..flags
            });
        }
        let model = self
            .model
            .clone()
            .ok_or_else(|| bad("no model: pass --model PATH (or `model:` in the settings file)"))?;
        Ok(galley_core::EngineSpec {
            model: Some(model),
            adapters: self.adapter.iter().cloned().collect(),
            dequantize: self.dequantize,
            batch_tokens: Some(self.batch_tokens),
            max_length: self.max_length,
            ..flags
        })
    }

    /// results.json's `model`: a server's API and model id, or the loaded model's path and
    /// digest with its adapter's (`record` is what the engine opener recorded).
    pub fn model_record(
        &self,
        spec: &galley_core::EngineSpec,
        record: &serde_json::Value,
    ) -> serde_json::Value {
        if spec.is_remote() {
            return serde_json::json!({"base_url": spec.base_url, "id": spec.model, "engine": spec.engine});
        }
        serde_json::json!({
            "path": record["path"],
            "digest": record["digest"],
            "adapter": self.adapter.as_ref().map(|a| a.display().to_string()),
            "adapter_digest": record["adapter_digests"].get(0),
            "dequantize": self.dequantize,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tasks_and_include_path_may_be_one_string_as_on_the_command_line() {
        let one = EvalSettings::from_value(serde_json::json!({
            "tasks": "arc_easy, hellaswag",
            "include_path": "my/tasks",
        }))
        .unwrap();
        assert_eq!(one.tasks, ["arc_easy", "hellaswag"]);
        assert_eq!(one.include_path, [PathBuf::from("my/tasks")]);
        let many = EvalSettings::from_value(serde_json::json!({
            "tasks": ["arc_easy"],
            "include_path": ["a", "b"],
        }))
        .unwrap();
        assert_eq!(many.tasks, ["arc_easy"]);
        assert_eq!(many.include_path.len(), 2);
        // A wrong value names its key.
        let err = EvalSettings::from_value(serde_json::json!({"limit": "ten"})).unwrap_err();
        assert!(err.starts_with("`limit`:"), "{err}");
        let err = EvalSettings::from_value(serde_json::json!({"tasks": 3})).unwrap_err();
        assert!(err.starts_with("`tasks`:"), "{err}");
    }
}
