//! The data users already have: TRL's dataset types in both forms for SFT, DPO, GRPO and KTO
//! (TRL's documented rows verbatim), JSONL / Parquet / `save_to_disk` folders written by
//! pyarrow and `datasets` read to the same samples, a column mapping, a two-source mixture
//! that keeps its weights and resumes exactly, and bad input named by file, row and column.

mod common;

use common::{tiny_chat_model, write_jsonl};
use galley_train::data::Sample;
use galley_train::{Data, NoObserver, Sources, TrainConfig, TrainError};
use serde_json::json;
use std::path::{Path, PathBuf};

fn model(dir: &Path) -> PathBuf {
    let m = dir.join("model");
    if !m.exists() {
        std::fs::create_dir_all(&m).unwrap();
        tiny_chat_model(&m);
    }
    m
}

fn config(dir: &Path, method: &str, extra: &[String]) -> TrainConfig {
    let mut sets = vec![
        format!("model.path={}", model(dir).display()),
        format!("training.method={method}"),
        format!("training.output_dir={}", dir.join("out").display()),
        "training.batch_size=2".into(),
        "data.shuffle=false".into(),
        "data.on_bad_example=error".into(),
        "peft.lora_dropout=0".into(),
    ];
    if method == "grpo" {
        sets.push("grpo.rewards=[{builtin: exact_match}]".into());
        sets.push("grpo.num_generations=2".into());
    }
    sets.extend(extra.iter().cloned());
    TrainConfig::load(None, &sets).unwrap()
}

fn prepare(dir: &Path, method: &str, data: &Path, extra: &[&str]) -> Result<Data, TrainError> {
    let mut e = vec![format!("data.train.path={}", data.display())];
    e.extend(extra.iter().map(|s| s.to_string()));
    let cfg = config(dir, method, &e);
    std::fs::create_dir_all(dir.join("out")).unwrap();
    galley_train::prepare(&cfg, Sources::default(), &dir.join("out")).map(|p| p.data)
}

fn tokenizer(dir: &Path) -> tokenizers::Tokenizer {
    tokenizers::Tokenizer::from_file(model(dir).join("tokenizer.json")).unwrap()
}

fn decode(dir: &Path, ids: &[u32]) -> String {
    tokenizer(dir).decode(ids, false).unwrap()
}

fn trained(dir: &Path, s: &Sample) -> String {
    let ids: Vec<u32> = s
        .ids
        .iter()
        .zip(&s.train)
        .filter(|(_, t)| **t)
        .map(|(i, _)| *i)
        .collect();
    decode(dir, &ids)
}

fn lm(d: Data) -> Vec<Sample> {
    match d {
        Data::Lm { train, .. } => train,
        _ => panic!("not LM data"),
    }
}

#[test]
fn standard_examples_are_plain_text_with_eos_and_conversational_ones_are_templated() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    // TRL's documented prompt-completion rows, standard and conversational.
    write_jsonl(
        &d.join("std.jsonl"),
        &[json!({"prompt": "The sky is", "completion": " blue."})],
    );
    write_jsonl(
        &d.join("conv.jsonl"),
        &[
            json!({"prompt": [{"role": "user", "content": "What color is the sky?"}],
                  "completion": [{"role": "assistant", "content": "It is blue."}]}),
        ],
    );
    write_jsonl(
        &d.join("text.jsonl"),
        &[json!({"text": "The sky is blue."})],
    );
    let s = &lm(prepare(d, "sft", &d.join("std.jsonl"), &[]).unwrap())[0];
    assert_eq!(decode(d, &s.ids), "The sky is blue.<|im_end|>");
    assert_eq!(trained(d, s), " blue.<|im_end|>");
    let s = &lm(prepare(d, "sft", &d.join("conv.jsonl"), &[]).unwrap())[0];
    assert_eq!(
        decode(d, &s.ids),
        "<|im_start|>user\nWhat color is the sky?<|im_end|>\n<|im_start|>assistant\nIt is blue.<|im_end|>\n"
    );
    assert_eq!(trained(d, s), "It is blue.<|im_end|>\n");
    // Language modeling: every token.
    let s = &lm(prepare(d, "sft", &d.join("text.jsonl"), &[]).unwrap())[0];
    assert_eq!(trained(d, s), "The sky is blue.<|im_end|>");
    assert!(s.train.iter().all(|&t| t));
}

