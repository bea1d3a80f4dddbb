//! The `galley` command: a thin layer over the library crates. It owns argument parsing,
//! terminal output and error context (which file, plugin or key is at fault); the work is
//! done by galley-runtime and friends.

mod cache_cmd;
mod call;
mod dev_cmd;
mod embed;
mod eval;
mod export;
mod infer;
mod install_cmd;
mod judge;
mod launch;
mod registry_cmd;
mod run_cmd;
mod score;
mod serve;
mod synth;
mod term;
mod train;

use anyhow::Result;
use clap::{Parser, Subcommand};
use galley_hosting::flags as hf;
use galley_plugin_dev::flags as df;
use std::sync::atomic::{AtomicBool, Ordering};

/// `--allow-http`, for every command that opens a registry.
static ALLOW_HTTP: AtomicBool = AtomicBool::new(false);

/// How this invocation opens registries (`--allow-http`).
fn registries() -> galley_hosting::project::Registries {
    galley_hosting::project::Registries {
        allow_http: ALLOW_HTTP.load(Ordering::Relaxed),
    }
}

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
    /// Allow plain http:// registries on other machines (only loopback ones otherwise).
    #[arg(long, global = true)]
    allow_http: bool,
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
    /// Evaluate a model (and adapter) on benchmark tasks: built-in or lm-evaluation-harness task files.
    Eval(Box<eval::EvalArgs>),
    /// Run recipes' stages (pretrain, sft, dpo, grpo, evaluate, generate, merge) from a run config; writes run.json.
    Run(run_cmd::RunArgs),
    /// Resolve and verify a run's plugins and print its merged plan: each setting and where it came from.
    Plan(run_cmd::PlanArgs),
    /// An LLM judges answers from a JSONL file: a score (or pass/fail) each, or pairwise preferences.
    Judge(judge::JudgeArgs),
    /// Serve a model over an OpenAI-compatible HTTP API (chat, completions, streaming, adapters).
    Serve(galley_serve::flags::ServeFlags),
    /// Show, trim or clear galley's caches (compiled plugins, registry blobs, models, data, toolchains).
    #[command(subcommand)]
    Cache(cache_cmd::CacheCmd),
    /// Write a SkyPilot task or Slurm script that runs a galley command on every GPU of a cluster, pinning this binary and galley.lock's plugins; submit it unless --emit.
    Launch(galley_launch::flags::LaunchFlags),
    /// Write a model, with LoRA adapters folded in, as a GGUF file for llama.cpp (-o NAME.gguf, --outtype f16|q8_0|q4_0...) or an HF folder.
    Export(export::ExportArgs),
    /// Text embeddings from a model (sentence-transformers folders, GGUF, any causal LM) for texts or a JSONL file.
    Embed(embed::EmbedArgs),
    /// Synthesize data: completions from any engine for prompts from a dataset or a loader plugin, graded, written as SFT conversations or DPO pairs (resumable).
    Synth(synth::SynthArgs),
}

#[derive(Subcommand)]
enum RegistryCmd {
    /// Serve a registry folder over HTTP: index and blobs with ETags, token-guarded publish and yank.
    Serve(hf::RegistryServeFlags),
}

#[derive(Subcommand)]
enum PluginCmd {
    /// Build plugins (folders with galley.toml and a Cargo.toml, plugin.py or plugin.js) into components.
    Build(df::BuildFlags),
    /// Scaffold a plugin: manifest, a working example, a test input and a README.
    New(df::NewFlags),
    /// Write the C bindings of a plugin kind's world (for a C toolchain of your own).
    Bindings(df::BindingsFlags),
    /// Make an ed25519 publishing key (and trust it yourself); with --show, print an existing key's id and public key.
    Keygen(hf::KeygenFlags),
    /// Trust a publisher's key.
    Trust(hf::TrustFlags),
    /// Make a package from a built component: NAME-VERSION.wasm plus its signed release line
    /// (NAME-VERSION.release.json), ready for `galley plugin publish` from anywhere.
    Pack(hf::PackFlags),
    /// Publish a built component (or a packed NAME-VERSION.release.json) to a registry.
    Publish(hf::PublishFlags),
    /// List a registry's packages (optionally those whose name contains TERM).
    Search(hf::SearchFlags),
    /// Resolve, verify and install plugins (NAMESPACE/NAME[@REQ] or oci://HOST/REPO:TAG); with none, install galley.lock.
    Install(hf::InstallFlags),
    /// Move installed plugins (all, or those named) to the newest versions galley.lock's requirements allow.
    Update(hf::UpdateFlags),
    /// List the plugins galley.lock pins and check their files.
    List(hf::ProjectFlags),
    /// Remove installed plugins (from galley.lock and the plugin folder).
    Remove(hf::RemoveFlags),
    /// Yank a version (new resolutions skip it; lockfiles still install it).
    Yank(hf::YankFlags),
    /// Show a component's kind, WIT version, imports, capabilities, size and digest.
    Inspect(df::InspectFlags),
    /// Run a plugin by hand: score completions, read a page of examples, grade predictions or plan a recipe.
    Call(Box<call::CallArgs>),
}

