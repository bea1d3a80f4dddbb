//! `galley plugin new`: scaffolds a plugin folder — manifest, a working example body, a test
//! input and a README — for any language and kind, so a new author goes from an empty folder
//! to `galley plugin build` and `galley plugin call` without reading the WIT.

use crate::error::{Context, Result, bail};
use crate::{embedded, toolchains};
use galley_core::PluginKind;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum NewLang {
    Rust,
    Python,
    Js,
    C,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum NewKind {
    Reward,
    Loader,
    Evaluator,
    Recipe,
    /// A function a model calls during GRPO rollouts (Rust, Python or JavaScript, for now).
    Tool,
    /// Functions with state, one instance per GRPO rollout (Rust or Python, for now).
    Environment,
}

impl NewKind {
    pub fn kind(self) -> PluginKind {
        match self {
            NewKind::Reward => PluginKind::Reward,
            NewKind::Loader => PluginKind::DataLoader,
            NewKind::Evaluator => PluginKind::Evaluator,
            NewKind::Recipe => PluginKind::Recipe,
            NewKind::Tool => PluginKind::Tool,
            NewKind::Environment => PluginKind::Environment,
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
    embedded::write_all(&root.join("wit/v0.2.0"), embedded::WIT_0_2_0)?;
    embedded::write_all(&root.join("wit/v0.3.0"), embedded::WIT_0_3_0)?;
    embedded::write_all(&root.join("wit/v0.4.0"), embedded::WIT_0_4_0)?;
    Ok(crate_dir)
}

pub fn run(name: &str, lang: NewLang, kind: NewKind, dir: Option<PathBuf>) -> Result<PathBuf> {
    if kind == NewKind::Tool && lang == NewLang::C {
        bail!(
            "tool plugins are written in Rust, Python or JavaScript for now: use --lang rust, python or js"
        );
    }
    if kind == NewKind::Environment && !matches!(lang, NewLang::Rust | NewLang::Python) {
        bail!(
            "environment plugins are written in Rust or Python for now: use --lang rust or python"
        );
    }
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
        NewKind::Tool => "Counts the words of a text, for a model to call",
        NewKind::Environment => "Guess a number from 1 to 100, one game per rollout",
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
        NewKind::Tool => None,
        // One episode's calls, one turn each: `galley plugin call ... --input`.
        NewKind::Environment => Some(concat!(
            r#"{"name": "guess", "arguments": {"n": 50}}"#,
            "\n",
            r#"{"name": "guess", "arguments": {"n": 42}}"#,
            "\n",
        )),
    }
}

fn call_example(kind: NewKind) -> &'static str {
    match kind {
        NewKind::Reward => "--input test-input.jsonl",
        NewKind::Evaluator => "--input test-input.jsonl",
        NewKind::Loader => "--max 3 --config @test-input.json",
        NewKind::Recipe => "--config @test-input.json --metric reward=0.95 --stage grpo",
        NewKind::Tool => "--function count_words --arguments '{\"text\": \"one two three\"}'",
        NewKind::Environment => "--meta secret=42 --input test-input.jsonl",
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
        NewKind::Reward => include_str!("../templates/rust/reward.rs"),
        NewKind::Loader => include_str!("../templates/rust/data-loader.rs"),
        NewKind::Evaluator => include_str!("../templates/rust/evaluator.rs"),
        NewKind::Recipe => include_str!("../templates/rust/recipe.rs"),
        NewKind::Tool => include_str!("../templates/rust/tool.rs"),
        NewKind::Environment => include_str!("../templates/rust/environment.rs"),
    }
}

fn python_body(kind: NewKind) -> &'static str {
    match kind {
        NewKind::Reward => include_str!("../templates/python/reward.py"),
        NewKind::Loader => include_str!("../templates/python/data-loader.py"),
        NewKind::Evaluator => include_str!("../templates/python/evaluator.py"),
        NewKind::Recipe => include_str!("../templates/python/recipe.py"),
        NewKind::Tool => include_str!("../templates/python/tool.py"),
        NewKind::Environment => include_str!("../templates/python/environment.py"),
    }
}

fn js_body(kind: NewKind) -> &'static str {
    match kind {
        NewKind::Reward => include_str!("../templates/js/reward.js"),
        NewKind::Loader => include_str!("../templates/js/data-loader.js"),
        NewKind::Evaluator => include_str!("../templates/js/evaluator.js"),
        NewKind::Recipe => include_str!("../templates/js/recipe.js"),
        NewKind::Tool => include_str!("../templates/js/tool.js"),
        NewKind::Environment => unreachable!("refused above"),
    }
}

fn c_body(kind: NewKind) -> &'static str {
    crate::cplugin::template(kind.kind())
}
