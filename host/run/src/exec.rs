//! Running a plan: each stage in its folder, its inputs the outputs of the stage it chains
//! from, its metrics shown to the recipes that planned it. A recipe's `next-stage` or `stop`
//! takes effect after a checkpoint (the trainer saves one before it ends early); a recipe
//! call that fails follows `on_plugin_error` (`stop`: end the run there, its checkpoint
//! intact; `skip`: warn and go on as planned). `run.json` is rewritten after every stage, so a
//! run that dies still leaves its record.

use crate::config::{OnPluginError, RunConfig};
use crate::manifest::{self, FileRecord, Manifest, StageRecord};
use crate::plan::{Plan, PlannedStage};
use crate::{PluginHost, RunError, TrainPlugins};
use galley_core::{Decision, Metric, Recipe};
use galley_train::{EvalMetrics, Observer, StepMetrics, TrainConfig};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// What the binary is told as the run goes (it draws the progress bars); training progress
/// arrives through the trainer's own `Observer` calls.
pub trait Events: Observer {
    fn stage_start(&mut self, _index: usize, _count: usize, _stage: &PlannedStage) {}
    /// A resumed run keeps a stage the earlier attempt completed.
    fn stage_kept(&mut self, _index: usize, _count: usize, _record: &StageRecord) {}
    /// Evaluation or generation progress: `what` (a task), done of total.
    fn progress(&mut self, _what: &str, _done: usize, _total: usize) {}
    fn stage_end(&mut self, _record: &StageRecord) {}
    fn warn(&mut self, _message: &str) {}
}

/// How the run ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Status {
    Finished,
    /// A recipe decided to stop (its reason).
    Stopped(String),
    /// A stage or plugin failed (the error); finished stages' outputs are intact.
    Failed(String),
}

impl Status {
    fn text(&self) -> String {
        match self {
            Status::Finished => "finished".into(),
            Status::Stopped(r) => format!("stopped: {r}"),
            Status::Failed(e) => format!("failed: {e}"),
        }
    }
}

pub struct Outcome {
    pub status: Status,
    pub manifest: Manifest,
}

/// A stage's outputs, as later stages take them.
#[derive(Debug, Clone, Default)]
struct Outputs {
    /// A model folder or file that loads on its own.
    model: Option<PathBuf>,
    /// Adapters over `base`, in order (LoRA stages, each trained over the ones before it).
    adapter: Option<(PathBuf, Vec<PathBuf>)>,
    dataset: Option<PathBuf>,
}

/// What runs a plan.
pub struct Runner<'a> {
    pub cfg: &'a RunConfig,
    /// The folder relative paths in the run config are taken from (absolute).
    pub base: PathBuf,
    /// The run folder (absolute).
    pub run_dir: PathBuf,
    /// The recipes, in the run config's order, with their `name@version`.
    pub recipes: Vec<(String, Box<dyn Recipe>)>,
    pub host: &'a mut dyn PluginHost,
    pub events: &'a mut dyn Events,
    /// Resuming: the stages an earlier attempt completed (a prefix of the plan), kept as they
    /// are; the next training stage continues from its newest checkpoint.
    pub kept: Vec<StageRecord>,
    pub resume: bool,
}

