//! Running tasks: documents to prompts (description, few-shot turns and the question, joined
//! as the harness joins them, or through the model's chat template), prompts to requests, the
//! log-likelihood requests of all tasks to the engine in one call (it sorts and batches them,
//! as the harness does), answers to grades, grades to means with standard errors, tasks to
//! groups.

use crate::EvalError;
use crate::docs;
use crate::grade::{default_metrics, grade_with_judge, grade_with_plugin};
use crate::groups::aggregate_groups;
use crate::metrics::{self, ExactMatch, Filter};
use crate::prompt::{self, doc_err};
use crate::task::{GroupConfig, MetricSpec, OutputType, Task};
use crate::template::{Doc, Templates};
use galley_core::engine::{Engine, GenerateRequest, LoglikelihoodRequest};
use galley_core::{DataSource, Evaluator};
use serde::Serialize;
use sha2::Digest;
use std::collections::BTreeMap;
use std::path::PathBuf;

/// How to run.
#[derive(Debug, Clone)]
pub struct EvalOptions {
    /// Evaluate the first N documents of each task.
    pub limit: Option<usize>,
    /// Overrides every task's `num_fewshot`.
    pub num_fewshot: Option<usize>,
    /// The few-shot sampler's seed (the harness's default is 1234).
    pub fewshot_seed: u64,
    /// Seed of sampled generation.
    pub seed: u64,
    pub apply_chat_template: bool,
    pub system_prompt: Option<String>,
    /// Generations are scored from after the last of these (a reasoning model's `</think>`).
    pub think_end_token: Option<String>,
    /// How function-calling tasks ask the model.
    pub function_calling: crate::bfcl::Mode,
    /// Laid over every generation task's `generation_kwargs`.
    pub gen_kwargs: Option<crate::task::GenKwargs>,
    /// Where hub dataset ids are looked up.
    pub data_root: PathBuf,
}

impl Default for EvalOptions {
    fn default() -> Self {
        Self {
            limit: None,
            num_fewshot: None,
            fewshot_seed: 1234,
            seed: 0,
            apply_chat_template: false,
            system_prompt: None,
            think_end_token: None,
            function_calling: crate::bfcl::Mode::Prompt,
            gen_kwargs: None,
            data_root: galley_core::dirs::eval_data_dir(),
        }
    }
}

/// Opens the plugins tasks name: evaluators in `metric_list`, data loaders in `process_docs`.
/// The CLI implements it (it alone knows the runtime and the registry). `named_in` is the
/// folder of the task file that names the plugin (none for a built-in task): a relative
/// `.wasm` path is taken from there, as every config's paths are from its own file.
pub trait Plugins {
    fn evaluator(
        &mut self,
        spec: &str,
        named_in: Option<&std::path::Path>,
        settings: &serde_json::Value,
    ) -> Result<Box<dyn Evaluator>, String>;
    /// A data loader granted `dir` read-only (as `data`).
    fn data_loader(
        &mut self,
        spec: &str,
        named_in: Option<&std::path::Path>,
        settings: &serde_json::Value,
        dir: &std::path::Path,
    ) -> Result<Box<dyn DataSource>, String>;
    /// Finds and loads the component `spec` names without starting it (digests checked), so
    /// a run can refuse a missing or altered plugin before its first stage, not after hours
    /// of training.
    fn check(&mut self, spec: &str, named_in: Option<&std::path::Path>) -> Result<(), String>;
}

