//! Where this process stands in a multi-process job: rank, world size, local rank and the
//! rendezvous address, read from the variables the launchers set — torchrun's (`RANK`,
//! `WORLD_SIZE`, `LOCAL_RANK`, `MASTER_ADDR`, `MASTER_PORT`, which `galley launch`'s SkyPilot
//! and Slurm files set too), else those `srun` sets for a job step (`SLURM_PROCID`,
//! `SLURM_STEP_NUM_TASKS`, `SLURM_LOCALID`; not the allocation's `SLURM_NTASKS`, which a
//! shell inside `salloc` also has). No variables: a single process.
//!
//! It also owns the group the ranks of a data-parallel run form: `Collective` sums buffers
//! across ranks; `TcpGroup` is its implementation over TCP (rank 0 at `MASTER_ADDR:MASTER_PORT`
//! sums what every rank sends, in rank order, and sends the sum back), which CPU ranks use and
//! GPU ranks use through host copies.

use crate::error::{Result, TrainError};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

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

fn dist_err(msg: impl std::fmt::Display) -> TrainError {
    TrainError::Stopped(format!("data-parallel group: {msg}"))
}

const MAGIC: &[u8; 8] = b"GALLEYDP";
const HELLO_TIMEOUT: Duration = Duration::from_secs(5);

/// The ranks of a job over TCP: rank 0 listens, the others connect (retrying while rank 0
/// starts). Rank 0 adds the buffers in rank order, so every run sums the same way.
pub struct TcpGroup {
    rank: usize,
    world: usize,
    /// Rank 0: the stream of rank i at index i - 1. Other ranks: the stream to rank 0.
    peers: Vec<TcpStream>,
    /// Where a rank other than 0 receives the sum, kept from call to call: a fresh buffer
    /// each time cost a page fault per 4 KiB (8-byte words, so f32 and f64 both fit).
    scratch: Vec<u64>,
    /// NCCL on the GPUs, once the ranks have chosen (None: not yet; Some(None): TCP).
    #[cfg(feature = "cuda")]
    nccl: Option<Option<crate::nccl::Nccl>>,
}

