//! Gradient checks of every fused op: against the unfused candle reference (autograd through
//! plain ops) and against central finite differences; then the whole model, fused vs
//! reference, for full fine-tuning, LoRA and QLoRA.

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor, Var};
use galley_train::config::{PeftSection, Tuning};
use galley_train::model::{Build, Pass, TrainModel, init_weights};
use galley_train::ops::{self, Frozen, IGNORE, Kernels, RopeTables};
use rand::{RngExt, SeedableRng, rngs::StdRng};
use std::sync::Arc;

fn rand_vec(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut r = StdRng::seed_from_u64(seed);
    (0..n)
        .map(|_| (r.random::<f32>() * 2.0 - 1.0) * scale)
        .collect()
}

fn rand_t(shape: &[usize], seed: u64, scale: f32) -> Tensor {
    let n = shape.iter().product();
    Tensor::from_vec(rand_vec(n, seed, scale), shape, &Device::Cpu).unwrap()
}

fn max_rel(a: &Tensor, b: &Tensor) -> f32 {
    let a = a.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let b = b.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(1e-6f32, |m, v| m.max(v.abs()));
    a.iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
        / scale
}

/// loss = sum(f(inputs) * w) for a fixed random w, so every output element matters.
fn loss_of(y: &Tensor, seed: u64) -> Tensor {
    let w = rand_t(y.dims(), seed, 1.0);
    (y * w).unwrap().sum_all().unwrap()
}

/// Checks an op's input gradients, fused against reference, and fused against finite
/// differences at a few coordinates of each input.
fn check(name: &str, shapes: &[&[usize]], f: impl Fn(&[Tensor], Kernels) -> Tensor) {
    let inputs: Vec<Var> = shapes
        .iter()
        .enumerate()
        .map(|(i, s)| Var::from_tensor(&rand_t(s, 10 + i as u64, 1.0)).unwrap())
        .collect();
    let ts: Vec<Tensor> = inputs.iter().map(|v| v.as_tensor().clone()).collect();
    let yf = f(&ts, Kernels::Fused);
    let yr = f(&ts, Kernels::Reference);
    assert!(
        max_rel(&yf, &yr) < 1e-5,
        "{name}: forward differs: {}",
        max_rel(&yf, &yr)
    );
    let gf = loss_of(&yf, 99).backward().unwrap();
    let gr = loss_of(&yr, 99).backward().unwrap();
    for (i, v) in inputs.iter().enumerate() {
        let (a, b) = (
            gf.get(v).expect("fused grad"),
            gr.get(v).expect("reference grad"),
        );
        let e = max_rel(a, b);
        assert!(
            e < 1e-4,
            "{name}: gradient of input {i} differs from the reference by {e}"
        );
        // Finite differences on up to 5 coordinates, in f64 arithmetic of f32 evaluations.
        let base = v
            .as_tensor()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let grad = a.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        for k in [0, base.len() / 3, base.len() / 2, base.len() - 1] {
            let eps = 1e-2f32;
            let eval = |delta: f32| -> f64 {
                let mut x = base.clone();
                x[k] += delta;
                let mut args = ts.clone();
                args[i] = Tensor::from_vec(x, v.dims(), &Device::Cpu).unwrap();
                let y = f(&args, Kernels::Fused);
                loss_of(&y, 99).to_scalar::<f32>().unwrap() as f64
            };
            let fd = (eval(eps) - eval(-eps)) / (2.0 * eps as f64);
            let tol = 2e-2 * (1.0 + fd.abs());
            assert!(
                (fd - grad[k] as f64).abs() < tol,
                "{name}: input {i}[{k}]: finite difference {fd} vs gradient {}",
                grad[k]
            );
        }
    }
}

#[test]
fn rms_norm_gradients() {
    check("rms_norm", &[&[6, 16], &[16]], |a, k| {
        ops::rms_norm(&a[0], &a[1], 1e-5, k).unwrap()
    });
}

#[test]
fn rope_fused_with_the_head_transpose_gradients() {
    let inv: Vec<f32> = (0..4)
        .map(|i| 1.0 / 10000f32.powf(i as f32 / 4.0))
        .collect();
    let tables = RopeTables::new(&inv, 32, &Device::Cpu).unwrap();
    check("rope_heads", &[&[2, 5, 3, 8]], |a, k| {
        ops::rope_heads(&a[0], &tables, k).unwrap()
    });
}

