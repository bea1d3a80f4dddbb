//! A loaded plugin and the adapters that make its instances look like the plugin traits of
//! galley-core. An adapter owns one instance (a store) and re-creates it after any trap, so a
//! plugin that crashed on one input serves the next; a trap never poisons the host.

use crate::cache::CacheOutcome;
use crate::calls::{self, Call};
use crate::error::RuntimeError;
use crate::inspect::ComponentInfo;
use crate::manifest::Manifest;
use crate::sandbox::{InstanceOptions, PluginState, human_bytes};
use crate::{v0_1, v0_2, v0_3, v0_4};
use galley_core::{
    DataSource, Decision, Evaluator, Example, FunctionCall, Metric, PluginError,
    PluginErrorKind as K, PluginKind, Prediction, Recipe, RewardFn, RewardGroup, Stage, Tool,
    ToolFunction,
};
use std::path::PathBuf;
use std::sync::Arc;
use wasmtime::Store;

/// One arm per supported `galley:plugin` version.
pub(crate) enum ApiPre {
    V0_1(v0_1::Pre),
    V0_2(v0_2::Pre),
    V0_3(v0_3::Pre),
    V0_4(v0_4::Pre),
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

/// A live instance of some world of some version.
pub(crate) enum Live {
    V0_1(v0_1::Live),
    V0_2(v0_2::Live),
    V0_3(v0_3::Live),
    V0_4(v0_4::Live),
}

/// Calls the same export of whichever version `live` is.
macro_rules! dispatch {
    ($live:expr, $store:expr, $f:ident ( $($arg:expr),* )) => {
        match $live {
            $crate::plugin::Live::V0_1(l) => $crate::v0_1::$f(l, $store, $($arg),*),
            $crate::plugin::Live::V0_2(l) => $crate::v0_2::$f(l, $store, $($arg),*),
            $crate::plugin::Live::V0_3(l) => $crate::v0_3::$f(l, $store, $($arg),*),
            $crate::plugin::Live::V0_4(l) => $crate::v0_4::$f(l, $store, $($arg),*),
        }
    };
}
pub(crate) use dispatch;

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

    pub(crate) fn expect(&self, kind: PluginKind) -> Result<(), PluginError> {
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

    /// A tool instance, initialised with the user's settings; its functions are asked for
    /// and checked here, once.
    pub fn tool(
        &self,
        config: &serde_json::Value,
        opts: InstanceOptions,
    ) -> Result<WasmTool, PluginError> {
        self.expect(PluginKind::Tool)?;
        let mut slot = Slot::new(self.clone(), config, opts)?;
        let raw = slot.call("functions", |live, store| {
            dispatch!(live, store, tool_functions())
        })?;
        let functions =
            crate::tools::check_functions(raw).map_err(|m| bad_output(&slot, "functions", m))?;
        Ok(WasmTool { slot, functions })
    }
}

/// One instance slot: the store and bindings, created on demand and dropped after a trap.
pub(crate) struct Slot {
    pub(crate) plugin: Plugin,
    config: String,
    opts: InstanceOptions,
    dirs: Vec<(PathBuf, String)>,
    live: Option<(Store<PluginState>, Live)>,
    /// Set for an episode's instance, whose state is the point: after a trap it is not
    /// re-created (a fresh one would have forgotten the episode), every later call fails.
    pub(crate) once: bool,
    ended: bool,
}

impl Slot {
    pub(crate) fn new(
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
            once: false,
            ended: false,
        };
        slot.ensure("init")?;
        Ok(slot)
    }

