//! `galley export`: a model — with the LoRA adapters a run trained folded in — written for
//! tools that load no adapters: a GGUF file for llama.cpp (`-o NAME.gguf`, `--outtype` as
//! llama.cpp's converter takes it), or an HF checkpoint folder (safetensors, config.json,
//! tokenizer) for transformers and everything built on it — which also turns a GGUF into an
//! HF checkpoint (its blocks dequantized). An adapter folder on its own (`--base` names the
//! model it was trained on) becomes a llama.cpp LoRA adapter GGUF (`llama-cli --lora`). A
//! training's output folder (`galley train`'s, or a stage of `galley run`) stands for what it
//! trained: its base with the adapters before it and its own, or its whole model.

use anyhow::{Context, Result};
use galley_model::gguf_export::{OutType, write_gguf};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct ExportArgs {
    /// The model: a .gguf file, an HF checkpoint folder, or an `hf://` name; or a PEFT
    /// adapter folder, written as a llama.cpp LoRA GGUF (with --base).
    model: String,
    /// The model a PEFT adapter given as MODEL was trained on (its architecture and heads).
    #[arg(long)]
    base: Option<String>,
    /// A PEFT LoRA adapter folder folded into the weights; repeat for a chain (in order).
    #[arg(long, short)]
    adapter: Vec<PathBuf>,
    /// Where to write: `NAME.gguf` for a GGUF file, anything else for an HF folder.
    #[arg(long, short)]
    output: PathBuf,
    /// The GGUF's weight type: f32, f16 (the default), q8_0, q4_0 or q4_1 (norms and biases
    /// stay f32).
    #[arg(long)]
    outtype: Option<OutType>,
    /// `general.name` in the GGUF (default: the output's file stem).
    #[arg(long)]
    name: Option<String>,
}

