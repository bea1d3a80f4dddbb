//! The plan: what the recipes planned and the run config wrote, merged into one list of
//! stages, each with its settings and where every setting came from. Stages of several recipes
//! are concatenated in the order the recipes are listed; with `fuse: true` the k-th stage of a
//! kind in each recipe becomes one stage (reward functions and evaluation tasks joined, data
//! sources mixed). A setting two fused recipes give different values is an error naming both,
//! unless a `priority` or an override (`stage.NAME...`) settles it. Layers, lowest first: the
//! host's run-wide settings (model, seed, threads), `defaults.KIND`, the recipes' settings,
//! `stage.NAME` overrides, then what the host fixes (each stage's folder).

use crate::RunError;
use crate::config::RunConfig;
use galley_core::Stage;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// The stage kinds that train (their settings are a training config).
pub const TRAINING_KINDS: &[&str] = &["pretrain", "sft", "dpo", "grpo", "kto"];

/// What one recipe's `plan` returned.
#[derive(Debug, Clone)]
pub struct RecipePlan {
    /// `name@version`.
    pub label: String,
    pub priority: i64,
    pub stages: Vec<Stage>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PlannedStage {
    pub name: String,
    pub kind: String,
    /// The recipes (by index) that planned this stage, with the name each gave it: a recipe
    /// hears about its own stages only, under its own names.
    pub owners: Vec<(usize, String)>,
    /// The merged settings.
    pub settings: Value,
    /// Where each setting (dotted key) came from.
    pub origin: BTreeMap<String, String>,
    /// The stage whose model this one starts from (none: the run's model).
    pub model_from: Option<String>,
    /// The stage whose generated dataset this one reads (none: its own data settings).
    pub data_from: Option<String>,
}

impl PlannedStage {
    pub fn is_training(&self) -> bool {
        TRAINING_KINDS.contains(&self.kind.as_str())
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Plan {
    pub stages: Vec<PlannedStage>,
}

/// One stage as some recipe (or the run config) wrote it, before merging.
struct Contribution {
    owner: Option<usize>,
    origin: String,
    priority: i64,
    name: String,
    kind: String,
    /// Its place among the same owner's stages of the same kind (what fusion pairs up).
    ordinal: usize,
    settings: Value,
}

/// Builds the plan from the recipes' stages (in the config's order) and the run config.
pub fn build(cfg: &RunConfig, recipes: &[RecipePlan], run_dir: &Path) -> Result<Plan, RunError> {
    let mut contributions = Vec::new();
    for (ri, r) in recipes.iter().enumerate() {
        let mut seen = BTreeSet::new();
        let mut per_kind: BTreeMap<String, usize> = BTreeMap::new();
        for st in &r.stages {
            let who = format!("recipe {} (recipes[{ri}])", r.label);
            if !seen.insert(st.name.clone()) {
                return Err(RunError::Plan(format!(
                    "{who} planned two stages named `{}`",
                    st.name
                )));
            }
            check_stage_name(&st.name).map_err(|m| RunError::Plan(format!("{who}: {m}")))?;
            if !crate::STAGE_KINDS.contains(&st.kind.as_str()) {
                return Err(RunError::Plan(format!(
                    "{who}: stage `{}` is of kind `{}`, which galley does not run (it runs: {})",
                    st.name,
                    st.kind,
                    crate::STAGE_KINDS.join(", ")
                )));
            }
            let ordinal = per_kind.entry(st.kind.clone()).or_default();
            let settings = normalize(&st.kind, &st.config)
                .map_err(|m| RunError::Plan(format!("{who}, stage `{}`: {m}", st.name)))?;
            contributions.push(Contribution {
                owner: Some(ri),
                origin: who,
                priority: r.priority,
                name: st.name.clone(),
                kind: st.kind.clone(),
                ordinal: *ordinal,
                settings,
            });
            *ordinal += 1;
        }
    }
    let mut first = 0;
    for (i, st) in cfg.stages.iter().enumerate() {
        check_stage_name(&st.name)
            .map_err(|m| RunError::Plan(format!("run config `stages[{i}]`: {m}")))?;
        let settings = normalize(&st.kind, &st.settings)
            .map_err(|m| RunError::Plan(format!("run config `stages[{i}].settings`: {m}")))?;
        let c = Contribution {
            owner: None,
            origin: format!("run config stages[{i}]"),
            priority: i64::MAX,
            name: st.name.clone(),
            kind: st.kind.clone(),
            ordinal: 0,
            settings,
        };
        if st.position == crate::config::Position::First {
            contributions.insert(first, c);
            first += 1;
        } else {
            contributions.push(c);
        }
    }

    // Group: concatenated in order; with `fuse`, the k-th stage of a kind of each recipe
    // joins the first group of that kind and position that the recipe is not in yet, and the
    // group moves to where its newest member was planned: a fused stage runs after every
    // stage its recipes planned before it (two recipes' `eval` after both trainings).
    let mut groups: Vec<Vec<Contribution>> = Vec::new();
    for c in contributions {
        if cfg.fuse
            && c.owner.is_some()
            && let Some(at) = groups.iter().position(|g| {
                g[0].owner.is_some()
                    && g[0].kind == c.kind
                    && g[0].ordinal == c.ordinal
                    && !g.iter().any(|x| x.owner == c.owner)
            })
        {
            let mut g = groups.remove(at);
            g.push(c);
            groups.push(g);
            continue;
        }
        groups.push(vec![c]);
    }

    // Fusing must not reorder any recipe's own stages: each recipe's stages keep its order.
    for (ri, r) in recipes.iter().enumerate() {
        let order: Vec<(usize, &str)> = groups
            .iter()
            .enumerate()
            .flat_map(|(gi, g)| {
                g.iter()
                    .filter(|c| c.owner == Some(ri))
                    .map(move |c| (gi, c.name.as_str()))
            })
            .collect();
        let planned: Vec<&str> = r.stages.iter().map(|s| s.name.as_str()).collect();
        let mut ran: Vec<(usize, &str)> = order.clone();
        ran.sort_by_key(|(gi, _)| *gi);
        let ran: Vec<&str> = ran.into_iter().map(|(_, n)| n).collect();
        if ran != planned {
            return Err(RunError::Plan(format!(
                "fusing would run recipe {} (recipes[{ri}])'s stages as {} instead of {}: its stages and another recipe's are in different orders; set `fuse: false` or run them as separate stages",
                r.label,
                ran.join(" -> "),
                planned.join(" -> ")
            )));
        }
    }

    // Names: a name two stages share is qualified by the recipe (`curriculum.eval`).
    let mut names: Vec<String> = groups.iter().map(|g| g[0].name.clone()).collect();
    let count = |names: &[String], n: &str| names.iter().filter(|x| *x == n).count();
    let snapshot = names.clone();
    for (i, g) in groups.iter().enumerate() {
        if count(&snapshot, &names[i]) > 1
            && let Some(ri) = g[0].owner
        {
            names[i] = format!("{}.{}", short_name(&recipes[ri].label), g[0].name);
        }
    }
    for n in &names {
        if count(&names, n) > 1 {
            return Err(RunError::Plan(format!(
                "two stages are named `{n}`; rename the one in the run config's `stages`"
            )));
        }
    }
    for key in cfg.stage.keys() {
        if !names.contains(key) {
            return Err(RunError::Plan(format!(
                "run config `stage.{key}`: no stage is named `{key}` (the plan has: {})",
                names.join(", ")
            )));
        }
    }

    let mut stages: Vec<PlannedStage> = Vec::new();
    for (g, name) in groups.into_iter().zip(names) {
        let kind = g[0].kind.clone();
        let overrides = match cfg.stage.get(&name) {
            Some(v) => normalize(&kind, v)
                .map_err(|m| RunError::Plan(format!("run config `stage.{name}`: {m}")))?,
            None => json!({}),
        };
        let mut settings = json!({});
        let mut origin = BTreeMap::new();
        layer(
            &mut settings,
            &mut origin,
            &run_wide(cfg, &kind),
            "run config",
        );
        if let Some(d) = cfg.defaults.get(&kind) {
            let d = normalize(&kind, d)
                .map_err(|m| RunError::Plan(format!("run config `defaults.{kind}`: {m}")))?;
            layer(
                &mut settings,
                &mut origin,
                &d,
                &format!("run config defaults.{kind}"),
            );
        }
        let (fused, fused_origin) = fuse(&name, &g, &leaves(&overrides))?;
        if fused["data"]["mixture"].is_array()
            && let Some(d) = settings.get_mut("data").and_then(Value::as_object_mut)
        {
            // The mixture lists every training source; a default `data.train` is not one.
            d.remove("train");
            origin.retain(|k, _| !k.starts_with("data.train."));
        }
        for (k, o) in fused_origin {
            origin.insert(k, o);
        }
        layer(&mut settings, &mut BTreeMap::new(), &fused, "");
        layer(
            &mut settings,
            &mut origin,
            &overrides,
            &format!("override stage.{name}"),
        );
        let owners = g
            .iter()
            .filter_map(|c| Some((c.owner?, c.name.clone())))
            .collect();
        stages.push(PlannedStage {
            name,
            kind,
            owners,
            settings,
            origin,
            model_from: None,
            data_from: None,
        });
    }
    chain(&mut stages)?;
    for st in &mut stages {
        fix_host_settings(st, run_dir);
    }
    Ok(Plan { stages })
}

fn check_stage_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && !name.starts_with('.');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{name}` is not a stage name (letters, digits, `-`, `_`, `.`; it names a folder)"
        ))
    }
}

/// `galley/curriculum@0.2.0` -> `curriculum`.
fn short_name(label: &str) -> &str {
    let no_version = label.split('@').next().unwrap_or(label);
    no_version.rsplit('/').next().unwrap_or(no_version)
}

/// The run-wide settings a stage of `kind` starts from.
fn run_wide(cfg: &RunConfig, kind: &str) -> Value {
    let mut v = json!({});
    if TRAINING_KINDS.contains(&kind) {
        let method = if kind == "sft" { "sft" } else { kind };
        v = json!({"training": {"method": method, "seed": cfg.seed}});
        if let Some(t) = cfg.threads {
            v["training"]["threads"] = json!(t);
        }
        match &cfg.model {
            Some(Value::String(p)) => v["model"] = json!({"path": p}),
            Some(m @ Value::Object(_)) => v["model"] = m.clone(),
            _ => {}
        }
    } else if kind == "evaluate" || kind == "generate" {
        v = json!({"seed": cfg.seed});
    }
    v
}

/// The sections of a training config and their fields, from its defaults.
fn train_sections() -> Map<String, Value> {
    match serde_json::to_value(galley_train::TrainConfig::default()) {
        Ok(Value::Object(m)) => m,
        _ => Map::new(),
    }
}

/// A stage's settings with flat shorthands moved into their sections: for training kinds
/// `epochs` means `training.epochs` and `num_generations` `grpo.num_generations` (the
/// kind's own section first, then training, data, peft).
pub fn normalize(kind: &str, v: &Value) -> Result<Value, String> {
    let Value::Object(map) = v else {
        return Err("settings must be a mapping".into());
    };
    if !TRAINING_KINDS.contains(&kind) {
        return Ok(v.clone());
    }
    let sections = train_sections();
    let mut order: Vec<&str> = Vec::new();
    if kind == "grpo" || kind == "dpo" || kind == "kto" {
        order.push(kind);
    }
    order.extend(["training", "data", "peft", "grpo", "dpo", "kto"]);
    let mut out = Map::new();
    for (k, val) in map {
        if sections.contains_key(k) {
            merge_into(&mut out, k, val.clone());
            continue;
        }
        let Some(section) = order.iter().find(|s| {
            sections
                .get(**s)
                .and_then(Value::as_object)
                .is_some_and(|f| f.contains_key(k))
        }) else {
            return Err(format!(
                "unknown setting `{k}` (a training stage takes the sections {} or a field of one)",
                sections.keys().cloned().collect::<Vec<_>>().join(", ")
            ));
        };
        merge_into(&mut out, section, json!({ k: val }));
    }
    Ok(Value::Object(out))
}

fn merge_into(out: &mut Map<String, Value>, key: &str, val: Value) {
    match (out.get_mut(key), val) {
        (Some(Value::Object(a)), Value::Object(b)) => {
            for (k, v) in b {
                merge_into(a, &k, v);
            }
        }
        (_, val) => {
            out.insert(key.to_string(), val);
        }
    }
}

/// The dotted keys of `v`'s leaves (a list is one leaf).
pub fn leaves(v: &Value) -> BTreeMap<String, Value> {
    fn walk(v: &Value, prefix: &str, out: &mut BTreeMap<String, Value>) {
        match v {
            Value::Object(m) if !m.is_empty() => {
                for (k, v) in m {
                    let key = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    walk(v, &key, out);
                }
            }
            Value::Object(_) if prefix.is_empty() => {}
            _ => {
                out.insert(prefix.to_string(), v.clone());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(v, "", &mut out);
    out
}

fn set_path(root: &mut Value, key: &str, val: Value) {
    let mut node = root;
    let parts: Vec<&str> = key.split('.').collect();
    for (i, p) in parts.iter().enumerate() {
        if !node.is_object() {
            *node = json!({});
        }
        let map = node.as_object_mut().expect("made an object");
        if i + 1 == parts.len() {
            map.insert(p.to_string(), val);
            return;
        }
        node = map.entry(p.to_string()).or_insert_with(|| json!({}));
    }
}

/// Lays `top` over `base` leaf by leaf, recording `origin` for each leaf it sets.
fn layer(base: &mut Value, origin: &mut BTreeMap<String, String>, top: &Value, who: &str) {
    for (k, v) in leaves(top) {
        // A leaf replaces whatever was under it (a path given as text over a mapping...).
        origin.retain(|o, _| !(o.starts_with(&k) && o[k.len()..].starts_with('.')));
        set_path(base, &k, v);
        if !who.is_empty() {
            origin.insert(k, who.to_string());
        }
    }
}

/// Settings that fused stages join rather than choose between.
fn joins(key: &str) -> bool {
    matches!(key, "grpo.rewards" | "tasks" | "include_path")
}

/// Merges the settings of one (possibly fused) stage's contributions.
fn fuse(
    stage: &str,
    group: &[Contribution],
    overridden: &BTreeMap<String, Value>,
) -> Result<(Value, BTreeMap<String, String>), RunError> {
    let mut chosen: BTreeMap<String, (Value, String, i64)> = BTreeMap::new();
    let covered = |k: &str| {
        overridden
            .keys()
            .any(|o| o == k || (k.starts_with(o.as_str()) && k[o.len()..].starts_with('.')))
    };
    // Training sources of fused recipes are mixed, not chosen between.
    let mut settings: Vec<Value> = group.iter().map(|c| c.settings.clone()).collect();
    let mut sources: Vec<(Value, &str)> = Vec::new();
    for (c, s) in group.iter().zip(&settings) {
        if let Some(t) = s.get("data").and_then(|d| d.get("train"))
            && !sources.iter().any(|(v, _)| v == t)
        {
            sources.push((t.clone(), c.origin.as_str()));
        }
    }
    let mixed = sources.len() > 1 && !covered("data.train") && !covered("data.mixture");
    if mixed {
        for s in &mut settings {
            if let Some(d) = s.get_mut("data").and_then(Value::as_object_mut) {
                d.remove("train");
            }
        }
    }
    for (c, settings) in group.iter().zip(&settings) {
        for (k, v) in leaves(settings) {
            let Some((old, who, prio)) = chosen.get_mut(&k) else {
                chosen.insert(k, (v, c.origin.clone(), c.priority));
                continue;
            };
            if *old == v {
                *who = format!("{who} and {}", c.origin);
            } else if joins(&k)
                && let (Value::Array(a), Value::Array(b)) = (&mut *old, &v)
            {
                for x in b {
                    if k == "grpo.rewards" || !a.contains(x) {
                        a.push(x.clone());
                    }
                }
                *who = format!("{who} + {}", c.origin);
            } else if covered(&k) {
                // The override replaces both; nothing to settle.
            } else if c.priority > *prio {
                *who = format!("{} (priority {} over {who})", c.origin, c.priority);
                *old = v;
                *prio = c.priority;
            } else if c.priority < *prio {
            } else {
                return Err(RunError::Conflict(format!(
                    "stage `{stage}`: {who} sets `{k}` to {old} but {} sets it to {v}; settle it with `--set stage.{stage}.{k}=VALUE` or a higher `priority` on one recipe",
                    c.origin
                )));
            }
        }
    }
    let mut value = json!({});
    let mut origin = BTreeMap::new();
    for (k, (v, who, _)) in chosen {
        set_path(&mut value, &k, v);
        origin.insert(k, who);
    }
    if mixed {
        let who: Vec<&str> = sources.iter().map(|(_, o)| *o).collect();
        let list: Vec<Value> = sources.into_iter().map(|(v, _)| v).collect();
        set_path(&mut value, "data.mixture", Value::Array(list));
        origin.insert(
            "data.mixture".into(),
            format!("{} (mixed)", who.join(" + ")),
        );
    }
    Ok((value, origin))
}

/// Reads `{from: NAME}` at `key` (removing it) and finds the stage it names: a recipe's own
/// name for its stage first, then the plan's names.
fn take_from(stages: &mut [PlannedStage], i: usize, key: &str) -> Result<Option<String>, RunError> {
    let parts: Vec<&str> = key.split('.').collect();
    let mut node = &mut stages[i].settings;
    for p in &parts {
        match node.get_mut(*p) {
            Some(n) => node = n,
            None => return Ok(None),
        }
    }
    let Some(Value::String(target)) = node.as_object_mut().and_then(|m| m.remove("from")) else {
        return Ok(None);
    };
    if node.as_object().is_some_and(|m| m.is_empty()) {
        *node = json!({});
    }
    stages[i].origin.remove(&format!("{key}.from"));
    let me = &stages[i];
    let found = stages[..i]
        .iter()
        .find(|s| {
            s.owners
                .iter()
                .any(|(o, n)| me.owners.iter().any(|(mo, _)| mo == o) && n == &target)
        })
        .or_else(|| stages[..i].iter().find(|s| s.name == target));
    match found {
        Some(s) => Ok(Some(s.name.clone())),
        None => Err(RunError::Plan(format!(
            "stage `{}`: `{key}: {{from: {target}}}` names no earlier stage",
            me.name
        ))),
    }
}

/// Which earlier stage each stage's model and data come from.
fn chain(stages: &mut [PlannedStage]) -> Result<(), RunError> {
    for i in 0..stages.len() {
        let model_key = "model";
        let explicit = take_from(stages, i, model_key)?;
        let data_key = if stages[i].is_training() {
            "data.train"
        } else {
            "data"
        };
        let data = take_from(stages, i, data_key)?;
        let has_model = match &stages[i].settings["model"] {
            Value::String(_) => true,
            Value::Object(m) => {
                m.contains_key("init")
                    || (m.contains_key("path")
                        && stages[i]
                            .origin
                            .get("model.path")
                            .is_some_and(|o| o != "run config"))
            }
            _ => false,
        };
        let produces = |s: &PlannedStage| s.is_training() || s.kind == "merge";
        stages[i].model_from = match explicit {
            Some(x) => Some(x),
            None if has_model => None,
            None => stages[..i]
                .iter()
                .rev()
                .find(|s| produces(s))
                .map(|s| s.name.clone()),
        };
        let has_data = stages[i].is_training()
            && (stages[i].settings["data"]["train"]["path"].is_string()
                || stages[i].settings["data"]["train"]["plugin"].is_string()
                || stages[i].settings["data"]["mixture"].is_array());
        stages[i].data_from = match data {
            Some(x) => Some(x),
            None if stages[i].is_training() && !has_data => stages[..i]
                .last()
                .filter(|s| s.kind == "generate")
                .map(|s| s.name.clone()),
            None => None,
        };
    }
    Ok(())
}

/// What the host decides whatever the layers say: each stage writes into its own folder.
fn fix_host_settings(st: &mut PlannedStage, run_dir: &Path) {
    let dir = run_dir.join(&st.name).display().to_string();
    let key = match st.kind.as_str() {
        k if TRAINING_KINDS.contains(&k) => "training.output_dir",
        "evaluate" => "output",
        _ => return,
    };
    set_path(&mut st.settings, key, json!(dir));
    st.origin
        .insert(key.into(), "host (the stage's folder)".into());
}

/// What a training stage will cost, before it runs.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Estimate {
    /// Training examples (after `limit` and the held-out share), when countable up front.
    pub examples: Option<usize>,
    pub steps: Option<usize>,
    /// An upper bound: every row of every step at full length.
    pub max_tokens: Option<u64>,
}

/// The stage's training config, checked (for a training stage), and what it will cost.
pub fn estimate(st: &PlannedStage, base: &Path) -> Result<Option<Estimate>, RunError> {
    if st.kind == "merge" {
        merge_gguf(st)?;
    }
    if !st.is_training() {
        return Ok(None);
    }
    let name = format!("stage `{}`", st.name);
    let cfg = galley_train::TrainConfig::from_value(st.settings.clone(), &name, base)
        .map_err(|e| RunError::Plan(e.to_string()))?;
    let src = &cfg.data.train;
    let counted = match &src.path {
        Some(p) => count_examples(p),
        None if st.data_from.is_some() => None,
        None => src.limit,
    };
    let examples = counted
        .map(|n| src.limit.map_or(n, |l| n.min(l)))
        .map(|n| n - (n as f64 * cfg.data.validation_split) as usize);
    let t = &cfg.training;
    let grpo = st.kind == "grpo";
    let items = if grpo {
        (t.batch_size / cfg.grpo.num_generations.max(1)).max(1)
    } else {
        t.batch_size
    };
    let steps = t.max_steps.or_else(|| {
        examples.map(|n| t.epochs * (n.div_ceil(items) / t.gradient_accumulation_steps).max(1))
    });
    let row = cfg.data.max_length
        + if grpo {
            cfg.grpo.max_completion_length
        } else {
            0
        };
    let rows = (t.batch_size * t.gradient_accumulation_steps) as u64;
    Ok(Some(Estimate {
        examples,
        steps,
        max_tokens: steps.map(|s| s as u64 * rows * row as u64),
    }))
}

/// A merge stage's `gguf` setting: the type its model is also written as GGUF in
/// (`f16`, `q8_0`...), checked before the run starts.
pub fn merge_gguf(
    st: &PlannedStage,
) -> Result<Option<galley_model::gguf_export::OutType>, RunError> {
    match st.settings.get("gguf") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(t)) => t
            .parse()
            .map(Some)
            .map_err(|e| RunError::stage(&st.name, format!("`gguf`: {e}"))),
        Some(other) => Err(RunError::stage(
            &st.name,
            format!("`gguf`: expected a type name (f16, q8_0...), not {other}"),
        )),
    }
}

/// Examples in a JSONL (lines) or JSON (array) file; none for other formats.
fn count_examples(path: &Path) -> Option<usize> {
    let ext = path.extension()?.to_str()?;
    let text = std::fs::read_to_string(path).ok()?;
    match ext {
        "jsonl" => Some(text.lines().filter(|l| !l.trim().is_empty()).count()),
        "json" => serde_json::from_str::<Value>(&text)
            .ok()?
            .as_array()
            .map(Vec::len),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recipe(label: &str, priority: i64, stages: &[(&str, &str, Value)]) -> RecipePlan {
        RecipePlan {
            label: label.into(),
            priority,
            stages: stages
                .iter()
                .map(|(n, k, c)| Stage {
                    name: n.to_string(),
                    kind: k.to_string(),
                    config: c.clone(),
                })
                .collect(),
        }
    }

    fn cfg(yaml: &str) -> RunConfig {
        galley_core::config::parse(yaml, "run.yaml", &[], &galley_core::config::no_expand).unwrap()
    }

    #[test]
    fn flat_recipe_keys_land_in_their_sections() {
        let v = normalize("grpo", &json!({"epochs": 2, "beta": 0.1, "max_length": 64})).unwrap();
        assert_eq!(
            v,
            json!({"training": {"epochs": 2}, "grpo": {"beta": 0.1}, "data": {"max_length": 64}})
        );
        // `beta` is DPO's own in a DPO stage.
        let v = normalize("dpo", &json!({"beta": 0.2})).unwrap();
        assert_eq!(v, json!({"dpo": {"beta": 0.2}}));
        let v = normalize("kto", &json!({"beta": 0.2, "desirable_weight": 1.5})).unwrap();
        assert_eq!(v, json!({"kto": {"beta": 0.2, "desirable_weight": 1.5}}));
        let e = normalize("sft", &json!({"epoch": 1})).unwrap_err();
        assert!(e.contains("unknown setting `epoch`"), "{e}");
    }

    #[test]
    fn layers_in_order_and_names_their_origin() {
        let c = cfg(
            "model: m.gguf\nseed: 3\ndefaults:\n  sft: {training: {epochs: 5, batch_size: 2}}\nstage:\n  s: {training: {batch_size: 8}}\n",
        );
        let r = recipe("a/r@0.1.0", 0, &[("s", "sft", json!({"epochs": 1}))]);
        let p = build(&c, &[r], Path::new("/runs/x")).unwrap();
        let s = &p.stages[0];
        assert_eq!(
            s.settings["training"]["epochs"], 1,
            "the recipe over defaults"
        );
        assert_eq!(
            s.settings["training"]["batch_size"], 8,
            "the override over all"
        );
        assert_eq!(s.settings["training"]["seed"], 3);
        assert_eq!(s.settings["model"]["path"], "m.gguf");
        assert_eq!(s.settings["training"]["output_dir"], "/runs/x/s");
        assert_eq!(s.origin["training.epochs"], "recipe a/r@0.1.0 (recipes[0])");
        assert_eq!(s.origin["training.batch_size"], "override stage.s");
        assert_eq!(s.origin["training.seed"], "run config");
    }

    #[test]
    fn chains_models_and_qualifies_shared_names() {
        let c = cfg("model: m.gguf\nrecipes: []\nstages: [{name: x, kind: evaluate}]\n");
        let a = recipe(
            "n/a@1.0.0",
            0,
            &[("t", "sft", json!({})), ("eval", "evaluate", json!({}))],
        );
        let b = recipe(
            "n/b@1.0.0",
            0,
            &[("u", "grpo", json!({})), ("eval", "evaluate", json!({}))],
        );
        let p = build(&c, &[a, b], Path::new("/r")).unwrap();
        let names: Vec<&str> = p.stages.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["t", "a.eval", "u", "b.eval", "x"]);
        assert_eq!(p.stages[2].model_from.as_deref(), Some("t"));
        assert_eq!(p.stages[4].model_from.as_deref(), Some("u"));
        // A LoRA stage hands its adapters on; nothing merged is written for it.
        assert!(
            p.stages[0].settings["training"]
                .get("save_merged")
                .is_none()
        );
    }

    #[test]
    fn fused_recipes_conflict_unless_a_priority_settles_it() {
        let c = cfg("fuse: true\nrecipes: []\nstages: []\n");
        let a = |p| {
            recipe(
                "n/a@1.0.0",
                p,
                &[(
                    "g",
                    "grpo",
                    json!({"max_steps": 5, "grpo": {"rewards": [{"builtin": "x"}]}}),
                )],
            )
        };
        let b = |p| {
            recipe(
                "n/b@1.0.0",
                p,
                &[(
                    "g",
                    "grpo",
                    json!({"max_steps": 9, "grpo": {"rewards": [{"builtin": "y"}]}}),
                )],
            )
        };
        let e = build(&c, &[a(0), b(0)], Path::new("/r"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("n/a@1.0.0") && e.contains("n/b@1.0.0") && e.contains("training.max_steps"),
            "{e}"
        );
        let p = build(&c, &[a(0), b(1)], Path::new("/r")).unwrap();
        assert_eq!(p.stages.len(), 1);
        assert_eq!(p.stages[0].settings["training"]["max_steps"], 9);
        // Reward functions join: a weighted sum of both recipes'.
        assert_eq!(
            p.stages[0].settings["grpo"]["rewards"]
                .as_array()
                .unwrap()
                .len(),
            2
        );
        assert_eq!(p.stages[0].owners.len(), 2);
    }

    #[test]
    fn fusion_that_would_reorder_a_recipe_is_refused() {
        let c = cfg("fuse: true\nrecipes: []\nstages: []\n");
        let a = recipe(
            "n/a@1.0.0",
            0,
            &[("s", "sft", json!({})), ("e", "evaluate", json!({}))],
        );
        let b = recipe(
            "n/b@1.0.0",
            0,
            &[("e", "evaluate", json!({})), ("s", "sft", json!({}))],
        );
        let e = build(&c, &[a, b], Path::new("/r")).unwrap_err().to_string();
        assert!(e.contains("recipes[") && e.contains("fuse: false"), "{e}");
    }
}
