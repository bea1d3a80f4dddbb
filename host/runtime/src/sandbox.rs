//! The sandbox around one plugin instance: the deny-by-default WASI context, the per-call
//! limits, the memory limiter, and the captured stdout/stderr. Defaults are spelled out here,
//! not implied: no preopened directories, no environment, no arguments, no network (every
//! address denied, TCP/UDP/name lookup off), a wall clock frozen at the Unix epoch, a virtual
//! monotonic clock that moves only when the plugin reads it or sleeps (sleeps return at once:
//! see `blocking`), and randomness from a generator seeded by the host so that runs reproduce.

use bytes::Bytes;
use rand::SeedableRng;
use rand::rngs::StdRng;
use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError};
use wasmtime_wasi::{
    FsPerms, HostMonotonicClock, HostWallClock, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView,
};

/// Per-instance limits. The defaults suit a reward function scoring a GRPO group.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Wall time one call may take before it is interrupted (epoch interruption).
    pub call_timeout: Duration,
    /// The most linear memory (all memories together) the instance may grow to.
    pub memory_bytes: u64,
    /// Log lines a plugin may emit per call before the rest are dropped (with one warning).
    pub log_lines_per_call: u64,
    /// Bytes of a log line kept; the rest is cut.
    pub log_line_bytes: usize,
    /// Bytes of stdout+stderr kept (the most recent), shown when the plugin fails.
    pub stdio_tail_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            call_timeout: Duration::from_secs(10),
            memory_bytes: 256 << 20,
            log_lines_per_call: 200,
            log_line_bytes: 4096,
            stdio_tail_bytes: 16 << 10,
        }
    }
}

/// Directories the user allows plugins to read, by the logical name a manifest requests.
/// A grant is used only for a plugin whose manifest asks for that name.
#[derive(Debug, Clone, Default)]
pub struct Grants {
    pub read_dirs: BTreeMap<String, PathBuf>,
}

impl Grants {
    pub fn allow_dir(mut self, name: impl Into<String>, path: impl Into<PathBuf>) -> Self {
        self.read_dirs.insert(name.into(), path.into());
        self
    }
}

/// A memory budget several instances draw on together: an environment's live episodes (one
/// per rollout of a step), so that a plugin whose every episode grows to its own cap cannot
/// hold cap x rollouts.
#[derive(Debug)]
pub struct MemoryPool {
    cap: u64,
    used: AtomicU64,
}

impl MemoryPool {
    pub fn new(cap_bytes: u64) -> Arc<Self> {
        Arc::new(Self {
            cap: cap_bytes,
            used: AtomicU64::new(0),
        })
    }

    /// Half of this machine's memory (`MemTotal`), 16 GiB where /proc does not say: the
    /// default budget of an environment's episodes together.
    pub fn default_cap() -> u64 {
        std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| {
                let line = m.lines().find(|l| l.starts_with("MemTotal:"))?;
                line.split_whitespace().nth(1)?.parse::<u64>().ok()
            })
            .map_or(16 << 30, |kib| kib * 1024 / 2)
    }

    /// Bytes the instances drawing on it hold now.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    /// Takes `bytes` if they fit, atomically.
    fn take(&self, bytes: u64) -> Result<(), u64> {
        let mut now = self.used.load(Ordering::Relaxed);
        loop {
            let after = now.saturating_add(bytes);
            if after > self.cap {
                return Err(after);
            }
            match self
                .used
                .compare_exchange_weak(now, after, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return Ok(()),
                Err(seen) => now = seen,
            }
        }
    }

    fn give_back(&self, bytes: u64) {
        self.used.fetch_sub(bytes, Ordering::Relaxed);
    }
}

/// How an instance is made: limits, grants and the seed of its randomness.
#[derive(Debug, Clone, Default)]
pub struct InstanceOptions {
    pub limits: Limits,
    pub grants: Grants,
    pub seed: u64,
    /// A budget shared with other instances (an environment's episodes), on top of
    /// `limits.memory_bytes` for this one.
    pub pool: Option<Arc<MemoryPool>>,
    /// What `host.stage-kinds` answers a recipe: the stage kinds the embedding host runs
    /// (the runtime itself runs none, so it only passes the list on).
    pub stage_kinds: Vec<String>,
}

/// A byte sink that keeps only the last `cap` bytes and never refuses a write: a chatty plugin
/// must not fail because of its own logging, and a failing one's last words (a panic message)
/// are what the error report needs.
#[derive(Clone)]
pub(crate) struct TailPipe {
    cap: usize,
    buf: Arc<Mutex<VecDeque<u8>>>,
}

impl TailPipe {
    pub(crate) fn new(cap: usize) -> Self {
        Self {
            cap,
            buf: Arc::new(Mutex::new(VecDeque::new())),
        }
    }

