//! `galley plugin call`: one plugin run by hand, the way an author tries it before a run —
//! reward inputs scored, a loader's first examples read, predictions graded, a recipe's plan
//! (and its decision on reported metrics), a tool's functions and the results of calls. The inputs come from flags or a JSON-lines file;
//! what comes back is data, for the binary to print.

use crate::{At, HostingError, Result};
use galley_core::{
    DataSource, Decision, Episode as _, Evaluator, Example, FunctionCall, Message, Metadata,
    Metric, PluginKind, Prediction, Recipe, RewardFnExt, RewardInput, Stage, Tool, ToolFunction,
    Value,
};
use galley_runtime::{Grants, InstanceOptions, Plugin};
use std::path::{Path, PathBuf};

/// What to call a plugin with; which fields apply depends on its kind. These are
/// `galley plugin call`'s flags (behind the `clap` feature).
#[derive(Debug, Default, Clone)]
#[cfg_attr(feature = "clap", derive(clap::Args))]
pub struct Inputs {
    /// Inputs as JSON lines or a JSON array: reward inputs ({prompt: text or messages, completion, metadata}) or
    /// predictions ({prediction, references, metadata}). `-` reads stdin.
    #[cfg_attr(feature = "clap", arg(long))]
    pub input: Option<PathBuf>,
    /// Reward: one completion to score.
    #[cfg_attr(feature = "clap", arg(long))]
    pub completion: Option<String>,
    /// Reward: the user prompt the completion answers.
    #[cfg_attr(feature = "clap", arg(long))]
    pub prompt: Option<String>,
    /// Evaluator: one prediction to grade (with --reference).
    #[cfg_attr(feature = "clap", arg(long))]
    pub prediction: Option<String>,
    /// Evaluator: an acceptable answer (repeatable).
    #[cfg_attr(feature = "clap", arg(long = "reference"))]
    pub references: Vec<String>,
    /// A metadata column, KEY=VALUE (VALUE as JSON if it parses, else text). Repeatable.
    #[cfg_attr(feature = "clap", arg(long = "meta", value_name = "KEY=VALUE"))]
    pub meta: Vec<String>,
    /// Data loader: how many examples to read.
    #[cfg_attr(feature = "clap", arg(long, default_value_t = 5))]
    pub max: usize,
    /// Recipe: report these metrics (NAME=VALUE, repeatable) to `on-metrics` after planning.
    #[cfg_attr(feature = "clap", arg(long = "metric", value_name = "NAME=VALUE"))]
    pub metrics: Vec<String>,
    /// Recipe: the stage the metrics come from.
    #[cfg_attr(feature = "clap", arg(long, default_value = ""))]
    pub stage: String,
    /// Tool, environment: the function to call (with --arguments); without it, a tool's
    /// functions are listed. An environment's calls run in one episode, one turn each.
    #[cfg_attr(feature = "clap", arg(long))]
    pub function: Option<String>,
    /// Tool: the call's arguments, a JSON object.
    #[cfg_attr(feature = "clap", arg(long, default_value = "{}"))]
    pub arguments: String,
}

/// One tool call of `--input` (`{"name": ..., "arguments": {...}}`, OpenAI's function shape).
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct CallLine {
    name: String,
    #[serde(default)]
    arguments: serde_json::Map<String, serde_json::Value>,
}

/// What the plugin answered.
#[derive(Debug)]
pub enum Called {
    /// A reward plugin: a score (or no opinion) per input.
    Scores(Vec<Option<f64>>),
    /// A data loader: its first examples.
    Examples(Vec<Example>),
    /// An evaluator: each prediction's grades (with its id), then the summary.
    Grades {
        ids: Vec<String>,
        scores: Vec<Vec<Metric>>,
        summary: Vec<Metric>,
    },
    /// A recipe: its stages, and its decision when metrics were reported.
    Plan {
        stages: Vec<Stage>,
        decision: Option<Decision>,
    },
    /// A tool: its functions, and each call's result (or the error the model would read).
    Tool {
        functions: Vec<ToolFunction>,
        results: Vec<(String, std::result::Result<String, String>)>,
    },
    /// An environment: one episode — what `reset` appended to the prompt, each call's
    /// result (one turn per call, in order, so the state carries), and the episode's score.
    Episode {
        functions: Vec<ToolFunction>,
        shown: Option<String>,
        results: Vec<(String, std::result::Result<String, String>)>,
        reward: Option<f64>,
    },
}

