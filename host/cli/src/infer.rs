//! `galley infer`: chat with a model in the terminal, answer one prompt, or run a JSONL file
//! of conversations through batched generation. Settings come from an optional YAML file
//! (typed, unknown keys refused) with `--set KEY=VALUE` overrides on top. With `--base-url`
//! (or `--engine`) the model is a server's, and `remote` answers through it.

use anyhow::{Context, Result};
use galley_core::Message;
use galley_model::batch::{self, InferConfig, InferFlags};
use galley_model::{LoadedModel, generate, generate_guided};
use galley_serve::flags::EngineFlags;
use std::io::{BufRead, Write};
use std::path::Path;
use std::time::Instant;

mod remote;

#[derive(clap::Args)]
pub struct InferArgs {
    #[command(flatten)]
    flags: InferFlags,
    /// Infer through a server instead of loading the model (--model is then its model id).
    #[command(flatten)]
    engine: EngineFlags,
}

pub fn run(InferArgs { flags, engine }: InferArgs) -> Result<()> {
    let (cfg, spec, base) = flags.settings()?;
    // The whole input is read before the model loads, so a bad line fails fast.
    let rows = flags.rows()?;
    let engine = engine.spec(Some(spec.clone()));
    if engine.is_remote() {
        return remote::run(engine, &cfg, &flags.prompt, rows, flags.output.as_deref());
    }
    let started = Instant::now();
    let path = galley_model::hub::resolve(&spec, &base)?;
    let device = galley_model::default_device();
    let load = galley_model::LoadOptions {
        dequantize: cfg.dequantize,
        kv_cache: cfg.kv_cache_dtype,
    };
    let m = galley_model::load_with(&path, &device, load)?;
    let (secs, layers) = (started.elapsed().as_secs_f64(), m.model.config.num_layers);
    let weights = if cfg.dequantize {
        "f32"
    } else {
        "native weights"
    };
    eprintln!(
        "loaded {} in {secs:.1} s ({layers} layers, {weights} on {device:?})",
        path.display()
    );
    match (&flags.prompt, rows, &flags.output) {
        (Some(p), _, _) => stream(&m, &cfg, &[Message::new("user", p)]).map(|_| ()),
        (None, Some(rows), Some(output)) => {
            let input = flags.input.as_deref().expect("rows come from --input");
            run_batch(&m, &cfg, &rows, (input, output))
        }
        _ => repl("chat", &mut |history| stream(&m, &cfg, history)),
    }
}

fn stream(m: &LoadedModel, cfg: &InferConfig, messages: &[Message]) -> Result<String> {
    let ids = batch::render(m, cfg.system.as_deref(), messages)?;
    let t0 = Instant::now();
    let mut out = std::io::stdout();
    let mut show = |_: usize, piece: &str| {
        let _ = out.write_all(piece.as_bytes());
        let _ = out.flush();
    };
    let done = match &cfg.guide {
        Some(g) => generate_guided(&m.model, &m.tokenizer, &[ids], &cfg.sampling, g, &mut show)?,
        None => generate(&m.model, &m.tokenizer, &[ids], &cfg.sampling, &mut show)?,
    };
    let c = &done[0];
    println!();
    let secs = t0.elapsed().as_secs_f64();
    let drafts = match cfg.sampling.lookup {
        0 => String::new(),
        _ => format!(", {} of {} drafted tokens kept", c.accepted, c.drafted),
    };
    eprintln!(
        "[{} prompt + {} generated tokens, {:.1} tok/s{drafts}, {}]",
        c.prompt_tokens,
        c.tokens.len(),
        c.tokens.len() as f64 / secs.max(1e-9),
        batch::finish_reason(c.finish)
    );
    Ok(c.text.clone())
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

/// `galley infer -i INPUT -o OUTPUT`: every row generated in batches, written in order.
fn run_batch(
    m: &LoadedModel,
    cfg: &InferConfig,
    rows: &[batch::Row],
    (input, output): (&Path, &Path),
) -> Result<()> {
    let template = "{bar:40} {pos}/{len} conversations {msg}";
    let bar = crate::term::bar(rows.len(), template);
    let t0 = Instant::now();
    let rate = |tokens: usize| tokens as f64 / t0.elapsed().as_secs_f64().max(1e-9);
    let generated = batch::write_rows(m, cfg, rows, output, &mut |done, tokens| {
        bar.set_position(done as u64);
        bar.set_message(format!("{:.1} tok/s", rate(tokens)));
    });
    bar.finish_and_clear();
    let generated = generated.with_context(|| input.display().to_string())?;
    let (n, secs, out) = (rows.len(), t0.elapsed().as_secs_f64(), output.display());
    println!(
        "{n} conversations, {generated} tokens in {secs:.1} s ({:.1} tok/s) -> {out}",
        rate(generated)
    );
    Ok(())
}
