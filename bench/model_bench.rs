//! Prompt processing (pp) and decode (tg) speed of galley's native engine against llama.cpp
//! on the same GGUF, the same thread count, in the same run: pp256 is one forward pass over
//! 256 prompt tokens, tg128 is 128 single-token passes with the KV cache (as llama-bench
//! measures them; no sampling), best of 3 after a warm-up. Two peers on the same ggml build:
//! llama-cpp-python (`bench/llama_cpp_peer.py`, in the venv scripts/bench-model.sh builds) and
//! llama.cpp's own `llama-bench` (C++, no Python between the steps; scripts/llama-cpp.sh builds
//! it into bench/.llama-cpp/bin; its mean of 3 runs), the figure llama.cpp users quote.
//!
//! With `--depth N,M,...`, decode at depth instead (llama-bench's `-d`): tg128 after N tokens
//! already in the cache (their prefill untimed), galley against llama-bench only, each depth
//! one row: where attention over a long cache, not the weights, sets a step's time. galley
//! runs twice a depth: with its default f16 KV cache (llama.cpp's default `-ctk f16 -ctv
//! f16`, the column compared) and with an f32 one; the last column is the f16 cache's
//! buffers after the last step, room to grow included (a Gemma model's sliding layers keep
//! only what their window still needs).
//!
//! Usage: model-bench [GGUF] [--depth N,...] (default .cache/models/SmolLM2-135M-Instruct.Q4_1.gguf);
//! GALLEY_BENCH_PYTHON names the peer's Python (default bench/.venv-llama/bin/python),
//! GALLEY_LLAMA_BENCH the llama-bench binary (default bench/.llama-cpp/bin/llama-bench; the
//! column is left out when it is missing).

use std::path::PathBuf;
use std::time::Instant;

const PP: usize = 256;
const TG: usize = 128;
const REPS: usize = 3;

fn best(reps: usize, mut f: impl FnMut()) -> f64 {
    f();
    (0..reps)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min)
}

fn main() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let args: Vec<String> = std::env::args().skip(1).collect();
    let depths: Option<Vec<usize>> = args.iter().position(|a| a == "--depth").map(|i| {
        let list = args.get(i + 1).expect("--depth N,M,...");
        list.split(',')
            .map(|d| d.parse().expect("--depth: token counts"))
            .collect()
    });
    let gguf = args
        .iter()
        .take_while(|a| *a != "--depth")
        .next()
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join(".cache/models/SmolLM2-135M-Instruct.Q4_1.gguf"));
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let dev = candle_core::Device::Cpu;
    let mut m = galley_model::load(&gguf, &dev).expect("model loads");
    let vocab = m.model.config.vocab_size as u32;
    let prompt: Vec<u32> = (0..PP as u32).map(|i| (i * 7919 + 13) % vocab).collect();

    if let Some(depths) = depths {
        return at_depths(&root, &gguf, &mut m.model, threads, &depths);
    }

    let pp_s = best(REPS, || {
        let mut cache = m.model.new_cache(1);
        m.model
            .forward(std::slice::from_ref(&prompt), None, &mut cache, true)
            .unwrap();
    });
    let tg_s = best(REPS, || {
        let mut cache = m.model.new_cache(1);
        for i in 0..TG {
            m.model
                .forward(&[vec![prompt[i % PP]]], None, &mut cache, true)
                .unwrap();
        }
    });
    let galley = (PP as f64 / pp_s, TG as f64 / tg_s);

    let python = std::env::var("GALLEY_BENCH_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|_| root.join("bench/.venv-llama/bin/python"));
    let out = std::process::Command::new(&python)
        .arg(root.join("bench/llama_cpp_peer.py"))
        .args([
            gguf.to_str().unwrap(),
            &threads.to_string(),
            &PP.to_string(),
            &TG.to_string(),
            &REPS.to_string(),
        ])
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "{}: {e} (run scripts/bench-model.sh, which builds the llama.cpp venv)",
                python.display()
            )
        });
    assert!(
        out.status.success(),
        "llama.cpp peer failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let peer: serde_json::Value =
        serde_json::from_slice(out.stdout.trim_ascii()).expect("peer prints JSON");
    let (lpp, ltg) = (
        peer["pp_tok_s"].as_f64().unwrap(),
        peer["tg_tok_s"].as_f64().unwrap(),
    );

    let cpp = llama_bench(&root, &gguf, threads);

    println!("model: {} ({} threads)", gguf.display(), threads);
    println!(
        "{:<8} {:>14} {:>14} {:>8} {:>13} {:>8}",
        "", "galley tok/s", "llama.cpp-py", "ratio", "llama-bench", "ratio"
    );
    for (name, ours, py, cpp) in [
        (format!("pp{PP}"), galley.0, lpp, cpp.map(|c| c.0)),
        (format!("tg{TG}"), galley.1, ltg, cpp.map(|c| c.1)),
    ] {
        let cpp = cpp.map_or("-".to_string(), |c| format!("{c:13.1} {:>7.2}x", ours / c));
        println!(
            "{name:<8} {ours:>14.1} {py:>14.1} {:>7.2}x {cpp}",
            ours / py
        );
    }
}

