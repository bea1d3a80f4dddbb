//! Opening the plugins a config names, for every command that runs them (`score`, `train`,
//! and the ones to come): the one plugin locator (galley-registry) finds the component
//! relative to the file that names it, the runtime loads it, and it is instantiated with the
//! command line's sandbox limits under the spec's own. What comes back is a core trait
//! object; the rooms below never learn it was WebAssembly.

use crate::call::SandboxArgs;
use anyhow::{Context, Result, bail};
use galley_core::seed::{derive_seed, purpose};
use galley_core::{DataSource, RewardFn};
use galley_registry::PluginLocator;
use galley_runtime::{Grants, Plugin, Runtime};
use galley_train::config::RewardSpec;
use galley_train::config::SourceSection;

/// Told of each plugin after it is loaded and before any of its code runs (a run records it
/// for its manifest, a replay refuses bytes other than the recorded ones); an error stops.
pub type OnLoad<'a> = dyn FnMut(&str, &Plugin) -> Result<()> + 'a;

/// The `OnLoad` of commands that keep no record.
pub fn no_record(_: &str, _: &Plugin) -> Result<()> {
    Ok(())
}

/// Finds and loads the component `spec` names (an installed package only if its bytes are
/// the ones galley.lock pins); errors name the config key `KEY.plugin`.
pub fn load(spec: &str, key: &str, locator: &PluginLocator, rt: &Runtime) -> Result<Plugin> {
    let found = locator
        .locate_pinned(spec)
        .with_context(|| format!("{key}.plugin"))?;
    match &found.pinned {
        Some(digest) => rt.load_pinned(&found.path, digest),
        None => rt.load(&found.path),
    }
    .with_context(|| format!("{key}.plugin: {}", found.path.display()))
}

/// Where a command's plugins are found and the limits they run under.
pub struct Opener<'a> {
    pub locator: &'a PluginLocator,
    pub sandbox: &'a SandboxArgs,
}

/// Opens `specs` in order; `key` names the config list (e.g. `grpo.rewards`) for errors.
/// Plugin `i` is seeded `derive_seed(seed, [PLUGIN, i])`, so two plugins never share a stream.
pub fn open_rewards(
    specs: &[RewardSpec],
    key: &str,
    at: &Opener<'_>,
    runtime: Option<&Runtime>,
    grants: &Grants,
    seed: u64,
    on_load: &mut OnLoad<'_>,
) -> Result<Vec<Box<dyn RewardFn>>> {
    let mut out: Vec<Box<dyn RewardFn>> = Vec::new();
    for (i, spec) in specs.iter().enumerate() {
        let key = format!("{key}[{i}]");
        match (&spec.plugin, &spec.builtin, runtime) {
            (Some(name), None, Some(rt)) => {
                let plugin = load(name, &key, at.locator, rt)?;
                on_load(name, &plugin)?;
                let mut sb = at.sandbox.clone();
                sb.timeout_ms = spec.limits.timeout_ms.unwrap_or(sb.timeout_ms);
                sb.memory_mb = spec.limits.memory_mb.unwrap_or(sb.memory_mb);
                sb.seed = derive_seed(seed, &[purpose::PLUGIN, i as u64]);
                let settings = spec.settings.clone().unwrap_or(serde_json::json!({}));
                let reward = plugin
                    .reward(&settings, sb.options(grants.clone()))
                    .with_context(|| format!("{key} ({})", plugin.id()))?;
                out.push(Box::new(reward));
            }
            (None, Some(name), _) => {
                out.push(galley_train::rewards::builtin(name).with_context(|| key.clone())?)
            }
            (Some(_), Some(_), _) => bail!("{key}: give `plugin` or `builtin`, not both"),
            (Some(_), None, None) => unreachable!("a runtime is opened whenever a plugin is named"),
            (None, None, _) => bail!("{key}: give `plugin` or `builtin`"),
        }
    }
    Ok(out)
}

/// The data-loader plugin of a data source, if it names one, with its granted folders.
pub fn open_source(
    src: &SourceSection,
    key: &str,
    at: &Opener<'_>,
    runtime: &Runtime,
    on_load: &mut OnLoad<'_>,
) -> Result<Option<Box<dyn DataSource>>> {
    let Some(spec) = &src.plugin else {
        return Ok(None);
    };
    let plugin = load(spec, key, at.locator, runtime)?;
    on_load(spec, &plugin)?;
    let mut grants = Grants::default();
    for (name, dir) in &src.plugin_dirs {
        grants = grants.allow_dir(name.clone(), dir.clone());
    }
    let settings = src.plugin_config.clone().unwrap_or(serde_json::json!({}));
    let loader = plugin
        .data_loader(&settings, at.sandbox.options(grants))
        .with_context(|| format!("{key}.plugin ({})", plugin.id()))?;
    Ok(Some(Box::new(loader)))
}
