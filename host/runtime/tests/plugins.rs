//! Every first-party plugin, built from source by `galley plugin build`, through the real
//! runtime: one test per behaviour a user relies on.

mod common;

use common::*;
use galley_core::{
    DataSource, Decision, Evaluator, Metric, PluginErrorKind, PluginKind, Prediction, Recipe,
    RewardFnExt, Value,
};
use galley_runtime::{CacheOutcome, Grants, InstanceOptions, Runtime, RuntimeConfig};
use serde_json::json;

#[test]
fn math_answer_reads_every_answer_format() {
    let mut r = load("math-answer")
        .reward(&json!({}), InstanceOptions::default())
        .unwrap();
    let cases: &[(&str, Value, Option<f64>)] = &[
        ("3 * 14 = 42\n#### 42", Value::Int(42), Some(1.0)),
        (
            "so we get \\boxed{42}.",
            Value::Text("42".into()),
            Some(1.0),
        ),
        ("The answer is 1,234.", Value::Int(1234), Some(1.0)),
        ("The answer is -7.", Value::Int(-7), Some(1.0)),
        ("The answer is 7.", Value::Int(-7), Some(0.0)),
        ("half: \\boxed{\\frac{1}{2}}", Value::Float(0.5), Some(1.0)),
        ("it is 3/4", Value::Text("0.75".into()), Some(1.0)),
        ("costs $18.00 in total", Value::Text("18".into()), Some(1.0)),
        (
            "#### 72",
            Value::Text("Natalia sold 48/2 = 24 clips in May.\n#### 72".into()),
            Some(1.0),
        ),
        (
            "<think>6*7</think><answer>#### 42</answer>",
            Value::Int(42),
            Some(1.0),
        ),
        ("I do not know", Value::Int(5), Some(0.0)),
        ("first 12, finally 13", Value::Int(12), Some(0.0)),
    ];
    let batch: Vec<_> = cases
        .iter()
        .map(|(c, a, _)| input(c, Some(a.clone())))
        .collect();
    let got = r.score_inputs(&batch).unwrap();
    for ((c, a, want), got) in cases.iter().zip(&got) {
        assert_eq!(got, want, "completion {c:?} with answer {a:?}");
    }
    // No ground truth: no opinion, not zero.
    assert_eq!(
        r.score_inputs(&[input("#### 42", None)]).unwrap(),
        vec![None]
    );
}

#[test]
fn math_answer_settings_are_checked() {
    let plugin = load("math-answer");
    let mut r = plugin
        .reward(
            &json!({"answer_key": "gold", "correct": 2.0, "fallback_last_number": false}),
            InstanceOptions::default(),
        )
        .unwrap();
    let mut i = input("maybe 42", None);
    i.metadata.insert("gold".into(), Value::Int(42));
    assert_eq!(
        r.score_inputs(&[i.clone()]).unwrap(),
        vec![Some(0.0)],
        "no marker and no fallback"
    );
    i.completion = "#### 42".into();
    assert_eq!(r.score_inputs(&[i]).unwrap(), vec![Some(2.0)]);

    let err = plugin
        .reward(&json!({"anser_key": "x"}), InstanceOptions::default())
        .err()
        .unwrap();
    assert_eq!(err.kind, PluginErrorKind::InvalidConfig);
    assert!(
        err.to_string().contains("math-answer@0.2.0") && err.to_string().contains("anser_key"),
        "{err}"
    );
}