/// Checks, without reading documents, that each task's evaluation data is there and that
/// every plugin it names (metrics, `process_docs`) is there and loads; an error names the task
/// file, the task and the file or plugin.
pub fn check_tasks(
    tasks: &[Task],
    opts: &EvalOptions,
    plugins: &mut dyn Plugins,
) -> Result<(), EvalError> {
    for task in tasks {
        let c = &task.config;
        let (split, _) = splits(task);
        for f in docs::split_files(task, &split, &opts.data_root)? {
            if !f.exists() {
                return Err(EvalError::Data(format!(
                    "{}: task `{}`: no such data file {}",
                    task.origin,
                    c.task,
                    f.display()
                )));
            }
        }
        let metrics = c.metric_list.iter().filter_map(|m| m.plugin.as_deref());
        let docs = c.process_docs.as_ref().map(|p| p.parts().0);
        for spec in metrics.chain(docs) {
            plugins.check(spec, task.dir.as_deref()).map_err(|e| {
                EvalError::Task(format!(
                    "{}: task `{}`: plugin `{spec}`: {e}",
                    task.origin, c.task
                ))
            })?;
        }
    }
    Ok(())
}

/// No plugins available: a task that names one fails clearly.
impl Plugins for () {
    fn evaluator(
        &mut self,
        spec: &str,
        _: Option<&std::path::Path>,
        _: &serde_json::Value,
    ) -> Result<Box<dyn Evaluator>, String> {
        Err(format!("evaluator plugin `{spec}`: no plugin runtime here"))
    }
    fn data_loader(
        &mut self,
        spec: &str,
        _: Option<&std::path::Path>,
        _: &serde_json::Value,
        _: &std::path::Path,
    ) -> Result<Box<dyn DataSource>, String> {
        Err(format!(
            "data-loader plugin `{spec}`: no plugin runtime here"
        ))
    }
    fn check(&mut self, spec: &str, _: Option<&std::path::Path>) -> Result<(), String> {
        Err(format!("plugin `{spec}`: no plugin runtime here"))
    }
}

/// A task's documents from `files`: as they are, or through its `process_docs` data loader
/// (the harness's `process_docs`, sandboxed). The loader is granted the file's folder and
/// told the file (`path`); each example becomes a document of its metadata columns, plus
/// `messages` when it has any.
fn load_docs(
    task: &Task,
    files: &[PathBuf],
    plugins: &mut dyn Plugins,
) -> Result<Vec<Doc>, EvalError> {
    let Some(pd) = &task.config.process_docs else {
        return docs::read(files);
    };
    let (spec, settings) = pd.parts();
    let mut out = vec![];
    for f in files {
        let dir = f
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(std::path::Path::new("."));
        let name = f.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        let mut settings = settings.clone();
        if let serde_json::Value::Object(o) = &mut settings {
            o.insert("path".into(), serde_json::json!(name));
        }
        let mut loader = plugins
            .data_loader(spec, task.dir.as_deref(), &settings, dir)
            .map_err(|e| {
                EvalError::Task(format!(
                    "{}: task `{}`: process_docs `{spec}`: {e}",
                    task.origin, task.config.task
                ))
            })?;
        loop {
            let page = loader.next_page(256)?;
            if page.is_empty() {
                break;
            }
            for ex in page {
                let mut doc: Doc = ex
                    .metadata
                    .iter()
                    .map(|(k, v)| (k.clone(), v.to_json()))
                    .collect();
                if !ex.messages.is_empty() {
                    doc.insert(
                        "messages".into(),
                        serde_json::to_value(&ex.messages).expect("messages serialize"),
                    );
                }
                if !ex.id.is_empty() {
                    doc.entry("id").or_insert_with(|| serde_json::json!(ex.id));
                }
                out.push(doc);
            }
        }
    }
    Ok(out)
}

