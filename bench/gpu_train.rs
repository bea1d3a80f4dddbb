//! Training throughput on a CUDA GPU: tokens/s, peak GPU memory and MFU of full fine-tuning
//! and LoRA for models of SmolLM2-135M's and SmolLM2-1.7B's shapes with random weights (no
//! checkpoint reaches a GPU machine), bf16 compute with f32 master weights and moments, the
//! trainer's own step (forward, backward, clipping, the fused AdamW kernel).
//!
//!     scripts/build-cuda.sh && target/cuda/release/examples/gpu-train [--quick | --long | --gemma]
//!
//! `--gemma`: Gemma 3 1B's shape (its published config.json: 26 layers, five in six sliding
//! over 512 positions, q/k norms, 256-wide heads, the tanh-GELU MLP, a 262,144-word
//! vocabulary), full and LoRA at 2,048 tokens and LoRA at 8,192.
//!
//! `GALLEY_CUDA_PROFILE=1` runs the 1.7B shape at 2,048 tokens only (full and LoRA) and
//! prints, for one more step of each, what the GPU ran in the forward pass, the backward pass
//! and the optimizer, kernel by kernel (`galley_model::cupti`).
//!
//! MFU = model FLOPs / time / the GPU's bf16 dense peak (`GALLEY_PEAK_TFLOPS`, default 989.4,
//! an H100/H200 SXM). Model FLOPs per token: 6·N + 12·L·T·d for full fine-tuning (N counts
//! every matrix the token passes through, the LM head included; d = heads · head_dim, the
//! attention's width; the attention term is the usual causal-blind count, with a sliding
//! layer's T its window where that is shorter: Gemma 3's local layers see 512 keys, not 2,048),
//! 4·N + 12·L·T·d for LoRA (no weight gradients for frozen matrices). The peer, `bench/gpu_train_peer.py`, runs the same shapes in PyTorch (HF
//! transformers, autocast bf16, SDPA attention, fused AdamW, peft for LoRA) in the same run.

use candle_core::{DType, Device, Tensor};
use galley_model::weights::Weights;
use galley_model::{Family, LlamaConfig, RopeScaling};
use galley_train::config::{PeftSection, TrainingSection, Tuning};
use galley_train::model::{Build, Pass, TrainModel};
use galley_train::optim::Optimizer;
use std::time::Instant;

/// Gemma 3 1B's config.json as published, less what galley does not read (compiled in: the
/// binary travels to a GPU machine without the source tree).
const GEMMA3_1B: &str = include_str!("shapes/gemma3-1b.json");

fn shape(name: &str) -> LlamaConfig {
    if name == "gemma3-1b" {
        let origin = std::path::Path::new("bench/shapes/gemma3-1b.json");
        return LlamaConfig::from_hf_text(GEMMA3_1B, origin).unwrap();
    }
    let (d, f, l, h, kv) = match name {
        "135m" => (576, 1536, 30, 9, 3),
        "1.7b" => (2048, 8192, 24, 32, 32),
        _ => panic!("unknown shape {name}"),
    };
    LlamaConfig {
        family: Family::Llama,
        vocab_size: 49152,
        hidden_size: d,
        intermediate_size: f,
        num_layers: l,
        num_heads: h,
        num_kv_heads: kv,
        head_dim: d / h,
        rms_norm_eps: 1e-5,
        rope_theta: 130_000.0,
        rope_scaling: RopeScaling::None,
        max_position_embeddings: 8192,
        tie_word_embeddings: true,
        qkv_bias: false,
        o_bias: false,
        mlp_bias: false,
        qk_norm: false,
        bos_token_id: Some(1),
        eos_token_ids: vec![2],
        sliding: None,
        query_pre_attn_scalar: None,
        attn_softcap: None,
        final_softcap: None,
        no_rope: None,
        bidirectional: false,
    }
}

