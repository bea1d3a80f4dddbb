//! The built-in tasks (arc_easy, arc_challenge, hellaswag, piqa, winogrande, boolq, the 57
//! MMLU subjects with their groups, gsm8k, BFCL's eleven single-turn categories with their
//! groups) — the harness's own task files, embedded — and
//! choosing tasks by name: a task, a group (its members, groups first expanded), or a path
//! to a task or group file; names also resolve against the task files of extra folders.

use crate::EvalError;
use crate::task::{self, AggregateSpec, GroupConfig, Task, TaskConfig, TaskFile};
use std::path::Path;

const FILES: [(&str, &str); 7] = [
    ("arc_easy.yaml", include_str!("../tasks/arc_easy.yaml")),
    (
        "arc_challenge.yaml",
        include_str!("../tasks/arc_challenge.yaml"),
    ),
    ("hellaswag.yaml", include_str!("../tasks/hellaswag.yaml")),
    ("piqa.yaml", include_str!("../tasks/piqa.yaml")),
    ("winogrande.yaml", include_str!("../tasks/winogrande.yaml")),
    ("boolq.yaml", include_str!("../tasks/boolq.yaml")),
    ("gsm8k.yaml", include_str!("../tasks/gsm8k.yaml")),
];
const MMLU_TEMPLATE: &str = include_str!("../tasks/mmlu_template.yaml");
const MMLU_SUBJECTS: &str = include_str!("../tasks/mmlu_subjects.txt");
const BFCL_TEMPLATE: &str = include_str!("../tasks/bfcl_template.yaml");
/// BFCL's single-turn Python categories (`bfcl_<category>`).
const BFCL_CATEGORIES: [&str; 11] = [
    "simple_python",
    "multiple",
    "parallel",
    "parallel_multiple",
    "irrelevance",
    "live_simple",
    "live_multiple",
    "live_parallel",
    "live_parallel_multiple",
    "live_irrelevance",
    "live_relevance",
];

/// Tasks and groups that can be named.
#[derive(Default)]
pub struct Catalog {
    pub tasks: Vec<Task>,
    pub groups: Vec<GroupConfig>,
}

fn parse_builtin(name: &str, text: &str) -> Task {
    match task::parse(text, &format!("(built-in) {name}"), None) {
        Ok(TaskFile::Task(t)) => *t,
        Ok(TaskFile::Group(_)) => unreachable!("built-in {name} is a task"),
        Err(e) => panic!("built-in task {name} is broken: {e}"),
    }
}

fn acc_group(name: &str, members: Vec<String>) -> GroupConfig {
    weighted_acc_group(name, members, true)
}

fn weighted_acc_group(name: &str, members: Vec<String>, weight_by_size: bool) -> GroupConfig {
    GroupConfig {
        group: name.into(),
        group_alias: None,
        task: members,
        aggregate_metric_list: vec![AggregateSpec {
            metric: "acc".into(),
            aggregation: "mean".into(),
            weight_by_size,
            filter_list: None,
        }],
        metadata: None,
    }
}

impl Catalog {
    /// The built-in tasks and groups.
    pub fn builtin() -> Self {
        let mut tasks: Vec<Task> = FILES.iter().map(|(n, t)| parse_builtin(n, t)).collect();
        let template = parse_builtin(
            "mmlu_template.yaml",
            &format!("task: mmlu_template\n{MMLU_TEMPLATE}"),
        );
        let mut by_category: Vec<(&str, Vec<String>)> =
            ["stem", "other", "social_sciences", "humanities"]
                .into_iter()
                .map(|c| (c, vec![]))
                .collect();
        for line in MMLU_SUBJECTS.lines().filter(|l| !l.trim().is_empty()) {
            let (subject, category) = line.split_once(' ').expect("subject category");
            let mut t = template.clone();
            let c: &mut TaskConfig = &mut t.config;
            c.task = format!("mmlu_{subject}");
            c.task_alias = Some(subject.into());
            c.dataset_name = Some(subject.into());
            c.description = Some(format!(
                "The following are multiple choice questions (with answers) about {}.\n\n",
                subject.replace('_', " ")
            ));
            t.origin = format!("(built-in) mmlu_{subject}");
            t.source = format!("{}\n# subject: {subject}\n", t.source);
            by_category
                .iter_mut()
                .find(|(cat, _)| *cat == category)
                .expect("known category")
                .1
                .push(c.task.clone());
            tasks.push(t);
        }
        let mut groups: Vec<GroupConfig> = by_category
            .iter()
            .map(|(cat, members)| acc_group(&format!("mmlu_{cat}"), members.clone()))
            .collect();
        groups.push(acc_group(
            "mmlu",
            by_category
                .iter()
                .map(|(cat, _)| format!("mmlu_{cat}"))
                .collect(),
        ));
        let bfcl = parse_builtin(
            "bfcl_template.yaml",
            &format!("task: bfcl_template\n{BFCL_TEMPLATE}"),
        );
        for category in BFCL_CATEGORIES {
            let mut t = bfcl.clone();
            t.config.task = format!("bfcl_{category}");
            t.config.dataset_name = Some(category.into());
            t.origin = format!("(built-in) bfcl_{category}");
            t.source = format!("{}\n# category: {category}\n", t.source);
            tasks.push(t);
        }
        let names = |c: &[&str]| c.iter().map(|c| format!("bfcl_{c}")).collect::<Vec<_>>();
        groups.push(weighted_acc_group(
            "bfcl_non_live",
            names(&["simple_python", "multiple", "parallel", "parallel_multiple"]),
            false,
        ));
        groups.push(acc_group(
            "bfcl_live",
            names(&[
                "live_simple",
                "live_multiple",
                "live_parallel",
                "live_parallel_multiple",
            ]),
        ));
        // `bfcl`: the two AST groups (with their figures) and the relevance categories.
        groups.push(GroupConfig {
            group: "bfcl".into(),
            group_alias: None,
            task: ["bfcl_non_live", "bfcl_live"]
                .into_iter()
                .map(String::from)
                .chain(names(&[
                    "irrelevance",
                    "live_irrelevance",
                    "live_relevance",
                ]))
                .collect(),
            aggregate_metric_list: vec![],
            metadata: None,
        });
        Self { tasks, groups }
    }

