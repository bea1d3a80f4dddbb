//! Data loading, masking and bad input: every bad record is refused with its file and line, or
//! skipped and counted, as configured; config errors name the file, line and key.

mod common;

use common::{CHATML, chat, tiny_chat_model, write_jsonl};
use galley_train::config::{DataSection, LossOn};
use galley_train::data::{self, Encoder, Records, Skipped};
use galley_train::{Sources, TrainConfig, TrainError};
use serde_json::json;
use std::path::Path;

fn config(dir: &Path, data: &Path, extra: &[&str]) -> TrainConfig {
    let mut sets = vec![
        format!("model.path={}", dir.join("model").display()),
        format!("data.train.path={}", data.display()),
        format!("training.output_dir={}", dir.join("run").display()),
        "training.max_steps=2".into(),
        "training.batch_size=2".into(),
        "data.max_length=64".into(),
    ];
    sets.extend(extra.iter().map(|s| s.to_string()));
    TrainConfig::load(None, &sets).unwrap()
}

fn setup() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("model")).unwrap();
    tiny_chat_model(&dir.path().join("model"));
    dir
}

fn prepare(cfg: &TrainConfig, dir: &Path) -> Result<galley_train::Prepared, TrainError> {
    galley_train::prepare(cfg, Sources::default(), &dir.join("run"))
}

#[test]
fn only_assistant_tokens_count_and_turn_policy_is_honoured() {
    let dir = setup();
    let ck = galley_model::open(&dir.path().join("model"), Default::default()).unwrap();
    let tmpl = galley_model::ChatTemplate::new(CHATML, "test", "", "<|im_end|>").unwrap();
    let msgs = vec![
        galley_core::Message::new("user", "the number 1"),
        galley_core::Message::new("assistant", "is 3"),
        galley_core::Message::new("user", "and 2"),
        galley_core::Message::new("assistant", "is 6"),
    ];
    let encode = |loss_on| {
        let cfg = DataSection {
            loss_on,
            ..Default::default()
        };
        let enc = Encoder {
            tokenizer: &ck.tokenizer,
            template: Some(&tmpl),
            cfg: &cfg,
        };
        let ex = galley_core::Example {
            id: "x".into(),
            messages: msgs.clone(),
            metadata: Default::default(),
        };
        enc.encode(
            Records::Items(vec![data::plugin_record("x".into(), ex)]),
            &mut Skipped::default(),
        )
        .unwrap()
        .remove(0)
    };
    let decode_trained = |s: &data::Sample| {
        let ids: Vec<u32> = s
            .ids
            .iter()
            .zip(&s.train)
            .filter(|(_, t)| **t)
            .map(|(i, _)| *i)
            .collect();
        ck.tokenizer.decode(&ids, false).unwrap()
    };
    let all = encode(LossOn::AllAssistant);
    assert_eq!(decode_trained(&all), "is 3<|im_end|>\nis 6<|im_end|>\n");
    let last = encode(LossOn::LastAssistant);
    assert_eq!(decode_trained(&last), "is 6<|im_end|>\n");
    assert!(encode(LossOn::All).train.iter().all(|&t| t));
}

#[test]
fn malformed_jsonl_line_is_named_or_counted() {
    let dir = setup();
    let data = dir.path().join("d.jsonl");
    std::fs::write(
        &data,
        format!(
            "{}\n{{\"messages\": [oops\n{}\n",
            chat("the number 1", "is 3"),
            chat("the number 2", "is 6")
        ),
    )
    .unwrap();
    let cfg = config(dir.path(), &data, &["data.on_bad_example=error"]);
    let err = prepare(&cfg, dir.path())
        .err()
        .expect("refused")
        .to_string();
    assert!(err.contains("d.jsonl:2"), "{err}");
    let cfg = config(dir.path(), &data, &[]);
    let p = prepare(&cfg, dir.path()).unwrap();
    assert_eq!(p.skipped.malformed, 1);
    assert_eq!(p.data.samples().0.len(), 2);
}

#[test]
fn conversation_without_assistant_turn_is_named_or_counted() {
    let dir = setup();
    let data = dir.path().join("d.jsonl");
    write_jsonl(
        &data,
        &[
            chat("the number 1", "is 3"),
            json!({"messages": [{"role": "user", "content": "hello"}]}),
        ],
    );
    let err = prepare(
        &config(dir.path(), &data, &["data.on_bad_example=error"]),
        dir.path(),
    )
    .err()
    .unwrap()
    .to_string();
    assert!(
        err.contains("d.jsonl:2") && err.contains("no assistant turn"),
        "{err}"
    );
    let p = prepare(&config(dir.path(), &data, &[]), dir.path()).unwrap();
    assert_eq!((p.skipped.no_assistant, p.data.samples().0.len()), (1, 1));
}

