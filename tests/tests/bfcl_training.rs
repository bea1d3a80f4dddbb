//! Function calling trained and synthesized on BFCL's data, through the binary with the real
//! plugins: `galley/function-call` judges as the evaluation does (`galley score`), GRPO on
//! `galley/bfcl-prompts` in prompting and native mode, and rejection sampling with
//! `galley synth` in both modes.

mod bfcl_entries;

use bfcl_entries::*;
use galley_e2e::*;
use std::collections::HashMap;

/// The `galley/function-call` reward plugin is the same judge, in the sandbox: scored by
/// `galley score` (the policy GRPO uses) through the real runtime, right and wrong answers to
/// BFCL entries of five categories get exactly the verdicts galley-bfcl gives natively.
#[test]
fn the_function_call_reward_plugin_scores_as_the_evaluation_judges() {
    use galley_bfcl::checker::Checker;
    use galley_bfcl::value::Py;
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let mut rows = String::new();
    let mut want = vec![];
    for category in [
        "simple_python",
        "multiple",
        "parallel",
        "irrelevance",
        "live_simple",
    ] {
        for e in entries(category, 6) {
            let mut answers = vec!["I cannot help with that.".to_string()];
            if e.get("ground_truth").is_some() {
                let calls = truth_calls(&e);
                answers.push(format!("[{}]", calls.join(", ")));
                answers.push(format!("```\n{}\n```", calls.join(", ")));
                // One value changed: the first `=` gets a different value.
                let wrong = calls[0].replacen('=', "=999 if False else ", 1);
                answers.push(format!("[{wrong}]"));
                answers.push(format!("[{}]", calls[0].replace('(', "_v2(")));
            } else {
                let f = e["function"][0]["name"].as_str().unwrap();
                answers.push(format!("[{f}()]"));
            }
            let functions: Py = serde_json::from_str(&e["function"].to_string()).unwrap();
            let truth: Py = serde_json::from_str(
                &e.get("ground_truth")
                    .cloned()
                    .unwrap_or_else(|| serde_json::json!([]))
                    .to_string(),
            )
            .unwrap();
            let (Py::List(functions), Py::List(truth)) = (functions, truth) else {
                panic!()
            };
            for a in answers {
                let kind = Checker::for_category(e["id"].as_str().unwrap());
                let native = galley_bfcl::judge(kind, &functions, &truth, &a)
                    .verdict
                    .valid;
                want.push(if native { 1.0 } else { 0.0 });
                let mut metadata = serde_json::json!({"id": e["id"], "function": e["function"]});
                if let Some(g) = e.get("ground_truth") {
                    metadata["ground_truth"] = g.clone();
                }
                let row = serde_json::json!({"prompt": last_user(&e), "completion": a, "metadata": metadata});
                rows.push_str(&format!("{row}\n"));
            }
        }
    }
    std::fs::write(d.join("completions.jsonl"), rows).unwrap();
    std::fs::write(
        d.join("score.yaml"),
        format!(
            "rewards:\n  - plugin: {}\ncompletions: completions.jsonl\nbatch_size: 8\non_plugin_error: stop\n",
            plugin("function-call").display()
        ),
    )
    .unwrap();
    let o = galley(d, &["score", "score.yaml", "--json"]);
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    let got: Vec<f64> = stdout(&o)
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v.get("index").is_some())
        .map(|v| v["scores"]["function-call@0.2.0"].as_f64().unwrap())
        .collect();
    assert_eq!(got.len(), want.len());
    assert_eq!(got, want);
    let right = got.iter().filter(|&&x| x == 1.0).count();
    assert!(
        right > 20 && right < got.len() - 20,
        "{right} of {} right: both kinds are tested",
        got.len()
    );
}

