//! The plugin host of `galley run` and `galley eval`: recipes, training stages' loaders and
//! rewards, and evaluation tasks' evaluators and loaders, opened through one `Opener`, each
//! recorded once for the run's manifest (id, digest, file, galley.lock's signer) and, on a
//! replay, refused before any of its code runs unless its digest is the recorded one.

use crate::open::{Opener, open_train};
use crate::{At, HostingError, Result};
use galley_core::seed::{derive_seed, purpose};
use galley_core::{DataSource, Evaluator, Recipe};
use galley_registry::PluginLocator;
use galley_run::{PluginHost, PluginRecord, TrainPlugins};
use galley_runtime::{Grants, Plugin};
use galley_train::TrainConfig;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The digest a replay expects of each spec, from the recorded run.json (empty for a new run).
pub type Expected = BTreeMap<String, String>;

/// A replay refuses other bytes than the recorded run's, before the plugin runs.
fn check_expected(expect: &Expected, spec: &str, p: &Plugin) -> Result<()> {
    let digest = &p.info().digest;
    match expect.get(spec) {
        Some(want) if want != digest => Err(HostingError::Invalid(format!(
            "plugin `{spec}` ({}) is {digest}, but the recorded run used {want}: refusing to replay with other bytes",
            p.id()
        ))),
        _ => Ok(()),
    }
}

/// What the manifest says of a plugin: its id, digest, file and — for an installed package —
/// the signer galley.lock records.
fn plugin_record(
    locator: &PluginLocator,
    spec: &str,
    path: PathBuf,
    p: &Plugin,
) -> Result<PluginRecord> {
    let signer = if spec.contains('/') && !spec.ends_with(".wasm") {
        galley_registry::Lockfile::load(&locator.lock)?
            .and_then(|l| l.plugins.into_iter().find(|e| e.name.to_string() == spec))
            .and_then(|e| e.key)
    } else {
        None
    };
    Ok(PluginRecord {
        spec: spec.to_string(),
        id: p.id().to_string(),
        digest: p.info().digest.clone(),
        signer,
        path,
    })
}

/// Records a loaded plugin (once per spec) after checking a replay's digest.
fn record(
    records: &mut Vec<PluginRecord>,
    expect: &Expected,
    locator: &PluginLocator,
    spec: &str,
    p: &Plugin,
) -> Result<()> {
    check_expected(expect, spec, p)?;
    if !records.iter().any(|r| r.spec == spec) {
        let path = locator.locate(spec).unwrap_or_default();
        records.push(plugin_record(locator, spec, path, p)?);
    }
    Ok(())
}

/// Plugins evaluation tasks name (`galley eval`, a run's evaluate stages).
pub struct TaskPlugins {
    pub opener: Opener,
    /// Every plugin loaded, with the spec that named it and the file it was read from (a
    /// relative spec is taken from its task file's folder), for a run's manifest.
    pub loaded: Vec<(String, PathBuf, Plugin)>,
    pub expect: Expected,
}

impl TaskPlugins {
    pub fn new(opener: Opener, expect: Expected) -> Self {
        Self {
            opener,
            loaded: Vec::new(),
            expect,
        }
    }

    fn load(&mut self, spec: &str, named_in: Option<&Path>) -> Result<Plugin, String> {
        let opener = match named_in {
            Some(dir) => &self.opener.named_in(dir),
            None => &self.opener,
        };
        let p = opener.load(spec, "task").map_err(|e| crate::chain(&e))?;
        check_expected(&self.expect, spec, &p).map_err(|e| crate::chain(&e))?;
        let path = opener.locator.locate(spec).unwrap_or_default();
        self.loaded.push((spec.to_string(), path, p.clone()));
        Ok(p)
    }
}

