//! Task files: the subset of lm-evaluation-harness's task YAML that galley runs, read with
//! galley's one YAML loader (`file:line:column` and the key on a mistake). A harness task
//! that uses only these keys runs unchanged; keys the harness uses for bookkeeping (`tag`,
//! `metadata`, decontamination) are accepted and ignored; anything else — above all
//! `!function` (Python code, which galley never runs) — is an error that says what to use
//! instead. A group file (`group:` + `task:`) aggregates tasks and other groups.

use crate::EvalError;
use galley_core::config::{self, yaml};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// A `doc_to_*` entry: a column name or Jinja template, a literal list, or a literal index.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum Field {
    Index(i64),
    Text(String),
    List(Vec<String>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OutputType {
    MultipleChoice,
    Loglikelihood,
    LoglikelihoodRolling,
    GenerateUntil,
    /// galley's: the model is shown functions and answers with calls, judged by BFCL's AST
    /// checker (`bfcl`); documents are BFCL entries.
    FunctionCalling,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Clone, PartialEq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct GenerationKwargs {
    #[serde(default)]
    pub until: Vec<String>,
    #[serde(default = "default_max_gen_toks")]
    pub max_gen_toks: usize,
    #[serde(default)]
    pub do_sample: bool,
    #[serde(default)]
    pub temperature: f32,
}

impl GenerationKwargs {
    /// The temperature a request is sent: greedy (0) unless `do_sample`, then at least the
    /// smallest positive one (the harness samples at `temperature: 0` with `do_sample`).
    pub fn request_temperature(&self) -> f32 {
        if self.do_sample {
            self.temperature.max(f32::MIN_POSITIVE)
        } else {
            0.0
        }
    }
}

/// `--gen-kwargs`: generation settings laid over every generation task's own, as the
/// harness's `--gen_kwargs` (`max_gen_toks=64,temperature=0.7`); in a settings file a string
/// of that form or a map. A temperature above 0 without `do_sample` turns sampling on.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct GenKwargs {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_gen_toks: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub do_sample: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub until: Option<Vec<String>>,
}

impl GenKwargs {
    /// `key=value,key=value`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut g = GenKwargs::default();
        for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (k, v) = item
                .split_once('=')
                .ok_or_else(|| format!("`{item}` is not KEY=VALUE"))?;
            let (k, v) = (k.trim(), v.trim());
            let bad = |what: &str| format!("`{k}={v}`: {what}");
            match k {
                "max_gen_toks" | "max_new_tokens" => {
                    g.max_gen_toks = Some(v.parse().map_err(|_| bad("not a token count"))?)
                }
                "temperature" => {
                    let t: f32 = v.parse().map_err(|_| bad("not a number"))?;
                    if !(t >= 0.0 && t.is_finite()) {
                        return Err(bad("a temperature is 0 or more"));
                    }
                    g.temperature = Some(t)
                }
                "do_sample" => {
                    g.do_sample = Some(match v {
                        "true" | "True" | "1" => true,
                        "false" | "False" | "0" => false,
                        _ => return Err(bad("not true or false")),
                    })
                }
                "until" => g.until = Some(vec![v.to_string()]),
                other => {
                    return Err(format!(
                        "`{other}`: galley's generation takes max_gen_toks, temperature, do_sample and until"
                    ));
                }
            }
        }
        Ok(g)
    }

    /// `kwargs` with these laid over them.
    pub fn apply(&self, kwargs: &mut GenerationKwargs) {
        if let Some(n) = self.max_gen_toks {
            kwargs.max_gen_toks = n;
        }
        if let Some(t) = self.temperature {
            kwargs.temperature = t;
            kwargs.do_sample = self.do_sample.unwrap_or(t > 0.0);
        }
        if let Some(d) = self.do_sample {
            kwargs.do_sample = d;
        }
        if let Some(u) = &self.until {
            kwargs.until.clone_from(u);
        }
    }
}