/// Keeps freed memory in the process instead of handing it back to the kernel. A forward pass
/// allocates and frees the same few-MB activations layer after layer; glibc's default
/// thresholds return them (mmap, or a heap trim) and the next layer takes page faults and
/// zeroes fresh pages, several percent of an evaluation's time (`bench/RESULTS.md`). Fixed
/// thresholds also turn off glibc's sliding mmap threshold. Costs a few hundred MB of peak
/// resident memory on a 135M model. A user's own `GLIBC_TUNABLES` or `MALLOC_*_THRESHOLD_`
/// settings are left alone.
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let user_set = std::env::var_os("GLIBC_TUNABLES").is_some()
            || std::env::var_os("MALLOC_MMAP_THRESHOLD_").is_some()
            || std::env::var_os("MALLOC_TRIM_THRESHOLD_").is_some();
        if !user_set {
            // SAFETY: mallopt only changes allocator parameters; called before any thread exists.
            unsafe {
                // 32 MiB is the most glibc accepts on 64-bit targets.
                libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
                libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
            }
        }
    }
}

fn main() {
    // `galley plan run.yaml | head` must end quietly when the reader goes away, as other
    // command-line tools do, not panic on a closed stdout: take the default SIGPIPE back
    // (the Rust runtime ignores it).
    #[cfg(unix)]
    // SAFETY: called first in main, before any thread exists; SIG_DFL is a valid handler
    // for SIGPIPE.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    keep_freed_memory();
    let cli = Cli::parse();
    let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| cli.log.clone());
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        // Colour only for a terminal: escape codes in a log file or a CI log are noise.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();
    if let Err(e) = run(cli) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    use PluginCmd as P;
    ALLOW_HTTP.store(cli.allow_http, Ordering::Relaxed);
    match cli.command {
        Top::Plugin(cmd) => match cmd {
            P::Build(a) => dev_cmd::build(a),
            P::New(a) => dev_cmd::new(a),
            P::Bindings(a) => dev_cmd::bindings(a),
            P::Inspect(a) => dev_cmd::inspect(a),
            P::Keygen(a) => registry_cmd::keygen(a),
            P::Trust(a) => registry_cmd::trust(a),
            P::Pack(a) => registry_cmd::pack(a),
            P::Publish(a) => registry_cmd::publish(a),
            P::Search(a) => registry_cmd::search(a),
            P::Yank(a) => registry_cmd::yank(a),
            P::Install(a) => install_cmd::install(a),
            P::Update(a) => install_cmd::update(a),
            P::List(a) => install_cmd::list(a),
            P::Remove(a) => install_cmd::remove(a),
            P::Call(a) => call::run(*a),
        },
        Top::Score(a) => score::run(a),
        Top::Infer(a) => infer::run(a),
        Top::Train(a) => train::run(a),
        Top::Eval(a) => eval::run(*a),
        Top::Serve(a) => serve::run(a),
        Top::Synth(a) => synth::run(a),
        Top::Export(a) => export::run(a),
        Top::Embed(a) => embed::run(a),
        Top::Launch(a) => launch::run(a),
        Top::Cache(c) => cache_cmd::run(c),
        Top::Judge(a) => judge::run(a),
        Top::Run(a) => run_cmd::run(a),
        Top::Plan(a) => run_cmd::plan(a),
        Top::Registry(RegistryCmd::Serve(a)) => registry_cmd::serve(a),
    }
}

#[cfg(test)]
mod tests {
    /// Flags come from several crates: clap checks here that no two share a name and that
    /// every `requires` / `conflicts_with` names a flag of the same command.
    #[test]
    fn the_command_tree_is_consistent() {
        <super::Cli as clap::CommandFactory>::command().debug_assert();
    }
}