/// The CPU's attention op over packed pieces, from fused q|k|v rows (2 query heads per KV
/// head): a row of 150 positions (three blocks, the last partial, so blocks that see earlier
/// blocks' keys are checked), a 30-token prefix with two branches after it (70 and 10
/// positions, starting at position 30, seeing the prefix's keys), and a row of 10. The
/// reference is candle's ops piece by piece: rotation from the piece's start, the prefix's
/// rotated keys and values concatenated before a branch's, a causal mask shifted by them.
/// Then again with another score scale and a sliding window of 40 positions (Gemma 3's
/// local layers), which the long row and the branches reach past; and with Gemma 2's
/// soft-capped scores (a cap of 0.8, low enough to bend these scores).
#[test]
fn packed_attention_gradients() {
    packed_attention_gradients_with(None, None, None);
    packed_attention_gradients_with(Some(0.3), Some(40), None);
    packed_attention_gradients_with(Some(0.3), Some(40), Some(0.8));
    packed_attention_gradients_with(None, None, Some(0.8));
}

fn packed_attention_gradients_with(scale: Option<f64>, window: Option<usize>, cap: Option<f64>) {
    use galley_train::packing::Piece;
    let (h, kv, hd) = (4, 2, 8);
    let g = h / kv;
    let inv: Vec<f32> = (0..hd / 2)
        .map(|i| 1.0 / 10000f32.powf(2.0 * i as f32 / hd as f32))
        .collect();
    let rope = RopeTables::new(&inv, 256, &Device::Cpu).unwrap();
    let piece = |len, start, after| Piece { len, start, after };
    let pieces = [
        piece(150, 0, None),
        piece(30, 0, None),
        piece(70, 30, Some(1)),
        piece(10, 30, Some(1)),
        piece(10, 0, None),
    ];
    let n: usize = pieces.iter().map(|p| p.len).sum();
    let w = (h + 2 * kv) * hd;
    let scale = scale.unwrap_or(1.0 / (hd as f64).sqrt());
    check("packed attention", &[&[n, w]], |a, k| match k {
        Kernels::Fused => {
            let how = (scale, window, cap);
            galley_train::attention::packed(&a[0], &pieces, &rope, (h, kv, hd), how).unwrap()
        }
        Kernels::Reference | Kernels::Cuda => {
            let r = Kernels::Reference;
            let mut outs = Vec::new();
            let mut kvs: Vec<(Tensor, Tensor)> = Vec::new();
            let mut at = 0;
            for p in &pieces {
                let rows = a[0].narrow(0, at, p.len).unwrap();
                let part = |col: usize, nh: usize| {
                    rows.narrow(1, col * hd, nh * hd)
                        .unwrap()
                        .reshape((1, p.len, nh, hd))
                        .unwrap()
                };
                let q = ops::rope_heads_from(&part(0, h), &rope, r, p.start).unwrap();
                let mut keys = ops::rope_heads_from(&part(h, kv), &rope, r, p.start).unwrap();
                let mut values = part(h + kv, kv)
                    .transpose(1, 2)
                    .unwrap()
                    .contiguous()
                    .unwrap();
                if let Some(i) = p.after {
                    keys = Tensor::cat(&[&kvs[i].0, &keys], 2).unwrap();
                    values = Tensor::cat(&[&kvs[i].1, &values], 2).unwrap();
                }
                let tk = keys.dim(2).unwrap();
                let off = tk - p.len;
                let mask: Vec<f32> = (0..g * p.len)
                    .flat_map(|row| {
                        let at = off + row % p.len;
                        (0..tk).map(
                            move |j| match j > at || window.is_some_and(|w| j + w <= at) {
                                true => f32::NEG_INFINITY,
                                false => 0.0,
                            },
                        )
                    })
                    .collect();
                let mask = Tensor::from_vec(mask, (g * p.len, tk), &Device::Cpu).unwrap();
                let q = q.reshape((1, kv, g * p.len, hd)).unwrap();
                let s = (q.matmul(&keys.t().unwrap()).unwrap() * scale).unwrap();
                let s = match cap {
                    Some(c) => ((s / c).unwrap().tanh().unwrap() * c).unwrap(),
                    None => s,
                };
                let s = s.broadcast_add(&mask).unwrap();
                let o = candle_nn::ops::softmax(&s, candle_core::D::Minus1)
                    .unwrap()
                    .matmul(&values)
                    .unwrap();
                let o = o
                    .reshape((1, h, p.len, hd))
                    .unwrap()
                    .transpose(1, 2)
                    .unwrap();
                outs.push(o.reshape((p.len, h * hd)).unwrap());
                kvs.push((keys, values));
                at += p.len;
            }
            Tensor::cat(&outs, 0).unwrap()
        }
    });
}

