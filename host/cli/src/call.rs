//! `galley plugin call`: run one plugin by hand, the way an author tries it before a run
//! (galley-hosting's `call` does it and renders the answer).

use anyhow::Result;
use galley_hosting::Sandbox;
use galley_hosting::call::{Inputs, call, parse_config, parse_grants};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct CallArgs {
    /// The component (.wasm).
    file: PathBuf,
    /// The plugin's settings, as a JSON object (`@FILE` reads it from a file).
    #[arg(long, default_value = "{}")]
    config: String,
    #[command(flatten)]
    inputs: Inputs,
    /// Grant a directory the plugin's manifest asks for, NAME=PATH (read-only). Repeatable.
    #[arg(long = "allow-dir", value_name = "NAME=PATH")]
    allow_dir: Vec<String>,
    #[command(flatten)]
    sandbox: Sandbox,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(args: CallArgs) -> Result<()> {
    let plugin = args.sandbox.runtime()?.load(&args.file)?;
    let config = parse_config(&args.config)?;
    let opts = args.sandbox.options(parse_grants(&args.allow_dir)?);
    let called = call(&plugin, &config, opts, &args.inputs)?;
    print!("{}", called.render(args.json)?);
    Ok(())
}
