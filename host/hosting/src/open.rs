//! Opening the plugins a config names, for every command that runs them: the one plugin
//! locator (galley-registry) finds the component relative to the file that names it, the
//! runtime loads it (an installed package only with the bytes galley.lock pins), and it is
//! started with the command's sandbox limits under the spec's own. What comes back is a core
//! trait object; the rooms below never learn it was WebAssembly.

use crate::{At, HostingError, Result, Sandbox};
use galley_core::seed::{derive_seed, purpose};
use galley_core::{DataSource, Environment, RewardFn, Tool};
use galley_registry::PluginLocator;
use galley_run::TrainPlugins;
use galley_runtime::{Grants, Plugin, Runtime};
use galley_train::TrainConfig;
use galley_train::config::{EnvironmentSpec, Objective, RewardSpec, SourceSection, ToolSpec};
use std::sync::{Arc, OnceLock};

/// Told of each plugin after it is loaded and before any of its code runs (a run records it
/// for its manifest, a replay refuses bytes other than the recorded ones); an error stops.
pub type OnLoad<'a> = dyn FnMut(&str, &Plugin) -> Result<()> + 'a;

/// The `OnLoad` of commands that keep no record.
pub fn no_record(_: &str, _: &Plugin) -> Result<()> {
    Ok(())
}

/// Where a command's plugins are found, the limits they run under, and the runtime, opened
/// on first use (a config that names no plugin never starts one). Clones share the runtime.
#[derive(Clone)]
pub struct Opener {
    pub locator: PluginLocator,
    pub sandbox: Sandbox,
    runtime: Arc<OnceLock<Runtime>>,
}

impl Opener {
    pub fn new(locator: PluginLocator, sandbox: Sandbox) -> Self {
        Self {
            locator,
            sandbox,
            runtime: Arc::default(),
        }
    }

    /// The same opener for names written in a file in `dir` (a task file): relative paths
    /// are taken from there; the runtime is shared.
    pub fn named_in(&self, dir: &std::path::Path) -> Self {
        Self {
            locator: self.locator.named_in(dir),
            ..self.clone()
        }
    }

    pub fn runtime(&self) -> Result<&Runtime> {
        if let Some(rt) = self.runtime.get() {
            return Ok(rt);
        }
        let rt = self.sandbox.runtime()?;
        Ok(self.runtime.get_or_init(|| rt))
    }

    /// Finds and loads the component `spec` names (an installed package only if its bytes
    /// are the ones galley.lock pins); errors name the config key `KEY.plugin`.
    pub fn load(&self, spec: &str, key: &str) -> Result<Plugin> {
        let found = self
            .locator
            .locate_pinned(spec)
            .at(|| format!("{key}.plugin"))?;
        let rt = self.runtime()?;
        match &found.pinned {
            Some(digest) => rt.load_pinned(&found.path, digest),
            None => rt.load(&found.path),
        }
        .at(|| format!("{key}.plugin: {}", found.path.display()))
    }
}

/// Opens `specs` in order; `key` names the config list (e.g. `grpo.rewards`) for errors.
/// Plugin `i` is seeded `derive_seed(seed, [PLUGIN, i])`, so two plugins never share a stream.
pub fn open_rewards(
    specs: &[RewardSpec],
    key: &str,
    at: &Opener,
    grants: &Grants,
    seed: u64,
    on_load: &mut OnLoad<'_>,
) -> Result<Vec<Box<dyn RewardFn>>> {
    let mut out: Vec<Box<dyn RewardFn>> = Vec::new();
    for (i, spec) in specs.iter().enumerate() {
        let key = format!("{key}[{i}]");
        match (&spec.plugin, &spec.builtin) {
            (Some(name), None) => {
                let plugin = at.load(name, &key)?;
                on_load(name, &plugin)?;
                let sb = at
                    .sandbox
                    .with_limits(spec.limits.timeout_ms, spec.limits.memory_mb)
                    .seeded(derive_seed(seed, &[purpose::PLUGIN, i as u64]));
                let settings = spec.settings.clone().unwrap_or(serde_json::json!({}));
                let reward = plugin
                    .reward(&settings, sb.options(grants.clone()))
                    .at(|| format!("{key} ({})", plugin.id()))?;
                out.push(Box::new(reward));
            }
            (None, Some(name)) => out.push(galley_train::rewards::builtin(name).at(|| key)?),
            (Some(_), Some(_)) => {
                return Err(HostingError::At {
                    at: key,
                    message: "give `plugin` or `builtin`, not both".into(),
                });
            }
            (None, None) => {
                return Err(HostingError::At {
                    at: key,
                    message: "give `plugin` or `builtin`".into(),
                });
            }
        }
    }
    Ok(out)
}

