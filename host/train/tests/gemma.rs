//! Training Gemma 3 and Gemma 2 on the CPU, on the tiny random models whose logits
//! transformers computed (galley-model's fixtures: a sliding window of 4 over 11 tokens, a
//! local and a global layer, a score scale that is not 1/√head_dim; Gemma 3's global RoPE
//! scaled, Gemma 2's scores and logits soft-capped at 2 and 3). The trainer's losses are
//! transformers' cross-entropy of those logits; its fused CPU kernels give the reference
//! kernels' (candle's autograd) gradients for full fine-tuning and LoRA; a merged export is
//! an HF checkpoint whose norms are HF's `weight` again and that galley reloads to
//! transformers' logits. SmolLM3 (a layer without RoPE, the trainer rotating it by nothing)
//! goes through the same loss and gradient checks.

use candle_core::Device;
use galley_train::config::{PeftSection, Tuning};
use galley_train::model::{Build, Pass, TrainModel};
use galley_train::ops::Kernels;
use std::path::PathBuf;

const MODELS: [&str; 2] = ["gemma3", "gemma2"];

/// The loss and gradient checks also take SmolLM3's fixture.
const CHECKED: [&str; 3] = ["gemma3", "gemma2", "smollm3"];

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../model/tests/fixtures/tiny")
        .join(name)
}

/// transformers' ids and logits (one row per position).
fn reference(name: &str) -> (Vec<u32>, Vec<Vec<f32>>) {
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture(name).join("logits.json")).unwrap())
            .unwrap();
    (
        serde_json::from_value(v["ids"].clone()).unwrap(),
        serde_json::from_value(v["logits"].clone()).unwrap(),
    )
}

fn load(name: &str, method: Tuning) -> (TrainModel, galley_model::Checkpoint) {
    let ck = galley_model::open(&fixture(name), galley_model::LoadOptions::default()).unwrap();
    let peft = PeftSection {
        r: 4,
        lora_dropout: 0.0,
        target_modules: ["q_proj", "v_proj", "gate_proj", "down_proj"]
            .map(String::from)
            .to_vec(),
        ..Default::default()
    };
    let build = Build {
        tuning: method,
        peft: &peft,
        seed: 1,
    };
    let m = TrainModel::load(&ck.weights, ck.config.clone(), &build, &Device::Cpu).unwrap();
    // LoRA B off zero, so the adapters carry gradient into A.
    for (i, p) in m.trainable.iter().enumerate() {
        if p.name.contains("lora_B") {
            let t = candle_core::Tensor::randn(0f32, 0.1, p.var.dims(), &Device::Cpu).unwrap();
            p.var.set(&(t * (1.0 + i as f64 * 1e-3)).unwrap()).unwrap();
        }
    }
    (m, ck)
}

fn pass(kernels: Kernels, train: bool) -> Pass {
    Pass {
        kernels,
        train,
        adapters: true,
        seed: 0,
    }
}

#[test]
fn gemma_losses_are_transformers_cross_entropy() {
    for name in CHECKED {
        gemma_losses_are_transformers_cross_entropy_for(name);
    }
}

fn gemma_losses_are_transformers_cross_entropy_for(name: &str) {
    let (ids, logits) = reference(name);
    let (m, _) = load(name, Tuning::Full);
    let t = ids.len() - 1;
    for k in [Kernels::Fused, Kernels::Reference] {
        let losses = m
            .losses(&ids[..t], &ids[1..], 1, t, &pass(k, false))
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        for (i, (got, row)) in losses.iter().zip(&logits).enumerate() {
            let max = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
            let lse = max as f64
                + row
                    .iter()
                    .map(|&x| ((x - max) as f64).exp())
                    .sum::<f64>()
                    .ln();
            let want = lse - row[ids[i + 1] as usize] as f64;
            assert!(
                // f32 losses near 5 are 4.8e-7 apart: measured 0.5-3.4e-7.
                (*got as f64 - want).abs() < 2e-6,
                "{name}, {k:?}, position {i}: loss {got} vs transformers' {want}"
            );
        }
    }
}

/// Every trainable tensor's gradient of the summed loss under `k`.
fn gradients(m: &TrainModel, k: Kernels, ids: &[u32]) -> (f32, Vec<Vec<f32>>) {
    let t = ids.len() - 1;
    let cfg = galley_train::config::TrainingSection::default();
    let mut opt = galley_train::optim::Optimizer::new(&cfg, &m.trainable).unwrap();
    for p in &m.trainable {
        p.grad.lock().fill(0.0);
    }
    let l = m
        .losses(&ids[..t], &ids[1..], 1, t, &pass(k, true))
        .unwrap();
    let g = l.sum_all().unwrap().backward().unwrap();
    opt.accumulate(&m.trainable, &g).unwrap();
    (
        l.sum_all().unwrap().to_scalar::<f32>().unwrap(),
        m.trainable.iter().map(|p| p.grad.lock().clone()).collect(),
    )
}

#[test]
fn gemma_fused_kernels_give_the_reference_gradients() {
    for name in CHECKED {
        gemma_fused_kernels_give_the_reference_gradients_for(name);
    }
}

