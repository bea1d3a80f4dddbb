//! Episodes (`galley:plugin@0.4`'s environment world): `galley/wordle` as a sandboxed
//! component — a fresh instance per episode, as GRPO makes one per rollout — against the
//! same game compiled natively into the host (`plugins/wordle/src/game.rs`), what a trainer
//! that ran its environments in-process (TRL's `environment_factory`) would pay. Two cases:
//! starting an episode (instance, `init`, `reset`), and a whole game (start, six guesses
//! one turn each, the score).

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
    serde_json::Value::Array(rows)
}
