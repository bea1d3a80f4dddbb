//! Grading beyond the built-in metrics: evaluator plugins (in batches, under the task's
//! `skip | stop` policy, their own aggregate winning over a mean) and LLM judges; the
//! harness's default metrics per output type; a reasoning model's generation cut to its
//! answer (`think_end_token`).

use crate::EvalError;
use crate::evaluate::{Plugins, Sample};
use crate::metrics::{self, Filter};
use crate::prompt::Prepared;
use crate::task::{MetricSpec, OutputType, Task};
use crate::template::Doc;
use galley_core::engine::Engine;
use galley_core::{Metric, Prediction, Value as MetaValue};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// The harness's defaults when a task lists no metrics.
pub(crate) fn default_metrics(kind: OutputType) -> Vec<MetricSpec> {
    let names: &[&str] = match kind {
        OutputType::MultipleChoice => &["acc", "acc_norm"],
        OutputType::Loglikelihood => &["acc"],
        OutputType::LoglikelihoodRolling => {
            &["word_perplexity", "byte_perplexity", "bits_per_byte"]
        }
        OutputType::GenerateUntil => &["exact_match"],
        OutputType::FunctionCalling => &["acc"],
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

/// Grades every document with an evaluator plugin, per filter, in batches; returns how many
/// documents were left ungraded because a batch failed under `on_error: skip`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn grade_with_plugin(
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
    let mut ev = plugins
        .evaluator(spec, task.dir.as_deref(), &settings)
        .map_err(|e| {
            EvalError::Task(format!(
                "{}: task `{}`: metric plugin `{spec}`: {e}",
                task.origin, task.config.task
            ))
        })?;
    let stop = m.on_error.as_deref() == Some("stop");
    // A plugin metric named like one of the task's built-in metrics (exact_match) would
    // silently replace it: such names get the plugin's name in front (`exact-match/exact_match`).
    let taken: Vec<&str> = task
        .config
        .metric_list
        .iter()
        .filter_map(|x| x.metric.as_deref())
        .collect();
    let short = ev
        .name()
        .split('@')
        .next()
        .unwrap_or_default()
        .rsplit('/')
        .next()
        .unwrap_or_default()
        .to_string();
    let key = |name: &str| {
        if taken.contains(&name) {
            format!("{short}/{name}")
        } else {
            name.to_string()
        }
    };
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
                    metadata: d
                        .iter()
                        .map(|(k, v)| (k.clone(), MetaValue::from(v.clone())))
                        .collect(),
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
                                .insert(format!("{},{}", key(name), f.name), *value);
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
                    aggregates.insert((key(&name), f.name.clone()), value);
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
pub(crate) fn grade_with_judge(
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

/// A generation as it is scored: what follows the last `think_end` (the harness's
/// `think_end_token`: a reasoning model's answer without its thinking), blanks before it
/// dropped; one that never ends its thinking is scored as written.
pub fn after_thinking(text: String, think_end: Option<&str>) -> String {
    match think_end
        .filter(|t| !t.is_empty())
        .and_then(|t| text.rfind(t).map(|at| at + t.len()))
    {
        Some(end) => text[end..].trim_start().to_string(),
        None => text,
    }
}

#[cfg(test)]
mod think_tests {
    use super::after_thinking;

    #[test]
    fn generations_are_scored_from_after_the_last_end_of_thinking() {
        let t = |s: &str, e: Option<&str>| after_thinking(s.to_string(), e);
        assert_eq!(
            t("<think>2+2</think>\n\nThe answer is 4", Some("</think>")),
            "The answer is 4"
        );
        assert_eq!(t("a</think>b</think> c", Some("</think>")), "c");
        // Never closed: scored as written (the harness does the same).
        assert_eq!(t("<think>still", Some("</think>")), "<think>still");
        assert_eq!(t("x</think>y", None), "x</think>y");
        assert_eq!(t("x</think>y", Some("")), "x</think>y");
    }
}
