//! Data-parallel SFT over a TCP group on loopback: two ranks with batch 1 and two accumulation
//! steps take the steps of one process with batch 4 — the same losses, gradient norms and
//! final weights, with the sums in small buckets overlapping the backward pass — and only
//! rank 0 writes the run folder. A resumed two-rank run ends where
//! the uninterrupted one does. Objectives that do not run data-parallel yet are refused.

mod common;

use common::{chat, tiny_chat_model, write_jsonl};
use galley_train::dist::{Collective, Placement, TcpGroup};
use galley_train::{NoObserver, Sources, TrainConfig};
use std::path::Path;
use std::time::Duration;

fn cfg(dir: &Path, out: &str, extra: &[String]) -> TrainConfig {
    let mut sets = vec![
        format!("model.path={}", dir.join("model").display()),
        format!("data.train.path={}", dir.join("d.jsonl").display()),
        format!("training.output_dir={}", dir.join(out).display()),
        "training.method=full".into(),
        "training.epochs=2".into(),
        "training.learning_rate=1e-2".into(),
        "training.save_steps=2".into(),
        // A run stopped by max_steps and resumed keeps the schedule only when it is flat.
        "training.lr_scheduler=constant".into(),
        "training.save_total_limit=10".into(),
    ];
    sets.extend(extra.iter().cloned());
    TrainConfig::load(None, &sets).unwrap()
}

fn column(dir: &Path, key: &str) -> Vec<f64> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .filter_map(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .ok()?
                .get(key)?
                .as_f64()
        })
        .collect()
}

/// Runs `cfg` on `world` ranks (threads of this process), each with its own TCP group.
fn run_ranks(cfg: &TrainConfig, world: usize, resume: bool) -> Vec<galley_train::Result<()>> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let job = galley_train::digest(cfg);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..world)
            .map(|rank| {
                let job = job.clone();
                s.spawn(move || {
                    let p = Placement {
                        rank,
                        world_size: world,
                        local_rank: rank,
                        master: Some(format!("127.0.0.1:{port}")),
                    };
                    let g = TcpGroup::connect(&p, &job, Duration::from_secs(60))?;
                    let sources = Sources {
                        group: Some(Box::new(g) as Box<dyn Collective>),
                        ..Default::default()
                    };
                    galley_train::run(cfg, sources, resume, &mut NoObserver).map(|_| ())
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

fn weights(dir: &Path) -> Vec<f32> {
    let t = candle_core::safetensors::load(
        dir.join("model/model.safetensors"),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let mut names: Vec<_> = t.keys().cloned().collect();
    names.sort();
    names
        .iter()
        .flat_map(|n| t[n].flatten_all().unwrap().to_vec1::<f32>().unwrap())
        .collect()
}

#[test]
fn two_ranks_take_the_steps_of_one_process_with_the_whole_batch() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    tiny_chat_model(&d.join("model"));
    let rows: Vec<_> = (0..16)
        .map(|i| {
            chat(
                &format!("the number {i}"),
                &format!("is {} and the answer is yes", i * 3 % 17),
            )
        })
        .collect();
    write_jsonl(&d.join("d.jsonl"), &rows);
    let one = cfg(d, "one", &["training.batch_size=4".into()]);
    galley_train::run(&one, Sources::default(), false, &mut NoObserver).unwrap();
    let dp_sets = [
        "training.batch_size=1".to_string(),
        "training.gradient_accumulation_steps=2".into(),
        // Buckets of ~2,600 values: many per layer, so the sums overlap the backward pass.
        "training.ddp_bucket_cap_mb=0.01".into(),
    ];
    let dp = cfg(d, "dp", &dp_sets);
    for r in run_ranks(&dp, 2, false) {
        r.unwrap();
    }
    for key in ["loss", "grad_norm", "tokens"] {
        let (a, b) = (column(&d.join("one"), key), column(&d.join("dp"), key));
        assert_eq!(a.len(), 8, "{key}: {a:?}");
        assert_eq!(a.len(), b.len(), "{key}");
        for (x, y) in a.iter().zip(&b) {
            assert!(
                (x - y).abs() <= 1e-5 * x.abs().max(1e-3),
                "{key}: one process {a:?}, two ranks {b:?}"
            );
        }
    }
    // Every step's sums went through the overlap (the first one learning its plan).
    let overlap = column(&d.join("dp"), "allreduce_overlap");
    assert_eq!(overlap.len(), 8, "{overlap:?}");
    assert!(
        overlap.iter().all(|f| (0.0..=1.0).contains(f)),
        "{overlap:?}"
    );
    println!("share of the gradients summed during the backward pass, by step: {overlap:?}");
    let (wa, wb) = (weights(&d.join("one")), weights(&d.join("dp")));
    let scale = wa.iter().fold(0f32, |m, v| m.max(v.abs()));
    let diff = wa
        .iter()
        .zip(&wb)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(diff <= 1e-4 * scale, "final weights differ by {diff}");
    // One metrics file, one set of checkpoints: rank 0's.
    assert_eq!(
        std::fs::read_to_string(d.join("dp/metrics.jsonl"))
            .unwrap()
            .lines()
            .count(),
        8
    );
    // Stopped after step 4 and resumed on two ranks: the same end.
    let half = cfg(
        d,
        "half",
        &[
            dp_sets[0].clone(),
            dp_sets[1].clone(),
            dp_sets[2].clone(),
            "training.max_steps=4".into(),
        ],
    );
    for r in run_ranks(&half, 2, false) {
        r.unwrap();
    }
    let rest = cfg(d, "half", &dp_sets);
    for r in run_ranks(&rest, 2, true) {
        r.unwrap();
    }
    let (a, b) = (
        column(&d.join("dp"), "loss"),
        column(&d.join("half"), "loss"),
    );
    assert_eq!(b.len(), 8, "{b:?}");
    for (x, y) in a.iter().zip(&b) {
        assert!(
            (x - y).abs() <= 1e-5 * x.abs(),
            "uninterrupted {a:?}, resumed {b:?}"
        );
    }
}

#[test]
fn objectives_that_do_not_run_data_parallel_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    tiny_chat_model(&d.join("model"));
    write_jsonl(
        &d.join("d.jsonl"),
        &[serde_json::json!({"prompt": "a", "chosen": "b", "rejected": "c"})],
    );
    let dpo = cfg(d, "dpo", &["training.method=dpo".into()]);
    for r in run_ranks(&dpo, 2, false) {
        let e = r.unwrap_err().to_string();
        assert!(e.contains("data-parallel") && e.contains("Dpo"), "{e}");
    }
}