impl Runner<'_> {
    /// The run's starting model (`model:` as a path), resolved against the config's folder.
    fn run_model(&self) -> Option<PathBuf> {
        match &self.cfg.model {
            Some(serde_json::Value::String(p)) => Some(self.base.join(p)),
            Some(m) => m.get("path")?.as_str().map(|p| self.base.join(p)),
            None => None,
        }
    }

    /// Runs every stage; `manifest` (already holding config, plan and planning time) is
    /// completed and written after each stage.
    pub fn run(mut self, plan: &Plan, mut manifest: Manifest) -> Result<Outcome, RunError> {
        std::fs::create_dir_all(&self.run_dir)
            .map_err(|e| RunError::Io(format!("{}: {e}", self.run_dir.display())))?;
        let started = Instant::now();
        if let Some(m) = self.run_model().filter(|m| m.exists()) {
            manifest.model = Some(FileRecord {
                digest: manifest::digest_path(&m)?,
                path: m,
            });
        }
        manifest.planning_seconds += started.elapsed().as_secs_f64();
        let mut in_stages = 0.0;
        manifest.write(&self.run_dir)?;
        let mut outputs: BTreeMap<String, Outputs> = BTreeMap::new();
        let mut status = Status::Finished;
        for (i, st) in plan.stages.iter().enumerate() {
            if let Some(rec) = self.kept.get(i).cloned() {
                let input = self.input_of(st, &outputs);
                outputs.insert(st.name.clone(), kept_outputs(st, &input, &rec)?);
                self.events.stage_kept(i, plan.stages.len(), &rec);
                manifest.stages.push(rec);
                continue;
            }
            self.events.stage_start(i, plan.stages.len(), st);
            let t0 = Instant::now();
            let mut ctl = Control::default();
            let result = self.stage(st, &outputs, &mut ctl, &mut manifest);
            let (record, out) = match result {
                Ok((mut rec, out)) => {
                    rec.seconds = t0.elapsed().as_secs_f64();
                    rec.overhead_seconds += ctl.overhead;
                    (rec, Some(out))
                }
                Err(e) => {
                    let rec = StageRecord {
                        name: st.name.clone(),
                        kind: st.kind.clone(),
                        status: format!("failed: {e}"),
                        seconds: t0.elapsed().as_secs_f64(),
                        steps: None,
                        metrics: BTreeMap::new(),
                        outputs: BTreeMap::new(),
                        metrics_digest: None,
                        overhead_seconds: ctl.overhead,
                    };
                    status = Status::Failed(e.to_string());
                    (rec, None)
                }
            };
            in_stages += t0.elapsed().as_secs_f64();
            self.events.stage_end(&record);
            manifest.stages.push(record);
            manifest.plugins = self.host.records();
            manifest.seconds = started.elapsed().as_secs_f64() + manifest.planning_seconds;
            if let Some(out) = out {
                outputs.insert(st.name.clone(), out);
            }
            if status == Status::Finished {
                if let Some(e) = ctl.error.take() {
                    status = Status::Failed(e);
                } else if let Some(Decision::Stop(r)) = ctl.decision.take() {
                    status = Status::Stopped(r);
                }
            }
            if status != Status::Finished {
                break;
            }
            manifest.write(&self.run_dir)?;
        }
        manifest.status = status.text();
        let total = started.elapsed().as_secs_f64();
        // Between stages: the manifest rewritten, outputs handed on.
        manifest.bookkeeping_seconds = (total - in_stages).max(0.0);
        manifest.seconds = total + manifest.planning_seconds;
        manifest.write(&self.run_dir)?;
        Ok(Outcome { status, manifest })
    }

    /// What a stage starts from: the outputs of the stage it chains from, else the run's model.
    fn input_of(&self, st: &PlannedStage, outputs: &BTreeMap<String, Outputs>) -> Outputs {
        match &st.model_from {
            Some(from) => outputs.get(from).cloned().unwrap_or_default(),
            None => Outputs {
                model: self.run_model(),
                ..Default::default()
            },
        }
    }

    fn stage(
        &mut self,
        st: &PlannedStage,
        outputs: &BTreeMap<String, Outputs>,
        ctl: &mut Control,
        manifest: &mut Manifest,
    ) -> Result<(StageRecord, Outputs), RunError> {
        let input = self.input_of(st, outputs);
        let data = st
            .data_from
            .as_ref()
            .and_then(|f| outputs.get(f)?.dataset.clone());
        let dir = self.run_dir.join(&st.name);
        std::fs::create_dir_all(&dir)
            .map_err(|e| RunError::Io(format!("{}: {e}", dir.display())))?;
        let mut rec = StageRecord {
            name: st.name.clone(),
            kind: st.kind.clone(),
            status: "finished".into(),
            seconds: 0.0,
            steps: None,
            metrics: BTreeMap::new(),
            outputs: BTreeMap::new(),
            metrics_digest: None,
            overhead_seconds: 0.0,
        };
        let out = match st.kind.as_str() {
            "evaluate" => self.evaluate(st, &input, &dir, ctl, &mut rec)?,
            "generate" => self.generate(st, &input, &dir, &mut rec)?,
            "merge" => merge(st, &input, &dir, &mut rec)?,
            _ => self.train(st, &input, data, ctl, &mut rec, manifest)?,
        };
        for (k, p) in [
            ("model", out.model.as_ref()),
            ("adapter", out.adapter.as_ref().and_then(|a| a.1.last())),
            ("dataset", out.dataset.as_ref()),
        ] {
            if let Some(p) = p {
                rec.outputs.insert(k.into(), p.clone());
            }
        }
        Ok((rec, out))
    }

    fn train(
        &mut self,
        st: &PlannedStage,
        input: &Outputs,
        data: Option<PathBuf>,
        ctl: &mut Control,
        rec: &mut StageRecord,
        manifest: &mut Manifest,
    ) -> Result<Outputs, RunError> {
        let mut settings = st.settings.clone();
        if st.model_from.is_some() {
            // A whole model, or the base with the adapters the earlier stages trained: they
            // are applied in memory, no merged model is written to hand over.
            match (&input.model, &input.adapter) {
                (Some(m), _) => settings["model"]["path"] = serde_json::json!(m),
                (None, Some((base, chain))) => {
                    settings["model"]["path"] = serde_json::json!(base);
                    settings["model"]["adapters"] = serde_json::json!(chain);
                }
                (None, None) => {
                    return Err(RunError::stage(
                        &st.name,
                        format!(
                            "stage `{}` left no model to train from",
                            st.model_from.as_deref().unwrap_or_default()
                        ),
                    ));
                }
            }
        }
        if let Some(d) = data {
            settings["data"]["train"] = serde_json::json!({"path": d});
        }
        let name = format!("stage `{}`", st.name);
        let cfg = TrainConfig::from_value(settings, &name, &self.base)
            .map_err(|e| RunError::Plan(e.to_string()))?;
        for src in std::iter::once(&cfg.data.train)
            .chain(cfg.data.validation.as_ref())
            .chain(&cfg.data.mixture)
        {
            if let Some(p) = src.path.as_ref().filter(|p| p.is_file())
                && !manifest.data.iter().any(|f| &f.path == p)
            {
                let t = Instant::now();
                manifest.data.push(FileRecord {
                    path: p.clone(),
                    digest: manifest::digest_path(p)?,
                });
                ctl.overhead += t.elapsed().as_secs_f64();
            }
        }
        let t = Instant::now();
        let mut plugins: TrainPlugins = self
            .host
            .train_plugins(&cfg, &st.name)
            .map_err(|e| RunError::stage(&st.name, e))?;
        ctl.overhead += t.elapsed().as_secs_f64();
        // A recipe's stages run in one process (a job of several is refused).
        let sources = plugins.sources(None);
        let mut obs = StageObserver {
            runner_events: &mut *self.events,
            recipes: &mut self.recipes,
            stage: st,
            policy: self.cfg.on_plugin_error,
            ctl,
        };
        let out = galley_train::run(&cfg, sources, self.resume, &mut obs)
            .map_err(|e| RunError::stage(&st.name, e))?;
        rec.steps = Some(out.summary.steps);
        if let Some(r) = &out.summary.ended_early {
            rec.status = format!("ended early: {r}");
        }
        for (k, v) in [
            ("loss", out.summary.last_loss),
            ("eval_loss", out.summary.last_eval_loss),
        ] {
            if let Some(v) = v {
                rec.metrics.insert(k.into(), v);
            }
        }
        let metrics = out.out_dir.join("metrics.jsonl");
        rec.outputs.insert("plot".into(), out.plot.clone());
        let rewards = out.out_dir.join("reward.png");
        if rewards.is_file() {
            rec.outputs.insert("rewards".into(), rewards);
        }
        last_values(&metrics, &mut rec.metrics);
        rec.metrics_digest = Some(manifest::metrics_digest(&metrics)?);
        let model = out.model.clone();
        let adapter = match (&out.adapter, &cfg.model.path) {
            (Some(a), Some(base)) => {
                let mut chain = cfg.model.adapters.clone();
                chain.push(a.clone());
                Some((base.clone(), chain))
            }
            _ => None,
        };
        Ok(Outputs {
            model,
            adapter,
            dataset: None,
        })
    }

    fn evaluate(
        &mut self,
        st: &PlannedStage,
        input: &Outputs,
        dir: &Path,
        ctl: &mut Control,
        rec: &mut StageRecord,
    ) -> Result<Outputs, RunError> {
        let err = |e: &dyn std::fmt::Display| RunError::stage(&st.name, e);
        let mut s =
            galley_eval::EvalSettings::from_value(st.settings.clone()).map_err(|e| err(&e))?;
        s.relative_to(&self.base);
        let (model, adapters): (PathBuf, Vec<PathBuf>) =
            match (&input.model, &input.adapter, &s.model) {
                (_, _, Some(m)) if st.model_from.is_none() => {
                    (PathBuf::from(m), s.adapter.iter().cloned().collect())
                }
                (Some(m), _, _) => (m.clone(), Vec::new()),
                (None, Some((base, chain)), _) => (base.clone(), chain.clone()),
                (None, None, _) => {
                    return Err(err(&"no model to evaluate: set `model` in the run config"));
                }
            };
        let (tasks, groups) = s.select().map_err(|e| err(&e))?;
        let opts = s.options();
        let t = Instant::now();
        let loaded = galley_eval::load_tasks(&tasks, &opts, self.host.eval_plugins())
            .map_err(|e| err(&e))?;
        ctl.overhead += t.elapsed().as_secs_f64();
        let load = galley_model::LoadOptions {
            dequantize: s.dequantize,
            ..Default::default()
        };
        let device = galley_model::default_device();
        let mut engine = galley_model::NativeEngine::open(
            &model,
            &adapters.iter().map(PathBuf::as_path).collect::<Vec<_>>(),
            &device,
            load,
        )
        .map_err(|e| err(&format!("loading {}: {e}", model.display())))?;
        engine.batch_tokens = s.batch_tokens.max(64);
        engine.max_length = s.max_length;
        let started = Instant::now();
        let events = &mut *self.events;
        let report = galley_eval::evaluate(
            &mut engine,
            None,
            &loaded,
            &groups,
            &opts,
            self.host.eval_plugins(),
            &mut |task, done, total| events.progress(task, done, total),
        )
        .map_err(|e| err(&e))?;
        let model_json = serde_json::json!({
            "path": model,
            "adapter": adapters.last(),
            "adapters": adapters,
        });
        let results = s.results_json(
            &report,
            model_json,
            started.elapsed().as_secs_f64(),
            galley_core::peak_rss_mib(),
        );
        galley_eval::settings::write_outputs(dir, &results, &report).map_err(|e| err(&e))?;
        let mut metrics = Vec::new();
        for t in &report.tasks {
            for m in &t.metrics {
                let key = if m.filter == "none" {
                    format!("{}/{}", t.task, m.metric)
                } else {
                    format!("{}/{},{}", t.task, m.metric, m.filter)
                };
                rec.metrics.insert(key.clone(), m.value);
                metrics.push(Metric::new(key, m.value));
            }
        }
        // The scores, not the timings that results.json also holds.
        let scores = serde_json::to_value(&rec.metrics).expect("numbers serialize");
        rec.metrics_digest = Some(manifest::value_digest(&scores));
        rec.outputs
            .insert("results".into(), dir.join("results.json"));
        let t = Instant::now();
        decide(
            &mut self.recipes,
            st,
            0,
            &metrics,
            self.cfg.on_plugin_error,
            ctl,
            &mut *self.events,
        );
        ctl.overhead += t.elapsed().as_secs_f64();
        Ok(input.clone())
    }

    fn generate(
        &mut self,
        st: &PlannedStage,
        input: &Outputs,
        dir: &Path,
        rec: &mut StageRecord,
    ) -> Result<Outputs, RunError> {
        let err = |e: &dyn std::fmt::Display| RunError::stage(&st.name, e);
        let s: GenerateSettings = serde_path_to_error::deserialize(st.settings.clone())
            .map_err(|e| err(&format!("`{}`: {}", e.path(), e.inner())))?;
        let (model, adapters): (PathBuf, Vec<PathBuf>) = match (&input.model, &input.adapter) {
            (Some(m), _) => (m.clone(), Vec::new()),
            (None, Some((b, chain))) => (b.clone(), chain.clone()),
            (None, None) => return Err(err(&"no model to generate with")),
        };
        let data = self.base.join(&s.data);
        let rows = read_prompts(&data, s.limit).map_err(|e| err(&e))?;
        let device = galley_model::default_device();
        let mut engine = galley_model::NativeEngine::open(
            &model,
            &adapters.iter().map(PathBuf::as_path).collect::<Vec<_>>(),
            &device,
            Default::default(),
        )
        .map_err(|e| err(&format!("loading {}: {e}", model.display())))?;
        use galley_core::Engine;
        let mut requests = Vec::new();
        for (i, (msgs, _)) in rows.iter().enumerate() {
            let prompt = engine.apply_chat_template(msgs).map_err(|e| err(&e))?;
            requests.push(galley_core::GenerateRequest {
                prompt,
                until: s.until.clone(),
                max_tokens: s.max_tokens,
                temperature: s.temperature,
                seed: galley_core::seed::derive_seed(s.seed, &[i as u64]),
                json_schema: None,
            });
        }
        let total = requests.len();
        let events = &mut *self.events;
        let outs = engine
            .generate(&requests, &mut |done| {
                events.progress(&st.name, done, total)
            })
            .map_err(|e| err(&e))?;
        let path = dir.join("generated.jsonl");
        let mut text = String::new();
        let mut tokens = 0usize;
        for ((msgs, mut extra), g) in rows.into_iter().zip(outs) {
            tokens += g.tokens;
            let mut all = msgs;
            all.push(galley_core::Message::new("assistant", g.text));
            extra.insert(
                "messages".into(),
                serde_json::to_value(all).expect("messages"),
            );
            text.push_str(&serde_json::Value::Object(extra).to_string());
            text.push('\n');
        }
        std::fs::write(&path, text).map_err(|e| err(&format!("{}: {e}", path.display())))?;
        rec.metrics.insert("completions".into(), total as f64);
        rec.metrics.insert("tokens".into(), tokens as f64);
        rec.metrics_digest = Some(manifest::digest_path(&path)?);
        Ok(Outputs {
            dataset: Some(path),
            ..input.clone()
        })
    }
}