/// One metric of one filter.
#[derive(Debug, Clone, Serialize)]
pub struct MetricValue {
    pub metric: String,
    pub filter: String,
    pub value: f64,
    pub stderr: Option<f64>,
    /// Documents graded (a skipped plugin batch leaves some out).
    pub n: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct TaskResult {
    pub task: String,
    pub alias: Option<String>,
    pub n: usize,
    pub num_fewshot: usize,
    pub output_type: OutputType,
    /// sha256 over the task file and the data of the splits it read.
    pub digest: String,
    pub metrics: Vec<MetricValue>,
    /// Documents a failing evaluator plugin left ungraded (`on_error: skip`).
    pub skipped: usize,
    /// Wall time of the task's own work, plus its share (by request count) of the
    /// log-likelihood call it shared with the run's other tasks.
    pub seconds: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct GroupResult {
    pub group: String,
    pub tasks: Vec<String>,
    pub n: usize,
    pub metrics: Vec<MetricValue>,
}

/// What one document was asked and answered, and how it was graded.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    pub task: String,
    pub doc_id: usize,
    pub prompt: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub choices: Option<Vec<String>>,
    pub target: String,
    /// Per choice (or the one continuation): summed log-probability and greedy flag.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub loglikelihoods: Vec<(f64, bool)>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prediction: Option<String>,
    /// Filter name -> the filtered prediction.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub filtered: BTreeMap<String, String>,
    /// `metric,filter` -> grade.
    pub grades: BTreeMap<String, f64>,
    /// A function-calling answer as BFCL's checker read it: the calls, and why it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checked: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub tasks: Vec<TaskResult>,
    pub groups: Vec<GroupResult>,
    #[serde(skip)]
    pub samples: Vec<Sample>,
}

/// Progress of a run: (task, documents' requests done, total) as the engine reports.
pub type OnProgress<'a> = dyn FnMut(&str, usize, usize) + 'a;

/// A task with its documents read (through its `process_docs` plugin, if any) and its digest.
pub struct LoadedTask {
    pub task: Task,
    eval_docs: Vec<Doc>,
    /// A `function_calling` task's BFCL entries (empty for other tasks).
    entries: Vec<crate::bfcl::Entry>,
    fewshot_docs: Vec<Doc>,
    fewshot_split: Option<String>,
    shots: usize,
    digest: String,
}

/// Reads every task's documents, once, before a model is loaded: a missing or broken file, or
/// a template that fails on the first document, is an error naming it (and the fetch script)
/// at once, not after the model has loaded.
pub fn load_tasks(
    tasks: &[Task],
    opts: &EvalOptions,
    plugins: &mut dyn Plugins,
) -> Result<Vec<LoadedTask>, EvalError> {
    tasks.iter().map(|t| load_task(t, opts, plugins)).collect()
}

fn load_task(
    task: &Task,
    opts: &EvalOptions,
    plugins: &mut dyn Plugins,
) -> Result<LoadedTask, EvalError> {
    let c = &task.config;
    let (eval_split, fewshot_split) = splits(task);
    let eval_files = docs::split_files(task, &eval_split, &opts.data_root)?;
    let function_calling = c.output_type == OutputType::FunctionCalling;
    let mut entries = if function_calling {
        crate::bfcl::task::read_entries(task, &eval_files)?
    } else {
        vec![]
    };
    let mut eval_docs = if function_calling {
        vec![Doc::new(); entries.len()]
    } else {
        load_docs(task, &eval_files, plugins)?
    };
    if let Some(n) = opts.limit {
        eval_docs.truncate(n);
        entries.truncate(n);
    }
    // The templates on the first document: a misspelt column fails here too.
    if let Some(doc) = eval_docs.first() {
        let t = Templates::new();
        let has_choices = c.doc_to_choice.is_some();
        if let Some(f) = &c.doc_to_text {
            t.resolve(f, doc, has_choices, false)
                .map_err(|e| doc_err(task, 0, "doc_to_text", e))?;
        }
        if let Some(f) = &c.doc_to_target {
            t.resolve(f, doc, has_choices, true)
                .map_err(|e| doc_err(task, 0, "doc_to_target", e))?;
        }
        if let Some(f) = &c.doc_to_choice {
            t.choices(f, doc)
                .map_err(|e| doc_err(task, 0, "doc_to_choice", e))?;
        }
    }
    let shots = opts.num_fewshot.or(c.num_fewshot).unwrap_or(0);
    let mut digest = sha2::Sha256::new();
    digest.update((task.source.len() as u64).to_le_bytes());
    digest.update(task.source.as_bytes());
    docs::digest_files(&eval_files, &mut digest)?;
    let fewshot_docs = if shots > 0 {
        let split = fewshot_split.clone().ok_or_else(|| {
            EvalError::Task(format!(
                "{}: task `{}`: {shots}-shot needs a fewshot_split or training_split",
                task.origin, c.task
            ))
        })?;
        let files = docs::split_files(task, &split, &opts.data_root)?;
        if files != eval_files {
            docs::digest_files(&files, &mut digest)?;
        }
        let d = load_docs(task, &files, plugins)?;
        // Drawing from the evaluated split itself, a document is never its own example, so
        // it takes one more (the harness draws shots + 1 there); MMLU's `dev` split has
        // exactly the 5 its 5-shot uses.
        let need = shots + usize::from(fewshot_split == c.test_split);
        if d.len() < need {
            return Err(EvalError::Data(format!(
                "task `{}`: {shots}-shot needs {need} documents in split `{split}`, which has {}",
                c.task,
                d.len()
            )));
        }
        d
    } else {
        vec![]
    };
    Ok(LoadedTask {
        task: task.clone(),
        eval_docs,
        entries,
        fewshot_docs,
        fewshot_split,
        shots,
        digest: hex::encode(digest.finalize()),
    })
}

/// Runs `tasks` on `engine`, then aggregates `groups` over their results.
///
/// Every task's log-likelihood requests go to the engine in one call, as the harness gathers
/// them: the engine sorts them all by length and batches across tasks, so MMLU's 57 subjects
/// pad as one set of similar lengths instead of 57 small ones. Rolling log-likelihoods and
/// generations run task by task.
pub fn evaluate(
    engine: &mut dyn Engine,
    mut judge: Option<&mut dyn Engine>,
    tasks: &[LoadedTask],
    groups: &[GroupConfig],
    opts: &EvalOptions,
    plugins: &mut dyn Plugins,
    progress: &mut OnProgress<'_>,
) -> Result<Report, EvalError> {
    let templates = Templates::new();
    let mut staged = Vec::with_capacity(tasks.len());
    for task in tasks {
        let started = std::time::Instant::now();
        let mut s = stage(engine, task, opts, &templates)?;
        s.seconds = started.elapsed().as_secs_f64();
        staged.push(s);
    }
    answer_shared(engine, &mut staged, progress)?;
    let mut report = Report {
        tasks: vec![],
        groups: vec![],
        samples: vec![],
    };
    for s in staged {
        let started = std::time::Instant::now();
        let judge_now: Option<&mut dyn Engine> = match judge {
            Some(ref mut j) => Some(&mut **j),
            None => None,
        };
        let before = s.seconds;
        let (mut result, samples) = finish_task(engine, judge_now, s, opts, plugins, progress)?;
        result.seconds = before + started.elapsed().as_secs_f64();
        report.tasks.push(result);
        report.samples.extend(samples);
    }
    report.groups = aggregate_groups(groups, &report.tasks);
    Ok(report)
}

/// A task between its prompts and its grades.
struct Staged<'a> {
    loaded: &'a LoadedTask,
    prepared: Vec<prompt::Prepared>,
    samples: Vec<Sample>,
    /// Log-likelihood requests and the sample each belongs to (empty for generation).
    requests: Vec<LoglikelihoodRequest>,
    owner: Vec<usize>,
    /// Whether the requests are answered yet (by the call tasks share).
    answered: bool,
    /// Wall time spent on this task so far, its share of a shared call included.
    seconds: f64,
}