#[test]
fn format_rewards_tags_in_order_and_patterns() {
    let plugin = load("format");
    let mut tags = plugin
        .reward(&json!({}), InstanceOptions::default())
        .unwrap();
    let got = tags
        .score_inputs(&[
            input("<think>6*7</think>\n<answer>42</answer>", None),
            input("<answer>42</answer><think>6*7</think>", None),
            input("<think>a</think><think>b</think><answer>42</answer>", None),
            input("preamble <think>x</think><answer>42</answer>", None),
        ])
        .unwrap();
    assert_eq!(got, vec![Some(1.0), Some(0.0), Some(0.0), Some(0.0)]);

    let mut partial = plugin
        .reward(&json!({"partial": true}), InstanceOptions::default())
        .unwrap();
    assert_eq!(
        partial
            .score_inputs(&[input("<think>only thinking</think>", None)])
            .unwrap(),
        vec![Some(0.5)]
    );

    let mut pattern = plugin
        .reward(
            &json!({"pattern": r"[^\n]*\n#### -?\d+"}),
            InstanceOptions::default(),
        )
        .unwrap();
    assert_eq!(
        pattern
            .score_inputs(&[input("work\n#### 42", None), input("#### 42", None)])
            .unwrap(),
        vec![Some(1.0), Some(0.0)]
    );

    let err = plugin
        .reward(&json!({"pattern": "("}), InstanceOptions::default())
        .err()
        .unwrap();
    assert_eq!(err.kind, PluginErrorKind::InvalidConfig, "{err}");
}

#[test]
fn length_penalty_is_dapo_soft_overlong() {
    let plugin = load("length-penalty");
    let mut r = plugin
        .reward(
            &json!({"max_length": 8, "buffer": 4}),
            InstanceOptions::default(),
        )
        .unwrap();
    let words = |n: usize| input(&vec!["w"; n].join(" "), None);
    let got = r
        .score_inputs(&[words(3), words(4), words(6), words(8), words(20)])
        .unwrap();
    assert_eq!(
        got,
        vec![Some(0.0), Some(0.0), Some(-0.5), Some(-1.0), Some(-1.0)]
    );
    let err = plugin
        .reward(&json!({}), InstanceOptions::default())
        .err()
        .unwrap();
    assert!(err.message.contains("max_length"), "{err}");
}

#[test]
fn jsonl_chat_streams_a_granted_file_and_names_bad_lines() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("train.jsonl"),
        concat!(
            r#"{"messages":[{"role":"user","content":"hi"},{"role":"assistant","content":"hello"}],"source":"demo","answer":42}"#, "\n",
            "\n",
            r#"{"prompt":"What is 2+2?","completion":"4","level":1}"#, "\n",
            r#"{"messages": [{"role": "user"}]}"#, "\n",
        ),
    )
    .unwrap();
    let plugin = load("jsonl-chat");
    let grants = Grants::default().allow_dir("data", dir.path());
    let opts = InstanceOptions {
        grants,
        ..Default::default()
    };
    let mut loader = plugin
        .data_loader(&json!({"path": "train.jsonl"}), opts.clone())
        .unwrap();
    let page = loader.next_page(2).unwrap();
    assert_eq!(page.len(), 2);
    assert_eq!(page[0].messages[1].content, "hello");
    assert_eq!(page[0].metadata.get("answer"), Some(&Value::Int(42)));
    assert_eq!(
        page[0].metadata.get("source"),
        Some(&Value::Text("demo".into()))
    );
    assert_eq!(page[1].messages.len(), 2);
    assert_eq!(page[1].messages[0].content, "What is 2+2?");
    assert_eq!(page[1].metadata.get("level"), Some(&Value::Int(1)));
    assert!(!page[1].metadata.contains_key("prompt"));
    let err = loader.next_page(2).unwrap_err();
    assert_eq!(err.kind, PluginErrorKind::InvalidInput);
    assert!(
        err.message.contains("train.jsonl:4") && err.message.contains("content"),
        "{err}"
    );

    // With skip_bad_lines the stream ends cleanly instead.
    let mut lenient = plugin
        .data_loader(
            &json!({"path": "train.jsonl", "skip_bad_lines": true}),
            opts,
        )
        .unwrap();
    assert_eq!(lenient.next_page(10).unwrap().len(), 2);
    assert!(lenient.next_page(10).unwrap().is_empty());
}

