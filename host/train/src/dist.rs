//! Where this process stands in a multi-process job: rank, world size, local rank and the
//! rendezvous address, read from the variables the launchers set — torchrun's (`RANK`,
//! `WORLD_SIZE`, `LOCAL_RANK`, `MASTER_ADDR`, `MASTER_PORT`, which `galley launch`'s SkyPilot
//! and Slurm files set too), else those `srun` sets for a job step (`SLURM_PROCID`,
//! `SLURM_STEP_NUM_TASKS`, `SLURM_LOCALID`; not the allocation's `SLURM_NTASKS`, which a
//! shell inside `salloc` also has). No variables: a single process.

use crate::error::{Result, TrainError};

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

    /// This version trains in one process: a job of several is refused, not run as
    /// independent copies that would each train on all the data and race on one output.
    pub fn require_single(&self) -> Result<()> {
        if self.world_size > 1 {
            return Err(TrainError::Config {
                file: "WORLD_SIZE".into(),
                msg: format!(
                    "this process is rank {} of {}: data-parallel training is not in this version of galley; launch one process (one GPU) per job",
                    self.rank, self.world_size
                ),
            });
        }
        Ok(())
    }
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
        let e = s.require_single().unwrap_err().to_string();
        assert!(
            e.contains("rank 5 of 16") && e.contains("data-parallel"),
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
            .require_single()
            .unwrap();
    }
}
