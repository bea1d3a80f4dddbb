//! `galley plugin new`: scaffolds a plugin folder — manifest, a working example body, a test
//! input and a README — for any language and kind, so a new author goes from an empty folder
//! to `galley plugin build` and `galley plugin call` without reading the WIT.

use crate::{embedded, toolchains};
use anyhow::{Context, Result, bail};
use galley_core::PluginKind;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum NewLang {
    Rust,
    Python,
    Js,
    C,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum NewKind {
    Reward,
    Loader,
    Evaluator,
    Recipe,
}

impl NewKind {
    pub fn kind(self) -> PluginKind {
        match self {
            NewKind::Reward => PluginKind::Reward,
            NewKind::Loader => PluginKind::DataLoader,
            NewKind::Evaluator => PluginKind::Evaluator,
            NewKind::Recipe => PluginKind::Recipe,
        }
    }
}

/// The Rust SDK, unpacked once where scaffolded crates can depend on it by path.
pub fn rust_sdk_dir() -> Result<PathBuf> {
    let root =
        toolchains::toolchain_dir().join(format!("galley-sdk-rust-{}", env!("CARGO_PKG_VERSION")));
    let crate_dir = root.join("sdk/rust");
    // Rewritten every time: cheap, and a galley upgrade must not leave an old SDK behind.
    embedded::write_all(&root, embedded::RUST_SDK)?;
    embedded::write_all(&root.join("wit/v0.1.0"), embedded::WIT_0_1_0)?;
    Ok(crate_dir)
}

pub fn run(name: &str, lang: NewLang, kind: NewKind, dir: Option<PathBuf>) -> Result<PathBuf> {
    let dir = dir.unwrap_or_else(|| PathBuf::from(name));
    let manifest = format!(
        "# The registry namespace you publish under (galley plugin publish): NAMESPACE/NAME.\n# namespace = \"your-name\"\nname = \"{name}\"\nversion = \"0.1.0\"\nkind = \"{}\"\ndescription = \"{}\"\nlicense = \"Apache-2.0\"\n{}",
        kind.kind(),
        description(kind),
        if kind == NewKind::Loader {
            "\n# Ask for read-only directories (mounted at /NAME) only if the loader reads files:\n# [capabilities]\n# read-dirs = [\"data\"]\n"
        } else {
            ""
        }
    );
    // Validate the name exactly as the build will.
    galley_runtime::Manifest::from_toml(&manifest, "galley.toml")?;
    if dir.exists()
        && std::fs::read_dir(&dir)
            .map(|mut d| d.next().is_some())
            .unwrap_or(true)
    {
        bail!(
            "{}: exists and is not empty; pick another NAME or --dir",
            dir.display()
        );
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut files: Vec<(String, String)> = vec![("galley.toml".into(), manifest)];
    match lang {
        NewLang::Rust => {
            let sdk = rust_sdk_dir()?;
            files.push(("Cargo.toml".into(), rust_cargo(name, kind, &sdk)));
            files.push(("src/lib.rs".into(), rust_body(kind).into()));
        }
        NewLang::Python => files.push(("plugin.py".into(), python_body(kind).into())),
        NewLang::Js => files.push(("plugin.js".into(), js_body(kind).into())),
        NewLang::C => files.push(("plugin.c".into(), c_body(kind).into())),
    }
    if let Some(input) = test_input(kind) {
        let file = if matches!(kind, NewKind::Loader | NewKind::Recipe) {
            "test-input.json"
        } else {
            "test-input.jsonl"
        };
        files.push((file.into(), input.into()));
    }
    files.push(("README.md".into(), readme(name, lang, kind)));
    for (path, text) in &files {
        let p = dir.join(path);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&p, text).with_context(|| format!("writing {}", p.display()))?;
    }
    Ok(dir)
}

fn description(kind: NewKind) -> &'static str {
    match kind {
        NewKind::Reward => "1.0 when the completion contains the example's answer, else 0.0",
        NewKind::Loader => "Counting questions with their answers",
        NewKind::Evaluator => "Exact match after trimming and lower-casing",
        NewKind::Recipe => "SFT, then GRPO until the mean reward reaches a target, then evaluation",
    }
}

