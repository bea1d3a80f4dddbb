//! `galley launch`'s job files: a SkyPilot task (SkyPilot also reaches Kubernetes and the
//! clouds) or a Slurm batch script that starts one galley process per GPU on every node, with
//! the rank variables torchrun uses (`RANK`, `WORLD_SIZE`, `LOCAL_RANK`, `MASTER_ADDR`,
//! `MASTER_PORT`, one GPU per process through `CUDA_VISIBLE_DEVICES`). Every node checks the
//! galley binary's SHA-256 and the project's `galley.lock` before it runs anything, then
//! installs exactly the plugins the lock pins (each verified by digest), so every rank runs
//! byte-identical code. `write` puts the job file in place and `submit` hands it to the
//! scheduler's own client (`sky launch`, `sbatch`); galley schedules nothing itself.

#[cfg(feature = "clap")]
pub mod flags;

use serde::Serialize;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error("{key}: {msg}")]
    Invalid { key: &'static str, msg: String },
    #[error("{path}: {msg}")]
    File { path: PathBuf, msg: String },
    /// The scheduler's client is missing or refused the job (names the job file).
    #[error("{0}")]
    Submit(String),
}

fn file_err(path: &Path, e: impl std::fmt::Display) -> LaunchError {
    LaunchError::File {
        path: path.into(),
        msg: e.to_string(),
    }
}

/// A file's SHA-256, in hex: what every node checks before it runs the file.
pub fn sha256_file(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).map_err(|e| file_err(path, e))?;
    Ok(hex::encode(Sha256::digest(&bytes)))
}

/// The project's lockfile `path` (relative to `workdir`, inside it) as a job pins it: its
/// SHA-256 and the plugins it lists; None when the project has none.
pub fn pin_lock(workdir: &Path, path: &Path) -> Result<Option<Lock>> {
    let abs = workdir.join(path);
    let Some(lf) = galley_registry::Lockfile::load(&abs).map_err(|e| file_err(&abs, e))? else {
        return Ok(None);
    };
    // Every node sees the project at its own path: the lock is named relative to it.
    let rel = abs.strip_prefix(workdir).map_err(|_| {
        invalid(
            "--lock",
            format!("{}: must lie inside the project folder", path.display()),
        )
    })?;
    Ok(Some(Lock {
        path: rel.display().to_string(),
        sha256: sha256_file(&abs)?,
        plugins: lf
            .plugins
            .iter()
            .map(|p| Pin {
                name: p.name.to_string(),
                version: p.version.to_string(),
                digest: p.digest.clone(),
            })
            .collect(),
    }))
}

pub type Result<T> = std::result::Result<T, LaunchError>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum Target {
    Skypilot,
    Slurm,
}

/// A plugin the project's lockfile pins.
#[derive(Debug, Clone)]
pub struct Pin {
    pub name: String,
    pub version: String,
    pub digest: String,
}

/// The project's lockfile as the job checks it.
#[derive(Debug, Clone)]
pub struct Lock {
    /// Relative to the job's working directory (as every node sees it).
    pub path: String,
    pub sha256: String,
    pub plugins: Vec<Pin>,
}

#[derive(Debug, Clone)]
pub struct Job {
    /// The job's (and SkyPilot cluster's) name: lowercase letters, digits and `-`.
    pub name: String,
    /// galley's arguments on every rank (`train -c sft.yaml`).
    pub args: Vec<String>,
    pub nodes: usize,
    /// GPUs per node, one process each; 0 runs one process per node on its CPUs.
    pub gpus_per_node: usize,
    /// SkyPilot's accelerator name (`H100`, `A100-80GB`); Slurm takes a GPU count only.
    pub accelerator: Option<String>,
    /// SkyPilot's `cloud` (`aws`, `gcp`, `kubernetes`, ...); None lets SkyPilot choose.
    pub cloud: Option<String>,
    /// The project folder: SkyPilot syncs it to every node; Slurm runs in it (a shared file
    /// system, as Slurm clusters have).
    pub workdir: PathBuf,
    /// The galley binary every node runs: SkyPilot uploads it; Slurm runs it in place.
    pub binary: PathBuf,
    pub binary_sha256: String,
    pub version: String,
    pub lock: Option<Lock>,
    pub port: u16,
    pub partition: Option<String>,
    /// Slurm's wall-clock limit (`HH:MM:SS` or `D-HH:MM:SS`).
    pub time: Option<String>,
    pub account: Option<String>,
}