/// Opens the tool plugins `specs` names, in order (`key`: the config list, e.g.
/// `grpo.tools`). Tool `i` is seeded `derive_seed(seed, [TOOL, i])`.
pub fn open_tools(
    specs: &[ToolSpec],
    key: &str,
    at: &Opener,
    seed: u64,
    on_load: &mut OnLoad<'_>,
) -> Result<Vec<Box<dyn Tool>>> {
    let mut out: Vec<Box<dyn Tool>> = Vec::new();
    for (i, spec) in specs.iter().enumerate() {
        let key = format!("{key}[{i}]");
        let plugin = at.load(&spec.plugin, &key)?;
        on_load(&spec.plugin, &plugin)?;
        let sb = at
            .sandbox
            .with_limits(spec.limits.timeout_ms, spec.limits.memory_mb)
            .seeded(derive_seed(seed, &[purpose::TOOL, i as u64]));
        let settings = spec.settings.clone().unwrap_or(serde_json::json!({}));
        let tool = plugin
            .tool(&settings, sb.options(Grants::default()))
            .at(|| format!("{key} ({})", plugin.id()))?;
        out.push(Box::new(tool));
    }
    Ok(out)
}

/// The data-loader plugin of a data source, if it names one, with its granted folders.
pub fn open_source(
    src: &SourceSection,
    key: &str,
    at: &Opener,
    on_load: &mut OnLoad<'_>,
) -> Result<Option<Box<dyn DataSource>>> {
    let Some(spec) = &src.plugin else {
        return Ok(None);
    };
    let plugin = at.load(spec, key)?;
    on_load(spec, &plugin)?;
    let mut grants = Grants::default();
    for (name, dir) in &src.plugin_dirs {
        grants = grants.allow_dir(name.clone(), dir.clone());
    }
    let settings = src.plugin_config.clone().unwrap_or(serde_json::json!({}));
    let loader = plugin
        .data_loader(&settings, at.sandbox.options(grants))
        .at(|| format!("{key}.plugin ({})", plugin.id()))?;
    Ok(Some(Box::new(loader)))
}

/// Every plugin a training config names — its data sources' loaders and, for GRPO, its
/// reward functions, tools and environment — opened for `galley train` and for a run's training stages alike.
pub fn open_train(
    cfg: &TrainConfig,
    at: &Opener,
    on_load: &mut OnLoad<'_>,
) -> Result<TrainPlugins> {
    let mut out = TrainPlugins {
        train: open_source(&cfg.data.train, "data.train", at, on_load)?,
        ..Default::default()
    };
    if let Some(src) = &cfg.data.validation {
        out.validation = open_source(src, "data.validation", at, on_load)?;
    }
    for (i, src) in cfg.data.mixture.iter().enumerate() {
        let key = format!("data.mixture[{i}]");
        out.mixture.push(open_source(src, &key, at, on_load)?);
    }
    if cfg.objective() == Objective::Grpo {
        out.rewards = open_rewards(
            &cfg.grpo.rewards,
            "grpo.rewards",
            at,
            &Grants::default(),
            cfg.training.seed,
            on_load,
        )?;
        out.tools = open_tools(
            &cfg.grpo.tools,
            "grpo.tools",
            at,
            cfg.training.seed,
            on_load,
        )?;
        for (_, key, spec) in cfg.grpo.environment_specs() {
            let key = format!("grpo.{key}");
            out.environments.push(open_environment(
                spec,
                &key,
                at,
                cfg.training.seed,
                on_load,
            )?);
        }
    }
    Ok(out)
}

/// GRPO's environment (`grpo.environment`): its functions are asked of one instance here;
/// each episode is a fresh instance under the spec's limits (and all of them together under
/// `episodes_memory_mb`), its sandbox seeded
/// `derive_seed(seed, [EPISODE])` (the same in every episode, so a group's rollouts start
/// alike; each episode's `reset` gets a seed of its own prompt).
pub fn open_environment(
    spec: &EnvironmentSpec,
    key: &str,
    at: &Opener,
    seed: u64,
    on_load: &mut OnLoad<'_>,
) -> Result<Box<dyn Environment>> {
    let plugin = at.load(&spec.plugin, key)?;
    on_load(&spec.plugin, &plugin)?;
    let sb = at
        .sandbox
        .with_limits(spec.limits.timeout_ms, spec.limits.memory_mb)
        .seeded(derive_seed(seed, &[purpose::EPISODE]));
    let settings = spec.settings.clone().unwrap_or(serde_json::json!({}));
    let mut opts = sb.options(Grants::default());
    opts.pool = spec
        .episodes_memory_mb
        .map(|mb| galley_runtime::MemoryPool::new(mb << 20));
    let env = plugin
        .environment(&settings, opts)
        .at(|| format!("{key} ({})", plugin.id()))?;
    Ok(Box::new(env))
}