/// GRPO on BFCL with both plugins in the sandbox: `galley/bfcl-prompts` turns entries into
/// BFCL's prompts (the system prompt the evaluation uses) with their functions and answers as
/// metadata, the trainer generates, and `galley/function-call` scores each completion — every
/// recorded reward equals galley-bfcl's native verdict on that completion, and the loader's
/// conversations are the ones `galley eval` sends.
#[test]
fn grpo_on_bfcl_prompts_with_the_function_call_reward() {
    use galley_bfcl::checker::Checker;
    use galley_bfcl::value::Py;
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let text: Vec<String> = (0..60)
        .map(|i| format!("[calculate_area(base={i}, height=5)] I cannot help with that."))
        .collect();
    long_context_model(d, &text);
    std::fs::create_dir(d.join("granted")).unwrap();
    let rows: Vec<String> = entries("simple_python", 2)
        .into_iter()
        .chain(entries("irrelevance", 2))
        .map(|e| e.to_string())
        .collect();
    std::fs::write(d.join("granted/bfcl.jsonl"), rows.join("\n") + "\n").unwrap();
    std::fs::write(
        d.join("grpo.yaml"),
        format!(
            "model:
  path: model
data:
  train:
    plugin: {loader}
    plugin_config: {{path: bfcl.jsonl}}
    plugin_dirs: {{data: granted}}
  max_length: 16384
training:
  method: grpo
  tuning: full
  output_dir: run
  batch_size: 4
  max_steps: 2
  learning_rate: 0.01
  eval_on_start: false
grpo:
  num_generations: 2
  max_completion_length: 8
  temperature: 1.0
  rewards:
    - plugin: {reward}
",
            loader = plugin("bfcl-prompts").display(),
            reward = plugin("function-call").display()
        ),
    )
    .unwrap();
    let o = galley(d, &["train", "-c", "grpo.yaml"]);
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    let comps = jsonl(&d.join("run/completions.jsonl"));
    assert_eq!(comps.len(), 8);
    let mut irrelevance_prompts = 0;
    for c in &comps {
        let md = &c["metadata"];
        let id = md["id"].as_str().unwrap();
        let json = |v: &serde_json::Value| -> Vec<Py> {
            // Nested metadata reached the plugin as JSON text; the record keeps it as written.
            let text = v
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| v.to_string());
            match serde_json::from_str::<Py>(&text).unwrap() {
                Py::List(l) => l,
                other => panic!("{other:?}"),
            }
        };
        let functions = json(&md["function"]);
        let truth = if md.get("ground_truth").is_some_and(|g| !g.is_null()) {
            json(&md["ground_truth"])
        } else {
            vec![]
        };
        let completion = c["completion"].as_str().unwrap();
        let native = galley_bfcl::judge(Checker::for_category(id), &functions, &truth, completion)
            .verdict
            .valid;
        assert_eq!(
            c["rewards"]["function-call"].as_f64(),
            Some(if native { 1.0 } else { 0.0 }),
            "{c}"
        );
        if id.starts_with("irrelevance") {
            irrelevance_prompts += 1;
        }
    }
    assert_eq!(
        irrelevance_prompts, 4,
        "both entries of each kind were trained on"
    );

    // The loader's conversations are the ones `galley eval` sends (galley-eval's `Entry`).
    let o = galley(
        d,
        &[
            "plugin",
            "call",
            plugin("bfcl-prompts").to_str().unwrap(),
            "--config",
            r#"{"path": "bfcl.jsonl"}"#,
            "--allow-dir",
            "data=granted",
            "--max",
            "4",
            "--json",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let examples: Vec<serde_json::Value> = stdout(&o)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(examples.len(), 4);
    for (ex, row) in examples.iter().zip(&rows) {
        let entry = galley_bfcl::Entry::parse(row).unwrap();
        let want: Vec<serde_json::Value> = entry
            .conversation()
            .iter()
            .map(|m| serde_json::json!({"role": m.role, "content": m.content}))
            .collect();
        assert_eq!(ex["messages"].as_array().unwrap(), &want, "{}", entry.id);
        assert_eq!(ex["id"], entry.id.as_str());
    }
}

/// Rejection sampling for function calling: `galley synth` asks an engine (a stand-in server)
/// BFCL's prompts from `galley/bfcl-prompts`, `galley/function-call` grades the answers, and
/// only those BFCL's checker accepts become SFT conversations (system prompt, question,
/// the right calls).
#[test]
fn synth_keeps_only_the_answers_bfcls_checker_accepts() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    std::fs::create_dir(d.join("granted")).unwrap();
    let simple = entries("simple_python", 5);
    let rows: Vec<String> = simple.iter().map(|e| e.to_string()).collect();
    std::fs::write(d.join("granted/bfcl.jsonl"), rows.join("\n") + "\n").unwrap();
    // Entries 0, 2 and 4 answered right; 1 wrongly; 3 not at all.
    let mut answers = HashMap::new();
    for (i, e) in simple.iter().enumerate() {
        let mut calls = truth_calls(e);
        match i {
            1 => calls[0] = calls[0].replacen('(', "_wrong(", 1),
            3 => continue,
            _ => {}
        }
        answers.insert(last_user(e), format!("[{}]", calls.join(", ")));
    }
    let url = stand_in(answers);
    std::fs::write(
        d.join("synth.yaml"),
        format!(
            "engine: {{engine: openai, base_url: '{url}', model: stand-in, retries: 0}}
prompts:
  data:
    plugin: {loader}
    plugin_config: {{path: bfcl.jsonl}}
    plugin_dirs: {{data: granted}}
generation: {{n: 1, max_tokens: 64, temperature: 0.0, batch_size: 2}}
grade:
  rewards:
    - plugin: {reward}
output: {{path: out/calls.jsonl, format: sft, min_grade: 1.0}}
",
            loader = plugin("bfcl-prompts").display(),
            reward = plugin("function-call").display()
        ),
    )
    .unwrap();
    let o = galley(d, &["synth", "synth.yaml"]);
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    let out = std::fs::read_to_string(d.join("out/calls.jsonl")).unwrap();
    let kept: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(kept.len(), 3, "{out}");
    for (row, i) in kept.iter().zip([0, 2, 4]) {
        let m = row["messages"].as_array().unwrap();
        assert_eq!(m[0]["role"], "system");
        assert!(
            m[0]["content"]
                .as_str()
                .unwrap()
                .starts_with("You are an expert in composing functions.")
        );
        assert_eq!(m[m.len() - 1]["role"], "assistant");
        assert_eq!(
            m[m.len() - 1]["content"].as_str().unwrap(),
            format!("[{}]", truth_calls(&simple[i]).join(", ")),
            "{row}"
        );
    }
}

