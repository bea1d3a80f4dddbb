//! Where this process stands in a multi-process job: rank, world size, local rank and the
//! rendezvous address, read from the variables the launchers set — torchrun's (`RANK`,
//! `WORLD_SIZE`, `LOCAL_RANK`, `MASTER_ADDR`, `MASTER_PORT`, which `galley launch`'s SkyPilot
//! and Slurm files set too), else those `srun` sets for a job step (`SLURM_PROCID`,
//! `SLURM_STEP_NUM_TASKS`, `SLURM_LOCALID`; not the allocation's `SLURM_NTASKS`, which a
//! shell inside `salloc` also has). No variables: a single process.
//!
//! It also owns the group the ranks of a data-parallel run form: `Collective` sums buffers
//! across ranks; `TcpGroup` (`tcp`) is its implementation over TCP, which CPU ranks use and
//! GPU ranks use through host copies.

use crate::error::{Result, TrainError};
pub use crate::tcp::TcpGroup;
use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    pub rank: usize,
    pub world_size: usize,
    pub local_rank: usize,
    /// `host:port` of rank 0's rendezvous, when the launcher named one.
    pub master: Option<String>,
}

impl Placement {
    pub fn single() -> Self {
        Self {
            rank: 0,
            world_size: 1,
            local_rank: 0,
            master: None,
        }
    }

    /// From the process environment.
    pub fn from_env() -> Result<Self> {
        Self::from_vars(|k| std::env::var(k).ok())
    }

    /// From variables looked up by `get` (the environment, or a map in tests).
    pub fn from_vars(get: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let num = |key: &str| -> Result<Option<usize>> {
            match get(key) {
                None => Ok(None),
                Some(v) => v.trim().parse().map(Some).map_err(|_| TrainError::Config {
                    file: key.into(),
                    msg: format!("`{v}` is not a whole number"),
                }),
            }
        };
        let (rank, world, local) = match (num("RANK")?, num("WORLD_SIZE")?) {
            (Some(r), Some(w)) => (r, w, num("LOCAL_RANK")?),
            (None, None) => match (num("SLURM_PROCID")?, num("SLURM_STEP_NUM_TASKS")?) {
                (Some(r), Some(w)) => (r, w, num("SLURM_LOCALID")?),
                _ => return Ok(Self::single()),
            },
            _ => {
                return Err(TrainError::Config {
                    file: "RANK / WORLD_SIZE".into(),
                    msg: "set both or neither".into(),
                });
            }
        };
        if world == 0 || rank >= world {
            return Err(TrainError::Config {
                file: "RANK / WORLD_SIZE".into(),
                msg: format!("rank {rank} is not below the world size {world}"),
            });
        }
        let master = get("MASTER_ADDR").map(|a| match get("MASTER_PORT") {
            Some(p) => format!("{a}:{p}"),
            None => a,
        });
        Ok(Self {
            rank,
            world_size: world,
            local_rank: local.unwrap_or(0),
            master,
        })
    }

    /// For commands that run in one process: a job of several is refused, not run as
    /// independent copies that would each do all the work and race on one output.
    /// The device this rank trains on for `training.device` = `spec`: a plain `cuda` in a job
    /// of several ranks is the GPU of this rank's local rank (`cuda:N`, N = local rank modulo
    /// the `gpus` this node has, so ranks share GPUs only when there are more ranks than
    /// GPUs), as torchrun's one-process-per-GPU convention has it; anything else as given.
    pub fn device(&self, spec: &str, gpus: usize) -> String {
        match spec {
            "cuda" if self.world_size > 1 && gpus > 0 => {
                format!("cuda:{}", self.local_rank % gpus)
            }
            _ => spec.to_string(),
        }
    }

    pub fn require_single(&self, what: &str) -> Result<()> {
        if self.world_size > 1 {
            return Err(TrainError::Config {
                file: "WORLD_SIZE".into(),
                msg: format!(
                    "this process is rank {} of {}: {what} runs in one process in this version of galley; launch one process per job",
                    self.rank, self.world_size
                ),
            });
        }
        Ok(())
    }
}

/// How a GPU group sums gradients: through host copies over TCP, or NCCL on the devices.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Tcp,
    Nccl,
}