impl<'de> Deserialize<'de> for GenKwargs {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Map {
            #[serde(default, alias = "max_new_tokens")]
            max_gen_toks: Option<usize>,
            #[serde(default)]
            temperature: Option<f32>,
            #[serde(default)]
            do_sample: Option<bool>,
            #[serde(default)]
            until: Option<Vec<String>>,
        }
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Form {
            Text(String),
            Map(Map),
        }
        match Form::deserialize(d)? {
            Form::Text(t) => GenKwargs::parse(&t).map_err(serde::de::Error::custom),
            Form::Map(m) => Ok(GenKwargs {
                max_gen_toks: m.max_gen_toks,
                temperature: m.temperature,
                do_sample: m.do_sample,
                until: m.until,
            }),
        }
    }
}

fn default_max_gen_toks() -> usize {
    // The harness's default.
    256
}

/// A plugin named by a task: `name` or `{plugin: name, settings: {...}}`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum PluginRef {
    Name(String),
    Full {
        plugin: String,
        #[serde(default)]
        settings: Option<serde_json::Value>,
    },
}

impl PluginRef {
    /// (spec, settings: a JSON object).
    pub fn parts(&self) -> (&str, serde_json::Value) {
        match self {
            PluginRef::Name(n) => (n, serde_json::json!({})),
            PluginRef::Full { plugin, settings } => (
                plugin,
                settings.clone().unwrap_or_else(|| serde_json::json!({})),
            ),
        }
    }
}

/// One `metric_list` entry: a built-in metric with its options, or an evaluator plugin.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricSpec {
    /// `acc`, `acc_norm`, `exact_match`... (absent when `plugin` is given).
    #[serde(default)]
    pub metric: Option<String>,
    /// An evaluator plugin: `galley/exact-match`, `name@^1`, or a `.wasm` path.
    #[serde(default)]
    pub plugin: Option<String>,
    /// The plugin's settings (JSON object).
    #[serde(default)]
    pub settings: Option<serde_json::Value>,
    /// What to do when the plugin fails on a batch: `skip` it (graded as missing) or `stop`.
    #[serde(default)]
    pub on_error: Option<String>,
    #[serde(default)]
    pub aggregation: Option<String>,
    #[serde(default)]
    pub higher_is_better: Option<bool>,
    #[serde(default)]
    pub ignore_case: bool,
    #[serde(default)]
    pub ignore_punctuation: bool,
    #[serde(default)]
    pub ignore_numbers: bool,
    #[serde(default)]
    pub regexes_to_ignore: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilterStep {
    pub function: String,
    #[serde(default)]
    pub regex_pattern: Option<String>,
    #[serde(default)]
    pub group_select: Option<i64>,
    #[serde(default)]
    pub fallback: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilterSpec {
    pub name: String,
    pub filter: Vec<FilterStep>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FewshotConfig {
    #[serde(default = "default_sampler")]
    pub sampler: String,
}

fn default_sampler() -> String {
    "default".into()
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatasetKwargs {
    /// `split: file` (or a list of files), relative to the task file.
    #[serde(default)]
    pub data_files: Option<BTreeMap<String, OneOrMany>>,
    #[serde(default)]
    pub trust_remote_code: Option<bool>,
}

/// One task.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskConfig {
    pub task: String,
    #[serde(default)]
    pub task_alias: Option<String>,
    /// A hub dataset id (looked up under the evaluation data folder), a local folder
    /// (relative to the task file), or `json` with `dataset_kwargs.data_files`.
    #[serde(default)]
    pub dataset_path: Option<String>,
    #[serde(default)]
    pub dataset_name: Option<String>,
    #[serde(default)]
    pub dataset_kwargs: Option<DatasetKwargs>,
    #[serde(default)]
    pub training_split: Option<String>,
    #[serde(default)]
    pub validation_split: Option<String>,
    #[serde(default)]
    pub test_split: Option<String>,
    #[serde(default)]
    pub fewshot_split: Option<String>,
    #[serde(default)]
    pub fewshot_config: Option<FewshotConfig>,
    /// A data-loader plugin that turns the split's rows into the task's documents.
    #[serde(default)]
    pub process_docs: Option<PluginRef>,
    #[serde(default)]
    pub doc_to_text: Option<Field>,
    #[serde(default)]
    pub doc_to_target: Option<Field>,
    #[serde(default)]
    pub doc_to_choice: Option<Field>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default = "default_target_delimiter")]
    pub target_delimiter: String,
    #[serde(default = "default_fewshot_delimiter")]
    pub fewshot_delimiter: String,
    #[serde(default)]
    pub num_fewshot: Option<usize>,
    pub output_type: OutputType,
    #[serde(default)]
    pub generation_kwargs: Option<GenerationKwargs>,
    /// How a `function_calling` task judges answers (default: from `dataset_name`, as BFCL
    /// picks a checker from its category's name).
    #[serde(default)]
    pub function_calling: Option<crate::bfcl::FunctionCalling>,
    #[serde(default)]
    pub metric_list: Vec<MetricSpec>,
    #[serde(default)]
    pub filter_list: Vec<FilterSpec>,
    #[serde(default)]
    pub repeats: Option<u32>,
    // Accepted and ignored: the harness's bookkeeping.
    #[serde(default)]
    pub tag: Option<OneOrMany>,
    #[serde(default)]
    pub metadata: Option<serde_json::Value>,
    #[serde(default)]
    pub should_decontaminate: Option<bool>,
    #[serde(default)]
    pub doc_to_decontamination_query: Option<String>,
}