    /// Adds every task and group file (`*.yaml`) of `dir`; a later name replaces an earlier one.
    pub fn add_dir(&mut self, dir: &Path) -> Result<(), EvalError> {
        let entries = std::fs::read_dir(dir).map_err(|e| {
            EvalError::Task(format!("{}: cannot read task folder: {e}", dir.display()))
        })?;
        let mut paths: Vec<_> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
            .collect();
        paths.sort();
        for p in paths {
            self.add(task::load_file(&p)?);
        }
        Ok(())
    }

    pub fn add(&mut self, f: TaskFile) {
        match f {
            TaskFile::Task(t) => {
                self.tasks.retain(|x| x.config.task != t.config.task);
                self.tasks.push(*t);
            }
            TaskFile::Group(g) => {
                self.groups.retain(|x| x.group != g.group);
                self.groups.push(g);
            }
        }
    }

    pub fn names(&self) -> Vec<String> {
        let mut n: Vec<String> = self
            .groups
            .iter()
            .map(|g| g.group.clone())
            .chain(
                self.tasks
                    .iter()
                    .filter(|t| !t.config.task.starts_with("mmlu_"))
                    .map(|t| t.config.task.clone()),
            )
            .collect();
        n.sort();
        n
    }

    /// The tasks and groups `names` select, each once, groups after their members. A name
    /// that is a `.yaml` path is loaded first.
    pub fn select(&mut self, names: &[String]) -> Result<(Vec<Task>, Vec<GroupConfig>), EvalError> {
        let mut tasks: Vec<Task> = vec![];
        let mut groups: Vec<GroupConfig> = vec![];
        let mut unknown = vec![];
        for raw in names {
            let name = if raw.ends_with(".yaml") || raw.ends_with(".yml") {
                let f = task::load_file(Path::new(raw))?;
                let n = match &f {
                    TaskFile::Task(t) => t.config.task.clone(),
                    TaskFile::Group(g) => g.group.clone(),
                };
                self.add(f);
                n
            } else {
                raw.clone()
            };
            if !self.expand(&name, &mut tasks, &mut groups, 0)? {
                unknown.push(name);
            }
        }
        if !unknown.is_empty() {
            return Err(EvalError::Unknown(format!(
                "unknown task{} {}: available are {} (and the mmlu_<subject> tasks), or give a task file (.yaml)",
                if unknown.len() > 1 { "s" } else { "" },
                unknown.join(", "),
                self.names().join(", ")
            )));
        }
        Ok((tasks, groups))
    }

    fn expand(
        &self,
        name: &str,
        tasks: &mut Vec<Task>,
        groups: &mut Vec<GroupConfig>,
        depth: usize,
    ) -> Result<bool, EvalError> {
        if depth > 16 {
            return Err(EvalError::Task(format!(
                "group `{name}`: groups nest more than 16 deep (a cycle?)"
            )));
        }
        if let Some(t) = self.tasks.iter().find(|t| t.config.task == name) {
            if !tasks.iter().any(|x| x.config.task == name) {
                tasks.push(t.clone());
            }
            return Ok(true);
        }
        let Some(g) = self.groups.iter().find(|g| g.group == name) else {
            return Ok(false);
        };
        for m in &g.task {
            if !self.expand(m, tasks, groups, depth + 1)? {
                return Err(EvalError::Unknown(format!(
                    "group `{name}` names `{m}`, which is no task or group"
                )));
            }
        }
        if !groups.iter().any(|x| x.group == name) {
            groups.push(g.clone());
        }
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtins_parse_and_mmlu_expands() {
        let mut c = Catalog::builtin();
        let (tasks, groups) = c.select(&["mmlu".into()]).unwrap();
        assert_eq!(tasks.len(), 57);
        assert_eq!(groups.len(), 5);
        assert_eq!(groups.last().unwrap().group, "mmlu");
        let (tasks, _) = c
            .select(&["arc_easy".into(), "gsm8k".into(), "arc_easy".into()])
            .unwrap();
        assert_eq!(tasks.len(), 2);
        let e = c.select(&["arc_hard".into()]).unwrap_err().to_string();
        assert!(
            e.contains("arc_hard") && e.contains("arc_challenge") && e.contains("mmlu"),
            "{e}"
        );
    }
}
