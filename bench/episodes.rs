//! Episodes (`galley:plugin@0.4`'s environment world): `galley/wordle` as a sandboxed
//! component — a fresh instance per episode, as GRPO makes one per rollout — against the
//! same game compiled natively into the host (`plugins/wordle/src/game.rs`), what a trainer
//! that ran its environments in-process (TRL's `environment_factory`) would pay. Two cases:
//! starting an episode (instance, `init`, `reset`), and a whole game (start, six guesses
//! one turn each, the score). And a Python environment (`plugins/testing/env-py`, a TRL-style
//! class) started as a component against the same class started in CPython, as TRL does.

#[path = "../plugins/wordle/src/game.rs"]
#[allow(dead_code)]
mod game;

use galley_core::{Episode, FunctionCall};
use galley_runtime::{InstanceOptions, Runtime};
use std::path::Path;
use std::time::{Duration, Instant};

const GUESSES: [&str; 6] = ["crane", "slate", "pound", "light", "music", "ghost"];

fn per_s(mut f: impl FnMut(), min: Duration) -> f64 {
    let mut done = 0usize;
    let start = Instant::now();
    while start.elapsed() < min {
        f();
        done += 1;
    }
    done as f64 / start.elapsed().as_secs_f64()
}

/// The native peer of one game: the same rules, row and seed.
fn native_game(row: &serde_json::Value, seed: u64) -> (Vec<String>, f64) {
    let mut g = game::Wordle::with(&serde_json::json!({})).unwrap();
    g.start(row, seed).unwrap();
    let out = GUESSES
        .iter()
        .map(|w| g.play(w).unwrap_or_else(|e| e))
        .collect();
    (out, g.score())
}

/// Prints the table and returns its rows as JSON.
pub fn bench(runtime: &Runtime, plugin_dir: &Path, min: Duration) -> serde_json::Value {
    let plugin = runtime.load(&plugin_dir.join("wordle.wasm")).unwrap();
    let env = plugin
        .environment(&serde_json::json!({}), InstanceOptions::default())
        .unwrap();
    let row = serde_json::json!({"word": "ghost", "prompt": [{"role": "user", "content": "Play Wordle."}]});
    let args: Vec<String> = GUESSES
        .iter()
        .map(|w| serde_json::json!({ "word": w }).to_string())
        .collect();
    let wasm_game = || {
        let (mut e, _) = env.episode(&row, 7).unwrap();
        let out: Vec<String> = args
            .iter()
            .map(|a| {
                let c = FunctionCall {
                    name: "guess",
                    arguments: a,
                };
                match e.call(&[c]).unwrap().remove(0) {
                    Ok(t) => t,
                    Err(e) => e.message,
                }
            })
            .collect();
        (out, e.reward().unwrap().unwrap())
    };
    // Correctness first: the sandboxed and the native game answer every guess alike.
    let (w, n) = (wasm_game(), native_game(&row, 7));
    assert_eq!(w.1, n.1);
    for (a, b) in w.0.iter().zip(&n.0) {
        assert!(a == b || a.ends_with(b.as_str()), "{a} vs {b}");
    }
    println!(
        "{:<44} {:>14} {:>14} {:>8}",
        "wordle episodes per second", "wasm plugin", "native Rust", "ratio"
    );
    let mut rows = Vec::new();
    let start_w = per_s(
        || {
            std::hint::black_box(env.episode(&row, 7).unwrap());
        },
        min,
    );
    let start_n = per_s(
        || {
            let mut g = game::Wordle::with(&serde_json::json!({})).unwrap();
            std::hint::black_box(g.start(&row, 7).unwrap());
        },
        min,
    );
    let game_w = per_s(
        || {
            std::hint::black_box(wasm_game());
        },
        min,
    );
    let game_n = per_s(
        || {
            std::hint::black_box(native_game(&row, 7));
        },
        min,
    );
    for (label, w, n) in [
        ("start (instance + init + reset)", start_w, start_n),
        ("a game: start, 6 guesses, score", game_w, game_n),
    ] {
        println!(
            "{label:<44} {w:>12.0}/s {n:>12.0}/s {:>7.4}x   ({:.1} µs per wasm episode)",
            w / n,
            1e6 / w
        );
        rows.push(serde_json::json!({"case": label, "wasm_per_s": w, "native_per_s": n, "ratio": w / n, "wasm_us": 1e6 / w}));
    }
    // Python: the component (CPython inside, one instance per episode) against CPython.
    let py = runtime.load(&plugin_dir.join("env-py.wasm")).unwrap();
    let py_env = py
        .environment(
            &serde_json::json!({"target": 9}),
            InstanceOptions::default(),
        )
        .unwrap();
    let py_row = serde_json::json!({"start": 7});
    let start_py = per_s(
        || {
            std::hint::black_box(py_env.episode(&py_row, 3).unwrap());
        },
        min,
    );
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let cpython = std::process::Command::new("python3")
        .current_dir(root.join("plugins/testing/env-py"))
        .env("PYTHONPATH", root.join("sdk/python"))
        .args([
            "-c",
            "import time, plugin\nn, t = 0, time.perf_counter()\nwhile time.perf_counter() - t < 1:\n    c = plugin.Counter({'target': 9}); c.reset(seed=3, start=7); n += 1\nprint(n / (time.perf_counter() - t))",
        ])
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok()?.trim().parse::<f64>().ok());
    match cpython {
        Some(c) => {
            let label = "python class: start (wasm vs CPython)";
            println!(
                "{label:<44} {start_py:>12.0}/s {c:>12.0}/s {:>7.4}x   ({:.1} µs per wasm episode)",
                start_py / c,
                1e6 / start_py
            );
            rows.push(serde_json::json!({"case": label, "wasm_per_s": start_py, "cpython_per_s": c, "ratio": start_py / c, "wasm_us": 1e6 / start_py}));
        }
        None => println!("python class: start {start_py:.0}/s (no python3 for the CPython peer)"),
    }
    serde_json::Value::Array(rows)
}