/// The outputs of a stage an earlier attempt completed, as later stages take them: a training
/// stage's adapter goes on top of the chain its config.yaml (as trained) started from.
fn kept_outputs(
    st: &PlannedStage,
    input: &Outputs,
    rec: &StageRecord,
) -> Result<Outputs, RunError> {
    let model = rec.outputs.get("model").cloned();
    let dataset = rec.outputs.get("dataset").cloned();
    Ok(match st.kind.as_str() {
        "evaluate" => input.clone(),
        "generate" => Outputs {
            dataset,
            ..input.clone()
        },
        "merge" => match model {
            Some(m) => Outputs {
                model: Some(m),
                ..Default::default()
            },
            None => input.clone(),
        },
        _ => {
            let adapter = match rec.outputs.get("adapter") {
                Some(a) => {
                    let used = rec
                        .outputs
                        .get("config")
                        .cloned()
                        .unwrap_or_else(|| a.with_file_name("config.yaml"));
                    let cfg: TrainConfig = galley_core::config::load(
                        Some(&used),
                        &[],
                        &galley_core::config::no_expand,
                    )
                    .map_err(|e| RunError::stage(&st.name, e))?;
                    let mut chain = cfg.model.adapters.clone();
                    chain.push(a.clone());
                    cfg.model.path.map(|base| (base, chain))
                }
                None => None,
            };
            Outputs {
                model,
                adapter,
                dataset: None,
            }
        }
    })
}