    pub(crate) fn err(&self, call: &str, kind: K, message: impl Into<String>) -> PluginError {
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
        if self.ended {
            return Err(self.err(
                call,
                K::Failed,
                "its episode ended when the instance failed earlier (its state is gone)",
            ));
        }
        let shared = &self.plugin.inner.shared;
        let state = PluginState::new(self.plugin.id().to_string(), &self.opts, &self.dirs)
            .map_err(|m| self.err(call, K::InvalidConfig, m))?;
        let mut store = Store::new(&shared.engine, state);
        store.limiter(|s| &mut s.limiter);
        store.epoch_deadline_trap();
        store.set_epoch_deadline(self.deadline_ticks());
        let made = match &self.plugin.inner.api {
            ApiPre::V0_1(pre) => v0_1::instantiate(pre, &mut store).map(Live::V0_1),
            ApiPre::V0_2(pre) => v0_2::instantiate(pre, &mut store).map(Live::V0_2),
            ApiPre::V0_3(pre) => v0_3::instantiate(pre, &mut store).map(Live::V0_3),
            ApiPre::V0_4(pre) => v0_4::instantiate(pre, &mut store).map(Live::V0_4),
        };
        let live = match made {
            Ok(l) => l,
            Err(e) => return Err(self.classify(&store, "instantiate", e)),
        };
        let seed = self.opts.seed;
        let config = self.config.clone();
        let init: Call<()> = dispatch!(&live, &mut store, init(&config, seed));
        match init {
            Ok(Ok(())) => {
                self.live = Some((store, live));
                Ok(())
            }
            Ok(Err((kind, msg))) => Err(self.err("init", kind, msg)),
            Err(e) => Err(self.classify(&store, "init", e)),
        }
    }

    /// Runs one export under the time budget; a trap drops the instance.
    pub(crate) fn call<R>(
        &mut self,
        call: &str,
        f: impl FnOnce(&Live, &mut Store<PluginState>) -> Call<R>,
    ) -> Result<R, PluginError> {
        self.ensure(call)?;
        let ticks = self.deadline_ticks();
        let (store, live) = self.live.as_mut().expect("ensured");
        store.set_epoch_deadline(ticks);
        store.data_mut().log = Default::default();
        match f(live, store) {
            Ok(Ok(r)) => Ok(r),
            Ok(Err((kind, msg))) => Err(self.err(call, kind, msg)),
            Err(e) => {
                let (store, _) = self.live.take().expect("live");
                self.ended = self.once;
                Err(self.classify(&store, call, e))
            }
        }
    }