fn default_target_delimiter() -> String {
    " ".into()
}

fn default_fewshot_delimiter() -> String {
    "\n\n".into()
}

/// One `aggregate_metric_list` entry of a group.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AggregateSpec {
    pub metric: String,
    #[serde(default = "default_aggregation")]
    pub aggregation: String,
    #[serde(default = "yes")]
    pub weight_by_size: bool,
    #[serde(default)]
    pub filter_list: Option<OneOrMany>,
}

fn default_aggregation() -> String {
    "mean".into()
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupConfig {
    pub group: String,
    #[serde(default)]
    pub group_alias: Option<String>,
    pub task: Vec<String>,
    #[serde(default)]
    pub aggregate_metric_list: Vec<AggregateSpec>,
    #[serde(default)]
    pub metadata: Option<serde_json::Value>,
}

/// A task with where it came from (relative data paths resolve against `dir`).
#[derive(Debug, Clone)]
pub struct Task {
    pub config: TaskConfig,
    /// The folder of the task file (built-in tasks: none).
    pub dir: Option<PathBuf>,
    /// The task file's text (or the built-in's), part of the task's digest.
    pub source: String,
    /// Where it came from, for errors.
    pub origin: String,
}

/// A task file or a group file.
pub enum TaskFile {
    Task(Box<Task>),
    Group(GroupConfig),
}

/// Reads a task or group file. `include:` (the harness's template inheritance) is resolved
/// relative to the file; the including file's keys win.
pub fn load_file(path: &Path) -> Result<TaskFile, EvalError> {
    let origin = path.display().to_string();
    let text = std::fs::read_to_string(path)
        .map_err(|e| EvalError::Task(format!("{origin}: cannot read: {e}")))?;
    parse(&text, &origin, path.parent())
}

/// [`load_file`] over text; `dir` resolves `include:` and relative data paths.
pub fn parse(text: &str, origin: &str, dir: Option<&Path>) -> Result<TaskFile, EvalError> {
    refuse_functions(text, origin)?;
    let value: yaml::Value = yaml::from_str(text).map_err(|e| {
        let at = e
            .location()
            .map(|l| format!("{origin}:{}:{}", l.line(), l.column()))
            .unwrap_or_else(|| origin.to_string());
        EvalError::Task(format!("{at}: {e}"))
    })?;
    let yaml::Value::Mapping(map) = &value else {
        return Err(EvalError::Task(format!(
            "{origin}: a task file is a mapping of keys"
        )));
    };
    if map.contains_key("group") {
        let g = config::parse::<GroupConfig>(text, origin, &[], &|_| None)
            .map_err(|e| EvalError::Task(e.to_string()))?;
        return Ok(TaskFile::Group(g));
    }
    let (text_for_parse, source) = match map.get("include").and_then(|v| v.as_str()) {
        None => (text.to_string(), text.to_string()),
        Some(inc) => {
            let base = dir
                .map(|d| d.join(inc))
                .unwrap_or_else(|| PathBuf::from(inc));
            let inc_text = std::fs::read_to_string(&base).map_err(|e| {
                EvalError::Task(format!(
                    "{origin}: include `{inc}`: cannot read {}: {e}",
                    base.display()
                ))
            })?;
            refuse_functions(&inc_text, &base.display().to_string())?;
            let mut merged: yaml::Mapping = match yaml::from_str(&inc_text) {
                Ok(yaml::Value::Mapping(m)) => m,
                _ => {
                    return Err(EvalError::Task(format!(
                        "{}: an included task file is a mapping of keys",
                        base.display()
                    )));
                }
            };
            for (k, v) in map {
                if k.as_str() != Some("include") {
                    merged.insert(k.clone(), v.clone());
                }
            }
            let merged = yaml::to_string(&merged).expect("a mapping serializes");
            (merged, format!("{inc_text}\n---\n{text}"))
        }
    };
    let config: TaskConfig = config::parse(&text_for_parse, origin, &[], &|_| None)
        .map_err(|e| EvalError::Task(e.to_string()))?;
    check(&config, origin)?;
    Ok(TaskFile::Task(Box::new(Task {
        config,
        dir: dir.map(Path::to_path_buf),
        source,
        origin: origin.to_string(),
    })))
}

/// The harness lets a task call Python (`!function module.fn`); galley runs no Python, and
/// says so at the line rather than failing later on an odd type.
fn refuse_functions(text: &str, origin: &str) -> Result<(), EvalError> {
    for (i, line) in text.lines().enumerate() {
        // A YAML tag in value position (`key: !function ...` or `- !function ...`), not a comment.
        if let Some(at) = line.find("!function")
            && !line.trim_start().starts_with('#')
            && matches!(line[..at].trim_end().chars().last(), Some(':' | '-'))
        {
            let key = line[..at].trim().trim_end_matches(':').trim();
            let hint = match key {
                "process_docs" => {
                    "preprocess the data when fetching it, or name a data-loader plugin (`process_docs: galley/...`)"
                }
                "process_results" => "use a metric, or an evaluator plugin in `metric_list`",
                _ => "use a Jinja template or a column name",
            };
            return Err(EvalError::Task(format!(
                "{origin}:{}: `{key}`: `!function` runs Python, which galley never does: {hint}",
                i + 1
            )));
        }
    }
    Ok(())
}

/// What deserialization cannot say: combinations the task cannot run with.
fn check(c: &TaskConfig, origin: &str) -> Result<(), EvalError> {
    let bad = |key: &str, msg: &str| Err(EvalError::Task(format!("{origin}: `{key}`: {msg}")));
    if c.output_type == OutputType::FunctionCalling {
        // The document is the request: BFCL's question and functions, judged against its
        // possible answers; templates and per-document plugins have nothing to do.
        for (key, set) in [
            ("doc_to_text", c.doc_to_text.is_some()),
            ("doc_to_target", c.doc_to_target.is_some()),
            ("doc_to_choice", c.doc_to_choice.is_some()),
            ("process_docs", c.process_docs.is_some()),
            ("filter_list", !c.filter_list.is_empty()),
        ] {
            if set {
                return bad(
                    key,
                    "a function_calling task's documents are BFCL entries (question, function, ground_truth); leave it out",
                );
            }
        }
        if c.num_fewshot.is_some_and(|n| n > 0) {
            return bad(
                "num_fewshot",
                "function_calling tasks are zero-shot, as BFCL's are",
            );
        }
        if let Some(m) = c
            .metric_list
            .iter()
            .position(|m| m.metric.as_deref() != Some("acc"))
        {
            return bad(
                &format!("metric_list[{m}]"),
                "a function_calling task has one metric, `acc` (BFCL's accuracy)",
            );
        }
    } else if c.function_calling.is_some() {
        return bad(
            "function_calling",
            "only for `output_type: function_calling`",
        );
    }
    if c.doc_to_text.is_none()
        && !matches!(
            c.output_type,
            OutputType::LoglikelihoodRolling | OutputType::FunctionCalling
        )
    {
        return bad("doc_to_text", "missing");
    }
    if c.doc_to_target.is_none() && c.output_type != OutputType::FunctionCalling {
        return bad("doc_to_target", "missing");
    }
    if c.output_type == OutputType::MultipleChoice && c.doc_to_choice.is_none() {
        return bad("doc_to_choice", "a multiple_choice task needs its choices");
    }
    if c.repeats.is_some_and(|r| r != 1) {
        return bad("repeats", "galley runs each request once (repeats: 1)");
    }
    if let Some(f) = &c.fewshot_config
        && !matches!(f.sampler.as_str(), "default" | "first_n")
    {
        return bad(
            "fewshot_config.sampler",
            "galley has `default` (seeded) and `first_n`",
        );
    }
    if c.test_split.is_none() && c.validation_split.is_none() {
        return bad(
            "test_split",
            "a task needs a test_split or a validation_split to evaluate on",
        );
    }
    for (i, m) in c.metric_list.iter().enumerate() {
        match (&m.metric, &m.plugin) {
            (None, None) => return bad(&format!("metric_list[{i}]"), "needs `metric` or `plugin`"),
            (Some(_), Some(_)) => {
                return bad(
                    &format!("metric_list[{i}]"),
                    "give `metric` or `plugin`, not both",
                );
            }
            (Some(name), None) if !crate::metrics::BUILT_IN.contains(&name.as_str()) => {
                return bad(
                    &format!("metric_list[{i}].metric"),
                    &format!(
                        "unknown metric `{name}` (built in: {}; any other grading is an evaluator plugin: `plugin: NAME`)",
                        crate::metrics::BUILT_IN.join(", ")
                    ),
                );
            }
            _ => {}
        }
        if let Some(a) = &m.aggregation
            && a != "mean"
        {
            return bad(
                &format!("metric_list[{i}].aggregation"),
                "galley aggregates by `mean`",
            );
        }
        if let Some(p) = &m.on_error
            && p != "skip"
            && p != "stop"
        {
            return bad(
                &format!("metric_list[{i}].on_error"),
                "use `skip` or `stop`",
            );
        }
    }
    for (i, f) in c.filter_list.iter().enumerate() {
        for (j, s) in f.filter.iter().enumerate() {
            let at = format!("filter_list[{i}].filter[{j}]");
            match s.function.as_str() {
                "regex" => {
                    if let Some(p) = &s.regex_pattern
                        && let Err(e) = regex::Regex::new(p)
                    {
                        return bad(
                            &format!("{at}.regex_pattern"),
                            &e.to_string().replace('\n', " "),
                        );
                    }
                }
                "take_first" | "lowercase" | "uppercase" | "remove_whitespace" => {}
                other => {
                    return bad(
                        &format!("{at}.function"),
                        &format!(
                            "unknown filter `{other}` (galley has regex, take_first, lowercase, uppercase, remove_whitespace)"
                        ),
                    );
                }
            }
        }
    }
    Ok(())
}
