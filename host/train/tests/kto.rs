//! KTO on a tiny model with unpaired examples: before training the policy is its reference,
//! so every implied reward and the KL reference point are 0 and every loss is 1 - sigmoid(0)
//! = 0.5; training raises the held-out desirable rewards above the undesirable ones and
//! lowers the held-out loss. The adapters-off reference equals an explicit frozen copy.

mod common;

use common::{tiny_chat_model, write_jsonl};
use galley_train::{NoObserver, Sources, TrainConfig};
use serde_json::json;

fn metrics(cfg: &TrainConfig) -> Vec<serde_json::Value> {
    galley_train::run(cfg, Sources::default(), false, &mut NoObserver).unwrap();
    std::fs::read_to_string(cfg.training.output_dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn config(dir: &std::path::Path, name: &str, extra: &[&str]) -> TrainConfig {
    let mut sets = vec![
        format!("model.path={}", dir.join("model").display()),
        format!("data.train.path={}", dir.join("kto.jsonl").display()),
        format!("training.output_dir={}", dir.join(name).display()),
        "data.validation_split=0.25".into(),
        "training.method=kto".into(),
        "training.batch_size=4".into(),
        "training.learning_rate=5e-3".into(),
        "training.lr_scheduler=constant".into(),
        "training.epochs=6".into(),
        "training.eval_steps=9".into(),
        "training.eval_on_start=true".into(),
        "peft.r=8".into(),
        "peft.lora_dropout=0".into(),
        "peft.target_modules=[q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj]".into(),
        "kto.beta=0.5".into(),
    ];
    sets.extend(extra.iter().map(|s| s.to_string()));
    TrainConfig::load(None, &sets).unwrap()
}

fn setup() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("model")).unwrap();
    tiny_chat_model(&dir.path().join("model"));
    // Unpaired: "yes" answers are desirable, "no" answers not; each prompt has one of them.
    let rows: Vec<serde_json::Value> = (0..64)
        .map(|i| {
            let good = i % 2 == 0;
            json!({"prompt": format!("the number {i}"),
                   "completion": format!(" is {} and the answer is {}", i % 17, if good { "yes" } else { "no" }),
                   "label": good})
        })
        .collect();
    write_jsonl(&dir.path().join("kto.jsonl"), &rows);
    dir
}

#[test]
fn kto_separates_held_out_desirable_from_undesirable_and_lowers_the_loss() {
    let dir = setup();
    let m = metrics(&config(dir.path(), "run", &[]));
    let evals: Vec<&serde_json::Value> =
        m.iter().filter(|v| v.get("eval_loss").is_some()).collect();
    let (first, last) = (evals[0], evals[evals.len() - 1]);
    let f = |v: &serde_json::Value, k: &str| v[k].as_f64().unwrap();
    assert!((f(first, "eval_loss") - 0.5).abs() < 1e-6, "{first}");
    assert!(f(first, "eval_kl").abs() < 1e-6, "{first}");
    assert!(
        f(last, "eval_loss") < 0.45,
        "held-out loss {} -> {}",
        f(first, "eval_loss"),
        f(last, "eval_loss")
    );
    assert!(
        f(last, "eval_rewards_chosen") > f(last, "eval_rewards_rejected"),
        "held-out rewards {last}"
    );
    assert!(f(last, "eval_rewards_margin") > 0.0);
    let steps: Vec<&serde_json::Value> = m.iter().filter(|v| v.get("loss").is_some()).collect();
    assert!(steps.iter().all(|s| s.get("kl").is_some()));
    assert!(
        dir.path()
            .join("run/adapter/adapter_model.safetensors")
            .exists()
    );
}

#[test]
fn adapters_off_reference_equals_an_explicit_copy() {
    let dir = setup();
    let losses = |name: &str, extra: &[&str]| -> Vec<f64> {
        let mut all = vec!["training.epochs=1"];
        all.extend_from_slice(extra);
        metrics(&config(dir.path(), name, &all))
            .iter()
            .filter_map(|v| v.get("loss").or_else(|| v.get("eval_loss"))?.as_f64())
            .collect()
    };
    let off = losses("off", &[]);
    assert!(off.len() > 5);
    assert_eq!(off, losses("copy", &["kto.reference=copy"]));
    // The unpaired APO-zero loss runs too, from 1 - sigmoid(0) = 0.5 for desirable and
    // sigmoid(0) = 0.5 for undesirable examples.
    let apo = losses("apo", &["kto.loss_type=apo_zero_unpaired"]);
    assert!((apo[0] - 0.5).abs() < 1e-6, "{}", apo[0]);
}
