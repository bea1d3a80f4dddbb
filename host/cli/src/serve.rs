//! `galley serve -m MODEL [--adapter NAME=DIR ...] [--host H --port P]`: the OpenAI-compatible
//! server of galley-serve on an address this command binds (loopback unless told otherwise).

use anyhow::{Context, Result, bail};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct ServeArgs {
    /// A `.gguf` file, an HF folder, or a name `galley infer` resolves.
    #[arg(long, short)]
    model: String,
    /// The base model's id in requests (default: its file name).
    #[arg(long)]
    name: Option<String>,
    /// A PEFT LoRA adapter served as its own model id over the base: `NAME=DIR`.
    #[arg(long, value_name = "NAME=DIR")]
    adapter: Vec<String>,
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// 0 picks a free port (printed on start).
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Sequences decoded together per model.
    #[arg(long, default_value_t = 32)]
    max_batch: usize,
    /// Requests that may wait for a place; past it, 429.
    #[arg(long, default_value_t = 256)]
    queue: usize,
    /// Prompt tokens prefilled per decode step (long prompts do not stall the batch).
    #[arg(long, default_value_t = 256)]
    prefill_chunk: usize,
    /// Dequantize GGUF weights to f32 at load.
    #[arg(long)]
    dequantize: bool,
    /// Keep an f32 copy of quantized weights for batched decode steps: single requests keep
    /// the quantized kernels, a full batch runs dense GEMMs (about 4 bytes per parameter more
    /// memory, per served model). auto: when all copies together fit in 2 GiB.
    #[arg(long, value_enum, default_value = "auto")]
    dense_batches: Dense,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Dense {
    Auto,
    On,
    Off,
}

pub fn run(args: ServeArgs) -> Result<()> {
    let model = galley_model::hub::resolve(&args.model, std::path::Path::new(""))?;
    let mut adapters = Vec::new();
    for a in &args.adapter {
        let Some((name, dir)) = a.split_once('=') else {
            bail!("--adapter {a}: expected NAME=DIR");
        };
        adapters.push((name.to_string(), PathBuf::from(dir)));
    }
    if args.max_batch == 0 || args.queue == 0 {
        bail!("--max-batch and --queue must be at least 1");
    }
    let opts = galley_serve::ServeOptions {
        model: model.clone(),
        name: args.name,
        adapters,
        limits: galley_serve::Limits {
            max_batch: args.max_batch,
            queue: args.queue,
            prefill_chunk: args.prefill_chunk,
        },
        load: galley_model::LoadOptions {
            dequantize: args.dequantize,
        },
        dense_batches: match args.dense_batches {
            Dense::Auto => None,
            Dense::On => Some(true),
            Dense::Off => Some(false),
        },
    };
    let shared =
        galley_serve::load(&opts).with_context(|| format!("loading {}", model.display()))?;
    let ids: Vec<String> = shared.models.iter().map(|m| m.id.clone()).collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let addr = format!("{}:{}", args.host, args.port);
        let listener = tokio::net::TcpListener::bind(&addr)
            .await
            .with_context(|| format!("binding {addr}"))?;
        let local = listener.local_addr()?;
        // The first line is for scripts and tests: the address actually bound.
        println!("listening on http://{local}  models: {}", ids.join(", "));
        use std::io::Write;
        std::io::stdout().flush()?;
        axum::serve(listener, galley_serve::api::router(shared))
            .await
            .context("serving")
    })
}
