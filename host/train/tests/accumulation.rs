//! Gradient accumulation is a bigger batch in smaller pieces: 2 micro-batches of 2 give the
//! losses of one batch of 4 (the loss is normalised over the step's label tokens, not per
//! micro-batch); and a run repeats itself exactly.

mod common;

use common::{chat, tiny_chat_model, write_jsonl};
use galley_train::{NoObserver, Sources, TrainConfig};

fn losses(cfg: &TrainConfig) -> Vec<f64> {
    galley_train::run(cfg, Sources::default(), false, &mut NoObserver).unwrap();
    std::fs::read_to_string(cfg.training.output_dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .filter_map(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .ok()?
                .get("loss")?
                .as_f64()
        })
        .collect()
}

#[test]
fn accumulating_two_halves_equals_one_batch_and_runs_repeat() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("model")).unwrap();
    tiny_chat_model(&dir.path().join("model"));
    let data = dir.path().join("d.jsonl");
    let rows: Vec<_> = (0..12)
        .map(|i| {
            chat(
                &format!("the number {i}"),
                &format!("is {} and the answer is yes", i * 3 % 17),
            )
        })
        .collect();
    write_jsonl(&data, &rows);
    let cfg = |name: &str, batch: usize, accum: usize| {
        TrainConfig::load(
            None,
            &[
                format!("model.path={}", dir.path().join("model").display()),
                format!("data.train.path={}", data.display()),
                format!("training.output_dir={}", dir.path().join(name).display()),
                "training.method=full".into(),
                "training.epochs=2".into(),
                "training.learning_rate=1e-2".into(),
                format!("training.batch_size={batch}"),
                format!("training.gradient_accumulation_steps={accum}"),
            ],
        )
        .unwrap()
    };
    let one = losses(&cfg("one", 4, 1));
    let two = losses(&cfg("two", 2, 2));
    assert_eq!(one.len(), 6);
    for (a, b) in one.iter().zip(&two) {
        assert!(
            (a - b).abs() < 1e-4 * a.abs(),
            "batch 4: {one:?}\n2 x 2: {two:?}"
        );
    }
    assert!(one[5] < one[0], "the loss falls: {one:?}");
    assert_eq!(
        losses(&cfg("again", 4, 1)),
        one,
        "a second run repeats the first exactly"
    );
}
