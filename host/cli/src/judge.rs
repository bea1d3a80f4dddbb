//! `galley judge`: an LLM grades answers (pointwise: a score on a scale or pass/fail, with its
//! explanation) or compares two answers (pairwise, both orders), from a JSONL file. A judge
//! answer that does not parse is reported as a failure, never as a score. The flags are
//! galley-eval's (`JudgeFlags`) with the engine's.

use anyhow::{Context, Result};
use galley_eval::flags::JudgeFlags;
use galley_eval::judge_file::JudgeInput;
use galley_serve::flags::EngineFlags;

#[derive(clap::Args)]
pub struct JudgeArgs {
    #[command(flatten)]
    judge: JudgeFlags,
    /// Judge with a model behind a server (the common case of a large remote judge).
    #[command(flatten)]
    engine: EngineFlags,
}

pub fn run(JudgeArgs { judge: a, engine }: JudgeArgs) -> Result<()> {
    // The input is read and checked before the judge loads.
    let input = JudgeInput::read(&a.input, a.pairwise)?;
    let opts = a.options()?;
    let spec = engine.spec(Some(a.model.clone()));
    let mut judge = galley_serve::engines::open(&spec, std::path::Path::new(""))
        .with_context(|| format!("opening the judge {}", a.model))?
        .engine;
    let judged = input.judge(judge.as_mut(), &opts)?;
    if let Some(out) = &a.output {
        let at = || format!("{}: cannot write", out.display());
        judged.write(out).with_context(at)?;
    }
    match a.json {
        true => println!("{}", serde_json::to_string_pretty(&judged.summary)?),
        false => println!("{}", judged.summary_line()),
    }
    Ok(())
}
