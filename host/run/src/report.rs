//! How a plan and a finished run read as text: the plan with each setting's origin and each
//! stage's estimate (what `galley plan` prints), the headline numbers of a stage, and the
//! scores of every evaluation side by side (a run's before and after). Returned as strings;
//! the binary prints them.

use crate::manifest::{PluginRecord, StageRecord};
use crate::plan::{Estimate, Plan, leaves};
use std::fmt::Write;
use std::path::Path;

/// The plan as text: the plugins (digest, signer or file), then each stage with where it came
/// from, its model's source, its estimate and every setting with its origin.
pub fn plan_text(
    file: &Path,
    run_dir: &Path,
    plugins: &[PluginRecord],
    recipe_labels: &[String],
    plan: &Plan,
    estimates: &[Option<Estimate>],
) -> String {
    let mut out = format!("plan {} -> {}\n", file.display(), run_dir.display());
    for r in plugins {
        let by = match &r.signer {
            Some(s) => format!("signed by {s}"),
            None => format!("file {}", r.path.display()),
        };
        let _ = writeln!(out, "  plugin {}  {}  {by}", r.id, r.digest);
    }
    for (i, st) in plan.stages.iter().enumerate() {
        let owners: Vec<&str> = st
            .owners
            .iter()
            .map(|(o, _)| recipe_labels[*o].as_str())
            .collect();
        let from = if owners.is_empty() {
            " from the run config".to_string()
        } else {
            format!(" from {}", owners.join(" + "))
        };
        let model = st
            .model_from
            .as_ref()
            .map(|m| format!(", model from `{m}`"))
            .unwrap_or_default();
        let _ = writeln!(out, "\n{}. {} ({}){from}{model}", i + 1, st.name, st.kind);
        if let Some(Some(e)) = estimates.get(i) {
            let n = |v: Option<u64>| v.map_or("?".into(), |s| s.to_string());
            let _ = writeln!(
                out,
                "   ~{} steps on {} examples, at most {} tokens",
                n(e.steps.map(|s| s as u64)),
                n(e.examples.map(|s| s as u64)),
                n(e.max_tokens)
            );
        }
        for (k, v) in leaves(&st.settings) {
            if k == "model.path" && st.model_from.is_some() {
                continue; // replaced by the earlier stage's model when the stage starts
            }
            let origin = st.origin.get(&k).map(String::as_str).unwrap_or("host");
            let _ = writeln!(out, "   {k:<34} {:<28} {origin}", v.to_string());
        }
    }
    out.push_str("\n(settings not listed take their defaults)\n");
    out
}

/// The numbers a stage is judged by: losses, rewards, preference accuracy, and an
/// evaluation's task scores (standard errors left out).
pub fn headline(rec: &StageRecord) -> Vec<(String, f64)> {
    const HEAD: &[&str] = &[
        "loss",
        "eval_loss",
        "reward",
        "eval_reward",
        "rewards_accuracy",
        "eval_rewards_accuracy",
    ];
    rec.metrics
        .iter()
        .filter(|(k, _)| HEAD.contains(&k.as_str()) || (k.contains('/') && rec.kind == "evaluate"))
        .filter(|(k, _)| !k.contains("stderr"))
        .map(|(k, v)| (k.clone(), *v))
        .collect()
}

/// Each task metric measured by more than one evaluation stage, side by side: the run's
/// before and after (empty when no metric was measured twice).
pub fn scores_table(stages: &[StageRecord]) -> String {
    let evals: Vec<&StageRecord> = stages.iter().filter(|s| s.kind == "evaluate").collect();
    let mut keys: Vec<&String> = evals
        .iter()
        .flat_map(|s| s.metrics.keys())
        .filter(|k| !k.contains("stderr"))
        .collect();
    keys.sort();
    keys.dedup();
    keys.retain(|k| evals.iter().filter(|s| s.metrics.contains_key(*k)).count() > 1);
    if keys.is_empty() {
        return String::new();
    }
    let mut out = format!("{:<28}", "scores");
    for s in &evals {
        let _ = write!(out, " {:>16}", s.name);
    }
    out.push('\n');
    for k in keys {
        let _ = write!(out, "{k:<28}");
        for s in &evals {
            let v = s.metrics.get(k).map_or("-".into(), |v| format!("{v:.4}"));
            let _ = write!(out, " {v:>16}");
        }
        out.push('\n');
    }
    out
}

/// The line a finished stage gets: its status, time, steps and headline metrics.
pub fn stage_line(rec: &StageRecord) -> String {
    let shown: Vec<String> = headline(rec)
        .into_iter()
        .map(|(k, v)| format!("{k} {v:.4}"))
        .collect();
    let steps = rec
        .steps
        .map(|s| format!(", {s} steps"))
        .unwrap_or_default();
    let metrics = match shown.is_empty() {
        true => String::new(),
        false => format!(": {}", shown.join(", ")),
    };
    format!(
        "      {} in {:.1} s{steps}{metrics}",
        rec.status, rec.seconds
    )
}

/// A finished run's summary: status and folder, each stage's outputs, the scores table and
/// the orchestration overhead.
pub fn run_summary(m: &crate::Manifest, run_dir: &std::path::Path) -> String {
    use std::fmt::Write;
    let mut t = String::new();
    let dir = run_dir.display();
    let _ = writeln!(t, "{} in {:.1} s; run folder {dir}", m.status, m.seconds);
    for s in &m.stages {
        for (k, path) in &s.outputs {
            let _ = writeln!(t, "  {:<16} {k:<8} {}", s.name, path.display());
        }
    }
    t.push_str(&scores_table(&m.stages));
    let overhead = m.overhead_seconds();
    let share = 100.0 * overhead / m.seconds.max(1e-9);
    let _ = writeln!(t, "orchestration {overhead:.2} s ({share:.2}% of the run)");
    t
}
