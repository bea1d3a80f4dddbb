//! Training on a CUDA GPU (built with `--features cuda`; run where a GPU answers): the model
//! on the GPU against the CPU's fused kernels (losses and every gradient, full fine-tuning,
//! LoRA, QLoRA; f32 and bf16; Gemma 2 and 3 and SmolLM3 too), gradients against finite differences on the device, the fused
//! optimizer kernel against PyTorch's AdamW formula, and whole runs (SFT, DPO, GRPO) whose
//! checkpoints resume on the CPU. Without a GPU every test says so and passes: CI machines
//! have none, and the GPU machine runs this binary (`scripts/gpu-check.sh`).

#![cfg(feature = "cuda")]

mod common;

use candle_core::{DType, Device, Tensor, Var};
use common::{chat, tiny_chat_model, write_jsonl};
use galley_train::config::{PeftSection, Tuning};
use galley_train::model::{Build, Pass, TrainModel, init_weights};
use galley_train::ops::{IGNORE, Kernels};
use galley_train::{NoObserver, Sources, TrainConfig};
use std::path::Path;

fn gpu() -> Option<Device> {
    match Device::new_cuda(0) {
        Ok(d) => Some(d),
        Err(e) => {
            eprintln!("no CUDA device ({e}): GPU test skipped");
            None
        }
    }
}

/// One of galley-model's tiny transformers-made models: where this crate was built, or under
/// the working directory (the GPU machine runs the packed binary from a copy of the
/// repository, `scripts/gpu-check.sh`).
fn fixture(name: &str) -> std::path::PathBuf {
    let built = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../model/tests/fixtures/tiny")
        .join(name);
    match built.exists() {
        true => built,
        false => Path::new("host/model/tests/fixtures/tiny").join(name),
    }
}

fn tiny(dir: &Path, tied: bool) -> galley_model::LlamaConfig {
    let init = galley_train::config::InitSection {
        hidden_size: 64,
        intermediate_size: 128,
        num_layers: 2,
        num_heads: 4,
        num_kv_heads: 2,
        max_position_embeddings: 64,
        tie_word_embeddings: tied,
        ..Default::default()
    };
    let c = TrainModel::init_config(&init, 48, None, vec![0]);
    let w = init_weights(&c, 0.2, 7).unwrap();
    galley_train::export::save_checkpoint_dir(w, &c, dir).unwrap();
    c
}

fn load(dir: &Path, c: &galley_model::LlamaConfig, method: Tuning, dev: &Device) -> TrainModel {
    let w =
        galley_model::weights::Weights::safetensors(vec![dir.join("model.safetensors")]).unwrap();
    load_weights(&w, c, method, dev)
}

fn load_weights(
    w: &galley_model::weights::Weights,
    c: &galley_model::LlamaConfig,
    method: Tuning,
    dev: &Device,
) -> TrainModel {
    let peft = PeftSection {
        r: 4,
        lora_dropout: 0.0,
        target_modules: ["q_proj", "v_proj", "down_proj"].map(String::from).to_vec(),
        ..Default::default()
    };
    let build = Build {
        tuning: method,
        peft: &peft,
        seed: 1,
    };
    let m = TrainModel::load(w, c.clone(), &build, dev).unwrap();
    // LoRA B starts at zero; move it so gradient reaches A.
    for p in &m.trainable {
        if p.name.contains("lora_B") {
            let n = p.var.elem_count();
            let v: Vec<f32> = (0..n)
                .map(|i| ((i * 37 % 11) as f32 - 5.0) * 0.02)
                .collect();
            p.var
                .set(&Tensor::from_vec(v, p.var.dims(), dev).unwrap())
                .unwrap();
        }
    }
    m
}

fn batch() -> (Vec<u32>, Vec<u32>, usize, usize) {
    let (b, t) = (3, 17);
    let inputs: Vec<u32> = (0..b * t).map(|i| (i * 7 % 48) as u32).collect();
    let mut targets: Vec<u32> = (0..b * t).map(|i| (i * 5 % 48) as u32).collect();
    targets[3] = IGNORE;
    targets[20] = IGNORE;
    (inputs, targets, b, t)
}

fn pass(k: Kernels) -> Pass {
    Pass {
        kernels: k,
        train: true,
        adapters: true,
        seed: 0,
    }
}

/// Loss and per-parameter gradients (host vectors) of the model on `batch()`.
fn loss_and_grads(m: &TrainModel) -> (f32, Vec<Vec<f32>>) {
    let (inputs, targets, b, t) = batch();
    for p in &m.trainable {
        p.grad.lock().fill(0.0);
    }
    let loss = m
        .losses(&inputs, &targets, b, t, &pass(m.kernels))
        .unwrap()
        .sum_all()
        .unwrap();
    let gs = loss.backward().unwrap();
    let grads = m
        .trainable
        .iter()
        .map(|p| match gs.get(p.var.as_tensor()) {
            // Autograd's gradient (the GPU, and CPU parameters the fused ops do not own)...
            Some(g) if m.device.is_cuda() => g
                .to_dtype(DType::F32)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap(),
            // ...or the buffer the CPU's fused projections wrote (plus autograd's part).
            other => {
                let mut acc = p.grad.lock().clone();
                if let Some(g) = other {
                    let g = g.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                    acc.iter_mut().zip(g).for_each(|(a, g)| *a += g);
                }
                acc
            }
        })
        .collect();
    (
        loss.to_dtype(DType::F32).unwrap().to_scalar().unwrap(),
        grads,
    )
}

