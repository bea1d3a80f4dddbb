//! The plugins a `galley synth` config names — the prompts' data loader, reward functions and
//! an evaluator that grade completions — opened relative to the config, with each one's id and
//! digest kept for the output's provenance; and the judge's prompt template read.

use crate::open::{Opener, open_rewards, open_source};
use crate::{At, Result};
use galley_core::{Evaluator, RewardFn};
use galley_registry::PluginLocator;
use galley_runtime::{Grants, Plugin};
use galley_synth::SynthConfig;
use galley_synth::prompts::Prompt;
use std::path::Path;

/// What a synth config's plugins gave: the prompts, the graders, and their provenance.
pub struct Opened {
    pub prompts: Vec<Prompt>,
    pub rewards: Vec<Box<dyn RewardFn>>,
    pub evaluator: Option<Box<dyn Evaluator>>,
    pub judge_template: Option<String>,
    /// Each plugin: `{"key", "id", "digest"}`.
    pub plugins: Vec<serde_json::Value>,
}

/// Opens what `cfg` (read from `file`) names. Prompts come first, so a bad row fails before
/// any model loads.
pub fn open(cfg: &SynthConfig, file: &Path, sandbox: &crate::Sandbox) -> Result<Opened> {
    let name = file.display().to_string();
    let base = file.parent().unwrap_or(Path::new(""));
    let at = Opener::new(PluginLocator::for_file(Some(file)), sandbox.clone());
    let grade = cfg.grade.clone().unwrap_or_default();
    let mut plugins: Vec<serde_json::Value> = Vec::new();
    let mut record = |key: &str, p: &Plugin| {
        plugins.push(serde_json::json!({"key": key, "id": p.id(), "digest": p.info().digest}));
    };
    let prompts = if cfg.prompts.data.plugin.is_some() {
        let mut src = open_source(&cfg.prompts.data, "prompts.data", &at, &mut |_, p| {
            record("prompts.data", p);
            Ok(())
        })?
        .expect("a plugin is named");
        galley_synth::prompts::from_source(&cfg.prompts, src.as_mut())
    } else {
        galley_synth::prompts::from_file(&cfg.prompts, base)
    }
    .at(|| name.clone())?;
    let rewards = open_rewards(
        &grade.rewards,
        "grade.rewards",
        &at,
        &Grants::default(),
        sandbox.seed,
        &mut |_, p| {
            record("grade.rewards", p);
            Ok(())
        },
    )
    .at(|| name.clone())?;
    let evaluator: Option<Box<dyn Evaluator>> = match &grade.evaluator {
        Some(e) => {
            let plugin = at.load(&e.plugin, "grade.evaluator").at(|| name.clone())?;
            record("grade.evaluator", &plugin);
            let settings = e.settings.clone().unwrap_or(serde_json::json!({}));
            let ev = plugin
                .evaluator(&settings, sandbox.options(Grants::default()))
                .at(|| format!("grade.evaluator ({})", plugin.id()))?;
            Some(Box::new(ev))
        }
        None => None,
    };
    let judge_template = match grade.judge.as_ref().and_then(|j| j.template.as_ref()) {
        Some(t) => {
            let path = base.join(t);
            Some(
                std::fs::read_to_string(&path)
                    .at(|| format!("grade.judge.template: {}", path.display()))?,
            )
        }
        None => None,
    };
    Ok(Opened {
        prompts,
        rewards,
        evaluator,
        judge_template,
        plugins,
    })
}
