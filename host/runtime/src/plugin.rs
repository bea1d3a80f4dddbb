//! A loaded plugin and the adapters that make its instances look like the plugin traits of
//! galley-core. An adapter owns one instance (a store) and re-creates it after any trap, so a
//! plugin that crashed on one input serves the next; a trap never poisons the host.

use crate::cache::CacheOutcome;
use crate::error::RuntimeError;
use crate::inspect::ComponentInfo;
use crate::manifest::Manifest;
use crate::sandbox::{InstanceOptions, PluginState, human_bytes};
use crate::v0_1::{self, wit};
use galley_core::{
    DataSource, Decision, Evaluator, Example, Metric, PluginError, PluginErrorKind as K,
    PluginKind, Prediction, Recipe, RewardFn, RewardGroup, Stage,
};
use std::path::PathBuf;
use std::sync::Arc;
use wasmtime::Store;

/// Pre-instantiated components of the 0.1 interface, one variant per world.
pub(crate) enum V0_1Pre {
    Reward(v0_1::reward::RewardPluginPre<PluginState>),
    DataLoader(v0_1::data_loader::DataLoaderPluginPre<PluginState>),
    Evaluator(v0_1::evaluator::EvaluatorPluginPre<PluginState>),
    Recipe(v0_1::recipe::RecipePluginPre<PluginState>),
}

/// One arm per supported `galley:plugin` version.
pub(crate) enum ApiPre {
    V0_1(V0_1Pre),
}

pub(crate) struct PluginInner {
    pub(crate) id: String,
    pub(crate) manifest: Manifest,
    pub(crate) info: ComponentInfo,
    pub(crate) kind: PluginKind,
    pub(crate) wit: semver::Version,
    pub(crate) api: ApiPre,
    pub(crate) cache: CacheOutcome,
    pub(crate) shared: Arc<crate::engine::Shared>,
}

/// A checked, compiled, pre-instantiated plugin. Cheap to clone; make as many instances as
/// the run needs (one per worker, say).
#[derive(Clone)]
pub struct Plugin {
    pub(crate) inner: Arc<PluginInner>,
}

impl Plugin {
    /// `name@version`.
    pub fn id(&self) -> &str {
        &self.inner.id
    }
    pub fn manifest(&self) -> &Manifest {
        &self.inner.manifest
    }
    pub fn kind(&self) -> PluginKind {
        self.inner.kind
    }
    pub fn wit_version(&self) -> &semver::Version {
        &self.inner.wit
    }
    pub fn info(&self) -> &ComponentInfo {
        &self.inner.info
    }
    /// Whether loading compiled the component or found it in the cache.
    pub fn cache_outcome(&self) -> CacheOutcome {
        self.inner.cache
    }

    fn expect(&self, kind: PluginKind) -> Result<(), PluginError> {
        if self.inner.kind == kind {
            return Ok(());
        }
        let e = RuntimeError::WrongKind {
            plugin: self.id().into(),
            found: self.inner.kind.to_string(),
            expected: kind.to_string(),
        };
        Err(runtime_error(self.id(), "load", e))
    }

    /// A reward-function instance, initialised with the user's settings (a JSON object).
    pub fn reward(
        &self,
        config: &serde_json::Value,
        opts: InstanceOptions,
    ) -> Result<WasmReward, PluginError> {
        self.expect(PluginKind::Reward)?;
        Ok(WasmReward {
            slot: Slot::new(self.clone(), config, opts)?,
        })
    }

    /// A data-loader instance.
    pub fn data_loader(
        &self,
        config: &serde_json::Value,
        opts: InstanceOptions,
    ) -> Result<WasmDataSource, PluginError> {
        self.expect(PluginKind::DataLoader)?;
        Ok(WasmDataSource {
            slot: Slot::new(self.clone(), config, opts)?,
            done: false,
        })
    }

    /// An evaluator instance.
    pub fn evaluator(
        &self,
        config: &serde_json::Value,
        opts: InstanceOptions,
    ) -> Result<WasmEvaluator, PluginError> {
        self.expect(PluginKind::Evaluator)?;
        Ok(WasmEvaluator {
            slot: Slot::new(self.clone(), config, opts)?,
        })
    }