/// The log-likelihood requests of every task that has them (not rolling ones), answered in
/// one engine call. Each task's `seconds` gets a share of the call by its requests' count.
fn answer_shared(
    engine: &mut dyn Engine,
    staged: &mut [Staged<'_>],
    progress: &mut OnProgress<'_>,
) -> Result<(), EvalError> {
    let shared: Vec<usize> = (0..staged.len())
        .filter(|&i| {
            matches!(
                staged[i].loaded.task.config.output_type,
                OutputType::MultipleChoice | OutputType::Loglikelihood
            )
        })
        .collect();
    let requests: Vec<LoglikelihoodRequest> = shared
        .iter()
        .flat_map(|&i| staged[i].requests.iter().cloned())
        .collect();
    if requests.is_empty() {
        return Ok(());
    }
    let total = requests.len();
    let label = match shared.as_slice() {
        [one] => staged[*one].loaded.task.config.task.clone(),
        many => format!("{} tasks", many.len()),
    };
    let started = std::time::Instant::now();
    let answers = engine
        .loglikelihood(&requests, &mut |done| progress(&label, done, total))
        .map_err(|e| name_request(e, shared.iter().map(|&i| &staged[i])))?;
    if answers.len() != total {
        return Err(EvalError::Engine(galley_core::EngineError::new(
            engine.name(),
            format!("{} answers to {total} requests", answers.len()),
        )));
    }
    let per_request = started.elapsed().as_secs_f64() / total as f64;
    let mut answers = answers.into_iter();
    for &i in &shared {
        let s = &mut staged[i];
        s.seconds += per_request * s.requests.len() as f64;
        for (&doc, a) in s.owner.iter().zip(answers.by_ref()) {
            s.samples[doc].loglikelihoods.push((a.logprob, a.greedy));
        }
        s.answered = true;
    }
    Ok(())
}

/// An engine error about "request N" of a shared call, restated as the task's own request N.
fn name_request<'a>(
    e: galley_core::EngineError,
    tasks: impl Iterator<Item = &'a Staged<'a>>,
) -> EvalError {
    let n = e
        .message
        .strip_prefix("request ")
        .and_then(|r| r.split_once(':'))
        .and_then(|(n, _)| n.parse::<usize>().ok());
    if let Some(mut n) = n {
        for s in tasks {
            if n < s.requests.len() {
                let rest = e.message.split_once(':').map_or("", |x| x.1);
                return EvalError::Engine(galley_core::EngineError::new(
                    e.engine,
                    format!(
                        "task `{}`, document {}, request {n}:{rest}",
                        s.loaded.task.config.task, s.owner[n]
                    ),
                ));
            }
            n -= s.requests.len();
        }
    }
    EvalError::Engine(e)
}