#[test]
fn silu_mul_gradients() {
    check("silu_mul", &[&[7, 9], &[7, 9]], |a, k| {
        ops::silu_mul(&a[0], &a[1], k).unwrap()
    });
}

#[test]
fn silu_mul_halves_gradients() {
    check("silu_mul_halves", &[&[7, 18]], |a, k| match k {
        Kernels::Fused => galley_model::cpu::silu_mul_halves(&a[0]).unwrap(),
        Kernels::Reference | Kernels::Cuda => {
            let (g, u) = (a[0].narrow(1, 0, 9).unwrap(), a[0].narrow(1, 9, 9).unwrap());
            (candle_nn::ops::silu(&g).unwrap() * u).unwrap()
        }
    });
}

/// Gemma's gate: GELU's tanh approximation (computed as g·σ(2z)) against candle's `gelu`.
#[test]
fn gelu_mul_halves_gradients() {
    check("gelu_mul_halves", &[&[7, 18]], |a, k| match k {
        Kernels::Fused => galley_model::cpu::gelu_mul_halves(&a[0]).unwrap(),
        Kernels::Reference | Kernels::Cuda => {
            let (g, u) = (a[0].narrow(1, 0, 9).unwrap(), a[0].narrow(1, 9, 9).unwrap());
            (g.gelu().unwrap() * u).unwrap()
        }
    });
}

/// Projections of one input as one op (q|k|v, gate|up): a trained weight, a frozen one with
/// LoRA (with and without dropout), a frozen one alone, and the frozen weights pre-stacked;
/// the output, x's gradient and every buffer's gradient against candle's autograd through
/// the separate products concatenated.
#[test]
fn grouped_projections_match_separate_ones() {
    use galley_train::linear::{self, GroupPart, GroupW, LoraW};
    let (n, i, r, s) = (5, 8, 3, 0.5f32);
    let x = Var::from_tensor(&rand_t(&[n, i], 1, 1.0)).unwrap();
    let w1 = Var::from_tensor(&rand_t(&[6, i], 2, 1.0)).unwrap();
    let w2 = rand_t(&[4, i], 3, 1.0);
    let w3 = rand_t(&[5, i], 4, 1.0);
    let a = Var::from_tensor(&rand_t(&[r, i], 5, 1.0)).unwrap();
    let b = Var::from_tensor(&rand_t(&[4, r], 6, 1.0)).unwrap();
    let buf = galley_train::grad::Grad::zeros;
    let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let close = |got: &[f32], want: &Tensor, what: &str| {
        let want = flat(want);
        let scale = want.iter().fold(1e-6f32, |m, v| m.max(v.abs()));
        let e = (got.iter().zip(&want))
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max)
            / scale;
        assert!(e < 1e-5, "{what}: {e}");
    };
    let mask: Vec<f32> = rand_vec(n * i, 7, 1.0)
        .iter()
        .map(|v| if *v > 0.0 { 2.0 } else { 0.0 })
        .collect();
    for (trained, dropout, stacked) in [
        (true, false, false),
        (true, true, false),
        (false, true, true),
    ] {
        let (gw, ga, gb) = (buf(6 * i), buf(r * i), buf(4 * r));
        let mask = dropout.then(|| Arc::new(mask.clone()));
        let lora = LoraW {
            grad_a: ga.clone(),
            grad_b: gb.clone(),
            scale: s,
            mask: mask.clone(),
        };
        let mut parts = Vec::new();
        if trained {
            parts.push(GroupPart {
                w: GroupW::Trained {
                    w: w1.as_tensor().clone(),
                    grad: gw.clone(),
                },
                lora: None,
            });
        }
        parts.push(GroupPart {
            w: GroupW::Frozen(Frozen::Dense(w2.clone())),
            lora: Some((a.as_tensor().clone(), b.as_tensor().clone(), lora)),
        });
        parts.push(GroupPart {
            w: GroupW::Frozen(Frozen::Dense(w3.clone())),
            lora: None,
        });
        let stack = stacked.then(|| Tensor::cat(&[&w2, &w3], 0).unwrap());
        let y = linear::group(x.as_tensor(), parts, stack).unwrap();
        let g = loss_of(&y, 9).backward().unwrap();
        // The reference: each product apart, concatenated.
        let xd = match &mask {
            Some(m) => (x.as_tensor()
                * Tensor::from_vec(m.to_vec(), (n, i), &Device::Cpu).unwrap())
            .unwrap(),
            None => x.as_tensor().clone(),
        };
        let lin = |x: &Tensor, w: &Tensor| x.matmul(&w.t().unwrap()).unwrap();
        let adapted = (lin(x.as_tensor(), &w2)
            + (lin(&lin(&xd, a.as_tensor()), b.as_tensor()) * s as f64).unwrap())
        .unwrap();
        let mut outs = Vec::new();
        if trained {
            outs.push(lin(x.as_tensor(), w1.as_tensor()));
        }
        outs.extend([adapted, lin(x.as_tensor(), &w3)]);
        let yr = Tensor::cat(&outs, 1).unwrap();
        let gr = loss_of(&yr, 9).backward().unwrap();
        let what = format!("trained {trained}, dropout {dropout}, stacked {stacked}");
        close(&flat(&y), &yr, &format!("{what}: forward"));
        close(
            &flat(g.get(&x).unwrap()),
            gr.get(&x).unwrap(),
            &format!("{what}: dx"),
        );
        close(&ga.lock(), gr.get(&a).unwrap(), &format!("{what}: dA"));
        close(&gb.lock(), gr.get(&b).unwrap(), &format!("{what}: dB"));
        if trained {
            close(&gw.lock(), gr.get(&w1).unwrap(), &format!("{what}: dW"));
        }
    }
}

