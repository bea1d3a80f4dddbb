//! Running tasks: documents to prompts (description, few-shot turns and the question, joined
//! as the harness joins them, or through the model's chat template), prompts to requests, all
//! of a task's requests to the engine in one call (it batches), answers to grades, grades to
//! means with standard errors, tasks to groups.

use crate::EvalError;
use crate::docs;
use crate::metrics::{self, ExactMatch, Filter};
use crate::pyrandom::PyRandom;
use crate::task::{GroupConfig, MetricSpec, OutputType, Task};
use crate::template::{Doc, Resolved, Templates};
use galley_core::engine::{Engine, GenerateRequest, LoglikelihoodRequest};
use galley_core::{DataSource, Evaluator, Message, Metric, Prediction, Value as MetaValue};
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
            data_root: galley_core::dirs::eval_data_dir(),
        }
    }
}

/// Opens the plugins tasks name: evaluators in `metric_list`, data loaders in `process_docs`.
/// The CLI implements it (it alone knows the runtime and the registry).
pub trait Plugins {
    fn evaluator(
        &mut self,
        spec: &str,
        settings: &serde_json::Value,
    ) -> Result<Box<dyn Evaluator>, String>;
    /// A data loader granted `dir` read-only (as `data`).
    fn data_loader(
        &mut self,
        spec: &str,
        settings: &serde_json::Value,
        dir: &std::path::Path,
    ) -> Result<Box<dyn DataSource>, String>;
}

