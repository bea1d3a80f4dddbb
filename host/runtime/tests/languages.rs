//! The same reward in Rust, Python, JavaScript and C, each built from source by
//! `galley plugin build` and run through the real runtime: identical scores on a shared file
//! of tricky completions, the hostile-plugin checks for the Python and JS runtimes, and the
//! compiled-component cache sparing the slow compile of a Python component.

mod common;

use common::*;
use galley_core::{PluginErrorKind as K, RewardFnExt, RewardInput};
use galley_runtime::{CacheOutcome, InstanceOptions, Runtime, RuntimeConfig};
use serde_json::json;

fn cases() -> Vec<RewardInput> {
    let text =
        std::fs::read_to_string(repo_root().join("plugins/examples/math-answer-cases.jsonl"))
            .unwrap();
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn math_answer_scores_the_same_in_rust_python_javascript_and_c() {
    let cases = cases();
    let rust = load("math-answer")
        .reward(&json!({}), InstanceOptions::default())
        .unwrap()
        .score_inputs(&cases)
        .unwrap();
    assert!(rust.contains(&Some(1.0)) && rust.contains(&Some(0.0)) && rust.contains(&None));
    for name in ["math-answer-py", "math-answer-js", "math-answer-c"] {
        let mut r = load(name)
            .reward(&json!({}), InstanceOptions::default())
            .unwrap();
        // One call for the whole file and one per case: grouping must not change a score.
        assert_eq!(
            r.score_inputs(&cases).unwrap(),
            rust,
            "{name} disagrees with the Rust plugin"
        );
        for (i, c) in cases.iter().enumerate() {
            assert_eq!(
                r.score_inputs(std::slice::from_ref(c)).unwrap()[0],
                rust[i],
                "{name}, case {i}: {:?}",
                c.completion
            );
        }
    }
}

#[test]
fn settings_reach_python_and_javascript_plugins() {
    for name in ["math-answer-py", "math-answer-js", "math-answer-c"] {
        let mut r = load(name)
            .reward(
                &json!({"correct": 2.0, "answer_key": "gold"}),
                InstanceOptions::default(),
            )
            .unwrap();
        let mut i = input("#### 5", None);
        i.metadata.insert("gold".into(), galley_core::Value::Int(5));
        assert_eq!(r.score_inputs(&[i]).unwrap(), vec![Some(2.0)], "{name}");
        if name == "math-answer-c" {
            continue; // the C SDK's settings scanner reads known keys only
        }
        let mut bad = load(name)
            .reward(&json!({"anser_key": "x"}), InstanceOptions::default())
            .unwrap();
        let err = bad.score_inputs(&[input("#### 5", None)]).unwrap_err();
        assert_eq!(err.kind, K::InvalidConfig, "{name}: {err}");
        assert!(err.message.contains("anser_key"), "{err}");
    }
}

fn hostile(
    name: &str,
    mode: &str,
    timeout_ms: u64,
    memory_mb: u64,
) -> Result<Vec<Option<f64>>, galley_core::PluginError> {
    load(name)
        .reward(&json!({"mode": mode}), opts(timeout_ms, memory_mb))
        .unwrap()
        .score_inputs(&[input("abc", None)])
}

#[test]
fn python_and_javascript_loops_are_stopped() {
    for name in ["hostile-py", "hostile-js"] {
        let err = hostile(name, "loop", 500, 256).unwrap_err();
        assert_eq!(err.kind, K::Timeout, "{name}: {err}");
    }
    assert_host_healthy();
}

#[test]
fn python_and_javascript_memory_bombs_hit_the_cap() {
    for name in ["hostile-py", "hostile-js"] {
        let err = hostile(name, "memory-bomb", 20_000, 128).unwrap_err();
        assert_eq!(err.kind, K::OutOfMemory, "{name}: {err}");
        assert!(err.message.contains("memory cap of 128 MiB"), "{err}");
    }
    assert_host_healthy();
}

#[test]
fn python_and_javascript_see_no_files_or_environment() {
    for name in ["hostile-py", "hostile-js"] {
        assert_eq!(
            hostile(name, "read-file", 10_000, 256).unwrap(),
            vec![Some(0.0)],
            "{name}"
        );
        assert_eq!(
            hostile(name, "ok", 10_000, 256).unwrap(),
            vec![Some(3.0)],
            "{name}"
        );
    }
    assert_eq!(
        hostile("hostile-py", "env", 10_000, 256).unwrap(),
        vec![Some(0.0)]
    );
}

#[test]
fn python_and_javascript_exceptions_name_the_plugin() {
    let err = hostile("hostile-py", "raise", 10_000, 256).unwrap_err();
    assert_eq!(err.kind, K::Failed);
    assert!(
        err.to_string().contains(
            "hostile-py@0.1.0: score: ValueError: hostile python plugin raised on purpose"
        ),
        "{err}"
    );
    let err = hostile("hostile-js", "throw", 10_000, 256).unwrap_err();
    assert!(
        err.to_string()
            .contains("hostile-js@0.1.0: score: Error: hostile js plugin threw on purpose"),
        "{err}"
    );
}

#[test]
fn a_python_component_compiles_once() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = || RuntimeConfig {
        cache_dir: Some(dir.path().to_path_buf()),
        ..RuntimeConfig::default()
    };
    assert_eq!(
        Runtime::new(cfg())
            .unwrap()
            .load(&plugin_path("math-answer-py"))
            .unwrap()
            .cache_outcome(),
        CacheOutcome::Miss
    );
    let again = Runtime::new(cfg())
        .unwrap()
        .load(&plugin_path("math-answer-py"))
        .unwrap();
    assert_eq!(again.cache_outcome(), CacheOutcome::Hit);
    let mut r = again
        .reward(&json!({}), InstanceOptions::default())
        .unwrap();
    assert_eq!(
        r.score_inputs(&[input("#### 42", Some(galley_core::Value::Int(42)))])
            .unwrap(),
        vec![Some(1.0)]
    );
}

