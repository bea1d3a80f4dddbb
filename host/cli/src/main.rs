//! The `galley` command: a thin layer over the library crates. It owns argument parsing,
//! terminal output and error context (which file, plugin or key is at fault); the work is
//! done by galley-runtime and friends.

mod call;
mod infer;
mod install_cmd;
mod models;
mod plugins;
mod registry_cmd;
mod score;
mod train;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use galley_plugin_dev::{self as build, NewKind, NewLang, cplugin};
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "galley",
    version,
    about = "Train, align, evaluate and serve language models with sandboxed community plugins"
)]
struct Cli {
    /// Log filter (e.g. `info`, `galley=debug`); also RUST_LOG.
    #[arg(long, global = true, default_value = "warn,galley_plugin_dev=info")]
    log: String,
    #[command(subcommand)]
    command: Top,
}

#[derive(Subcommand)]
enum Top {
    /// Build, inspect and try plugins.
    #[command(subcommand)]
    Plugin(PluginCmd),
    /// Score completions with reward plugins, as a trainer would (a YAML config).
    Score(score::ScoreArgs),
    /// Run a plugin registry.
    #[command(subcommand)]
    Registry(RegistryCmd),
    /// Chat with a model, answer a prompt, or generate for a JSONL file of conversations.
    Infer(infer::InferArgs),
    /// Fine-tune (full, LoRA, QLoRA) or pre-train a model from a YAML config.
    Train(train::TrainArgs),
}

#[derive(Subcommand)]
enum RegistryCmd {
    /// Serve a registry folder over HTTP: index and blobs with ETags, token-guarded publish and yank.
    Serve {
        #[arg(long)]
        root: PathBuf,
        #[arg(long, default_value = "127.0.0.1:7878")]
        addr: String,
        /// A file of `TOKEN NAMESPACE[,NAMESPACE]` lines; without it the registry is read-only.
        #[arg(long)]
        tokens: Option<PathBuf>,
        #[arg(long, default_value_t = 64)]
        max_upload_mb: usize,
    },
}