/// The LM head fused with the cross-entropy, for the hidden states' gradient (the head
/// weight's, written to its buffer, is checked in `projection_ops_match_autograd...`).
#[test]
fn head_loss_gradients() {
    use galley_train::linear::{HeadW, head_loss};
    let targets = vec![3, IGNORE, 0, 19, 5, IGNORE];
    let e = rand_t(&[20, 12], 4, 1.0);
    check("head_loss", &[&[6, 12]], |a, k| match k {
        Kernels::Fused => head_loss(&a[0], &e, &targets, HeadW::Frozen, (1.0, None)).unwrap(),
        Kernels::Reference | Kernels::Cuda => {
            ops::cross_entropy_reference(&a[0].matmul(&e.t().unwrap()).unwrap(), &targets).unwrap()
        }
    });
    // Logits divided by a sampling temperature (GRPO's log-probs of what was sampled).
    let t = 0.7f64;
    check("head_loss_tempered", &[&[6, 12]], |a, k| match k {
        Kernels::Fused => {
            head_loss(&a[0], &e, &targets, HeadW::Frozen, ((1.0 / t) as f32, None)).unwrap()
        }
        Kernels::Reference | Kernels::Cuda => {
            let logits = (a[0].matmul(&e.t().unwrap()).unwrap() / t).unwrap();
            ops::cross_entropy_reference(&logits, &targets).unwrap()
        }
    });
    // Gemma 2's soft-capped logits (a cap of 1.5 bends these), then the temperature.
    check("head_loss_capped", &[&[6, 12]], |a, k| match k {
        Kernels::Fused => {
            let how = ((1.0 / t) as f32, Some(1.5));
            head_loss(&a[0], &e, &targets, HeadW::Frozen, how).unwrap()
        }
        Kernels::Reference | Kernels::Cuda => {
            let z = a[0].matmul(&e.t().unwrap()).unwrap();
            let capped = ((z / 1.5).unwrap().tanh().unwrap() * 1.5).unwrap();
            ops::cross_entropy_reference(&(capped / t).unwrap(), &targets).unwrap()
        }
    });
}

#[test]
fn frozen_matmul_gradients_dense_and_quantized() {
    let w = Frozen::Dense(rand_t(&[5, 8], 3, 1.0));
    check("frozen_matmul", &[&[4, 8]], |a, k| {
        ops::frozen_matmul(&a[0], &w, k).unwrap()
    });
    let q = QTensor::quantize(&rand_t(&[6, 32], 4, 1.0), GgmlDType::Q4_0).unwrap();
    let wq = Frozen::Quant(Arc::new(q));
    check("frozen_matmul_q4_0", &[&[3, 32]], |a, k| {
        ops::frozen_matmul(&a[0], &wq, k).unwrap()
    });
}

