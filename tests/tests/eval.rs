//! `galley eval` through the binary, on a tiny random model made on the spot and task files
//! written by the test in lm-evaluation-harness's format: a multiple-choice task, a
//! generation task with regex filters, evaluator plugins as metrics (a real one, and a
//! trapping one under `skip` and `stop`), a PEFT adapter that changes the scores, and bad
//! input (an unknown task, a bad key, Python code, missing data): one-line errors that name
//! the file, line and key.

use galley_e2e::*;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::Mutex;

/// Model runs one at a time: candle's threads spin, and two models on two cores crawl.
static HEAVY: Mutex<()> = Mutex::new(());

fn eval(dir: &Path, args: &[&str]) -> Output {
    let _one = HEAVY.lock().unwrap_or_else(|e| e.into_inner());
    let mut all = vec!["eval"];
    all.extend_from_slice(args);
    galley(dir, &all)
}

fn ok(o: Output) -> String {
    assert!(o.status.success(), "failed:\n{}{}", stdout(&o), stderr(&o));
    stdout(&o)
}

/// A folder with the tiny model, a multiple-choice task and a generation task.
fn project() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let text: Vec<String> = (0..120)
        .map(|i| {
            format!(
                "Question: what is {i} plus one?\nAnswer: {} #### {}",
                i + 1,
                i + 1
            )
        })
        .collect();
    galley_train::testing::tiny_chat_model_from(&d.join("model"), &text);
    std::fs::create_dir_all(d.join("data")).unwrap();
    let mut mc = String::new();
    for i in 0..12 {
        let row = serde_json::json!({
            "question": format!("what is {i} plus one?"),
            "choices": {"text": [format!("{}", i + 1), format!("{}", i + 7), "no"], "label": ["A", "B", "C"]},
            "answerKey": (["A", "B", "C"])[i % 3],
        });
        mc.push_str(&format!("{row}\n"));
    }
    std::fs::write(d.join("data/mc.jsonl"), &mc).unwrap();
    std::fs::write(
        d.join("sums.yaml"),
        "task: sums\n\
         dataset_path: json\n\
         dataset_kwargs:\n  data_files:\n    test: data/mc.jsonl\n\
         output_type: multiple_choice\n\
         test_split: test\n\
         doc_to_text: \"Question: {{question}}\\nAnswer:\"\n\
         doc_to_target: \"{{choices.label.index(answerKey)}}\"\n\
         doc_to_choice: \"{{choices.text}}\"\n\
         metric_list:\n  - metric: acc\n  - metric: acc_norm\n",
    )
    .unwrap();
    let mut generation = String::new();
    for i in 0..6 {
        let row = serde_json::json!({"question": format!("what is {i} plus one?"), "answer": format!("{} #### {}", i + 1, i + 1)});
        generation.push_str(&format!("{row}\n"));
    }
    std::fs::write(d.join("data/gen.jsonl"), &generation).unwrap();
    std::fs::write(
        d.join("gen.yaml"),
        "task: gen\n\
         dataset_path: json\n\
         dataset_kwargs:\n  data_files:\n    test: data/gen.jsonl\n\
         output_type: generate_until\n\
         test_split: test\n\
         fewshot_split: test\n\
         num_fewshot: 1\n\
         doc_to_text: \"Question: {{question}}\\nAnswer:\"\n\
         doc_to_target: \"{{answer}}\"\n\
         generation_kwargs:\n  until: [\"Question:\"]\n  max_gen_toks: 12\n\
         metric_list:\n  - metric: exact_match\n    regexes_to_ignore: [\"(?s).*#### \"]\n\
         filter_list:\n  - name: strict\n    filter:\n      - function: regex\n        regex_pattern: \"#### (\\\\-?[0-9]+)\"\n      - function: take_first\n  - name: loose\n    filter:\n      - function: regex\n        regex_pattern: \"(-?[0-9]+)\"\n        group_select: -1\n",
    )
    .unwrap();
    let model = d.join("model");
    (tmp, model)
}

