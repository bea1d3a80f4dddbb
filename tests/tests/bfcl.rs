//! `galley eval --tasks bfcl_...` through the binary, on BFCL's own data
//! (`scripts/fetch-bfcl.sh`): a stand-in OpenAI-compatible server on loopback answers some
//! entries with their ground truth written as Python calls and others wrongly, and galley's
//! accuracy must be exactly the share it answered right, with each sample saying what the
//! checker read; the tiny local model runs the same task through its chat template; and bad
//! task files and entries are one-line errors naming the key or the file and line. Training
//! and synthesis on BFCL are in `bfcl_training.rs`.

mod bfcl_entries;
mod served;

use bfcl_entries::*;
use galley_e2e::*;
use std::collections::HashMap;

#[test]
fn accuracy_is_the_share_of_answers_bfcls_checker_accepts() {
    let data = data_dir();
    let mut answers = HashMap::new();
    // simple_python: the first 6 right, in three writings (plain, fenced, one call without
    // brackets); the next 4 unanswered. parallel: 3 right, the 4th with its calls reversed
    // (still right: any order), the 5th with one call missing.
    let simple = entries("simple_python", 10);
    for (i, e) in simple.iter().enumerate().take(6) {
        let t = truth_text(e);
        let t = match i % 3 {
            0 => t,
            1 => format!("```\n{t}\n```"),
            _ => t.trim_start_matches('[').trim_end_matches(']').to_string(),
        };
        answers.insert(last_user(e), t);
    }
    let parallel = entries("parallel", 5);
    for (i, e) in parallel.iter().enumerate() {
        let mut calls = truth_calls(e);
        assert!(calls.len() > 1, "a parallel entry has several calls");
        match i {
            3 => calls.reverse(),
            4 => calls.truncate(1),
            _ => {}
        }
        let t = format!("[{}]", calls.join(", "));
        answers.insert(last_user(e), t);
    }
    // irrelevance: 3 answered with a call (wrong), 2 with text (right).
    let irrelevance = entries("irrelevance", 5);
    for e in irrelevance.iter().take(3) {
        let f = e["function"][0]["name"].as_str().unwrap();
        answers.insert(last_user(e), format!("[{f}()]"));
    }
    let url = stand_in(answers);
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let run = |tasks: &str, limit: &str| {
        let o = galley(
            tmp.path(),
            &[
                "eval",
                "--tasks",
                tasks,
                "--limit",
                limit,
                "--data-dir",
                data.to_str().unwrap(),
                "--base-url",
                &url,
                "--model-id",
                "stand-in",
                "-o",
                out.to_str().unwrap(),
                "--json",
            ],
        );
        assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
        serde_json::from_str::<serde_json::Value>(&stdout(&o)).unwrap()
    };
    let r = run("bfcl_simple_python", "10");
    assert_eq!(r["results"]["bfcl_simple_python"]["acc,none"], 0.6, "{r}");
    let s = samples(&out);
    assert_eq!(s.len(), 10);
    assert_eq!(s[0]["checked"]["valid"], true, "{}", s[0]);
    let (name, _) = simple[0]["ground_truth"][0]
        .as_object()
        .unwrap()
        .iter()
        .next()
        .unwrap();
    assert!(s[0]["checked"]["decoded"][0][name].is_object(), "{}", s[0]);
    assert_eq!(
        s[7]["checked"]["error_type"], "ast_decoder:decoder_failed",
        "{}",
        s[7]
    );
    assert!(
        s[7]["prompt"]
            .as_str()
            .unwrap()
            .contains("Here is a list of functions in json format")
    );

    let r = run("bfcl_parallel", "5");
    assert_eq!(r["results"]["bfcl_parallel"]["acc,none"], 0.8, "{r}");
    let s = samples(&out);
    assert_eq!(
        s[4]["checked"]["error_type"], "parallel_function_checker_no_order:wrong_count",
        "{}",
        s[4]
    );
    let r = run("bfcl_irrelevance", "5");
    assert_eq!(r["results"]["bfcl_irrelevance"]["acc,none"], 0.4, "{r}");
    // The groups: bfcl_non_live is BFCL's unweighted mean over its four categories.
    let r = run("bfcl_non_live", "5");
    let g = &r["groups"]["bfcl_non_live"]["acc,none"];
    let parts: f64 = ["simple_python", "multiple", "parallel", "parallel_multiple"]
        .iter()
        .map(|c| {
            r["results"][format!("bfcl_{c}")]["acc,none"]
                .as_f64()
                .unwrap()
        })
        .sum();
    assert!((g.as_f64().unwrap() - parts / 4.0).abs() < 1e-12, "{r}");
    // `bfcl` is every category, its subgroups with their figures.
    let r = run("bfcl", "1");
    assert_eq!(r["results"].as_object().unwrap().len(), 11, "{r}");
    assert!(r["groups"]["bfcl_live"]["acc,none"].is_number(), "{r}");
}

