//! Documents to prompts, as lm-evaluation-harness builds them: the system prompt and the
//! task's description joined by `maybe_delimit`, few-shot turns (question, target delimiter,
//! answer, few-shot delimiter) drawn by the harness's sampler, then the question — as plain
//! text or one user turn of the model's chat template — and, for "multiple input" tasks
//! (winogrande), one context per choice.

use crate::EvalError;
use crate::evaluate::EvalOptions;
use crate::pyrandom::PyRandom;
use crate::task::Task;
use crate::template::{Doc, Resolved, Templates};
use galley_core::Message;
use galley_core::engine::Engine;

/// One document, prepared.
pub(crate) struct Prepared {
    pub prompt: String,
    pub choices: Option<Vec<String>>,
    /// Gold choice index (multiple choice).
    pub gold: Option<usize>,
    /// The reference text.
    pub target: String,
    /// One context per choice ("multiple input" tasks); empty otherwise.
    pub contexts: Vec<String>,
}

pub(crate) fn doc_err(task: &Task, doc: usize, what: &str, e: impl std::fmt::Display) -> EvalError {
    EvalError::Doc(format!(
        "{}: task `{}`, document {doc}: {what}: {e}",
        task.origin, task.config.task
    ))
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

/// Every evaluation document's prompt (and choices, gold and target).
#[allow(clippy::too_many_arguments)]
pub(crate) fn prepare(
    engine: &mut dyn Engine,
    task: &Task,
    t: &Templates,
    opts: &EvalOptions,
    eval_docs: &[Doc],
    fewshot_docs: &[Doc],
    shots: usize,
    fewshot_split: &Option<String>,
) -> Result<Vec<Prepared>, EvalError> {
    let c = &task.config;
    let first_n = c
        .fewshot_config
        .as_ref()
        .is_some_and(|f| f.sampler == "first_n");
    let exclude_self = *fewshot_split == c.test_split;
    let mut rnd = PyRandom::new(opts.fewshot_seed);
    let has_choices = c.doc_to_choice.is_some();
    let chat = opts.apply_chat_template;

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

    Ok(prepared)
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
