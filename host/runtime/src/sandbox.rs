//! The sandbox around one plugin instance: the deny-by-default WASI context, the per-call
//! limits, the memory limiter, and the captured stdout/stderr. Defaults are spelled out here,
//! not implied: no preopened directories, no environment, no arguments, no network (every
//! address denied, TCP/UDP/name lookup off), a wall clock frozen at the Unix epoch, a monotonic
//! clock that only moves when the plugin reads it, and randomness from a generator seeded by
//! the host so that runs reproduce.

use bytes::Bytes;
use rand::SeedableRng;
use rand::rngs::StdRng;
use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::pin::Pin;
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
    pub log_lines_per_call: u32,
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

/// How an instance is made: limits, grants and the seed of its randomness.
#[derive(Debug, Clone, Default)]
pub struct InstanceOptions {
    pub limits: Limits,
    pub grants: Grants,
    pub seed: u64,
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
/// that insist time moves forward, deterministic, and useless as a timing side channel.
struct CountingClock(Mutex<u64>);

impl HostMonotonicClock for CountingClock {
    fn resolution(&self) -> u64 {
        1_000
    }
    fn now(&self) -> u64 {
        let mut t = self.0.lock().unwrap();
        *t += 1_000;
        *t
    }
}

/// Records the first refused memory growth, so the trap that follows can be reported as what
/// it is: an over-allocation, with the sizes.
#[derive(Debug, Default)]
pub(crate) struct MemoryLimiter {
    pub(crate) cap: u64,
    pub(crate) refused: Option<(u64, u64)>,
}

impl wasmtime::ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _max: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired as u64 > self.cap {
            self.refused.get_or_insert((current as u64, desired as u64));
            // Trap instead of returning -1 from memory.grow: a guest allocator would usually
            // abort anyway, and a trap here carries the sizes into the error.
            return Err(wasmtime::format_err!(
                "memory cap of {} exceeded: the plugin asked to grow its memory to {}",
                human_bytes(self.cap),
                human_bytes(desired as u64)
            ));
        }
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
    pub(crate) used: u32,
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
        let mut b = WasiCtxBuilder::new();
        b.stdout(stdio.clone())
            .stderr(stdio.clone())
            .wall_clock(FrozenWallClock)
            .monotonic_clock(CountingClock(Mutex::new(0)))
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
                refused: None,
            },
            stdio,
            log: LogBudget::default(),
            limits: opts.limits.clone(),
        })
    }
}
