//! The shared engine: one wasmtime `Engine` (component model, epoch interruption, pooling
//! allocator), the compiled-component cache, the linker with the host imports of every
//! supported WIT version and a deny-by-default WASI, and the epoch ticker that enforces call
//! time budgets. Loading a plugin checks everything that can be checked before it runs.

use crate::cache::{CacheOutcome, ComponentCache, default_cache_dir, default_cache_key};
use crate::error::RuntimeError;
use crate::inspect::{ComponentInfo, inspect};
use crate::plugin::{ApiPre, Plugin, PluginInner};
use crate::sandbox::PluginState;
use crate::{v0_1, v0_2, v0_3, v0_4};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use wasmtime::component::Linker;
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

/// The `galley:plugin` versions this host runs, newest last.
pub const SUPPORTED_WIT: &[semver::Version] =
    &[v0_1::VERSION, v0_2::VERSION, v0_3::VERSION, v0_4::VERSION];

/// How the runtime is set up. `Default` is what the `galley` command uses.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// Where compiled components are cached; `None` compiles every time.
    pub cache_dir: Option<PathBuf>,
    /// The secret that authenticates cache entries (made on first use, 0600). Keep it out of
    /// the cache folder: whoever can write both can forge entries.
    pub cache_key: PathBuf,
    /// The cache's size bound (least recently used entries go past it); `None`: unbounded.
    /// Default: `GALLEY_COMPONENT_CACHE_MAX`, else 2 GiB.
    pub cache_limit: Option<u64>,
    /// Pre-reserve instance slots (fast instantiation, ~5-20 µs) instead of allocating on
    /// demand. Costs virtual address space only.
    pub pooling: bool,
    /// Granularity of call time budgets. Smaller is more precise and costs a wake-up per tick.
    pub epoch_tick: Duration,
    /// The wasm stack of a call; deeper recursion traps as a stack overflow.
    pub max_wasm_stack: usize,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            cache_dir: default_cache_dir(),
            cache_key: default_cache_key(),
            cache_limit: crate::cache_gc::default_cache_limit(),
            pooling: true,
            epoch_tick: Duration::from_millis(5),
            max_wasm_stack: 1 << 20,
        }
    }
}

pub(crate) struct Shared {
    pub(crate) engine: Engine,
    pub(crate) linker: Linker<PluginState>,
    cache: Option<ComponentCache>,
    pub(crate) epoch_tick: Duration,
    stop: Arc<AtomicBool>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The plugin runtime. Cheap to clone; plugins keep it alive.
#[derive(Clone)]
pub struct Runtime {
    shared: Arc<Shared>,
}

impl Runtime {
    pub fn new(config: RuntimeConfig) -> Result<Self, RuntimeError> {
        let mut c = Config::new();
        c.wasm_component_model(true);
        c.epoch_interruption(true);
        c.max_wasm_stack(config.max_wasm_stack);
        c.parallel_compilation(true);
        c.cranelift_opt_level(wasmtime::OptLevel::Speed);
        if config.pooling {
            // The pool pre-reserves slots so instantiation is a few microseconds (5-12 us
            // here, against 10-20 us on demand), which matters when a run re-instantiates a
            // plugin after a trap or per worker. What each setting costs:
            let mut pool = PoolingAllocationConfig::default();
            // Live instances at once, across every plugin of the process. A run opens a few
            // plugins (rewards, a loader, an evaluator), each possibly re-instantiated — and
            // an environment one instance per rollout of a GRPO step, all alive until the
            // step is scored: 2048 covers a step of 2048 rollouts of a Rust environment.
            // Each slot is a small host-side allocation.
            pool.total_component_instances(2048)
                // Python (componentize-py) and JS components link a dozen core modules each.
                .total_core_instances(16384)
                // Linear memories at once: each slot *reserves* (does not commit) address
                // space for `max_memory_size` plus wasmtime's guard region, so 2048 x ~4 GiB
                // is ~8 TiB of virtual address space. That is fine on 64-bit Linux (128 TiB of
                // user address space; nothing is resident until a plugin touches its pages,
                // and the memory cap of each instance is enforced separately by the store's
                // limiter). It is not fine under `ulimit -v` or `vm.overcommit_memory=2`:
                // there, set `RuntimeConfig::pooling = false` (on-demand allocation, same
                // sandbox, slower instantiation).
                .total_memories(2048)
                .total_tables(16384)
                // Fiber stacks, used only by async calls (calls here are synchronous); one
                // per instance so turning async on later needs no retuning.
                .total_stacks(256)
                // Per-component maxima sized for the biggest guest toolchains measured here
                // (componentize-py links ~12 core instances and ~4 memories).
                .max_core_instances_per_component(64)
                .max_memories_per_component(16)
                .max_tables_per_component(64)
                .max_memories_per_module(4)
                .max_tables_per_module(8)
                // Python's function tables run past 100k entries.
                .table_elements(200_000)
                // Host-side instance metadata, not guest memory.
                .max_core_instance_size(8 << 20)
                .max_component_instance_size(8 << 20)
                // The most any single memory may grow to: the ceiling of `--memory-mb`
                // (4096). The per-instance cap actually applied is the user's, via the limiter.
                .max_memory_size(4 << 30);
            c.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        }
        let engine = Engine::new(&c).map_err(|e| RuntimeError::Engine(format!("{e:#}")))?;

        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker)
            .map_err(|e| RuntimeError::Engine(format!("{e:#}")))?;
        crate::blocking::add_to_linker(&mut linker)
            .map_err(|e| RuntimeError::Engine(format!("{e:#}")))?;
        v0_1::add_to_linker(&mut linker).map_err(|e| RuntimeError::Engine(format!("{e:#}")))?;
        v0_2::add_to_linker(&mut linker).map_err(|e| RuntimeError::Engine(format!("{e:#}")))?;
        v0_3::add_to_linker(&mut linker).map_err(|e| RuntimeError::Engine(format!("{e:#}")))?;
        v0_4::add_to_linker(&mut linker).map_err(|e| RuntimeError::Engine(format!("{e:#}")))?;