#[test]
fn trls_standard_preference_rows_train_with_dpo_and_kto() {
    // The issue's row verbatim: a standard prompt, answers that start with a space. galley
    // used to push it through the chat template and stop at line 1.
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let rows: Vec<serde_json::Value> = (0..8)
        .map(|i| {
            json!({"prompt": format!("Question: What is {i} + 3? Answer:"),
                   "chosen": format!(" {}.", i + 3), "rejected": format!(" {}.", i + 5)})
        })
        .collect();
    write_jsonl(&d.join("prefs.jsonl"), &rows);
    let Data::Pairs { train, .. } = prepare(d, "dpo", &d.join("prefs.jsonl"), &[]).unwrap() else {
        panic!()
    };
    assert_eq!(train.len(), 8);
    assert_eq!(
        decode(d, &train[2].chosen.ids),
        "Question: What is 2 + 3? Answer: 5.<|im_end|>"
    );
    assert!(trained(d, &train[2].chosen).ends_with("5.<|im_end|>"));
    assert!(trained(d, &train[2].rejected).ends_with("7.<|im_end|>"));
    // KTO reads the same pairs as one desirable and one undesirable example each.
    let Data::Unpaired { train: k, .. } = prepare(d, "kto", &d.join("prefs.jsonl"), &[]).unwrap()
    else {
        panic!()
    };
    assert_eq!(k.len(), 16);
    assert_eq!((k[0].desirable, k[1].desirable), (true, false));
    // And the runs train: two steps each, from standard rows.
    for m in ["dpo", "kto"] {
        let cfg = config(
            d,
            m,
            &[
                format!("data.train.path={}", d.join("prefs.jsonl").display()),
                "training.max_steps=2".into(),
                format!("training.output_dir={}", d.join(m).display()),
            ],
        );
        let out = galley_train::run(&cfg, Sources::default(), false, &mut NoObserver).unwrap();
        assert_eq!(out.summary.steps, 2, "{m}");
    }
}

#[test]
fn grpo_prompts_in_both_forms() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    write_jsonl(
        &d.join("p.jsonl"),
        &[
            json!({"prompt": "the number 3 is", "answer": "9"}),
            json!({"prompt": [{"role": "user", "content": "the number 4 is"}], "answer": "12"}),
        ],
    );
    let Data::Prompts { train, .. } = prepare(d, "grpo", &d.join("p.jsonl"), &[]).unwrap() else {
        panic!()
    };
    // Standard: the text as it is; conversational: templated with the generation prompt.
    assert_eq!(decode(d, &train[0].ids), "the number 3 is");
    assert_eq!(
        decode(d, &train[1].ids),
        "<|im_start|>user\nthe number 4 is<|im_end|>\n<|im_start|>assistant\n"
    );
    // Every other column reaches the reward functions.
    assert_eq!(train[0].metadata["answer"].to_json(), json!("9"));
    let cfg = config(
        d,
        "grpo",
        &[
            format!("data.train.path={}", d.join("p.jsonl").display()),
            "training.max_steps=1".into(),
            "grpo.num_generations=2".into(),
            "grpo.max_completion_length=4".into(),
            format!("training.output_dir={}", d.join("grpo").display()),
        ],
    );
    let sources = Sources {
        rewards: vec![galley_train::rewards::builtin("exact_match").unwrap()],
        ..Default::default()
    };
    let out = galley_train::run(&cfg, sources, false, &mut NoObserver).unwrap();
    assert_eq!(out.summary.steps, 1);
}