/// `--meta KEY=VALUE` items as metadata.
pub fn parse_meta(items: &[String]) -> Result<Metadata> {
    let mut m = Metadata::new();
    for item in items {
        let (k, v) = split(item, "--meta", "KEY=VALUE")?;
        let value = serde_json::from_str::<serde_json::Value>(v)
            .map(Value::from)
            .unwrap_or_else(|_| Value::Text(v.to_string()));
        m.insert(k.to_string(), value);
    }
    Ok(m)
}

/// `--allow-dir NAME=PATH` items as read-only grants.
pub fn parse_grants(items: &[String]) -> Result<Grants> {
    let mut g = Grants::default();
    for item in items {
        let (k, v) = split(item, "--allow-dir", "NAME=PATH")?;
        g = g.allow_dir(k, v);
    }
    Ok(g)
}

fn split<'s>(item: &'s str, flag: &str, shape: &str) -> Result<(&'s str, &'s str)> {
    item.split_once('=').ok_or_else(|| HostingError::At {
        at: format!("{flag} `{item}`"),
        message: format!("expected {shape}"),
    })
}

/// Reads JSON lines (or one JSON array) of `T` from a file or `-` (stdin); `what` names a
/// line in errors (`bad input line`).
pub fn read_items<T: serde::de::DeserializeOwned>(path: &Path, what: &str) -> Result<Vec<T>> {
    let text = if path == Path::new("-") {
        std::io::read_to_string(std::io::stdin().lock()).at(|| "stdin".into())?
    } else {
        std::fs::read_to_string(path).at(|| format!("{}: cannot read", path.display()))?
    };
    galley_core::jsonl::parse(&text, &path.display().to_string(), what)
        .map_err(|e| HostingError::Invalid(crate::chain(&e)))
}

/// A plugin's settings: a JSON object, or `@FILE` holding one.
pub fn parse_config(text: &str) -> Result<serde_json::Value> {
    let (text, origin) = match text.strip_prefix('@') {
        Some(path) => (
            std::fs::read_to_string(path).at(|| format!("--config: cannot read {path}"))?,
            path.to_string(),
        ),
        None => (text.to_string(), "--config".to_string()),
    };
    let v: serde_json::Value =
        serde_json::from_str(&text).at(|| format!("{origin}: not valid JSON"))?;
    if !v.is_object() {
        return Err(HostingError::At {
            at: origin,
            message: "settings must be a JSON object".into(),
        });
    }
    Ok(v)
}

fn parse_metrics(items: &[String]) -> Result<Vec<Metric>> {
    items
        .iter()
        .map(|m| {
            let (k, v) = split(m, "--metric", "NAME=VALUE")?;
            let v = v
                .parse::<f64>()
                .at(|| format!("--metric {m}: not a number"))?;
            Ok(Metric::new(k, v))
        })
        .collect()
}