    /// A recipe instance.
    pub fn recipe(&self, opts: InstanceOptions) -> Result<WasmRecipe, PluginError> {
        self.expect(PluginKind::Recipe)?;
        Ok(WasmRecipe {
            slot: Slot::new(self.clone(), &serde_json::json!({}), opts)?,
        })
    }
}

/// A live instance of some world.
enum Live {
    Reward(v0_1::reward::RewardPlugin),
    DataLoader(v0_1::data_loader::DataLoaderPlugin),
    Evaluator(v0_1::evaluator::EvaluatorPlugin),
    Recipe(v0_1::recipe::RecipePlugin),
}

/// One instance slot: the store and bindings, created on demand and dropped after a trap.
struct Slot {
    plugin: Plugin,
    config: String,
    opts: InstanceOptions,
    dirs: Vec<(PathBuf, String)>,
    live: Option<(Store<PluginState>, Live)>,
}

type CallResult<R> = wasmtime::Result<Result<R, wit::PluginError>>;

impl Slot {
    fn new(
        plugin: Plugin,
        config: &serde_json::Value,
        opts: InstanceOptions,
    ) -> Result<Self, PluginError> {
        let id = plugin.id().to_string();
        if !config.is_object() {
            return Err(PluginError::new(
                &id,
                "init",
                K::InvalidConfig,
                "settings must be a mapping (a JSON object)",
            ));
        }
        // Capabilities: each directory the manifest asks for must be granted by the user, and
        // only those are mounted.
        let mut dirs = Vec::new();
        for name in &plugin.manifest().capabilities.read_dirs {
            let err = |e: RuntimeError| runtime_error(&id, "init", e);
            let Some(path) = opts.grants.read_dirs.get(name) else {
                return Err(err(RuntimeError::DirNotGranted {
                    plugin: id.clone(),
                    name: name.clone(),
                }));
            };
            let canonical = path.canonicalize().map_err(|e| {
                err(RuntimeError::BadGrant {
                    plugin: id.clone(),
                    name: name.clone(),
                    path: path.clone(),
                    reason: e.to_string(),
                })
            })?;
            if !canonical.is_dir() {
                return Err(err(RuntimeError::BadGrant {
                    plugin: id.clone(),
                    name: name.clone(),
                    path: path.clone(),
                    reason: "not a directory".into(),
                }));
            }
            dirs.push((canonical, name.clone()));
        }
        let mut slot = Self {
            plugin,
            config: config.to_string(),
            opts,
            dirs,
            live: None,
        };
        slot.ensure("init")?;
        Ok(slot)
    }

    fn err(&self, call: &str, kind: K, message: impl Into<String>) -> PluginError {
        PluginError::new(self.plugin.id(), call, kind, message)
    }

    fn deadline_ticks(&self) -> u64 {
        let tick = self.plugin.inner.shared.epoch_tick.as_nanos().max(1);
        (self.opts.limits.call_timeout.as_nanos() / tick) as u64 + 1
    }

    /// Instantiates and initialises when there is no live instance.
    fn ensure(&mut self, call: &str) -> Result<(), PluginError> {
        if self.live.is_some() {
            return Ok(());
        }
        let shared = &self.plugin.inner.shared;
        let state = PluginState::new(self.plugin.id().to_string(), &self.opts, &self.dirs)
            .map_err(|m| self.err(call, K::InvalidConfig, m))?;
        let mut store = Store::new(&shared.engine, state);
        store.limiter(|s| &mut s.limiter);
        store.epoch_deadline_trap();
        store.set_epoch_deadline(self.deadline_ticks());
        let ApiPre::V0_1(pre) = &self.plugin.inner.api;
        let made = match pre {
            V0_1Pre::Reward(p) => p.instantiate(&mut store).map(Live::Reward),
            V0_1Pre::DataLoader(p) => p.instantiate(&mut store).map(Live::DataLoader),
            V0_1Pre::Evaluator(p) => p.instantiate(&mut store).map(Live::Evaluator),
            V0_1Pre::Recipe(p) => p.instantiate(&mut store).map(Live::Recipe),
        };
        let live = match made {
            Ok(l) => l,
            Err(e) => return Err(self.classify(&store, "instantiate", e)),
        };
        let seed = self.opts.seed;
        let config = self.config.clone();
        let init: CallResult<()> = match &live {
            Live::Reward(b) => b.galley_plugin_reward().call_init(&mut store, &config),
            Live::DataLoader(b) => b
                .galley_plugin_data_loader()
                .call_init(&mut store, &config, seed),
            Live::Evaluator(b) => b.galley_plugin_evaluator().call_init(&mut store, &config),
            Live::Recipe(_) => Ok(Ok(())),
        };
        match init {
            Ok(Ok(())) => {
                self.live = Some((store, live));
                Ok(())
            }
            Ok(Err(e)) => {
                let (kind, msg) = v0_1::plugin_error(e);
                Err(self.err("init", kind, msg))
            }
            Err(e) => Err(self.classify(&store, "init", e)),
        }
    }