/// Rows as JSONL, and as Parquet (row groups of three), an Arrow IPC file, a `save_to_disk`
/// folder and a Parquet shard folder written by pyarrow and `datasets` from the same rows.
fn python_files(d: &Path, rows: &[serde_json::Value]) {
    write_jsonl(&d.join("rows.jsonl"), rows);
    let py = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.cache/tools-venv/bin/python");
    assert!(
        py.exists(),
        "{} is missing: run scripts/fetch-data.sh (it installs pyarrow and datasets there)",
        py.display()
    );
    let script = r#"
import json, sys, os
import pyarrow as pa, pyarrow.parquet as pq
import datasets
d = sys.argv[1]
rows = [json.loads(l) for l in open(os.path.join(d, "rows.jsonl"))]
t = pa.Table.from_pylist(rows)
pq.write_table(t, os.path.join(d, "rows.parquet"), row_group_size=3)
with pa.ipc.new_file(os.path.join(d, "rows.arrow"), t.schema) as w:
    w.write_table(t)
datasets.Dataset.from_list(rows).save_to_disk(os.path.join(d, "saved"))
os.makedirs(os.path.join(d, "shards"))
pq.write_table(t.slice(0, 4), os.path.join(d, "shards", "train-00000-of-00002.parquet"))
pq.write_table(t.slice(4), os.path.join(d, "shards", "train-00001-of-00002.parquet"))
"#;
    let out = std::process::Command::new(&py)
        .arg("-c")
        .arg(script)
        .arg(d)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn parquet_and_arrow_written_by_pyarrow_and_datasets_read_as_the_same_rows_as_jsonl() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let rows: Vec<serde_json::Value> = (0..7)
        .map(|i| {
            json!({"messages": [{"role": "user", "content": format!("the number {i}")},
                                {"role": "assistant", "content": format!("is {} and the answer is yes", i * 3 % 17)}]})
        })
        .collect();
    python_files(d, &rows);
    let want = lm(prepare(d, "sft", &d.join("rows.jsonl"), &[]).unwrap());
    assert_eq!(want.len(), 7);
    for f in ["rows.parquet", "rows.arrow", "saved", "shards"] {
        assert_eq!(lm(prepare(d, "sft", &d.join(f), &[]).unwrap()), want, "{f}");
    }
}

#[test]
fn a_column_mapping_reads_a_dataset_whose_columns_are_named_otherwise() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    write_jsonl(
        &d.join("qa.jsonl"),
        &[json!({"question": "the number 2", "answer": " is 6"})],
    );
    write_jsonl(
        &d.join("pc.jsonl"),
        &[json!({"prompt": "the number 2", "completion": " is 6"})],
    );
    let mapped = lm(prepare(
        d,
        "sft",
        &d.join("qa.jsonl"),
        &["data.train.columns={prompt: question, completion: answer}"],
    )
    .unwrap());
    assert_eq!(
        mapped,
        lm(prepare(d, "sft", &d.join("pc.jsonl"), &[]).unwrap())
    );
    // Without the mapping: what was found and what was expected.
    let e = prepare(d, "sft", &d.join("qa.jsonl"), &[])
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("qa.jsonl:1"), "{e}");
    assert!(
        e.contains("columns answer, question") || e.contains("columns question, answer"),
        "{e}"
    );
    assert!(
        e.contains("prompt-completion (`prompt`, `completion`)"),
        "{e}"
    );
}

#[test]
fn a_parquet_column_of_the_wrong_type_is_named_with_its_row_group() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let rows: Vec<serde_json::Value> = (0..7)
        .map(|i| json!({"prompt": i, "completion": format!(" is {i}")}))
        .collect();
    python_files(d, &rows);
    let e = prepare(d, "sft", &d.join("rows.parquet"), &[])
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("rows.parquet: row group 0, row 1") && e.contains("column `prompt` is a number"),
        "{e}"
    );
    // With on_bad_example: skip, every row is counted and none trains.
    let e = prepare(
        d,
        "sft",
        &d.join("rows.parquet"),
        &["data.on_bad_example=skip"],
    )
    .map(|d| d.lens().0)
    .unwrap();
    assert_eq!(e, 0);
}

fn mixture(d: &Path, name: &str, extra: &[&str]) -> TrainConfig {
    let mut e = vec![
        format!(
            "data.mixture=[{{path: {}, weight: 3}}, {{path: {}, weight: 1}}]",
            d.join("a.jsonl").display(),
            d.join("b.jsonl").display()
        ),
        "data.mixture_stopping=all_exhausted".into(),
        "data.max_length=16".into(),
        format!("training.output_dir={}", d.join(name).display()),
    ];
    e.extend(extra.iter().map(|s| s.to_string()));
    config(d, "sft", &e)
}