#[test]
fn the_local_model_answers_through_its_chat_template() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let text: Vec<String> = (0..40)
        .map(|i| format!("[calc(a={i})] is a call"))
        .collect();
    long_context_model(d, &text);
    let o = galley(
        d,
        &[
            "eval",
            "-m",
            "model",
            "--tasks",
            "bfcl_simple_python,bfcl_irrelevance",
            "--limit",
            "2",
            "--data-dir",
            data_dir().to_str().unwrap(),
            "-o",
            "out",
            "--gen-kwargs",
            "max_gen_toks=3",
        ],
    );
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    let s = samples(&d.join("out"));
    assert_eq!(s.len(), 4);
    for x in &s {
        // The conversation went through the model's template: ChatML here.
        let p = x["prompt"].as_str().unwrap();
        assert!(
            p.starts_with("<|im_start|>system\nYou are an expert in composing functions."),
            "{p}"
        );
        assert!(
            x["checked"]["valid"].is_boolean() && x["prediction"].is_string(),
            "{x}"
        );
    }
    assert!(stdout(&o).contains("bfcl_simple_python"), "{}", stdout(&o));
    // `--gen-kwargs` reached the task and the record.
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("out/results.json")).unwrap())
            .unwrap();
    assert_eq!(r["settings"]["gen_kwargs"]["max_gen_toks"], 3, "{r}");
}

#[test]
fn bad_function_calling_tasks_and_entries_name_the_key_or_the_line() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    // The task fails before any request: the server is never reached.
    let fails = || {
        let args = [
            "eval",
            "--tasks",
            "fc.yaml",
            "--base-url",
            "http://127.0.0.1:9/v1",
        ];
        let o = galley(d, &[&args[..], &["--model-id", "x"]].concat());
        assert!(!o.status.success());
        stderr(&o)
    };
    std::fs::write(
        d.join("fc.yaml"),
        "task: fc\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: calls.jsonl\n\
         test_split: test\noutput_type: function_calling\ndoc_to_text: \"{{question}}\"\n",
    )
    .unwrap();
    let e = fails();
    assert!(
        e.contains("fc.yaml") && e.contains("`doc_to_text`") && e.contains("BFCL entries"),
        "{e}"
    );

    std::fs::write(
        d.join("fc.yaml"),
        "task: fc\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: calls.jsonl\n\
         test_split: test\noutput_type: function_calling\nfunction_calling: {checker: simple}\n",
    )
    .unwrap();
    let good = entries("simple_python", 1)[0].to_string();
    std::fs::write(
        d.join("calls.jsonl"),
        format!("{good}\n{{\"id\": \"x\", \"question\": 3}}\n"),
    )
    .unwrap();
    let e = fails();
    assert!(
        e.contains("calls.jsonl:2") && e.contains("`question` is not a list"),
        "{e}"
    );

    std::fs::write(
        d.join("fc.yaml"),
        "task: fc\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: calls.jsonl\n\
         test_split: test\noutput_type: function_calling\nfunction_calling: {checker: sometimes}\n",
    )
    .unwrap();
    let e = fails();
    assert!(e.contains("fc.yaml") && e.contains("sometimes"), "{e}");
}