fn test_input(kind: NewKind) -> Option<&'static str> {
    match kind {
        NewKind::Reward => Some(concat!(
            r#"{"prompt": "What is 6 * 7?", "completion": "6 * 7 = 42", "metadata": {"answer": 42}}"#,
            "\n",
            r#"{"prompt": "What is 6 * 7?", "completion": "It is 43", "metadata": {"answer": 42}}"#,
            "\n",
            r#"{"prompt": "Say hi", "completion": "hi"}"#,
            "\n",
        )),
        NewKind::Evaluator => Some(concat!(
            r#"{"id": "a", "prediction": " Paris ", "references": ["paris"]}"#,
            "\n",
            r#"{"id": "b", "prediction": "Lyon", "references": ["Paris"]}"#,
            "\n",
        )),
        // Settings: `galley plugin call ... --config @test-input.json`.
        NewKind::Loader => Some("{\"count\": 5}\n"),
        NewKind::Recipe => Some("{\"target\": 0.8}\n"),
    }
}

fn call_example(kind: NewKind) -> &'static str {
    match kind {
        NewKind::Reward => "--input test-input.jsonl",
        NewKind::Evaluator => "--input test-input.jsonl",
        NewKind::Loader => "--max 3 --config @test-input.json",
        NewKind::Recipe => "--config @test-input.json --metric reward/mean=0.95 --stage grpo",
    }
}

fn readme(name: &str, lang: NewLang, kind: NewKind) -> String {
    let source = match lang {
        NewLang::Rust => "src/lib.rs",
        NewLang::Python => "plugin.py",
        NewLang::Js => "plugin.js",
        NewLang::C => "plugin.c",
    };
    format!(
        "# {name}\n\n{}.\n\nA galley {} plugin in {lang:?}. Edit `{source}`; `galley.toml` is its manifest.\n\n```sh\ngalley plugin build . -o out          # -> out/{name}.wasm\ngalley plugin inspect out/{name}.wasm\ngalley plugin call out/{name}.wasm {}\n```\n\nThe plugin runs sandboxed: no files (unless a loader's manifest asks for a read-only\ndirectory and the user grants it), no network, no environment, a frozen clock, seeded\nrandomness, and a time and memory budget on every call.\n",
        description(kind),
        kind.kind(),
        call_example(kind)
    )
}

fn rust_cargo(name: &str, kind: NewKind, sdk: &Path) -> String {
    let feature = kind.kind().as_str();
    format!(
        "[package]\nname = \"{name}\"\nversion = \"0.1.0\"\nedition = \"2024\"\n\n[lib]\ncrate-type = [\"cdylib\"]\n\n[dependencies]\ngalley-sdk = {{ path = \"{}\", features = [\"{feature}\"] }}\nserde = {{ version = \"1\", features = [\"derive\"] }}\n\n[profile.release]\nopt-level = 3\nlto = true\npanic = \"abort\"\n\n# A plugin is its own workspace.\n[workspace]\n",
        sdk.display()
    )
}

