//! Tool calls (`galley:plugin@0.3`'s tool world): the `calculator` tool as a sandboxed
//! component against the same arithmetic compiled natively into the host
//! (`plugins/calculator/src/expr.rs`), arguments parsed from the model's JSON either way —
//! what a trainer that ran its tools in-process (TRL's) would pay. Batches as GRPO sends
//! them: one round's calls of every completion, and a call alone.

#[path = "../plugins/calculator/src/expr.rs"]
#[allow(dead_code)]
mod expr;

use galley_core::{FunctionCall, Tool};
use galley_runtime::{InstanceOptions, Runtime};
use std::path::Path;
use std::time::{Duration, Instant};

/// The native peer: what `calculate` does, without the sandbox.
fn native(arguments: &str) -> Result<String, String> {
    let v: serde_json::Value = serde_json::from_str(arguments).map_err(|e| e.to_string())?;
    let e = v["expression"]
        .as_str()
        .ok_or("`expression` must be a string")?;
    expr::evaluate(e).map(expr::format_number)
}

fn calls_per_s(
    mut f: impl FnMut(&[FunctionCall<'_>]) -> usize,
    calls: &[FunctionCall<'_>],
    batch: usize,
    min: Duration,
) -> f64 {
    let mut done = 0usize;
    let start = Instant::now();
    while start.elapsed() < min {
        for chunk in calls.chunks(batch) {
            done += f(chunk);
        }
    }
    done as f64 / start.elapsed().as_secs_f64()
}

/// Prints the table and returns its rows as JSON.
pub fn bench(runtime: &Runtime, plugin_dir: &Path, min: Duration) -> serde_json::Value {
    let plugin = runtime.load(&plugin_dir.join("calculator.wasm")).unwrap();
    let mut tool = plugin
        .tool(&serde_json::json!({}), InstanceOptions::default())
        .unwrap();
    let args: Vec<String> = (0..64)
        .map(|i| {
            serde_json::json!({"expression": format!("({i} + {}) * {} / 4 - {i} ^ 2", i * 7 % 13, i % 5 + 1)})
                .to_string()
        })
        .collect();
    let calls: Vec<FunctionCall> = args
        .iter()
        .map(|a| FunctionCall {
            name: "calculate",
            arguments: a,
        })
        .collect();
    // Correctness first: the sandboxed and the native calculator agree on every call.
    let got = tool.call(&calls).unwrap();
    for (g, c) in got.iter().zip(&calls) {
        assert_eq!(
            g.as_ref().ok().cloned(),
            native(c.arguments).ok(),
            "{}",
            c.arguments
        );
    }
    println!(
        "{:<44} {:>14} {:>14} {:>8}",
        "calculator tool calls per second", "wasm plugin", "native Rust", "ratio"
    );
    let mut rows = Vec::new();
    for (label, batch) in [
        ("a round of 64 calls per crossing", 64usize),
        ("one call per crossing", 1),
    ] {
        let w = calls_per_s(|b| tool.call(b).unwrap().len(), &calls, batch, min);
        let n = calls_per_s(
            |b| b.iter().map(|c| native(c.arguments).is_ok() as usize).sum(),
            &calls,
            batch,
            min,
        );
        println!("{label:<44} {w:>12.0}/s {n:>12.0}/s {:>7.2}x", w / n);
        rows.push(serde_json::json!({"case": label, "batch": batch, "wasm_per_s": w, "native_per_s": n, "ratio": w / n}));
    }
    serde_json::Value::Array(rows)
}