fn rel_err(a: &[f32], r: &[f32]) -> f32 {
    let scale = r.iter().fold(1e-6f32, |m, v| m.max(v.abs()));
    a.iter()
        .zip(r)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
        / scale
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb).max(1e-30)
}

fn gpu_matches_cpu(method: Tuning, tied: bool) {
    let Some(dev) = gpu() else { return };
    let dir = tempfile::tempdir().unwrap();
    let c = tiny(dir.path(), tied);
    let what = format!("{method:?} tied={tied}");
    compare(method, &dev, &what, |d| load(dir.path(), &c, method, d));
}

/// The model `load` builds, on the CPU's fused kernels and on the GPU in f32 and bf16: the
/// loss and every gradient.
fn compare(method: Tuning, dev: &Device, what: &str, load: impl Fn(&Device) -> TrainModel) {
    let cpu = load(&Device::Cpu);
    assert_eq!(cpu.kernels, Kernels::Fused);
    let (lc, gc) = loss_and_grads(&cpu);
    let mut g32 = load(dev);
    assert_eq!(g32.kernels, Kernels::Cuda);
    g32.compute = DType::F32;
    let (lg, gg) = loss_and_grads(&g32);
    assert!(
        (lg - lc).abs() / lc.abs() < 1e-4,
        "{method:?} f32: loss {lg} vs CPU {lc}"
    );
    for (p, (a, r)) in cpu.trainable.iter().zip(gg.iter().zip(&gc)) {
        assert!(
            r.iter().any(|&v| v != 0.0),
            "{method:?}: {} has no gradient",
            p.name
        );
        let e = rel_err(a, r);
        assert!(
            e < 1e-3,
            "{method:?} f32: gradient of {} differs by {e}",
            p.name
        );
    }
    let mut b16 = load(dev);
    b16.compute = DType::BF16;
    let (lb, gb) = loss_and_grads(&b16);
    assert!(
        (lb - lc).abs() / lc.abs() < 2e-2,
        "{method:?} bf16: loss {lb} vs CPU {lc}"
    );
    for (p, (a, r)) in cpu.trainable.iter().zip(gb.iter().zip(&gc)) {
        let cos = cosine(a, r);
        assert!(
            cos > 0.99,
            "{method:?} bf16: gradient of {} has cosine {cos}",
            p.name
        );
    }
    eprintln!("{what}: loss CPU {lc}, GPU f32 {lg}, GPU bf16 {lb}");
}

#[test]
fn gpu_full_fine_tuning_matches_the_cpu_kernels() {
    gpu_matches_cpu(Tuning::Full, false);
    gpu_matches_cpu(Tuning::Full, true);
}

#[test]
fn gpu_lora_matches_the_cpu_kernels() {
    gpu_matches_cpu(Tuning::Lora, true);
}

#[test]
fn gpu_qlora_matches_the_cpu_kernels() {
    gpu_matches_cpu(Tuning::Qlora, false);
}

/// Gemma 3 and Gemma 2 (sliding-window layers narrower than the batch's 17 tokens, q/k norms,
/// Gemma 2's soft caps on scores and logits, the GELU gate, scaled embeddings) and SmolLM3 (a
/// layer without RoPE) on the GPU against the CPU's fused kernels, on the tiny
/// transformers-made models galley-model's parity tests use.
#[test]
fn gpu_gemma_and_smollm3_match_the_cpu_kernels() {
    let Some(dev) = gpu() else { return };
    for name in ["gemma3", "gemma2", "smollm3"] {
        let dir = fixture(name);
        let ck = galley_model::open(&dir, galley_model::LoadOptions::default()).unwrap();
        for method in [Tuning::Full, Tuning::Lora] {
            let what = format!("{name} {method:?}");
            compare(method, &dev, &what, |d| {
                load_weights(&ck.weights, &ck.config, method, d)
            });
        }
    }
}

/// The CUDA causal softmax against candle's composite one on the GPU, forward and backward,
/// in f32 and bf16, for rows shorter and longer than a thread block (grouped query rows).
#[test]
fn gpu_causal_softmax_kernel_matches_the_reference() {
    let Some(dev) = gpu() else { return };
    // Plain, and Gemma's: a sliding window, a soft cap (scores of ±1.5 after the scale, so a
    // cap of 1 bends them), both.
    let cases = [
        (None, None),
        (Some(4usize), None),
        (None, Some(1.0f64)),
        (Some(100), Some(1.0)),
    ];
    for ((t, g), (window, cap)) in [(5usize, 2usize), (300, 1), (1030, 3)]
        .into_iter()
        .flat_map(|tg| cases.map(|c| (tg, c)))
    {
        for dt in [DType::F32, DType::BF16] {
            let n = 2 * g * t * t;
            let v: Vec<f32> = (0..n)
                .map(|i| ((i * 7919 % 1000) as f32 / 100.0) - 5.0)
                .collect();
            let s = Var::from_tensor(
                &Tensor::from_vec(v, (2, g * t, t), &dev)
                    .unwrap()
                    .to_dtype(dt)
                    .unwrap(),
            )
            .unwrap();
            let w = Tensor::from_vec(
                (0..n)
                    .map(|i| ((i * 31 % 17) as f32) - 8.0)
                    .collect::<Vec<_>>(),
                (2, g * t, t),
                &dev,
            )
            .unwrap()
            .to_dtype(dt)
            .unwrap();
            let run = |p: Tensor| {
                let l = (p.to_dtype(DType::F32).unwrap() * w.to_dtype(DType::F32).unwrap())
                    .unwrap()
                    .sum_all()
                    .unwrap();
                let gs = l.backward().unwrap();
                let grad = gs.get(s.as_tensor()).unwrap().to_dtype(DType::F32).unwrap();
                let f = |x: &Tensor| {
                    x.to_dtype(DType::F32)
                        .unwrap()
                        .flatten_all()
                        .unwrap()
                        .to_vec1::<f32>()
                        .unwrap()
                };
                (f(&p), f(&grad))
            };
            let (pk, gk) =
                run(
                    galley_train::ops_cuda::causal_softmax(s.as_tensor(), 0.3, window, cap)
                        .unwrap(),
                );
            let reference = match cap {
                Some(c) => {
                    let x = (s.as_tensor().to_dtype(DType::F32).unwrap() * 0.3).unwrap();
                    let x = ((x / c).unwrap().tanh().unwrap() * c).unwrap();
                    galley_train::ops::causal_softmax_windowed(&x, 1.0, window).unwrap()
                }
                None => {
                    galley_train::ops::causal_softmax_windowed(s.as_tensor(), 0.3, window).unwrap()
                }
            };
            let (pr, gr) = run(reference);
            let tol = if dt == DType::F32 { 1e-5 } else { 2e-2 };
            let (ep, eg) = (rel_err(&pk, &pr), rel_err(&gk, &gr));
            assert!(
                ep < tol && eg < tol,
                "t={t} g={g} window {window:?} cap {cap:?} {dt:?}: probabilities {ep}, gradients {eg}"
            );
            // Masked keys get exactly zero.
            assert_eq!(pk[1], 0.0, "t={t}: the first query sees only itself");
        }
    }
}

