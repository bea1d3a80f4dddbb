//! The plugin author's commands: `galley plugin build | new | bindings | inspect`.
//! galley-plugin-dev builds and scaffolds; the runtime reads components; this module prints.

use anyhow::Result;
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
    let found = galley_plugin_dev::inspect::inspect(&a.file)?;
    match a.json {
        true => println!("{}", serde_json::to_string_pretty(&found.json)?),
        false => print!("{}", found.text),
    }
    Ok(())
}