#[derive(Subcommand)]
enum PluginCmd {
    /// Build plugins (folders with galley.toml and a Cargo.toml, plugin.py or plugin.js) into components.
    Build {
        /// Plugin crate folders.
        #[arg(required = true)]
        dirs: Vec<PathBuf>,
        /// Where the components go, as NAME.wasm.
        #[arg(short, long, default_value = "target/plugins")]
        out_dir: PathBuf,
        /// Cargo target dir shared by all wasm builds (default: GALLEY_WASM_TARGET_DIR or the galley cache).
        #[arg(long)]
        target_dir: Option<PathBuf>,
    },
    /// Scaffold a plugin: manifest, a working example, a test input and a README.
    New {
        /// The plugin's name (also the folder, unless --dir).
        name: String,
        #[arg(long, value_enum, default_value = "rust")]
        lang: NewLang,
        #[arg(long, value_enum, default_value = "reward")]
        kind: NewKind,
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Write the C bindings of a plugin kind's world (for a C toolchain of your own).
    Bindings {
        #[arg(long, value_enum, default_value = "reward")]
        kind: NewKind,
        #[arg(short, long)]
        out_dir: PathBuf,
    },
    /// Make an ed25519 publishing key (and trust it yourself); with --show, print an existing key's id and public key.
    Keygen {
        #[arg(long)]
        show: Option<PathBuf>,
    },
    /// Trust a publisher's key.
    Trust { id: String, public_key: String },
    /// Make a package from a built component: NAME-VERSION.wasm plus its signed release line
    /// (NAME-VERSION.release.json), ready for `galley plugin publish` from anywhere.
    Pack {
        file: PathBuf,
        /// The namespace (NAMESPACE/NAME); default: `namespace` in the plugin's galley.toml.
        #[arg(long)]
        namespace: Option<String>,
        /// Signing key: a key id from `galley plugin keygen`, or a key file.
        #[arg(long)]
        key: Option<String>,
        #[arg(short, long, default_value = "target/packages")]
        out_dir: PathBuf,
    },
    /// Publish a built component (or a packed NAME-VERSION.release.json) to a registry.
    Publish {
        file: PathBuf,
        /// The registry: a folder, file://, or http(s):// URL of `galley registry serve`; default GALLEY_REGISTRY.
        #[arg(long, conflicts_with = "oci")]
        registry: Option<String>,
        /// Push to an OCI registry instead, as a Wasm OCI artifact: oci://HOST/REPO[:TAG] (tag defaults to the version).
        #[arg(long)]
        oci: Option<String>,
        /// The namespace (NAMESPACE/NAME); default: `namespace` in the plugin's galley.toml.
        #[arg(long)]
        namespace: Option<String>,
        /// Signing key: a key id from `galley plugin keygen`, or a key file.
        #[arg(long)]
        key: Option<String>,
    },
    /// List a registry's packages (optionally those whose name contains TERM).
    Search {
        #[arg(default_value = "")]
        term: String,
        #[arg(long)]
        registry: Option<String>,
    },
    /// Resolve, verify and install plugins (NAMESPACE/NAME[@REQ] or oci://HOST/REPO:TAG); with none, install galley.lock.
    Install {
        reqs: Vec<String>,
        #[arg(long)]
        registry: Option<String>,
        #[arg(long, default_value = ".galley/plugins")]
        into: PathBuf,
        #[arg(long, default_value = "galley.lock")]
        lock: PathBuf,
        /// Accept unsigned packages (recorded in the lockfile).
        #[arg(long)]
        allow_unsigned: bool,
        /// Use only the local cache (install from galley.lock).
        #[arg(long)]
        offline: bool,
    },
    /// Move installed plugins (all, or those named) to the newest versions galley.lock's requirements allow.
    Update {
        names: Vec<String>,
        #[arg(long)]
        registry: Option<String>,
        #[arg(long, default_value = ".galley/plugins")]
        into: PathBuf,
        #[arg(long, default_value = "galley.lock")]
        lock: PathBuf,
        /// Accept unsigned packages (recorded in the lockfile).
        #[arg(long)]
        allow_unsigned: bool,
    },
    /// List the plugins galley.lock pins and check their files.
    List {
        #[arg(long, default_value = ".galley/plugins")]
        into: PathBuf,
        #[arg(long, default_value = "galley.lock")]
        lock: PathBuf,
    },
    /// Remove installed plugins (from galley.lock and the plugin folder).
    Remove {
        #[arg(required = true)]
        names: Vec<String>,
        #[arg(long, default_value = ".galley/plugins")]
        into: PathBuf,
        #[arg(long, default_value = "galley.lock")]
        lock: PathBuf,
    },
    /// Yank a version (new resolutions skip it; lockfiles still install it).
    Yank {
        /// NAMESPACE/NAME@VERSION
        spec: String,
        #[arg(long)]
        registry: Option<String>,
        #[arg(long)]
        undo: bool,
    },
    /// Show a component's kind, WIT version, imports, capabilities, size and digest.
    Inspect {
        file: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Run a plugin by hand: score completions, read a page of examples, grade predictions or plan a recipe.
    Call(call::CallArgs),
}

fn main() {
    let cli = Cli::parse();
    let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| cli.log.clone());
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
    if let Err(e) = run(cli) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Top::Plugin(PluginCmd::Build {
            dirs,
            out_dir,
            target_dir,
        }) => {
            let target_dir = target_dir.unwrap_or_else(build::default_target_dir);
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
                dirs.len(),
                out_dir.display()
            );
            for dir in &dirs {
                let built = build::build(dir, &out_dir, &target_dir, rust)?;
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
        Top::Plugin(PluginCmd::New {
            name,
            lang,
            kind,
            dir,
        }) => {
            let dir = galley_plugin_dev::new::run(&name, lang, kind, dir)?;
            println!(
                "created {} ({lang:?} {kind:?} plugin); next:",
                dir.display()
            );
            println!(
                "  galley plugin build {} -o {}/out",
                dir.display(),
                dir.display()
            );
            println!(
                "  galley plugin call {}/out/{name}.wasm ...   (see its README.md)",
                dir.display()
            );
            Ok(())
        }
        Top::Plugin(PluginCmd::Bindings { kind, out_dir }) => {
            let world = cplugin::write_bindings(kind.kind(), &out_dir)?;
            println!("wrote {world}.{{c,h}} to {}", out_dir.display());
            Ok(())
        }
        Top::Plugin(PluginCmd::Keygen { show: None }) => registry_cmd::keygen(),
        Top::Plugin(PluginCmd::Keygen { show: Some(file) }) => {
            let key = galley_registry::KeyPair::load(&file)?;
            println!("{} {}", key.id(), key.public_hex());
            Ok(())
        }
        Top::Plugin(PluginCmd::Trust { id, public_key }) => registry_cmd::trust(&id, &public_key),
        Top::Plugin(PluginCmd::Pack {
            file,
            namespace,
            key,
            out_dir,
        }) => registry_cmd::pack(&file, namespace.as_deref(), key.as_deref(), &out_dir),
        Top::Plugin(PluginCmd::Publish {
            file,
            registry,
            oci,
            namespace,
            key,
        }) => registry_cmd::publish(registry_cmd::PublishArgs {
            file: &file,
            registry: &registry,
            oci: oci.as_deref(),
            namespace: namespace.as_deref(),
            key: key.as_deref(),
        }),
        Top::Plugin(PluginCmd::Search { term, registry }) => registry_cmd::search(&term, &registry),
        Top::Plugin(PluginCmd::Install {
            reqs,
            registry,
            into,
            lock,
            allow_unsigned,
            offline,
        }) => install_cmd::install(install_cmd::InstallArgs {
            reqs: &reqs,
            registry: &registry,
            into: &into,
            lock: &lock,
            allow_unsigned,
            offline,
        }),
        Top::Plugin(PluginCmd::Update {
            names,
            registry,
            into,
            lock,
            allow_unsigned,
        }) => install_cmd::update(
            &names,
            install_cmd::InstallArgs {
                reqs: &[],
                registry: &registry,
                into: &into,
                lock: &lock,
                allow_unsigned,
                offline: false,
            },
        ),
        Top::Plugin(PluginCmd::List { into, lock }) => install_cmd::list(&into, &lock),
        Top::Plugin(PluginCmd::Remove { names, into, lock }) => {
            install_cmd::remove(&names, &into, &lock)
        }
        Top::Plugin(PluginCmd::Yank {
            spec,
            registry,
            undo,
        }) => registry_cmd::yank(&spec, &registry, undo),
        Top::Plugin(PluginCmd::Inspect { file, json }) => inspect(&file, json),
        Top::Plugin(PluginCmd::Call(args)) => call::run(args),
        Top::Score(args) => score::run(args),
        Top::Infer(args) => infer::run(args),
        Top::Train(args) => train::run(args),
        Top::Registry(RegistryCmd::Serve {
            root,
            addr,
            tokens,
            max_upload_mb,
        }) => registry_cmd::serve(&root, &addr, tokens.as_deref(), max_upload_mb),
    }
}

fn inspect(file: &std::path::Path, json: bool) -> Result<()> {
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
