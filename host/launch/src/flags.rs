//! `galley launch`'s flags, beside the `Job` they describe: `LaunchFlags::job` pins the
//! binary and the project's lockfile. Behind the `clap` feature; the binary submits and prints.

use crate::{Job, Result, Target, pin_lock, sha256_file};
use std::path::{Path, PathBuf};

#[derive(clap::Args, Debug)]
pub struct LaunchFlags {
    /// The scheduler: a SkyPilot task (clouds, Kubernetes) or a Slurm batch script.
    #[arg(long, value_enum)]
    pub target: Target,
    /// Only write the job file here; do not submit it.
    #[arg(long)]
    pub emit: Option<PathBuf>,
    #[arg(long, default_value_t = 1)]
    pub nodes: usize,
    /// GPUs per node, one galley process each (0: one process per node, on its CPUs).
    #[arg(long, default_value_t = 1)]
    pub gpus: usize,
    /// SkyPilot's GPU type (H100, A100-80GB, ...).
    #[arg(long)]
    pub accelerator: Option<String>,
    /// SkyPilot's cloud (aws, gcp, azure, kubernetes, ...); default: SkyPilot chooses.
    #[arg(long)]
    pub cloud: Option<String>,
    /// The job's name (default: galley-COMMAND).
    #[arg(long)]
    pub name: Option<String>,
    /// Slurm's partition.
    #[arg(long)]
    pub partition: Option<String>,
    /// Slurm's time limit (HH:MM:SS or D-HH:MM:SS).
    #[arg(long)]
    pub time: Option<String>,
    /// Slurm's account to charge.
    #[arg(long)]
    pub account: Option<String>,
    /// Rank 0's rendezvous port.
    #[arg(long, default_value_t = 29500)]
    pub port: u16,
    /// The project's lockfile (its plugins are installed, by digest, on every node).
    #[arg(long, default_value = "galley.lock")]
    pub lock: PathBuf,
    /// The galley binary the nodes run (default: this one; it must suit the nodes' OS and
    /// processor).
    #[arg(long)]
    pub binary: Option<PathBuf>,
    /// What each rank runs, after `--`: `galley launch --target slurm -- train -c sft.yaml`.
    #[arg(last = true, required = true)]
    pub args: Vec<String>,
}

impl LaunchFlags {
    /// The job these flags describe for the project at `workdir`: `--binary` (else `this`,
    /// the running galley) and the lockfile pinned by SHA-256, `version` being galley's.
    pub fn job(&self, workdir: &Path, this: &Path, version: &str) -> Result<Job> {
        let binary = match &self.binary {
            Some(b) => std::path::absolute(b).map_err(|e| crate::file_err(b, e))?,
            None => this.to_path_buf(),
        };
        let command = self.args.first().map(String::as_str).unwrap_or("job");
        Ok(Job {
            name: self
                .name
                .clone()
                .unwrap_or_else(|| format!("galley-{command}")),
            args: self.args.clone(),
            nodes: self.nodes,
            gpus_per_node: self.gpus,
            accelerator: self.accelerator.clone(),
            cloud: self.cloud.clone(),
            binary_sha256: sha256_file(&binary)?,
            binary,
            version: version.into(),
            lock: pin_lock(workdir, &self.lock)?,
            port: self.port,
            partition: self.partition.clone(),
            time: self.time.clone(),
            account: self.account.clone(),
            workdir: workdir.to_path_buf(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use sha2::{Digest, Sha256};

    #[derive(Parser)]
    struct Cmd {
        #[command(flatten)]
        launch: LaunchFlags,
    }

    #[test]
    fn the_job_pins_the_binary_and_is_named_after_the_command() {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("galley");
        std::fs::write(&bin, b"binary").unwrap();
        let argv = [
            "launch", "--target", "slurm", "--gpus", "8", "--", "train", "-c", "x.yaml",
        ];
        let flags = Cmd::try_parse_from(argv).unwrap().launch;
        assert_eq!(flags.target, Target::Slurm);
        let job = flags.job(dir.path(), &bin, "0.1.0").unwrap();
        assert_eq!((job.name.as_str(), job.gpus_per_node), ("galley-train", 8));
        assert_eq!(job.binary_sha256, hex::encode(Sha256::digest(b"binary")));
        assert!(job.lock.is_none(), "no galley.lock in the project");
        let missing = [
            "launch",
            "--target",
            "slurm",
            "--binary",
            "/no/such/galley",
            "--",
            "eval",
        ];
        let e = Cmd::try_parse_from(missing)
            .unwrap()
            .launch
            .job(dir.path(), &bin, "0.1.0");
        assert!(e.unwrap_err().to_string().starts_with("/no/such/galley: "));
    }
}