        let cache = config.cache_dir.as_deref().and_then(|dir| {
            ComponentCache::open(dir, &config.cache_key, config.cache_limit, &engine)
        });

        let stop = Arc::new(AtomicBool::new(false));
        {
            let (engine, stop, tick) = (engine.clone(), stop.clone(), config.epoch_tick);
            std::thread::Builder::new()
                .name("galley-epoch".into())
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        std::thread::sleep(tick);
                        engine.increment_epoch();
                    }
                })
                .map_err(|e| RuntimeError::Engine(format!("cannot start the epoch thread: {e}")))?;
        }
        Ok(Self {
            shared: Arc::new(Shared {
                engine,
                linker,
                cache,
                epoch_tick: config.epoch_tick,
                stop,
            }),
        })
    }

    /// What the compiled-component cache holds; `None` when this runtime has no cache
    /// (none configured, or a folder it refused).
    pub fn cache_usage(&self) -> Option<std::io::Result<crate::cache_gc::CacheUsage>> {
        self.shared.cache.as_ref().map(|c| c.usage())
    }

    /// Trims the compiled-component cache to `limit` (else its configured bound) and removes
    /// entries of other galley builds and what crashes left; `None` without a cache.
    pub fn prune_cache(
        &self,
        limit: Option<u64>,
    ) -> Option<std::io::Result<crate::cache_gc::Pruned>> {
        self.shared.cache.as_ref().map(|c| c.prune(limit))
    }

    /// Loads a plugin file: reads, checks, compiles (or loads from the cache) and
    /// pre-instantiates it. Nothing of the plugin runs yet.
    pub fn load(&self, path: &Path) -> Result<Plugin, RuntimeError> {
        let bytes = std::fs::read(path).map_err(|source| RuntimeError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        self.load_bytes(&bytes, &path.display().to_string())
    }

    /// Like [`Runtime::load`], for an installed package: the bytes read must be the ones
    /// `digest` (from `galley.lock`) pins. The check costs nothing extra: loading hashes the
    /// bytes anyway, and the compiled cache is keyed by that same hash.
    pub fn load_pinned(&self, path: &Path, digest: &str) -> Result<Plugin, RuntimeError> {
        let bytes = std::fs::read(path).map_err(|source| RuntimeError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        self.load_inner(&bytes, &path.display().to_string(), Some(digest))
    }

    /// Like [`Runtime::load`], for bytes already in memory; `origin` names them in errors.
    pub fn load_bytes(&self, bytes: &[u8], origin: &str) -> Result<Plugin, RuntimeError> {
        self.load_inner(bytes, origin, None)
    }

    fn load_inner(
        &self,
        bytes: &[u8],
        origin: &str,
        pinned: Option<&str>,
    ) -> Result<Plugin, RuntimeError> {
        let info = inspect(bytes, origin)?;
        if let Some(want) = pinned
            && info.digest != want
        {
            return Err(RuntimeError::NotPinned {
                origin: origin.into(),
                pinned: want.into(),
                found: info.digest.clone(),
            });
        }
        let manifest = info
            .manifest
            .clone()
            .ok_or_else(|| RuntimeError::NoManifest {
                origin: origin.into(),
            })?;
        let id = manifest.id();
        let (kind, wit) =
            info.plugin_export
                .clone()
                .ok_or_else(|| RuntimeError::NoPluginExport {
                    origin: origin.into(),
                    exports: if info.exports.is_empty() {
                        "none".into()
                    } else {
                        info.exports.join(", ")
                    },
                })?;
        check_wit(&id, &wit)?;
        if kind != manifest.kind {
            return Err(RuntimeError::KindMismatch {
                plugin: id,
                manifest: manifest.kind.to_string(),
                exported: format!("galley:plugin/{kind}@{wit}"),
            });
        }
        check_imports(&id, &info)?;

        let (component, cache) = match &self.shared.cache {
            Some(cache) => cache.load(&self.shared.engine, bytes, &info.digest),
            None => wasmtime::component::Component::new(&self.shared.engine, bytes)
                .map(|c| (c, CacheOutcome::Disabled)),
        }
        .map_err(|e| RuntimeError::Invalid {
            origin: origin.into(),
            reason: format!("{e:#}"),
        })?;

        let pre = self
            .shared
            .linker
            .instantiate_pre(&component)
            .map_err(|e| RuntimeError::Instantiate {
                plugin: id.clone(),
                reason: format!("{e:#}"),
            })?;
        // Exhaustive over supported versions: a new WIT version adds an arm here.
        let mismatch = |e: wasmtime::Error| RuntimeError::Invalid {
            origin: origin.into(),
            reason: format!(
                "its galley:plugin/{kind}@{wit} export does not match the {}.{} interface: {e:#}",
                wit.major, wit.minor
            ),
        };
        let api = match (wit.major, wit.minor) {
            (0, 1) => ApiPre::V0_1(v0_1::pre(kind, pre).map_err(mismatch)?),
            (0, 2) => ApiPre::V0_2(v0_2::pre(kind, pre).map_err(mismatch)?),
            (0, 3) => ApiPre::V0_3(v0_3::pre(kind, pre).map_err(mismatch)?),
            (0, 4) => ApiPre::V0_4(v0_4::pre(kind, pre).map_err(mismatch)?),
            _ => unreachable!("check_wit admits only supported versions"),
        };
        Ok(Plugin {
            inner: Arc::new(PluginInner {
                id,
                manifest,
                info,
                kind,
                wit,
                api,
                cache,
                shared: self.shared.clone(),
            }),
        })
    }
}

/// A plugin built against `found` runs here if some supported version has the same major and
/// (for 0.x) minor version and is at least as new.
/// Whether this host runs plugins built against `galley:plugin@found`.
pub fn wit_supported(found: &semver::Version) -> bool {
    SUPPORTED_WIT
        .iter()
        .any(|s| s.major == found.major && (s.major > 0 || s.minor == found.minor) && s >= found)
}

fn check_wit(plugin: &str, found: &semver::Version) -> Result<(), RuntimeError> {
    if wit_supported(found) {
        return Ok(());
    }
    let newest = SUPPORTED_WIT
        .last()
        .expect("at least one supported version");
    let supported = SUPPORTED_WIT
        .iter()
        .map(|v| format!("{}.{}.x (up to {v})", v.major, v.minor))
        .collect::<Vec<_>>()
        .join(", ");
    let advice = if found > newest {
        format!(
            "upgrade galley to one that supports galley:plugin@{found}, or rebuild the plugin against galley-sdk for {newest}"
        )
    } else {
        format!("rebuild the plugin against galley-sdk for galley:plugin@{newest}")
    };
    Err(RuntimeError::UnsupportedWit {
        plugin: plugin.into(),
        found: found.to_string(),
        supported,
        advice,
    })
}

const WASI_PACKAGES: &[&str] = &[
    "wasi:cli",
    "wasi:clocks",
    "wasi:filesystem",
    "wasi:io",
    "wasi:random",
    "wasi:sockets",
];

fn check_imports(plugin: &str, info: &ComponentInfo) -> Result<(), RuntimeError> {
    for import in &info.imports {
        let ok = if let Some(rest) = import.strip_prefix("galley:plugin/") {
            let iface = rest.split('@').next().unwrap_or("");
            ["types", "log", "host"].contains(&iface)
        } else {
            // What wasmtime-wasi's p2 linker provides (wasi:http, for one, is not).
            let package = import.split('/').next().unwrap_or("");
            WASI_PACKAGES.contains(&package) && import.contains("@0.2.")
        };
        if !ok {
            return Err(RuntimeError::UnknownImport {
                plugin: plugin.into(),
                import: import.clone(),
            });
        }
    }
    Ok(())
}
