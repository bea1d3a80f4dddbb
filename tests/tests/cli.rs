//! The `galley` command end to end: inspect, call, score, build a new plugin from an empty
//! folder, and the one-line errors a user sees for bad input.

use galley_e2e::*;
use std::path::Path;

#[test]
fn inspect_shows_kind_wit_capabilities_size_and_digest() {
    let root = repo_root();
    let o = galley(
        &root,
        &[
            "plugin",
            "inspect",
            plugin("jsonl-chat").to_str().unwrap(),
            "--json",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["name"], "jsonl-chat");
    assert_eq!(v["kind"], "data-loader");
    assert_eq!(v["wit"], "0.2.0");
    assert_eq!(v["wit_supported"], true);
    assert_eq!(v["capabilities"]["read-dirs"][0], "data");
    let bytes = std::fs::read(plugin("jsonl-chat")).unwrap();
    assert_eq!(v["size"], bytes.len());
    assert!(v["digest"].as_str().unwrap().starts_with("sha256:"));
    assert!(
        v["imports"]
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i == "galley:plugin/log@0.2.0")
    );

    let o = galley(
        &root,
        &["plugin", "inspect", plugin("math-answer").to_str().unwrap()],
    );
    let text = stdout(&o);
    assert!(
        text.contains("math-answer@0.2.0") && text.contains("capabilities none (fully sandboxed)"),
        "{text}"
    );
}

#[test]
fn call_scores_one_completion() {
    let o = galley(
        &repo_root(),
        &[
            "plugin",
            "call",
            plugin("math-answer").to_str().unwrap(),
            "--completion",
            "6 * 7 = 42\n#### 42",
            "--meta",
            "answer=42",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), "0\t1\n");
    let o = galley(
        &repo_root(),
        &[
            "plugin",
            "call",
            plugin("math-answer").to_str().unwrap(),
            "--completion",
            "#### 42",
            "--json",
        ],
    );
    assert_eq!(stdout(&o).trim(), "[null]", "no ground truth, no opinion");
}

#[test]
fn call_reads_a_granted_directory() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("chat.jsonl"),
        "{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"answer\":1}\n",
    )
    .unwrap();
    let grant = format!("data={}", dir.path().display());
    let p = plugin("jsonl-chat");
    let o = galley(
        &repo_root(),
        &[
            "plugin",
            "call",
            p.to_str().unwrap(),
            "--config",
            r#"{"path":"chat.jsonl"}"#,
            "--allow-dir",
            &grant,
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let ex: serde_json::Value = serde_json::from_str(stdout(&o).lines().next().unwrap()).unwrap();
    assert_eq!(ex["messages"][0]["content"], "hi");
    assert_eq!(ex["metadata"]["answer"], 1);

    let o = galley(
        &repo_root(),
        &[
            "plugin",
            "call",
            p.to_str().unwrap(),
            "--config",
            r#"{"path":"chat.jsonl"}"#,
        ],
    );
    let line = one_line_error(&o);
    assert!(
        line.contains("jsonl-chat@0.2.0") && line.contains("--allow-dir data=PATH"),
        "{line}"
    );
}

#[test]
fn call_runs_evaluators_and_recipes() {
    let o = galley(
        &repo_root(),
        &[
            "plugin",
            "call",
            plugin("exact-match").to_str().unwrap(),
            "--prediction",
            "Paris",
            "--reference",
            "paris",
        ],
    );
    assert!(
        stdout(&o).contains("summary\texact_match=1.0000 count=1.0000"),
        "{}{}",
        stdout(&o),
        stderr(&o)
    );
    let o = galley(
        &repo_root(),
        &[
            "plugin",
            "call",
            plugin("curriculum").to_str().unwrap(),
            "--metric",
            "reward=0.95",
            "--stage",
            "grpo",
        ],
    );
    let out = stdout(&o);
    assert!(
        out.starts_with("warmup\tsft") && out.contains("decision\tnext-stage"),
        "{out}"
    );
}

#[test]
fn score_runs_the_demo_config() {
    let o = galley(
        &repo_root(),
        &["score", "examples/score/score.yaml", "--json"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let lines: Vec<serde_json::Value> = stdout(&o)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 7);
    // The completion with no ground truth: math-answer has no opinion, the others still count.
    assert_eq!(
        lines[5]["scores"]["math-answer@0.2.0"],
        serde_json::Value::Null
    );
    assert_eq!(lines[5]["total"], 0.2);
    assert_eq!(lines[0]["total"], 1.2);
    assert_eq!(lines[4]["scores"]["length-penalty@0.2.0"], -1.0);
    let summary = &lines[6]["summary"];
    assert_eq!(summary["completions"], 6);
    assert_eq!(summary["rewards"][0]["scored"], 5);
}

fn write(dir: &Path, name: &str, text: &str) {
    std::fs::create_dir_all(dir.join(name).parent().unwrap()).unwrap();
    std::fs::write(dir.join(name), text).unwrap();
}

#[test]
fn score_config_errors_name_the_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "c.jsonl",
        "{\"completion\": \"#### 1\"}\n{\"completion\": 5}\n",
    );
    write(
        dir.path(),
        "bad.yaml",
        "rewards:\n  - plugin: math-answer\n    wieght: 2\ncompletions: c.jsonl\n",
    );
    let line = one_line_error(&galley(
        &repo_root(),
        &["score", dir.path().join("bad.yaml").to_str().unwrap()],
    ));
    assert!(
        line.contains("bad.yaml:3:") && line.contains("wieght"),
        "{line}"
    );

    let plugins = plugins_dir();
    write(
        dir.path(),
        "ok.yaml",
        &format!(
            "rewards:\n  - plugin: math-answer\ncompletions: c.jsonl\nplugin_path: [{}]\n",
            plugins.display()
        ),
    );
    let line = one_line_error(&galley(
        &repo_root(),
        &["score", dir.path().join("ok.yaml").to_str().unwrap()],
    ));
    assert!(
        line.contains("c.jsonl:2") && line.contains("bad completion line"),
        "{line}"
    );

    write(dir.path(), "good.jsonl", "{\"completion\": \"#### 1\"}\n");
    write(
        dir.path(),
        "missing.yaml",
        "rewards:\n  - plugin: no-such-plugin\ncompletions: good.jsonl\n",
    );
    let line = one_line_error(&galley(
        &repo_root(),
        &["score", dir.path().join("missing.yaml").to_str().unwrap()],
    ));
    assert!(
        line.contains("rewards[0].plugin") && line.contains("no plugin named `no-such-plugin`"),
        "{line}"
    );
}