/// `generate` stage settings.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GenerateSettings {
    /// JSONL: `messages` (the conversation so far) or `prompt` (text or messages) per line;
    /// other columns are kept beside the generated conversation.
    data: PathBuf,
    #[serde(default)]
    limit: Option<usize>,
    #[serde(default = "default_max_tokens")]
    max_tokens: usize,
    /// 0 is greedy.
    #[serde(default)]
    temperature: f32,
    #[serde(default)]
    until: Vec<String>,
    #[serde(default)]
    seed: u64,
}

fn default_max_tokens() -> usize {
    256
}

type Row = (
    Vec<galley_core::Message>,
    serde_json::Map<String, serde_json::Value>,
);

/// Prompts from a dataset file in GRPO's prompt shapes (galley-train reads them: `prompt` as
/// text or messages, or `messages`), each with its other columns; a trailing assistant turn
/// is the answer the stage generates anew.
fn read_prompts(path: &Path, limit: Option<usize>) -> Result<Vec<Row>, String> {
    use galley_train::dataset::Content;
    let mut skipped = galley_train::data::Skipped::default();
    let src = galley_train::config::SourceSection {
        limit,
        ..Default::default()
    };
    let on_bad = galley_train::config::OnBad::Error;
    let records =
        galley_train::dataset::read(&src, path, on_bad, &mut skipped).map_err(|e| e.to_string())?;
    records
        .into_iter()
        .map(|r| {
            let (at, id) = (r.at.clone(), r.id.clone());
            let (prompt, metadata) = r.into_prompt().map_err(|msg| format!("{at}: {msg}"))?;
            let messages = match prompt {
                Content::Chat(m) => m,
                Content::Text(t) => vec![galley_core::Message::new("user", t)],
            };
            let mut columns: serde_json::Map<String, serde_json::Value> = metadata
                .iter()
                .map(|(k, v)| (k.clone(), v.to_json()))
                .collect();
            if !id.is_empty() {
                columns.insert("id".into(), id.into());
            }
            Ok((messages, columns))
        })
        .collect()
}