/// Random weights made on the device (the 1.7B model's 1.7 G numbers take seconds there).
fn weights(c: &LlamaConfig, dev: &Device) -> Weights {
    let mut t = Vec::new();
    let mut put = |name: String, shape: &[usize]| {
        let fan = *shape.last().unwrap() as f64;
        let w = if shape.len() == 1 {
            Tensor::ones(shape, DType::F32, dev).unwrap()
        } else {
            (Tensor::randn(0f32, 1.0, shape, dev).unwrap() / fan.sqrt()).unwrap()
        };
        t.push((name, w));
    };
    let (d, hd) = (c.hidden_size, c.head_dim);
    put("model.embed_tokens.weight".into(), &[c.vocab_size, d]);
    put("model.norm.weight".into(), &[d]);
    for i in 0..c.num_layers {
        let p = format!("model.layers.{i}");
        put(format!("{p}.input_layernorm.weight"), &[d]);
        put(format!("{p}.post_attention_layernorm.weight"), &[d]);
        if c.family.is_gemma() {
            put(format!("{p}.pre_feedforward_layernorm.weight"), &[d]);
            put(format!("{p}.post_feedforward_layernorm.weight"), &[d]);
        }
        if c.qk_norm {
            put(format!("{p}.self_attn.q_norm.weight"), &[hd]);
            put(format!("{p}.self_attn.k_norm.weight"), &[hd]);
        }
        put(
            format!("{p}.self_attn.q_proj.weight"),
            &[c.num_heads * hd, d],
        );
        put(
            format!("{p}.self_attn.k_proj.weight"),
            &[c.num_kv_heads * hd, d],
        );
        put(
            format!("{p}.self_attn.v_proj.weight"),
            &[c.num_kv_heads * hd, d],
        );
        put(
            format!("{p}.self_attn.o_proj.weight"),
            &[d, c.num_heads * hd],
        );
        put(
            format!("{p}.mlp.gate_proj.weight"),
            &[c.intermediate_size, d],
        );
        put(format!("{p}.mlp.up_proj.weight"), &[c.intermediate_size, d]);
        put(
            format!("{p}.mlp.down_proj.weight"),
            &[d, c.intermediate_size],
        );
    }
    Weights::memory(t, "random weights")
}

/// Parameters a token's forward pass multiplies with (the LM head included, the embedding
/// lookup not).
fn matmul_params(c: &LlamaConfig) -> f64 {
    let (d, hd, f) = (c.hidden_size, c.head_dim, c.intermediate_size);
    let attn = d * c.num_heads * hd * 2 + d * c.num_kv_heads * hd * 2;
    let per_layer = attn + 3 * d * f;
    (c.num_layers * per_layer + c.vocab_size * d) as f64
}

struct Row {
    model: String,
    method: &'static str,
    seq: usize,
    batch: usize,
    tok_s: f64,
    peak_gib: f64,
    mfu: f64,
    loss: f32,
    /// One more step timed phase by phase (synchronising between phases): forward,
    /// backward, optimizer (accumulate, clip, update), in ms.
    phases: [f64; 3],
}