/// Each fused CUDA op (`fused_cuda`, `flash_cuda`) against candle's composite (the `Reference` kernels) on
/// the GPU: values and the gradients of a weighted sum, f32 and bf16.
#[test]
fn gpu_fused_ops_match_the_composites() {
    use galley_train::fused_cuda;
    use galley_train::ops::{self, RopeTables};
    let Some(dev) = gpu() else { return };
    let vals = |n: usize, k: usize| -> Vec<f32> {
        (0..n)
            .map(|i| (((i * 7919 + k * 104729) % 2000) as f32 / 1000.0) - 1.0)
            .collect()
    };
    let flat = |x: &Tensor| -> Vec<f32> {
        x.to_dtype(DType::F32)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
    };
    // Output and input gradients of sum(y * w) for a fixed weight w.
    let probe = |vars: &[&Var], y: Tensor| -> (Vec<f32>, Vec<Vec<f32>>) {
        let w = Tensor::from_vec(vals(y.elem_count(), 9), y.shape(), &dev).unwrap();
        let l = (y.to_dtype(DType::F32).unwrap() * w)
            .unwrap()
            .sum_all()
            .unwrap();
        let gs = l.backward().unwrap();
        let grads = vars
            .iter()
            .map(|v| flat(gs.get(v.as_tensor()).unwrap()))
            .collect();
        (flat(&y), grads)
    };
    let check =
        |what: &str, dt: DType, a: (Vec<f32>, Vec<Vec<f32>>), b: (Vec<f32>, Vec<Vec<f32>>)| {
            let tol = if dt == DType::F32 { 1e-5 } else { 2e-2 };
            let e = rel_err(&a.0, &b.0);
            assert!(e < tol, "{what} {dt:?}: values differ by {e}");
            for (i, (ga, gb)) in a.1.iter().zip(&b.1).enumerate() {
                let e = rel_err(ga, gb);
                assert!(e < tol * 10.0, "{what} {dt:?}: gradient {i} differs by {e}");
            }
        };
    let (rows, n) = (300usize, 576usize);
    for dt in [DType::F32, DType::BF16] {
        // RMS norm from f32 into dt (the pre-product norm) and within dt (q/k norms).
        for from in [DType::F32, dt] {
            let x = Var::from_tensor(
                &Tensor::from_vec(vals(rows * n, 1), (rows, n), &dev)
                    .unwrap()
                    .to_dtype(from)
                    .unwrap(),
            )
            .unwrap();
            let w = Var::from_tensor(&Tensor::from_vec(vals(n, 2), n, &dev).unwrap()).unwrap();
            let f = probe(
                &[&x, &w],
                fused_cuda::rms_norm(x.as_tensor(), w.as_tensor(), 1e-5, dt).unwrap(),
            );
            let r = probe(
                &[&x, &w],
                ops::rms_norm_to(x.as_tensor(), w.as_tensor(), 1e-5, Kernels::Reference, dt)
                    .unwrap(),
            );
            check(&format!("rms norm from {from:?}"), dt, f, r);
        }
        let g = Var::from_tensor(
            &Tensor::from_vec(vals(rows * n, 3), (rows, n), &dev)
                .unwrap()
                .to_dtype(dt)
                .unwrap(),
        )
        .unwrap();
        let u = Var::from_tensor(
            &Tensor::from_vec(vals(rows * n, 4), (rows, n), &dev)
                .unwrap()
                .to_dtype(dt)
                .unwrap(),
        )
        .unwrap();
        let f = probe(
            &[&g, &u],
            fused_cuda::gate(g.as_tensor(), u.as_tensor(), fused_cuda::Act::Silu).unwrap(),
        );
        let r = probe(
            &[&g, &u],
            ops::silu_mul(g.as_tensor(), u.as_tensor(), Kernels::Reference).unwrap(),
        );
        check("silu gate", dt, f, r);
        let f = probe(
            &[&g, &u],
            fused_cuda::gate(g.as_tensor(), u.as_tensor(), fused_cuda::Act::GeluTanh).unwrap(),
        );
        let r = probe(
            &[&g, &u],
            ops::gelu_mul(g.as_tensor(), u.as_tensor(), Kernels::Reference).unwrap(),
        );
        check("gelu gate", dt, f, r);

        let (b, t, h, d) = (2usize, 37usize, 3usize, 64usize);
        let inv: Vec<f32> = (0..d / 2)
            .map(|i| 10000f32.powf(-((2 * i) as f32) / d as f32))
            .collect();
        let tables = RopeTables::new(&inv, 64, &dev).unwrap();
        let x = Var::from_tensor(
            &Tensor::from_vec(vals(b * t * h * d, 5), (b, t, h, d), &dev)
                .unwrap()
                .to_dtype(dt)
                .unwrap(),
        )
        .unwrap();
        let f = probe(
            &[&x],
            fused_cuda::rope_heads(x.as_tensor(), &tables).unwrap(),
        );
        let r = probe(
            &[&x],
            ops::rope_heads(x.as_tensor(), &tables, Kernels::Reference).unwrap(),
        );
        check("rotary heads", dt, f, r);

        // The loss at temperature 0.7 with an ignored row, against the f32 reference.
        let (rows, v) = (6usize, 3000usize);
        let z = Var::from_tensor(
            &(Tensor::from_vec(vals(rows * v, 6), (rows, v), &dev).unwrap() * 6.0)
                .unwrap()
                .to_dtype(dt)
                .unwrap(),
        )
        .unwrap();
        let targets = [5u32, ops::IGNORE, 2999, 0, 1234, 77];
        let f = probe(
            &[&z],
            fused_cuda::cross_entropy(z.as_tensor(), &targets, 0.7, None).unwrap(),
        );
        let z32 = (z.as_tensor().to_dtype(DType::F32).unwrap() / 0.7).unwrap();
        let r = probe(&[&z], ops::cross_entropy_reference(&z32, &targets).unwrap());
        check("cross-entropy", dt, f, r);
        // Under Gemma 2's final cap (5 bends these ±6 logits), before the temperature.
        let f = probe(
            &[&z],
            fused_cuda::cross_entropy(z.as_tensor(), &targets, 0.7, Some(5.0)).unwrap(),
        );
        let z32 = z.as_tensor().to_dtype(DType::F32).unwrap();
        let z32 = (((z32 / 5.0).unwrap().tanh().unwrap() * 5.0).unwrap() / 0.7).unwrap();
        let r = probe(&[&z], ops::cross_entropy_reference(&z32, &targets).unwrap());
        check("cross-entropy under a soft cap", dt, f, r);

        // The fused attention against scores, causal softmax and product, grouped query heads
        // (3 per KV head), a length that ends inside a key chunk.
        let (g, t, d) = (3usize, 150usize, 64usize);
        let var = |shape: (usize, usize, usize, usize), k: usize| {
            let n = shape.0 * shape.1 * shape.2 * shape.3;
            Var::from_tensor(
                &Tensor::from_vec(vals(n, k), shape, &dev)
                    .unwrap()
                    .to_dtype(dt)
                    .unwrap(),
            )
            .unwrap()
        };
        let (qv, kv, vv) = (
            var((2, 1, g * t, d), 7),
            var((2, 1, t, d), 8),
            var((2, 1, t, d), 10),
        );
        let scale = 1.0 / (d as f64).sqrt();
        let (q, k, v) = (qv.as_tensor(), kv.as_tensor(), vv.as_tensor());
        // Plain, and Gemma's sliding window (skipping key chunks) and soft cap.
        for (window, cap) in [(None, None), (Some(40usize), None), (Some(7), Some(0.2f64))] {
            let how = galley_train::cuda_src::Scores::new(scale, window, cap).unwrap();
            let f = probe(
                &[&qv, &kv, &vv],
                galley_train::flash_cuda::attention(q, k, v, how).unwrap(),
            );
            let x = (q
                .matmul(&k.t().unwrap())
                .unwrap()
                .to_dtype(DType::F32)
                .unwrap()
                * scale)
                .unwrap();
            let x = match cap {
                Some(c) => ((x / c).unwrap().tanh().unwrap() * c).unwrap(),
                None => x,
            };
            let p = ops::causal_softmax_windowed(&x, 1.0, window)
                .unwrap()
                .to_dtype(dt)
                .unwrap();
            let r = probe(&[&qv, &kv, &vv], p.matmul(v).unwrap());
            check(
                &format!("flash attention, window {window:?} cap {cap:?}"),
                dt,
                f,
                r,
            );
        }
    }
}

