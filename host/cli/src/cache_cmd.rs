//! `galley cache`: what galley keeps under its cache folder (compiled components, registry
//! blobs, `hf://` models, evaluation data, guest toolchains, plugin build folders), how big
//! each is, and trimming or clearing them, as `pip cache` and `huggingface-cli delete-cache`
//! do for theirs. The compiled-component cache bounds itself (galley-runtime's `cache_gc`);
//! the others only grow by what the user asked for, so they are cleared only on request.

use anyhow::{Context, Result, bail};
use bytesize::ByteSize;
use clap::{Args, Subcommand, ValueEnum};
use galley_core::dirs;
use galley_runtime::{Runtime, RuntimeConfig, parse_cache_limit};
use std::path::{Path, PathBuf};

#[derive(Subcommand)]
pub enum CacheCmd {
    /// Where each cache folder is and how much it holds.
    Info(InfoArgs),
    /// Trim the compiled-component cache to its bound (or --max-size), dropping entries of
    /// other galley builds and what crashes left behind.
    Prune(PruneArgs),
    /// Delete cache folders (components, blobs, models, eval-data, toolchains, wasm-target, or all).
    Clear(ClearArgs),
}

#[derive(Args)]
pub struct InfoArgs {
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct PruneArgs {
    /// Keep at most this much (2GiB, 500MB; 0 empties it). Default: GALLEY_COMPONENT_CACHE_MAX, else 2 GiB.
    #[arg(long, value_name = "SIZE")]
    max_size: Option<String>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct ClearArgs {
    /// The folders to delete.
    #[arg(required = true, value_enum)]
    what: Vec<Folder>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Folder {
    /// Compiled plugins (rebuilt on the next load).
    Components,
    /// Registry downloads (locked installs then need the registry again).
    Blobs,
    /// Models fetched from hf:// references.
    Models,
    /// Benchmark data fetched for `galley eval`.
    EvalData,
    /// componentize-py, componentize-js and the Rust SDK used by `galley plugin build`.
    Toolchains,
    /// Plugin build folders of `galley plugin build`.
    WasmTarget,
    All,
}

const FOLDERS: [Folder; 6] = [
    Folder::Components,
    Folder::Blobs,
    Folder::Models,
    Folder::EvalData,
    Folder::Toolchains,
    Folder::WasmTarget,
];

impl Folder {
    fn name(self) -> &'static str {
        match self {
            Folder::Components => "components",
            Folder::Blobs => "blobs",
            Folder::Models => "models",
            Folder::EvalData => "eval-data",
            Folder::Toolchains => "toolchains",
            Folder::WasmTarget => "wasm-target",
            Folder::All => "all",
        }
    }

    fn path(self) -> PathBuf {
        match self {
            Folder::Components => dirs::components_dir(),
            Folder::Blobs => dirs::blobs_dir(),
            Folder::Models => dirs::models_dir(),
            Folder::EvalData => dirs::eval_data_dir(),
            Folder::Toolchains => dirs::toolchains_dir(),
            Folder::WasmTarget => dirs::wasm_target_root(),
            Folder::All => dirs::cache_dir(),
        }
    }
}

/// Bytes and files under `path`, links not followed (a link counts as itself).
fn size_of(path: &Path) -> (u64, u64) {
    let mut bytes = 0;
    let mut files = 0;
    for entry in walkdir::WalkDir::new(path).follow_links(false) {
        let Ok(entry) = entry else { continue };
        if let Ok(meta) = entry.metadata()
            && !meta.is_dir()
        {
            bytes += meta.len();
            files += 1;
        }
    }
    (bytes, files)
}

fn human(bytes: u64) -> String {
    ByteSize(bytes).display().iec().to_string()
}

fn runtime() -> Result<Runtime> {
    Runtime::new(RuntimeConfig::default()).context("starting the plugin runtime")
}

pub fn run(cmd: CacheCmd) -> Result<()> {
    match cmd {
        CacheCmd::Info(a) => info(a),
        CacheCmd::Prune(a) => prune(a),
        CacheCmd::Clear(a) => clear(a),
    }
}

fn info(a: InfoArgs) -> Result<()> {
    let rt = runtime()?;
    let components = match rt.cache_usage() {
        Some(u) => {
            Some(u.with_context(|| format!("reading {}", dirs::components_dir().display()))?)
        }
        None => None,
    };
    let mut rows = Vec::new();
    for f in FOLDERS {
        let path = f.path();
        let (bytes, files) = size_of(&path);
        rows.push((f, path, bytes, files));
    }
    if a.json {
        let folders: Vec<_> = rows
            .iter()
            .map(|(f, p, b, n)| serde_json::json!({"name": f.name(), "path": p, "bytes": b, "files": n}))
            .collect();
        let out = serde_json::json!({
            "cache_dir": dirs::cache_dir(),
            "folders": folders,
            "components": components,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    println!("galley cache: {}", dirs::cache_dir().display());
    for (f, path, bytes, files) in &rows {
        println!(
            "  {:<12} {:>11}  {:>6} files  {}",
            f.name(),
            human(*bytes),
            files,
            path.display()
        );
    }
    match components {
        Some(u) => println!(
            "compiled components: {} ({}), {} from other galley builds ({}); bound {}",
            u.entries,
            human(u.bytes),
            u.stale_entries,
            human(u.stale_bytes),
            u.limit.map_or("none".into(), human)
        ),
        None => println!("compiled components: not cached (see the warning above)"),
    }
    Ok(())
}

fn prune(a: PruneArgs) -> Result<()> {
    let limit = match &a.max_size {
        Some(s) => Some(
            parse_cache_limit(s)
                .map_err(|e| anyhow::anyhow!("--max-size: {e}"))?
                .unwrap_or(u64::MAX),
        ),
        None => None,
    };
    let rt = runtime()?;
    let Some(pruned) = rt.prune_cache(limit) else {
        bail!(
            "the compiled-component cache at {} is not in use (see the warning above); nothing to prune",
            dirs::components_dir().display()
        );
    };
    let p = pruned.with_context(|| format!("pruning {}", dirs::components_dir().display()))?;
    if a.json {
        println!("{}", serde_json::to_string(&p)?);
    } else {
        println!(
            "removed {} files ({}); kept {} compiled components ({})",
            p.removed,
            human(p.freed),
            p.kept,
            human(p.kept_bytes)
        );
    }
    Ok(())
}

fn clear(a: ClearArgs) -> Result<()> {
    let what: Vec<Folder> = if a.what.contains(&Folder::All) {
        FOLDERS.to_vec()
    } else {
        a.what.clone()
    };
    let mut freed = Vec::new();
    for f in what {
        let path = f.path();
        let meta = match std::fs::symlink_metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                freed.push((f, path, 0));
                continue;
            }
            Err(e) => return Err(e).with_context(|| format!("{}", path.display())),
        };
        let (bytes, _) = size_of(&path);
        // A folder swapped for a link is unlinked, never followed: `clear` deletes galley's
        // own files only.
        if meta.file_type().is_symlink() || !meta.is_dir() {
            std::fs::remove_file(&path)
        } else {
            std::fs::remove_dir_all(&path)
        }
        .with_context(|| format!("deleting {}", path.display()))?;
        freed.push((f, path, bytes));
    }
    if a.json {
        let out: Vec<_> = freed
            .iter()
            .map(|(f, p, b)| serde_json::json!({"name": f.name(), "path": p, "freed": b}))
            .collect();
        println!("{}", serde_json::to_string(&out)?);
    } else {
        for (f, p, b) in &freed {
            println!("cleared {} ({}): {}", f.name(), human(*b), p.display());
        }
    }
    Ok(())
}
