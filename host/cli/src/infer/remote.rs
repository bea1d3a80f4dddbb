//! `galley infer` through a remote engine: one prompt, a terminal chat, or a JSONL file of
//! conversations, answered by the server's chat API (`Engine::chat`) with the same
//! output rows as the native path. Replies arrive whole (no token stream through the trait).

use anyhow::{Context, Result};
use galley_core::{ChatRequest, Engine, Message};
use galley_model::batch::InferConfig;
use galley_model::batch::Row;
use std::io::Write;
use std::path::Path;
use std::time::Instant;

pub(super) fn run(
    spec: galley_serve::EngineSpec,
    cfg: &InferConfig,
    prompt: &Option<String>,
    rows: Option<Vec<Row>>,
    output: Option<&Path>,
) -> Result<()> {
    cfg.check_remote()?;
    let s = &cfg.sampling;
    let mut engine = galley_serve::engines::open(&spec, Path::new(""))
        .with_context(|| format!("engine {}", spec.engine))?
        .engine;
    let request = |messages: &[Message], i: u64| ChatRequest {
        messages: {
            let mut m = messages.to_vec();
            galley_core::with_system(&mut m, cfg.system.as_deref());
            m
        },
        until: s.stop.clone(),
        max_tokens: s.max_tokens,
        temperature: s.temperature,
        seed: galley_core::seed::derive_seed(s.seed, &[i]),
        json_schema: cfg.schema_text.clone(),
        tools: None,
    };
    match (prompt, rows, output) {
        (Some(p), _, _) => {
            let reply = ask(engine.as_mut(), request(&[Message::new("user", p)], 0))?;
            println!("{reply}");
            Ok(())
        }
        (None, Some(rows), Some(out)) => {
            let reqs: Vec<ChatRequest> = rows
                .iter()
                .enumerate()
                .map(|(i, r)| request(&r.messages, i as u64))
                .collect();
            let t0 = Instant::now();
            let bar = indicatif::ProgressBar::new(reqs.len() as u64);
            let done = engine.chat(&reqs, &mut |n| bar.set_position(n as u64))?;
            bar.finish_and_clear();
            let mut f = std::io::BufWriter::new(
                std::fs::File::create(out)
                    .with_context(|| format!("{}: cannot create", out.display()))?,
            );
            let mut tokens = 0;
            for (row, g) in rows.iter().zip(&done) {
                tokens += g.tokens;
                let mut obj = row.columns.clone();
                obj.insert("completion".into(), g.text.clone().into());
                obj.insert("completion_tokens".into(), g.tokens.into());
                writeln!(f, "{}", serde_json::Value::Object(obj))?;
            }
            f.flush()?;
            let secs = t0.elapsed().as_secs_f64();
            println!(
                "{} conversations, {tokens} tokens in {secs:.1} s ({:.1} tok/s) via {} -> {}",
                rows.len(),
                tokens as f64 / secs.max(1e-9),
                engine.name(),
                out.display()
            );
            Ok(())
        }
        _ => {
            let who = format!("chat with {}", engine.name());
            let mut turn = 0u64;
            super::repl(&who, &mut |history| {
                turn += 1;
                let reply = ask(engine.as_mut(), request(history, turn - 1))?;
                println!("{reply}");
                Ok(reply)
            })
        }
    }
}

fn ask(engine: &mut dyn Engine, r: ChatRequest) -> Result<String> {
    let mut out = engine.chat(std::slice::from_ref(&r), &mut |_| {})?;
    Ok(out.pop().map(|g| g.text).unwrap_or_default())
}