#[test]
fn limits_that_would_wrap_or_poison_totals_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "c.jsonl", "{\"completion\": \"#### 1\"}\n");
    let plugins = plugins_dir();
    for (body, key) in [
        ("    weight: .nan\n", "rewards[0].weight"),
        ("    weight: .inf\n", "rewards[0].weight"),
        // 2^44 MiB is 2^64 bytes: it used to wrap to a 0-byte (or unlimited) cap.
        (
            "    limits: {memory_mb: 17592186044416}\n",
            "rewards[0].limits.memory_mb",
        ),
        (
            "    limits: {memory_mb: 0}\n",
            "rewards[0].limits.memory_mb",
        ),
    ] {
        write(
            dir.path(),
            "s.yaml",
            &format!(
                "rewards:\n  - plugin: math-answer\n{body}completions: c.jsonl\nplugin_path: [{}]\n",
                plugins.display()
            ),
        );
        let line = one_line_error(&galley(
            &repo_root(),
            &["score", dir.path().join("s.yaml").to_str().unwrap()],
        ));
        assert!(
            line.contains("s.yaml") && line.contains(key),
            "{body}: {line}"
        );
    }
    let wasm = plugin("math-answer");
    for flag in [
        "--memory-mb=17592186044416",
        "--memory-mb=0",
        "--timeout-ms=0",
    ] {
        let o = galley(
            &repo_root(),
            &[
                "plugin",
                "call",
                wasm.to_str().unwrap(),
                "--completion",
                "x",
                flag,
            ],
        );
        assert!(!o.status.success(), "{flag} accepted");
        let name = flag.split('=').next().unwrap();
        assert!(stderr(&o).contains(name), "{flag}: {}", stderr(&o));
    }
}

#[test]
fn what_a_plugin_says_reaches_the_terminal_escaped() {
    let wasm = plugin("hostile-reward");
    for mode in ["ansi-log", "ansi-error", "ansi-panic"] {
        let o = galley(
            &repo_root(),
            &[
                "plugin",
                "call",
                wasm.to_str().unwrap(),
                "--config",
                &format!("{{\"mode\": \"{mode}\"}}"),
                "--completion",
                "x",
            ],
        );
        let err = stderr(&o);
        assert!(err.contains("ALL TESTS PASSED"), "{mode}: {err}");
        for forbidden in ['\x1b', '\r', '\x07'] {
            assert!(!err.contains(forbidden), "{mode}: {err:?}");
        }
        // No line of the output starts with the forged log prefix.
        assert!(
            !err.lines().any(|l| l.starts_with("INFO galley: forged")),
            "{mode}: {err:?}"
        );
    }
}