/// Folds the input's adapter into its base (a no-op for a stage that already left a model);
/// with `gguf: TYPE`, also writes the model as `model.gguf` for llama.cpp.
fn merge(
    st: &PlannedStage,
    input: &Outputs,
    dir: &Path,
    rec: &mut StageRecord,
) -> Result<Outputs, RunError> {
    let gguf = crate::plan::merge_gguf(st)?;
    let out = dir.join("model");
    let model = match (&input.adapter, &input.model) {
        (Some((base, chain)), _) => {
            galley_train::export::merge_adapter(base, chain, &out)
                .map_err(|e| RunError::stage(&st.name, e))?;
            rec.metrics_digest = Some(manifest::digest_path(&out.join("model.safetensors"))?);
            out
        }
        (None, Some(m)) => {
            rec.status = format!(
                "finished (nothing to merge: {} is a whole model)",
                m.display()
            );
            m.clone()
        }
        (None, None) => return Err(RunError::stage(&st.name, "no adapter to merge")),
    };
    if let Some(ty) = gguf {
        let path = dir.join("model.gguf");
        let ck = galley_model::open(
            &model,
            galley_model::LoadOptions {
                dequantize: true,
                ..Default::default()
            },
        )
        .map_err(|e| RunError::stage(&st.name, e))?;
        galley_model::gguf_export::write_gguf(&ck, &st.name, ty, &path)
            .map_err(|e| RunError::stage(&st.name, e))?;
        rec.outputs.insert("gguf".into(), path);
    }
    Ok(Outputs {
        model: Some(model),
        adapter: None,
        dataset: None,
    })
}