/// The splits a task evaluates on and draws few-shot examples from.
fn splits(task: &Task) -> (String, Option<String>) {
    let c = &task.config;
    let eval = c
        .test_split
        .clone()
        .or_else(|| c.validation_split.clone())
        .expect("checked when loaded");
    let fewshot = c
        .fewshot_split
        .clone()
        .or_else(|| c.training_split.clone())
        .or_else(|| c.validation_split.clone());
    (eval, fewshot)
}

/// A task's prompts, its samples, and its log-likelihood requests.
fn stage<'a>(
    engine: &mut dyn Engine,
    loaded: &'a LoadedTask,
    opts: &EvalOptions,
    t: &Templates,
) -> Result<Staged<'a>, EvalError> {
    let task = &loaded.task;
    let c = &task.config;
    let (eval_docs, shots) = (&loaded.eval_docs, loaded.shots);
    let prepared = if c.output_type == OutputType::FunctionCalling {
        let entries = &loaded.entries;
        let engine: &dyn Engine = engine;
        entries
            .iter()
            .map(|e| prompt::Prepared {
                prompt: crate::bfcl::task::prompt_text(engine, e, opts.function_calling),
                choices: None,
                gold: None,
                target: serde_json::to_string(
                    &e.ground_truth
                        .iter()
                        .map(|g| g.to_json())
                        .collect::<Vec<_>>(),
                )
                .unwrap_or_default(),
                contexts: vec![],
            })
            .collect()
    } else {
        prompt::prepare(
            engine,
            task,
            t,
            opts,
            eval_docs,
            &loaded.fewshot_docs,
            shots,
            &loaded.fewshot_split,
        )?
    };
    let target_delimiter = if opts.apply_chat_template {
        ""
    } else {
        c.target_delimiter.as_str()
    };

    let name = c.task.clone();
    let samples: Vec<Sample> = prepared
        .iter()
        .enumerate()
        .map(|(i, p)| Sample {
            task: name.clone(),
            doc_id: i,
            prompt: p.prompt.clone(),
            choices: p.choices.clone(),
            target: p.target.clone(),
            loglikelihoods: vec![],
            prediction: None,
            filtered: BTreeMap::new(),
            grades: BTreeMap::new(),
            checked: None,
        })
        .collect();
    let mut requests = vec![];
    let mut owner = vec![];
    for (i, p) in prepared.iter().enumerate() {
        match c.output_type {
            OutputType::MultipleChoice if !p.contexts.is_empty() => {
                for ctx in &p.contexts {
                    requests.push(LoglikelihoodRequest {
                        context: ctx.clone(),
                        continuation: format!("{target_delimiter}{}", p.target),
                    });
                    owner.push(i);
                }
            }
            OutputType::MultipleChoice => {
                for ch in p.choices.as_deref().unwrap_or_default() {
                    requests.push(LoglikelihoodRequest {
                        context: p.prompt.clone(),
                        continuation: format!("{target_delimiter}{ch}"),
                    });
                    owner.push(i);
                }
            }
            OutputType::Loglikelihood => {
                requests.push(LoglikelihoodRequest {
                    context: p.prompt.clone(),
                    continuation: p.target.clone(),
                });
                owner.push(i);
            }
            OutputType::LoglikelihoodRolling => {
                requests.push(LoglikelihoodRequest {
                    context: String::new(),
                    continuation: p.target.clone(),
                });
                owner.push(i);
            }
            OutputType::GenerateUntil | OutputType::FunctionCalling => {}
        }
    }
    Ok(Staged {
        loaded,
        prepared,
        samples,
        requests,
        owner,
        answered: false,
        seconds: 0.0,
    })
}

