//! `galley judge`: an LLM grades answers (pointwise: a score on a scale or pass/fail, with its
//! explanation) or compares two answers (pairwise, both orders), from a JSONL file. A judge
//! answer that does not parse is reported as a failure, never as a score.

use anyhow::{Context, Result};
use galley_eval::judge::{JudgeOptions, Scale};
use galley_eval::judge_file::JudgeInput;
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

pub fn run(args: JudgeArgs) -> Result<()> {
    // The input is read and checked before the judge loads.
    let input = JudgeInput::read(&args.input, args.pairwise)?;
    let template = match &args.prompt {
        Some(p) => Some(
            std::fs::read_to_string(p).with_context(|| format!("{}: cannot read", p.display()))?,
        ),
        None => None,
    };
    let scale = match args.pass_fail {
        true => Scale::PassFail,
        false => Scale::parse(&args.scale).map_err(|e| anyhow::anyhow!("--scale: {e}"))?,
    };
    let opts = JudgeOptions {
        template,
        scale,
        max_tokens: args.max_tokens,
        chat: !args.no_chat_template,
    };
    let spec = args.engine.spec(Some(args.model.clone()));
    let mut engine = galley_serve::engines::open(&spec, std::path::Path::new(""))
        .with_context(|| format!("opening the judge {}", args.model))?
        .engine;
    let judged = input.judge(engine.as_mut(), &opts)?;
    if let Some(out) = &args.output {
        judged
            .write(out)
            .with_context(|| format!("{}: cannot write", out.display()))?;
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&judged.summary)?);
    } else {
        println!("{}", judged.summary_line());
    }
    Ok(())
}
