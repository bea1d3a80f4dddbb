//! Diagnostic: what a pass of w tokens costs after a cached context, against a pass of one
//! (a decode step), on a real GGUF: the passes prompt-lookup decoding checks its drafts
//! with, and the last chunks of a chunked prefill. Each pass is forgotten again
//! (`Cache::forget`), so every one starts from the same cache. For `perf record`, a single
//! width with many repeats.
//!
//!     cargo run --release -p galley-model --example pass_widths [GGUF] [CONTEXT] [W,...] [REPS]
//!
//! (defaults: .cache/models/SmolLM2-135M-Instruct.Q4_1.gguf, 100, 1,2,3,5,9, 20).
//! `PASS_ROWS=B` runs B sequences at once (a batched decode step at w=1, as `galley serve`'s).

use std::time::Instant;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let gguf = args
        .first()
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| root.join(".cache/models/SmolLM2-135M-Instruct.Q4_1.gguf"));
    let context: usize = args.get(1).map_or(100, |a| a.parse().expect("CONTEXT"));
    let widths: Vec<usize> = args.get(2).map_or(vec![1, 2, 3, 5, 9], |a| {
        a.split(',').map(|w| w.parse().expect("W,...")).collect()
    });
    let reps: usize = args.get(3).map_or(20, |a| a.parse().expect("REPS"));
    let m = galley_model::load(&gguf, &candle_core::Device::Cpu).expect("model loads");
    let vocab = m.model.config.vocab_size as u32;
    let ctx: Vec<u32> = (0..context as u32)
        .map(|i| (i * 7919 + 13) % vocab)
        .collect();
    let rows: usize = std::env::var("PASS_ROWS").map_or(1, |r| r.parse().expect("PASS_ROWS"));
    let mut cache = m.model.new_cache(rows);
    m.model
        .forward(&vec![ctx.clone(); rows], None, &mut cache, true)
        .expect("prefill");
    let mut one = None;
    for w in widths {
        let ids = vec![ctx[..w.min(context)].to_vec(); rows];
        let mut best = f64::INFINITY;
        for _ in 0..reps {
            let t = Instant::now();
            m.model
                .forward(&ids, None, &mut cache, false)
                .expect("pass");
            best = best.min(t.elapsed().as_secs_f64());
            cache.forget(w).expect("forget");
        }
        let base = *one.get_or_insert(best);
        println!(
            "w={w}: {:.2} ms ({:.2}x one token), {rows} row(s) after {context} cached",
            best * 1e3,
            best / base
        );
    }
}