/// This rank's choice for `GALLEY_DIST_BACKEND` = `setting`: `tcp`; `nccl` (an error where
/// this rank is not on a GPU or has no NCCL library); unset or `auto`, NCCL where it can.
/// The ranks then agree (`nccl::choose`): NCCL only if every rank chose it.
pub fn choose_backend(setting: Option<&str>, on_gpu: bool, nccl_present: bool) -> Result<Backend> {
    let can = on_gpu && nccl_present;
    match setting.map(str::trim) {
        Some("tcp") => Ok(Backend::Tcp),
        Some("nccl") if can => Ok(Backend::Nccl),
        Some("nccl") => Err(TrainError::Config {
            file: "GALLEY_DIST_BACKEND".into(),
            msg: if on_gpu {
                "nccl: the NCCL library (libnccl.so.2) was not found; install NCCL (or the nvidia-nccl wheel) or use tcp".into()
            } else {
                "nccl: this rank does not train on a GPU (training.device); use tcp".into()
            },
        }),
        None | Some("auto") | Some("") => Ok(if can { Backend::Nccl } else { Backend::Tcp }),
        Some(other) => Err(TrainError::Config {
            file: "GALLEY_DIST_BACKEND".into(),
            msg: format!("`{other}`: use auto, nccl or tcp"),
        }),
    }
}

/// The group this process belongs to when a launcher started it as one rank of several
/// (`Placement::from_env`), joined over TCP; None for a single process. `job` identifies the
/// run (`crate::digest`): every rank must have the same. `GALLEY_DIST_TIMEOUT_S` (default
/// 1800) bounds every wait on another rank.
pub fn join_from_env(job: &str) -> Result<Option<Box<dyn Collective>>> {
    let p = Placement::from_env()?;
    if p.world_size == 1 {
        return Ok(None);
    }
    let secs = match std::env::var("GALLEY_DIST_TIMEOUT_S") {
        Ok(v) => v.trim().parse().map_err(|_| TrainError::Config {
            file: "GALLEY_DIST_TIMEOUT_S".into(),
            msg: format!("`{v}` is not a number of seconds"),
        })?,
        Err(_) => 1800,
    };
    let g = TcpGroup::connect(&p, job, Duration::from_secs(secs))?;
    Ok(Some(Box::new(g)))
}

/// Ranks that sum buffers together. Every rank must make the same calls in the same order.
pub trait Collective: Send {
    fn rank(&self) -> usize;
    fn world_size(&self) -> usize;
    /// Sums `buf` element-wise over the ranks, in place; every rank gets the same sum.
    fn all_reduce_f32(&mut self, buf: &mut [f32]) -> Result<()>;
    /// As `all_reduce_f32`, for metrics.
    fn all_reduce_f64(&mut self, buf: &mut [f64]) -> Result<()>;
    /// Sums several buffers (one bucket of gradients) as one message: the same sums as
    /// `all_reduce_f32` on their concatenation. This default copies them into one buffer and
    /// back; a group that can send and add them where they are overrides it.
    fn all_reduce_f32_parts(&mut self, parts: &mut [&mut [f32]]) -> Result<()> {
        through_one_buffer(parts, |b| self.all_reduce_f32(b))
    }
    /// Sums f32 gradient tensors on a GPU in place, without host copies, in buckets of up to
    /// `cap` floats, when the group can (NCCL, chosen by the ranks together at the first
    /// call); None when it cannot, and the caller sums through host copies. Every rank must
    /// make the same calls.
    #[cfg(feature = "cuda")]
    fn all_reduce_device(
        &mut self,
        _grads: &mut [candle_core::Tensor],
        _cap: usize,
    ) -> Option<Result<()>> {
        None
    }
}