    fn push(&self, bytes: &[u8]) {
        let mut buf = self.buf.lock().unwrap();
        let bytes = if bytes.len() > self.cap {
            &bytes[bytes.len() - self.cap..]
        } else {
            bytes
        };
        let overflow = (buf.len() + bytes.len()).saturating_sub(self.cap);
        buf.drain(..overflow);
        buf.extend(bytes);
    }

    /// The captured text, lossily decoded.
    pub(crate) fn text(&self) -> String {
        let buf = self.buf.lock().unwrap();
        let (a, b) = buf.as_slices();
        let mut v = a.to_vec();
        v.extend_from_slice(b);
        String::from_utf8_lossy(&v).into_owned()
    }
}

impl IsTerminal for TailPipe {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for TailPipe {
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for TailPipe {
    async fn ready(&mut self) {}
}

impl OutputStream for TailPipe {
    fn write(&mut self, bytes: Bytes) -> Result<(), StreamError> {
        self.push(&bytes);
        Ok(())
    }
    fn flush(&mut self) -> Result<(), StreamError> {
        Ok(())
    }
    fn check_write(&mut self) -> Result<usize, StreamError> {
        Ok(64 << 10)
    }
}

impl tokio::io::AsyncWrite for TailPipe {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.push(buf);
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// The wall clock a plugin sees: always the Unix epoch. A reward that depends on the time of
/// day would make runs irreproducible, and the time leaks nothing useful to honest plugins.
struct FrozenWallClock;

impl HostWallClock for FrozenWallClock {
    fn resolution(&self) -> Duration {
        Duration::from_secs(1)
    }
    fn now(&self) -> Duration {
        Duration::ZERO
    }
}

/// A monotonic clock that advances one microsecond per reading: enough for language runtimes
/// that insist time moves forward, deterministic, and useless as a timing side channel. A
/// sleep moves it to the wake-up time (`blocking`), which shares the counter.
struct CountingClock(Arc<AtomicU64>);

impl HostMonotonicClock for CountingClock {
    fn resolution(&self) -> u64 {
        1_000
    }
    fn now(&self) -> u64 {
        self.0
            .fetch_add(1_000, Ordering::Relaxed)
            .saturating_add(1_000)
    }
}

/// Caps the instance's linear memories *together* (a component may define several; a cap per
/// memory would give one with 16 memories 16 times the budget), and records the first refused
/// growth so the trap that follows can be reported as what it is: an over-allocation, with the
/// sizes.
#[derive(Debug, Default)]
pub(crate) struct MemoryLimiter {
    pub(crate) cap: u64,
    /// Bytes of every linear memory of the instance, together.
    pub(crate) total: u64,
    pub(crate) refused: Option<(u64, u64)>,
    /// The budget shared with other instances, and what it held when this one was refused
    /// by it (its cap, what the growth would have made it).
    pub(crate) pool: Option<Arc<MemoryPool>>,
    pub(crate) pool_refused: Option<(u64, u64)>,
}

impl wasmtime::ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _max: Option<usize>,
    ) -> wasmtime::Result<bool> {
        // Called for a memory's initial size too (current 0), so `total` sees every memory.
        let grow = (desired as u64).saturating_sub(current as u64);
        let after = self.total.saturating_add(grow);
        if after > self.cap {
            self.refused.get_or_insert((self.total, after));
            // Trap instead of returning -1 from memory.grow: a guest allocator would usually
            // abort anyway, and a trap here carries the sizes into the error.
            return Err(wasmtime::format_err!(
                "memory cap of {} exceeded: the plugin asked to grow its memory to {} (all its memories together)",
                human_bytes(self.cap),
                human_bytes(after)
            ));
        }
        if let Some(p) = &self.pool
            && let Err(pool_after) = p.take(grow)
        {
            self.pool_refused.get_or_insert((p.cap, pool_after));
            return Err(wasmtime::format_err!(
                "shared memory budget of {} exceeded",
                human_bytes(p.cap)
            ));
        }
        self.total = after;
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _max: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 1_000_000)
    }
}

pub(crate) fn human_bytes(n: u64) -> String {
    if n >= 1 << 30 {
        format!("{:.1} GiB", n as f64 / (1u64 << 30) as f64)
    } else {
        format!("{} MiB", n >> 20)
    }
}

/// Per-call log budget.
#[derive(Debug, Default)]
pub(crate) struct LogBudget {
    pub(crate) used: u64,
    pub(crate) warned: bool,
}

