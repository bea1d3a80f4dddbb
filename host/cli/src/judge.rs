//! `galley judge`: an LLM grades answers (pointwise: a score on a scale or pass/fail, with its
//! explanation) or compares two answers (pairwise, both orders), from a JSONL file. A judge
//! answer that does not parse is reported as a failure, never as a score.

use anyhow::{Context, Result, bail};
use galley_eval::judge::{self, JudgeOptions, PairItem, PointItem, Scale, Winner};
use serde::Deserialize;
use std::io::Write;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct JudgeArgs {
    /// JSONL in: {"question", "answer", "reference"?} per line, or with --pairwise
    /// {"question", "answer_a", "answer_b"} (`prompt` and `completion`/`response` are accepted too).
    input: PathBuf,
    /// The judge model: a .gguf file or an HF checkpoint folder (with --base-url: the
    /// server's model id).
    #[arg(long, short)]
    model: String,
    /// Judge with a model behind a server (the common case of a large remote judge).
    #[command(flatten)]
    engine: crate::engine_args::EngineArgs,
    /// Compare two answers (in both orders) instead of scoring one.
    #[arg(long)]
    pairwise: bool,
    /// The prompt template (minijinja) instead of the built-in one.
    #[arg(long)]
    prompt: Option<PathBuf>,
    /// The score scale, e.g. 1-10.
    #[arg(long, default_value = "1-10", conflicts_with = "pass_fail")]
    scale: String,
    /// PASS/FAIL verdicts instead of a scale.
    #[arg(long)]
    pass_fail: bool,
    /// Tokens the judge may write per verdict.
    #[arg(long, default_value_t = 256)]
    max_tokens: usize,
    /// Send the prompt as-is, not as a user turn of the model's chat template.
    #[arg(long)]
    no_chat_template: bool,
    /// JSONL out: each input line plus the verdict.
    #[arg(long, short)]
    output: Option<PathBuf>,
    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Deserialize)]
struct Row {
    #[serde(alias = "prompt")]
    question: String,
    #[serde(default, alias = "completion", alias = "response")]
    answer: Option<String>,
    #[serde(default)]
    reference: Option<String>,
    #[serde(default)]
    answer_a: Option<String>,
    #[serde(default)]
    answer_b: Option<String>,
}

fn parse_scale(s: &str) -> Result<Scale> {
    Scale::parse(s).map_err(|e| anyhow::anyhow!("--scale: {e}"))
}

pub fn run(args: JudgeArgs) -> Result<()> {
    let name = args.input.display().to_string();
    let text =
        std::fs::read_to_string(&args.input).with_context(|| format!("{name}: cannot read"))?;
    let rows: Vec<serde_json::Value> = galley_core::jsonl::parse(&text, &name, "judge input")?;
    let typed: Vec<Row> = rows
        .iter()
        .enumerate()
        .map(|(i, r)| {
            serde_json::from_value(r.clone()).with_context(|| format!("{name}: item {}", i + 1))
        })
        .collect::<Result<_>>()?;
    let template = match &args.prompt {
        Some(p) => Some(
            std::fs::read_to_string(p).with_context(|| format!("{}: cannot read", p.display()))?,
        ),
        None => None,
    };
    let opts = JudgeOptions {
        template,
        scale: if args.pass_fail {
            Scale::PassFail
        } else {
            parse_scale(&args.scale)?
        },
        max_tokens: args.max_tokens,
        chat: !args.no_chat_template,
    };
    let spec = args.engine.spec(Some(args.model.clone()));
    let mut engine = galley_serve::engines::open(&spec, std::path::Path::new(""))
        .with_context(|| format!("opening the judge {}", args.model))?
        .engine;
    let mut out_rows: Vec<serde_json::Value> = vec![];
    let summary = if args.pairwise {
        let items = typed
            .iter()
            .enumerate()
            .map(|(i, r)| match (&r.answer_a, &r.answer_b) {
                (Some(a), Some(b)) => Ok(PairItem {
                    question: r.question.clone(),
                    answer_a: a.clone(),
                    answer_b: b.clone(),
                }),
                _ => bail!(
                    "{name}: item {}: --pairwise needs `answer_a` and `answer_b`",
                    i + 1
                ),
            })
            .collect::<Result<Vec<_>>>()?;
        let verdicts = judge::pairwise(engine.as_mut(), &items, &opts)?;
        let count = |w: Winner| verdicts.iter().filter(|v| v.winner == Some(w)).count();
        for (row, v) in rows.iter().zip(&verdicts) {
            let mut r = row.clone();
            r["judge"] = serde_json::to_value(v)?;
            out_rows.push(r);
        }
        serde_json::json!({
            "n": verdicts.len(),
            "a_wins": count(Winner::A),
            "b_wins": count(Winner::B),
            "ties": count(Winner::Tie),
            "failures": verdicts.iter().filter(|v| v.winner.is_none()).count(),
        })
    } else {
        let items = typed
            .iter()
            .enumerate()
            .map(|(i, r)| match &r.answer {
                Some(a) => Ok(PointItem {
                    question: r.question.clone(),
                    answer: a.clone(),
                    reference: r.reference.clone(),
                }),
                None => bail!(
                    "{name}: item {}: needs `answer` (or --pairwise with answer_a/answer_b)",
                    i + 1
                ),
            })
            .collect::<Result<Vec<_>>>()?;
        let verdicts = judge::pointwise(engine.as_mut(), &items, &opts)?;
        for (row, v) in rows.iter().zip(&verdicts) {
            let mut r = row.clone();
            r["judge"] = serde_json::to_value(v)?;
            out_rows.push(r);
        }
        let scores: Vec<f64> = verdicts.iter().filter_map(|v| v.score).collect();
        let (mean, stderr) = galley_eval::metrics::mean_stderr(&scores);
        serde_json::json!({
            "n": verdicts.len(),
            "scored": scores.len(),
            "failures": verdicts.len() - scores.len(),
            "mean": (!scores.is_empty()).then_some(mean),
            "stderr": stderr,
        })
    };
    if let Some(out) = &args.output {
        let mut f = std::io::BufWriter::new(
            std::fs::File::create(out)
                .with_context(|| format!("{}: cannot write", out.display()))?,
        );
        for r in &out_rows {
            serde_json::to_writer(&mut f, r)?;
            f.write_all(b"\n")?;
        }
        f.flush()?;
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else if args.pairwise {
        println!(
            "{} pairs: A wins {}, B wins {}, ties {}, unparseable {}",
            summary["n"],
            summary["a_wins"],
            summary["b_wins"],
            summary["ties"],
            summary["failures"]
        );
    } else {
        let mean = summary["mean"]
            .as_f64()
            .map(|m| format!("{m:.3}"))
            .unwrap_or_else(|| "none".into());
        println!(
            "{} answers: mean score {mean} over {} parsed verdicts; {} unparseable (not scored)",
            summary["n"], summary["scored"], summary["failures"]
        );
    }
    Ok(())
}