#[test]
fn jsonl_chat_needs_the_users_grant() {
    let err = load("jsonl-chat")
        .data_loader(&json!({"path": "train.jsonl"}), InstanceOptions::default())
        .err()
        .unwrap();
    assert_eq!(err.kind, PluginErrorKind::InvalidConfig);
    assert!(
        err.to_string().contains("jsonl-chat@0.2.0") && err.message.contains("--allow-dir data="),
        "{err}"
    );

    let dir = tempfile::tempdir().unwrap();
    let opts = InstanceOptions {
        grants: Grants::default().allow_dir("data", dir.path()),
        ..Default::default()
    };
    let err = load("jsonl-chat")
        .data_loader(&json!({"path": "../secrets.jsonl"}), opts.clone())
        .err()
        .unwrap();
    assert!(err.message.contains("without `..`"), "{err}");
    let err = load("jsonl-chat")
        .data_loader(&json!({"path": "missing.jsonl"}), opts)
        .err()
        .unwrap();
    assert!(err.message.contains("missing.jsonl"), "{err}");
}

#[test]
fn arith_is_seeded_unlimited_and_correct() {
    let plugin = load("arith");
    let read = |seed: u64, n: usize| {
        let opts = InstanceOptions {
            seed,
            ..Default::default()
        };
        let mut l = plugin
            .data_loader(&json!({"ops": ["+", "-", "*", "/"]}), opts)
            .unwrap();
        let mut all = Vec::new();
        while all.len() < n {
            all.extend(l.next_page(64).unwrap());
        }
        all
    };
    let a = read(7, 300);
    assert_eq!(a, read(7, 300), "same seed, same problems");
    assert_ne!(a, read(8, 300), "another seed, other problems");
    for ex in &a {
        let Value::Json(ops) = &ex.metadata["operands"] else {
            panic!("operands")
        };
        let ops: Vec<i64> = serde_json::from_str(ops).unwrap();
        let Value::Text(op) = &ex.metadata["operation"] else {
            panic!("operation")
        };
        let want = match op.as_str() {
            "+" => ops[0] + ops[1],
            "-" => ops[0] - ops[1],
            "*" => ops[0] * ops[1],
            _ => ops[0] / ops[1],
        };
        assert_eq!(
            ex.metadata["answer"],
            Value::Int(want),
            "{}",
            ex.messages[0].content
        );
        assert!(ex.messages[0].content.contains(&ops[0].to_string()));
    }
    let mut bounded = plugin
        .data_loader(&json!({"count": 5}), InstanceOptions::default())
        .unwrap();
    assert_eq!(bounded.next_page(100).unwrap().len(), 5);
    assert!(bounded.next_page(100).unwrap().is_empty());
    let err = plugin
        .data_loader(&json!({"ops": ["^"]}), InstanceOptions::default())
        .err()
        .unwrap();
    assert!(err.message.contains("unknown operation `^`"), "{err}");
}

#[test]
fn arith_answers_feed_math_answer() {
    // The loop a GRPO run makes: examples from one plugin, rewards from another.
    let mut loader = load("arith")
        .data_loader(&json!({"count": 20}), InstanceOptions::default())
        .unwrap();
    let mut reward = load("math-answer")
        .reward(&json!({}), InstanceOptions::default())
        .unwrap();
    let examples = loader.next_page(20).unwrap();
    let right: Vec<_> = examples
        .iter()
        .map(|e| galley_core::RewardInput {
            prompt: e.messages.clone(),
            completion: format!(
                "Let me compute.\n#### {}",
                e.metadata["answer"].as_text().unwrap()
            ),
            metadata: e.metadata.clone(),
            ..Default::default()
        })
        .collect();
    assert!(
        reward
            .score_inputs(&right)
            .unwrap()
            .iter()
            .all(|s| *s == Some(1.0))
    );
}

