//! `galley plugin call`: run one plugin by hand, the way an author tries it before a run.

use anyhow::Result;
use galley_core::{Decision, Metric};
use galley_hosting::Sandbox;
use galley_hosting::call::{Called, Inputs, call, parse_config, parse_grants};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct CallArgs {
    /// The component (.wasm).
    file: PathBuf,
    /// The plugin's settings, as a JSON object (`@FILE` reads it from a file).
    #[arg(long, default_value = "{}")]
    config: String,
    /// Inputs as JSON lines or a JSON array: reward inputs ({prompt: text or messages, completion, metadata}) or
    /// predictions ({prediction, references, metadata}). `-` reads stdin.
    #[arg(long)]
    input: Option<PathBuf>,
    /// Reward: one completion to score.
    #[arg(long)]
    completion: Option<String>,
    /// Reward: the user prompt the completion answers.
    #[arg(long)]
    prompt: Option<String>,
    /// Evaluator: one prediction to grade (with --reference).
    #[arg(long)]
    prediction: Option<String>,
    /// Evaluator: an acceptable answer (repeatable).
    #[arg(long)]
    reference: Vec<String>,
    /// A metadata column, KEY=VALUE (VALUE as JSON if it parses, else text). Repeatable.
    #[arg(long = "meta", value_name = "KEY=VALUE")]
    meta: Vec<String>,
    /// Grant a directory the plugin's manifest asks for, NAME=PATH (read-only). Repeatable.
    #[arg(long = "allow-dir", value_name = "NAME=PATH")]
    allow_dir: Vec<String>,
    /// Data loader: how many examples to read.
    #[arg(long, default_value_t = 5)]
    max: usize,
    /// Recipe: report these metrics (NAME=VALUE, repeatable) to `on-metrics` after planning.
    #[arg(long = "metric", value_name = "NAME=VALUE")]
    metrics: Vec<String>,
    /// Recipe: the stage the metrics come from.
    #[arg(long, default_value = "")]
    stage: String,
    #[command(flatten)]
    pub sandbox: Sandbox,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(args: CallArgs) -> Result<()> {
    let plugin = args.sandbox.runtime()?.load(&args.file)?;
    let config = parse_config(&args.config)?;
    let opts = args.sandbox.options(parse_grants(&args.allow_dir)?);
    let inputs = Inputs {
        file: args.input.as_deref(),
        completion: args.completion.as_deref(),
        prompt: args.prompt.as_deref(),
        prediction: args.prediction.as_deref(),
        references: &args.reference,
        meta: &args.meta,
        max: args.max,
        metrics: &args.metrics,
        stage: &args.stage,
    };
    let json = args.json;
    match call(&plugin, &config, opts, &inputs)? {
        Called::Scores(scores) if json => println!("{}", serde_json::to_string(&scores)?),
        Called::Scores(scores) => {
            for (i, s) in scores.iter().enumerate() {
                match s {
                    Some(v) => println!("{i}\t{v}"),
                    None => println!("{i}\tnone (no opinion)"),
                }
            }
        }
        Called::Examples(examples) => {
            for ex in examples {
                println!("{}", serde_json::to_string(&ex)?);
            }
        }
        Called::Grades {
            scores, summary, ..
        } if json => println!(
            "{}",
            serde_json::json!({"scores": scores, "summary": summary})
        ),
        Called::Grades {
            ids,
            scores,
            summary,
        } => {
            for (id, s) in ids.iter().zip(&scores) {
                println!("{id}\t{}", fmt_metrics(s));
            }
            println!("summary\t{}", fmt_metrics(&summary));
        }
        Called::Plan { stages, decision } => {
            if json {
                println!("{}", serde_json::to_string(&stages)?);
            } else {
                for s in &stages {
                    println!("{}\t{}\t{}", s.name, s.kind, s.config);
                }
            }
            let decision = match decision {
                None => return Ok(()),
                Some(Decision::Proceed) => "proceed".to_string(),
                Some(Decision::NextStage) => "next-stage".to_string(),
                Some(Decision::Stop(why)) => format!("stop: {why}"),
            };
            println!("decision\t{decision}");
        }
    }
    Ok(())
}

fn fmt_metrics(m: &[Metric]) -> String {
    m.iter()
        .map(|m| format!("{}={:.4}", m.name, m.value))
        .collect::<Vec<_>>()
        .join(" ")
}