/// The last value of each numeric key in a metrics log (reward, eval_reward, ...).
fn last_values(path: &Path, into: &mut BTreeMap<String, f64>) {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    for line in text.lines() {
        if let Ok(serde_json::Value::Object(m)) = serde_json::from_str(line) {
            for (k, v) in m {
                if let Some(x) = v.as_f64()
                    && !matches!(k.as_str(), "step" | "lr")
                    && !manifest::volatile(&k)
                {
                    into.insert(k, x);
                }
            }
        }
    }
}

/// The recipes' decision for the current stage, and a failure the policy turned into an end.
#[derive(Default)]
struct Control {
    decision: Option<Decision>,
    error: Option<String>,
    /// Seconds in recipe calls and plugin opening (orchestration, not the stage's work).
    overhead: f64,
}

/// Shows `metrics` to the recipes that planned `st` (under their own stage names) and folds
/// their answers: `stop` over `next-stage` over `proceed`.
fn decide(
    recipes: &mut [(String, Box<dyn Recipe>)],
    st: &PlannedStage,
    step: u64,
    metrics: &[Metric],
    policy: OnPluginError,
    ctl: &mut Control,
    events: &mut dyn Events,
) {
    if ctl.error.is_some() || matches!(ctl.decision, Some(Decision::Stop(_))) {
        return;
    }
    for (ri, own_name) in &st.owners {
        let (label, recipe) = &mut recipes[*ri];
        match recipe.on_metrics(own_name, step, metrics) {
            Ok(Decision::Proceed) => {}
            Ok(Decision::NextStage) => {
                if ctl.decision.is_none() {
                    ctl.decision = Some(Decision::NextStage);
                }
            }
            Ok(Decision::Stop(r)) => {
                ctl.decision = Some(Decision::Stop(format!("recipe {label}: {r}")));
                return;
            }
            Err(e) => match policy {
                OnPluginError::Stop => {
                    ctl.error = Some(format!("recipe {label}: {e}"));
                    return;
                }
                OnPluginError::Skip => {
                    events.warn(&format!(
                        "recipe {label}: {e}; going on as planned (on_plugin_error: skip)"
                    ));
                }
            },
        }
    }
}

