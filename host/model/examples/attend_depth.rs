//! A decode step's attention at depth, f16 against f32 KV caches: SmolLM2-135M's shapes (30
//! layers, 9 query heads over 3 KV heads of 64), one sequence, every layer its own cache (so
//! keys and values stream from memory as in a real step), the fastest of ten rounds. A
//! diagnostic for the cache type and the kernel (ATTEND_LAYERS=1: one layer, its cache warm;
//! ATTEND_ONLY=f16|f32: one of the two; ATTEND_REPS: steps timed).
//!
//!     cargo run --release -p galley-model --example attend_depth [DEPTH ...]

use candle_core::{DType, Device, Tensor};
use galley_model::cpu::{Visible, attend};
use std::sync::Arc;
use std::time::Instant;

fn main() {
    let dev = Device::Cpu;
    let depths: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("depths"))
        .collect();
    let depths = if depths.is_empty() {
        vec![512, 1024, 4096, 16384]
    } else {
        depths
    };
    let (heads, kvh, d) = (9, 3, 64);
    let layers: usize = std::env::var("ATTEND_LAYERS").map_or(30, |l| l.parse().expect("layers"));
    println!(
        "{:>8} {:>12} {:>12} {:>8}",
        "depth", "f32 ms", "f16 ms", "ratio"
    );
    for n in depths {
        let q = Tensor::randn(0f32, 1.0, (1, heads, 1, d), &dev).unwrap();
        let caches: Vec<(Tensor, Tensor)> = (0..layers)
            .map(|_| {
                let k = Tensor::randn(0f32, 1.0, (1, kvh, n, d), &dev).unwrap();
                let v = Tensor::randn(0f32, 1.0, (1, kvh, n, d), &dev).unwrap();
                (k, v)
            })
            .collect();
        let half: Vec<(Tensor, Tensor)> = caches
            .iter()
            .map(|(k, v)| {
                (
                    k.to_dtype(DType::F16).unwrap(),
                    v.to_dtype(DType::F16).unwrap(),
                )
            })
            .collect();
        let vis = Visible {
            past: n - 1,
            valid: Arc::new(vec![vec![true; n]]),
            window: None,
            both_ways: false,
        };
        let time = |c: &[(Tensor, Tensor)]| {
            let step = || {
                for (k, v) in c {
                    attend(&q, k, v, (0.125, None), vis.clone()).unwrap();
                }
            };
            (0..3).for_each(|_| step());
            let reps: usize = std::env::var("ATTEND_REPS").map_or(20, |r| r.parse().expect("reps"));
            // The fastest of ten rounds: this VM's neighbours come and go.
            (0..10)
                .map(|_| {
                    let t = Instant::now();
                    (0..reps.div_ceil(10)).for_each(|_| step());
                    t.elapsed().as_secs_f64() * 1e3 / reps.div_ceil(10) as f64
                })
                .fold(f64::INFINITY, f64::min)
        };
        // ATTEND_ONLY=f16 or f32 times one (for a profile of one kernel).
        let only = std::env::var("ATTEND_ONLY").unwrap_or_default();
        let f = if only == "f16" {
            f64::NAN
        } else {
            time(&caches)
        };
        let h = if only == "f32" { f64::NAN } else { time(&half) };
        println!("{n:>8} {f:>12.2} {h:>12.2} {:>7.2}x", f / h);
    }
}