fn run(name: &str, tuning: Tuning, seq: usize, batch: usize, steps: usize, dev: &Device) -> Row {
    let c = shape(name);
    let peft = PeftSection {
        r: 16,
        lora_alpha: 32.0,
        lora_dropout: 0.0,
        target_modules: galley_train::model::MODULES.map(String::from).to_vec(),
        ..Default::default()
    };
    let build = Build {
        tuning,
        peft: &peft,
        seed: 1,
    };
    galley_model::cuda::reset_peak(dev);
    let mut m = {
        let w = weights(&c, dev);
        TrainModel::load(&w, c.clone(), &build, dev).unwrap()
    };
    m.compute = DType::BF16;
    let cfg = TrainingSection::default();
    let mut opt = Optimizer::new(&cfg, &m.trainable).unwrap();
    let n = batch * seq;
    let ids: Vec<u32> = (0..n + 1)
        .map(|i| ((i * 7919 + 13) % c.vocab_size) as u32)
        .collect();
    let (inputs, targets) = (&ids[..n], &ids[1..]);
    let pass = Pass {
        kernels: m.kernels,
        train: true,
        adapters: true,
        seed: 0,
    };
    // One training step; with `phases`, the device is synchronised after the forward pass,
    // the backward pass and the optimizer, and each one's milliseconds recorded; with a
    // profiler too, what the GPU ran in each phase.
    let mut step = |mut phases: Option<&mut [f64; 3]>,
                    mut prof: Option<(&galley_model::cupti::Profiler, &mut Vec<String>)>|
     -> f32 {
        let mut t = Instant::now();
        let mut mark = |k: usize| {
            if let Some(p) = phases.as_deref_mut() {
                dev.synchronize().unwrap();
                p[k] = t.elapsed().as_secs_f64() * 1e3;
                if let Some((profiler, tables)) = prof.as_mut() {
                    tables.push(match profiler.take() {
                        Ok(p) => p.table(15),
                        Err(e) => e,
                    });
                }
                t = Instant::now();
            }
        };
        let l = m.losses(inputs, targets, batch, seq, &pass).unwrap();
        let loss = (l.sum_all().unwrap() / n as f64).unwrap();
        mark(0);
        let g = loss.backward().unwrap();
        mark(1);
        opt.accumulate(&m.trainable, &g).unwrap();
        drop(g);
        opt.clip(&m.trainable, 1.0).unwrap();
        opt.step(&m.trainable, 1e-4).unwrap();
        mark(2);
        loss.to_scalar::<f32>().unwrap()
    };
    let warm = 2;
    for _ in 0..warm {
        step(None, None);
    }
    dev.synchronize().unwrap();
    let t0 = Instant::now();
    let mut loss = 0.0;
    for _ in 0..steps {
        loss = step(None, None);
    }
    dev.synchronize().unwrap();
    let secs = t0.elapsed().as_secs_f64();
    // One more step, timed phase by phase.
    let mut phases = [0f64; 3];
    step(Some(&mut phases), None);
    // GALLEY_CUDA_PROFILE=1: one more step, kernel by kernel, phase by phase (CUPTI).
    if std::env::var_os("GALLEY_CUDA_PROFILE").is_some() {
        let mut tables = Vec::new();
        match galley_model::cupti::Profiler::start() {
            Ok(p) => {
                dev.synchronize().unwrap();
                let _ = p.take();
                step(Some(&mut [0f64; 3]), Some((&p, &mut tables)));
            }
            Err(e) => tables.push(e),
        }
        for (phase, t) in ["forward", "backward", "optimizer"].iter().zip(&tables) {
            println!("\n{name} {tuning:?} {seq} x {batch}, {phase}, kernel by kernel:\n{t}");
        }
    }
    let tok_s = (steps * n) as f64 / secs;
    let np = matmul_params(&c);
    let attn = attention_flops(&c, seq);
    let per_tok = match tuning {
        Tuning::Full => 6.0 * np + attn,
        _ => 4.0 * np + attn,
    };
    let peak: f64 = std::env::var("GALLEY_PEAK_TFLOPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(989.4);
    let (used, _reserved) = galley_model::cuda::peak(dev).unwrap_or((0, 0));
    Row {
        model: name.into(),
        method: if tuning == Tuning::Full {
            "full"
        } else {
            "lora"
        },
        seq,
        batch,
        tok_s,
        peak_gib: used as f64 / (1u64 << 30) as f64,
        mfu: tok_s * per_tok / (peak * 1e12),
        loss,
        phases,
    }
}

/// The attention's model FLOPs per token, forward and backward: 12 · keys · heads · head_dim a
/// layer, keys the sequence (causal-blind, as PaLM's count) or a sliding layer's window.
fn attention_flops(c: &LlamaConfig, seq: usize) -> f64 {
    (0..c.num_layers)
        .map(|l| {
            let keys = c.window(l).map_or(seq, |w| w.min(seq));
            12.0 * (keys * c.num_heads * c.head_dim) as f64
        })
        .sum()
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    // --long: one long sequence, where the dense attention would keep 4 GiB of scores a
    // layer (96 GiB over 24) and the fused attention (`flash_cuda`) keeps none.
    let long = std::env::args().any(|a| a == "--long");
    let gemma = std::env::args().any(|a| a == "--gemma");
    // GALLEY_CUDA_PROFILE=1: the goal's shape only (1.7B at 2,048 tokens), full and LoRA, two
    // timed steps, then the step kernel by kernel: a short lease's minute, not three.
    let profile = std::env::var_os("GALLEY_CUDA_PROFILE").is_some();
    let dev = galley_model::device("cuda").expect("a CUDA GPU");
    galley_model::cuda::single_stream(&dev);
    let steps = if quick || long || profile || gemma {
        2
    } else {
        5
    };
    let plan: Vec<(&str, Tuning, usize, usize)> = if quick {
        vec![("135m", Tuning::Lora, 256, 2)]
    } else if gemma {
        vec![
            ("gemma3-1b", Tuning::Full, 2048, 1),
            ("gemma3-1b", Tuning::Lora, 2048, 1),
            ("gemma3-1b", Tuning::Lora, 8192, 1),
        ]
    } else if profile {
        vec![
            ("1.7b", Tuning::Full, 2048, 1),
            ("1.7b", Tuning::Lora, 2048, 1),
        ]
    } else if long {
        vec![("1.7b", Tuning::Full, 8192, 1)]
    } else {
        vec![
            ("135m", Tuning::Full, 2048, 8),
            ("135m", Tuning::Lora, 2048, 8),
            ("1.7b", Tuning::Full, 2048, 1),
            ("1.7b", Tuning::Lora, 2048, 1),
            ("1.7b", Tuning::Full, 512, 8),
        ]
    };
    println!("| model | method | seq x batch | tokens/s | peak GPU GiB | MFU | last loss |");
    println!("| --- | --- | --- | ---: | ---: | ---: | ---: |");
    let mut rows = Vec::new();
    for (name, tuning, seq, batch) in plan {
        let r = run(name, tuning, seq, batch, steps, &dev);
        println!(
            "| galley {} | {} | {} x {} | {:.0} | {:.1} | {:.1}% | {:.3} |",
            r.model,
            r.method,
            r.seq,
            r.batch,
            r.tok_s,
            r.peak_gib,
            r.mfu * 100.0,
            r.loss
        );
        rows.push(r);
    }
    println!();
    println!("| model | method | seq x batch | forward ms | backward ms | optimizer ms |");
    println!("| --- | --- | --- | ---: | ---: | ---: |");
    for r in rows {
        println!(
            "| galley {} | {} | {} x {} | {:.1} | {:.1} | {:.1} |",
            r.model, r.method, r.seq, r.batch, r.phases[0], r.phases[1], r.phases[2]
        );
    }
}