    /// Runs one export under the time budget; a trap drops the instance.
    fn call<R>(
        &mut self,
        call: &str,
        f: impl FnOnce(&Live, &mut Store<PluginState>) -> CallResult<R>,
    ) -> Result<R, PluginError> {
        self.ensure(call)?;
        let ticks = self.deadline_ticks();
        let (store, live) = self.live.as_mut().expect("ensured");
        store.set_epoch_deadline(ticks);
        store.data_mut().log = Default::default();
        match f(live, store) {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(e)) => {
                let (kind, msg) = v0_1::plugin_error(e);
                Err(self.err(call, kind, msg))
            }
            Err(e) => {
                let (store, _) = self.live.take().expect("live");
                Err(self.classify(&store, call, e))
            }
        }
    }

    /// Names a trap for what it is: timeout, memory cap, stack overflow or a plain trap, with
    /// the plugin's last output (a panic message, usually).
    fn classify(&self, store: &Store<PluginState>, call: &str, e: wasmtime::Error) -> PluginError {
        let state = store.data();
        let limits = &self.opts.limits;
        let (kind, mut msg) = if let Some((_, asked)) = state.limiter.refused {
            (
                K::OutOfMemory,
                format!(
                    "exceeded its memory cap of {} (asked to grow to {}); if the plugin needs more, raise its memory limit (`--memory-mb`, or `limits: {{memory_mb: N}}` in a config)",
                    human_bytes(limits.memory_bytes),
                    human_bytes(asked)
                ),
            )
        } else {
            match e.downcast_ref::<wasmtime::Trap>() {
                Some(wasmtime::Trap::Interrupt) => (
                    K::Timeout,
                    format!(
                        "ran past its time budget of {:.1?} and was stopped; if it is legitimately slow, raise its time budget (`--timeout-ms`, or `limits: {{timeout_ms: N}}` in a config)",
                        limits.call_timeout
                    ),
                ),
                Some(wasmtime::Trap::StackOverflow) => (
                    K::Trap,
                    "trapped: stack overflow (recursion too deep for the wasm stack)".to_string(),
                ),
                Some(wasmtime::Trap::MemoryOutOfBounds) => (
                    K::Trap,
                    format!(
                        "trapped: {} (in Rust and C plugins, usually the shadow stack overflowing in deep recursion)",
                        wasmtime::Trap::MemoryOutOfBounds
                    ),
                ),
                Some(trap) => (K::Trap, format!("trapped: {trap}")),
                None => (K::Trap, format!("failed: {e:#}")),
            }
        };
        let output = state.stdio.text();
        let output = output.trim();
        if !output.is_empty() {
            let tail: String = {
                let chars: Vec<char> = output.chars().collect();
                chars[chars.len().saturating_sub(600)..].iter().collect()
            };
            let tail = galley_core::text::untrusted(&tail.replace('\n', " | "), 2400);
            msg.push_str(&format!("; plugin output: {tail}"));
        }
        tracing::warn!(plugin = %self.plugin.id(), call, "{msg}");
        self.err(call, kind, msg)
    }
}