#[test]
fn exact_match_grades_and_aggregates() {
    let plugin = load("exact-match");
    let p = |pred: &str, refs: &[&str]| Prediction {
        id: pred.into(),
        prediction: pred.into(),
        references: refs.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    };
    let mut e = plugin
        .evaluator(&json!({}), InstanceOptions::default())
        .unwrap();
    let preds = [
        p("  Paris ", &["paris"]),
        p("Lyon", &["Paris", "lyon"]),
        p("Paris.", &["Paris"]),
        p("the Paris", &["Paris"]),
    ];
    let scores = e.score(&preds).unwrap();
    assert_eq!(
        scores.iter().map(|m| m[0].value).collect::<Vec<_>>(),
        vec![1.0, 1.0, 0.0, 0.0]
    );
    let summary = e.aggregate(&scores).unwrap();
    assert_eq!(
        summary,
        vec![Metric::new("exact_match", 0.5), Metric::new("count", 4.0)]
    );

    let mut loose = plugin
        .evaluator(
            &json!({"ignore_punctuation": true, "strip_articles": true}),
            InstanceOptions::default(),
        )
        .unwrap();
    let scores = loose.score(&preds).unwrap();
    assert_eq!(
        scores.iter().map(|m| m[0].value).collect::<Vec<_>>(),
        vec![1.0, 1.0, 1.0, 1.0]
    );
    let err = loose.score(&[p("x", &[])]).unwrap_err();
    assert_eq!(err.kind, PluginErrorKind::InvalidInput);
}

#[test]
fn curriculum_plans_and_reacts_to_metrics() {
    let mut r = load("curriculum")
        .recipe(InstanceOptions::default())
        .unwrap();
    let plan = r
        .plan(&json!({"target_reward": 0.8, "sft_epochs": 0}))
        .unwrap();
    assert_eq!(
        plan.iter().map(|s| s.kind.as_str()).collect::<Vec<_>>(),
        vec!["grpo", "evaluate"]
    );
    assert_eq!(plan[0].config["num_generations"], 8);
    assert_eq!(
        r.on_metrics("grpo", 10, &[Metric::new("reward", 0.5)])
            .unwrap(),
        Decision::Proceed
    );
    assert_eq!(
        r.on_metrics("grpo", 20, &[Metric::new("reward", 0.85)])
            .unwrap(),
        Decision::NextStage
    );
    match r
        .on_metrics("grpo", 21, &[Metric::new("loss", f64::NAN)])
        .unwrap()
    {
        Decision::Stop(why) => assert!(why.contains("loss") && why.contains("21"), "{why}"),
        d => panic!("expected stop, got {d:?}"),
    }
}

#[test]
fn compiled_components_are_cached_by_digest() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = || RuntimeConfig {
        cache_dir: Some(dir.path().to_path_buf()),
        ..RuntimeConfig::default()
    };
    let first = Runtime::new(cfg())
        .unwrap()
        .load(&plugin_path("length-penalty"))
        .unwrap();
    assert_eq!(first.cache_outcome(), CacheOutcome::Miss);
    let second = Runtime::new(cfg())
        .unwrap()
        .load(&plugin_path("length-penalty"))
        .unwrap();
    assert_eq!(second.cache_outcome(), CacheOutcome::Hit);
    // One entry and its tag.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
    let uncached = Runtime::new(RuntimeConfig {
        cache_dir: None,
        ..RuntimeConfig::default()
    })
    .unwrap();
    assert_eq!(
        uncached
            .load(&plugin_path("length-penalty"))
            .unwrap()
            .cache_outcome(),
        CacheOutcome::Disabled
    );
}

#[test]
fn manifests_travel_inside_components() {
    let p = load("jsonl-chat");
    assert_eq!(p.id(), "jsonl-chat@0.2.0");
    assert_eq!(p.kind(), PluginKind::DataLoader);
    assert_eq!(
        p.manifest().capabilities.read_dirs,
        vec!["data".to_string()]
    );
    assert_eq!(p.manifest().wit, Some(semver::Version::new(0, 2, 0)));
    assert_eq!(p.manifest().license.as_deref(), Some("Apache-2.0"));
    assert!(p.info().digest.starts_with("sha256:"));
}