/// Calls `plugin` (started with `opts` and `config`) the way its kind is called in a run.
pub fn call(
    plugin: &Plugin,
    config: &serde_json::Value,
    opts: InstanceOptions,
    inp: &Inputs,
) -> Result<Called> {
    let at = || plugin.id().to_string();
    Ok(match plugin.kind() {
        PluginKind::Reward => {
            let inputs: Vec<RewardInput> = match (&inp.input, &inp.completion) {
                (Some(p), _) => read_items(p, "input")?,
                (None, Some(c)) => vec![RewardInput {
                    prompt: inp
                        .prompt
                        .iter()
                        .map(|p| Message::new("user", p.as_str()))
                        .collect(),
                    completion: c.clone(),
                    metadata: parse_meta(&inp.meta)?,
                    ..Default::default()
                }],
                (None, None) => {
                    return Err(HostingError::Invalid(format!(
                        "{} is a reward plugin: give --completion TEXT (with --meta KEY=VALUE) or --input FILE",
                        plugin.id()
                    )));
                }
            };
            let mut reward = plugin.reward(config, opts)?;
            Called::Scores(reward.score_inputs(&inputs).at(at)?)
        }
        PluginKind::DataLoader => {
            let mut loader = plugin.data_loader(config, opts)?;
            let mut out = Vec::new();
            while out.len() < inp.max {
                let page = loader.next_page((inp.max - out.len()).min(64)).at(at)?;
                if page.is_empty() {
                    break;
                }
                out.extend(page);
            }
            Called::Examples(out)
        }
        PluginKind::Evaluator => {
            let preds: Vec<Prediction> = match (&inp.input, &inp.prediction) {
                (Some(p), _) => read_items(p, "input")?,
                (None, Some(p)) => vec![Prediction {
                    id: "0".into(),
                    prediction: p.clone(),
                    references: inp.references.clone(),
                    metadata: parse_meta(&inp.meta)?,
                }],
                (None, None) => {
                    return Err(HostingError::Invalid(format!(
                        "{} is an evaluator: give --prediction TEXT --reference TEXT, or --input FILE",
                        plugin.id()
                    )));
                }
            };
            let mut eval = plugin.evaluator(config, opts)?;
            let scores = eval.score(&preds).at(at)?;
            let summary = eval.aggregate(&scores).at(at)?;
            Called::Grades {
                ids: preds.into_iter().map(|p| p.id).collect(),
                scores,
                summary,
            }
        }
        PluginKind::Recipe => {
            let mut recipe = plugin.recipe(opts)?;
            let stages = recipe.plan(config).at(at)?;
            let mut decision = None;
            if !inp.metrics.is_empty() {
                let metrics = parse_metrics(&inp.metrics)?;
                let stage = match inp.stage.as_str() {
                    "" => stages.first().map(|s| s.name.clone()).unwrap_or_default(),
                    s => s.to_string(),
                };
                decision = Some(recipe.on_metrics(&stage, 0, &metrics).at(at)?);
            }
            Called::Plan { stages, decision }
        }
        PluginKind::Tool => {
            let mut tool = plugin.tool(config, opts)?;
            let calls = tool_calls(inp)?;
            let batch: Vec<FunctionCall> = calls
                .iter()
                .map(|(name, arguments)| FunctionCall { name, arguments })
                .collect();
            // Sent as a rollout sends them: the calls in one batch.
            let answers = if batch.is_empty() {
                Vec::new()
            } else {
                tool.call(&batch).at(at)?
            };
            let results = calls
                .into_iter()
                .zip(answers)
                .map(|((name, _), r)| (name, r.map_err(|e| e.message)))
                .collect();
            Called::Tool {
                functions: tool.functions().to_vec(),
                results,
            }
        }
        PluginKind::Environment => {
            // The row as a run builds it: the --meta columns and --prompt as its messages.
            let prompt: Vec<Message> = inp
                .prompt
                .iter()
                .map(|p| Message::new("user", p.as_str()))
                .collect();
            let row = galley_core::episode_row(&prompt, &parse_meta(&inp.meta)?);
            let seed = opts.seed;
            let env = plugin.environment(config, opts)?;
            let (mut episode, shown) = env.episode(&row, seed).at(at)?;
            let mut results = Vec::new();
            for (name, arguments) in tool_calls(inp)? {
                let call = FunctionCall {
                    name: &name,
                    arguments: &arguments,
                };
                let r = episode
                    .call(std::slice::from_ref(&call))
                    .at(at)?
                    .remove(0)
                    .map_err(|e| e.message);
                results.push((name, r));
            }
            let reward = episode.reward().at(at)?;
            Called::Episode {
                functions: galley_core::Environment::functions(&env).to_vec(),
                shown,
                results,
                reward,
            }
        }
    })
}

/// The calls of `--input` (one per line) or of `--function` with `--arguments`.
fn tool_calls(inp: &Inputs) -> Result<Vec<(String, String)>> {
    Ok(match (&inp.input, &inp.function) {
        (Some(p), _) => read_items::<CallLine>(p, "call")?
            .into_iter()
            .map(|c| (c.name, serde_json::Value::Object(c.arguments).to_string()))
            .collect(),
        (None, Some(f)) => {
            let args: serde_json::Value =
                serde_json::from_str(&inp.arguments).at(|| "--arguments: not valid JSON".into())?;
            if !args.is_object() {
                return Err(HostingError::At {
                    at: "--arguments".into(),
                    message: "the arguments must be a JSON object".into(),
                });
            }
            vec![(f.clone(), args.to_string())]
        }
        (None, None) => Vec::new(),
    })
}