/// A load-time refusal about plugin `id` as the caller's configuration error (the plugin and
/// call are already in `PluginError`'s own prefix, so the message drops them).
fn runtime_error(id: &str, call: &str, e: RuntimeError) -> PluginError {
    let msg = e.to_string();
    PluginError::new(
        id,
        call,
        K::InvalidConfig,
        msg.strip_prefix(&format!("{id}: "))
            .unwrap_or(&msg)
            .to_string(),
    )
}

fn bad_output(slot: &Slot, call: &str, msg: String) -> PluginError {
    slot.err(call, K::BadOutput, msg)
}

/// A reward plugin instance behind the [`RewardFn`] trait.
pub struct WasmReward {
    slot: Slot,
}

impl RewardFn for WasmReward {
    fn name(&self) -> &str {
        self.slot.plugin.id()
    }

    fn score(&mut self, groups: &[RewardGroup<'_>]) -> Result<Vec<Option<f64>>, PluginError> {
        use v0_1::reward::exports::galley::plugin::reward::RewardGroup as WitGroup;
        let input: Vec<WitGroup> = groups
            .iter()
            .map(|g| WitGroup {
                prompt: v0_1::messages_in(g.prompt),
                metadata: v0_1::metadata_in(g.metadata),
                completions: g.completions.iter().map(|c| c.to_string()).collect(),
            })
            .collect();
        let n: usize = groups.iter().map(RewardGroup::len).sum();
        let out = self.slot.call("score", |live, store| match live {
            Live::Reward(b) => b.galley_plugin_reward().call_score(store, &input),
            _ => unreachable!("kind checked at construction"),
        })?;
        if out.len() != n {
            return Err(bad_output(
                &self.slot,
                "score",
                format!("returned {} scores for a batch of {n}", out.len()),
            ));
        }
        if let Some(i) = out.iter().position(|s| s.is_some_and(|v| !v.is_finite())) {
            return Err(bad_output(
                &self.slot,
                "score",
                format!("returned a non-finite score ({:?}) for item {i}", out[i]),
            ));
        }
        Ok(out)
    }
}

/// A data-loader plugin instance behind the [`DataSource`] trait.
pub struct WasmDataSource {
    slot: Slot,
    done: bool,
}

impl DataSource for WasmDataSource {
    fn name(&self) -> &str {
        self.slot.plugin.id()
    }

    fn next_page(&mut self, max: usize) -> Result<Vec<Example>, PluginError> {
        if self.done || max == 0 {
            return Ok(Vec::new());
        }
        let max32 = u32::try_from(max).unwrap_or(u32::MAX);
        let page = self.slot.call("next-page", |live, store| match live {
            Live::DataLoader(b) => b.galley_plugin_data_loader().call_next_page(store, max32),
            _ => unreachable!("kind checked at construction"),
        })?;
        if page.len() > max {
            return Err(bad_output(
                &self.slot,
                "next-page",
                format!(
                    "returned {} examples when at most {max} were asked for",
                    page.len()
                ),
            ));
        }
        self.done = page.is_empty();
        Ok(page
            .into_iter()
            .map(|e| Example {
                id: e.id,
                messages: v0_1::messages_out(e.messages),
                metadata: v0_1::metadata_out(e.metadata),
            })
            .collect())
    }
}

/// An evaluator plugin instance behind the [`Evaluator`] trait.
pub struct WasmEvaluator {
    slot: Slot,
}

fn check_metrics(slot: &Slot, call: &str, metrics: &[Metric]) -> Result<(), PluginError> {
    match metrics.iter().find(|m| !m.value.is_finite()) {
        Some(m) => Err(bad_output(
            slot,
            call,
            format!("returned a non-finite value for metric `{}`", m.name),
        )),
        None => Ok(()),
    }
}

impl Evaluator for WasmEvaluator {
    fn name(&self) -> &str {
        self.slot.plugin.id()
    }

