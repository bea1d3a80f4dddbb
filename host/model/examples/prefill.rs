//! A batched prefill on the CPU, as the log-likelihood engine runs one: the real model's whole
//! `forward` over a left-padded batch (one row a quarter padding), only the last position's
//! logits, best of 3 — against PyTorch's transformers on the same weights and shapes in the
//! same run (`bench/prefill_peer.py`, through the Python in `GALLEY_BENCH_PYTHON`, default
//! bench/.venv-eval/bin/python, which scripts/bench-eval.sh builds; skipped when absent). Then
//! one decoder layer's ops replayed one by one on tensors of the same shapes, each timed
//! alone, so a slow op shows against the projections' GEMMs (`PREFILL_NO_SPLIT=1` skips it).
//!
//!     RAYON_NUM_THREADS=2 cargo run --release -p galley-model --example prefill [GGUF] [BxT ...]
//!
//! The `galley` binary keeps freed memory in the process (`mallopt`, see its `main`); an
//! example does not, so each large buffer is fresh pages the kernel zero-fills (7-10% of a
//! 4 x 512 pass). `MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=1073741824` in the
//! environment gives the binary's setting.

use candle_core::{D, DType, Device, Tensor};
use galley_model::load::{LoadOptions, load_with};
use std::time::Instant;

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

fn main() -> candle_core::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let gguf = args
        .first()
        .cloned()
        .unwrap_or(".cache/models/SmolLM2-135M-Instruct.Q4_1.gguf".into());
    let shapes: Vec<(usize, usize)> = if args.len() > 1 {
        args[1..]
            .iter()
            .map(|s| {
                let (b, t) = s.split_once('x').expect("BxT");
                (b.parse().unwrap(), t.parse().unwrap())
            })
            .collect()
    } else {
        vec![(8, 64), (8, 128), (8, 256), (4, 512)]
    };
    let dev = Device::Cpu;
    let m = load_with(
        std::path::Path::new(&gguf),
        &dev,
        LoadOptions {
            dequantize: true,
            ..Default::default()
        },
    )
    .expect("model loads");
    let c = m.model.config.clone();
    let peer = torch(&gguf, &shapes);
    for &(b, t) in &shapes {
        let tokens: Vec<Vec<u32>> = (0..b)
            .map(|r| {
                (0..t as u32)
                    .map(|i| (i * 7919 + 13 * r as u32) % 49152)
                    .collect()
            })
            .collect();
        // One row a quarter padding, as a sorted batch has a little.
        let pad: Vec<Vec<bool>> = (0..b)
            .map(|r| (0..t).map(|i| r == 0 && i < t / 4).collect())
            .collect();
        let whole = best(2, || {
            let mut cache = m.model.new_cache(b);
            m.model
                .forward(&tokens, Some(&pad), &mut cache, true)
                .unwrap();
        });
        let flops = 2.0 * (b * t) as f64 * m.model.config.num_layers as f64 * {
            let (h, i, d) = (c.hidden_size, c.intermediate_size, c.head_dim);
            (h * (c.num_heads + 2 * c.num_kv_heads) * d + c.num_heads * d * h + 3 * h * i) as f64
        };
        println!(
            "b={b} t={t}: forward {:.1} ms, {:.0} tok/s, projections at {:.1} GFLOP/s if they were all of it",
            whole * 1e3,
            (b * t) as f64 / whole,
            flops / whole / 1e9
        );
        if let Some(s) = peer.as_ref().and_then(|p| p[format!("{b}x{t}")].as_f64()) {
            println!(
                "  PyTorch {:.1} ms, {:.0} tok/s: galley {:.2}x",
                s * 1e3,
                (b * t) as f64 / s,
                s / whole
            );
        }
        if std::env::var_os("PREFILL_NO_SPLIT").is_none() {
            split(&c, b, t, &dev)?;
        }
    }
    Ok(())
}

/// PyTorch's times for `shapes` (`bench/prefill_peer.py`), or None where its Python is absent.
fn torch(gguf: &str, shapes: &[(usize, usize)]) -> Option<serde_json::Value> {
    let python = std::env::var("GALLEY_BENCH_PYTHON")
        .unwrap_or_else(|_| "bench/.venv-eval/bin/python".into());
    if !std::path::Path::new(&python).exists() {
        eprintln!("no PyTorch peer: {python} is absent (scripts/bench-eval.sh builds it)");
        return None;
    }
    let threads = rayon::current_num_threads().to_string();
    let out = std::process::Command::new(&python)
        .arg("bench/prefill_peer.py")
        .args([gguf, ".cache/hf-f32", &threads])
        .args(shapes.iter().map(|(b, t)| format!("{b}x{t}")))
        .stderr(std::process::Stdio::inherit())
        .output()
        .expect("the peer starts");
    assert!(out.status.success(), "the PyTorch peer failed");
    Some(serde_json::from_slice(out.stdout.trim_ascii()).expect("the peer prints JSON"))
}