/// The trainer's observer during a stage: forwards to the binary's, shows each step's and
/// evaluation's metrics to the stage's recipes, and asks the trainer to end when they say so.
struct StageObserver<'a, 'b> {
    runner_events: &'a mut dyn Events,
    recipes: &'a mut [(String, Box<dyn Recipe>)],
    stage: &'a PlannedStage,
    policy: OnPluginError,
    ctl: &'b mut Control,
}

impl StageObserver<'_, '_> {
    fn tell(&mut self, step: usize, metrics: Vec<Metric>) {
        let t = Instant::now();
        decide(
            self.recipes,
            self.stage,
            step as u64,
            &metrics,
            self.policy,
            self.ctl,
            &mut *self.runner_events,
        );
        self.ctl.overhead += t.elapsed().as_secs_f64();
    }
}

impl Observer for StageObserver<'_, '_> {
    fn start(&mut self, done: usize, total: usize) {
        self.runner_events.start(done, total);
    }
    fn step(&mut self, m: &StepMetrics) {
        self.runner_events.step(m);
        // Wall-clock figures stay out: a recipe deciding on them would not replay.
        let mut metrics = vec![
            Metric::new("loss", m.loss),
            Metric::new("lr", m.lr),
            Metric::new("grad_norm", m.grad_norm),
            Metric::new("epoch", m.epoch),
            Metric::new("tokens", m.tokens as f64),
        ];
        metrics.extend(
            m.extra
                .iter()
                .filter(|(k, _)| !manifest::volatile(k))
                .map(|(k, v)| Metric::new(k.clone(), *v)),
        );
        self.tell(m.step, metrics);
    }
    fn eval(&mut self, m: &EvalMetrics) {
        self.runner_events.eval(m);
        let mut metrics: Vec<Metric> = m
            .extra
            .iter()
            .filter(|(k, _)| !manifest::volatile(k))
            .map(|(k, v)| Metric::new(k.clone(), *v))
            .collect();
        if let Some(l) = m.eval_loss {
            metrics.push(Metric::new("eval_loss", l));
        }
        self.tell(m.step, metrics);
    }
    fn checkpoint(&mut self, path: &Path) {
        self.runner_events.checkpoint(path);
    }
    fn end_requested(&mut self) -> Option<String> {
        if let Some(e) = &self.ctl.error {
            return Some(e.clone());
        }
        match &self.ctl.decision {
            Some(Decision::NextStage) => Some("a recipe moved to the next stage".into()),
            Some(Decision::Stop(r)) => Some(r.clone()),
            _ => None,
        }
    }
}
