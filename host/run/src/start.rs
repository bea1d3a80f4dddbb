//! Starting a run from its config: the run folder chosen, each recipe opened through the
//! `PluginHost` and asked for its stages, the plans merged (`Planned`); what `galley plan`
//! checks before anything runs; what a resumed run keeps; the manifest a run starts with;
//! and the replay's starting point (the recorded config, overrides and folder).

use crate::manifest::{FileRecord, Manifest, StageRecord};
use crate::plan::{Estimate, Plan};
use crate::{PluginHost, RecipePlan, RunConfig, RunError};
use galley_core::Recipe;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// A run config read, its recipes opened and asked for their plans, the plan merged.
pub struct Planned {
    pub cfg: RunConfig,
    pub file: PathBuf,
    /// The folder relative paths in the config are taken from (absolute).
    pub base: PathBuf,
    pub run_dir: PathBuf,
    /// Each recipe with its `name@version`, in the config's order.
    pub recipes: Vec<(String, Box<dyn Recipe>)>,
    pub plan: Plan,
    /// Seconds the planning took.
    pub seconds: f64,
}

fn io(path: &Path, e: std::io::Error) -> RunError {
    RunError::Io(format!("{}: {e}", path.display()))
}

/// Plans the run `cfg` (read from `file`) into `run_dir` (default: the config's
/// `output_dir`), opening its recipes through `host`.
pub fn plan_run(
    file: &Path,
    cfg: RunConfig,
    run_dir: Option<PathBuf>,
    host: &mut dyn PluginHost,
) -> Result<Planned, RunError> {
    let started = Instant::now();
    // `run.yaml` in the current folder has an empty parent.
    let parent = file.parent().filter(|p| !p.as_os_str().is_empty());
    let dot = Path::new(".");
    let base = std::path::absolute(parent.unwrap_or(dot)).map_err(|e| io(dot, e))?;
    let stem = file
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "run".into());
    let run_dir = match run_dir {
        Some(d) => std::path::absolute(&d).map_err(|e| io(&d, e))?,
        None => cfg.run_dir(&base, &stem),
    };
    let mut recipes = Vec::new();
    let mut plans = Vec::new();
    for (i, r) in cfg.recipes.iter().enumerate() {
        let at = format!("{}: `recipes[{i}]`", file.display());
        let (mut recipe, rec) = host
            .recipe(&r.plugin)
            .map_err(|e| RunError::Plugin(format!("{at}: {e}")))?;
        let stages = recipe
            .plan(&r.settings)
            .map_err(|e| RunError::Plugin(format!("{at} ({}): {e}", rec.id)))?;
        plans.push(RecipePlan {
            label: rec.id.clone(),
            priority: r.priority,
            stages,
        });
        recipes.push((rec.id, recipe));
    }
    let plan = crate::plan::build(&cfg, &plans, &run_dir)
        .map_err(|e| RunError::Plan(format!("{}: {e}", file.display())))?;
    Ok(Planned {
        cfg,
        file: file.to_path_buf(),
        base,
        run_dir,
        recipes,
        plan,
        seconds: started.elapsed().as_secs_f64(),
    })
}

impl Planned {
    /// Every stage's settings checked (and its size estimated) before the first one runs.
    pub fn estimates(&self) -> Result<Vec<Option<Estimate>>, RunError> {
        self.plan
            .stages
            .iter()
            .map(|st| crate::plan::estimate(st, &self.base))
            .collect()
    }

    /// What `galley plan` checks beyond `estimates`: each training stage's plugins resolved
    /// and verified as the run will open them, and `check_evaluations`.
    pub fn verify(&self, host: &mut dyn PluginHost) -> Result<Vec<Option<Estimate>>, RunError> {
        let estimates = self.estimates()?;
        for st in &self.plan.stages {
            if st.is_training() {
                let cfg = galley_train::TrainConfig::from_value(
                    st.settings.clone(),
                    &st.name,
                    &self.base,
                )
                .map_err(|e| RunError::Config(e.to_string()))?;
                host.train_plugins(&cfg, &st.name)
                    .map_err(|e| RunError::stage(&st.name, e))?;
            }
        }
        self.check_evaluations(host)?;
        Ok(estimates)
    }