/// The frozen product a GPU runs (`ops::frozen_product`, any device; here on the CPU): the
/// input's gradient as candle's matmul gives it, and none for the weight, even a variable.
#[test]
fn frozen_product_gives_the_input_its_gradient_and_the_weight_none() {
    let wt = rand_t(&[5, 8], 3, 1.0);
    check("frozen_product", &[&[2, 3, 8]], |a, k| match k {
        Kernels::Fused => ops::frozen_product(&a[0], &wt).unwrap(),
        _ => a[0].broadcast_matmul(&wt.t().unwrap()).unwrap(),
    });
    let x = Var::from_tensor(&rand_t(&[4, 8], 5, 1.0)).unwrap();
    let w = Var::from_tensor(&wt).unwrap();
    let g = loss_of(
        &ops::frozen_product(x.as_tensor(), w.as_tensor()).unwrap(),
        7,
    )
    .backward()
    .unwrap();
    assert!(g.get(&x).is_some() && g.get(&w).is_none());
    // candle's own product computes (and throws away) the weight's: what this op saves.
    let g = loss_of(&x.matmul(&w.t().unwrap()).unwrap(), 7)
        .backward()
        .unwrap();
    assert!(g.get(&w).is_some());
    let e = ops::frozen_product(&rand_t(&[4, 7], 6, 1.0), &wt).unwrap_err();
    assert!(
        e.to_string().contains("4x7 input against a 5x8 weight"),
        "{e}"
    );
}

/// A tiny Llama (GQA, untied head) written as safetensors so it loads like a checkpoint.
/// With `qwen`: q/k/v biases (Qwen2) and per-head q/k norms (Qwen3), which the CPU
/// kernels run apart from the fused q|k|v product.
fn tiny_with(dir: &std::path::Path, tied: bool, qwen: bool) -> galley_model::LlamaConfig {
    let init = galley_train::config::InitSection {
        hidden_size: 32,
        intermediate_size: 64,
        num_layers: 2,
        num_heads: 4,
        num_kv_heads: 2,
        max_position_embeddings: 64,
        tie_word_embeddings: tied,
        ..Default::default()
    };
    let mut c = TrainModel::init_config(&init, 40, None, vec![0]);
    let mut w = init_weights(&c, 0.2, 7).unwrap();
    if qwen {
        (c.qkv_bias, c.qk_norm) = (true, true);
        let hd = c.head_dim;
        for l in 0..c.num_layers {
            let at = format!("model.layers.{l}.self_attn");
            for (m, rows, seed) in [
                ("q", c.num_heads * hd, 1),
                ("k", c.num_kv_heads * hd, 2),
                ("v", c.num_kv_heads * hd, 3),
            ] {
                w.push((
                    format!("{at}.{m}_proj.bias"),
                    rand_t(&[rows], 30 + seed + l as u64, 0.5),
                ));
            }
            for (m, seed) in [("q", 4), ("k", 5)] {
                let norm = (rand_t(&[hd], 30 + seed + l as u64, 0.3) + 1.0).unwrap();
                w.push((format!("{at}.{m}_norm.weight"), norm));
            }
        }
    }
    galley_train::export::save_checkpoint_dir(w, &c, dir).unwrap();
    c
}

/// The tiny Llama loaded for `method` with LoRA r 4 on `modules`, its LoRA B moved off zero
/// so the adapter path carries gradient into A; the folder lives as long as the model needs.
fn tiny_model(method: Tuning, tied: bool, modules: &[&str]) -> (tempfile::TempDir, TrainModel) {
    tiny_model_with(method, tied, false, modules)
}

fn tiny_model_with(
    method: Tuning,
    tied: bool,
    qwen: bool,
    modules: &[&str],
) -> (tempfile::TempDir, TrainModel) {
    let dir = tempfile::tempdir().unwrap();
    let c = tiny_with(dir.path(), tied, qwen);
    let w = galley_model::weights::Weights::safetensors(vec![dir.path().join("model.safetensors")])
        .unwrap();
    let peft = PeftSection {
        r: 4,
        lora_dropout: 0.0,
        target_modules: modules.iter().map(|m| m.to_string()).collect(),
        ..Default::default()
    };
    let build = Build {
        tuning: method,
        peft: &peft,
        seed: 1,
    };
    let m = TrainModel::load(&w, c, &build, &Device::Cpu).unwrap();
    for p in &m.trainable {
        if p.name.contains("lora_B") {
            p.var.set(&rand_t(p.var.dims(), 5, 0.1)).unwrap();
        }
    }
    (dir, m)
}