#[test]
fn a_two_source_mixture_keeps_its_weights_and_resumes_exactly() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let src = |name: &str, n: usize, word: &str| {
        let rows: Vec<serde_json::Value> = (0..n)
            .map(|i| json!({"prompt": format!("the number {i}"), "completion": format!(" {word}")}))
            .collect();
        write_jsonl(&d.join(name), &rows);
    };
    src("a.jsonl", 900, "yes");
    src("b.jsonl", 100, "no");
    let cfg = mixture(d, "mix", &[]);
    std::fs::create_dir_all(d.join("mix")).unwrap();
    let p = galley_train::prepare(&cfg, Sources::default(), &d.join("mix")).unwrap();
    let train = lm(p.data);
    // all_exhausted: the 900 examples of `a` all appear, `b` starts over as needed.
    let from_b = train
        .iter()
        .filter(|s| !trained(d, s).contains("yes"))
        .count();
    let n = train.len() as f64;
    assert!(n >= 1000.0, "{n} examples");
    // Binomial(n, 1/4): within four standard deviations.
    let (share, sd) = (from_b as f64 / n, (0.25 * 0.75 / n).sqrt());
    assert!(
        (share - 0.25).abs() < 4.0 * sd,
        "share of b {share} over {n}"
    );
    // Resume: three steps, stop, resume to six = six straight.
    let steps = |name: &str, max: usize, resume: bool, extra: &[&str]| -> Vec<String> {
        let mut e = vec![
            format!("training.max_steps={max}"),
            "training.save_steps=3".into(),
            // A constant rate: the first half's schedule must not depend on where it stops.
            "training.lr_scheduler=constant".into(),
            "data.shuffle=true".into(),
        ];
        e.extend(extra.iter().map(|s| s.to_string()));
        let e: Vec<&str> = e.iter().map(String::as_str).collect();
        let cfg = mixture(d, name, &e);
        galley_train::run(&cfg, Sources::default(), resume, &mut NoObserver).unwrap();
        std::fs::read_to_string(d.join(name).join("metrics.jsonl"))
            .unwrap()
            .lines()
            .filter_map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).ok()?;
                Some(format!("{} {}", v.get("step")?, v.get("loss")?))
            })
            .collect()
    };
    let straight = steps("straight", 6, false, &[]);
    steps("halves", 3, false, &[]);
    let resumed = steps("halves", 6, true, &[]);
    assert_eq!(straight.len(), 6);
    assert_eq!(resumed, straight);
}

#[test]
fn a_template_that_renders_the_prompt_alone_differently_is_cut_where_they_part() {
    // Like Gemma's: the generation prompt opens an empty thought block the whole conversation
    // does not have, so the templated prompt is not a prefix of the templated whole. TRL
    // starts the completion where they part; galley used to refuse the example.
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let m = model(d);
    let tmpl = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\nthe answer is no<|im_end|>{% endif %}";
    let tc = json!({"chat_template": tmpl, "eos_token": "<|im_end|>"});
    std::fs::write(m.join("tokenizer_config.json"), tc.to_string()).unwrap();
    write_jsonl(
        &d.join("c.jsonl"),
        &[
            json!({"prompt": [{"role": "user", "content": "the number 4"}],
                  "completion": [{"role": "assistant", "content": "is 12"}]}),
        ],
    );
    let s = &lm(prepare(d, "sft", &d.join("c.jsonl"), &[]).unwrap())[0];
    assert_eq!(
        decode(d, &s.ids),
        "<|im_start|>user\nthe number 4<|im_end|>\n<|im_start|>assistant\nis 12<|im_end|>\n"
    );
    assert_eq!(trained(d, s), "is 12<|im_end|>\n");
    write_jsonl(
        &d.join("m.jsonl"),
        &[json!({"messages": [
        {"role": "user", "content": "the number 4"}, {"role": "assistant", "content": "is 12"}]})],
    );
    let s = &lm(prepare(d, "sft", &d.join("m.jsonl"), &[]).unwrap())[0];
    assert_eq!(trained(d, s), "is 12<|im_end|>\n");
}

