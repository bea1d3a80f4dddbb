//! `galley synth` through the binary: a DPO set written by the tiny chat model and graded by
//! the `length-penalty` reward plugin, which `galley train` then trains on; an SFT set from a
//! remote engine (a stand-in OpenAI-compatible server on loopback) graded by a remote judge,
//! interrupted by the server failing and resumed to the same file without asking the server
//! for a finished prompt again; and configs that cannot work, refused naming file and key.

use galley_e2e::*;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

fn synth(dir: &Path, args: &[&str]) -> std::process::Output {
    let mut all = vec!["synth"];
    all.extend_from_slice(args);
    galley(dir, &all)
}

fn ok(o: std::process::Output) -> String {
    assert!(o.status.success(), "failed:\n{}{}", stdout(&o), stderr(&o));
    stdout(&o)
}

fn topics(dir: &Path, n: usize) {
    let text: String = [
        "tides", "rust", "bread", "owls", "rain", "chess", "ink", "bees",
    ]
    .iter()
    .cycle()
    .take(n)
    .enumerate()
    .map(|(i, t)| format!("{{\"id\": \"t{i}\", \"topic\": \"{t}\"}}\n"))
    .collect();
    std::fs::write(dir.join("topics.jsonl"), text).unwrap();
}

#[test]
fn a_dpo_set_from_the_tiny_model_graded_by_a_reward_plugin_is_what_galley_train_takes() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let text: Vec<String> = (0..80)
        .map(|i| format!("the number {i} is {} and the answer is yes", i * 3 % 17))
        .collect();
    galley_train::testing::tiny_chat_model_from(&d.join("model"), &text);
    topics(d, 6);
    let cfg = format!(
        "engine: {{model: ../model}}
prompts:
  data: {{path: ../topics.jsonl}}
  template: 'Say something about {{{{ topic }}}}.'
generation: {{n: 4, max_tokens: 12, temperature: 1.0, seed: 3, batch_size: 4}}
grade:
  rewards:
    - plugin: {}
      settings: {{max_length: 200, buffer: 200, unit: chars}}
output: {{path: out/pairs.jsonl, format: dpo}}
",
        plugin("length-penalty").display()
    );
    std::fs::create_dir_all(d.join("conf")).unwrap();
    std::fs::write(d.join("conf/synth.yaml"), cfg).unwrap();
    // Run from another folder: every path is relative to the config.
    let out = ok(synth(d, &["conf/synth.yaml"]));
    assert!(out.contains("6 prompts, 24 completions"), "{out}");
    let pairs = std::fs::read_to_string(d.join("conf/out/pairs.jsonl")).unwrap();
    let rows: Vec<serde_json::Value> = pairs
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(rows.len() >= 3, "most prompts give a pair: {pairs}");
    for r in &rows {
        let c = r["chosen"][0]["content"].as_str().unwrap();
        let j = r["rejected"][0]["content"].as_str().unwrap();
        // length-penalty with these settings scores -chars/200: shorter is better.
        assert!(c.chars().count() < j.chars().count(), "{r}");
        assert!(r["score_chosen"].as_f64().unwrap() > r["score_rejected"].as_f64().unwrap());
        assert!(
            r["prompt"][0]["content"]
                .as_str()
                .unwrap()
                .starts_with("Say something about")
        );
        assert!(r["topic"].is_string() && r["id"].is_string(), "{r}");
    }
    let manifest = std::fs::read_to_string(d.join("conf/out/pairs.jsonl.synth.json")).unwrap();
    let m: serde_json::Value = serde_json::from_str(&manifest).unwrap();
    assert_eq!(
        m["identity"]["plugins"][0]["id"], "length-penalty@0.2.0",
        "{manifest}"
    );
    assert_eq!(
        m["identity"]["engine"]["digest"].as_str().unwrap().len(),
        64,
        "{manifest}"
    );
    // A second run finds everything done.
    let again = ok(synth(d, &["conf/synth.yaml"]));
    assert!(again.contains("resumed: 6 of 6"), "{again}");

    // DPO on the synthesized pairs, as written.
    let train = "model: {path: model}
data: {train: {path: conf/out/pairs.jsonl}, max_length: 64}
training: {method: dpo, tuning: lora, output_dir: dpo, batch_size: 2, max_steps: 2, learning_rate: 1.0e-3}
peft: {r: 4, lora_alpha: 8, target_modules: [q_proj, v_proj]}
";
    std::fs::write(d.join("dpo.yaml"), train).unwrap();
    let out = ok(galley(d, &["train", "-c", "dpo.yaml", "--json"]));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["summary"]["steps"], 2, "{out}");
    assert_eq!(
        v["train_examples"].as_u64().unwrap() as usize,
        rows.len(),
        "{out}"
    );
}

/// A stand-in OpenAI-compatible chat server: a completion's text follows from the request's
/// seed; a judge prompt (it asks for `Score:`) is answered with a score from the answer's
/// length. After `budget` answers it fails with 500s until the budget is raised.
struct StandIn {
    url: String,
    answered: Arc<AtomicUsize>,
    budget: Arc<AtomicUsize>,
}

