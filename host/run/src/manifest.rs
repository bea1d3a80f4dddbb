//! `run.json`: what a run was and did, enough to reproduce it. galley's version and source
//! revision, the run config as resolved, the merged plan, every plugin's name, version,
//! digest and signer, the model's and each data file's digest, seed and thread count, the
//! stage timeline (with a digest of each stage's deterministic metrics) and the exit status.
//! `galley run --replay run.json` runs the recorded config again after checking every digest,
//! then compares the metrics digests stage by stage.

use crate::RunError;
use crate::plan::Plan;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// A plugin the run opened.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PluginRecord {
    /// How the run config named it.
    pub spec: String,
    /// `name@version`.
    pub id: String,
    /// `sha256:...` of the component's bytes.
    pub digest: String,
    /// The key id galley.lock records for an installed package; none for a file.
    pub signer: Option<String>,
    pub path: PathBuf,
}

/// A file the run read, by digest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileRecord {
    pub path: PathBuf,
    pub digest: String,
}

/// One stage as it ran.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StageRecord {
    pub name: String,
    pub kind: String,
    /// `finished`, `ended early: ...`, `stopped: ...` or `failed: ...`.
    pub status: String,
    pub seconds: f64,
    /// Optimizer steps (training stages).
    pub steps: Option<usize>,
    /// The stage's headline numbers (last loss, reward, task metrics).
    pub metrics: BTreeMap<String, f64>,
    /// What it wrote: `model`, `adapter`, `dataset`, `results`.
    pub outputs: BTreeMap<String, PathBuf>,
    /// Digest of its deterministic metrics (wall-clock fields left out): equal on a replay.
    pub metrics_digest: Option<String>,
    /// Seconds spent outside the stage's own work: opening plugins, recipe calls, hand-over.
    pub overhead_seconds: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub galley_version: String,
    pub galley_revision: Option<String>,
    /// The run config file and the config as resolved (overrides applied).
    pub config_file: PathBuf,
    pub config: crate::RunConfig,
    /// The command-line overrides, as given.
    pub overrides: Vec<String>,
    pub plan: Plan,
    pub plugins: Vec<PluginRecord>,
    pub model: Option<FileRecord>,
    pub data: Vec<FileRecord>,
    pub seed: u64,
    pub threads: usize,
    pub stages: Vec<StageRecord>,
    /// `running`, `finished`, `stopped: ...` or `failed: ...`.
    pub status: String,
    pub seconds: f64,
    /// Seconds of planning (recipes' `plan`, plugin resolution, the model's digest) before
    /// the first stage.
    pub planning_seconds: f64,
    /// Seconds between stages (the manifest rewritten, outputs handed on).
    #[serde(default)]
    pub bookkeeping_seconds: f64,
}

impl Manifest {
    /// Orchestration: planning, bookkeeping between stages, and each stage's plugin opening,
    /// recipe calls, digests and hand-over exports.
    pub fn overhead_seconds(&self) -> f64 {
        self.planning_seconds
            + self.bookkeeping_seconds
            + self.stages.iter().map(|s| s.overhead_seconds).sum::<f64>()
    }
}

impl Manifest {
    pub fn write(&self, dir: &Path) -> Result<(), RunError> {
        let path = dir.join("run.json");
        let tmp = dir.join(".run.json.tmp");
        let text = serde_json::to_string_pretty(self).expect("manifest serializes") + "\n";
        std::fs::write(&tmp, text)
            .and_then(|_| std::fs::rename(&tmp, &path))
            .map_err(|e| RunError::Io(format!("{}: {e}", path.display())))
    }