#[test]
fn score_can_stop_or_skip_on_a_failing_plugin() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "c.jsonl",
        "{\"completion\": \"#### 1\", \"metadata\": {\"answer\": 1}}\n",
    );
    let cfg = |policy: &str| {
        format!(
            "rewards:\n  - plugin: math-answer\n  - plugin: hostile-reward\n    settings: {{mode: trap-score}}\ncompletions: c.jsonl\non_plugin_error: {policy}\nplugin_path: [{}]\n",
            plugins_dir().display()
        )
    };
    write(dir.path(), "skip.yaml", &cfg("skip"));
    let o = galley(
        &repo_root(),
        &[
            "score",
            dir.path().join("skip.yaml").to_str().unwrap(),
            "--json",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("panicked in score on purpose"),
        "{}",
        stderr(&o)
    );
    let first: serde_json::Value =
        serde_json::from_str(stdout(&o).lines().next().unwrap()).unwrap();
    assert_eq!(first["total"], 1.0);

    // Per-plugin limits from the config: a loop stopped at 200 ms, named in the warning.
    write(
        dir.path(),
        "limits.yaml",
        &format!(
            "rewards:\n  - plugin: math-answer\n  - plugin: hostile-reward\n    settings: {{mode: loop}}\n    limits: {{timeout_ms: 200}}\ncompletions: c.jsonl\nplugin_path: [{}]\n",
            plugins_dir().display()
        ),
    );
    let o = galley(
        &repo_root(),
        &["score", dir.path().join("limits.yaml").to_str().unwrap()],
    );
    assert!(
        o.status.success() && stderr(&o).contains("time budget of 200.0ms"),
        "{}",
        stderr(&o)
    );

    write(dir.path(), "stop.yaml", &cfg("stop"));
    let o = galley(
        &repo_root(),
        &["score", dir.path().join("stop.yaml").to_str().unwrap()],
    );
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("stopping (on_plugin_error: stop)"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn malformed_components_are_one_line_errors() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "junk.wasm", "definitely not wasm");
    let line = one_line_error(&galley(
        &repo_root(),
        &[
            "plugin",
            "call",
            dir.path().join("junk.wasm").to_str().unwrap(),
            "--completion",
            "x",
        ],
    ));
    assert!(
        line.contains("junk.wasm") && line.contains("not a WebAssembly component"),
        "{line}"
    );
    let line = one_line_error(&galley(
        &repo_root(),
        &[
            "plugin",
            "call",
            plugin("exact-match").to_str().unwrap(),
            "--completion",
            "x",
        ],
    ));
    assert!(
        line.contains("exact-match@0.2.0") && line.contains("evaluator"),
        "{line}"
    );
}