/// Rejection sampling in BFCL's native mode: prompts carry TRL's `tools` column, the engine (a
/// stand-in OpenAI server) answers with tool calls, `galley/function-call` judges the calls it
/// is handed (`galley:plugin@0.2`), and the kept rows are TRL tool-calling conversations: the
/// assistant turn with its `tool_calls`, the `tools` column beside — rows `galley train` reads.
#[test]
fn synth_in_native_mode_keeps_right_tool_calls_as_tool_calling_rows() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let simple = entries("simple_python", 4);
    let mut rows = Vec::new();
    let mut answers = HashMap::new();
    let mut right_calls = Vec::new();
    for (i, e) in simple.iter().enumerate() {
        let tools = galley_bfcl::openai_tools(&py_list(&e["function"])).to_json();
        let call = native_call(e, i == 1);
        if i != 3 {
            answers.insert(last_user(e), format!("CALLS:{}", serde_json::json!([call])));
        }
        if i == 0 || i == 2 {
            right_calls.push(call);
        }
        rows.push(
            serde_json::json!({"prompt": [{"role": "user", "content": last_user(e)}],
                "tools": tools, "id": e["id"], "function": e["function"], "ground_truth": e["ground_truth"]})
            .to_string(),
        );
    }
    std::fs::write(d.join("prompts.jsonl"), rows.join("\n") + "\n").unwrap();
    let url = stand_in(answers);
    std::fs::write(
        d.join("synth.yaml"),
        format!(
            "engine: {{engine: openai, base_url: '{url}', model: stand-in, retries: 0}}
prompts:
  data: {{path: prompts.jsonl}}
generation: {{n: 1, max_tokens: 64, temperature: 0.0, batch_size: 2}}
grade:
  rewards:
    - plugin: {reward}
output: {{path: out/calls.jsonl, format: sft, min_grade: 1.0}}
",
            reward = plugin("function-call").display()
        ),
    )
    .unwrap();
    let o = galley(d, &["synth", "synth.yaml"]);
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    let out = std::fs::read_to_string(d.join("out/calls.jsonl")).unwrap();
    let kept: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(kept.len(), 2, "entries 0 and 2 were answered right: {out}");
    for (row, call) in kept.iter().zip(&right_calls) {
        let m = row["messages"].as_array().unwrap();
        let last = &m[m.len() - 1];
        assert_eq!(last["role"], "assistant", "{row}");
        assert_eq!(last["tool_calls"][0]["function"], *call, "{row}");
        assert_eq!(last["tool_calls"][0]["type"], "function", "{row}");
        assert_eq!(row["tools"][0]["type"], "function", "{row}");
        assert_eq!(row["grade"], 1.0, "{row}");
    }
}