#[test]
fn too_long_sequences_follow_the_truncation_policy() {
    let dir = setup();
    let data = dir.path().join("d.jsonl");
    let long = "the number 7 is 4 and the answer is yes ".repeat(40);
    write_jsonl(
        &data,
        &[chat("the number 1", "is 3"), chat("the number 2", &long)],
    );
    let err = prepare(
        &config(dir.path(), &data, &["data.truncation=error"]),
        dir.path(),
    )
    .err()
    .unwrap()
    .to_string();
    assert!(
        err.contains("d.jsonl:2") && err.contains("longer than data.max_length = 64"),
        "{err}"
    );
    let p = prepare(
        &config(dir.path(), &data, &["data.truncation=skip"]),
        dir.path(),
    )
    .unwrap();
    assert_eq!((p.skipped.too_long, p.data.samples().0.len()), (1, 1));
    let p = prepare(&config(dir.path(), &data, &[]), dir.path()).unwrap();
    assert_eq!(p.data.samples().0.len(), 2);
    assert!(p.data.samples().0.iter().all(|s| s.ids.len() <= 64));
}

#[test]
fn a_preference_pair_too_long_on_either_side_is_skipped_and_counted_once() {
    let dir = setup();
    let data = dir.path().join("pairs.jsonl");
    let long = "the number 7 is 4 and the answer is yes ".repeat(40);
    let pair = |chosen: &str, rejected: &str| {
        json!({"prompt": [{"role": "user", "content": "the number 1"}],
               "chosen": [{"role": "assistant", "content": chosen}],
               "rejected": [{"role": "assistant", "content": rejected}]})
    };
    write_jsonl(
        &data,
        &[
            pair("is 3", "is 4"),
            pair(&long, "is 4"),
            pair("is 3", &long),
            pair(&long, &long),
        ],
    );
    let sets = ["training.method=dpo", "data.truncation=skip"];
    let p = prepare(&config(dir.path(), &data, &sets), dir.path()).unwrap();
    let galley_train::Data::Pairs { train, .. } = &p.data else {
        panic!("DPO data are pairs")
    };
    // Three records skipped, not four: the pair whose two answers are both too long is one
    // example, and the summary says so.
    assert_eq!(
        (train.len(), p.skipped.too_long, p.skipped.total()),
        (1, 3, 3)
    );
    assert_eq!(
        p.skipped.summary().unwrap(),
        "skipped 3 examples: 3 too long"
    );
    // As an error, the record is named with the side at fault.
    let sets = ["training.method=dpo", "data.truncation=error"];
    let err = prepare(&config(dir.path(), &data, &sets), dir.path())
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("pairs.jsonl:2") && err.contains("the chosen answer"),
        "{err}"
    );
}

#[test]
fn unknown_lora_target_is_refused_by_name() {
    let dir = setup();
    let data = dir.path().join("d.jsonl");
    write_jsonl(&data, &[chat("the number 1", "is 3")]);
    let cfg = config(
        dir.path(),
        &data,
        &["peft.target_modules=[q_proj, qkv_proj]"],
    );
    let err = prepare(&cfg, dir.path()).err().unwrap().to_string();
    assert!(
        err.contains("qkv_proj") && err.contains("peft.target_modules"),
        "{err}"
    );
}

#[test]
fn config_errors_name_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("train.yaml");
    std::fs::write(
        &path,
        "model:\n  path: m.gguf\ntraining:\n  method: lora\n  lerning_rate: 0.1\n",
    )
    .unwrap();
    let err = TrainConfig::load(Some(&path), &[]).unwrap_err().to_string();
    assert!(
        err.contains("train.yaml:5") && err.contains("training.lerning_rate"),
        "{err}"
    );
    std::fs::write(
        &path,
        "model:\n  path: m.gguf\ntraining:\n  batch_size: many\n",
    )
    .unwrap();
    let err = TrainConfig::load(Some(&path), &[]).unwrap_err().to_string();
    assert!(
        err.contains("train.yaml:4") && err.contains("training.batch_size"),
        "{err}"
    );
    std::fs::write(
        &path,
        "model:\n  path: m.gguf\ndata:\n  train: {path: d.jsonl}\n",
    )
    .unwrap();
    let err = TrainConfig::load(Some(&path), &["training.epochs=-1".into()])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("training.epochs") && err.contains("override"),
        "{err}"
    );
    for bad in ["0", "-1", ".nan"] {
        let err = TrainConfig::load(Some(&path), &[format!("training.ddp_bucket_cap_mb={bad}")])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("training.ddp_bucket_cap_mb") && err.contains("positive"),
            "{bad}: {err}"
        );
    }
    let ok = TrainConfig::load(Some(&path), &["training.max_steps=3".into()]).unwrap();
    assert_eq!(ok.training.max_steps, Some(3));
    assert_eq!(
        ok.model.path.unwrap(),
        dir.path().join("m.gguf"),
        "paths are relative to the file"
    );
}