/// A staged task's remaining answers (rolling log-likelihoods, generations), then its grades
/// and their means.
fn finish_task(
    engine: &mut dyn Engine,
    mut judge: Option<&mut dyn Engine>,
    staged: Staged<'_>,
    opts: &EvalOptions,
    plugins: &mut dyn Plugins,
    progress: &mut OnProgress<'_>,
) -> Result<(TaskResult, Vec<Sample>), EvalError> {
    let Staged {
        loaded,
        prepared,
        mut samples,
        requests,
        owner,
        answered,
        seconds: _,
    } = staged;
    let task = &loaded.task;
    let c = &task.config;
    let (eval_docs, shots) = (&loaded.eval_docs, loaded.shots);
    let name = c.task.clone();
    let mut generation = c
        .generation_kwargs
        .clone()
        .unwrap_or(crate::task::GenerationKwargs {
            until: vec![c.fewshot_delimiter.clone()],
            max_gen_toks: 256,
            do_sample: false,
            temperature: 0.0,
        });
    if let Some(g) = &opts.gen_kwargs {
        g.apply(&mut generation);
    }
    // A function-calling task's grades, made as its answers come (native answers are tool
    // calls, which a sample's text does not hold).
    let mut function_calling: Vec<(f64, serde_json::Value)> = vec![];
    match c.output_type {
        _ if answered => {}
        OutputType::FunctionCalling => {
            let total = loaded.entries.len();
            let mode = opts.function_calling;
            let answers = crate::bfcl::task::answers(
                engine,
                &loaded.entries,
                mode,
                &generation,
                opts.seed,
                &mut |done| progress(&name, done, total),
            )?;
            let kind = crate::bfcl::task::checker_of(task);
            for ((s, a), e) in samples.iter_mut().zip(answers).zip(&loaded.entries) {
                let text = crate::grade::after_thinking(a.text, opts.think_end_token.as_deref());
                function_calling.push(crate::bfcl::task::grade(
                    kind,
                    e,
                    mode,
                    &text,
                    &a.tool_calls,
                ));
                s.prediction = Some(text);
            }
        }
        OutputType::MultipleChoice
        | OutputType::Loglikelihood
        | OutputType::LoglikelihoodRolling => {
            let total = requests.len();
            let answers = if c.output_type == OutputType::LoglikelihoodRolling {
                // Whole documents, in the model's context-sized windows where they are longer.
                let texts: Vec<String> = requests.into_iter().map(|r| r.continuation).collect();
                engine.loglikelihood_rolling(&texts, &mut |done| progress(&name, done, total))?
            } else {
                engine.loglikelihood(&requests, &mut |done| progress(&name, done, total))?
            };
            for (a, &i) in answers.iter().zip(&owner) {
                samples[i].loglikelihoods.push((a.logprob, a.greedy));
            }
        }
        OutputType::GenerateUntil => {
            let g = &generation;
            let temperature = g.request_temperature();
            let requests: Vec<GenerateRequest> = prepared
                .iter()
                .map(|p| GenerateRequest {
                    prompt: p.prompt.clone(),
                    until: g.until.clone(),
                    max_tokens: g.max_gen_toks,
                    temperature,
                    seed: opts.seed,
                    json_schema: None,
                })
                .collect();
            let total = requests.len();
            let answers = engine.generate(&requests, &mut |done| progress(&name, done, total))?;
            for (s, a) in samples.iter_mut().zip(answers) {
                // The harness cuts at every stop string, not only the one generation halted on.
                let mut text = a.text;
                for u in &g.until {
                    if !u.is_empty()
                        && let Some(at) = text.find(u.as_str())
                    {
                        text.truncate(at);
                    }
                }
                s.prediction = Some(crate::grade::after_thinking(
                    text,
                    opts.think_end_token.as_deref(),
                ));
            }
        }
    }

    // Answers to grades.
    let filters: Vec<Filter> =
        if c.filter_list.is_empty() || c.output_type != OutputType::GenerateUntil {
            vec![Filter::none()]
        } else {
            c.filter_list
                .iter()
                .map(|f| Filter::new(&f.name, &f.filter))
                .collect::<Result<_, _>>()
                .map_err(|e| EvalError::Task(format!("{}: task `{}`: {e}", task.origin, c.task)))?
        };
    let metric_list: Vec<MetricSpec> = if c.metric_list.is_empty() {
        default_metrics(c.output_type)
    } else {
        c.metric_list.clone()
    };
    let mut skipped = 0;
    // (metric, filter) -> the plugin's own aggregate, which wins over the mean of its grades.
    let mut aggregates: BTreeMap<(String, String), f64> = BTreeMap::new();
    for s in &mut samples {
        if let Some(p) = &s.prediction {
            for f in &filters {
                s.filtered.insert(f.name.clone(), f.apply(p));
            }
        }
    }
    for (mi, m) in metric_list.iter().enumerate() {
        if let Some(spec) = &m.plugin {
            skipped += grade_with_plugin(
                task,
                eval_docs,
                &prepared,
                &mut samples,
                &filters,
                m,
                spec,
                plugins,
                &mut aggregates,
            )?;
            continue;
        }
        let name = m.metric.as_deref().expect("checked");
        if name == "judge" {
            let judge_engine: &mut dyn Engine = match judge {
                Some(ref mut j) => &mut **j,
                None => &mut *engine,
            };
            let failed =
                grade_with_judge(task, &prepared, &mut samples, &filters, m, judge_engine)?;
            aggregates.insert(("judge_failures".into(), "none".into()), failed as f64);
            continue;
        }
        let em = if name == "exact_match" {
            Some(ExactMatch::new(m).map_err(|e| {
                EvalError::Task(format!(
                    "{}: task `{}`: metric_list[{mi}]: {e}",
                    task.origin, c.task
                ))
            })?)
        } else {
            None
        };
        for (s, p) in samples.iter_mut().zip(&prepared) {
            for f in &filters {
                let grade = match (name, c.output_type) {
                    ("acc" | "acc_norm", OutputType::MultipleChoice) => {
                        let lls: Vec<f64> = s.loglikelihoods.iter().map(|x| x.0).collect();
                        let (acc, norm) = metrics::multiple_choice(
                            &lls,
                            p.choices.as_deref().unwrap_or_default(),
                            p.gold.unwrap_or(usize::MAX),
                        );
                        if name == "acc" { acc } else { norm }
                    }
                    ("acc", OutputType::Loglikelihood) => {
                        f64::from(u8::from(s.loglikelihoods[0].1))
                    }
                    ("acc", OutputType::FunctionCalling) => {
                        let (grade, checked) = function_calling[s.doc_id].clone();
                        s.checked = Some(checked);
                        grade
                    }
                    ("exact_match", _) => {
                        let pred = match c.output_type {
                            OutputType::GenerateUntil => {
                                s.filtered.get(&f.name).cloned().unwrap_or_default()
                            }
                            OutputType::MultipleChoice => {
                                let lls: Vec<f64> = s.loglikelihoods.iter().map(|x| x.0).collect();
                                p.choices
                                    .as_ref()
                                    .map(|ch| ch[metrics::argmax(&lls)].clone())
                                    .unwrap_or_default()
                            }
                            _ => String::new(),
                        };
                        em.as_ref().expect("built above").score(&pred, &p.target)
                    }
                    // Perplexities are aggregated from sums below; per document, the log-likelihood.
                    (
                        "word_perplexity" | "byte_perplexity" | "bits_per_byte",
                        OutputType::LoglikelihoodRolling,
                    ) => s.loglikelihoods[0].0,
                    (other, kind) => {
                        return Err(EvalError::Task(format!(
                            "{}: task `{}`: metric `{other}` does not apply to output_type {kind:?}",
                            task.origin, c.task
                        )));
                    }
                };
                s.grades.insert(format!("{name},{}", f.name), grade);
            }
        }
    }

    // Grades to means.
    let mut keys: Vec<String> = vec![];
    for s in &samples {
        for k in s.grades.keys() {
            if !keys.contains(k) {
                keys.push(k.clone());
            }
        }
    }
    let mut metrics_out = vec![];
    for k in keys {
        let (metric, filter) = k.split_once(',').unwrap_or((&k, "none"));
        let (value, stderr, n) = if matches!(
            metric,
            "word_perplexity" | "byte_perplexity" | "bits_per_byte"
        ) {
            let (mut ll, mut units) = (0.0, 0.0);
            for (s, p) in samples.iter().zip(&prepared) {
                ll += s.grades[&k];
                units += match metric {
                    "word_perplexity" => p.target.split_whitespace().count() as f64,
                    _ => p.target.len() as f64,
                };
            }
            let v = match metric {
                "bits_per_byte" => -ll / units / std::f64::consts::LN_2,
                _ => (-ll / units).exp(),
            };
            (v, None, samples.len())
        } else {
            let xs: Vec<f64> = samples
                .iter()
                .filter_map(|s| s.grades.get(&k).copied())
                .collect();
            let (m, se) = metrics::mean_stderr(&xs);
            (m, se, xs.len())
        };
        let value = aggregates
            .remove(&(metric.to_string(), filter.to_string()))
            .unwrap_or(value);
        metrics_out.push(MetricValue {
            metric: metric.to_string(),
            filter: filter.to_string(),
            value,
            stderr,
            n,
        });
    }
    // Aggregate-only plugin metrics (a count, a corpus-level F1).
    for ((metric, filter), value) in aggregates {
        metrics_out.push(MetricValue {
            metric,
            filter,
            value,
            stderr: None,
            n: samples.len() - skipped,
        });
    }
    Ok((
        TaskResult {
            task: c.task.clone(),
            alias: c.task_alias.clone(),
            n: samples.len(),
            num_fewshot: shots,
            output_type: c.output_type,
            digest: loaded.digest.clone(),
            metrics: metrics_out,
            skipped,
            seconds: 0.0,
        },
        samples,
    ))
}