/// Sums `parts` as one buffer through `sum`: copied into one (unless there is only one),
/// summed, copied back.
pub(crate) fn through_one_buffer(
    parts: &mut [&mut [f32]],
    sum: impl FnOnce(&mut [f32]) -> Result<()>,
) -> Result<()> {
    if let [one] = parts {
        return sum(one);
    }
    let mut flat: Vec<f32> = Vec::with_capacity(parts.iter().map(|p| p.len()).sum());
    for p in parts.iter() {
        flat.extend_from_slice(p);
    }
    sum(&mut flat)?;
    let mut rest = flat.as_slice();
    for p in parts.iter_mut() {
        let (head, tail) = rest.split_at(p.len());
        p.copy_from_slice(head);
        rest = tail;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn from(pairs: &[(&str, &str)]) -> Result<Placement> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Placement::from_vars(|k| m.get(k).cloned())
    }

    #[test]
    fn torchrun_slurm_and_nothing() {
        assert_eq!(from(&[]).unwrap(), Placement::single());
        let p = from(&[
            ("RANK", "3"),
            ("WORLD_SIZE", "8"),
            ("LOCAL_RANK", "1"),
            ("MASTER_ADDR", "10.0.0.1"),
            ("MASTER_PORT", "29500"),
            ("SLURM_PROCID", "7"),
        ])
        .unwrap();
        assert_eq!(
            (p.rank, p.world_size, p.local_rank, p.master.as_deref()),
            (3, 8, 1, Some("10.0.0.1:29500"))
        );
        // An `salloc` shell has the allocation's task count but is one process.
        assert_eq!(
            from(&[("SLURM_PROCID", "0"), ("SLURM_NTASKS", "16")]).unwrap(),
            Placement::single()
        );
        let s = from(&[
            ("SLURM_PROCID", "5"),
            ("SLURM_STEP_NUM_TASKS", "16"),
            ("SLURM_LOCALID", "5"),
        ])
        .unwrap();
        assert_eq!((s.rank, s.world_size, s.local_rank), (5, 16, 5));
        let e = s.require_single("KTO").unwrap_err().to_string();
        assert!(
            e.contains("rank 5 of 16") && e.contains("KTO runs in one process"),
            "{e}"
        );
        assert!(from(&[("RANK", "1")]).is_err());
        assert!(from(&[("RANK", "2"), ("WORLD_SIZE", "2")]).is_err());
        assert!(
            from(&[("RANK", "x"), ("WORLD_SIZE", "2")])
                .unwrap_err()
                .to_string()
                .contains("RANK")
        );
        from(&[("RANK", "0"), ("WORLD_SIZE", "1")])
            .unwrap()
            .require_single("x")
            .unwrap();
    }

    /// Three ranks on loopback sum in rank order; a rank of another job is refused.
    #[test]
    fn the_gradient_transport_follows_the_setting_and_what_the_rank_has() {
        use Backend::*;
        assert_eq!(choose_backend(None, true, true).unwrap(), Nccl);
        assert_eq!(choose_backend(Some("auto"), true, false).unwrap(), Tcp);
        assert_eq!(choose_backend(None, false, true).unwrap(), Tcp);
        assert_eq!(choose_backend(Some("tcp"), true, true).unwrap(), Tcp);
        assert_eq!(choose_backend(Some("nccl"), true, true).unwrap(), Nccl);
        let e = choose_backend(Some("nccl"), true, false)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("GALLEY_DIST_BACKEND") && e.contains("libnccl"),
            "{e}"
        );
        let e = choose_backend(Some("nccl"), false, true)
            .unwrap_err()
            .to_string();
        assert!(e.contains("not train on a GPU"), "{e}");
        let e = choose_backend(Some("gloo"), true, true)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("`gloo`") && e.contains("auto, nccl or tcp"),
            "{e}"
        );
    }

    #[test]
    fn each_local_rank_trains_on_its_own_gpu() {
        let p = |local_rank, world_size| Placement {
            rank: local_rank + 8,
            world_size,
            local_rank,
            master: None,
        };
        assert_eq!(p(3, 16).device("cuda", 8), "cuda:3");
        // More ranks than GPUs: they share, in turn.
        assert_eq!(p(3, 16).device("cuda", 2), "cuda:1");
        // A named GPU, the CPU, a single process, or no GPU at all: as configured.
        assert_eq!(p(3, 16).device("cuda:0", 8), "cuda:0");
        assert_eq!(p(3, 16).device("cpu", 8), "cpu");
        assert_eq!(p(0, 1).device("cuda", 8), "cuda");
        assert_eq!(p(3, 16).device("cuda", 0), "cuda");
    }
}