/// A training pass with kernels `k`.
fn train_pass(k: Kernels) -> Pass {
    Pass {
        kernels: k,
        train: true,
        adapters: true,
        seed: 0,
    }
}

/// Every trainable tensor's gradient of the sum of `losses`, as the trainer sees them: fused
/// projections write their buffers directly, everything else comes through autograd and
/// `accumulate`.
fn gradients(
    m: &TrainModel,
    opt: &mut galley_train::optim::Optimizer,
    losses: &Tensor,
) -> Vec<Vec<f32>> {
    for p in &m.trainable {
        p.grad.lock().fill(0.0);
    }
    let g = losses.sum_all().unwrap().backward().unwrap();
    opt.accumulate(&m.trainable, &g).unwrap();
    m.trainable.iter().map(|p| p.grad.lock().clone()).collect()
}

/// The largest difference between two gradients, relative to the reference's largest value;
/// the reference must not be all zero.
fn grad_error(name: &str, got: &[f32], want: &[f32]) -> f32 {
    assert!(want.iter().any(|&v| v != 0.0), "{name} has no gradient");
    let scale = want.iter().fold(1e-6f32, |m, v| m.max(v.abs()));
    got.iter()
        .zip(want)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
        / scale
}

fn whole_model(method: Tuning, tied: bool) {
    whole_model_with(method, tied, false)
}

fn whole_model_with(method: Tuning, tied: bool, qwen: bool) {
    let (_dir, m) = tiny_model_with(method, tied, qwen, &["q_proj", "v_proj", "down_proj"]);
    let (b, t) = (2, 9);
    let inputs: Vec<u32> = (0..b * t).map(|i| (i * 7 % 40) as u32).collect();
    let mut targets: Vec<u32> = (0..b * t).map(|i| (i * 5 % 40) as u32).collect();
    targets[3] = IGNORE;
    let cfg = galley_train::config::TrainingSection::default();
    let mut opt = galley_train::optim::Optimizer::new(&cfg, &m.trainable).unwrap();
    let mut run = |k: Kernels| {
        let l = m.losses(&inputs, &targets, b, t, &train_pass(k)).unwrap();
        let grads = gradients(&m, &mut opt, &l);
        (l.sum_all().unwrap().to_scalar::<f32>().unwrap(), grads)
    };
    let (lf, gf) = run(Kernels::Fused);
    let (lr, gr) = run(Kernels::Reference);
    assert!(
        (lf - lr).abs() / lr.abs() < 1e-5,
        "{method:?}: loss {lf} vs {lr}"
    );
    assert!(!m.trainable.is_empty());
    for (p, (a, r)) in m.trainable.iter().zip(gf.iter().zip(&gr)) {
        let e = grad_error(&format!("{method:?}: {}", p.name), a, r);
        assert!(
            e < 1e-3,
            "{method:?}: gradient of {} differs by {e}",
            p.name
        );
    }
}

#[test]
fn whole_model_full_fine_tuning_matches_the_reference() {
    whole_model(Tuning::Full, false);
    whole_model(Tuning::Full, true);
}

#[test]
fn whole_model_lora_matches_the_reference() {
    whole_model(Tuning::Lora, true);
}

/// Qwen's layers (q/k/v biases, q/k norms per head) take the CPU kernels' path beside the
/// fused q|k|v product: the same losses and gradients as the reference.
#[test]
fn whole_model_with_qwen_layers_matches_the_reference() {
    whole_model_with(Tuning::Full, false, true);
    whole_model_with(Tuning::Lora, true, true);
}

#[test]
fn whole_model_qlora_matches_the_reference() {
    whole_model(Tuning::Qlora, false);
}

