//! Data-parallel training steps: two ranks (processes, one thread each) on loopback fine-tune
//! SmolLM2-135M (all weights, f32 from the GGUF, AdamW) on packed rows of the Alpaca demo
//! set through `galley_train::run` and its TCP group, with the gradient sums overlapped with
//! the backward pass (`galley_train::overlap`, the default) and after it
//! (`GALLEY_DIST_OVERLAP=0`), against one process training the same rows per rank (no
//! sums: the floor), and against PyTorch DDP (gloo, whose bucketed all-reduce also overlaps
//! autograd; `bench/dist_train_peer.py`, same shape, one thread a rank) in the same run.
//! Step times are the mean of steps 2..N (the first warms up and, in galley, learns the
//! overlap's plan). Run it on an otherwise idle machine.
//!
//!     cargo run --release -p galley-bench --bin dist-train-bench -- [--steps N] [--python PY]

use galley_train::dist::{Collective, Placement, TcpGroup};
use galley_train::{NoObserver, Sources, TrainConfig};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// Rows per rank and step, and tokens per row.
const B: usize = 1;
const T: usize = 256;

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn config(root: &Path, out: &Path, steps: usize) -> TrainConfig {
    let sets = [
        format!(
            "model.path={}",
            root.join(".cache/models/SmolLM2-135M-Instruct.Q4_1.gguf")
                .display()
        ),
        format!(
            "data.train.path={}",
            root.join(".cache/data/alpaca_en_demo.json").display()
        ),
        format!("training.output_dir={}", out.display()),
        "training.method=full".into(),
        "data.packing=true".into(),
        format!("data.max_length={T}"),
        format!("training.batch_size={B}"),
        format!("training.max_steps={steps}"),
        "training.eval_on_start=false".into(),
        "training.lr_scheduler=constant".into(),
        "training.learning_rate=1e-5".into(),
    ];
    TrainConfig::load(None, &sets).expect("config")
}

/// One rank in this process.
fn child(args: &[String], root: &Path) {
    let rank: usize = arg(args, "--rank").unwrap().parse().unwrap();
    let world: usize = arg(args, "--world").unwrap().parse().unwrap();
    let steps: usize = arg(args, "--steps").unwrap().parse().unwrap();
    let out = PathBuf::from(arg(args, "--out").unwrap());
    rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build_global()
        .unwrap();
    galley_train::keep_freed_memory();
    let cfg = config(root, &out, steps);
    let group = (world > 1).then(|| {
        let p = Placement {
            rank,
            world_size: world,
            local_rank: rank,
            master: Some(format!("127.0.0.1:{}", arg(args, "--port").unwrap())),
        };
        let job = galley_train::digest(&cfg);
        Box::new(TcpGroup::connect(&p, &job, Duration::from_secs(600)).unwrap())
            as Box<dyn Collective>
    });
    let sources = Sources {
        group,
        ..Default::default()
    };
    galley_train::run(&cfg, sources, false, &mut NoObserver).expect("training");
}

/// Mean seconds of steps 2..N, and the mean share of the gradients summed during the
/// backward pass over those steps, from rank 0's metrics.
fn step_times(out: &Path) -> (f64, Option<f64>) {
    let rows: Vec<serde_json::Value> = std::fs::read_to_string(out.join("metrics.jsonl"))
        .expect("metrics")
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .filter(|v: &serde_json::Value| v.get("loss").is_some() && v.get("step").is_some())
        .collect();
    let elapsed: Vec<f64> = rows
        .iter()
        .map(|r| r["elapsed_s"].as_f64().unwrap())
        .collect();
    let n = elapsed.len();
    assert!(n >= 3, "{n} steps logged");
    let mean = (elapsed[n - 1] - elapsed[0]) / (n - 1) as f64;
    let shares: Vec<f64> = rows[1..]
        .iter()
        .filter_map(|r| r.get("allreduce_overlap")?.as_f64())
        .collect();
    let share = (!shares.is_empty()).then(|| shares.iter().sum::<f64>() / shares.len() as f64);
    (mean, share)
}

/// Runs `world` ranks as child processes; returns rank 0's step times.
fn galley(work: &Path, world: usize, overlap: bool, steps: usize) -> (f64, Option<f64>) {
    let out = work.join(format!("w{world}-overlap{}", overlap as u8));
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let exe = std::env::current_exe().unwrap();
    let kids: Vec<_> = (0..world)
        .map(|rank| {
            Command::new(&exe)
                .args(["--rank", &rank.to_string(), "--world", &world.to_string()])
                .args(["--port", &port.to_string(), "--steps", &steps.to_string()])
                .args(["--out", out.to_str().unwrap()])
                .env("GALLEY_DIST_OVERLAP", if overlap { "1" } else { "0" })
                .spawn()
                .expect("a rank")
        })
        .collect();
    for mut k in kids {
        assert!(k.wait().unwrap().success(), "a rank failed");
    }
    step_times(&out)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    if arg(&args, "--rank").is_some() {
        child(&args, &root);
        return;
    }
    let steps: usize = arg(&args, "--steps").map_or(5, |s| s.parse().expect("--steps N"));
    let python = arg(&args, "--python").unwrap_or_else(|| "bench/.venv-train/bin/python".into());
    let work = std::env::temp_dir().join(format!("galley-dist-train-{}", std::process::id()));
    std::fs::create_dir_all(&work).unwrap();
    let (one, _) = galley(&work, 1, true, steps);
    let (after, _) = galley(&work, 2, false, steps);
    let (during, share) = galley(&work, 2, true, steps);
    let peer = Command::new(&python)
        .arg(root.join("bench/dist_train_peer.py"))
        .args(["--steps", &steps.to_string(), "--batch", &B.to_string()])
        .args(["--seq", &T.to_string()])
        .arg("--model")
        .arg(root.join(".cache/models/SmolLM2-135M-Instruct.Q4_1.gguf"))
        .output()
        .expect("running the PyTorch peer");
    assert!(
        peer.status.success(),
        "peer: {}",
        String::from_utf8_lossy(&peer.stderr)
    );
    let peer: serde_json::Value = String::from_utf8_lossy(&peer.stdout)
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
        .expect("the peer's JSON line");
    let (p_one, p_two) = (
        peer["one_s"].as_f64().unwrap(),
        peer["ddp_s"].as_f64().unwrap(),
    );
    println!(
        "SmolLM2-135M full fine-tuning, f32, AdamW, {B} x {T} tokens a rank a step, one thread a \
         rank, steps 2..{steps} (mean s/step)"
    );
    println!("| | galley | PyTorch | galley / PyTorch time |");
    println!("| --- | ---: | ---: | ---: |");
    println!(
        "| one process (no sums) | {one:.2} | {p_one:.2} | {:.2}x |",
        one / p_one
    );
    println!("| 2 ranks, sums after the backward pass | {after:.2} | - | - |");
    println!(
        "| 2 ranks, sums overlapped ({:.0}% during the pass) | {during:.2} | {p_two:.2} (DDP) | {:.2}x |",
        share.unwrap_or(0.0) * 100.0,
        during / p_two
    );
    println!(
        "galley: the sums cost {:.2} s a step after the pass, {:.2} s overlapped ({:.0}% hidden); \
         PyTorch DDP's cost {:.2} s",
        after - one,
        during - one,
        100.0 * (1.0 - (during - one) / (after - one)),
        p_two - p_one
    );
    let _ = std::fs::remove_dir_all(&work);
}