/// tg128 at each depth: galley's best of 3 after a warm-up (each after prefilling the depth's
/// tokens again, untimed), with an f16 and an f32 KV cache, against llama-bench's mean of 3
/// with `-d` (its default f16 cache).
fn at_depths(
    root: &std::path::Path,
    gguf: &std::path::Path,
    model: &mut galley_model::Llama,
    threads: usize,
    depths: &[usize],
) {
    println!("model: {} ({} threads)", gguf.display(), threads);
    println!(
        "{:<14} {:>14} {:>14} {:>13} {:>8} {:>12}",
        "", "galley f16 KV", "galley f32 KV", "llama-bench", "ratio", "f16 KV MiB"
    );
    for &depth in depths {
        let [(half, bytes), (full, _)] =
            [candle_core::DType::F16, candle_core::DType::F32].map(|dt| {
                model
                    .set_kv_dtype(dt)
                    .expect("a CPU model keeps f16 or f32");
                decode_at(model, depth)
            });
        model.set_kv_dtype(candle_core::DType::F16).unwrap();
        let cpp = llama_bench_at(root, gguf, threads, depth)
            .map_or(format!("{:>13} {:>8}", "-", "-"), |c| {
                format!("{c:13.1} {:>7.2}x", half / c)
            });
        println!(
            "{:<14} {half:>14.1} {full:>14.1} {cpp} {:>12.1}",
            format!("tg{TG} @ d{depth}"),
            bytes as f64 / (1 << 20) as f64
        );
    }
}

/// galley's tg128 tokens/s after `depth` tokens of context, and the bytes its cache holds at
/// the end.
fn decode_at(model: &galley_model::Llama, depth: usize) -> (f64, usize) {
    let vocab = model.config.vocab_size as u32;
    {
        let context: Vec<u32> = (0..depth as u32).map(|i| (i * 7919 + 13) % vocab).collect();
        let mut best_s = f64::INFINITY;
        let mut bytes = 0;
        // A warm-up, then REPS timed runs.
        for rep in 0..=REPS {
            let mut cache = model.new_cache(1);
            // Prefilled in pieces of 512, as llama.cpp's default batch does.
            for piece in context.chunks(512) {
                model
                    .forward(&[piece.to_vec()], None, &mut cache, true)
                    .unwrap();
            }
            let t = Instant::now();
            for i in 0..TG {
                model
                    .forward(&[vec![(i as u32 * 31 + 7) % vocab]], None, &mut cache, true)
                    .unwrap();
            }
            if rep > 0 {
                best_s = best_s.min(t.elapsed().as_secs_f64());
            }
            bytes = cache.allocated_bytes();
        }
        (TG as f64 / best_s, bytes)
    }
}

/// llama-bench's mean tg tokens/s (3 runs) after `depth` tokens of context, when built.
fn llama_bench_at(
    root: &std::path::Path,
    gguf: &std::path::Path,
    threads: usize,
    depth: usize,
) -> Option<f64> {
    let tests = ["-p", "0", "-n", &TG.to_string(), "-d", &depth.to_string()];
    let runs = run_llama_bench(root, gguf, threads, &tests)?;
    runs.iter()
        .find(|r| r["n_gen"].as_u64() == Some(TG as u64))
        .and_then(|r| r["avg_ts"].as_f64())
}

/// llama-bench's JSON records for `tests` (its -p/-n/-d flags) on the same GGUF and threads,
/// 3 runs each, when built.
fn run_llama_bench(
    root: &std::path::Path,
    gguf: &std::path::Path,
    threads: usize,
    tests: &[&str],
) -> Option<Vec<serde_json::Value>> {
    let bin = llama_bench_bin(root)?;
    let out = std::process::Command::new(&bin)
        .arg("-m")
        .arg(gguf)
        .args(["-t", &threads.to_string()])
        .args(tests)
        .args(["-r", &REPS.to_string(), "-o", "json"])
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}", bin.display()));
    assert!(
        out.status.success(),
        "llama-bench failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(serde_json::from_slice(&out.stdout).expect("llama-bench prints JSON"))
}

/// The llama-bench binary, or None (with a word why) when it is not built.
fn llama_bench_bin(root: &std::path::Path) -> Option<PathBuf> {
    let bin = std::env::var("GALLEY_LLAMA_BENCH")
        .map(PathBuf::from)
        .unwrap_or_else(|_| root.join("bench/.llama-cpp/bin/llama-bench"));
    if !bin.exists() {
        eprintln!(
            "{}: not built (scripts/llama-cpp.sh); its column is left out",
            bin.display()
        );
        return None;
    }
    Some(bin)
}

/// llama-bench's mean pp and tg tokens/s (3 runs) on the same GGUF and threads, when built.
fn llama_bench(
    root: &std::path::Path,
    gguf: &std::path::Path,
    threads: usize,
) -> Option<(f64, f64)> {
    let tests = ["-p", &PP.to_string(), "-n", &TG.to_string()];
    let runs = run_llama_bench(root, gguf, threads, &tests)?;
    let rate = |prompt: u64, generated: u64| {
        runs.iter()
            .find(|r| {
                r["n_prompt"].as_u64() == Some(prompt) && r["n_gen"].as_u64() == Some(generated)
            })
            .and_then(|r| r["avg_ts"].as_f64())
            .expect("llama-bench reports the test")
    };
    Some((rate(PP as u64, 0), rate(0, TG as u64)))
}