/// A right-padded batch run without its padding (`batch_losses`: rows packed end to end,
/// attention per row, common beginnings run once on the CPU kernels) gives the padded run's
/// losses and every gradient, with both kernel sets, for full fine-tuning and LoRA: packing
/// must not let a row see another or move its positions, and a shared position must count
/// in every row.
#[test]
fn a_padded_batch_runs_packed_with_the_padded_losses_and_gradients() {
    use galley_train::data::{Batch, Sample};
    for method in [Tuning::Full, Tuning::Lora] {
        let (_dir, m) = tiny_model(method, false, &galley_train::model::MODULES);
        // Rows of 29, 4, 25 and 39 inputs. The first, third and fourth begin with the same 20
        // tokens and no loss on their first 18 (a prompt several completions share), so on
        // the CPU kernels they run that beginning once; the second row's first tokens carry
        // no loss either.
        let prompt: Vec<u32> = (0..20).map(|i| (i * 3 % 40) as u32).collect();
        let row = |len: usize, seed: usize, shared: bool, prompt_len: usize| {
            let ids: Vec<u32> = (0..len)
                .map(|i| match shared && i < 20 {
                    true => prompt[i],
                    false => ((i * 7 + seed * 11) % 40) as u32,
                })
                .collect();
            Sample {
                train: (0..len).map(|i| i > prompt_len).collect(),
                ids,
            }
        };
        let samples = [
            row(30, 0, true, 18),
            row(5, 1, false, 2),
            row(26, 2, true, 18),
            row(40, 3, true, 18),
        ];
        let b = Batch::from_samples(&samples.iter().collect::<Vec<_>>(), 0);
        let shared = galley_train::packing::plan(&b, true).expect("padding");
        let apart = galley_train::packing::plan(&b, false).expect("padding");
        assert!(
            shared.pieces.iter().filter(|p| p.after.is_some()).count() == 3,
            "{:?}",
            shared.pieces
        );
        assert!(shared.inputs.len() < apart.inputs.len());
        assert!(
            apart
                .pieces
                .iter()
                .all(|p| p.after.is_none() && p.start == 0)
        );
        let cfg = galley_train::config::TrainingSection::default();
        let mut opt = galley_train::optim::Optimizer::new(&cfg, &m.trainable).unwrap();
        for k in [Kernels::Fused, Kernels::Reference] {
            let mut run = |packed: bool| {
                let l = match packed {
                    true => m.batch_losses(&b, &train_pass(k), 1.0).unwrap(),
                    false => m
                        .losses(&b.inputs, &b.targets, b.b, b.t, &train_pass(k))
                        .unwrap(),
                };
                let grads = gradients(&m, &mut opt, &l);
                (l.to_vec1::<f32>().unwrap(), grads)
            };
            let (lp, gp) = run(false);
            let (lk, gk) = run(true);
            assert_eq!(lk.len(), b.b * b.t);
            for (i, (x, y)) in lk.iter().zip(&lp).enumerate() {
                let (row, pos) = (i / b.t, i % b.t);
                if pos >= b.lens[row] {
                    assert_eq!(*x, 0.0, "{method:?} {k:?}: padding at {i} has a loss");
                }
                assert!(
                    (x - y).abs() <= 1e-5 * y.abs().max(1.0),
                    "{method:?} {k:?}: loss at {i}: packed {x}, padded {y}"
                );
            }
            assert!(lk.iter().filter(|&&x| x != 0.0).count() > 10);
            for (p, (a, r)) in m.trainable.iter().zip(gk.iter().zip(&gp)) {
                let e = grad_error(&p.name, a, r);
                assert!(e < 1e-4, "{method:?} {k:?}: {} differs by {e}", p.name);
            }
        }
    }
}