/// Central differences of the GPU loss (f32) at each parameter's largest-gradient coordinate.
#[test]
fn gpu_gradients_match_finite_differences() {
    let Some(dev) = gpu() else { return };
    let dir = tempfile::tempdir().unwrap();
    let c = tiny(dir.path(), false);
    let mut m = load(dir.path(), &c, Tuning::Full, &dev);
    m.compute = DType::F32;
    let (_, grads) = loss_and_grads(&m);
    let (inputs, targets, b, t) = batch();
    let loss = |m: &TrainModel| -> f64 {
        m.losses(&inputs, &targets, b, t, &pass(m.kernels))
            .unwrap()
            .to_dtype(DType::F64)
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f64>()
            .unwrap()
    };
    let mut checked = 0;
    for (p, g) in m.trainable.iter().zip(&grads) {
        let (i, gi) = g
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.abs().total_cmp(&b.1.abs()))
            .unwrap();
        if gi.abs() < 1e-2 {
            continue;
        }
        let orig = p.var.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let at = |delta: f32| {
            let mut w = orig.clone();
            w[i] += delta;
            p.var
                .set(&Tensor::from_vec(w, p.var.dims(), &dev).unwrap())
                .unwrap();
            loss(&m)
        };
        let h = 1e-2f32;
        let fd = (at(h) - at(-h)) / (2.0 * h as f64);
        at(0.0);
        let e = (fd - *gi as f64).abs() / gi.abs().max(1e-3) as f64;
        assert!(
            e < 2e-2,
            "{}[{i}]: autograd {gi}, finite differences {fd}",
            p.name
        );
        checked += 1;
    }
    assert!(checked >= 10, "only {checked} parameters checked");
}