impl TcpGroup {
    /// Joins the group `p` names. `job` (the config's digest) must be the same on every
    /// rank: a rank started with another config is refused. Reads give up after `timeout`
    /// (a rank that died or hangs fails the others instead of stopping them for ever).
    pub fn connect(p: &Placement, job: &str, timeout: Duration) -> Result<Self> {
        let master = p
            .master
            .clone()
            .ok_or_else(|| dist_err("MASTER_ADDR (and MASTER_PORT) must name rank 0's address"))?;
        let addr = master
            .to_socket_addrs()
            .map_err(|e| dist_err(format!("`{master}`: {e}")))?
            .next()
            .ok_or_else(|| dist_err(format!("`{master}` resolves to no address")))?;
        let hello = |rank: usize| {
            let mut h = MAGIC.to_vec();
            h.extend((rank as u64).to_le_bytes());
            h.extend((p.world_size as u64).to_le_bytes());
            h.extend((job.len() as u64).to_le_bytes());
            h.extend(job.as_bytes());
            h
        };
        let setup = |s: &TcpStream| -> Result<()> {
            s.set_nodelay(true).map_err(dist_err)?;
            s.set_read_timeout(Some(timeout)).map_err(dist_err)?;
            s.set_write_timeout(Some(timeout)).map_err(dist_err)
        };
        if p.rank == 0 {
            let listener = TcpListener::bind(addr).map_err(|e| dist_err(format!("{addr}: {e}")))?;
            listener.set_nonblocking(true).map_err(dist_err)?;
            let mut slots: Vec<Option<TcpStream>> = (1..p.world_size).map(|_| None).collect();
            let deadline = Instant::now() + timeout;
            while slots.iter().any(Option::is_none) {
                match listener.accept() {
                    Ok((mut s, from)) => {
                        s.set_nonblocking(false).map_err(dist_err)?;
                        // A connection that is not a rank (a port scan) must not hold rank 0
                        // for the whole timeout: the greeting gets a few seconds.
                        s.set_read_timeout(Some(HELLO_TIMEOUT)).map_err(dist_err)?;
                        let mut head = [0u8; 32];
                        if s.read_exact(&mut head).is_err() || &head[..8] != MAGIC {
                            tracing::warn!("{from}: not a galley rank; ignored");
                            continue;
                        }
                        setup(&s)?;
                        let num = |i: usize| {
                            u64::from_le_bytes(head[i..i + 8].try_into().unwrap()) as usize
                        };
                        let (rank, world, n) = (num(8), num(16), num(24));
                        let mut theirs = vec![0u8; n.min(1024)];
                        s.read_exact(&mut theirs).map_err(dist_err)?;
                        if world != p.world_size || theirs != job.as_bytes() {
                            return Err(dist_err(format!(
                                "rank {rank} (from {from}) runs another job: world size {world} vs {}, or another config",
                                p.world_size
                            )));
                        }
                        match slots.get_mut(rank.wrapping_sub(1)) {
                            Some(slot @ None) => *slot = Some(s),
                            _ => {
                                return Err(dist_err(format!(
                                    "rank {rank} (from {from}) is out of range or came twice"
                                )));
                            }
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        if Instant::now() > deadline {
                            return Err(dist_err(format!(
                                "{} of {} ranks joined within {timeout:?}",
                                1 + slots.iter().flatten().count(),
                                p.world_size
                            )));
                        }
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    Err(e) => return Err(dist_err(e)),
                }
            }
            return Ok(Self {
                rank: 0,
                world: p.world_size,
                peers: slots.into_iter().flatten().collect(),
                scratch: Vec::new(),
                #[cfg(feature = "cuda")]
                nccl: None,
            });
        }
        let deadline = Instant::now() + timeout;
        let mut s = loop {
            match TcpStream::connect(addr) {
                Ok(s) => break s,
                Err(e) if Instant::now() > deadline => {
                    return Err(dist_err(format!("rank 0 at {addr}: {e}")));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        };
        setup(&s)?;
        s.write_all(&hello(p.rank)).map_err(dist_err)?;
        Ok(Self {
            rank: p.rank,
            world: p.world_size,
            peers: vec![s],
            scratch: Vec::new(),
            #[cfg(feature = "cuda")]
            nccl: None,
        })
    }

    /// Rank 0 adds what every rank sends (in rank order) to its own and sends the sum back,
    /// chunk by chunk; the other ranks send from one thread while they receive on another, so
    /// both directions of each connection carry data at once.
    fn reduce<T: Elem>(&mut self, buf: &mut [T]) -> Result<()> {
        let lost = |r: usize, e: std::io::Error| dist_err(format!("rank {r}: {e}"));
        let chunk = (CHUNK_BYTES / std::mem::size_of::<T>()).max(1);
        if self.rank == 0 {
            let mut theirs = vec![T::zeroed(); chunk.min(buf.len())];
            for part in buf.chunks_mut(chunk) {
                let t = &mut theirs[..part.len()];
                for (i, s) in self.peers.iter_mut().enumerate() {
                    s.read_exact(bytemuck::cast_slice_mut(t))
                        .map_err(|e| lost(i + 1, e))?;
                    part.iter_mut()
                        .zip(t.iter())
                        .for_each(|(x, y)| *x = x.add(*y));
                }
                for (i, s) in self.peers.iter_mut().enumerate() {
                    s.write_all(bytemuck::cast_slice(part))
                        .map_err(|e| lost(i + 1, e))?;
                }
            }
            return Ok(());
        }
        let s = &mut self.peers[0];
        let mut w = s.try_clone().map_err(|e| lost(0, e))?;
        let words = (std::mem::size_of_val(buf)).div_ceil(8);
        if self.scratch.len() < words {
            self.scratch.resize(words, 0);
        }
        let sum: &mut [T] = &mut bytemuck::cast_slice_mut(&mut self.scratch[..words])[..buf.len()];
        let mine: &[T] = buf;
        let sent = std::thread::scope(|sc| {
            let writer = sc.spawn(move || {
                for part in mine.chunks(chunk) {
                    w.write_all(bytemuck::cast_slice(part))?;
                }
                Ok::<(), std::io::Error>(())
            });
            let got = sum
                .chunks_mut(chunk)
                .try_for_each(|part| s.read_exact(bytemuck::cast_slice_mut(part)));
            let sent = writer.join().expect("the sending thread does not panic");
            got.and(sent)
        });
        sent.map_err(|e| lost(0, e))?;
        buf.copy_from_slice(sum);
        Ok(())
    }
}

/// Bytes per message piece: large enough to amortise the calls, small enough that rank 0's
/// adding overlaps the transfer.
const CHUNK_BYTES: usize = 4 << 20;

// The wire format is little-endian; the buffers are sent as their bytes.
const _: () = assert!(cfg!(target_endian = "little"));

/// The element types a group sums.
trait Elem: bytemuck::Pod + Send + Sync {
    fn add(self, o: Self) -> Self;
}

impl Elem for f32 {
    fn add(self, o: Self) -> Self {
        self + o
    }
}

impl Elem for f64 {
    fn add(self, o: Self) -> Self {
        self + o
    }
}

impl Collective for TcpGroup {
    fn rank(&self) -> usize {
        self.rank
    }
    fn world_size(&self) -> usize {
        self.world
    }
    fn all_reduce_f32(&mut self, buf: &mut [f32]) -> Result<()> {
        self.reduce(buf)
    }
    fn all_reduce_f64(&mut self, buf: &mut [f64]) -> Result<()> {
        self.reduce(buf)
    }
    #[cfg(feature = "cuda")]
    fn all_reduce_device(
        &mut self,
        grads: &mut [candle_core::Tensor],
        cap: usize,
    ) -> Option<Result<()>> {
        if self.nccl.is_none() {
            let dev = grads.first()?.device().clone();
            match crate::nccl::choose(self, &dev) {
                Ok(n) => self.nccl = Some(n),
                Err(e) => return Some(Err(e)),
            }
        }
        let nccl = self.nccl.as_ref()?.as_ref()?;
        Some(nccl.sum(grads, cap))
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

    #[test]
    fn tcp_group_sums_across_ranks_and_refuses_a_stranger() {
        let free = || {
            std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port()
        };
        let place = |rank, world, port| Placement {
            rank,
            world_size: world,
            local_rank: rank,
            master: Some(format!("127.0.0.1:{port}")),
        };
        let t = Duration::from_secs(20);
        let port = free();
        let handles: Vec<_> = (0..3)
            .map(|r| {
                let p = place(r, 3, port);
                std::thread::spawn(move || {
                    let mut g = TcpGroup::connect(&p, "job-a", t).unwrap();
                    let mut v = vec![r as f32 + 0.5, 10.0 * r as f32];
                    g.all_reduce_f32(&mut v).unwrap();
                    let mut m = [r as f64];
                    g.all_reduce_f64(&mut m).unwrap();
                    (v, m[0])
                })
            })
            .collect();
        for h in handles {
            let (v, m) = h.join().unwrap();
            assert_eq!(v, vec![4.5, 30.0]);
            assert_eq!(m, 3.0);
        }
        // A silent connection and a stranger's bytes first: ignored, the ranks still meet.
        let port = free();
        let (p0, p1) = (place(0, 2, port), place(1, 2, port));
        let root = std::thread::spawn(move || {
            let mut g = TcpGroup::connect(&p0, "job-a", t).unwrap();
            let mut v = [1.0f32];
            g.all_reduce_f32(&mut v).unwrap();
            v[0]
        });
        let addr = format!("127.0.0.1:{port}");
        let _silent = loop {
            match TcpStream::connect(&addr) {
                Ok(s) => break s,
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        };
        TcpStream::connect(&addr)
            .unwrap()
            .write_all(b"GET / HTTP/1.1\r\n\r\n..........")
            .unwrap();
        let mut g = TcpGroup::connect(&p1, "job-a", t).unwrap();
        let mut v = [2.0f32];
        g.all_reduce_f32(&mut v).unwrap();
        assert_eq!((v[0], root.join().unwrap()), (3.0, 3.0));
        let port = free();
        let (p0, p1) = (place(0, 2, port), place(1, 2, port));
        let root = std::thread::spawn(move || TcpGroup::connect(&p0, "job-a", t).map(|_| ()));
        let _other = TcpGroup::connect(&p1, "job-b", t);
        let e = root.join().unwrap().unwrap_err().to_string();
        assert!(e.contains("another config"), "{e}");
    }
}