    /// Names a trap for what it is: timeout, memory cap, stack overflow or a plain trap, with
    /// the plugin's last output (a panic message, usually).
    fn classify(&self, store: &Store<PluginState>, call: &str, e: wasmtime::Error) -> PluginError {
        let state = store.data();
        let limits = &self.opts.limits;
        let (kind, mut msg) = if let Some((cap, asked)) = state.limiter.pool_refused {
            (
                K::OutOfMemory,
                format!(
                    "its instances together exceeded their shared memory budget of {} (this one's growth would have made it {}); an environment's episodes share one budget: raise it (`episodes_memory_mb` in the environment's config) or lower training.batch_size",
                    human_bytes(cap),
                    human_bytes(asked)
                ),
            )
        } else if let Some((_, asked)) = state.limiter.refused {
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

pub(crate) fn bad_output(slot: &Slot, call: &str, msg: String) -> PluginError {
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
        let n: usize = groups.iter().map(RewardGroup::len).sum();
        let out = self.slot.call("score", |live, store| {
            dispatch!(live, store, score_rewards(groups))
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
        let page = self.slot.call("next-page", |live, store| {
            dispatch!(live, store, next_page(max32))
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
        Ok(page)
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
        let out = self.slot.call("score", |live, store| {
            dispatch!(live, store, evaluate(batch))
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
        for m in &out {
            check_metrics(&self.slot, "score", m)?;
        }
        Ok(out)
    }

    fn aggregate(&mut self, scores: &[Vec<Metric>]) -> Result<Vec<Metric>, PluginError> {
        let out = self.slot.call("aggregate", |live, store| {
            dispatch!(live, store, aggregate(scores))
        })?;
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
        let stages = self
            .slot
            .call("plan", |live, store| dispatch!(live, store, plan(&text)))?;
        let mut out: Vec<Stage> = Vec::with_capacity(stages.len());
        for (name, kind, settings) in stages {
            // Names are identifiers (printed, used as keys): escaped and capped, never raw.
            let mut s = Stage {
                name: galley_core::text::untrusted(&name, calls::MAX_NAME),
                kind: galley_core::text::untrusted(&kind, calls::MAX_NAME),
                config: serde_json::Value::Null,
            };
            s.config = serde_json::from_str(&settings).map_err(|e| {
                bad_output(
                    &self.slot,
                    "plan",
                    format!("stage `{}` has settings that are not JSON: {e}", s.name),
                )
            })?;
            if !s.config.is_object() {
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
            out.push(s);
        }
        Ok(out)
    }

    fn on_metrics(
        &mut self,
        stage: &str,
        step: u64,
        metrics: &[Metric],
    ) -> Result<Decision, PluginError> {
        let d = self.slot.call("on-metrics", |live, store| {
            dispatch!(live, store, on_metrics(stage, step, metrics))
        })?;
        Ok(match d {
            Decision::Stop(why) => {
                Decision::Stop(galley_core::text::untrusted(&why, calls::MAX_MESSAGE))
            }
            d => d,
        })
    }
}

/// A tool plugin instance behind the [`Tool`] trait.
pub struct WasmTool {
    slot: Slot,
    functions: Vec<ToolFunction>,
}

impl Tool for WasmTool {
    fn name(&self) -> &str {
        self.slot.plugin.id()
    }

    fn functions(&self) -> &[ToolFunction] {
        &self.functions
    }

    fn call(
        &mut self,
        calls: &[FunctionCall<'_>],
    ) -> Result<Vec<Result<String, PluginError>>, PluginError> {
        checked_calls(
            &mut self.slot,
            &self.functions,
            calls,
            |live, store, sent| dispatch!(live, store, call_tool(sent)),
        )
    }
}

/// Runs a turn's `calls` through `f` after what the contract promises the plugin is checked,
/// per call: a function it offers, arguments that are a JSON object matching the top of its
/// schema (so a tool in any language gets the same checks). Only those calls cross; each
/// result is capped. Tools and environments both call through here.
#[allow(clippy::type_complexity)]
pub(crate) fn checked_calls(
    slot: &mut Slot,
    functions: &[ToolFunction],
    calls: &[FunctionCall<'_>],
    f: impl FnOnce(
        &Live,
        &mut Store<PluginState>,
        &[FunctionCall<'_>],
    ) -> Call<Vec<Result<String, (K, String)>>>,
) -> Result<Vec<Result<String, PluginError>>, PluginError> {
    let mut out: Vec<Option<Result<String, PluginError>>> = calls
        .iter()
        .map(|c| {
            let Some(f) = functions.iter().find(|f| f.name == c.name) else {
                let name = galley_core::text::untrusted(c.name, calls::MAX_NAME);
                return Some(Err(slot.err(
                    "call",
                    K::InvalidInput,
                    format!("offers no function named `{name}`"),
                )));
            };
            match serde_json::from_str::<serde_json::Value>(c.arguments) {
                Ok(serde_json::Value::Object(args)) => {
                    crate::tools::check_arguments(&f.parameters, &args)
                        .err()
                        .map(|m| Err(slot.err("call", K::InvalidInput, m)))
                }
                Ok(_) => Some(Err(slot.err(
                    "call",
                    K::InvalidInput,
                    "the arguments must be a JSON object",
                ))),
                Err(e) => Some(Err(slot.err(
                    "call",
                    K::InvalidInput,
                    format!("the arguments are not JSON: {e}"),
                ))),
            }
        })
        .collect();
    let sent: Vec<FunctionCall<'_>> = calls
        .iter()
        .zip(&out)
        .filter(|(_, o)| o.is_none())
        .map(|(c, _)| *c)
        .collect();
    if !sent.is_empty() {
        let answers = slot.call("call", |live, store| f(live, store, &sent))?;
        if answers.len() != sent.len() {
            return Err(bad_output(
                slot,
                "call",
                format!(
                    "returned {} results for a batch of {}",
                    answers.len(),
                    sent.len()
                ),
            ));
        }
        let mut answers = answers.into_iter();
        for o in out.iter_mut().filter(|o| o.is_none()) {
            let a = answers.next().expect("lengths checked");
            *o = Some(
                a.map(crate::tools::cap_result)
                    .map_err(|(kind, msg)| slot.err("call", kind, msg)),
            );
        }
    }
    Ok(out
        .into_iter()
        .map(|o| o.expect("every call answered"))
        .collect())
}