/// The fused AdamW kernel (with clipping folded in) and SGD with momentum against the
/// formulas written out in f64, on the GPU.
#[test]
fn gpu_optimizer_kernel_matches_the_formulas() {
    use galley_train::config::{OptimizerKind, TrainingSection};
    use galley_train::model::Trainable;
    let Some(dev) = gpu() else { return };
    let w0 = [1.0f32, -2.0, 0.5, 3.0];
    let param = || Trainable {
        name: "w".into(),
        var: Var::from_tensor(&Tensor::new(&w0, &dev).unwrap()).unwrap(),
        grad: galley_train::grad::Grad::zeros(0),
    };
    // A gradient store holding g for the parameter: d(sum(w*g))/dw = g.
    let grads_of = |p: &Trainable, g: &[f32]| {
        let gt = Tensor::new(g, &dev).unwrap();
        (p.var.as_tensor() * gt)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap()
    };
    let steps = [[0.1f32, -0.3, 2.0, 4.0], [0.2, 0.1, -1.0, 0.5]];
    // AdamW, weight decay 0.1, max norm 1 (the first step's norm ~4.5 is clipped).
    let params = vec![param()];
    let cfg = TrainingSection {
        weight_decay: 0.1,
        ..Default::default()
    };
    let mut opt = galley_train::optim::Optimizer::new(&cfg, &params).unwrap();
    let (mut w, mut m, mut v) = (w0.map(|x| x as f64), [0f64; 4], [0f64; 4]);
    let (lr, b1, b2, eps, wd) = (0.01, 0.9, 0.999, 1e-8, 0.1);
    for (t, g) in steps.iter().enumerate() {
        opt.accumulate(&params, &grads_of(&params[0], g)).unwrap();
        let norm = opt.clip(&params, 1.0).unwrap();
        let n64 = g.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
        assert!((norm - n64).abs() < 1e-5 * n64, "norm {norm} vs {n64}");
        let s = if n64 > 1.0 { 1.0 / (n64 + 1e-6) } else { 1.0 };
        opt.step(&params, lr).unwrap();
        for i in 0..4 {
            let gi = g[i] as f64 * s;
            w[i] *= 1.0 - lr * wd;
            m[i] = b1 * m[i] + (1.0 - b1) * gi;
            v[i] = b2 * v[i] + (1.0 - b2) * gi * gi;
            let mh = m[i] / (1.0 - b1.powi(t as i32 + 1));
            let vh = v[i] / (1.0 - b2.powi(t as i32 + 1));
            w[i] -= lr * mh / (vh.sqrt() + eps);
        }
    }
    let got = params[0].var.as_tensor().to_vec1::<f32>().unwrap();
    for i in 0..4 {
        assert!(
            (got[i] as f64 - w[i]).abs() < 1e-6,
            "AdamW: {got:?} vs {w:?}"
        );
    }
    // The moments, relative to their size (v is ~1e-4 here; f32 carries ~7 digits).
    let [mm, vv] = opt.moments(0).unwrap();
    let (mm, vv) = (mm.unwrap(), vv.unwrap());
    for i in 0..4 {
        assert!(
            (mm[i] as f64 - m[i]).abs() <= 1e-5 * m[i].abs(),
            "m: {mm:?} vs {m:?}"
        );
        assert!(
            (vv[i] as f64 - v[i]).abs() <= 1e-5 * v[i].abs(),
            "v: {vv:?} vs {v:?}"
        );
    }
    // SGD with momentum; two micro-batches accumulate.
    let params = vec![param()];
    let cfg = TrainingSection {
        optimizer: OptimizerKind::Sgd,
        momentum: 0.9,
        ..Default::default()
    };
    let mut opt = galley_train::optim::Optimizer::new(&cfg, &params).unwrap();
    let (mut w, mut buf) = (w0.map(|x| x as f64), [0f64; 4]);
    for g in steps {
        let half: Vec<f32> = g.iter().map(|x| x / 2.0).collect();
        opt.accumulate(&params, &grads_of(&params[0], &half))
            .unwrap();
        opt.accumulate(&params, &grads_of(&params[0], &half))
            .unwrap();
        opt.clip(&params, 0.0).unwrap();
        opt.step(&params, 0.1).unwrap();
        for i in 0..4 {
            buf[i] = 0.9 * buf[i] + g[i] as f64;
            w[i] -= 0.1 * buf[i];
        }
    }
    let got = params[0].var.as_tensor().to_vec1::<f32>().unwrap();
    for i in 0..4 {
        assert!((got[i] as f64 - w[i]).abs() < 1e-5, "SGD: {got:?} vs {w:?}");
    }
}

fn metric(dir: &Path, key: &str) -> Vec<f64> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .filter_map(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .ok()?
                .get(key)?
                .as_f64()
        })
        .collect()
}