fn rust_body(kind: NewKind) -> &'static str {
    match kind {
        NewKind::Reward => {
            r#"use galley_sdk::reward::{Reward, RewardInput};
use galley_sdk::{Config, Error};

/// 1.0 when the completion contains the example's `answer` column, else 0.0.
struct ContainsAnswer;

impl Reward for ContainsAnswer {
    fn new(_config: &Config) -> Result<Self, Error> {
        Ok(ContainsAnswer)
    }

    fn score(&mut self, input: &RewardInput) -> Result<Option<f64>, Error> {
        // No ground truth: no opinion (the trainer leaves this reward out of the sum).
        let Some(answer) = input.metadata.text("answer") else { return Ok(None) };
        Ok(Some(if input.completion.contains(&answer) { 1.0 } else { 0.0 }))
    }
}

galley_sdk::export_reward!(ContainsAnswer);
"#
        }
        NewKind::Loader => {
            r#"use galley_sdk::data_loader::DataLoader;
use galley_sdk::{Config, Error, Example, Message, Value};

/// `count` questions "What is N + 1?", with the answer in the metadata.
struct Counting {
    next: i64,
    count: i64,
}

impl DataLoader for Counting {
    fn new(config: &Config, _seed: u64) -> Result<Self, Error> {
        let count = config.get_f64("count").unwrap_or(10.0);
        if count < 0.0 {
            return Err(Error::config("`count` must not be negative"));
        }
        Ok(Self { next: 0, count: count as i64 })
    }

    fn next_page(&mut self, max: usize) -> Result<Vec<Example>, Error> {
        let mut page = Vec::new();
        while page.len() < max && self.next < self.count {
            let n = self.next;
            self.next += 1;
            let mut ex = Example {
                id: format!("count-{n}"),
                messages: vec![Message::new("user", format!("What is {n} + 1?"))],
                ..Default::default()
            };
            ex.metadata.insert("answer", Value::Int(n + 1));
            page.push(ex);
        }
        Ok(page)
    }
}

galley_sdk::export_data_loader!(Counting);
"#
        }
        NewKind::Evaluator => {
            r#"use galley_sdk::evaluator::{Evaluator, Prediction};
use galley_sdk::{Config, Error, Metric};

/// 1.0 when the prediction equals a reference after trimming and lower-casing.
struct ExactMatch;

impl Evaluator for ExactMatch {
    fn new(_config: &Config) -> Result<Self, Error> {
        Ok(ExactMatch)
    }

    fn score(&mut self, p: &Prediction) -> Result<Vec<Metric>, Error> {
        let pred = p.prediction.trim().to_lowercase();
        let hit = p.references.iter().any(|r| r.trim().to_lowercase() == pred);
        Ok(vec![Metric::new("exact_match", if hit { 1.0 } else { 0.0 })])
    }
    // `aggregate` defaults to the mean of each metric, plus `count`.
}

galley_sdk::export_evaluator!(ExactMatch);
"#
        }
        NewKind::Recipe => {
            r#"use galley_sdk::recipe::{Decision, Recipe, Stage};
use galley_sdk::serde_json::json;
use galley_sdk::{Config, Error, Metric};

/// SFT, then GRPO until the mean reward reaches `target`, then evaluation.
#[derive(Default)]
struct Plan {
    target: f64,
}

impl Recipe for Plan {
    fn plan(&mut self, config: &Config) -> Result<Vec<Stage>, Error> {
        self.target = config.get_f64("target").unwrap_or(0.9);
        Ok(vec![
            Stage::new("sft", "sft", json!({"epochs": 1})),
            Stage::new("grpo", "grpo", json!({"num_generations": 8})),
            Stage::new("eval", "evaluate", json!({})),
        ])
    }

    fn on_metrics(&mut self, stage: &str, _step: u64, metrics: &[Metric]) -> Result<Decision, Error> {
        let reward = metrics.iter().find(|m| m.name == "reward/mean").map(|m| m.value);
        Ok(match (stage, reward) {
            ("grpo", Some(r)) if r >= self.target => Decision::NextStage,
            _ => Decision::Proceed,
        })
    }
}

galley_sdk::export_recipe!(Plan);
"#
        }
    }
}