fn results(dir: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("results.json")).unwrap()).unwrap()
}

#[test]
fn a_multiple_choice_task_gives_harness_results_and_samples() {
    let (tmp, model) = project();
    let d = tmp.path();
    let out = ok(eval(
        d,
        &[
            "-m",
            model.to_str().unwrap(),
            "--tasks",
            "sums.yaml",
            "-o",
            "out",
        ],
    ));
    assert!(out.contains("| sums") && out.contains("acc_norm"), "{out}");
    let r = results(&d.join("out"));
    let t = &r["results"]["sums"];
    assert_eq!(t["n"], 12);
    let acc = t["acc,none"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&acc));
    assert!(t["acc_stderr,none"].as_f64().unwrap() > 0.0 || acc == 0.0 || acc == 1.0);
    assert_eq!(t["task_digest"].as_str().unwrap().len(), 64);
    assert_eq!(r["model"]["digest"].as_str().unwrap().len(), 64);
    assert!(r["model"]["adapter"].is_null());
    let s = samples(&d.join("out"));
    assert_eq!(s.len(), 12);
    assert_eq!(s[0]["choices"].as_array().unwrap().len(), 3);
    assert_eq!(s[0]["loglikelihoods"].as_array().unwrap().len(), 3);
    assert!(
        s[0]["prompt"]
            .as_str()
            .unwrap()
            .starts_with("Question: what is 0 plus one?")
    );
    // Every grade agrees with the log-likelihoods it came from.
    for x in &s {
        let lls: Vec<f64> = x["loglikelihoods"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p[0].as_f64().unwrap())
            .collect();
        assert!(lls.iter().all(|l| *l < 0.0), "{lls:?}");
        let best = (0..lls.len()).fold(0, |b, i| if lls[i] > lls[b] { i } else { b });
        let gold = x["choices"]
            .as_array()
            .unwrap()
            .iter()
            .position(|c| c == &x["target"])
            .unwrap();
        assert_eq!(
            x["grades"]["acc,none"].as_f64().unwrap(),
            f64::from(u8::from(best == gold))
        );
    }
    // The same run twice gives the same numbers; --json prints the results.
    let again = ok(eval(
        d,
        &[
            "-m",
            model.to_str().unwrap(),
            "--tasks",
            "sums.yaml",
            "--json",
        ],
    ));
    let j: serde_json::Value = serde_json::from_str(&again).unwrap();
    assert_eq!(j["results"]["sums"]["acc,none"], t["acc,none"]);
    assert_eq!(j["results"]["sums"]["acc_norm,none"], t["acc_norm,none"]);
}

#[test]
fn a_generation_task_with_regex_filters() {
    let (tmp, model) = project();
    let d = tmp.path();
    ok(eval(
        d,
        &[
            "-m",
            model.to_str().unwrap(),
            "--tasks",
            "gen.yaml",
            "-o",
            "out",
            "--limit",
            "4",
        ],
    ));
    let r = results(&d.join("out"));
    let t = &r["results"]["gen"];
    assert_eq!(t["n"], 4);
    assert_eq!(t["num_fewshot"], 1);
    for f in ["strict", "loose"] {
        assert!(t[format!("exact_match,{f}")].is_number(), "{t}");
    }
    for s in samples(&d.join("out")) {
        let pred = s["prediction"].as_str().unwrap();
        assert!(
            !pred.contains("Question:"),
            "the stop string is cut: {pred:?}"
        );
        // The strict filter finds "#### N" or falls back to [invalid].
        let strict = s["filtered"]["strict"].as_str().unwrap();
        assert!(
            strict == "[invalid]" || strict.parse::<i64>().is_ok(),
            "{strict}"
        );
        // One few-shot example from the same split, never the question itself.
        let prompt = s["prompt"].as_str().unwrap();
        assert_eq!(prompt.matches("Question:").count(), 2, "{prompt}");
        let q = prompt.rsplit("Question:").next().unwrap();
        assert!(
            !prompt[..prompt.len() - q.len() - 9].contains(q.trim()),
            "{prompt}"
        );
    }
}