fn sft_setup(dir: &Path) -> std::path::PathBuf {
    tiny_chat_model(&dir.join("model"));
    let data = dir.join("d.jsonl");
    let rows: Vec<_> = (0..16)
        .map(|i| {
            chat(
                &format!("the number {i}"),
                &format!("is {} and the answer is yes", i * 3 % 17),
            )
        })
        .collect();
    write_jsonl(&data, &rows);
    data
}

fn cfg(dir: &Path, data: &Path, out: &str, extra: &[&str]) -> TrainConfig {
    let mut sets = vec![
        format!("model.path={}", dir.join("model").display()),
        format!("data.train.path={}", data.display()),
        format!("training.output_dir={}", dir.join(out).display()),
        "training.batch_size=4".into(),
        "training.learning_rate=1e-2".into(),
        "training.lr_scheduler=constant".into(),
        "training.eval_on_start=false".into(),
        "peft.lora_dropout=0".into(),
    ];
    sets.extend(extra.iter().map(|s| s.to_string()));
    TrainConfig::load(None, &sets).unwrap()
}

/// SFT (full, LoRA, QLoRA) on the GPU in f32 follows the CPU run step by step; a GPU
/// checkpoint resumes on the CPU and the run ends as the uninterrupted GPU run does; bf16
/// trains (the loss falls).
#[test]
fn gpu_sft_runs_match_the_cpu_and_resume_on_the_cpu() {
    if gpu().is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data = sft_setup(dir.path());
    for method in ["full", "lora", "qlora"] {
        let m = format!("training.method={method}");
        let run = |out: &str, extra: &[&str], resume: bool| {
            let mut e = vec![m.as_str(), "training.epochs=2"];
            e.extend(extra);
            let c = cfg(dir.path(), &data, out, &e);
            galley_train::run(&c, Sources::default(), resume, &mut NoObserver).unwrap();
            metric(&dir.path().join(out), "loss")
        };
        let cpu = run(&format!("{method}-cpu"), &[], false);
        let gpu = run(
            &format!("{method}-gpu"),
            &["training.device=cuda", "training.precision=f32"],
            false,
        );
        assert_eq!(cpu.len(), 8);
        for (a, b) in cpu.iter().zip(&gpu) {
            assert!(
                (a - b).abs() < 2e-3 * a.abs(),
                "{method}: CPU {cpu:?} vs GPU {gpu:?}"
            );
        }
        // Stop on the GPU after 4 steps (checkpoint), go on on the CPU.
        let half = format!("{method}-half");
        run(
            &half,
            &[
                "training.device=cuda",
                "training.precision=f32",
                "training.max_steps=4",
            ],
            false,
        );
        let resumed = run(&half, &["training.device=cpu"], true);
        assert_eq!(resumed.len(), 8, "{method}: {resumed:?}");
        for (a, b) in gpu.iter().zip(&resumed) {
            assert!(
                (a - b).abs() < 2e-3 * a.abs(),
                "{method}: GPU {gpu:?} vs resumed on CPU {resumed:?}"
            );
        }
        let bf = run(
            &format!("{method}-bf16"),
            &["training.device=cuda", "training.precision=bf16"],
            false,
        );
        assert!(bf.iter().all(|l| l.is_finite()), "{method} bf16: {bf:?}");
        assert!(
            bf[bf.len() - 1] < bf[0],
            "{method} bf16: loss did not fall: {bf:?}"
        );
        eprintln!("{method}: CPU {cpu:?}\n  GPU f32 {gpu:?}\n  resumed {resumed:?}\n  bf16 {bf:?}");
    }
}

/// DPO and GRPO (rollouts generated by the engine on the GPU) run with `training.device: cuda`.
#[test]
fn gpu_dpo_and_grpo_train() {
    if gpu().is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    tiny_chat_model(&dir.path().join("model"));
    let prefs: Vec<_> = (0..16)
        .map(|i| {
            serde_json::json!({"prompt": format!("the number {i}"),
            "chosen": format!("is {} and the answer is yes", i % 17),
            "rejected": format!("is {} and the answer is no", i % 17)})
        })
        .collect();
    let p = dir.path().join("prefs.jsonl");
    write_jsonl(&p, &prefs);
    let c = cfg(
        dir.path(),
        &p,
        "dpo",
        &[
            "training.method=dpo",
            "training.epochs=4",
            "training.device=cuda",
        ],
    );
    galley_train::run(&c, Sources::default(), false, &mut NoObserver).unwrap();
    let l = metric(&dir.path().join("dpo"), "loss");
    let mean = |s: &[f64]| s.iter().sum::<f64>() / s.len() as f64;
    assert!(
        l.len() >= 8 && l.iter().all(|x| x.is_finite()),
        "DPO on the GPU: {l:?}"
    );
    assert!(
        mean(&l[l.len() - 3..]) < mean(&l[..3]),
        "DPO on the GPU: loss did not fall: {l:?}"
    );
    eprintln!("DPO on the GPU: {l:?}");
    let prompts: Vec<_> = (0..8)
        .map(|i| serde_json::json!({"prompt": format!("the number {i} is"), "answer": (i * 3 % 17).to_string()}))
        .collect();
    let p = dir.path().join("prompts.jsonl");
    write_jsonl(&p, &prompts);
    let c = cfg(
        dir.path(),
        &p,
        "grpo",
        &[
            "training.method=grpo",
            "training.tuning=full",
            "training.max_steps=3",
            "training.device=cuda",
            "grpo.num_generations=4",
            "grpo.max_completion_length=6",
            "grpo.rewards=[{builtin: exact_match}]",
            "data.max_length=64",
        ],
    );
    let sources = Sources {
        rewards: vec![galley_train::rewards::builtin("exact_match").unwrap()],
        ..Default::default()
    };
    galley_train::run(&c, sources, false, &mut NoObserver).unwrap();
    let l = metric(&dir.path().join("grpo"), "loss");
    assert_eq!(l.len(), 3, "GRPO on the GPU: {l:?}");
    assert!(l.iter().all(|x| x.is_finite()));
}