    pub fn read(path: &Path) -> Result<Self, RunError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| RunError::Replay(format!("{}: {e}", path.display())))?;
        serde_json::from_str(&text)
            .map_err(|e| RunError::Replay(format!("{}: not a run manifest: {e}", path.display())))
    }

    /// The first stage whose metrics differ from `other`'s, if any.
    pub fn compare_metrics(&self, other: &Manifest) -> Result<(), String> {
        for a in &self.stages {
            let Some(b) = other.stages.iter().find(|b| b.name == a.name) else {
                return Err(format!(
                    "stage `{}` ran in the recorded run but not in the replay",
                    a.name
                ));
            };
            if a.metrics_digest != b.metrics_digest {
                return Err(format!(
                    "stage `{}`: metrics differ from the recorded run ({} vs {})",
                    a.name,
                    a.metrics_digest.as_deref().unwrap_or("none"),
                    b.metrics_digest.as_deref().unwrap_or("none")
                ));
            }
        }
        if other.stages.len() != self.stages.len() {
            return Err(format!(
                "the recorded run ran {} stages, the replay {}",
                self.stages.len(),
                other.stages.len()
            ));
        }
        Ok(())
    }
}

impl Manifest {
    /// A replay reads the same data: each recorded data file must still have its digest.
    pub fn check_data(&self) -> Result<(), RunError> {
        for f in &self.data {
            let now = digest_path(&f.path).map_err(|e| {
                RunError::Replay(format!("replay: data file {}: {e}", f.path.display()))
            })?;
            if now != f.digest {
                return Err(RunError::Replay(format!(
                    "replay: {} is {now}, but the recorded run read {}",
                    f.path.display(),
                    f.digest
                )));
            }
        }
        Ok(())
    }

    /// What a resumed run keeps of this earlier attempt (read from `path`): the stages it
    /// completed, in `plan` order, and the data it recorded — only when it ran under `cfg`
    /// (as JSON) and the same `overrides`.
    pub fn kept_for_resume(
        &self,
        path: &Path,
        cfg: &serde_json::Value,
        overrides: &[String],
        plan: &Plan,
    ) -> Result<(Vec<StageRecord>, Vec<FileRecord>), RunError> {
        let recorded = serde_json::to_value(&self.config).expect("a config serializes");
        if &recorded != cfg || self.overrides != overrides {
            return Err(RunError::Replay(format!(
                "--resume: {} was written under another config or other --set overrides; resume with the same ones (or pick another output_dir)",
                path.display()
            )));
        }
        let done = |s: &StageRecord| {
            s.status.starts_with("finished") || s.status.starts_with("ended early")
        };
        let kept = self
            .stages
            .iter()
            .zip(&plan.stages)
            .take_while(|(s, p)| done(s) && s.name == p.name && s.kind == p.kind)
            .map(|(s, _)| s.clone())
            .collect();
        Ok((kept, self.data.clone()))
    }
}

/// `sha256:...` of a file, or of a folder's files (names and bytes, in name order).
pub fn digest_path(path: &Path) -> Result<String, RunError> {
    galley_model::load::digest(path)
        .map(|d| format!("sha256:{d}"))
        .map_err(|e| RunError::Io(format!("{}: {e}", path.display())))
}

/// Whether a metrics key measures the machine rather than the run: wall-clock seconds and
/// rates (`elapsed_s`, `rollout_s`, `tokens_per_s`...).
pub fn volatile(key: &str) -> bool {
    key.ends_with("_s") || matches!(key, "seconds" | "time")
}

/// Digest of a JSONL metrics file with the wall-clock fields left out.
pub fn metrics_digest(path: &Path) -> Result<String, RunError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| RunError::Io(format!("{}: {e}", path.display())))?;
    let mut h = Sha256::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let mut v: serde_json::Value = serde_json::from_str(line)
            .map_err(|e| RunError::Io(format!("{}: {e}", path.display())))?;
        if let Some(m) = v.as_object_mut() {
            m.retain(|k, _| !volatile(k));
        }
        h.update(v.to_string().as_bytes());
        h.update(b"\n");
    }
    Ok(format!("sha256:{}", hex::encode(h.finalize())))
}

/// Digest of any JSON value.
pub fn value_digest(v: &serde_json::Value) -> String {
    format!(
        "sha256:{}",
        hex::encode(Sha256::digest(v.to_string().as_bytes()))
    )
}