/// BFCL's FC mode: the functions go as OpenAI tools (names with dots underscored), the
/// server answers with tool calls, and those are judged; a model whose template shows no
/// tools is told so.
#[test]
fn native_mode_sends_tools_and_judges_tool_calls() {
    let data = data_dir();
    let simple = entries("simple_python", 4);
    let mut answers = HashMap::new();
    for (i, e) in simple.iter().enumerate() {
        let call = native_call(e, i == 2);
        if i < 3 {
            answers.insert(last_user(e), format!("CALLS:{}", serde_json::json!([call])));
        }
    }
    let url = stand_in(answers);
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let o = galley(
        tmp.path(),
        &[
            "eval",
            "--tasks",
            "bfcl_simple_python",
            "--limit",
            "4",
            "--function-calling",
            "native",
            "--data-dir",
            data.to_str().unwrap(),
            "--base-url",
            &url,
            "--model-id",
            "stand-in",
            "-o",
            out.to_str().unwrap(),
            "--json",
        ],
    );
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    let r: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(r["results"]["bfcl_simple_python"]["acc,none"], 0.5, "{r}");
    assert_eq!(r["settings"]["function_calling"], "native", "{r}");
    let s = samples(&out);
    assert_eq!(s[0]["checked"]["valid"], true, "{}", s[0]);
    assert_eq!(
        s[0]["checked"]["tool_calls"][0]["type"], "function",
        "{}",
        s[0]
    );
    assert_eq!(
        s[2]["checked"]["error_type"], "type_error:simple",
        "{}",
        s[2]
    );
    assert_eq!(
        s[3]["checked"]["error_type"], "ast_decoder:decoder_failed",
        "{}",
        s[3]
    );
    let prompt: serde_json::Value = serde_json::from_str(s[0]["prompt"].as_str().unwrap()).unwrap();
    assert_eq!(prompt["tools"][0]["type"], "function", "{prompt}");

    // The tiny model's ChatML template has no place for tools.
    let d = tmp.path();
    galley_train::testing::tiny_chat_model_from(&d.join("model"), &["a b c".to_string()]);
    let o = galley(
        d,
        &[
            "eval",
            "-m",
            "model",
            "--tasks",
            "bfcl_simple_python",
            "--limit",
            "1",
            "--function-calling",
            "native",
            "--data-dir",
            data.to_str().unwrap(),
        ],
    );
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("chat template shows no tools"),
        "{}",
        stderr(&o)
    );
}

/// Native mode end to end with models whose template shows tools: the local engine renders
/// BFCL's tools through the template and reads calls back; `galley serve` takes the same
/// tools (their schemas, `"format": "float"` included) from the remote engine. A random
/// model's answers are judged, whatever they are.
#[test]
fn native_mode_through_a_tool_template_locally_and_through_galley_serve() {
    let data = data_dir();
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    served::tiny_model(d, &["<tool_call>", "</tool_call>"]);
    widen(d);
    std::fs::write(d.join("tools.jinja"), served::TOOLS_TEMPLATE).unwrap();
    let s = served::serve(d, &["-m", "model", "--chat-template", "tools.jinja"]);
    let url = format!("{}/v1", s.url);
    let args = |extra: &[&str]| {
        let mut a = vec![
            "eval",
            "--tasks",
            "bfcl_simple_python,bfcl_parallel,bfcl_irrelevance",
            "--limit",
            "2",
            "--function-calling",
            "native",
            "--data-dir",
            data.to_str().unwrap(),
        ];
        a.extend_from_slice(extra);
        a.iter().map(|x| x.to_string()).collect::<Vec<_>>()
    };
    let run = |extra: &[&str], out: &str| {
        let a = args(&[extra, &["-o", out]].concat());
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        let o = galley(d, &a);
        assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
        samples(&d.join(out))
    };
    let remote = run(&["--base-url", &url, "--model-id", "model"], "remote");
    assert_eq!(remote.len(), 6);
    for x in &remote {
        assert!(x["checked"]["valid"].is_boolean(), "{x}");
    }
    // The local engine, with the same template as the model's own.
    set_json_key(
        &d.join("model/tokenizer_config.json"),
        "chat_template",
        served::TOOLS_TEMPLATE,
    );
    let local = run(&["-m", "model"], "local");
    assert_eq!(local.len(), 6);
    for x in &local {
        assert!(x["checked"]["valid"].is_boolean(), "{x}");
    }
}