/// No plugins available: a task that names one fails clearly.
impl Plugins for () {
    fn evaluator(
        &mut self,
        spec: &str,
        _: &serde_json::Value,
    ) -> Result<Box<dyn Evaluator>, String> {
        Err(format!("evaluator plugin `{spec}`: no plugin runtime here"))
    }
    fn data_loader(
        &mut self,
        spec: &str,
        _: &serde_json::Value,
        _: &std::path::Path,
    ) -> Result<Box<dyn DataSource>, String> {
        Err(format!(
            "data-loader plugin `{spec}`: no plugin runtime here"
        ))
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
        let mut loader = plugins.data_loader(spec, &settings, dir).map_err(|e| {
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
                    .map(|(k, v)| (k.clone(), meta_json(v)))
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

fn meta_json(v: &MetaValue) -> serde_json::Value {
    match v {
        MetaValue::Null => serde_json::Value::Null,
        MetaValue::Bool(b) => serde_json::json!(b),
        MetaValue::Int(i) => serde_json::json!(i),
        MetaValue::Float(f) => serde_json::json!(f),
        MetaValue::Text(t) => serde_json::json!(t),
        MetaValue::Json(j) => serde_json::from_str(j).unwrap_or_else(|_| serde_json::json!(j)),
    }
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

/// One document, prepared.
struct Prepared {
    prompt: String,
    choices: Option<Vec<String>>,
    /// Gold choice index (multiple choice).
    gold: Option<usize>,
    /// The reference text.
    target: String,
    /// One context per choice ("multiple input" tasks); empty otherwise.
    contexts: Vec<String>,
}

/// Checks that every task's data files are where the task says and parse, before a model is
/// loaded: a missing or broken file is an error naming it (and the fetch script) at once, not
/// after the model has loaded. (Reading is cheap next to evaluating.)
pub fn check_data(
    tasks: &[Task],
    opts: &EvalOptions,
    plugins: &mut dyn Plugins,
) -> Result<(), EvalError> {
    for task in tasks {
        let (eval, fewshot) = splits(task);
        let docs = load_docs(
            task,
            &docs::split_files(task, &eval, &opts.data_root)?,
            plugins,
        )?;
        // The templates on the first document: a misspelt column fails here too.
        if let Some(doc) = docs.first() {
            let t = Templates::new();
            let c = &task.config;
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
        let shots = opts.num_fewshot.or(task.config.num_fewshot).unwrap_or(0);
        if shots > 0
            && let Some(f) = fewshot
        {
            load_docs(
                task,
                &docs::split_files(task, &f, &opts.data_root)?,
                plugins,
            )?;
        }
    }
    Ok(())
}

/// Runs `tasks` on `engine`, then aggregates `groups` over their results.
pub fn evaluate(
    engine: &mut dyn Engine,
    mut judge: Option<&mut dyn Engine>,
    tasks: &[Task],
    groups: &[GroupConfig],
    opts: &EvalOptions,
    plugins: &mut dyn Plugins,
    progress: &mut OnProgress<'_>,
) -> Result<Report, EvalError> {
    let templates = Templates::new();
    let mut report = Report {
        tasks: vec![],
        groups: vec![],
        samples: vec![],
    };
    for task in tasks {
        let started = std::time::Instant::now();
        let judge_now: Option<&mut dyn Engine> = match judge {
            Some(ref mut j) => Some(&mut **j),
            None => None,
        };
        let (mut result, samples) =
            run_task(engine, judge_now, task, opts, &templates, plugins, progress)?;
        result.seconds = started.elapsed().as_secs_f64();
        report.tasks.push(result);
        report.samples.extend(samples);
    }
    report.groups = aggregate_groups(groups, &report.tasks);
    Ok(report)
}

fn doc_err(task: &Task, doc: usize, what: &str, e: impl std::fmt::Display) -> EvalError {
    EvalError::Doc(format!(
        "{}: task `{}`, document {doc}: {what}: {e}",
        task.origin, task.config.task
    ))
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

/// Python's `maybe_delimit`.
fn maybe_delimit(prefix: &str, suffix: &str, delimiter: &str) -> String {
    if prefix.is_empty() {
        return suffix.to_string();
    }
    if suffix.is_empty() {
        return prefix.to_string();
    }
    let ws_end = prefix.chars().last().is_some_and(char::is_whitespace);
    let ws_start = suffix.chars().next().is_some_and(char::is_whitespace);
    if ws_end || ws_start {
        format!("{prefix}{suffix}")
    } else {
        format!("{prefix}{delimiter}{suffix}")
    }
}

fn as_text(r: Resolved, choices: Option<&[String]>) -> Option<String> {
    match r {
        Resolved::Text(s) => Some(s),
        Resolved::Index(i) => Some(match choices {
            Some(c) => c.get(i)?.clone(),
            None => i.to_string(),
        }),
        Resolved::List(l) => l.into_iter().next(),
    }
}

fn run_task(
    engine: &mut dyn Engine,
    mut judge: Option<&mut dyn Engine>,
    task: &Task,
    opts: &EvalOptions,
    t: &Templates,
    plugins: &mut dyn Plugins,
    progress: &mut OnProgress<'_>,
) -> Result<(TaskResult, Vec<Sample>), EvalError> {
    let c = &task.config;
    let (eval_split, fewshot_split) = splits(task);
    let eval_files = docs::split_files(task, &eval_split, &opts.data_root)?;
    let mut eval_docs = load_docs(task, &eval_files, plugins)?;
    if let Some(n) = opts.limit {
        eval_docs.truncate(n);
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
        if d.len() < shots + 1 {
            return Err(EvalError::Data(format!(
                "task `{}`: {shots}-shot needs more than the {} documents of split `{split}`",
                c.task,
                d.len()
            )));
        }
        d
    } else {
        vec![]
    };
    let first_n = c
        .fewshot_config
        .as_ref()
        .is_some_and(|f| f.sampler == "first_n");
    let exclude_self = fewshot_split == c.test_split;
    let mut rnd = PyRandom::new(opts.fewshot_seed);
    let has_choices = c.doc_to_choice.is_some();
    let chat = opts.apply_chat_template;
    let target_delimiter = if chat {
        ""
    } else {
        c.target_delimiter.as_str()
    };

    // Documents to prompts.
    let mut prepared = Vec::with_capacity(eval_docs.len());
    for (i, doc) in eval_docs.iter().enumerate() {
        let description = match &c.description {
            Some(d) => t
                .render(d, doc)
                .map_err(|e| doc_err(task, i, "description", e))?,
            None => String::new(),
        };
        let system = maybe_delimit(
            opts.system_prompt.as_deref().unwrap_or(""),
            &description,
            &c.fewshot_delimiter,
        );
        let mut text = String::new();
        if shots > 0 {
            let picked: Vec<&Doc> = if first_n {
                fewshot_docs
                    .iter()
                    .filter(|d| !exclude_self || *d != doc)
                    .take(shots)
                    .collect()
            } else if exclude_self {
                let drawn: Vec<&Doc> = rnd
                    .sample(fewshot_docs.len(), shots + 1)
                    .into_iter()
                    .map(|j| &fewshot_docs[j])
                    .filter(|d| *d != doc)
                    .take(shots)
                    .collect();
                drawn
            } else {
                rnd.sample(fewshot_docs.len(), shots)
                    .into_iter()
                    .map(|j| &fewshot_docs[j])
                    .collect()
            };
            for shot in picked {
                let q = t
                    .resolve(
                        c.doc_to_text.as_ref().expect("checked"),
                        shot,
                        has_choices,
                        false,
                    )
                    .map_err(|e| doc_err(task, i, "few-shot doc_to_text", e))?;
                let choices = match &c.doc_to_choice {
                    Some(f) => Some(
                        t.choices(f, shot)
                            .map_err(|e| doc_err(task, i, "few-shot doc_to_choice", e))?,
                    ),
                    None => None,
                };
                let a = t
                    .resolve(
                        c.doc_to_target.as_ref().expect("checked"),
                        shot,
                        has_choices,
                        true,
                    )
                    .map_err(|e| doc_err(task, i, "few-shot doc_to_target", e))?;
                // One context per choice (winogrande): the shot shows its right one.
                let q = match (q, &choices) {
                    (Resolved::Index(k), Some(ch)) => ch.get(k).cloned().unwrap_or_default(),
                    (q, _) => as_text(q, None).unwrap_or_default(),
                };
                let a = as_text(a, choices.as_deref()).unwrap_or_default();
                text.push_str(&q);
                if !a.is_empty() {
                    text.push_str(&c.target_delimiter);
                    text.push_str(&a);
                    text.push_str(&c.fewshot_delimiter);
                }
            }
        }
        let choices = match &c.doc_to_choice {
            Some(f) => Some(
                t.choices(f, doc)
                    .map_err(|e| doc_err(task, i, "doc_to_choice", e))?,
            ),
            None => None,
        };
        let q = match &c.doc_to_text {
            Some(f) => t
                .resolve(f, doc, has_choices, false)
                .map_err(|e| doc_err(task, i, "doc_to_text", e))?,
            None => Resolved::Text(String::new()),
        };
        let target = t
            .resolve(
                c.doc_to_target.as_ref().expect("checked"),
                doc,
                has_choices,
                true,
            )
            .map_err(|e| doc_err(task, i, "doc_to_target", e))?;
        // An index from doc_to_text: the harness's "multiple input" form, where each choice is
        // a context and the target the shared continuation.
        let (q, multi) = match (q, &choices) {
            (Resolved::Index(g), Some(ch)) if g < ch.len() => (String::new(), Some(g)),
            (Resolved::Index(g), _) => {
                return Err(doc_err(
                    task,
                    i,
                    "doc_to_text",
                    format!("gave index {g}, which names no choice"),
                ));
            }
            (q, _) => (as_text(q, None).unwrap_or_default(), None),
        };
        text.push_str(&q);
        let gold = match (&target, &choices) {
            _ if multi.is_some() => multi,
            (Resolved::Index(g), Some(ch)) => {
                if *g >= ch.len() {
                    return Err(doc_err(
                        task,
                        i,
                        "doc_to_target",
                        format!("index {g} but {} choices", ch.len()),
                    ));
                }
                Some(*g)
            }
            (Resolved::Text(s), Some(ch)) => {
                Some(ch.iter().position(|x| x == s).ok_or_else(|| {
                    doc_err(
                        task,
                        i,
                        "doc_to_target",
                        format!("{s:?} is not one of the choices"),
                    )
                })?)
            }
            _ => None,
        };
        let target = if multi.is_some() {
            as_text(target, None).unwrap_or_default()
        } else {
            as_text(target, choices.as_deref()).unwrap_or_default()
        };
        let render = |text: String| -> Result<String, EvalError> {
            if chat {
                let mut msgs = vec![];
                if !system.is_empty() {
                    msgs.push(Message::new("system", system.clone()));
                }
                msgs.push(Message::new("user", text));
                Ok(engine.apply_chat_template(&msgs)?)
            } else {
                Ok(format!("{system}{text}"))
            }
        };
        let contexts = match (multi, &choices) {
            (Some(_), Some(ch)) => ch
                .iter()
                .map(|choice| render(format!("{text}{choice}")))
                .collect::<Result<Vec<_>, _>>()?,
            _ => vec![],
        };
        let prompt = match contexts.first() {
            Some(first) => first.clone(),
            None => render(text)?,
        };
        prepared.push(Prepared {
            prompt,
            choices,
            gold,
            target,
            contexts,
        });
    }

    // Prompts to answers.
    let name = c.task.clone();
    let mut samples: Vec<Sample> = prepared
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
        })
        .collect();
    match c.output_type {
        OutputType::MultipleChoice
        | OutputType::Loglikelihood
        | OutputType::LoglikelihoodRolling => {
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
                    _ => {
                        requests.push(LoglikelihoodRequest {
                            context: String::new(),
                            continuation: p.target.clone(),
                        });
                        owner.push(i);
                    }
                }
            }
            let total = requests.len();
            let answers =
                engine.loglikelihood(&requests, &mut |done| progress(&name, done, total))?;
            for (a, &i) in answers.iter().zip(&owner) {
                samples[i].loglikelihoods.push((a.logprob, a.greedy));
            }
        }
        OutputType::GenerateUntil => {
            let g = c
                .generation_kwargs
                .clone()
                .unwrap_or(crate::task::GenerationKwargs {
                    until: vec![c.fewshot_delimiter.clone()],
                    max_gen_toks: 256,
                    do_sample: false,
                    temperature: 0.0,
                });
            let temperature = if g.do_sample {
                g.temperature.max(f32::MIN_POSITIVE)
            } else {
                0.0
            };
            let requests: Vec<GenerateRequest> = prepared
                .iter()
                .map(|p| GenerateRequest {
                    prompt: p.prompt.clone(),
                    until: g.until.clone(),
                    max_tokens: g.max_gen_toks,
                    temperature,
                    seed: opts.seed,
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
                s.prediction = Some(text);
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
                &eval_docs,
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
            digest: hex::encode(digest.finalize()),
            metrics: metrics_out,
            skipped,
            seconds: 0.0,
        },
        samples,
    ))
}

/// The harness's defaults when a task lists no metrics.
fn default_metrics(kind: OutputType) -> Vec<MetricSpec> {
    let names: &[&str] = match kind {
        OutputType::MultipleChoice => &["acc", "acc_norm"],
        OutputType::Loglikelihood => &["acc"],
        OutputType::LoglikelihoodRolling => {
            &["word_perplexity", "byte_perplexity", "bits_per_byte"]
        }
        OutputType::GenerateUntil => &["exact_match"],
    };
    names
        .iter()
        .map(|n| MetricSpec {
            metric: Some(n.to_string()),
            plugin: None,
            settings: None,
            on_error: None,
            aggregation: None,
            higher_is_better: None,
            ignore_case: false,
            ignore_punctuation: false,
            ignore_numbers: false,
            regexes_to_ignore: vec![],
        })
        .collect()
}

fn meta_value(v: &serde_json::Value) -> MetaValue {
    match v {
        serde_json::Value::Null => MetaValue::Null,
        serde_json::Value::Bool(b) => MetaValue::Bool(*b),
        serde_json::Value::Number(n) => match n.as_i64() {
            Some(i) => MetaValue::Int(i),
            None => MetaValue::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        serde_json::Value::String(s) => MetaValue::Text(s.clone()),
        other => MetaValue::Json(other.to_string()),
    }
}

/// Grades every document with an evaluator plugin, per filter, in batches; returns how many
/// documents were left ungraded because a batch failed under `on_error: skip`.
#[allow(clippy::too_many_arguments)]
fn grade_with_plugin(
    task: &Task,
    docs: &[Doc],
    prepared: &[Prepared],
    samples: &mut [Sample],
    filters: &[Filter],
    m: &MetricSpec,
    spec: &str,
    plugins: &mut dyn Plugins,
    aggregates: &mut BTreeMap<(String, String), f64>,
) -> Result<usize, EvalError> {
    const BATCH: usize = 64;
    let settings = m.settings.clone().unwrap_or_else(|| serde_json::json!({}));
    let mut ev = plugins.evaluator(spec, &settings).map_err(|e| {
        EvalError::Task(format!(
            "{}: task `{}`: metric plugin `{spec}`: {e}",
            task.origin, task.config.task
        ))
    })?;
    let stop = m.on_error.as_deref() == Some("stop");
    let mut skipped = 0;
    for f in filters {
        let preds: Vec<Prediction> = samples
            .iter()
            .zip(prepared)
            .zip(docs)
            .enumerate()
            .map(|(i, ((s, p), d))| {
                let prediction = graded_prediction(s, p, f);
                Prediction {
                    id: format!("{}/{i}", task.config.task),
                    prediction,
                    references: vec![p.target.clone()],
                    metadata: d.iter().map(|(k, v)| (k.clone(), meta_value(v))).collect(),
                }
            })
            .collect();
        let mut graded: Vec<Vec<Metric>> = vec![];
        for (b, chunk) in preds.chunks(BATCH).enumerate() {
            match ev.score(chunk) {
                Ok(grades) => {
                    for (j, metrics) in grades.into_iter().enumerate() {
                        for Metric { name, value } in &metrics {
                            samples[b * BATCH + j]
                                .grades
                                .insert(format!("{name},{}", f.name), *value);
                        }
                        graded.push(metrics);
                    }
                }
                Err(e) if stop => return Err(e.into()),
                Err(e) => {
                    tracing::warn!(
                        "{e}; skipping {} documents of task {}",
                        chunk.len(),
                        task.config.task
                    );
                    skipped += chunk.len();
                }
            }
        }
        match ev.aggregate(&graded) {
            Ok(ms) => {
                for Metric { name, value } in ms {
                    aggregates.insert((name, f.name.clone()), value);
                }
            }
            Err(e) if stop => return Err(e.into()),
            Err(e) => tracing::warn!("{e}; reporting the mean of its grades instead"),
        }
    }
    Ok(skipped)
}

/// The prediction a document is graded on under filter `f`: the filtered generation, or the
/// chosen choice of a multiple-choice question.
fn graded_prediction(s: &Sample, p: &Prepared, f: &Filter) -> String {
    match (&s.prediction, &p.choices) {
        (Some(_), _) => s.filtered.get(&f.name).cloned().unwrap_or_default(),
        (None, Some(ch)) if p.contexts.is_empty() => {
            let lls: Vec<f64> = s.loglikelihoods.iter().map(|x| x.0).collect();
            ch[metrics::argmax(&lls)].clone()
        }
        _ => String::new(),
    }
}

/// Grades with an LLM judge (`metric: judge`, settings `prompt` (a template file), `min`,
/// `max`, `pass_fail`, `max_tokens`, `reference` (default true)); returns how many of the
/// judge's answers did not parse (those documents get no grade, never a made-up one).
fn grade_with_judge(
    task: &Task,
    prepared: &[Prepared],
    samples: &mut [Sample],
    filters: &[Filter],
    m: &MetricSpec,
    engine: &mut dyn Engine,
) -> Result<usize, EvalError> {
    use crate::judge::{self, JudgeOptions, PointItem, Scale};
    let bad = |e: String| {
        EvalError::Task(format!(
            "{}: task `{}`: metric judge: {e}",
            task.origin, task.config.task
        ))
    };
    let settings = m.settings.clone().unwrap_or_else(|| serde_json::json!({}));
    let get = |k: &str| settings.get(k);
    let mut o = JudgeOptions::default();
    if let Some(p) = get("prompt").and_then(|v| v.as_str()) {
        let path = match &task.dir {
            Some(d) if std::path::Path::new(p).is_relative() => d.join(p),
            _ => PathBuf::from(p),
        };
        o.template = Some(
            std::fs::read_to_string(&path)
                .map_err(|e| bad(format!("prompt {}: {e}", path.display())))?,
        );
    }
    if get("pass_fail").and_then(|v| v.as_bool()) == Some(true) {
        o.scale = Scale::PassFail;
    } else {
        let min = get("min").and_then(|v| v.as_i64()).unwrap_or(1);
        let max = get("max").and_then(|v| v.as_i64()).unwrap_or(10);
        if min >= max {
            return Err(bad(format!("min {min} must be below max {max}")));
        }
        o.scale = Scale::Range { min, max };
    }
    if let Some(n) = get("max_tokens").and_then(|v| v.as_u64()) {
        o.max_tokens = n as usize;
    }
    let with_reference = get("reference").and_then(|v| v.as_bool()).unwrap_or(true);
    let mut failed = 0;
    for f in filters {
        let items: Vec<PointItem> = samples
            .iter()
            .zip(prepared)
            .map(|(s, p)| PointItem {
                question: p.prompt.clone(),
                answer: graded_prediction(s, p, f),
                reference: with_reference.then(|| p.target.clone()),
            })
            .collect();
        let verdicts = judge::pointwise(engine, &items, &o).map_err(|e| bad(e.to_string()))?;
        for (s, v) in samples.iter_mut().zip(verdicts) {
            match v.score {
                Some(x) => {
                    s.grades.insert(format!("judge,{}", f.name), x);
                }
                None => {
                    failed += 1;
                    tracing::debug!(
                        "judge answer did not parse: {}",
                        v.failure.unwrap_or_default()
                    );
                }
            }
        }
    }
    Ok(failed)
}

/// Groups over task results (and over other groups, in the order given: members first).
fn aggregate_groups(groups: &[GroupConfig], tasks: &[TaskResult]) -> Vec<GroupResult> {
    let mut out: Vec<GroupResult> = vec![];
    // Members may be groups defined later in the list: resolve by repeated passes.
    let mut pending: Vec<&GroupConfig> = groups.iter().collect();
    while !pending.is_empty() {
        let before = pending.len();
        pending.retain(|g| {
            let ready = g
                .task
                .iter()
                .all(|m| tasks.iter().any(|t| &t.task == m) || out.iter().any(|o| &o.group == m));
            if !ready {
                return true;
            }
            out.push(aggregate_one(g, tasks, &out));
            false
        });
        if pending.len() == before {
            break;
        }
    }
    out
}

fn aggregate_one(g: &GroupConfig, tasks: &[TaskResult], done: &[GroupResult]) -> GroupResult {
    let members: Vec<(&str, usize, &[MetricValue])> = g
        .task
        .iter()
        .map(|m| match tasks.iter().find(|t| &t.task == m) {
            Some(t) => (t.task.as_str(), t.n, t.metrics.as_slice()),
            None => {
                let o = done.iter().find(|o| &o.group == m).expect("checked ready");
                (o.group.as_str(), o.n, o.metrics.as_slice())
            }
        })
        .collect();
    let n = members.iter().map(|m| m.1).sum();
    let mut metrics_out = vec![];
    for a in &g.aggregate_metric_list {
        // Every filter the members report this metric under.
        let mut filters: Vec<String> = vec![];
        for (_, _, ms) in &members {
            for mv in ms.iter().filter(|mv| mv.metric == a.metric) {
                if !filters.contains(&mv.filter) {
                    filters.push(mv.filter.clone());
                }
            }
        }
        for f in filters {
            let vals: Vec<(&MetricValue, usize)> = members
                .iter()
                .filter_map(|(_, n, ms)| {
                    ms.iter()
                        .find(|mv| mv.metric == a.metric && mv.filter == f)
                        .map(|mv| (mv, *n))
                })
                .collect();
            if vals.len() != members.len() {
                continue;
            }
            let weights: Vec<f64> = vals
                .iter()
                .map(|(_, n)| if a.weight_by_size { *n as f64 } else { 1.0 })
                .collect();
            let wsum: f64 = weights.iter().sum();
            let value = vals
                .iter()
                .zip(&weights)
                .map(|((mv, _), w)| mv.value * w)
                .sum::<f64>()
                / wsum;
            let stderrs: Option<Vec<f64>> = vals.iter().map(|(mv, _)| mv.stderr).collect();
            let sizes: Vec<usize> = vals.iter().map(|(_, n)| *n).collect();
            let stderr = stderrs.and_then(|s| metrics::pooled_stderr(&s, &sizes));
            metrics_out.push(MetricValue {
                metric: a.metric.clone(),
                filter: f,
                value,
                stderr,
                n: vals.iter().map(|v| v.0.n).sum(),
            });
        }
    }
    GroupResult {
        group: g.group.clone(),
        tasks: g.task.clone(),
        n,
        metrics: metrics_out,
    }
}

#[cfg(test)]
mod tests {
    use super::maybe_delimit;

    #[test]
    fn delimiting_as_the_harness() {
        assert_eq!(maybe_delimit("", "x", "\n\n"), "x");
        assert_eq!(maybe_delimit("sys", "desc", "\n\n"), "sys\n\ndesc");
        assert_eq!(maybe_delimit("sys\n", "desc", "\n\n"), "sys\ndesc");
    }
}