/// MMLU's shape: the examples come from a separate `dev` split holding exactly as many
/// documents as the shots, taken in order (`first_n`); none is excluded, since none is the
/// question. With the evaluated split as the few-shot split, a document is never its own
/// example, and a split of only K documents is too small for K shots.
#[test]
fn a_separate_fewshot_split_of_exactly_k_documents_gives_k_shots() {
    let (tmp, model) = project();
    let d = tmp.path();
    let dev: String = ["seventy", "eighty"]
        .iter()
        .map(|w| {
            let row =
                serde_json::json!({"question": format!("what is {w}?"), "answer": "1 #### 1"});
            format!("{row}\n")
        })
        .collect();
    std::fs::write(d.join("data/dev.jsonl"), dev).unwrap();
    let task = |name: &str, fewshot: &str| {
        format!(
            "task: {name}\n\
             dataset_path: json\n\
             dataset_kwargs:\n  data_files:\n    test: data/gen.jsonl\n    dev: data/dev.jsonl\n\
             output_type: generate_until\n\
             test_split: test\n\
             fewshot_split: {fewshot}\n\
             num_fewshot: 2\n\
             fewshot_config:\n  sampler: first_n\n\
             doc_to_text: \"Question: {{{{question}}}}\\nAnswer:\"\n\
             doc_to_target: \"{{{{answer}}}}\"\n\
             generation_kwargs:\n  until: [\"Question:\"]\n  max_gen_toks: 4\n\
             metric_list:\n  - metric: exact_match\n"
        )
    };
    std::fs::write(d.join("dev.yaml"), task("dev", "dev")).unwrap();
    let m = model.to_str().unwrap();
    ok(eval(
        d,
        &["-m", m, "--tasks", "dev.yaml", "-o", "out", "--limit", "3"],
    ));
    let s = samples(&d.join("out"));
    assert_eq!(s.len(), 3);
    for s in s {
        let prompt = s["prompt"].as_str().unwrap();
        assert_eq!(prompt.matches("Question:").count(), 3, "{prompt}");
        let seventy = prompt.find("what is seventy?").expect(prompt);
        let eighty = prompt.find("what is eighty?").expect(prompt);
        assert!(seventy < eighty, "{prompt}");
    }
    // Drawing from `test` itself (6 documents): 2 shots, never the question.
    std::fs::write(d.join("self.yaml"), task("self", "test")).unwrap();
    ok(eval(
        d,
        &[
            "-m",
            m,
            "--tasks",
            "self.yaml",
            "-o",
            "self",
            "--limit",
            "3",
        ],
    ));
    // And a `dev` of 2 documents is too small for 3 shots; the error says how many it needs.
    let o = eval(
        d,
        &[
            "-m",
            m,
            "--tasks",
            "dev.yaml",
            "-o",
            "x",
            "--num-fewshot",
            "3",
        ],
    );
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(
        err.contains("3-shot needs 3 documents in split `dev`, which has 2"),
        "{err}"
    );
}

fn with_metric(d: &Path, name: &str, metric: &str) {
    let base = std::fs::read_to_string(d.join("sums.yaml")).unwrap();
    let base = base.replace("task: sums", &format!("task: {name}"));
    let cut = base.find("metric_list:").unwrap();
    std::fs::write(
        d.join(format!("{name}.yaml")),
        format!("{}metric_list:\n{metric}", &base[..cut]),
    )
    .unwrap();
}