/// A new author's first plugin: an empty folder, the SDK, `galley plugin build`, `galley plugin call`.
#[test]
fn build_a_new_plugin_from_an_empty_folder() {
    let dir = tempfile::tempdir().unwrap();
    let sdk = repo_root().join("sdk/rust");
    write(
        dir.path(),
        "Cargo.toml",
        &format!(
            "[package]\nname = \"ends-with-period\"\nversion = \"0.1.0\"\nedition = \"2024\"\n\n[lib]\ncrate-type = [\"cdylib\"]\n\n[dependencies]\ngalley-sdk = {{ path = \"{}\", features = [\"reward\"] }}\n\n[workspace]\n",
            sdk.display()
        ),
    );
    write(
        dir.path(),
        "galley.toml",
        "name = \"ends-with-period\"\nversion = \"0.1.0\"\nkind = \"reward\"\ndescription = \"1.0 when the completion ends with a period\"\nlicense = \"MIT\"\n",
    );
    write(
        dir.path(),
        "src/lib.rs",
        r#"
use galley_sdk::reward::{Reward, RewardInput};
use galley_sdk::{Config, Error};

struct EndsWithPeriod;

impl Reward for EndsWithPeriod {
    fn new(_config: &Config) -> Result<Self, Error> {
        Ok(EndsWithPeriod)
    }
    fn score(&mut self, input: &RewardInput) -> Result<Option<f64>, Error> {
        Ok(Some(if input.completion.trim_end().ends_with('.') { 1.0 } else { 0.0 }))
    }
}

galley_sdk::export_reward!(EndsWithPeriod);
"#,
    );
    let out = dir.path().join("out");
    let target = repo_root().join("target/wasm");
    let o = galley(
        dir.path(),
        &[
            "plugin",
            "build",
            ".",
            "-o",
            out.to_str().unwrap(),
            "--target-dir",
            target.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "build failed:\n{}", stderr(&o));
    assert!(
        stdout(&o).contains("ends-with-period@0.1.0"),
        "{}",
        stdout(&o)
    );
    let wasm = out.join("ends-with-period.wasm");
    let o = galley(
        dir.path(),
        &[
            "plugin",
            "call",
            wasm.to_str().unwrap(),
            "--completion",
            "Done.",
        ],
    );
    assert_eq!(stdout(&o), "0\t1\n", "{}", stderr(&o));

    // The manifest must match what the code exports.
    write(
        dir.path(),
        "galley.toml",
        "name = \"ends-with-period\"\nversion = \"0.1.0\"\nkind = \"evaluator\"\n",
    );
    let o = galley(
        dir.path(),
        &[
            "plugin",
            "build",
            ".",
            "-o",
            out.to_str().unwrap(),
            "--target-dir",
            target.to_str().unwrap(),
        ],
    );
    let err = stderr(&o);
    assert!(
        !o.status.success()
            && err.contains("key `kind` is `evaluator`")
            && err.contains("galley:plugin/reward@0.2.0"),
        "{err}"
    );
}

/// `galley cache`: a newcomer's disk filled with compiled plugins; `info` shows where and how
/// much, the cache keeps itself under GALLEY_COMPONENT_CACHE_MAX, `prune` trims on demand and
/// `clear` deletes folders (and only galley's own: a folder swapped for a link is unlinked).
#[test]
fn cache_shows_bounds_prunes_and_clears() {
    let home = tempfile::tempdir().unwrap();
    let cache = home.path().join("cache");
    let run = |args: &[&str], max: &str| {
        std::process::Command::new(galley_bin())
            .args(args)
            .env("GALLEY_CACHE_DIR", &cache)
            .env("GALLEY_CONFIG_DIR", home.path().join("config"))
            .env("GALLEY_COMPONENT_CACHE_MAX", max)
            .env_remove("GALLEY_MODEL_CACHE")
            .env_remove("GALLEY_EVAL_DATA")
            .env_remove("GALLEY_TOOLCHAIN_DIR")
            .env_remove("RUST_LOG")
            .output()
            .unwrap()
    };
    let json = |o: &std::process::Output| -> serde_json::Value {
        assert!(o.status.success(), "{}", stderr(o));
        serde_json::from_slice(&o.stdout).unwrap()
    };
    let call = |name: &str, max: &str| {
        let o = run(
            &[
                "plugin",
                "call",
                plugin(name).to_str().unwrap(),
                "--completion",
                "#### 4",
            ],
            max,
        );
        assert!(o.status.success(), "{}", stderr(&o));
    };
    call("math-answer", "");
    call("format", "");
    let info = json(&run(&["cache", "info", "--json"], ""));
    assert_eq!(info["components"]["entries"], 2, "{info}");
    assert_eq!(info["components"]["limit"], 2u64 << 30);
    let total = info["components"]["bytes"].as_u64().unwrap();
    let names: Vec<_> = info["folders"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "components",
            "blobs",
            "models",
            "eval-data",
            "toolchains",
            "wasm-target"
        ]
    );
    // A bound that holds one entry: the next store pushes the older ones out.
    call("arith", "1");
    let info = json(&run(&["cache", "info", "--json"], "1"));
    assert_eq!(info["components"]["entries"], 1, "{info}");
    assert!(info["components"]["bytes"].as_u64().unwrap() < total);
    // The human table names the bound; a bad bound is a warning naming the variable, and
    // the default is kept.
    let o = run(&["cache", "info"], "lots");
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("bound 2.0 GiB"), "{}", stdout(&o));
    assert!(
        stderr(&o).contains("GALLEY_COMPONENT_CACHE_MAX: \"lots\" is not a size"),
        "{}",
        stderr(&o)
    );
    let o = run(&["cache", "prune", "--max-size", "many"], "");
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("--max-size: \"many\" is not a size"),
        "{}",
        stderr(&o)
    );
    let p = json(&run(&["cache", "prune", "--max-size", "0", "--json"], ""));
    assert_eq!(
        (p["removed"].as_u64(), p["kept"].as_u64()),
        (Some(1), Some(0)),
        "{p}"
    );
    // clear: a real folder is deleted; a link in a folder's place is removed, its target kept.
    let elsewhere = home.path().join("precious");
    std::fs::create_dir(&elsewhere).unwrap();
    std::fs::write(elsewhere.join("keep.txt"), "mine").unwrap();
    std::os::unix::fs::symlink(&elsewhere, cache.join("models")).unwrap();
    let o = run(&["cache", "clear", "models", "components"], "");
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("cleared models"), "{}", stdout(&o));
    assert!(
        elsewhere.join("keep.txt").exists(),
        "the link's target is not galley's"
    );
    assert!(!cache.join("models").exists() && !cache.join("components").exists());
    let o = run(&["cache", "clear"], "");
    assert!(!o.status.success(), "clear names what to delete");
    // The cache works again after a clear.
    call("math-answer", "");
    assert_eq!(
        json(&run(&["cache", "info", "--json"], ""))["components"]["entries"],
        1
    );
}