/// Data-parallel on one GPU: two ranks (threads, each its own CUDA context) in a TCP group,
/// batch 2 each, take the steps of one GPU process with batch 4. (NCCL refuses two ranks on
/// one device; the TCP group carries GPU gradients through host copies.)
/// The NCCL path of a GPU group (one rank: NCCL needs a GPU per rank, and the machine has
/// one): the ranks' choice, the communicator, and bucketed sums that give back every
/// gradient unchanged, small ones sharing a bucket and a large one alone. The two-rank test
/// below shares one GPU, so there the ranks agree on TCP.
#[cfg(feature = "cuda")]
#[test]
fn gpu_nccl_sums_gradients_on_the_device() {
    use galley_train::dist::{Collective, Placement, TcpGroup};
    let Some(dev) = gpu() else { return };
    let p = Placement {
        rank: 0,
        world_size: 1,
        local_rank: 0,
        master: Some("127.0.0.1:0".into()),
    };
    let mut g = TcpGroup::connect(&p, "nccl-test", std::time::Duration::from_secs(30)).unwrap();
    let grads: Vec<Tensor> = [vec![3usize, 4], vec![1000], vec![3000, 3000]]
        .iter()
        .enumerate()
        .map(|(i, dims)| {
            let n: usize = dims.iter().product();
            let v: Vec<f32> = (0..n).map(|k| ((k * 31 + i) % 97) as f32 - 48.0).collect();
            Tensor::from_vec(v, dims.as_slice(), &dev).unwrap()
        })
        .collect();
    let mut got = grads.clone();
    // Buckets of 4 MB: the two small tensors share one, the 9M-value one goes alone.
    match g.all_reduce_device(&mut got, 1 << 20) {
        None => println!("NCCL: no libnccl in this process, so the group sums on the host"),
        Some(r) => {
            r.unwrap();
            for (a, b) in got.iter().zip(&grads) {
                assert_eq!(a.dims(), b.dims());
                let (a, b) = (
                    a.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                    b.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                );
                assert_eq!(a, b, "a one-rank sum is the gradient itself");
            }
            println!("NCCL: one-rank sums on the device match");
        }
    }
}

#[test]
fn gpu_two_ranks_on_one_gpu_take_the_steps_of_one_process() {
    use galley_train::dist::{Collective, Placement, TcpGroup};
    if gpu().is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data = sft_setup(dir.path());
    let base = [
        "training.method=full",
        "training.device=cuda",
        "training.precision=f32",
    ];
    let one = cfg(
        dir.path(),
        &data,
        "one",
        &[&base[..], &["training.batch_size=4"]].concat(),
    );
    galley_train::run(&one, Sources::default(), false, &mut NoObserver).unwrap();
    let dp = cfg(
        dir.path(),
        &data,
        "dp",
        &[&base[..], &["training.batch_size=2"]].concat(),
    );
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let job = galley_train::digest(&dp);
    std::thread::scope(|s| {
        let hs: Vec<_> = (0..2)
            .map(|rank| {
                let (dp, job) = (&dp, job.clone());
                s.spawn(move || {
                    let p = Placement {
                        rank,
                        world_size: 2,
                        local_rank: rank,
                        master: Some(format!("127.0.0.1:{port}")),
                    };
                    let g =
                        TcpGroup::connect(&p, &job, std::time::Duration::from_secs(60)).unwrap();
                    let sources = Sources {
                        group: Some(Box::new(g) as Box<dyn Collective>),
                        ..Default::default()
                    };
                    galley_train::run(dp, sources, false, &mut NoObserver).unwrap();
                })
            })
            .collect();
        for h in hs {
            h.join().unwrap();
        }
    });
    let (a, b) = (
        metric(&dir.path().join("one"), "loss"),
        metric(&dir.path().join("dp"), "loss"),
    );
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(&b) {
        assert!(
            (x - y).abs() < 1e-4 * x.abs(),
            "one process {a:?}, two ranks {b:?}"
        );
    }
    eprintln!("data-parallel on one GPU: {b:?}");
}

/// LoRA dropout on the GPU draws its masks there, seeded per step and site: two runs give the
/// same losses, and they differ from a run without dropout.
#[test]
fn gpu_lora_dropout_is_drawn_on_the_device_and_repeats() {
    if gpu().is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data = sft_setup(dir.path());
    let run = |out: &str, p: &str| {
        let c = cfg(
            dir.path(),
            &data,
            out,
            &[
                "training.method=lora",
                "training.device=cuda",
                &format!("peft.lora_dropout={p}"),
            ],
        );
        galley_train::run(&c, Sources::default(), false, &mut NoObserver).unwrap();
        metric(&dir.path().join(out), "loss")
    };
    let (a, b, none) = (run("a", "0.2"), run("b", "0.2"), run("none", "0"));
    assert_eq!(a, b, "dropout masks repeat");
    assert!(a.iter().all(|l| l.is_finite()));
    assert_ne!(a[1..], none[1..], "dropout changed nothing");
}