/// Everything a store holds for one plugin instance.
pub(crate) struct PluginState {
    pub(crate) plugin: String,
    wasi: WasiCtx,
    table: ResourceTable,
    pub(crate) limiter: MemoryLimiter,
    pub(crate) stdio: TailPipe,
    pub(crate) log: LogBudget,
    pub(crate) limits: Limits,
    /// The virtual monotonic clock, in nanoseconds (shared with the WASI context's clock).
    pub(crate) clock: Arc<AtomicU64>,
    pub(crate) stage_kinds: Vec<String>,
}

impl Drop for PluginState {
    /// The instance's memory goes back to the shared budget with its store.
    fn drop(&mut self) {
        if let Some(p) = &self.limiter.pool {
            p.give_back(self.limiter.total);
        }
    }
}

impl WasiView for PluginState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl PluginState {
    /// Builds the deny-by-default context. `dirs` are (host path, guest name) pairs already
    /// checked against the manifest and the user's grants.
    pub(crate) fn new(
        plugin: String,
        opts: &InstanceOptions,
        dirs: &[(PathBuf, String)],
    ) -> Result<Self, String> {
        let stdio = TailPipe::new(opts.limits.stdio_tail_bytes);
        let clock = Arc::new(AtomicU64::new(0));
        let mut b = WasiCtxBuilder::new();
        b.stdout(stdio.clone())
            .stderr(stdio.clone())
            .wall_clock(FrozenWallClock)
            .monotonic_clock(CountingClock(clock.clone()))
            .secure_random(StdRng::seed_from_u64(opts.seed))
            .insecure_random(StdRng::seed_from_u64(galley_core::seed::derive_seed(
                opts.seed,
                &[galley_core::seed::purpose::WASI_INSECURE],
            )))
            .insecure_random_seed(u128::from(opts.seed))
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .socket_addr_check(|_, _| Box::pin(async { false }));
        for (host, name) in dirs {
            b.preopened_dir(host, format!("/{name}"), FsPerms::ReadOnly)
                .map_err(|e| format!("{}: {e}", host.display()))?;
        }
        Ok(Self {
            plugin,
            wasi: b.build(),
            table: ResourceTable::new(),
            limiter: MemoryLimiter {
                cap: opts.limits.memory_bytes,
                total: 0,
                refused: None,
                pool: opts.pool.clone(),
                pool_refused: None,
            },
            stdio,
            log: LogBudget::default(),
            limits: opts.limits.clone(),
            clock,
            stage_kinds: opts.stage_kinds.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasmtime::ResourceLimiter;

    #[test]
    fn the_memory_cap_counts_every_memory_of_an_instance_together() {
        // A component may define many memories; each one asking for most of the cap must not
        // get 16 times the budget.
        let mut l = MemoryLimiter {
            cap: 256 << 20,
            ..Default::default()
        };
        assert!(l.memory_growing(0, 100 << 20, None).unwrap());
        assert!(l.memory_growing(0, 100 << 20, None).unwrap());
        assert!(l.memory_growing(0, 100 << 20, None).is_err());
        assert_eq!(l.refused, Some((200 << 20, 300 << 20)));
        // Growing an existing memory counts only the growth.
        let mut l = MemoryLimiter {
            cap: 256 << 20,
            ..Default::default()
        };
        assert!(l.memory_growing(0, 64 << 20, None).unwrap());
        assert!(l.memory_growing(64 << 20, 256 << 20, None).unwrap());
        assert!(
            l.memory_growing(256 << 20, (256 << 20) + 65536, None)
                .is_err()
        );
    }

    #[test]
    fn a_cap_near_the_top_of_u64_saturates_instead_of_wrapping() {
        let mut l = MemoryLimiter {
            cap: u64::MAX,
            total: u64::MAX - 10,
            ..Default::default()
        };
        assert!(l.memory_growing(0, usize::MAX, None).unwrap());
        assert_eq!(l.total, u64::MAX);
    }

    #[test]
    fn instances_sharing_a_pool_are_held_to_it_together() {
        let pool = MemoryPool::new(3 << 20);
        let mut a = MemoryLimiter {
            cap: 2 << 20,
            pool: Some(pool.clone()),
            ..Default::default()
        };
        let mut b = MemoryLimiter {
            cap: 2 << 20,
            pool: Some(pool.clone()),
            ..Default::default()
        };
        assert!(a.memory_growing(0, 2 << 20, None).unwrap());
        // b is within its own cap, but the two together would pass the pool's.
        assert!(b.memory_growing(0, 2 << 20, None).is_err());
        assert_eq!(b.pool_refused, Some((3 << 20, 4 << 20)));
        assert_eq!(b.total, 0, "a refused growth takes nothing");
        assert!(b.memory_growing(0, 1 << 20, None).unwrap());
        assert_eq!(pool.used(), 3 << 20);
    }
}
