//! `galley infer`: chat with a model in the terminal, answer one prompt, or run a JSONL file
//! of conversations through batched generation. Settings come from an optional YAML file
//! (typed, unknown keys refused) with `--set KEY=VALUE` overrides on top. With `--base-url`
//! (or `--engine`) the model is a server's, and `remote` answers through it.

use anyhow::{Context, Result};
use galley_core::Message;
use galley_model::batch::{self, InferConfig};
use galley_model::{LoadedModel, generate};
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

mod remote;

#[derive(clap::Args)]
pub struct InferArgs {
    /// YAML settings (model, sampling, system, batch_size).
    config: Option<PathBuf>,
    /// The model: a .gguf file or an HF checkpoint folder (overrides `model`).
    #[arg(long, short)]
    model: Option<String>,
    /// Answer this one prompt and exit.
    #[arg(long, short)]
    prompt: Option<String>,
    /// JSONL in: one {"messages": [...]} or {"prompt": "..."} per line (other keys are kept).
    #[arg(long, short, requires = "output")]
    input: Option<PathBuf>,
    /// JSONL out: each input line plus completion, finish_reason and token counts.
    #[arg(long, short)]
    output: Option<PathBuf>,
    /// Override a setting: `sampling.temperature=0`, `max_tokens=64` is `sampling.max_tokens=64`.
    #[arg(long = "set", short = 's', value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// Infer through a server instead of loading the model (--model is then its model id).
    #[command(flatten)]
    engine: crate::engine_args::EngineArgs,
}

pub fn run(args: InferArgs) -> Result<()> {
    let mut cfg = InferConfig::load(args.config.as_deref(), &args.set)?;
    if let Some(m) = args.model {
        cfg.model = Some(m);
    }
    let spec = cfg
        .model
        .clone()
        .context("no model: pass --model PATH (or `model:` in the settings file)")?;
    // The whole input is read before the model loads, so a bad line fails fast.
    let rows = match &args.input {
        Some(input) => {
            let text = std::fs::read_to_string(input)
                .with_context(|| format!("{}: cannot read", input.display()))?;
            Some(batch::read_rows(&text, &input.display().to_string())?)
        }
        None => None,
    };
    let engine = args.engine.spec(Some(spec.clone()));
    if engine.is_remote() {
        return remote::run(engine, &cfg, &args.prompt, rows, args.output.as_deref());
    }
    let started = Instant::now();
    let path = galley_model::hub::resolve(&spec, Path::new(""))?;
    let device = galley_model::default_device();
    let m = galley_model::load_with(
        &path,
        &device,
        galley_model::LoadOptions {
            dequantize: cfg.dequantize,
        },
    )?;
    eprintln!(
        "loaded {} in {:.1} s ({} layers, {} on {:?})",
        path.display(),
        started.elapsed().as_secs_f64(),
        m.model.config.num_layers,
        if cfg.dequantize {
            "f32"
        } else {
            "native weights"
        },
        device
    );
    match (&args.prompt, &args.input) {
        (Some(p), _) => one_shot(&m, &cfg, p),
        (None, Some(input)) => run_batch(
            &m,
            &cfg,
            input,
            &rows.unwrap_or_default(),
            args.output.as_deref().expect("clap requires --output"),
        ),
        (None, None) => chat(&m, &cfg),
    }
}

fn stream(m: &LoadedModel, cfg: &InferConfig, messages: &[Message]) -> Result<String> {
    let ids = batch::render(m, cfg.system.as_deref(), messages)?;
    let t0 = Instant::now();
    let mut out = std::io::stdout();
    let done = generate(
        &m.model,
        &m.tokenizer,
        &[ids],
        &cfg.sampling,
        &mut |_, piece| {
            let _ = out.write_all(piece.as_bytes());
            let _ = out.flush();
        },
    )?;
    let c = &done[0];
    println!();
    let secs = t0.elapsed().as_secs_f64();
    eprintln!(
        "[{} prompt + {} generated tokens, {:.1} tok/s, {}]",
        c.prompt_tokens,
        c.tokens.len(),
        c.tokens.len() as f64 / secs.max(1e-9),
        batch::finish_reason(c.finish)
    );
    Ok(c.text.clone())
}

fn one_shot(m: &LoadedModel, cfg: &InferConfig, prompt: &str) -> Result<()> {
    stream(m, cfg, &[Message::new("user", prompt)]).map(|_| ())
}

fn chat(m: &LoadedModel, cfg: &InferConfig) -> Result<()> {
    repl("chat", &mut |history| stream(m, cfg, history))
}

/// The terminal chat both engines run: `answer` replies to the conversation so far.
pub(crate) fn repl(who: &str, answer: &mut dyn FnMut(&[Message]) -> Result<String>) -> Result<()> {
    eprintln!(
        "{who}: type a message; /reset forgets the conversation, /exit (or end of input) leaves"
    );
    let mut history: Vec<Message> = Vec::new();
    let stdin = std::io::stdin();
    loop {
        eprint!("> ");
        let mut line = String::new();
        if stdin.lock().read_line(&mut line)? == 0 {
            return Ok(());
        }
        match line.trim() {
            "" => continue,
            "/exit" | "/quit" => return Ok(()),
            "/reset" => {
                history.clear();
                continue;
            }
            text => history.push(Message::new("user", text)),
        }
        let reply = answer(&history)?;
        history.push(Message::new("assistant", reply));
    }
}

fn run_batch(
    m: &LoadedModel,
    cfg: &InferConfig,
    input: &Path,
    rows: &[batch::Row],
    output: &Path,
) -> Result<()> {
    let bar = indicatif::ProgressBar::new(rows.len() as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} conversations {msg}")
            .expect("static template"),
    );
    let file = std::fs::File::create(output)
        .with_context(|| format!("{}: cannot create", output.display()))?;
    let mut out = std::io::BufWriter::new(file);
    let t0 = Instant::now();
    let mut generated = 0usize;
    let mut write = |rows: &[batch::Row], done: Vec<galley_model::Completion>| {
        for (row, c) in rows.iter().zip(&done) {
            generated += c.tokens.len();
            writeln!(out, "{}", batch::output_row(row, c)).map_err(|e| {
                galley_model::ModelError::Invalid(format!("{}: {e}", output.display()))
            })?;
        }
        bar.inc(rows.len() as u64);
        bar.set_message(format!(
            "{:.1} tok/s",
            generated as f64 / t0.elapsed().as_secs_f64().max(1e-9)
        ));
        Ok(())
    };
    batch::generate_rows(
        m,
        rows,
        cfg.system.as_deref(),
        &cfg.sampling,
        cfg.batch_size,
        &mut write,
    )
    .with_context(|| input.display().to_string())?;
    out.flush()?;
    bar.finish_and_clear();
    let secs = t0.elapsed().as_secs_f64();
    println!(
        "{} conversations, {generated} tokens in {secs:.1} s ({:.1} tok/s) -> {}",
        rows.len(),
        generated as f64 / secs.max(1e-9),
        output.display()
    );
    Ok(())
}