fn invalid(key: &'static str, msg: impl Into<String>) -> LaunchError {
    LaunchError::Invalid {
        key,
        msg: msg.into(),
    }
}

fn quote(s: &str) -> Result<String> {
    shlex::try_quote(s)
        .map(|q| q.into_owned())
        .map_err(|_| invalid("args", format!("`{s}` holds a NUL byte")))
}

fn quote_all(args: &[String]) -> Result<String> {
    Ok(args
        .iter()
        .map(|a| quote(a))
        .collect::<Result<Vec<_>>>()?
        .join(" "))
}

impl Job {
    fn check(&self) -> Result<()> {
        let name_ok = !self.name.is_empty()
            && self.name.len() <= 63
            && self.name.starts_with(|c: char| c.is_ascii_lowercase())
            && self
                .name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if !name_ok {
            return Err(invalid(
                "--name",
                format!(
                    "`{}`: use lowercase letters, digits and `-`, starting with a letter",
                    self.name
                ),
            ));
        }
        if self.nodes == 0 {
            return Err(invalid("--nodes", "at least 1"));
        }
        if self.args.is_empty() {
            return Err(invalid(
                "args",
                "name the galley command each rank runs (`-- train -c cfg.yaml`)",
            ));
        }
        let hex = |s: &str| s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit());
        if !hex(&self.binary_sha256) {
            return Err(invalid("binary", "the SHA-256 must be 64 hex digits"));
        }
        if self.lock.as_ref().is_some_and(|l| !hex(&l.sha256)) {
            return Err(invalid("galley.lock", "the SHA-256 must be 64 hex digits"));
        }
        if let Some(t) = &self.time {
            let ok = !t.is_empty()
                && t.chars()
                    .all(|c| c.is_ascii_digit() || c == ':' || c == '-');
            if !ok {
                return Err(invalid(
                    "--time",
                    format!("`{t}`: use HH:MM:SS or D-HH:MM:SS"),
                ));
            }
        }
        for (key, v) in [
            ("--partition", &self.partition),
            ("--account", &self.account),
            ("--accelerator", &self.accelerator),
            ("--cloud", &self.cloud),
        ] {
            if let Some(v) = v {
                let ok = !v.is_empty()
                    && v.chars()
                        .all(|c| c.is_ascii_alphanumeric() || "-_.,".contains(c));
                if !ok {
                    return Err(invalid(
                        key,
                        format!("`{v}`: letters, digits and -_., only"),
                    ));
                }
            }
        }
        Ok(())
    }

    fn world(&self) -> usize {
        self.nodes * self.gpus_per_node.max(1)
    }

    /// The comment block both files open with: what runs, and what is pinned.
    fn header(&self) -> String {
        let mut h = format!(
            "# Written by `galley launch` (galley {}): {} node(s) x {} process(es), world size {}.\n\
             # Each rank runs: galley {}\n\
             # galley binary sha256 {}\n",
            self.version,
            self.nodes,
            self.gpus_per_node.max(1),
            self.world(),
            // Quoted, and no newline may end the comment early.
            quote_all(&self.args)
                .unwrap_or_default()
                .replace('\n', "\\n"),
            self.binary_sha256
        );
        match &self.lock {
            Some(l) => {
                h += &format!("# {} sha256 {}; plugins pinned:\n", l.path, l.sha256);
                for p in &l.plugins {
                    h += &format!("#   {}@{} {}\n", p.name, p.version, p.digest);
                }
            }
            None => h += "# no galley.lock: the job installs no plugins\n",
        }
        h
    }

    /// Shell lines that check the pinned bytes and install the pinned plugins; `bin` is the
    /// galley binary's path as the script sees it.
    fn verify(&self, bin: &str) -> Result<String> {
        // sha256sum's line is "DIGEST  PATH" (two spaces); `bin` comes quoted or literal.
        let mut s = format!("echo '{}  '{bin} | sha256sum -c -\n", self.binary_sha256);
        if let Some(l) = &self.lock {
            let p = quote(&l.path)?;
            s += &format!("echo '{}  '{p} | sha256sum -c -\n", l.sha256);
            s += &format!("{bin} plugin install --lock {p}\n");
        }
        Ok(s)
    }

    /// Renders the job file for `target`.
    pub fn render(&self, target: Target) -> Result<String> {
        self.check()?;
        match target {
            Target::Skypilot => self.skypilot(),
            Target::Slurm => self.slurm(),
        }
    }

    fn skypilot(&self) -> Result<String> {
        #[derive(Serialize)]
        struct Resources<'a> {
            #[serde(skip_serializing_if = "Option::is_none")]
            cloud: Option<&'a str>,
            #[serde(skip_serializing_if = "Option::is_none")]
            accelerators: Option<String>,
        }
        #[derive(Serialize)]
        struct Task<'a> {
            name: &'a str,
            num_nodes: usize,
            resources: Resources<'a>,
            workdir: String,
            file_mounts: std::collections::BTreeMap<&'a str, String>,
            envs: std::collections::BTreeMap<&'a str, String>,
            setup: String,
            run: String,
        }
        const BIN: &str = "/opt/galley/bin/galley";
        let gpus = self.gpus_per_node;
        let accelerators = match (gpus, &self.accelerator) {
            (0, Some(_)) => return Err(invalid("--accelerator", "needs --gpus of 1 or more")),
            (0, None) => None,
            (n, Some(a)) => Some(format!("{a}:{n}")),
            (_, None) => {
                return Err(invalid(
                    "--accelerator",
                    "SkyPilot needs the GPU type (`H100`, `A100-80GB`, ...)",
                ));
            }
        };
        // The mount keeps the bytes, not necessarily the mode.
        let setup = format!("set -euo pipefail\nchmod +x {BIN}\n{}", self.verify(BIN)?);
        let cmd = quote_all(&self.args)?;
        let run = if self.world() == 1 {
            format!("set -euo pipefail\nexec {BIN} {cmd}\n")
        } else {
            format!(
                "set -euo pipefail\n\
                 per_node=$(( SKYPILOT_NUM_GPUS_PER_NODE > 0 ? SKYPILOT_NUM_GPUS_PER_NODE : 1 ))\n\
                 export MASTER_ADDR=$(echo \"$SKYPILOT_NODE_IPS\" | head -n 1)\n\
                 export MASTER_PORT={port}\n\
                 export WORLD_SIZE=$(( SKYPILOT_NUM_NODES * per_node ))\n\
                 for i in $(seq 0 $(( per_node - 1 ))); do\n\
                 \x20 RANK=$(( SKYPILOT_NODE_RANK * per_node + i )) LOCAL_RANK=$i CUDA_VISIBLE_DEVICES=$i \\\n\
                 \x20   {BIN} {cmd} &\n\
                 done\n\
                 # One rank failing fails the node.\n\
                 for job in $(jobs -p); do wait \"$job\"; done\n",
                port = self.port
            )
        };
        let task = Task {
            name: &self.name,
            num_nodes: self.nodes,
            resources: Resources {
                cloud: self.cloud.as_deref(),
                accelerators,
            },
            workdir: self.workdir.display().to_string(),
            file_mounts: [(BIN, self.binary.display().to_string())].into(),
            envs: [("GALLEY_VERSION", self.version.clone())].into(),
            setup,
            run,
        };
        let yaml = galley_core::config::yaml::to_string(&task)
            .map_err(|e| invalid("skypilot", e.to_string()))?;
        Ok(format!("{}{yaml}", self.header()))
    }

    fn slurm(&self) -> Result<String> {
        let gpus = self.gpus_per_node;
        let mut s = format!("#!/bin/bash\n{}", self.header());
        s += &format!("#SBATCH --job-name={}\n", self.name);
        s += &format!("#SBATCH --nodes={}\n", self.nodes);
        s += &format!("#SBATCH --ntasks-per-node={}\n", gpus.max(1));
        if gpus > 0 {
            s += &format!("#SBATCH --gpus-per-node={gpus}\n");
        }
        for (flag, v) in [
            ("partition", &self.partition),
            ("time", &self.time),
            ("account", &self.account),
        ] {
            if let Some(v) = v {
                s += &format!("#SBATCH --{flag}={v}\n");
            }
        }
        s += &format!("#SBATCH --output={}-%j.out\n", self.name);
        s += "set -euo pipefail\n";
        s += &format!("cd {}\n", quote(&self.workdir.display().to_string())?);
        s += &format!("GALLEY={}\n", quote(&self.binary.display().to_string())?);
        s += &format!("export GALLEY_VERSION={}\n", quote(&self.version)?);
        // The working folder is shared: check and install once, before any rank starts.
        s += &self.verify("\"$GALLEY\"")?;
        let cmd = quote_all(&self.args)?;
        if self.world() == 1 {
            s += &format!("srun \"$GALLEY\" {cmd}\n");
        } else {
            s += "export MASTER_ADDR=$(scontrol show hostnames \"$SLURM_JOB_NODELIST\" | head -n 1)\n";
            s += &format!("export MASTER_PORT={}\n", self.port);
            let gpu = if gpus > 0 {
                " CUDA_VISIBLE_DEVICES=$SLURM_LOCALID"
            } else {
                ""
            };
            s += &format!(
                "srun bash -c 'export RANK=$SLURM_PROCID WORLD_SIZE=$SLURM_NTASKS LOCAL_RANK=$SLURM_LOCALID{gpu}; exec \"$0\" \"$@\"' \"$GALLEY\" {cmd}\n"
            );
        }
        Ok(s)
    }
}