/// BFCL's native mode in training: `galley/bfcl-prompts` with `mode: native` hands the
/// entries' own messages with BFCL's OpenAI tools as the `tools` column (what `galley eval
/// --function-calling native` sends); a tiny model SFT'd on those prompts with the right calls
/// (TRL tool-calling rows) is sampled by GRPO, the trainer reads its calls back in the chat
/// template's format, and `galley/function-call` judges them as BFCL's FC mode does.
#[test]
fn grpo_in_native_mode_rewards_the_calls_read_back_from_completions() {
    use galley_bfcl::checker::Checker;
    use galley_bfcl::value::json_dumps;
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let simple = entries("simple_python", 2);
    let tools_text =
        |e: &serde_json::Value| json_dumps(&galley_bfcl::openai_tools(&py_list(&e["function"])));
    // The loader's view first: the entry's messages, the tools as eval's native mode sends.
    std::fs::create_dir(d.join("granted")).unwrap();
    let rows: Vec<String> = simple.iter().map(|e| e.to_string()).collect();
    std::fs::write(d.join("granted/bfcl.jsonl"), rows.join("\n") + "\n").unwrap();
    let o = galley(
        d,
        &[
            "plugin",
            "call",
            plugin("bfcl-prompts").to_str().unwrap(),
            "--config",
            r#"{"path": "bfcl.jsonl", "mode": "native"}"#,
            "--allow-dir",
            "data=granted",
            "--json",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let examples: Vec<serde_json::Value> = stdout(&o)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    for (ex, e) in examples.iter().zip(&simple) {
        let entry = galley_bfcl::Entry::parse(&e.to_string()).unwrap();
        let want: Vec<serde_json::Value> = entry
            .messages
            .iter()
            .map(|m| serde_json::json!({"role": m.role, "content": m.content}))
            .collect();
        assert_eq!(ex["messages"].as_array().unwrap(), &want);
        let tools = &ex["metadata"]["tools"];
        let tools: serde_json::Value = match tools.as_str() {
            Some(t) => serde_json::from_str(t).unwrap(),
            None => tools.clone(),
        };
        assert_eq!(
            tools,
            galley_bfcl::openai_tools(&py_list(&e["function"])).to_json()
        );
    }

    // A tiny model taught the right call for each entry, through a Hermes-style template.
    let calls: Vec<serde_json::Value> = simple.iter().map(|e| native_call(e, false)).collect();
    let text: Vec<String> = simple
        .iter()
        .zip(&calls)
        .flat_map(|(e, c)| {
            let line = format!(
                "{} <tool_call>\n{c}\n</tool_call> {}",
                last_user(e),
                tools_text(e)
            );
            std::iter::repeat_n(line, 20)
        })
        .collect();
    hermes_model(d, &text, &["<tool_call>", "</tool_call>"], 16384);
    let sft: String = simple
        .iter()
        .zip(&calls)
        .map(|(e, c)| {
            let args: serde_json::Value =
                serde_json::from_str(c["arguments"].as_str().unwrap()).unwrap();
            let row = serde_json::json!({"messages": [
                {"role": "user", "content": last_user(e)},
                {"role": "assistant", "tool_calls": [{"type": "function",
                    "function": {"name": c["name"], "arguments": args}}]}],
                "tools": tools_text(e)});
            format!("{row}\n").repeat(4)
        })
        .collect();
    std::fs::write(d.join("sft.jsonl"), sft).unwrap();
    std::fs::write(
        d.join("sft.yaml"),
        "model: {path: model}
data: {train: {path: sft.jsonl}, max_length: 16384}
training:
  method: sft
  tuning: full
  output_dir: sft
  batch_size: 8
  max_steps: 150
  learning_rate: 0.01
  lr_scheduler: constant
  warmup_steps: 0
  eval_on_start: false
",
    )
    .unwrap();
    let o = galley(d, &["train", "-c", "sft.yaml"]);
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));

    std::fs::write(
        d.join("grpo.yaml"),
        format!(
            "model: {{path: sft/model}}
data:
  train:
    plugin: {loader}
    plugin_config: {{path: bfcl.jsonl, mode: native}}
    plugin_dirs: {{data: granted}}
  max_length: 16384
training:
  method: grpo
  tuning: full
  output_dir: grpo
  batch_size: 4
  max_steps: 1
  learning_rate: 0.0001
  eval_on_start: false
grpo:
  num_generations: 2
  max_completion_length: 96
  temperature: 0.05
  rewards:
    - plugin: {reward}
",
            loader = plugin("bfcl-prompts").display(),
            reward = plugin("function-call").display()
        ),
    )
    .unwrap();
    let o = galley(d, &["train", "-c", "grpo.yaml"]);
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    let comps = jsonl(&d.join("grpo/completions.jsonl"));
    assert_eq!(comps.len(), 4);
    for c in &comps {
        let id = c["metadata"]["id"].as_str().unwrap();
        let e = simple.iter().find(|e| e["id"] == id).unwrap();
        let (functions, truth) = (py_list(&e["function"]), py_list(&e["ground_truth"]));
        let read: Vec<(String, String)> = c["message"]["tool_calls"]
            .as_array()
            .unwrap_or_else(|| panic!("no calls read from {c}"))
            .iter()
            .map(|t| {
                (
                    t["function"]["name"].as_str().unwrap().to_string(),
                    t["function"]["arguments"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        let native = galley_bfcl::judge_calls(Checker::for_category(id), &functions, &truth, &read);
        assert!(
            native.verdict.valid,
            "the taught call is right by BFCL: {c}"
        );
        assert_eq!(c["rewards"]["function-call"], 1.0, "{c}");
    }
}