#[test]
fn objective_and_tuning_are_separate_settings() {
    use galley_train::config::{Objective, Tuning};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.yaml");
    std::fs::write(
        &path,
        "model:\n  path: m.gguf\ndata:\n  train: {path: d.jsonl}\n",
    )
    .unwrap();
    let load = |sets: &[&str]| {
        let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
        TrainConfig::load(Some(&path), &sets)
    };
    let c = load(&["training.method=qlora"]).unwrap();
    assert_eq!((c.objective(), c.tuning()), (Objective::Sft, Tuning::Qlora));
    let c = load(&["training.method=sft", "training.tuning=full"]).unwrap();
    assert_eq!((c.objective(), c.tuning()), (Objective::Sft, Tuning::Full));
    let c = load(&["training.method=dpo"]).unwrap();
    assert_eq!((c.objective(), c.tuning()), (Objective::Dpo, Tuning::Lora));
    // A tuning that is an objective no longer type-checks.
    let e = load(&["training.method=dpo", "training.tuning=grpo"])
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("training.tuning") && e.contains("unknown variant"),
        "{e}"
    );
    let e = load(&["training.method=lora", "training.tuning=full"])
        .unwrap_err()
        .to_string();
    assert!(e.contains("training.tuning"), "{e}");
}

#[test]
fn alpaca_records_become_conversations_and_packing_fills_rows() {
    let dir = setup();
    let data = dir.path().join("a.json");
    std::fs::write(
        &data,
        json!([
            {"instruction": "the number 1", "input": "", "output": "is 3"},
            {"instruction": "the number 2", "input": "and", "output": "is 6", "system": "be brief"},
            {"instruction": 5}
        ])
        .to_string(),
    )
    .unwrap();
    let p = prepare(&config(dir.path(), &data, &[]), dir.path()).unwrap();
    assert_eq!((p.data.samples().0.len(), p.skipped.malformed), (2, 1));
    let packed = data::pack(p.data.samples().0, 8);
    assert!(packed.iter().all(|s| s.ids.len() == 8));
    assert_eq!(
        packed.len(),
        p.data
            .samples()
            .0
            .iter()
            .map(|s| s.ids.len())
            .sum::<usize>()
            / 8
    );
}

/// A generator plugin (like `arith`) never runs dry: a limit bounds it, and without one the
/// trainer stops with an error naming the source instead of reading forever.
#[test]
fn endless_sources_need_a_limit() {
    struct Endless(usize);
    impl galley_core::DataSource for Endless {
        fn name(&self) -> &str {
            "endless@0.1.0"
        }
        fn next_page(
            &mut self,
            max: usize,
        ) -> Result<Vec<galley_core::Example>, galley_core::PluginError> {
            self.0 += max;
            Ok((0..max)
                .map(|i| galley_core::Example {
                    id: format!("{i}"),
                    messages: vec![galley_core::Message::new("user", "hi")],
                    metadata: Default::default(),
                })
                .collect())
        }
    }
    let Records::Items(c) = data::read_source(&mut Endless(0), Some(300)).unwrap() else {
        panic!()
    };
    assert_eq!(c.len(), 300);
    let err = data::read_source_capped(&mut Endless(0), None, 1000)
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("endless@0.1.0") && err.contains("set `limit`"),
        "{err}"
    );
}

/// Environments: one for every prompt or several by name, not both; names are
/// identifiers; each one's keys are checked under its own name; with one, reward functions
/// may be left out (the environment scores).
#[test]
fn environment_configs_are_checked_by_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("grpo.yaml");
    let check = |grpo: &str| {
        std::fs::write(
            &path,
            format!("model: {{path: m.gguf}}\ndata: {{train: {{path: p.jsonl}}}}\ntraining: {{method: grpo, batch_size: 8}}\ngrpo:\n{grpo}"),
        )
        .unwrap();
        TrainConfig::load(Some(&path), &[])
            .map(|_| ())
            .map_err(|e| e.to_string())
    };
    assert_eq!(check("  environment: {plugin: wordle}\n"), Ok(()));
    assert_eq!(
        check("  environments: {game: {plugin: wordle}, bank: {plugin: bank.wasm}}\n"),
        Ok(())
    );
    let e = check("  environment: {plugin: wordle}\n  environments: {game: {plugin: wordle}}\n")
        .unwrap_err();
    assert!(
        e.contains("grpo.environments") && e.contains("not both"),
        "{e}"
    );
    let e = check("  environments: {\"my game\": {plugin: wordle}}\n").unwrap_err();
    assert!(e.contains("grpo.environments.my game"), "{e}");
    let e = check("  environments: {game: {plugin: wordle, reward_weight: .nan}}\n").unwrap_err();
    assert!(e.contains("grpo.environments.game.reward_weight"), "{e}");
    let e = check("  environment: {plugin: wordle, episodes_memory_mb: 0}\n").unwrap_err();
    assert!(e.contains("grpo.environment.episodes_memory_mb"), "{e}");
    let e = check("  environments: {game: {plugin: ''}}\n").unwrap_err();
    assert!(e.contains("grpo.environments.game.plugin"), "{e}");
    // Without an environment, a reward function is still required.
    let e = check("  num_generations: 8\n").unwrap_err();
    assert!(e.contains("grpo.rewards"), "{e}");
}
