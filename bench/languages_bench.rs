//! The same reward (`math-answer`) written in Rust, C, Python and JavaScript, each built into a
//! component by `galley plugin build`, measured in one run: completions scored per second,
//! instantiation, and the first (compiling) load against the cached one.
//!
//! Run: `scripts/bench.sh` (or `cargo run --release -p galley-bench --bin languages-bench`
//! after `scripts/build-plugins.sh`).

mod workload;

use galley_runtime::{CacheOutcome, InstanceOptions, Runtime, RuntimeConfig};
use std::path::PathBuf;
use std::time::{Duration, Instant};
use workload::{throughput, workload};

fn main() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let dir = std::env::var_os("GALLEY_PLUGIN_DIR")
        .map(PathBuf::from)
        .unwrap_or(root.join("target/plugins"));
    let min = Duration::from_millis(
        std::env::var("BENCH_MS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(2000),
    );
    let grpo = workload(8, 8);
    let distinct = workload(64, 1);
    let cache = std::env::temp_dir().join(format!("galley-lang-bench-{}", std::process::id()));

    println!("math-answer in four languages, one thread, {min:?} per throughput figure");
    println!(
        "{:<8} {:>10} {:>16} {:>16} {:>14} {:>14} {:>14}",
        "lang",
        "size",
        "GRPO 8x8 /s",
        "distinct x64 /s",
        "instantiate",
        "first load",
        "cached load"
    );
    let mut rows = Vec::new();
    let mut reference = None;
    for (lang, name) in [
        ("rust", "math-answer"),
        ("c", "math-answer-c"),
        ("python", "math-answer-py"),
        ("js", "math-answer-js"),
    ] {
        let path = dir.join(format!("{name}.wasm"));
        assert!(
            path.exists(),
            "{} missing: run scripts/build-plugins.sh",
            path.display()
        );
        let size = std::fs::metadata(&path).unwrap().len();
        let _ = std::fs::remove_dir_all(&cache);

        // First load: Cranelift compiles the component and writes the cache.
        let rt = Runtime::new(RuntimeConfig {
            cache_dir: Some(cache.clone()),
            ..RuntimeConfig::default()
        })
        .unwrap();
        let t = Instant::now();
        let plugin = rt.load(&path).unwrap();
        let first = t.elapsed();
        assert_eq!(plugin.cache_outcome(), CacheOutcome::Miss);

        // Cached load, in a fresh runtime, as the next run of galley would.
        let rt2 = Runtime::new(RuntimeConfig {
            cache_dir: Some(cache.clone()),
            ..RuntimeConfig::default()
        })
        .unwrap();
        let reps = 10;
        let t = Instant::now();
        for _ in 0..reps {
            assert_eq!(rt2.load(&path).unwrap().cache_outcome(), CacheOutcome::Hit);
        }
        let cached = t.elapsed() / reps;

        let reps = 50;
        let t = Instant::now();
        for _ in 0..reps {
            std::hint::black_box(
                plugin
                    .reward(&serde_json::json!({}), InstanceOptions::default())
                    .unwrap(),
            );
        }
        let inst = t.elapsed() / reps;

        let mut r = plugin
            .reward(&serde_json::json!({}), InstanceOptions::default())
            .unwrap();
        use galley_core::RewardFnExt;
        let scores = r.score_inputs(&grpo).unwrap();
        match &reference {
            None => reference = Some(scores),
            Some(want) => assert_eq!(&scores, want, "{lang} disagrees with Rust"),
        }
        let g = throughput(&mut r, &grpo, 8, min);
        let d = throughput(&mut r, &distinct, 64, min);
        println!(
            "{lang:<8} {:>8} KB {g:>16.0} {d:>16.0} {:>11.1} µs {:>11.1} ms {:>11.2} ms",
            size / 1024,
            inst.as_secs_f64() * 1e6,
            first.as_secs_f64() * 1e3,
            cached.as_secs_f64() * 1e3
        );
        rows.push(serde_json::json!({
            "lang": lang, "size": size, "grpo_per_s": g, "distinct_per_s": d,
            "instantiate_us": inst.as_secs_f64() * 1e6, "first_load_ms": first.as_secs_f64() * 1e3,
            "cached_load_ms": cached.as_secs_f64() * 1e3,
        }));
    }
    let _ = std::fs::remove_dir_all(&cache);
    println!(
        "{}",
        serde_json::json!({"bench": "languages", "rows": rows})
    );
}