fn stand_in() -> StandIn {
    let answered = Arc::new(AtomicUsize::new(0));
    let budget = Arc::new(AtomicUsize::new(usize::MAX));
    let (a, b) = (answered.clone(), budget.clone());
    let url = loopback_json_server(move |req| {
        if a.load(Ordering::SeqCst) >= b.load(Ordering::SeqCst) {
            return (
                "500 Internal Server Error",
                serde_json::json!({"error": {"message": "down"}}),
            );
        }
        a.fetch_add(1, Ordering::SeqCst);
        let last = req["messages"].as_array().unwrap().last().unwrap()["content"]
            .as_str()
            .unwrap()
            .to_string();
        let text = if last.contains("Score:") {
            format!("Fine. Score: {}", last.len() % 10 + 1)
        } else {
            "la ".repeat((req["seed"].as_u64().unwrap() % 5 + 1) as usize)
        };
        let v = serde_json::json!({"choices": [{"index": 0, "message":
            {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 3}});
        ("200 OK", v)
    });
    StandIn {
        url,
        answered,
        budget,
    }
}

fn remote_cfg(dir: &Path, url: &str) {
    let cfg = format!(
        "engine: {{engine: openai, base_url: '{url}', model: writer, retries: 0, concurrency: 2}}
prompts:
  data: {{path: topics.jsonl}}
  template: 'A line about {{{{ topic }}}}'
  system: Be brief.
generation: {{n: 3, max_tokens: 16, temperature: 0.9, batch_size: 2}}
grade:
  judge: {{scale: 1-10}}
output: {{path: sft.jsonl, format: sft, keep: best}}
"
    );
    std::fs::write(dir.join("synth.yaml"), cfg).unwrap();
}

#[test]
fn an_interrupted_remote_synth_resumes_to_the_same_file_without_asking_again() {
    let server = stand_in();
    // Uninterrupted: the reference file. 7 prompts x (3 completions + 3 verdicts).
    let clean = tempfile::tempdir().unwrap();
    topics(clean.path(), 7);
    remote_cfg(clean.path(), &server.url);
    ok(synth(clean.path(), &["synth.yaml"]));
    assert_eq!(server.answered.load(Ordering::SeqCst), 42);
    let want = std::fs::read(clean.path().join("sft.jsonl")).unwrap();
    let rows: Vec<serde_json::Value> = String::from_utf8_lossy(&want)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 7, "keep: best writes one per prompt");
    for r in &rows {
        let m = r["messages"].as_array().unwrap();
        assert_eq!(
            (m[0]["role"].as_str(), m[2]["role"].as_str()),
            (Some("system"), Some("assistant"))
        );
        assert!(r["grade"].as_f64().unwrap() >= 1.0, "{r}");
    }

    // The server goes down after the first batch (2 prompts: 6 completions, 6 verdicts).
    let cut = tempfile::tempdir().unwrap();
    topics(cut.path(), 7);
    remote_cfg(cut.path(), &server.url);
    server.answered.store(0, Ordering::SeqCst);
    server.budget.store(12, Ordering::SeqCst);
    let o = synth(cut.path(), &["synth.yaml"]);
    assert!(!o.status.success());
    assert!(one_line_error(&o).contains("500"), "{}", stderr(&o));
    assert_eq!(
        String::from_utf8_lossy(&std::fs::read(cut.path().join("sft.jsonl")).unwrap())
            .lines()
            .count(),
        2
    );
    // Back up: the rerun asks only for the 5 unfinished prompts and ends with the same file.
    server.answered.store(0, Ordering::SeqCst);
    server.budget.store(usize::MAX, Ordering::SeqCst);
    let out = ok(synth(cut.path(), &["synth.yaml"]));
    assert!(out.contains("resumed: 2 of 7"), "{out}");
    assert_eq!(server.answered.load(Ordering::SeqCst), 5 * 6);
    assert_eq!(std::fs::read(cut.path().join("sft.jsonl")).unwrap(), want);
}

/// `generation.json_schema` (a file beside the config): every completion of the tiny model
/// (random weights: only the mask makes them valid) is one object following the schema; an
/// engine that cannot be given one (Anthropic's API) refuses it rather than ignoring it.
#[test]
fn structured_completions_follow_the_configs_schema() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    galley_train::testing::tiny_chat_model(&d.join("model"));
    topics(d, 3);
    std::fs::write(
        d.join("card.json"),
        r#"{"type": "object", "required": ["topic", "rating"], "properties": {
            "topic": {"type": "string", "maxLength": 12}, "rating": {"enum": [1, 2, 3]}, "good": {"type": "boolean"}}}"#,
    )
    .unwrap();
    let cfg = "engine: {model: model}\nprompts: {data: {path: topics.jsonl}, template: 'Describe {{ topic }}.'}\n\
               generation: {n: 2, max_tokens: 200, json_schema: card.json}\noutput: {path: out/cards.jsonl, format: sft}\n";
    std::fs::write(d.join("synth.yaml"), cfg).unwrap();
    ok(synth(d, &["synth.yaml"]));
    let rows: Vec<serde_json::Value> = std::fs::read_to_string(d.join("out/cards.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 6);
    for row in &rows {
        let answer = row["messages"].as_array().unwrap().last().unwrap();
        assert_eq!(answer["role"], "assistant", "{row}");
        let card: serde_json::Value = serde_json::from_str(answer["content"].as_str().unwrap())
            .unwrap_or_else(|e| panic!("{e}: {row}"));
        assert!(
            card["topic"].as_str().unwrap().chars().count() <= 12,
            "{card}"
        );
        assert!(
            [1, 2, 3].contains(&card["rating"].as_i64().unwrap()),
            "{card}"
        );
    }
    let remote = cfg.replace(
        "{model: model}",
        "{engine: anthropic, base_url: 'http://127.0.0.1:9', model: m}",
    );
    std::fs::write(
        d.join("remote.yaml"),
        remote.replace("out/cards", "out/remote"),
    )
    .unwrap();
    let o = synth(d, &["remote.yaml"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("JSON schema"), "{}", stderr(&o));
    // A schema galley cannot enforce is refused before anything is generated, naming the key.
    std::fs::write(
        d.join("bad.json"),
        r#"{"type": "object", "properties": {"n": {"type": "integer", "minimum": 0}}}"#,
    )
    .unwrap();
    std::fs::write(
        d.join("bad.yaml"),
        cfg.replace("card.json", "bad.json")
            .replace("out/cards", "out/bad"),
    )
    .unwrap();
    let o = synth(d, &["bad.yaml"]);
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(
        e.contains("generation.json_schema") && e.contains("/properties/n/minimum"),
        "{e}"
    );
    assert!(!d.join("out/bad.jsonl").exists(), "nothing written");
}

#[test]
fn synth_configs_that_cannot_work_name_the_file_and_key() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    std::fs::write(
        d.join("rows.jsonl"),
        "{\"topic\": \"a\"}\n{\"subject\": \"b\"}\n",
    )
    .unwrap();
    let cases = [
        (
            "engine: {model: m.gguf}\nprompts: {data: {path: rows.jsonl}}\ngeneration: {n: 2}\noutput: {path: o.jsonl, format: dpo}\n",
            "key `grade`",
        ),
        (
            "engine: {model: m.gguf}\nprompts: {data: {path: rows.jsonl}, template: '{{ topic }}'}\noutput: {path: o.jsonl}\n",
            "rows.jsonl:2",
        ),
        (
            "engine: {engine: anthropic, model: c}\nprompts: {data: {path: rows.jsonl}}\noutput: {path: o.jsonl}\n",
            "key `engine.base_url`",
        ),
        (
            "engine: {model: m.gguf}\nprompts: {data: {path: rows.jsonl}}\noutput: {path: o.jsonl, fromat: sft}\n",
            "fromat",
        ),
    ];
    for (cfg, want) in cases {
        std::fs::write(d.join("bad.yaml"), cfg).unwrap();
        let o = synth(d, &["bad.yaml"]);
        assert!(!o.status.success(), "{cfg}");
        let e = one_line_error(&o);
        assert!(e.contains("bad.yaml") && e.contains(want), "{cfg}\n{e}");
    }
}

#[test]
fn prompts_from_a_loader_plugin_keep_its_metadata_for_the_reward_plugin_and_the_output() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    galley_train::testing::tiny_chat_model(&d.join("model"));
    let cfg = format!(
        "engine: {{model: model}}
prompts:
  data: {{plugin: {arith}, plugin_config: {{count: 5, words: false}}}}
generation: {{n: 2, max_tokens: 8, temperature: 1.0}}
grade:
  rewards: [{{plugin: {math}}}]
output: {{path: arith.jsonl}}
",
        arith = plugin("arith").display(),
        math = plugin("math-answer").display()
    );
    std::fs::write(d.join("synth.yaml"), cfg).unwrap();
    let out = ok(synth(d, &["synth.yaml", "--json"]));
    let s: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (s["prompts"].as_u64(), s["written"].as_u64()),
        (Some(5), Some(10)),
        "{out}"
    );
    for line in std::fs::read_to_string(d.join("arith.jsonl"))
        .unwrap()
        .lines()
    {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert!(
            v["answer"].is_i64(),
            "the loader's metadata travels: {line}"
        );
        assert!(
            v["messages"][0]["content"]
                .as_str()
                .unwrap()
                .starts_with("What is"),
            "{line}"
        );
        assert!(
            v["grade"].is_f64(),
            "math-answer grades every completion: {line}"
        );
    }
    let m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("arith.jsonl.synth.json")).unwrap())
            .unwrap();
    let keys: Vec<&str> = m["identity"]["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["prompts.data", "grade.rewards"]);
}