impl Target {
    /// The job file's extension and the client that submits it.
    fn tool(self) -> (&'static str, &'static str) {
        match self {
            Target::Skypilot => ("yaml", "sky"),
            Target::Slurm => ("sbatch", "sbatch"),
        }
    }
}

impl Job {
    /// Renders the job for `target` into `file` (default `.galley/launch/NAME.EXT`).
    pub fn write(&self, target: Target, file: Option<&Path>) -> Result<PathBuf> {
        let text = self.render(target)?;
        let file = match file {
            Some(f) => f.to_path_buf(),
            None => PathBuf::from(format!(".galley/launch/{}.{}", self.name, target.tool().0)),
        };
        if let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| file_err(dir, e))?;
        }
        std::fs::write(&file, text).map_err(|e| file_err(&file, e))?;
        Ok(file)
    }

    /// What a user should know before the job runs (a command that refuses several ranks,
    /// a job with no plugins).
    pub fn notes(&self, lock: &Path) -> Vec<String> {
        let mut out = Vec::new();
        if self.nodes * self.gpus_per_node.max(1) > 1 && self.args[0] != "train" {
            out.push(format!(
                "only `galley train` (SFT, pre-training) runs data-parallel; `galley {}` refuses a world size above one",
                self.args[0]
            ));
        }
        if self.lock.is_none() {
            out.push(format!(
                "no {}: the job installs no plugins",
                lock.display()
            ));
        }
        out
    }

    /// Submits the written job `file` with `sky launch` or `sbatch`.
    pub fn submit(&self, target: Target, file: &Path) -> Result<()> {
        let tool = target.tool().1;
        let mut cmd = std::process::Command::new(tool);
        match target {
            Target::Skypilot => cmd.args(["launch", "-y", "-c", &self.name]).arg(file),
            Target::Slurm => cmd.arg(file),
        };
        let status = match cmd.status() {
            Ok(s) => s,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let what = match target {
                    Target::Skypilot => "SkyPilot",
                    Target::Slurm => "Slurm's client",
                };
                return Err(LaunchError::Submit(format!(
                    "`{tool}` is not installed here; install {what} or pass --emit FILE and submit {} yourself",
                    file.display()
                )));
            }
            Err(e) => return Err(LaunchError::Submit(format!("running {tool}: {e}"))),
        };
        if !status.success() {
            return Err(LaunchError::Submit(format!(
                "`{tool}` failed ({status}); the job file is {}",
                file.display()
            )));
        }
        Ok(())
    }
}