/// The fused projection ops write weight gradients into buffers: check those and the input
/// gradient against plain autograd, with and without a dropout mask.
#[test]
fn projection_ops_match_autograd_including_dropout() {
    use galley_train::linear::{self, GroupPart, GroupW, LoraW};
    let (n, i, o, r) = (5, 8, 6, 3);
    let x = Var::from_tensor(&rand_t(&[n, i], 1, 1.0)).unwrap();
    let w = Var::from_tensor(&rand_t(&[o, i], 2, 1.0)).unwrap();
    let a = Var::from_tensor(&rand_t(&[r, i], 3, 1.0)).unwrap();
    let b = Var::from_tensor(&rand_t(&[o, r], 4, 1.0)).unwrap();
    let buf = galley_train::grad::Grad::zeros;
    let close = |got: &[f32], want: &Tensor, what: &str| {
        let want = want.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let scale = want.iter().fold(1e-6f32, |m, v| m.max(v.abs()));
        let e = got
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max)
            / scale;
        assert!(e < 1e-5, "{what}: {e}");
    };
    // Trained weight.
    let gw = buf(o * i);
    let part = GroupPart {
        w: GroupW::Trained {
            w: w.as_tensor().clone(),
            grad: gw.clone(),
        },
        lora: None,
    };
    let y = linear::group(x.as_tensor(), vec![part], None).unwrap();
    let g = loss_of(&y, 9).backward().unwrap();
    let yr = x.matmul(&w.t().unwrap()).unwrap();
    let gr = loss_of(&yr, 9).backward().unwrap();
    close(
        &y.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        &yr,
        "trained forward",
    );
    close(&gw.lock(), gr.get(&w).unwrap(), "dW");
    close(
        &g.get(&x)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap(),
        gr.get(&x).unwrap(),
        "dx",
    );
    // The head fused with the loss: dE into its buffer, dx through autograd.
    let e = Var::from_tensor(&rand_t(&[o, i], 6, 1.0)).unwrap();
    let targets = [2u32, IGNORE, 0, 5, 1];
    let ge = buf(o * i);
    // At temperature 0.7: the weight's gradient carries the logit scale too.
    let l = linear::head_loss(
        x.as_tensor(),
        e.as_tensor(),
        &targets,
        linear::HeadW::Trained(ge.clone()),
        (1.0 / 0.7, None),
    )
    .unwrap();
    let g = loss_of(&l, 9).backward().unwrap();
    let lr = ops::cross_entropy_reference(
        &(x.matmul(&e.t().unwrap()).unwrap() / 0.7).unwrap(),
        &targets,
    )
    .unwrap();
    let gr = loss_of(&lr, 9).backward().unwrap();
    close(&l.to_vec1::<f32>().unwrap(), &lr, "head loss");
    close(&ge.lock(), gr.get(&e).unwrap(), "head dE");
    close(
        &g.get(&x)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap(),
        gr.get(&x).unwrap(),
        "head dx",
    );
    // No row with a target (a batch of prompt tokens only): zero losses and gradients, the
    // weight's buffer untouched.
    let before = ge.lock().clone();
    let l = linear::head_loss(
        x.as_tensor(),
        e.as_tensor(),
        &[IGNORE; 5],
        linear::HeadW::Trained(ge.clone()),
        (1.0, None),
    )
    .unwrap();
    let g = loss_of(&l, 9).backward().unwrap();
    assert_eq!(l.to_vec1::<f32>().unwrap(), vec![0.0; n]);
    let dx = g.get(&x).unwrap().flatten_all().unwrap();
    assert_eq!(dx.to_vec1::<f32>().unwrap(), vec![0.0; n * i]);
    assert_eq!(*ge.lock(), before);
    // Frozen weight with LoRA, scale 0.5, with and without dropout.
    for mask in [
        None,
        Some(
            rand_vec(n * i, 8, 1.0)
                .iter()
                .map(|v| if *v > 0.0 { 1.25 } else { 0.0 })
                .collect::<Vec<f32>>(),
        ),
    ] {
        let (ga, gb) = (buf(r * i), buf(o * r));
        let lw = LoraW {
            grad_a: ga.clone(),
            grad_b: gb.clone(),
            scale: 0.5,
            mask: mask.clone().map(Arc::new),
        };
        let frozen = Frozen::Dense(w.as_tensor().detach());
        let part = GroupPart {
            w: GroupW::Frozen(frozen),
            lora: Some((a.as_tensor().clone(), b.as_tensor().clone(), lw)),
        };
        let y = linear::group(x.as_tensor(), vec![part], None).unwrap();
        let g = loss_of(&y, 9).backward().unwrap();
        let xd = match &mask {
            Some(m) => (x.as_tensor() * Tensor::from_vec(m.clone(), (n, i), &Device::Cpu).unwrap())
                .unwrap(),
            None => x.as_tensor().clone(),
        };
        let yr = (x.matmul(&w.as_tensor().detach().t().unwrap()).unwrap()
            + (xd
                .matmul(&a.t().unwrap())
                .unwrap()
                .matmul(&b.t().unwrap())
                .unwrap()
                * 0.5)
                .unwrap())
        .unwrap();
        let gr = loss_of(&yr, 9).backward().unwrap();
        close(
            &y.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            &yr,
            "lora forward",
        );
        close(&ga.lock(), gr.get(&a).unwrap(), "dA");
        close(&gb.lock(), gr.get(&b).unwrap(), "dB");
        close(
            &g.get(&x)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap(),
            gr.get(&x).unwrap(),
            "lora dx",
        );
    }
}
