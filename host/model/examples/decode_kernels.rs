//! Where a decode step's products stand, kernel by kernel: SmolLM2-135M's shapes (30 layers of
//! fused QKV, output, fused gate/up and down projections, and the 49k-row LM head), random
//! weights, every layer a different matrix (so the weights stream from memory as in a real
//! step, not from a warm cache), for `n` activation rows at once. Per kernel: galley's Q4_1
//! layers with the Q8_0 head (what a Q4_1 GGUF runs), its f32 kernel, candle's f32 GEMM, and
//! the gemm path `layers::linear` takes past `SKINNY_ROWS` (by blocks of output columns, the
//! head through a transposed copy): the figures that set `DENSE_CACHED_FROM_ROWS` and
//! `SKINNY_ROWS`. A
//! diagnostic, not a peer comparison (model-bench and serve_bench.py compare with llama.cpp).
//!
//!     RAYON_NUM_THREADS=2 cargo run --release -p galley-model --example decode_kernels [N ...]

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use galley_model::cpu;
use galley_model::kernels::{f32_matmul, q4_1_matmul, q8_0_matmul_f32};
use std::time::Instant;

const SHAPES: [(usize, usize); 4] = [(960, 576), (576, 576), (3072, 576), (576, 1536)];
const LAYERS: usize = 30;
const HEAD: (usize, usize) = (49152, 576);

fn values(len: usize, seed: usize) -> Vec<f32> {
    (0..len)
        .map(|i| ((i * 7919 + seed * 104_729) % 1013) as f32 / 506.0 - 1.0)
        .collect()
}

/// Mean milliseconds of `step` over 5 runs after 2 warm-ups.
fn time(mut step: impl FnMut()) -> f64 {
    (0..2).for_each(|_| step());
    let t = Instant::now();
    (0..5).for_each(|_| step());
    t.elapsed().as_secs_f64() * 1e3 / 5.0
}

fn main() {
    let dev = Device::Cpu;
    let ns: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("row counts"))
        .collect();
    let ns = if ns.is_empty() {
        vec![1, 8, 16, 32, 64]
    } else {
        ns
    };
    let f32w: Vec<Vec<f32>> = (0..LAYERS * SHAPES.len())
        .map(|i| values(SHAPES[i % 4].0 * SHAPES[i % 4].1, i))
        .collect();
    let quant = |w: &[f32], rows, k, t| {
        let w = Tensor::from_slice(w, (rows, k), &dev).unwrap();
        QTensor::quantize(&w, t).unwrap().data().unwrap().to_vec()
    };
    let q41: Vec<Vec<u8>> = f32w
        .iter()
        .enumerate()
        .map(|(i, w)| quant(w, SHAPES[i % 4].0, SHAPES[i % 4].1, GgmlDType::Q4_1))
        .collect();
    let headf = values(HEAD.0 * HEAD.1, 7);
    let head8 = quant(&headf, HEAD.0, HEAD.1, GgmlDType::Q8_0);
    let tens: Vec<Tensor> = f32w
        .iter()
        .enumerate()
        .map(|(i, w)| Tensor::from_slice(w, SHAPES[i % 4], &dev).unwrap())
        .collect();
    let headt = Tensor::from_slice(&headf, HEAD, &dev).unwrap();
    println!(
        "rows   q4_1 + q8_0 head   f32 kernel   candle f32 GEMM   galley f32 GEMM   (ms per step)"
    );
    for n in ns {
        let x: [Vec<f32>; 2] = [values(n * 576, 1), values(n * 1536, 2)];
        let xin = |k: usize| if k == 576 { &x[0] } else { &x[1] };
        let q = time(|| {
            for (i, w) in q41.iter().enumerate() {
                let (rows, k) = SHAPES[i % 4];
                std::hint::black_box(q4_1_matmul(xin(k), n, k, w, rows));
            }
            std::hint::black_box(q8_0_matmul_f32(&x[0], n, HEAD.1, &head8, HEAD.0));
        });
        let f = time(|| {
            for (i, w) in f32w.iter().enumerate() {
                let (rows, k) = SHAPES[i % 4];
                std::hint::black_box(f32_matmul(xin(k), n, k, w, rows));
            }
            std::hint::black_box(f32_matmul(&x[0], n, HEAD.1, &headf, HEAD.0));
        });
        let xt = [
            Tensor::from_slice(&x[0], (n, 576), &dev).unwrap(),
            Tensor::from_slice(&x[1], (n, 1536), &dev).unwrap(),
        ];
        let g = time(|| {
            for (i, w) in tens.iter().enumerate() {
                let xi = if SHAPES[i % 4].1 == 576 {
                    &xt[0]
                } else {
                    &xt[1]
                };
                std::hint::black_box(xi.matmul(&w.t().unwrap()).unwrap());
            }
            std::hint::black_box(xt[0].matmul(&headt.t().unwrap()).unwrap());
        });
        // What `layers::linear` runs past SKINNY_ROWS: gemm by blocks of output columns over
        // the untransposed weight (the head through its transposed copy).
        let headtr: Vec<f32> = (0..HEAD.1)
            .flat_map(|c| (0..HEAD.0).map(move |r| (r, c)))
            .map(|(r, c)| headf[r * HEAD.1 + c])
            .collect();
        let b = time(|| {
            for (i, w) in f32w.iter().enumerate() {
                let (rows, k) = SHAPES[i % 4];
                let a = cpu::rm(xin(k), k);
                std::hint::black_box(cpu::product_by_columns(n, rows, k, a, cpu::tr(w, k), 1.0));
            }
            let (a, h) = (cpu::rm(&x[0], HEAD.1), cpu::rm(&headtr, HEAD.0));
            std::hint::black_box(cpu::product_by_columns(n, HEAD.0, HEAD.1, a, h, 1.0));
        });
        println!("{n:>4} {q:>18.2} {f:>12.2} {g:>17.2} {b:>16.2}");
    }
}