#[test]
fn evaluator_plugins_grade_in_the_sandbox_under_both_policies() {
    let (tmp, model) = project();
    let d = tmp.path();
    let m = model.to_str().unwrap();
    let em = plugin("exact-match");
    with_metric(
        d,
        "plugged",
        &format!(
            "  - metric: acc\n  - plugin: {}\n    settings: {{ignore_case: true}}\n",
            em.display()
        ),
    );
    ok(eval(d, &["-m", m, "--tasks", "plugged.yaml", "-o", "out"]));
    let t = &results(&d.join("out"))["results"]["plugged"];
    // The plugin grades the chosen answer: the same as acc, here.
    assert_eq!(t["exact_match,none"], t["acc,none"], "{t}");
    assert_eq!(
        t["count,none"].as_f64(),
        Some(12.0),
        "the plugin's own aggregate: {t}"
    );

    // A plugin metric named like a built-in one is kept apart, not silently merged.
    with_metric(
        d,
        "both",
        &format!("  - metric: exact_match\n  - plugin: {}\n", em.display()),
    );
    ok(eval(d, &["-m", m, "--tasks", "both.yaml", "-o", "both"]));
    let t = &results(&d.join("both"))["results"]["both"];
    assert!(t["exact_match,none"].is_number(), "{t}");
    assert_eq!(
        t["exact-match/exact_match,none"], t["exact_match,none"],
        "{t}"
    );

    let hostile = plugin("hostile-evaluator");
    with_metric(
        d,
        "skipping",
        &format!(
            "  - metric: acc\n  - plugin: {}\n    settings: {{mode: trap-score}}\n    on_error: skip\n",
            hostile.display()
        ),
    );
    let o = eval(d, &["-m", m, "--tasks", "skipping.yaml", "-o", "skip"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("hostile-evaluator"),
        "the skip is reported: {}",
        stderr(&o)
    );
    let t = &results(&d.join("skip"))["results"]["skipping"];
    assert_eq!(t["skipped"], 12);
    assert!(t["acc,none"].is_number(), "built-in metrics survive: {t}");

    with_metric(
        d,
        "stopping",
        &format!(
            "  - metric: acc\n  - plugin: {}\n    settings: {{mode: trap-score}}\n    on_error: stop\n",
            hostile.display()
        ),
    );
    let o = eval(d, &["-m", m, "--tasks", "stopping.yaml", "-o", "stop"]);
    assert!(!o.status.success());
    // The runtime's warning about the trap, then exactly one error line naming the plugin.
    let err = stderr(&o);
    let errors: Vec<&str> = err.lines().filter(|l| l.starts_with("error: ")).collect();
    assert_eq!(errors.len(), 1, "{err}");
    let line = errors[0];
    assert!(
        line.contains("hostile-evaluator") && line.contains("score"),
        "{line}"
    );
}

/// A task file's relative paths — its data and its metric plugin — are taken from the task
/// file's folder, whichever folder galley runs from (the plugin's used to be taken from the
/// current folder, so a task folder that worked from one place failed from another).
#[test]
fn a_task_files_plugin_path_is_relative_to_the_task_file() {
    let (tmp, model) = project();
    let d = tmp.path();
    let m = model.to_str().unwrap();
    let tasks = d.join("suite/tasks");
    std::fs::create_dir_all(tasks.join("data")).unwrap();
    std::fs::create_dir_all(tasks.join("plugins")).unwrap();
    std::fs::copy(d.join("data/mc.jsonl"), tasks.join("data/mc.jsonl")).unwrap();
    std::fs::copy(plugin("exact-match"), tasks.join("plugins/em.wasm")).unwrap();
    with_metric(d, "moved", "  - metric: acc\n  - plugin: plugins/em.wasm\n");
    std::fs::rename(d.join("moved.yaml"), tasks.join("moved.yaml")).unwrap();
    let elsewhere = d.join("elsewhere");
    std::fs::create_dir_all(&elsewhere).unwrap();
    ok(eval(
        &elsewhere,
        &[
            "-m",
            m,
            "--tasks",
            "moved",
            "--include-path",
            "../suite/tasks",
            "-o",
            "out",
        ],
    ));
    let t = &results(&elsewhere.join("out"))["results"]["moved"];
    assert!(t["acc,none"].is_number(), "{t}");
    assert_eq!(t["exact_match,none"], t["acc,none"], "{t}");

    // A plugin the task names that is not there: the error names the task file and the path
    // it looked at, beside the task file.
    with_metric(d, "missing", "  - plugin: plugins/nope.wasm\n");
    std::fs::rename(d.join("missing.yaml"), tasks.join("missing.yaml")).unwrap();
    let o = eval(
        &elsewhere,
        &["-m", m, "--tasks", "../suite/tasks/missing.yaml", "-o", "m"],
    );
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(
        err.contains("missing.yaml") && err.contains("suite/tasks/plugins/nope.wasm"),
        "{err}"
    );
}

/// Writes a PEFT adapter (safetensors by hand) that perturbs layer 0's q and v projections.
#[test]
fn an_adapter_changes_the_scores_it_is_not_silently_ignored() {
    let (tmp, model) = project();
    let d = tmp.path();
    let m = model.to_str().unwrap();
    write_adapter(&model, &d.join("adapter"));
    ok(eval(d, &["-m", m, "--tasks", "sums.yaml", "-o", "base"]));
    ok(eval(
        d,
        &[
            "-m",
            m,
            "--adapter",
            "adapter",
            "--tasks",
            "sums.yaml",
            "-o",
            "adapted",
        ],
    ));
    let (b, a) = (samples(&d.join("base")), samples(&d.join("adapted")));
    let diff = b
        .iter()
        .zip(&a)
        .flat_map(|(x, y)| {
            let xs = x["loglikelihoods"].as_array().unwrap().clone();
            let ys = y["loglikelihoods"].as_array().unwrap().clone();
            xs.into_iter()
                .zip(ys)
                .map(|(p, q)| (p[0].as_f64().unwrap() - q[0].as_f64().unwrap()).abs())
        })
        .fold(0.0, f64::max);
    assert!(
        diff > 1e-3,
        "the adapter moved no log-likelihood (max change {diff})"
    );
    let r = results(&d.join("adapted"));
    assert_eq!(r["model"]["adapter_digest"].as_str().unwrap().len(), 64);
    // An adapter for modules the model lacks is refused, not dropped.
    let bad = d.join("bad-adapter");
    write_adapter(&model, &bad);
    let mut st = std::fs::read(bad.join("adapter_model.safetensors")).unwrap();
    // Same length, so the header stays valid: only the module names change.
    for i in 0..st.len() - 9 {
        if &st[i..i + 9] == b"layers.0." {
            st[i + 7] = b'9';
        }
    }
    std::fs::write(bad.join("adapter_model.safetensors"), st).unwrap();
    let line = one_line_error(&eval(
        d,
        &["-m", m, "--adapter", "bad-adapter", "--tasks", "sums.yaml"],
    ));
    assert!(
        line.contains("layers.9") && line.contains("bad-adapter"),
        "{line}"
    );
}

#[test]
fn bad_input_is_one_line_naming_what_and_where() {
    let (tmp, model) = project();
    let d = tmp.path();
    let m = model.to_str().unwrap();
    let line = one_line_error(&eval(d, &["-m", m, "--tasks", "arc_hard"]));
    assert!(
        line.contains("arc_hard") && line.contains("arc_easy") && line.contains("gsm8k"),
        "{line}"
    );
    std::fs::write(
        d.join("typo.yaml"),
        "task: typo\noutput_type: multiple_choice\ntest_split: test\ndoc_to_txt: x\n",
    )
    .unwrap();
    let line = one_line_error(&eval(d, &["-m", m, "--tasks", "typo.yaml"]));
    assert!(
        line.contains("typo.yaml:4") && line.contains("doc_to_txt"),
        "{line}"
    );
    std::fs::write(
        d.join("py.yaml"),
        "task: py\noutput_type: multiple_choice\ntest_split: test\nprocess_docs: !function utils.process_docs\n",
    )
    .unwrap();
    let line = one_line_error(&eval(d, &["-m", m, "--tasks", "py.yaml"]));
    assert!(
        line.contains("py.yaml:4") && line.contains("process_docs") && line.contains("Python"),
        "{line}"
    );
    let empty = d.join("no-data");
    std::fs::create_dir_all(&empty).unwrap();
    let line = one_line_error(&eval(
        d,
        &[
            "-m",
            m,
            "--tasks",
            "arc_easy",
            "--data-dir",
            empty.to_str().unwrap(),
        ],
    ));
    assert!(
        line.contains("fetch-eval-data.sh") && line.contains("ARC-Easy"),
        "{line}"
    );
    std::fs::write(
        d.join("data/broken.jsonl"),
        "{\"question\": \"q\"}\nnot json\n",
    )
    .unwrap();
    let broken = std::fs::read_to_string(d.join("sums.yaml"))
        .unwrap()
        .replace("mc.jsonl", "broken.jsonl");
    std::fs::write(
        d.join("broken.yaml"),
        broken.replace("task: sums", "task: broken"),
    )
    .unwrap();
    let line = one_line_error(&eval(d, &["-m", m, "--tasks", "broken.yaml"]));
    assert!(line.contains("broken.jsonl:2"), "{line}");
    // A template naming a column the data lacks: the task, the document and the field.
    let undefined = std::fs::read_to_string(d.join("sums.yaml"))
        .unwrap()
        .replace("{{question}}", "{{questoin}}");
    std::fs::write(
        d.join("undef.yaml"),
        undefined.replace("task: sums", "task: undef"),
    )
    .unwrap();
    let line = one_line_error(&eval(d, &["-m", m, "--tasks", "undef.yaml"]));
    assert!(
        line.contains("undef") && line.contains("document 0") && line.contains("doc_to_text"),
        "{line}"
    );
}

#[test]
fn a_judge_whose_answer_does_not_parse_scores_nothing() {
    let (tmp, model) = project();
    let d = tmp.path();
    let m = model.to_str().unwrap();
    // A tiny random model writes no `Score:` line: every verdict is a failure, none a score.
    std::fs::write(
        d.join("answers.jsonl"),
        "{\"question\": \"what is 1 plus one?\", \"answer\": \"2\", \"reference\": \"2\"}\n{\"prompt\": \"what is 2 plus one?\", \"completion\": \"5\"}\n",
    )
    .unwrap();
    let o = {
        let _one = HEAVY.lock().unwrap_or_else(|e| e.into_inner());
        galley(
            d,
            &[
                "judge",
                "answers.jsonl",
                "-m",
                m,
                "--max-tokens",
                "8",
                "-o",
                "verdicts.jsonl",
                "--json",
            ],
        )
    };
    let summary: serde_json::Value = serde_json::from_str(&ok(o)).unwrap();
    assert_eq!(summary["n"], 2);
    assert_eq!(summary["failures"], 2);
    assert!(summary["mean"].is_null(), "{summary}");
    let rows: Vec<serde_json::Value> = std::fs::read_to_string(d.join("verdicts.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(
        rows.iter()
            .all(|r| r["judge"]["score"].is_null() && r["judge"]["failure"].is_string()),
        "{rows:?}"
    );
    // Pairwise needs both answers; a row without them names the line.
    let line = one_line_error(&galley(
        d,
        &["judge", "answers.jsonl", "-m", m, "--pairwise"],
    ));
    assert!(
        line.contains("answers.jsonl") && line.contains("item 1") && line.contains("answer_a"),
        "{line}"
    );
    // As a task metric: the judge's failures are counted, the built-in metric still reported.
    let base = std::fs::read_to_string(d.join("gen.yaml"))
        .unwrap()
        .replace("task: gen", "task: judged");
    let cut = base.find("metric_list:").unwrap();
    let rest = &base[base.find("filter_list:").unwrap()..];
    std::fs::write(
        d.join("judged.yaml"),
        format!("{}metric_list:\n  - metric: exact_match\n  - metric: judge\n    settings: {{max_tokens: 6}}\n{rest}", &base[..cut]),
    )
    .unwrap();
    ok(eval(
        d,
        &[
            "-m",
            m,
            "--tasks",
            "judged.yaml",
            "--limit",
            "3",
            "-o",
            "out",
        ],
    ));
    let t = &results(&d.join("out"))["results"]["judged"];
    assert_eq!(
        t["judge_failures,none"].as_f64(),
        Some(6.0),
        "3 documents x 2 filters: {t}"
    );
    assert!(
        t.get("judge,strict").is_none(),
        "no score from unparseable verdicts: {t}"
    );
    assert!(t["exact_match,strict"].is_number(), "{t}");
}

#[test]
fn process_docs_runs_a_data_loader_plugin_in_the_sandbox() {
    let (tmp, model) = project();
    let d = tmp.path();
    let m = model.to_str().unwrap();
    // jsonl-chat turns `prompt` into a user message and keeps the other columns as metadata.
    let mut rows = String::new();
    for i in 0..5 {
        let row = serde_json::json!({
            "prompt": format!("what is {i} plus one?"),
            "choices": {"text": [format!("{}", i + 1), "no"], "label": ["A", "B"]},
            "answerKey": "A",
        });
        rows.push_str(&format!("{row}\n"));
    }
    std::fs::write(d.join("data/chat.jsonl"), rows).unwrap();
    std::fs::write(
        d.join("loaded.yaml"),
        format!(
            "task: loaded\n\
             dataset_path: json\n\
             dataset_kwargs:\n  data_files:\n    test: data/chat.jsonl\n\
             process_docs:\n  plugin: {}\n  settings: {{limit: 4}}\n\
             output_type: multiple_choice\n\
             test_split: test\n\
             doc_to_text: \"Question: {{{{messages[0].content}}}}\\nAnswer:\"\n\
             doc_to_target: \"{{{{choices.label.index(answerKey)}}}}\"\n\
             doc_to_choice: \"{{{{choices.text}}}}\"\n",
            plugin("jsonl-chat").display()
        ),
    )
    .unwrap();
    ok(eval(d, &["-m", m, "--tasks", "loaded.yaml", "-o", "out"]));
    assert_eq!(
        results(&d.join("out"))["results"]["loaded"]["n"],
        4,
        "the plugin's limit applies"
    );
    let s = samples(&d.join("out"));
    assert!(
        s[3]["prompt"]
            .as_str()
            .unwrap()
            .starts_with("Question: what is 3 plus one?"),
        "{:?}",
        s[3]
    );
    assert_eq!(s[3]["choices"][0], "4");
}

#[test]
fn a_task_reads_the_hubs_parquet_shards_and_scores_as_from_jsonl() {
    // The same rows as Parquet in the Hub's layout (`data/test-0000N-of-00002.parquet`),
    // written by pyarrow: nested `choices` (a struct of lists) and all.
    let (tmp, model) = project();
    let d = tmp.path();
    let py = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.cache/tools-venv/bin/python");
    assert!(
        py.exists(),
        "{} is missing: run scripts/fetch-data.sh (it installs pyarrow there)",
        py.display()
    );
    let script = "import json, sys, pyarrow as pa, pyarrow.parquet as pq, os\n\
                  d = sys.argv[1]\n\
                  rows = [json.loads(l) for l in open(os.path.join(d, 'data/mc.jsonl'))]\n\
                  os.makedirs(os.path.join(d, 'hub/sums/data'))\n\
                  for i, part in enumerate([rows[:5], rows[5:]]):\n\
                  \x20   pq.write_table(pa.Table.from_pylist(part), os.path.join(d, f'hub/sums/data/test-0000{i}-of-00002.parquet'))\n";
    let o = std::process::Command::new(&py)
        .args(["-c", script])
        .arg(d)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let yaml = std::fs::read_to_string(d.join("sums.yaml"))
        .unwrap()
        .replace(
            "dataset_path: json\ndataset_kwargs:\n  data_files:\n    test: data/mc.jsonl\n",
            "dataset_path: ./hub/sums\n",
        );
    assert!(yaml.contains("./hub/sums"));
    std::fs::write(
        d.join("sums-parquet.yaml"),
        yaml.replace("task: sums", "task: sums_pq"),
    )
    .unwrap();
    let m = model.to_str().unwrap();
    let j = |task: &str| -> serde_json::Value {
        serde_json::from_str(&ok(eval(d, &["-m", m, "--tasks", task, "--json"]))).unwrap()
    };
    let (a, b) = (j("sums.yaml"), j("sums-parquet.yaml"));
    assert_eq!(b["results"]["sums_pq"]["n"], 12);
    for k in ["acc,none", "acc_norm,none"] {
        assert_eq!(a["results"]["sums"][k], b["results"]["sums_pq"][k], "{k}");
    }
}

#[test]
fn perplexity_documents_longer_than_the_context_are_scored_in_rolling_windows() {
    // lm-evaluation-harness's loglikelihood_rolling: a document past the model's context
    // (256 positions here) is scored in windows, every token once, not refused.
    let (tmp, model) = project();
    let d = tmp.path();
    let doc: String = (0..300)
        .map(|i| format!("the answer is {} ", i % 17))
        .collect();
    let rows = format!(
        "{}\n{}\n",
        serde_json::json!({"text": doc}),
        serde_json::json!({"text": "the answer is 3"})
    );
    std::fs::write(d.join("data/long.jsonl"), rows).unwrap();
    std::fs::write(
        d.join("ppl.yaml"),
        "task: ppl\n\
         dataset_path: json\n\
         dataset_kwargs:\n  data_files:\n    test: data/long.jsonl\n\
         output_type: loglikelihood_rolling\n\
         test_split: test\n\
         doc_to_text: \"\"\n\
         doc_to_target: \"{{text}}\"\n\
         metric_list:\n  - metric: word_perplexity\n  - metric: bits_per_byte\n",
    )
    .unwrap();
    let m = model.to_str().unwrap();
    let run = |out: &str, extra: &[&str]| -> Vec<f64> {
        let mut args = vec!["-m", m, "--tasks", "ppl.yaml", "-o", out];
        args.extend_from_slice(extra);
        ok(eval(d, &args));
        let r = results(&d.join(out));
        let ppl = r["results"]["ppl"]["word_perplexity,none"]
            .as_f64()
            .unwrap();
        assert!(ppl.is_finite() && ppl > 1.0, "{r}");
        samples(&d.join(out))
            .iter()
            .map(|s| s["loglikelihoods"][0][0].as_f64().unwrap())
            .collect()
    };
    let whole = run("whole", &[]);
    // A max_length past the model's context is the model's context.
    assert_eq!(run("clamped", &["-s", "max_length=1000"]), whole);
    // Shorter windows: the long document reads less context, the short one is one window.
    let short = run("short", &["-s", "max_length=32"]);
    // Rounding moves a score by ~1e-8 of itself; less context moves the long one by ~1e-4.
    let rel = |a: f64, b: f64| (a - b).abs() / b.abs();
    assert!(rel(short[0], whole[0]) > 1e-5, "{short:?} {whole:?}");
    // The same window, batched with other windows: equal up to the GEMM's rounding (its
    // k-blocking depends on the matrix shape, so a row's bits may depend on its batch).
    assert!(rel(short[1], whole[1]) < 1e-6, "{short:?} {whole:?}");
}
