//! `galley plugin new` + `galley plugin build` + `galley plugin call`, from an empty folder,
//! for every language and kind, the way a new author starts.

use galley_e2e::*;
use std::path::Path;

fn check(lang: &str, kind: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let name = format!("my-{lang}-{kind}");
    let o = galley(
        tmp.path(),
        &["plugin", "new", &name, "--lang", lang, "--kind", kind],
    );
    assert!(
        o.status.success(),
        "{lang}/{kind}: new failed: {}",
        stderr(&o)
    );
    let dir = tmp.path().join(&name);
    for f in ["galley.toml", "README.md"] {
        assert!(dir.join(f).exists(), "{lang}/{kind}: no {f}");
    }
    let o = galley(&dir, &["plugin", "build", ".", "-o", "out"]);
    assert!(
        o.status.success(),
        "{lang}/{kind}: build failed:\n{}",
        stderr(&o)
    );
    let wasm = format!("out/{name}.wasm");
    let call = |args: &[&str]| {
        let mut all = vec!["plugin", "call", wasm.as_str()];
        all.extend_from_slice(args);
        let o = galley(&dir, &all);
        assert!(
            o.status.success(),
            "{lang}/{kind}: call failed:\n{}",
            stderr(&o)
        );
        stdout(&o)
    };
    match kind {
        "reward" => assert_eq!(
            call(&["--input", "test-input.jsonl", "--json"]).trim(),
            "[1.0,0.0,null]",
            "{lang}"
        ),
        "loader" => {
            let out = call(&["--max", "3", "--config", "@test-input.json"]);
            let lines: Vec<serde_json::Value> = out
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect();
            assert_eq!(lines.len(), 3, "{lang}: {out}");
            assert_eq!(lines[0]["metadata"]["answer"], 1, "{lang}: {out}");
            assert_eq!(
                lines[2]["messages"][0]["content"], "What is 2 + 1?",
                "{lang}: {out}"
            );
            // The template's own validation reaches the user as a one-line settings error.
            let line = one_line_error(&galley(
                &dir,
                &["plugin", "call", &wasm, "--config", r#"{"count": -1}"#],
            ));
            assert!(
                line.contains("invalid settings") && line.contains("count"),
                "{lang}: {line}"
            );
        }
        "evaluator" => {
            let out = call(&["--input", "test-input.jsonl"]);
            assert!(
                out.contains("summary\texact_match=0.5000 count=2.0000"),
                "{lang}: {out}"
            );
        }
        "recipe" => {
            let out = call(&[
                "--config",
                "@test-input.json",
                "--metric",
                "reward=0.85",
                "--stage",
                "grpo",
            ]);
            assert!(
                out.starts_with("sft\tsft\t{\"epochs\":1}") && out.contains("decision\tnext-stage"),
                "{lang}: {out}"
            );
        }
        "tool" => {
            // No calls: the functions, as the `tools` list a template is shown.
            let listed: serde_json::Value = serde_json::from_str(call(&[]).trim()).unwrap();
            assert_eq!(
                listed["function"]["name"], "count_words",
                "{lang}: {listed}"
            );
            let out = call(&[
                "--function",
                "count_words",
                "--arguments",
                r#"{"text": "one two three"}"#,
            ]);
            assert_eq!(out, "count_words\t3\n", "{lang}");
            // A call the model got wrong comes back as an input error it can read.
            let out = call(&["--function", "count_words", "--arguments", "{}"]);
            assert!(
                out.starts_with("count_words\terror: ") && out.contains("`text`"),
                "{lang}: {out}"
            );
        }
        "environment" => {
            // One game from the scaffold's test input: the row's secret, two guesses.
            let out = call(&["--meta", "secret=42", "--input", "test-input.jsonl"]);
            assert!(
                out.contains("guess\tlower\nguess\tcorrect\nreward\t0.5\n"),
                "{lang}: {out}"
            );
            assert!(out.contains("reset\t\" I am thinking"), "{lang}: {out}");
        }
        _ => unreachable!(),
    }
}

fn all_kinds(lang: &str) {
    for kind in ["reward", "loader", "evaluator", "recipe"] {
        check(lang, kind);
    }
}

#[test]
fn rust_plugins_from_scratch() {
    all_kinds("rust");
    check("rust", "tool");
    check("rust", "environment");
}

#[test]
fn python_plugins_from_scratch() {
    all_kinds("python");
    check("python", "tool");
    check("python", "environment");
}

#[test]
fn javascript_plugins_from_scratch() {
    all_kinds("js");
    check("js", "tool");
}

#[test]
fn c_plugins_from_scratch() {
    all_kinds("c");
}

#[test]
fn new_refuses_a_bad_name_or_a_used_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let line = one_line_error(&galley(tmp.path(), &["plugin", "new", "Bad Name"]));
    assert!(line.contains("key `name`"), "{line}");
    std::fs::create_dir_all(tmp.path().join("taken")).unwrap();
    std::fs::write(tmp.path().join("taken/x"), "").unwrap();
    let line = one_line_error(&galley(tmp.path(), &["plugin", "new", "taken"]));
    assert!(line.contains("not empty"), "{line}");
    assert!(!Path::new(&tmp.path().join("Bad Name")).exists());
    let line = one_line_error(&galley(
        tmp.path(),
        &["plugin", "new", "t", "--lang", "c", "--kind", "tool"],
    ));
    assert!(
        line.contains("written in Rust, Python or JavaScript for now"),
        "{line}"
    );
    assert!(!tmp.path().join("t").exists());
    let line = one_line_error(&galley(
        tmp.path(),
        &[
            "plugin",
            "new",
            "e",
            "--lang",
            "js",
            "--kind",
            "environment",
        ],
    ));
    assert!(line.contains("written in Rust or Python for now"), "{line}");
}