/// TRL's tool-calling rows verbatim (an assistant turn with `tool_calls` and no content, a
/// `tool` turn, a `tools` column of JSON schemas) train through a real tool-calling template
/// (Qwen 2.5's, from the templates llama.cpp's tests keep): the tools are in the prompt, the
/// assistant's call is written as the model reads calls and trained on, the tool's answer is
/// not. OpenAI's shape (`content: null`, `arguments` as JSON text) and `tools` kept as JSON
/// text read the same; a `tools` column that is not a list is named.
#[test]
fn trls_tool_calling_rows_train_on_the_calls_through_the_models_template() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let qwen = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../.cache/chat-templates/Qwen-Qwen2.5-7B-Instruct.jinja");
    let tmpl = std::fs::read_to_string(&qwen)
        .unwrap_or_else(|e| panic!("{}: {e} (run scripts/fetch-data.sh)", qwen.display()));
    // The tiny model's own template shows no tools: the run is given Qwen's.
    let with_qwen = format!("model.chat_template={}", qwen.display());
    let tool = json!({"type": "function", "function": {"name": "control_light",
        "description": "Controls the lights in a room.",
        "parameters": {"type": "object", "properties": {
            "room": {"type": "string", "description": "The name of the room."},
            "state": {"type": "string", "description": "The state of the light: on or off."}},
            "required": ["room", "state"]}}});
    let trl = json!({"messages": [
        {"role": "user", "content": "Turn on the living room lights."},
        {"role": "assistant", "tool_calls": [{"type": "function", "function": {
            "name": "control_light", "arguments": {"room": "living room", "state": "on"}}}]},
        {"role": "tool", "name": "control_light", "content": "The lights in the living room are now on."},
        {"role": "assistant", "content": "Done!"}],
        "tools": [tool]});
    let openai = json!({"messages": [
        {"role": "user", "content": "Turn on the living room lights."},
        {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function", "function": {
            "name": "control_light", "arguments": "{\"room\": \"living room\", \"state\": \"on\"}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "The lights in the living room are now on."},
        {"role": "assistant", "content": "Done!"}],
        "tools": tool_text(&tool)});
    write_jsonl(&d.join("tools.jsonl"), &[trl, openai]);
    let max = ["data.max_length=2048", with_qwen.as_str()];
    let samples = lm(prepare(d, "sft", &d.join("tools.jsonl"), &max).unwrap());
    let call = "<tool_call>\n{\"name\": \"control_light\", \"arguments\": {\"room\": \"living room\", \"state\": \"on\"}}\n</tool_call><|im_end|>\n";
    for s in &samples {
        let text = decode(d, &s.ids);
        assert!(
            text.contains(
                "<tools>\n{\"type\": \"function\", \"function\": {\"name\": \"control_light\""
            ) || text.contains(
                "<tools>\n{\"function\": {\"description\": \"Controls the lights in a room.\""
            ),
            "{text}"
        );
        assert_eq!(trained(d, s), format!("{call}Done!<|im_end|>\n"), "{text}");
        assert!(text.contains(
            "<tool_response>\nThe lights in the living room are now on.\n</tool_response>"
        ));
    }
    // The JSON text keeps the tool's keys in order; the list read from JSONL has them sorted.
    assert!(decode(d, &samples[1].ids).contains(
        "{\"type\": \"function\", \"function\": {\"name\": \"control_light\", \"description\""
    ));
    write_jsonl(
        &d.join("bad.jsonl"),
        &[
            json!({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}], "tools": 3}),
        ],
    );
    let e = prepare(d, "sft", &d.join("bad.jsonl"), &max)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("bad.jsonl") && e.contains("column `tools`"),
        "{e}"
    );
    // A LoRA run on them leaves the template it was trained with beside its adapter (the
    // tiny model given room for Qwen's long system turn).
    let cfg_path = model(d).join("config.json");
    let mut mc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();
    mc["max_position_embeddings"] = 2048.into();
    std::fs::write(&cfg_path, mc.to_string()).unwrap();
    let cfg = config(
        d,
        "sft",
        &[
            format!("data.train.path={}", d.join("tools.jsonl").display()),
            "data.max_length=2048".into(),
            with_qwen.clone(),
            "training.tuning=lora".into(),
            "training.max_steps=1".into(),
            format!("training.output_dir={}", d.join("run").display()),
        ],
    );
    let out = galley_train::run(&cfg, Sources::default(), false, &mut NoObserver).unwrap();
    let saved = out.adapter.unwrap().join("chat_template.jinja");
    assert_eq!(std::fs::read_to_string(saved).unwrap(), tmpl);
}

/// A tool as the JSON text a dataset keeps it as, its keys in the order written.
fn tool_text(tool: &serde_json::Value) -> String {
    let f = &tool["function"];
    format!(
        r#"[{{"type": "function", "function": {{"name": {}, "description": {}, "parameters": {}}}}}]"#,
        f["name"], f["description"], f["parameters"]
    )
}
