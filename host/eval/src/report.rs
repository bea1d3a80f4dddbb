//! A run's report as people and tools read it: the harness's `results.json` shape (each
//! metric as `metric,filter` with its `metric_stderr,filter`, per task and per group, with
//! the task's digest and counts) and the summary table.

use crate::evaluate::{MetricValue, Report};
use serde_json::{Map, Value};

impl Report {
    /// (per-task results, per-group results), keyed by name.
    pub fn results_maps(&self) -> (Map<String, Value>, Map<String, Value>) {
        let metrics = |ms: &[MetricValue]| -> serde_json::Value {
            let mut o = serde_json::Map::new();
            for m in ms {
                o.insert(
                    format!("{},{}", m.metric, m.filter),
                    serde_json::json!(m.value),
                );
                o.insert(
                    format!("{}_stderr,{}", m.metric, m.filter),
                    serde_json::json!(m.stderr),
                );
            }
            serde_json::Value::Object(o)
        };
        let mut results = serde_json::Map::new();
        for t in &self.tasks {
            let mut r = metrics(&t.metrics);
            let o = r.as_object_mut().expect("an object");
            o.insert(
                "alias".into(),
                serde_json::json!(t.alias.clone().unwrap_or_else(|| t.task.clone())),
            );
            o.insert("n".into(), serde_json::json!(t.n));
            o.insert("num_fewshot".into(), serde_json::json!(t.num_fewshot));
            o.insert("task_digest".into(), serde_json::json!(t.digest));
            o.insert("skipped".into(), serde_json::json!(t.skipped));
            o.insert("seconds".into(), serde_json::json!(t.seconds));
            results.insert(t.task.clone(), r);
        }
        let mut groups = serde_json::Map::new();
        for g in &self.groups {
            let mut r = metrics(&g.metrics);
            let o = r.as_object_mut().expect("an object");
            o.insert("n".into(), serde_json::json!(g.n));
            o.insert("tasks".into(), serde_json::json!(g.tasks));
            groups.insert(g.group.clone(), r);
        }
        (results, groups)
    }

    /// The summary table (Markdown), MMLU's subjects folded into their groups.
    pub fn table(&self) -> String {
        let fmt = |v: f64| format!("{v:.4}");
        let mut rows: Vec<[String; 7]> = vec![];
        for t in &self.tasks {
            for m in &t.metrics {
                rows.push([
                    t.task.clone(),
                    m.filter.clone(),
                    t.num_fewshot.to_string(),
                    m.metric.clone(),
                    fmt(m.value),
                    m.stderr.map(fmt).unwrap_or_else(|| "N/A".into()),
                    m.n.to_string(),
                ]);
            }
        }
        for g in &self.groups {
            for m in &g.metrics {
                rows.push([
                    g.group.clone(),
                    m.filter.clone(),
                    String::new(),
                    m.metric.clone(),
                    fmt(m.value),
                    m.stderr.map(fmt).unwrap_or_else(|| "N/A".into()),
                    m.n.to_string(),
                ]);
            }
        }
        // Long runs of MMLU subjects: show the groups and a count instead of 57 lines.
        let subjects = self
            .tasks
            .iter()
            .filter(|t| t.task.starts_with("mmlu_"))
            .count();
        if subjects > 8 {
            rows.retain(|r| {
                !r[0].starts_with("mmlu_") || self.groups.iter().any(|g| g.group == r[0])
            });
        }
        let head = ["Task", "Filter", "n-shot", "Metric", "Value", "Stderr", "n"];
        let mut w = head.map(str::len);
        for r in &rows {
            for (i, c) in r.iter().enumerate() {
                w[i] = w[i].max(c.len());
            }
        }
        let mut out = String::new();
        let line = |out: &mut String, cells: &[String]| {
            let parts: Vec<String> = cells
                .iter()
                .enumerate()
                .map(|(i, c)| format!("{c:<0$}", w[i]))
                .collect();
            out.push_str(&format!("| {} |\n", parts.join(" | ")));
        };
        line(&mut out, &head.map(String::from));
        out.push_str(&format!(
            "|{}|\n",
            w.iter()
                .map(|n| "-".repeat(n + 2))
                .collect::<Vec<_>>()
                .join("|")
        ));
        for r in &rows {
            line(&mut out, r);
        }
        if subjects > 8 {
            out.push_str(&format!(
                "({subjects} MMLU subjects: per-subject scores in results.json)\n"
            ));
        }
        out
    }
}