/// One layer's ops on random tensors of the prefill's shapes, each timed alone (ms, best of 3),
/// times the number of layers.
fn split(
    c: &galley_model::LlamaConfig,
    b: usize,
    t: usize,
    dev: &Device,
) -> candle_core::Result<()> {
    let (h, i, d) = (c.hidden_size, c.intermediate_size, c.head_dim);
    let (heads, kvh) = (c.num_heads, c.num_kv_heads);
    let rep = heads / kvh;
    let layers = c.num_layers as f64;
    let r = |shape: &[usize]| Tensor::randn(0f32, 0.1, shape, dev);
    let x = r(&[b, t, h])?;
    let wqkv = r(&[(heads + 2 * kvh) * d, h])?;
    let wo = r(&[h, heads * d])?;
    let wgu = r(&[2 * i, h])?;
    let wd = r(&[h, i])?;
    let norm_w = r(&[h])?;
    let q = r(&[b, heads, t, d])?;
    let k = r(&[b, kvh, t, d])?;
    let v = r(&[b, kvh, t, d])?;
    let mask = Tensor::zeros((b, 1, t, t), DType::F32, dev)?;
    let cos = r(&[b, t, d / 2])?;
    let sin = r(&[b, t, d / 2])?;
    let mut rows: Vec<(&str, f64)> = Vec::new();
    let mut time = |name: &'static str, f: &mut dyn FnMut() -> candle_core::Result<Tensor>| {
        let s = best(3, || {
            f().unwrap();
        });
        rows.push((name, s * layers));
    };
    let flat = x.reshape((b * t, h))?;
    time("qkv projection", &mut || flat.matmul(&wqkv.t()?));
    let qkv = flat
        .matmul(&wqkv.t()?)?
        .reshape((b, t, (heads + 2 * kvh) * d))?;
    time("q/k/v split+transpose", &mut || {
        qkv.narrow(2, 0, heads * d)?
            .reshape((b, t, heads, d))?
            .transpose(1, 2)?
            .contiguous()
    });
    time("rope (q)", &mut || {
        candle_nn::rotary_emb::rope(&q.contiguous()?, &cos, &sin)
    });
    let qg = q.reshape((b, kvh, rep * t, d))?;
    time("scores q k^T", &mut || qg.matmul(&k.t()?));
    let scores = qg.matmul(&k.t()?)?.reshape((b, heads, t, t))?;
    time("scale+mask add", &mut || {
        (&scores * 0.125)?.broadcast_add(&mask)
    });
    time("softmax", &mut || candle_nn::ops::softmax_last_dim(&scores));
    let probs = candle_nn::ops::softmax_last_dim(&scores)?.reshape((b, kvh, rep * t, t))?;
    time("probs v", &mut || probs.matmul(&v));
    let out = probs.matmul(&v)?;
    time("out transpose", &mut || {
        out.reshape((b, heads, t, d))?
            .transpose(1, 2)?
            .reshape((b, t, heads * d))
    });
    let o = r(&[b * t, heads * d])?;
    time("o projection", &mut || o.matmul(&wo.t()?));
    time("residual add", &mut || &x + &x);
    time("rms norm", &mut || {
        candle_nn::ops::rms_norm(&x, &norm_w, 1e-5)
    });
    time("gate/up projection", &mut || flat.matmul(&wgu.t()?));
    let gu = flat.matmul(&wgu.t()?)?;
    time("silu * up", &mut || {
        candle_nn::ops::silu(&gu.narrow(D::Minus1, 0, i)?)? * gu.narrow(D::Minus1, i, i)?
    });
    let a = r(&[b * t, i])?;
    time("down projection", &mut || a.matmul(&wd.t()?));
    let total: f64 = rows.iter().map(|r| r.1).sum();
    for (name, s) in &rows {
        println!(
            "  {name:<24} {:>8.1} ms  {:>5.1}%",
            s * 1e3,
            100.0 * s / total
        );
    }
    println!("  {:<24} {:>8.1} ms", "sum", total * 1e3);
    Ok(())
}