impl Called {
    /// What `galley plugin call` prints: tab-separated lines, or JSON with `json` (scores,
    /// grades and stages; examples are JSON lines either way).
    pub fn render(&self, json: bool) -> Result<String> {
        let metrics = |m: &[Metric]| {
            let m: Vec<String> = m
                .iter()
                .map(|m| format!("{}={:.4}", m.name, m.value))
                .collect();
            m.join(" ")
        };
        let mut out = String::new();
        let mut line = |l: String| {
            out.push_str(&l);
            out.push('\n');
        };
        match self {
            Called::Scores(scores) if json => line(js(scores)?),
            Called::Scores(scores) => {
                for (i, s) in scores.iter().enumerate() {
                    match s {
                        Some(v) => line(format!("{i}\t{v}")),
                        None => line(format!("{i}\tnone (no opinion)")),
                    }
                }
            }
            Called::Examples(examples) => {
                for ex in examples {
                    line(js(ex)?);
                }
            }
            Called::Grades {
                scores, summary, ..
            } if json => line(js(
                &serde_json::json!({"scores": scores, "summary": summary}),
            )?),
            Called::Grades {
                ids,
                scores,
                summary,
            } => {
                for (id, s) in ids.iter().zip(scores) {
                    line(format!("{id}\t{}", metrics(s)));
                }
                line(format!("summary\t{}", metrics(summary)));
            }
            Called::Plan { stages, decision } => {
                if json {
                    line(js(stages)?);
                } else {
                    for s in stages {
                        line(format!("{}\t{}\t{}", s.name, s.kind, s.config));
                    }
                }
                match decision {
                    None => {}
                    Some(Decision::Proceed) => line("decision\tproceed".into()),
                    Some(Decision::NextStage) => line("decision\tnext-stage".into()),
                    Some(Decision::Stop(why)) => line(format!("decision\tstop: {why}")),
                }
            }
            // No calls: the functions, as the `tools` list a chat template is shown.
            Called::Tool { functions, results } if results.is_empty() => {
                for f in functions {
                    line(js(&f.openai())?);
                }
            }
            Called::Episode {
                shown,
                results,
                reward,
                ..
            } if json => line(js(&serde_json::json!({
                "shown": shown,
                "results": results
                    .iter()
                    .map(|(name, r)| match r {
                        Ok(text) => serde_json::json!({"name": name, "result": text}),
                        Err(e) => serde_json::json!({"name": name, "error": e}),
                    })
                    .collect::<Vec<_>>(),
                "reward": reward,
            }))?),
            Called::Episode {
                functions,
                shown,
                results,
                reward,
            } => {
                if results.is_empty() {
                    for f in functions {
                        line(js(&f.openai())?);
                    }
                }
                // As a JSON string: the text usually spans lines.
                if let Some(text) = shown {
                    line(format!("reset\t{}", js(text)?));
                }
                for (name, r) in results {
                    match r {
                        Ok(text) => line(format!("{name}\t{text}")),
                        Err(e) => line(format!("{name}\terror: {e}")),
                    }
                }
                match reward {
                    Some(v) => line(format!("reward\t{v}")),
                    None => line("reward\tnone (the environment does not score)".into()),
                }
            }
            Called::Tool { results, .. } => {
                for (name, r) in results {
                    match (json, r) {
                        (true, Ok(text)) => {
                            line(js(&serde_json::json!({"name": name, "result": text}))?)
                        }
                        (true, Err(e)) => line(js(&serde_json::json!({"name": name, "error": e}))?),
                        (false, Ok(text)) => line(format!("{name}\t{text}")),
                        (false, Err(e)) => line(format!("{name}\terror: {e}")),
                    }
                }
            }
        }
        Ok(out)
    }
}

/// JSON text of plain data (string-keyed maps only, so this fails only on a broken type).
fn js<T: serde::Serialize + ?Sized>(v: &T) -> Result<String> {
    serde_json::to_string(v).map_err(|e| HostingError::Invalid(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_flags_name_the_flag_and_the_item() {
        let e = parse_meta(&["noequals".into()]).unwrap_err().to_string();
        assert_eq!(e, "--meta `noequals`: expected KEY=VALUE");
        let e = parse_grants(&["data".into()]).unwrap_err().to_string();
        assert_eq!(e, "--allow-dir `data`: expected NAME=PATH");
        let e = parse_metrics(&["acc=high".into()]).unwrap_err().to_string();
        assert!(e.starts_with("--metric acc=high: not a number"), "{e}");
    }

    #[test]
    fn meta_values_are_json_where_they_parse() {
        let m = parse_meta(&["n=3".into(), "s=three".into(), "l=[1,2]".into()]).unwrap();
        assert_eq!(m["n"], Value::from(serde_json::json!(3)));
        assert_eq!(m["s"], Value::Text("three".into()));
        assert_eq!(m["l"], Value::from(serde_json::json!([1, 2])));
    }

    #[test]
    fn settings_must_be_an_object() {
        assert!(parse_config("{\"a\": 1}").is_ok());
        let e = parse_config("[1]").unwrap_err().to_string();
        assert_eq!(e, "--config: settings must be a JSON object");
        let e = parse_config("@/nonexistent/settings.json")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("--config: cannot read /nonexistent/settings.json"),
            "{e}"
        );
    }
}