fn gemma_fused_kernels_give_the_reference_gradients_for(name: &str) {
    let (ids, _) = reference(name);
    for method in [Tuning::Full, Tuning::Lora] {
        let (m, _) = load(name, method);
        let (lf, gf) = gradients(&m, Kernels::Fused, &ids);
        let (lr, gr) = gradients(&m, Kernels::Reference, &ids);
        assert!(
            (lf - lr).abs() / lr.abs() < 1e-5,
            "{name}, {method:?}: {lf} vs {lr}"
        );
        let names: Vec<&str> = m.trainable.iter().map(|p| p.name.as_str()).collect();
        if method == Tuning::Full && name.starts_with("gemma") {
            // Gemma's four norms a layer are trained, by their HF names.
            for n in [
                "model.layers.0.post_attention_layernorm.weight",
                "model.layers.0.pre_feedforward_layernorm.weight",
                "model.layers.1.post_feedforward_layernorm.weight",
            ] {
                assert!(names.contains(&n), "{n} not trained: {names:?}");
            }
            // q/k norms are Gemma 3's alone.
            let k_norm = "model.layers.1.self_attn.k_norm.weight";
            assert_eq!(names.contains(&k_norm), name == "gemma3", "{name}");
        }
        for (tensor, (a, r)) in names.iter().zip(gf.iter().zip(&gr)) {
            assert!(
                r.iter().any(|&v| v != 0.0),
                "{method:?}: {tensor} has no gradient"
            );
            let scale = r.iter().fold(1e-6f32, |s, v| s.max(v.abs()));
            let e = a
                .iter()
                .zip(r)
                .map(|(x, y)| (x - y).abs())
                .fold(0.0, f32::max)
                / scale;
            assert!(e < 1e-3, "{method:?}: gradient of {tensor} differs by {e}");
        }
    }
}

#[test]
fn a_merged_gemma_is_an_hf_checkpoint_with_transformers_logits() {
    for name in MODELS {
        a_merged_gemma_is_an_hf_checkpoint_with_transformers_logits_for(name);
    }
}

/// `name`'s LoRA model merged with its adapters at zero (the merge is then the base) and
/// written as an HF folder: the folder and its config.json.
fn merged_at_zero(name: &str) -> (tempfile::TempDir, serde_json::Value) {
    let (m, ck) = load(name, Tuning::Lora);
    for p in &m.trainable {
        p.var.set(&p.var.zeros_like().unwrap()).unwrap();
    }
    let tmp = tempfile::tempdir().unwrap();
    galley_train::export::save_merged(&m, &ck.tokenizer, None, tmp.path()).unwrap();
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(tmp.path().join("config.json")).unwrap())
            .unwrap();
    (tmp, cfg)
}

/// The largest difference between transformers' logits for `name`'s fixture and galley's
/// from the checkpoint at `dir`.
fn reloaded_off_transformers(name: &str, dir: &std::path::Path) -> f32 {
    let (ids, logits) = reference(name);
    let back = galley_model::load(dir, &Device::Cpu).unwrap();
    let mut cache = back.model.new_exact_cache(1, 64);
    let got = back
        .model
        .forward(std::slice::from_ref(&ids), None, &mut cache, false)
        .unwrap()
        .to_vec3::<f32>()
        .unwrap();
    got[0]
        .concat()
        .iter()
        .zip(logits.concat())
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max)
}

fn a_merged_gemma_is_an_hf_checkpoint_with_transformers_logits_for(name: &str) {
    let (tmp, cfg) = merged_at_zero(name);
    let arch = match name {
        "gemma2" => {
            assert_eq!(cfg["attn_logit_softcapping"], serde_json::json!(2.0));
            assert_eq!(cfg["final_logit_softcapping"], serde_json::json!(3.0));
            "Gemma2ForCausalLM"
        }
        _ => "Gemma3ForCausalLM",
    };
    assert_eq!(cfg["architectures"][0], arch);
    assert_eq!(cfg["layer_types"][0], "sliding_attention");
    assert_eq!(cfg["sliding_window"], 4);
    // An integer, as transformers 5's strict config requires (it refuses `24.0`).
    assert_eq!(cfg["query_pre_attn_scalar"], serde_json::json!(24));
    // HF's norm weight (the fixture's own bits back, within f32's rounding of 1 + w).
    let written =
        candle_core::safetensors::load(tmp.path().join("model.safetensors"), &Device::Cpu).unwrap();
    let source =
        candle_core::safetensors::load(fixture(name).join("model.safetensors"), &Device::Cpu)
            .unwrap();
    let norm = "model.layers.0.post_feedforward_layernorm.weight";
    let (a, b) = (
        written[norm].to_vec1::<f32>().unwrap(),
        source[norm].to_vec1::<f32>().unwrap(),
    );
    assert!(
        a.iter().zip(&b).all(|(x, y)| (x - y).abs() < 1e-6),
        "{a:?} vs {b:?}"
    );
    let worst = reloaded_off_transformers(name, tmp.path());
    assert!(worst < 1e-4, "merged {name} off transformers by {worst}");
}

/// SmolLM3's merged export says its NoPE layers as transformers does (`no_rope_layers`, 1
/// where a layer rotates), and galley reloads it to transformers' logits.
#[test]
fn a_merged_smollm3_says_which_layers_rotate() {
    let (tmp, cfg) = merged_at_zero("smollm3");
    assert_eq!(cfg["architectures"][0], "SmolLM3ForCausalLM");
    assert_eq!(cfg["no_rope_layers"], serde_json::json!([1, 1, 1, 0]));
    // transformers' default padding id (128004) lies past this vocabulary.
    assert!(cfg["pad_token_id"].is_null());
    let back = galley_model::open(tmp.path(), galley_model::LoadOptions::default()).unwrap();
    assert!(!back.config.rotates(3) && back.config.rotates(2));
    let worst = reloaded_off_transformers("smollm3", tmp.path());
    assert!(worst < 1e-4, "merged SmolLM3 off transformers by {worst}");
}
