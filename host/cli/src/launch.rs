//! `galley launch`: galley-launch pins this binary and the project's galley.lock and writes
//! the SkyPilot task or Slurm script; this module submits it with `sky launch` or `sbatch`
//! unless `--emit` only writes it.

use anyhow::{Context, Result};
use galley_launch::{Job, Target, pin_lock, sha256_file};
use std::path::PathBuf;

#[derive(Clone, Copy, clap::ValueEnum)]
enum TargetArg {
    Skypilot,
    Slurm,
}

#[derive(clap::Args)]
pub struct LaunchArgs {
    /// The scheduler: a SkyPilot task (clouds, Kubernetes) or a Slurm batch script.
    #[arg(long, value_enum)]
    target: TargetArg,
    /// Only write the job file here; do not submit it.
    #[arg(long)]
    emit: Option<PathBuf>,
    #[arg(long, default_value_t = 1)]
    nodes: usize,
    /// GPUs per node, one galley process each (0: one process per node, on its CPUs).
    #[arg(long, default_value_t = 1)]
    gpus: usize,
    /// SkyPilot's GPU type (H100, A100-80GB, ...).
    #[arg(long)]
    accelerator: Option<String>,
    /// SkyPilot's cloud (aws, gcp, azure, kubernetes, ...); default: SkyPilot chooses.
    #[arg(long)]
    cloud: Option<String>,
    /// The job's name (default: galley-COMMAND).
    #[arg(long)]
    name: Option<String>,
    /// Slurm's partition.
    #[arg(long)]
    partition: Option<String>,
    /// Slurm's time limit (HH:MM:SS or D-HH:MM:SS).
    #[arg(long)]
    time: Option<String>,
    /// Slurm's account to charge.
    #[arg(long)]
    account: Option<String>,
    /// Rank 0's rendezvous port.
    #[arg(long, default_value_t = 29500)]
    port: u16,
    /// The project's lockfile (its plugins are installed, by digest, on every node).
    #[arg(long, default_value = "galley.lock")]
    lock: PathBuf,
    /// The galley binary the nodes run (default: this one; it must suit the nodes' OS and
    /// processor).
    #[arg(long)]
    binary: Option<PathBuf>,
    /// What each rank runs, after `--`: `galley launch --target slurm -- train -c sft.yaml`.
    #[arg(last = true, required = true)]
    args: Vec<String>,
}

pub fn run(a: LaunchArgs) -> Result<()> {
    let workdir = std::env::current_dir()?;
    let binary = match &a.binary {
        Some(b) => std::path::absolute(b)?,
        None => std::env::current_exe().context("finding this galley binary")?,
    };
    let target = match a.target {
        TargetArg::Skypilot => Target::Skypilot,
        TargetArg::Slurm => Target::Slurm,
    };
    let job = Job {
        name: a
            .name
            .clone()
            .unwrap_or_else(|| format!("galley-{}", a.args[0])),
        args: a.args.clone(),
        nodes: a.nodes,
        gpus_per_node: a.gpus,
        accelerator: a.accelerator.clone(),
        cloud: a.cloud.clone(),
        binary_sha256: sha256_file(&binary)?,
        binary,
        version: env!("CARGO_PKG_VERSION").into(),
        lock: pin_lock(&workdir, &a.lock)?,
        port: a.port,
        partition: a.partition.clone(),
        time: a.time.clone(),
        account: a.account.clone(),
        workdir,
    };
    for note in job.notes(&a.lock) {
        eprintln!("note: {note}");
    }
    let file = job.write(target, a.emit.as_deref())?;
    println!("wrote {}", file.display());
    if a.emit.is_none() {
        job.submit(target, &file)?;
    }
    Ok(())
}
