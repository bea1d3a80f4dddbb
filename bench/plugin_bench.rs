//! Plugin-call benchmark: the `math-answer` reward as a sandboxed WASM component against the
//! very same source compiled natively into the host (`plugins/math-answer/src/answer.rs`),
//! measured in the same run, plus instantiation, cached load and cold compile times, and what
//! `galley:plugin@0.2`'s richer completions cost against 0.1: the same plugin's 0.1 release
//! (the embedded registry's blob) against today's 0.2 build, alternated in one run; and
//! tool calls (`tool_calls`: the calculator against its native self); and environment
//! episodes (`episodes`: Wordle against its native self).
//!
//! Run: `scripts/bench.sh` (builds the plugins, then `cargo run --release -p galley-bench`).

mod episodes;
mod native_math;
mod tool_calls;
mod workload;

use native_math::NativeMathAnswer;
use workload::{throughput, workload};

use galley_core::RewardFnExt;
use galley_runtime::{InstanceOptions, Runtime, RuntimeConfig};
use std::path::PathBuf;
use std::time::{Duration, Instant};

fn main() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let path = std::env::var_os("GALLEY_PLUGIN_DIR")
        .map(PathBuf::from)
        .unwrap_or(root.join("target/plugins"))
        .join("math-answer.wasm");
    assert!(
        path.exists(),
        "{} missing: run scripts/build-plugins.sh",
        path.display()
    );
    let min = Duration::from_millis(
        std::env::var("BENCH_MS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(2000),
    );
    let grpo = workload(8, 8);
    let distinct = workload(64, 1);

    // Correctness first: both must agree on every item.
    let mut native = NativeMathAnswer;
    let cache = tempfile_dir();
    let runtime = Runtime::new(RuntimeConfig {
        cache_dir: Some(cache.clone()),
        ..RuntimeConfig::default()
    })
    .unwrap();
    let plugin = runtime.load(&path).unwrap();
    let mut wasm = plugin
        .reward(&serde_json::json!({}), InstanceOptions::default())
        .unwrap();
    for items in [&grpo, &distinct] {
        let want = native.score_inputs(items).unwrap();
        assert_eq!(
            wasm.score_inputs(items).unwrap(),
            want,
            "plugin and native disagree"
        );
        assert!(want.contains(&Some(1.0)) && want.contains(&Some(0.0)));
    }

    let chars = grpo.iter().map(|i| i.completion.len()).sum::<usize>() / grpo.len();
    println!("math-answer reward, completions of ~{chars} chars, one thread, {min:?} per figure");
    println!(
        "{:<44} {:>14} {:>14} {:>8}",
        "completions scored per second", "wasm plugin", "native Rust", "ratio"
    );
    let mut rows = Vec::new();
    for (label, items, batch) in [
        ("GRPO: one call per group of 8", &grpo, 8usize),
        ("GRPO: 8 groups of 8 per call", &grpo, 64),
        ("64 different prompts per call", &distinct, 64),
        ("one completion per call", &distinct, 1),
    ] {
        let n = throughput(&mut native, items, batch, min);
        let w = throughput(&mut wasm, items, batch, min);
        println!("{label:<44} {w:>12.0}/s {n:>12.0}/s {:>7.2}x", w / n);
        rows.push(serde_json::json!({"case": label, "batch": batch, "wasm_per_s": w, "native_per_s": n, "ratio": w / n}));
    }
    if std::env::var_os("BENCH_PROBE").is_some() {
        // The boundary alone: a plugin that only measures each completion's length.
        let hp = runtime
            .load(&path.with_file_name("hostile-reward.wasm"))
            .unwrap();
        let mut ok = hp
            .reward(
                &serde_json::json!({"mode": "ok"}),
                InstanceOptions::default(),
            )
            .unwrap();
        for (label, items, batch) in [
            ("transfer only, GRPO groups", &grpo, 64usize),
            ("transfer only, distinct", &distinct, 64),
        ] {
            println!(
                "{label:<44} {:>12.0}/s",
                throughput(&mut ok, items, batch, min)
            );
        }
    }

    // The contract's cost: math-answer@0.1.0 (built against 0.1, from the registry) against
    // today's build (0.2: each completion also crosses as an assistant message), on the same
    // groups; then with readings (a reasoning block apart, as GRPO hands a thinking model's).
    let old = runtime
        .load(&released(&root, "math-answer", "0.1.0"))
        .unwrap();
    assert_eq!(old.wit_version().to_string(), "0.1.0");
    assert_eq!(plugin.wit_version().to_string(), "0.2.0");
    let mut old = old
        .reward(&serde_json::json!({}), InstanceOptions::default())
        .unwrap();
    let read: Vec<galley_core::RewardInput> = grpo
        .iter()
        .map(|i| {
            let mut r = i.clone();
            let mut m = galley_core::Message::new("assistant", i.completion.clone());
            m.reasoning_content = Some("Let me work it out step by step first.".into());
            r.message = Some(m);
            r
        })
        .collect();
    assert_eq!(
        old.score_inputs(&grpo).unwrap(),
        wasm.score_inputs(&grpo).unwrap()
    );
    println!(
        "{:<44} {:>14} {:>14} {:>8}",
        "the same plugin, per contract version", "0.2 (today)", "0.1 (release)", "ratio"
    );
    let mut contract = Vec::new();
    for (label, items) in [
        ("GRPO groups of 8, text only", &grpo),
        ("GRPO groups of 8, with readings", &read),
    ] {
        // Alternated, best of three each: the two share the machine's drift.
        let (mut w2, mut w1) = (0f64, 0f64);
        for _ in 0..3 {
            w1 = w1.max(throughput(&mut old, items, 64, min / 3));
            w2 = w2.max(throughput(&mut wasm, items, 64, min / 3));
        }
        println!("{label:<44} {w2:>12.0}/s {w1:>12.0}/s {:>7.2}x", w2 / w1);
        contract.push(serde_json::json!({"case": label, "v0_2_per_s": w2, "v0_1_per_s": w1, "ratio": w2 / w1}));
    }

    let tools = tool_calls::bench(&runtime, path.parent().unwrap(), min);
    let episodes = episodes::bench(&runtime, path.parent().unwrap(), min);

    // Instantiate (store + instance from InstancePre + `init`), as a trainer does per worker.
    let reps = 300;
    let t = Instant::now();
    for _ in 0..reps {
        std::hint::black_box(
            plugin
                .reward(&serde_json::json!({}), InstanceOptions::default())
                .unwrap(),
        );
    }
    let inst_us = t.elapsed().as_secs_f64() * 1e6 / reps as f64;

    // Load from the compiled-component cache (read, check, deserialize, pre-instantiate).
    let reps = 30;
    let t = Instant::now();
    for _ in 0..reps {
        let p = runtime.load(&path).unwrap();
        assert_eq!(p.cache_outcome(), galley_runtime::CacheOutcome::Hit);
    }
    let cached_ms = t.elapsed().as_secs_f64() * 1e3 / reps as f64;

    // Cold: compile with Cranelift every time.
    let cold_rt = Runtime::new(RuntimeConfig {
        cache_dir: None,
        ..RuntimeConfig::default()
    })
    .unwrap();
    let reps = 5;
    let t = Instant::now();
    for _ in 0..reps {
        cold_rt.load(&path).unwrap();
    }
    let cold_ms = t.elapsed().as_secs_f64() * 1e3 / reps as f64;

    println!(
        "{:<34} {:>10.1} µs",
        "instantiate + init (pooling)", inst_us
    );
    println!("{:<34} {:>10.2} ms", "load from compiled cache", cached_ms);
    println!(
        "{:<34} {:>10.1} ms   ({:.0}x the cached load)",
        "cold compile (no cache)",
        cold_ms,
        cold_ms / cached_ms
    );
    println!(
        "{}",
        serde_json::json!({"bench": "plugin", "throughput": rows, "contract": contract, "tools": tools, "episodes": episodes, "instantiate_us": inst_us, "cached_load_ms": cached_ms, "cold_compile_ms": cold_ms})
    );
    let _ = std::fs::remove_dir_all(&cache);
}

/// The embedded registry's blob of `galley/name@version`.
fn released(root: &std::path::Path, name: &str, version: &str) -> PathBuf {
    let index = root.join(format!("registry/default/index/galley/{name}.jsonl"));
    let text = std::fs::read_to_string(&index).unwrap();
    let line: serde_json::Value = text
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|v| v["version"] == version)
        .unwrap_or_else(|| panic!("galley/{name}@{version} is not in {}", index.display()));
    let hex = line["digest"]
        .as_str()
        .unwrap()
        .trim_start_matches("sha256:");
    root.join(format!("registry/default/blobs/sha256/{hex}.wasm"))
}

fn tempfile_dir() -> PathBuf {
    let d = std::env::temp_dir().join(format!("galley-bench-cache-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}