    fn score(&mut self, batch: &[Prediction]) -> Result<Vec<Vec<Metric>>, PluginError> {
        use v0_1::evaluator::exports::galley::plugin::evaluator as e;
        let input: Vec<e::Prediction> = batch
            .iter()
            .map(|p| e::Prediction {
                id: p.id.clone(),
                prediction: p.prediction.clone(),
                references: p.references.clone(),
                metadata: v0_1::metadata_in(&p.metadata),
            })
            .collect();
        let out = self.slot.call("score", |live, store| match live {
            Live::Evaluator(b) => b.galley_plugin_evaluator().call_score(store, &input),
            _ => unreachable!("kind checked at construction"),
        })?;
        if out.len() != batch.len() {
            return Err(bad_output(
                &self.slot,
                "score",
                format!(
                    "returned {} results for a batch of {}",
                    out.len(),
                    batch.len()
                ),
            ));
        }
        let out: Vec<Vec<Metric>> = out.into_iter().map(v0_1::metrics_out).collect();
        for m in &out {
            check_metrics(&self.slot, "score", m)?;
        }
        Ok(out)
    }

    fn aggregate(&mut self, scores: &[Vec<Metric>]) -> Result<Vec<Metric>, PluginError> {
        let input: Vec<Vec<wit::Metric>> = scores.iter().map(|m| v0_1::metrics_in(m)).collect();
        let out = self.slot.call("aggregate", |live, store| match live {
            Live::Evaluator(b) => b.galley_plugin_evaluator().call_aggregate(store, &input),
            _ => unreachable!("kind checked at construction"),
        })?;
        let out = v0_1::metrics_out(out);
        check_metrics(&self.slot, "aggregate", &out)?;
        Ok(out)
    }
}

/// A recipe plugin instance behind the [`Recipe`] trait.
pub struct WasmRecipe {
    slot: Slot,
}

impl Recipe for WasmRecipe {
    fn name(&self) -> &str {
        self.slot.plugin.id()
    }

    fn plan(&mut self, config: &serde_json::Value) -> Result<Vec<Stage>, PluginError> {
        let text = config.to_string();
        let stages = self.slot.call("plan", |live, store| match live {
            Live::Recipe(b) => b.galley_plugin_recipe().call_plan(store, &text),
            _ => unreachable!("kind checked at construction"),
        })?;
        let mut out: Vec<Stage> = Vec::with_capacity(stages.len());
        for mut s in stages {
            // Names are identifiers (printed, used as keys): escaped and capped, never raw.
            s.name = galley_core::text::untrusted(&s.name, v0_1::MAX_NAME);
            s.kind = galley_core::text::untrusted(&s.kind, v0_1::MAX_NAME);
            let config: serde_json::Value = serde_json::from_str(&s.config).map_err(|e| {
                bad_output(
                    &self.slot,
                    "plan",
                    format!("stage `{}` has settings that are not JSON: {e}", s.name),
                )
            })?;
            if !config.is_object() {
                return Err(bad_output(
                    &self.slot,
                    "plan",
                    format!("stage `{}` has settings that are not a JSON object", s.name),
                ));
            }
            if s.name.is_empty() || s.kind.is_empty() {
                return Err(bad_output(
                    &self.slot,
                    "plan",
                    "a stage has an empty name or kind".into(),
                ));
            }
            if out.iter().any(|o| o.name == s.name) {
                return Err(bad_output(
                    &self.slot,
                    "plan",
                    format!("two stages are named `{}`", s.name),
                ));
            }
            out.push(Stage {
                name: s.name,
                kind: s.kind,
                config,
            });
        }
        Ok(out)
    }

    fn on_metrics(
        &mut self,
        stage: &str,
        step: u64,
        metrics: &[Metric],
    ) -> Result<Decision, PluginError> {
        use v0_1::recipe::exports::galley::plugin::recipe as r;
        let input = v0_1::metrics_in(metrics);
        let d = self.slot.call("on-metrics", |live, store| match live {
            Live::Recipe(b) => b
                .galley_plugin_recipe()
                .call_on_metrics(store, stage, step, &input),
            _ => unreachable!("kind checked at construction"),
        })?;
        Ok(match d {
            r::Decision::Proceed => Decision::Proceed,
            r::Decision::NextStage => Decision::NextStage,
            r::Decision::Stop(why) => {
                Decision::Stop(galley_core::text::untrusted(&why, v0_1::MAX_MESSAGE))
            }
        })
    }
}