    /// Each evaluation stage's settings read, its tasks and their data found, and the
    /// plugins they name located and loaded (not started): `galley run` does this before the first stage, so a
    /// misspelt task or a missing metric plugin fails in a second, not after the training.
    pub fn check_evaluations(&self, host: &mut dyn PluginHost) -> Result<(), RunError> {
        for st in self.plan.stages.iter().filter(|s| s.kind == "evaluate") {
            let mut s = galley_eval::EvalSettings::from_value(st.settings.clone())
                .map_err(|e| RunError::stage(&st.name, e))?;
            s.relative_to(&self.base);
            let (tasks, _) = s.select().map_err(|e| RunError::stage(&st.name, e))?;
            galley_eval::check_tasks(&tasks, &s.options(), host.eval_plugins())
                .map_err(|e| RunError::stage(&st.name, e))?;
        }
        Ok(())
    }

    /// What a resumed run keeps of the earlier attempt in its folder: the completed stages
    /// and recorded data (none, and `None`, when there is no run.json yet).
    #[allow(clippy::type_complexity)]
    pub fn kept(
        &self,
        overrides: &[String],
    ) -> Result<Option<(Vec<StageRecord>, Vec<FileRecord>)>, RunError> {
        let path = self.run_dir.join("run.json");
        if !path.exists() {
            return Ok(None);
        }
        let cfg = serde_json::to_value(&self.cfg).expect("a config serializes");
        Manifest::read(&path)?
            .kept_for_resume(&path, &cfg, overrides, &self.plan)
            .map(Some)
    }

    /// The manifest the run starts with.
    pub fn manifest(
        &self,
        revision: Option<&str>,
        overrides: Vec<String>,
        plugins: Vec<crate::PluginRecord>,
        data: Vec<FileRecord>,
        threads: usize,
    ) -> Result<Manifest, RunError> {
        Ok(Manifest {
            galley_version: env!("CARGO_PKG_VERSION").into(),
            galley_revision: revision.map(String::from),
            config_file: std::path::absolute(&self.file).map_err(|e| io(&self.file, e))?,
            config: self.cfg.clone(),
            overrides,
            plan: self.plan.clone(),
            plugins,
            model: None,
            data,
            seed: self.cfg.seed,
            threads,
            stages: Vec::new(),
            status: "running".into(),
            seconds: 0.0,
            planning_seconds: self.seconds,
            bookkeeping_seconds: 0.0,
        })
    }
}

/// A replay's starting point, from its recorded run.json: the config file, the config and
/// overrides as recorded, and its folder (`output`, else the recorded one + `-replay`).
/// The recorded data must still have its digests.
pub fn replay_start(
    recorded: &Manifest,
    manifest_path: &Path,
    output: Option<PathBuf>,
) -> Result<PathBuf, RunError> {
    recorded.check_data()?;
    Ok(output.unwrap_or_else(|| {
        let parent = manifest_path.parent().unwrap_or(Path::new("."));
        let name = parent.file_name().map(|n| n.to_string_lossy().into_owned());
        parent.with_file_name(format!("{}-replay", name.unwrap_or("run".into())))
    }))
}

impl Manifest {
    /// A replay refuses another model than the recorded one.
    pub fn check_model(&self) -> Result<(), RunError> {
        if let Some(model) = &self.model {
            let now = crate::manifest::digest_path(&model.path)?;
            if now != model.digest {
                return Err(RunError::Replay(format!(
                    "{}: the model is {now}, but {} recorded {}",
                    model.path.display(),
                    self.config_file.display(),
                    model.digest
                )));
            }
        }
        Ok(())
    }

    /// The digest each recorded plugin spec had, for the replay's host to insist on.
    pub fn plugin_digests(&self) -> std::collections::BTreeMap<String, String> {
        self.plugins
            .iter()
            .map(|p| (p.spec.clone(), p.digest.clone()))
            .collect()
    }
}