impl galley_eval::Plugins for TaskPlugins {
    fn evaluator(
        &mut self,
        spec: &str,
        named_in: Option<&Path>,
        settings: &serde_json::Value,
    ) -> Result<Box<dyn Evaluator>, String> {
        let plugin = self.load(spec, named_in)?;
        let ev = plugin
            .evaluator(settings, self.opener.sandbox.options(Grants::default()))
            .map_err(|e| crate::chain(&e))?;
        Ok(Box::new(ev))
    }

    fn data_loader(
        &mut self,
        spec: &str,
        named_in: Option<&Path>,
        settings: &serde_json::Value,
        dir: &Path,
    ) -> Result<Box<dyn DataSource>, String> {
        let plugin = self.load(spec, named_in)?;
        let grants = Grants::default().allow_dir("data".to_string(), dir.to_path_buf());
        let loader = plugin
            .data_loader(settings, self.opener.sandbox.options(grants))
            .map_err(|e| crate::chain(&e))?;
        Ok(Box::new(loader))
    }

    fn check(&mut self, spec: &str, named_in: Option<&Path>) -> Result<(), String> {
        self.load(spec, named_in).map(drop)
    }
}

/// Opens the plugins a run names and remembers each for the manifest.
pub struct RunHost {
    opener: Opener,
    tasks: TaskPlugins,
    /// The run config's limits for recipes.
    limits: galley_run::config::Limits,
    seed: u64,
    records: Vec<PluginRecord>,
    expect: Expected,
    opened: usize,
}

impl RunHost {
    /// The host of the run config `cfg`, read from `file` (plugins are found relative to it).
    pub fn new(
        file: &Path,
        cfg: &galley_run::RunConfig,
        sandbox: crate::Sandbox,
        expect: Expected,
    ) -> Self {
        let opener = Opener::new(PluginLocator::for_file(Some(file)), sandbox);
        Self {
            tasks: TaskPlugins::new(opener.clone(), expect.clone()),
            opener,
            limits: cfg.limits.clone(),
            seed: cfg.seed,
            records: Vec::new(),
            expect,
            opened: 0,
        }
    }
}

impl PluginHost for RunHost {
    fn recipe(&mut self, spec: &str) -> Result<(Box<dyn Recipe>, PluginRecord), String> {
        let mut inner = || -> Result<(Box<dyn Recipe>, PluginRecord)> {
            let plugin = self.opener.load(spec, "recipes")?;
            let locator = &self.opener.locator;
            record(&mut self.records, &self.expect, locator, spec, &plugin)?;
            let seed = derive_seed(self.seed, &[purpose::PLUGIN, 1_000 + self.opened as u64]);
            let sb = self
                .opener
                .sandbox
                .with_limits(Some(self.limits.timeout_ms), Some(self.limits.memory_mb))
                .seeded(seed);
            self.opened += 1;
            let r = plugin
                .recipe(sb.options(Grants::default()))
                .at(|| plugin.id().to_string())?;
            let rec = self.records.iter().find(|r| r.spec == spec).cloned();
            Ok((Box::new(r), rec.expect("recorded above")))
        };
        inner().map_err(|e| crate::chain(&e))
    }

    fn train_plugins(&mut self, cfg: &TrainConfig, _stage: &str) -> Result<TrainPlugins, String> {
        let (records, expect) = (&mut self.records, &self.expect);
        let locator = &self.opener.locator;
        // Each plugin is loaded once, recorded (and checked) before it runs.
        let mut on_load = |spec: &str, p: &Plugin| record(records, expect, locator, spec, p);
        open_train(cfg, &self.opener, &mut on_load).map_err(|e| crate::chain(&e))
    }

    fn eval_plugins(&mut self) -> &mut dyn galley_eval::Plugins {
        &mut self.tasks
    }

    fn records(&self) -> Vec<PluginRecord> {
        let mut out = self.records.clone();
        for (spec, path, p) in &self.tasks.loaded {
            if !out.iter().any(|r| &r.spec == spec)
                && let Ok(rec) = plugin_record(&self.opener.locator, spec, path.clone(), p)
            {
                out.push(rec);
            }
        }
        out
    }
}
