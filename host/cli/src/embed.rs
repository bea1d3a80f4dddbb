//! `galley embed`: text embeddings from a model, for texts on the command line (`-p`, one
//! JSON line each on stdout) or a JSONL file (`-i`: each line a JSON string or an object whose
//! `--field` holds the text; written back with an `embedding` key beside what it had). The
//! pooling is the model's own ([`galley_model::Embedder`]: a sentence-transformers folder's
//! modules, a GGUF's `pooling_type`, else the last token, normalized); `--pooling`,
//! `--dimensions` and `--prompt-name` are those of `galley serve`'s `/v1/embeddings`.

use anyhow::{Context, Result, bail};
use galley_model::Embedder;
use std::io::Write;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct EmbedArgs {
    /// The model: a sentence-transformers or HF folder, a .gguf file, or an `hf://` name.
    #[arg(long, short)]
    model: String,
    /// A text to embed (repeat for several).
    #[arg(long, short)]
    prompt: Vec<String>,
    /// A JSONL file of texts: JSON strings, or objects holding the text under --field.
    #[arg(long, short)]
    input: Option<PathBuf>,
    /// Where the JSONL output goes (default: stdout).
    #[arg(long, short)]
    output: Option<PathBuf>,
    /// The key holding each object's text.
    #[arg(long, default_value = "text")]
    field: String,
    /// mean, cls, last, max, mean_sqrt_len_tokens, weightedmean, or several joined by `+`.
    #[arg(long, value_name = "MODE")]
    pooling: Option<String>,
    /// Keep the first N values of each vector (Matryoshka models), normalized again where the
    /// model normalizes.
    #[arg(long, value_name = "N")]
    dimensions: Option<usize>,
    /// One of the model's sentence-transformers prompts (Qwen3-Embedding: `query`) before
    /// each text.
    #[arg(long, value_name = "NAME")]
    prompt_name: Option<String>,
    /// Padded tokens a pass over the model takes (texts are grouped by length).
    #[arg(long, default_value_t = 4096)]
    batch_tokens: usize,
    /// Dequantize GGUF blocks to f32 at load.
    #[arg(long)]
    dequantize: bool,
}

pub fn run(a: EmbedArgs) -> Result<()> {
    if a.prompt.is_empty() == a.input.is_none() {
        bail!("give texts with -p TEXT or a JSONL file with -i FILE (one of the two)");
    }
    // The records (what the output line keeps) and their texts, read before the model loads:
    // a bad line is reported without the wait.
    let mut records: Vec<serde_json::Map<String, serde_json::Value>> = Vec::new();
    let mut texts: Vec<String> = Vec::new();
    // Where each text came from, for messages: `FILE:LINE`, or `-p` and its position.
    let mut origins: Vec<String> = Vec::new();
    match &a.input {
        Some(path) => {
            let body = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            for (n, line) in body.lines().enumerate() {
                if line.trim().is_empty() {
                    continue;
                }
                let at = || format!("{}:{}", path.display(), n + 1);
                let v: serde_json::Value =
                    serde_json::from_str(line).with_context(|| format!("{}: not JSON", at()))?;
                let (record, text) = match v {
                    serde_json::Value::String(s) => {
                        let mut m = serde_json::Map::new();
                        m.insert(a.field.clone(), s.clone().into());
                        (m, s)
                    }
                    serde_json::Value::Object(m) => {
                        let Some(text) = m.get(&a.field).and_then(|t| t.as_str()) else {
                            bail!(
                                "{}: no text under `{}` (--field names the key)",
                                at(),
                                a.field
                            );
                        };
                        let text = text.to_string();
                        (m, text)
                    }
                    _ => bail!("{}: expected a JSON string or object", at()),
                };
                records.push(record);
                texts.push(text);
                origins.push(at());
            }
            if texts.is_empty() {
                bail!("{}: no texts", path.display());
            }
        }
        None => {
            for (i, p) in a.prompt.iter().enumerate() {
                origins.push(format!("-p #{}", i + 1));
                let mut m = serde_json::Map::new();
                m.insert(a.field.clone(), p.clone().into());
                records.push(m);
                texts.push(p.clone());
            }
        }
    }
    let path = galley_model::hub::resolve(&a.model, std::path::Path::new("."))
        .with_context(|| format!("model {}", a.model))?;
    let mut embedder = Embedder::for_model(&path)?;
    if let Some(p) = &a.pooling {
        let modes = galley_model::Pool::parse_list(p).map_err(|e| anyhow::anyhow!("--{e}"))?;
        embedder = embedder.with_pooling(modes);
    }
    let device = galley_model::default_device();
    let opts = galley_model::LoadOptions {
        dequantize: a.dequantize,
        ..Default::default()
    };
    let m = galley_model::load_with(&path, &device, opts)
        .with_context(|| format!("loading {}", path.display()))?;
    let rows: Vec<Vec<u32>> = texts
        .iter()
        .map(|t| embedder.tokens(&m.tokenizer, t, a.prompt_name.as_deref()))
        .collect::<galley_model::Result<_>>()?;
    // Each text checked on its own, so a refusal names its line; then the whole request.
    for (row, at) in rows.iter().zip(&origins) {
        embedder
            .check(&m.model.config, std::slice::from_ref(row), None)
            .map_err(|e| {
                anyhow::anyhow!("{at}: {}", e.to_string().replace("input 0 ", "the text "))
            })?;
    }
    embedder.check(&m.model.config, &[], a.dimensions)?;
    let started = std::time::Instant::now();
    let vectors = embedder.embed(&m.model, &rows, a.dimensions, a.batch_tokens.max(1))?;
    let secs = started.elapsed().as_secs_f64();
    let tokens: usize = rows.iter().map(Vec::len).sum();
    let mut out: Box<dyn Write> = match &a.output {
        Some(p) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(p).with_context(|| format!("writing {}", p.display()))?,
        )),
        None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
    };
    for (mut record, v) in records.into_iter().zip(vectors) {
        // The vector written as f32 (shortest round-trip digits), not widened to f64's: the
        // record goes through serde_json's Value, the vector beside it.
        record.remove("embedding");
        let head = serde_json::to_string(&record)?;
        let sep = if record.is_empty() { "" } else { "," };
        let vector = serde_json::to_string(&v)?;
        writeln!(
            out,
            "{}{sep}\"embedding\":{vector}}}",
            &head[..head.len() - 1]
        )?;
    }
    out.flush()?;
    eprintln!(
        "{} texts, {tokens} tokens in {secs:.2} s ({:.0} tokens/s); {} values each, pooled by {}",
        texts.len(),
        tokens as f64 / secs.max(1e-9),
        a.dimensions
            .unwrap_or_else(|| embedder.dimension(m.model.config.hidden_size)),
        embedder.source
    );
    Ok(())
}
