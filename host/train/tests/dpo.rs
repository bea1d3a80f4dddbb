//! DPO on a tiny model: held-out preference accuracy rises and the loss falls; the reference
//! as "the policy with adapters off" gives the same losses as an explicit frozen copy, and
//! precomputed reference log-probs the same as per-batch ones.

mod common;

use common::tiny_chat_model;
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

fn setup() -> (tempfile::TempDir, Vec<String>) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("model")).unwrap();
    tiny_chat_model(&dir.path().join("model"));
    // Prefer "yes" to "no", whatever the number.
    let lines: Vec<String> = (0..48)
        .map(|i| {
            json!({"prompt": format!("the number {i}"), "chosen": format!("is {} and the answer is yes", i % 17),
                   "rejected": format!("is {} and the answer is no", i % 17)})
            .to_string()
        })
        .collect();
    std::fs::write(dir.path().join("prefs.jsonl"), lines.join("\n")).unwrap();
    let base = vec![
        format!("model.path={}", dir.path().join("model").display()),
        format!(
            "data.train.path={}",
            dir.path().join("prefs.jsonl").display()
        ),
        "data.validation_split=0.25".into(),
        "training.method=dpo".into(),
        "training.batch_size=4".into(),
        "training.learning_rate=5e-3".into(),
        "training.lr_scheduler=constant".into(),
        "training.epochs=6".into(),
        "training.eval_steps=9".into(),
        "peft.r=8".into(),
        "peft.lora_dropout=0".into(),
        "peft.target_modules=[q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj]".into(),
        "dpo.beta=0.5".into(),
    ];
    (dir, base)
}

fn config(dir: &tempfile::TempDir, base: &[String], name: &str, extra: &[&str]) -> TrainConfig {
    let mut sets = base.to_vec();
    sets.push(format!(
        "training.output_dir={}",
        dir.path().join(name).display()
    ));
    sets.extend(extra.iter().map(|s| s.to_string()));
    TrainConfig::load(None, &sets).unwrap()
}

#[test]
fn dpo_raises_held_out_preference_accuracy_and_lowers_the_loss() {
    let (dir, base) = setup();
    let m = metrics(&config(&dir, &base, "run", &[]));
    let evals: Vec<&serde_json::Value> =
        m.iter().filter(|v| v.get("eval_loss").is_some()).collect();
    let (first, last) = (evals[0], evals[evals.len() - 1]);
    let f = |v: &serde_json::Value, k: &str| v[k].as_f64().unwrap();
    // Before training policy = reference: every implicit reward is 0, the loss ln 2.
    assert!(
        (f(first, "eval_loss") - std::f64::consts::LN_2).abs() < 1e-6,
        "{first}"
    );
    assert_eq!(f(first, "eval_rewards_accuracy"), 0.0);
    assert!(
        f(last, "eval_loss") < 0.5,
        "held-out loss {} -> {}",
        f(first, "eval_loss"),
        f(last, "eval_loss")
    );
    assert!(
        f(last, "eval_rewards_accuracy") > 0.9,
        "held-out accuracy {last}"
    );
    assert!(f(last, "eval_rewards_margin") > 0.0);
    let steps: Vec<&serde_json::Value> = m.iter().filter(|v| v.get("loss").is_some()).collect();
    assert!(
        steps
            .iter()
            .all(|s| s.get("rewards_chosen").is_some() && s.get("rewards_accuracy").is_some())
    );
    // The adapter is what DPO trained.
    assert!(
        dir.path()
            .join("run/adapter/adapter_model.safetensors")
            .exists()
    );
}

#[test]
fn adapters_off_reference_equals_an_explicit_copy_and_precomputing_changes_nothing() {
    let (dir, base) = setup();
    let short = ["training.epochs=1"];
    let losses = |name: &str, extra: &[&str]| -> Vec<f64> {
        let mut all = short.to_vec();
        all.extend_from_slice(extra);
        metrics(&config(&dir, &base, name, &all))
            .iter()
            .filter_map(|v| {
                v.get("loss")
                    .or_else(|| v.get("eval_loss"))
                    .and_then(|l| l.as_f64())
            })
            .collect()
    };
    let off = losses("off", &[]);
    let copy = losses("copy", &["dpo.reference=copy"]);
    let pre = losses("pre", &["dpo.precompute_ref_log_probs=true"]);
    assert!(off.len() > 5);
    assert_eq!(off, copy, "adapters-off reference vs frozen copy");
    assert_eq!(off, pre, "per-batch vs precomputed reference");
    // Another loss type runs too and starts from its own value at zero margin.
    let ipo = losses("ipo", &["dpo.loss_type=ipo"]);
    assert!(
        (ipo[0] - 1.0).abs() < 1e-6,
        "IPO at zero margin: (0 - 1/(2 beta))^2 = 1, got {}",
        ipo[0]
    );
}