/// Every SDK hands a reward the same reading of a completion (`galley:plugin@0.2`): its tool
/// calls with their arguments (parsed to a dict or object in Python and JavaScript), its
/// reasoning and whether the budget cut it. Each plugin folds what it got into one number
/// (1000 x calls + 100 x argument keys + reasoning length + 0.5 if cut).
#[test]
fn every_sdk_hands_over_the_same_reading() {
    use galley_core::{Completion, Message, Metadata, RewardFn, RewardGroup, ToolCall};
    let call = |name: &str, args: &str| ToolCall {
        id: Some(format!("call_{name}")),
        name: name.into(),
        arguments: args.into(),
    };
    let mut two_calls = Message::new("assistant", "");
    two_calls.tool_calls = vec![
        call("get_weather", r#"{"city": "Paris", "unit": "celsius"}"#),
        call("get_time", r#"{"zone": "CET"}"#),
    ];
    two_calls.reasoning_content = Some("Weather and time.".into());
    let mut not_json = Message::new("assistant", "text");
    not_json.tool_calls = vec![call("broken", r#"{"x": "#)];
    let plain = Message::new("assistant", "Just text.");
    let completions = vec![
        Completion {
            text: "<tool_call>...</tool_call>",
            message: Some(&two_calls),
            truncated: false,
        },
        Completion {
            text: "text",
            message: Some(&not_json),
            truncated: true,
        },
        Completion {
            text: "Just text.",
            message: Some(&plain),
            truncated: false,
        },
        Completion::text("no reading at all"),
    ];
    let prompt = [Message::new("user", "Weather and time in Paris?")];
    let metadata = Metadata::new();
    let groups = [RewardGroup {
        prompt: &prompt,
        metadata: &metadata,
        completions,
    }];
    let want = vec![Some(2317.0), Some(1000.5), Some(0.0), Some(0.0)];
    for name in ["hostile-reward", "hostile-py", "hostile-js", "reading-c"] {
        let got = load(name)
            .reward(&json!({"mode": "reading"}), opts(20_000, 256))
            .unwrap()
            .score(&groups)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(got, want, "{name}");
    }
}

/// The Python and JavaScript SDKs hand a data loader's TRL tool-calling conversation over
/// whole: calls (arguments given as a dict or as JSON text), a tool turn's call id and name,
/// reasoning, and an assistant turn that only calls.
#[test]
fn python_and_javascript_loaders_hand_over_tool_calls() {
    use galley_core::{DataSource, ToolCall};
    for name in ["tools-loader-py", "tools-loader-js"] {
        let mut loader = load(name)
            .data_loader(&json!({}), InstanceOptions::default())
            .unwrap();
        let page = loader.next_page(4).unwrap();
        assert_eq!(page.len(), 1, "{name}");
        let m = &page[0].messages;
        assert_eq!(m.len(), 4, "{name}");
        assert_eq!(m[1].content, "", "{name}");
        assert_eq!(
            m[1].reasoning_content.as_deref(),
            Some("Ask the tool."),
            "{name}"
        );
        assert_eq!(m[1].tool_calls.len(), 2, "{name}");
        assert_eq!(m[1].tool_calls[0].id.as_deref(), Some("c1"), "{name}");
        assert_eq!(m[1].tool_calls[0].name, "get_weather", "{name}");
        let args: serde_json::Value = serde_json::from_str(&m[1].tool_calls[0].arguments).unwrap();
        assert_eq!(args, json!({"city": "Paris"}), "{name}");
        assert_eq!(
            m[1].tool_calls[1],
            ToolCall {
                id: None,
                name: "get_time".into(),
                arguments: r#"{"zone": "CET"}"#.into(),
            },
            "{name}"
        );
        assert_eq!(m[2].tool_call_id.as_deref(), Some("c1"), "{name}");
        assert_eq!(m[2].name.as_deref(), Some("get_weather"), "{name}");
        assert!(
            m[3].tool_calls.is_empty() && m[3].reasoning_content.is_none(),
            "{name}"
        );
    }
}