pub fn run(a: ExportArgs) -> Result<()> {
    let started = std::time::Instant::now();
    let model = galley_model::hub::resolve(&a.model, std::path::Path::new("."))
        .with_context(|| format!("model {}", a.model))?;
    let (model, chain) = trained(&model)?;
    let a = ExportArgs {
        adapter: chain.into_iter().chain(a.adapter).collect(),
        ..a
    };
    let gguf = a.output.extension().is_some_and(|e| e == "gguf");
    // Writing over what is being read (a model's own file or folder, an adapter's) would
    // truncate files that are memory-mapped while they are read.
    let same = |p: &std::path::Path| {
        let (x, y) = (p.canonicalize(), a.output.canonicalize());
        matches!((x, y), (Ok(x), Ok(y)) if x == y)
    };
    if let Some(p) = std::iter::once(model.as_path())
        .chain(a.adapter.iter().map(PathBuf::as_path))
        .find(|p| same(p))
    {
        anyhow::bail!(
            "-o {}: that is the input {}; write the export somewhere else",
            a.output.display(),
            p.display()
        );
    }
    let is_adapter = model.join("adapter_config.json").is_file();
    // Flags that would change nothing are refused rather than ignored.
    if !gguf
        && let Some(flag) = [
            ("--outtype", a.outtype.is_some()),
            ("--name", a.name.is_some()),
        ]
        .iter()
        .find_map(|(f, given)| given.then_some(f))
    {
        anyhow::bail!(
            "{flag}: {} is written as an HF folder (f32 safetensors); name the output NAME.gguf for a GGUF",
            a.output.display()
        );
    }
    if a.base.is_some() && !is_adapter {
        anyhow::bail!(
            "--base: {} is not a PEFT adapter folder; --base names the model an adapter given as MODEL was trained on",
            model.display()
        );
    }
    if is_adapter {
        return lora(&a, &model, gguf, started);
    }
    if !gguf {
        galley_train::export::merge_adapter(&model, &a.adapter, &a.output)
            .with_context(|| format!("writing {}", a.output.display()))?;
        println!(
            "wrote {} (model.safetensors, config.json, tokenizer) in {:.1} s",
            a.output.display(),
            started.elapsed().as_secs_f64()
        );
        return Ok(());
    }
    let opts = galley_model::LoadOptions {
        dequantize: true,
        ..Default::default()
    };
    let ck = galley_model::open_adapted(&model, &a.adapter, opts, &candle_core::Device::Cpu)
        .with_context(|| format!("opening {}", model.display()))?;
    let name = name_of(&a);
    let ty = a.outtype.unwrap_or(OutType::F16);
    let out = write_gguf(&ck, &name, ty, &a.output)
        .with_context(|| format!("writing {}", a.output.display()))?;
    if !out.in_f16.is_empty() {
        eprintln!(
            "{} weights have rows that do not split into 32-value blocks and were written in f16: {}",
            out.in_f16.len(),
            out.in_f16.join(", ")
        );
    }
    println!(
        "wrote {}: {} tensors, {:.1}M parameters, {:.1} MiB, {:?} in {:.1} s",
        a.output.display(),
        out.tensors,
        out.parameters as f64 / 1e6,
        out.bytes as f64 / (1 << 20) as f64,
        ty,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// A PEFT adapter folder as a llama.cpp LoRA adapter GGUF.
fn lora(
    a: &ExportArgs,
    dir: &std::path::Path,
    gguf: bool,
    started: std::time::Instant,
) -> Result<()> {
    if !gguf {
        anyhow::bail!(
            "{} is a PEFT adapter, already in PEFT's layout: name the output NAME.gguf for a llama.cpp LoRA adapter, or give the base as MODEL and this folder as --adapter to fold it in",
            dir.display()
        );
    }
    let Some(base) = &a.base else {
        anyhow::bail!(
            "{} is a PEFT adapter: give --base MODEL, the model it was trained on (its architecture and heads decide how the adapter is written)",
            dir.display()
        );
    };
    let base_path = galley_model::hub::resolve(base, std::path::Path::new("."))
        .with_context(|| format!("--base {base}"))?;
    let ck = galley_model::open(&base_path, galley_model::LoadOptions::default())
        .with_context(|| format!("opening {}", base_path.display()))?;
    let adapter = galley_model::Adapter::load(dir, &ck.config, &candle_core::Device::Cpu)
        .with_context(|| format!("adapter {}", dir.display()))?;
    let name = name_of(a);
    let ty = a.outtype.unwrap_or(OutType::F16);
    let out =
        galley_model::gguf_export::write_lora_gguf(&adapter, &ck.config, &name, ty, &a.output)
            .with_context(|| format!("writing {}", a.output.display()))?;
    println!(
        "wrote {}: a LoRA adapter for llama.cpp (r {}, alpha {}), {} tensors, {:.2}M parameters, {:?} in {:.1} s",
        a.output.display(),
        adapter.rank,
        adapter.alpha,
        out.tensors,
        out.parameters as f64 / 1e6,
        ty,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// What a training's output folder stands for: (the model, the adapters to fold in, in
/// order) read from the `config.yaml` it was trained with — its base, the adapters it was
/// trained over, then its own `adapter/`; or its `model/` after full fine-tuning. Any other
/// path stands for itself.
fn trained(dir: &std::path::Path) -> Result<(PathBuf, Vec<PathBuf>)> {
    let cfg = dir.join("config.yaml");
    let whole = dir.join("model");
    let own = dir.join("adapter");
    let has_model = whole.join("config.json").is_file();
    let has_adapter = own.join("adapter_config.json").is_file();
    if !cfg.is_file() || !(has_model || has_adapter) || dir.join("config.json").exists() {
        return Ok((dir.to_path_buf(), Vec::new()));
    }
    if has_model {
        eprintln!(
            "{}: the fine-tuned model in {}",
            dir.display(),
            whole.display()
        );
        return Ok((whole, Vec::new()));
    }
    let text = std::fs::read_to_string(&cfg).with_context(|| cfg.display().to_string())?;
    let v: galley_core::config::yaml::Value = galley_core::config::yaml::from_str(&text)
        .with_context(|| format!("{}: not YAML", cfg.display()))?;
    let path = |v: &galley_core::config::yaml::Value| v.as_str().map(|p| dir.join(p));
    let Some(base) = path(&v["model"]["path"]) else {
        anyhow::bail!(
            "{}: `model.path` names no base model; give the base as MODEL and --adapter {}",
            cfg.display(),
            own.display()
        );
    };
    let mut chain: Vec<PathBuf> = v["model"]["adapters"]
        .as_sequence()
        .map(|s| s.iter().filter_map(path).collect())
        .unwrap_or_default();
    chain.push(own);
    eprintln!(
        "{}: {} with {} adapter(s) folded in, as {} says",
        dir.display(),
        base.display(),
        chain.len(),
        cfg.display()
    );
    Ok((base, chain))
}

/// `general.name`: --name, else the output's file stem.
fn name_of(a: &ExportArgs) -> String {
    a.name.clone().unwrap_or_else(|| {
        a.output
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default()
    })
}