/// Decode steps replayed from one CUDA graph give the eager growing cache's logits, step
/// after step (the graph is recorded at the first step and launched for the rest), for a
/// left-padded batch and for one sequence; and generation's greedy tokens are the same with
/// graphs on and off.
#[test]
fn gpu_decode_replayed_as_a_cuda_graph_matches_eager_steps() {
    let Some(dev) = gpu() else { return };
    let dir = tempfile::tempdir().unwrap();
    let c = tiny(dir.path(), true);
    let w = galley_model::weights::Weights::safetensors(vec![dir.path().join("model.safetensors")])
        .unwrap();
    let m = galley_model::Llama::load(&w, c, &dev).unwrap();
    galley_model::cuda::single_stream(&dev);
    graph_matches_eager(&m, "tiny Llama");
}

/// The same for Gemma 3 and Gemma 2 (the sliding layers' ring of 4 slots wrapping every
/// fourth step, their local RoPE, q/k norms, output norms, soft caps, the GELU MLP, in the fused step and out of
/// it), SmolLM3 and Qwen3 (q/k norms through `rope_kv` in the fused step), on the
/// transformers-made fixtures: 35 positions against Gemma's window of 4.
#[test]
fn gpu_gemma_and_smollm3_decode_replayed_as_a_cuda_graph_matches_eager_steps() {
    let Some(dev) = gpu() else { return };
    galley_model::cuda::single_stream(&dev);
    for name in ["gemma3", "gemma2", "smollm3", "qwen3-qk-norm"] {
        let dir = fixture(name);
        let m = galley_model::load(&dir, &dev).unwrap();
        graph_matches_eager(&m.model, name);
    }
}

/// 30 steps of a left-padded batch of two through a recorded graph against the growing
/// cache's eager forward passes, with the fused step off and on; then the same prefill
/// resumed by a part whose second row is left-padded (padding between that row's tokens,
/// within Gemma's window of 4 of the next: each row's ring counts its own tokens).
fn graph_matches_eager(m: &galley_model::Llama, what: &str) {
    let step = |c: &mut galley_model::Cache, ids: &[u32]| {
        let rows: Vec<Vec<u32>> = ids.iter().map(|&t| vec![t]).collect();
        let out = m.forward(&rows, None, c, true).unwrap();
        out.squeeze(1).unwrap().to_vec2::<f32>().unwrap()
    };
    let prompts = [vec![3u32, 9, 4, 17, 5], vec![0, 0, 0, 21, 8]];
    let pad = vec![vec![false; 5], vec![true, true, true, false, false]];
    // The step in candle's products with the four decode kernels, then in the fused kernels
    // (`cuda_step`: norms inside the products, RoPE and SiLU in their epilogues).
    let more = [vec![6u32, 11, 2], vec![0, 0, 13]];
    let more_pad = vec![vec![false; 3], vec![true, true, false]];
    for (fused, resumed) in [(false, false), (true, false), (true, true)] {
        galley_model::decode::set_fused_step(fused);
        let mut cache = m.new_cache(2);
        m.forward(&prompts, Some(&pad), &mut cache, true).unwrap();
        if resumed {
            m.forward(&more, Some(&more_pad), &mut cache, true).unwrap();
        }
        let mut dec = galley_model::decode::Decoder::from_cache(m, &cache, 40).unwrap();
        let mut worst = 0f32;
        for i in 0..30u32 {
            let next = [(i * 7 + 1) % 48, (i * 5 + 2) % 48];
            let want = step(&mut cache, &next);
            let got = dec.step(&next).unwrap().to_vec2::<f32>().unwrap();
            for r in 0..2 {
                worst = worst.max(rel_err(&got[r], &want[r]));
            }
        }
        println!(
            "{what}: graph replay (fused step {fused}, resumed {resumed}) vs eager: worst relative logit error {worst:.2e} over 30 steps"
        );
        assert!(
            worst < 1e-5,
            "{what}: graph replay (fused step {fused}, resumed {resumed}) differs: {worst}"
        );
    }
    galley_model::decode::set_fused_step(true);
}

/// Generation on the GPU gives the same greedy tokens, and log-probabilities within 1e-5,
/// whether its decode steps replay a CUDA graph (the default) or run eagerly.
#[test]
fn gpu_generation_is_the_same_with_and_without_graphs() {
    let Some(dev) = gpu() else { return };
    let dir = tempfile::tempdir().unwrap();
    tiny_chat_model(dir.path());
    let m = galley_model::load(dir.path(), &dev).unwrap();
    let prompts: Vec<Vec<u32>> = [
        "the number 4 is",
        "the answer is yes or no and the number 12",
    ]
    .iter()
    .map(|p| m.tokenizer.encode(p, false).unwrap())
    .collect();
    let params = galley_model::SamplingParams {
        temperature: 0.0,
        max_tokens: 40,
        ..Default::default()
    };
    let run = |graphs: bool| {
        galley_model::decode::set_graphs(graphs);
        galley_model::generate(&m.model, &m.tokenizer, &prompts, &params, &mut |_, _| {}).unwrap()
    };
    let (eager, graph) = (run(false), run(true));
    for (e, g) in eager.iter().zip(&graph) {
        assert_eq!(e.tokens, g.tokens, "greedy tokens differ");
        let worst = e
            .logprobs
            .iter()
            .zip(&g.logprobs)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        println!(
            "{} tokens, worst log-probability difference {worst:.2e}",
            e.tokens.len()
        );
        assert!(worst < 1e-5, "log-probabilities differ by {worst}");
    }
}
