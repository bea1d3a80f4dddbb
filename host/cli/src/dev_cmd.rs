//! The plugin author's commands: `galley plugin build | new | bindings | inspect`.
//! galley-plugin-dev builds and scaffolds; the runtime reads components; this module prints.

use anyhow::{Context, Result};
use galley_plugin_dev::{self as build, NewKind, NewLang, cplugin};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct BuildArgs {
    /// Plugin crate folders.
    #[arg(required = true)]
    dirs: Vec<PathBuf>,
    /// Where the components go, as NAME.wasm.
    #[arg(short, long, default_value = "target/plugins")]
    out_dir: PathBuf,
    /// One cargo target dir shared by all these builds (faster; default: GALLEY_WASM_TARGET_DIR
    /// if set, else a separate dir per plugin in the galley cache). Share only between
    /// plugins you trust: a build script can write into the shared dir.
    #[arg(long)]
    target_dir: Option<PathBuf>,
}

#[derive(clap::Args)]
pub struct NewArgs {
    /// The plugin's name (also the folder, unless --dir).
    name: String,
    #[arg(long, value_enum, default_value = "rust")]
    lang: NewLang,
    #[arg(long, value_enum, default_value = "reward")]
    kind: NewKind,
    #[arg(long)]
    dir: Option<PathBuf>,
}

#[derive(clap::Args)]
pub struct BindingsArgs {
    #[arg(long, value_enum, default_value = "reward")]
    kind: NewKind,
    #[arg(short, long)]
    out_dir: PathBuf,
}

#[derive(clap::Args)]
pub struct InspectArgs {
    file: PathBuf,
    #[arg(long)]
    json: bool,
}

pub fn build(a: BuildArgs) -> Result<()> {
    let toolchain = std::cell::OnceCell::new();
    let rust = || -> galley_plugin_dev::Result<build::Toolchain> {
        if let Some(t) = toolchain.get() {
            return Ok(*t);
        }
        let t = build::Toolchain::detect()?;
        eprintln!("Rust plugins build with {t:?}");
        Ok(*toolchain.get_or_init(|| t))
    };
    eprintln!(
        "building {} plugin(s) into {}",
        a.dirs.len(),
        a.out_dir.display()
    );
    for dir in &a.dirs {
        let target_dir = a
            .target_dir
            .clone()
            .unwrap_or_else(|| build::default_target_dir(dir));
        let built = build::build(dir, &a.out_dir, &target_dir, rust)?;
        println!(
            "{:<28} {:<12} {:<10} {:>9} bytes  {}  {}",
            built.manifest.id(),
            built.manifest.kind.as_str(),
            format!("{:?}", built.lang).to_lowercase(),
            built.size,
            &built.digest[..19],
            built.path.display()
        );
    }
    Ok(())
}

pub fn new(a: NewArgs) -> Result<()> {
    let (name, lang, kind) = (&a.name, a.lang, a.kind);
    let dir = galley_plugin_dev::new::run(name, lang, kind, a.dir)?;
    let d = dir.display();
    println!("created {d} ({lang:?} {kind:?} plugin); next:");
    println!("  galley plugin build {d} -o {d}/out");
    println!("  galley plugin call {d}/out/{name}.wasm ...   (see its README.md)");
    Ok(())
}

pub fn bindings(a: BindingsArgs) -> Result<()> {
    let world = cplugin::write_bindings(a.kind.kind(), &a.out_dir)?;
    println!("wrote {world}.{{c,h}} to {}", a.out_dir.display());
    Ok(())
}

pub fn inspect(a: InspectArgs) -> Result<()> {
    let (file, json) = (&a.file, a.json);
    let bytes = std::fs::read(file).with_context(|| format!("{}: cannot read", file.display()))?;
    let info = galley_runtime::inspect(&bytes, &file.display().to_string())?;
    let (kind, wit) = match &info.plugin_export {
        Some((k, v)) => (k.to_string(), v.to_string()),
        None => ("none".to_string(), "none".to_string()),
    };
    let m = info.manifest.as_ref();
    let supported = info
        .plugin_export
        .as_ref()
        .is_some_and(|(_, v)| galley_runtime::wit_supported(v));
    if json {
        let out = serde_json::json!({
            "file": file.display().to_string(),
            "name": m.map(|m| m.name.clone()),
            "version": m.map(|m| m.version.to_string()),
            "kind": kind,
            "wit": wit,
            "wit_supported": supported,
            "description": m.map(|m| m.description.clone()),
            "license": m.and_then(|m| m.license.clone()),
            "capabilities": m.map(|m| serde_json::to_value(&m.capabilities).unwrap()),
            "imports": info.imports,
            "exports": info.exports,
            "size": info.size,
            "digest": info.digest,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    println!("file         {}", file.display());
    match m {
        Some(m) => {
            println!("plugin       {}", m.id());
            println!("description  {}", m.description);
            println!(
                "license      {}",
                m.license.as_deref().unwrap_or("(none given)")
            );
        }
        None => println!("plugin       (no galley manifest: not built by `galley plugin build`)"),
    }
    println!("kind         {kind}");
    println!(
        "wit          galley:plugin@{wit}{}",
        if supported {
            " (supported by this galley)"
        } else {
            " (NOT supported by this galley)"
        }
    );
    let caps = m
        .map(|m| m.capabilities.read_dirs.clone())
        .unwrap_or_default();
    if caps.is_empty() {
        println!("capabilities none (fully sandboxed)");
    } else {
        println!("capabilities read-only directories: {}", caps.join(", "));
    }
    println!("size         {} bytes", info.size);
    println!("digest       {}", info.digest);
    println!(
        "imports      {}",
        if info.imports.is_empty() {
            "none".to_string()
        } else {
            info.imports.join("\n             ")
        }
    );
    println!("exports      {}", info.exports.join("\n             "));
    Ok(())
}