fn python_body(kind: NewKind) -> &'static str {
    match kind {
        NewKind::Reward => {
            r#"from galley_sdk import reward


@reward
def contains_answer(completion, answer=None, **columns):
    """1.0 when the completion contains the example's `answer` column, else 0.0.

    Metadata columns arrive as keyword arguments (as in TRL); `prompt` and `config` too,
    if the function asks for them. Return None for "no opinion".
    """
    if answer is None:
        return None
    return 1.0 if str(answer) in completion else 0.0
"#
        }
        NewKind::Loader => {
            r#"from galley_sdk import ConfigError, data_loader


@data_loader
def counting(config, seed):
    """`count` questions "What is N + 1?", with the answer in the metadata."""
    count = config.get("count", 10)
    if count < 0:
        raise ConfigError("`count` must not be negative")
    for n in range(count):
        yield {
            "id": f"count-{n}",
            "messages": [{"role": "user", "content": f"What is {n} + 1?"}],
            "metadata": {"answer": n + 1},
        }
"#
        }
        NewKind::Evaluator => {
            r#"from galley_sdk import evaluator


@evaluator
def exact_match(prediction, references, **metadata):
    """1.0 when the prediction equals a reference after trimming and lower-casing.
    Summary: the mean of each metric, plus `count`."""
    pred = prediction.strip().lower()
    return {"exact_match": float(any(r.strip().lower() == pred for r in references))}
"#
        }
        NewKind::Recipe => {
            r#"import math

from galley_sdk import recipe


@recipe
class Plan:
    """SFT, then GRPO until the mean reward reaches `target`, then evaluation."""

    def plan(self, config):
        self.target = config.get("target", 0.9)
        return [
            {"name": "sft", "kind": "sft", "config": {"epochs": 1}},
            {"name": "grpo", "kind": "grpo", "config": {"num_generations": 8}},
            {"name": "eval", "kind": "evaluate", "config": {}},
        ]

    def on_metrics(self, stage, step, metrics):
        if any(k.endswith("loss") and not math.isfinite(v) for k, v in metrics.items()):
            return ("stop", f"non-finite loss at step {step}")
        if stage == "grpo" and metrics.get("reward/mean", 0.0) >= self.target:
            return "next-stage"
        return "proceed"
"#
        }
    }
}

fn js_body(kind: NewKind) -> &'static str {
    match kind {
        NewKind::Reward => {
            r#"import { reward } from "galley-sdk";

// 1.0 when the completion contains the example's `answer` column, else 0.0; null (no
// opinion) without one. `columns` holds every metadata column, `prompt` and `config`.
reward((completion, { answer }) => {
  if (answer === undefined || answer === null) return null;
  return completion.includes(String(answer)) ? 1.0 : 0.0;
});
"#
        }
        NewKind::Loader => {
            r#"import { dataLoader, ConfigError } from "galley-sdk";

// `count` questions "What is N + 1?", with the answer in the metadata.
dataLoader(function* counting(config, seed) {
  const count = config.count ?? 10;
  if (count < 0) throw new ConfigError("`count` must not be negative");
  for (let n = 0; n < count; n++) {
    yield { id: `count-${n}`, messages: [{ role: "user", content: `What is ${n} + 1?` }], metadata: { answer: n + 1 } };
  }
});
"#
        }
        NewKind::Evaluator => {
            r#"import { evaluator } from "galley-sdk";

// 1.0 when the prediction equals a reference after trimming and lower-casing.
// Summary: the mean of each metric, plus `count`.
evaluator((prediction, references, metadata) => {
  const pred = prediction.trim().toLowerCase();
  return { exact_match: references.some((r) => r.trim().toLowerCase() === pred) ? 1.0 : 0.0 };
});
"#
        }
        NewKind::Recipe => {
            r#"import { recipe } from "galley-sdk";

// SFT, then GRPO until the mean reward reaches `target`, then evaluation.
recipe(class Plan {
  plan(config) {
    this.target = config.target ?? 0.9;
    return [
      { name: "sft", kind: "sft", config: { epochs: 1 } },
      { name: "grpo", kind: "grpo", config: { num_generations: 8 } },
      { name: "eval", kind: "evaluate", config: {} },
    ];
  }
  onMetrics(stage, step, metrics) {
    if (Object.entries(metrics).some(([k, v]) => k.endsWith("loss") && !Number.isFinite(v))) return ["stop", `non-finite loss at step ${step}`];
    if (stage === "grpo" && (metrics["reward/mean"] ?? 0) >= this.target) return "next-stage";
    return "proceed";
  }
});
"#
        }
    }
}

fn c_body(kind: NewKind) -> &'static str {
    crate::cplugin::template(kind.kind())
}
