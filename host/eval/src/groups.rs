//! Groups: a group's figure is the size-weighted (or plain) mean of its members' — tasks or
//! other groups — and its standard error the harness's pooled one.

use crate::evaluate::{GroupResult, MetricValue, TaskResult};
use crate::metrics;
use crate::task::GroupConfig;

/// Groups over task results (and over other groups, in the order given: members first).
pub(crate) fn aggregate_groups(groups: &[GroupConfig], tasks: &[TaskResult]) -> Vec<GroupResult> {
    let mut out: Vec<GroupResult> = vec![];
    // Members may be groups defined later in the list: resolve by repeated passes.
    let mut pending: Vec<&GroupConfig> = groups.iter().collect();
    while !pending.is_empty() {
        let before = pending.len();
        pending.retain(|g| {
            let ready = g
                .task
                .iter()
                .all(|m| tasks.iter().any(|t| &t.task == m) || out.iter().any(|o| &o.group == m));
            if !ready {
                return true;
            }
            out.push(aggregate_one(g, tasks, &out));
            false
        });
        if pending.len() == before {
            break;
        }
    }
    out
}

fn aggregate_one(g: &GroupConfig, tasks: &[TaskResult], done: &[GroupResult]) -> GroupResult {
    let members: Vec<(&str, usize, &[MetricValue])> = g
        .task
        .iter()
        .map(|m| match tasks.iter().find(|t| &t.task == m) {
            Some(t) => (t.task.as_str(), t.n, t.metrics.as_slice()),
            None => {
                let o = done.iter().find(|o| &o.group == m).expect("checked ready");
                (o.group.as_str(), o.n, o.metrics.as_slice())
            }
        })
        .collect();
    let n = members.iter().map(|m| m.1).sum();
    let mut metrics_out = vec![];
    for a in &g.aggregate_metric_list {
        // Every filter the members report this metric under.
        let mut filters: Vec<String> = vec![];
        for (_, _, ms) in &members {
            for mv in ms.iter().filter(|mv| mv.metric == a.metric) {
                if !filters.contains(&mv.filter) {
                    filters.push(mv.filter.clone());
                }
            }
        }
        for f in filters {
            let vals: Vec<(&MetricValue, usize)> = members
                .iter()
                .filter_map(|(_, n, ms)| {
                    ms.iter()
                        .find(|mv| mv.metric == a.metric && mv.filter == f)
                        .map(|mv| (mv, *n))
                })
                .collect();
            if vals.len() != members.len() {
                continue;
            }
            let weights: Vec<f64> = vals
                .iter()
                .map(|(_, n)| if a.weight_by_size { *n as f64 } else { 1.0 })
                .collect();
            let wsum: f64 = weights.iter().sum();
            let value = vals
                .iter()
                .zip(&weights)
                .map(|((mv, _), w)| mv.value * w)
                .sum::<f64>()
                / wsum;
            let stderrs: Option<Vec<f64>> = vals.iter().map(|(mv, _)| mv.stderr).collect();
            let sizes: Vec<usize> = vals.iter().map(|(_, n)| *n).collect();
            let stderr = stderrs.and_then(|s| metrics::pooled_stderr(&s, &sizes));
            metrics_out.push(MetricValue {
                metric: a.metric.clone(),
                filter: f,
                value,
                stderr,
                n: vals.iter().map(|v| v.0.n).sum(),
            });
        }
    }
    GroupResult {
        group: g.group.clone(),
        tasks: g.task.clone(),
        n,
        metrics: metrics_out,
    }
}
