//! The inference engine runs a model being trained: galley-model's Llama built from the
//! trainer's merged weights in memory computes the trainer's own log-probabilities (what GRPO
//! rollouts will sample from) — without writing a checkpoint.

mod common;

use candle_core::{D, Device, Tensor};
use common::tiny_chat_model;
use galley_model::weights::Weights;
use galley_model::{Llama, LlamaConfig};
use galley_train::config::{PeftSection, Tuning};
use galley_train::model::{Build, Pass, Proj, TrainModel};
use galley_train::ops::Kernels;

#[test]
fn an_inference_model_from_merged_lora_weights_in_memory_matches_the_trainer() {
    let dir = tempfile::tempdir().unwrap();
    tiny_chat_model(dir.path());
    let ck = galley_model::open(dir.path(), Default::default()).unwrap();
    let cfg: LlamaConfig = ck.config.clone();
    let peft = PeftSection {
        lora_dropout: 0.0,
        target_modules: ["q_proj", "v_proj", "up_proj"].map(String::from).to_vec(),
        ..Default::default()
    };
    let m = TrainModel::load(
        &ck.weights,
        cfg.clone(),
        &Build {
            tuning: Tuning::Lora,
            peft: &peft,
            seed: 3,
        },
        &Device::Cpu,
    )
    .unwrap();
    // A trained-looking adapter: B away from zero.
    for p in m.trainable.iter().filter(|p| p.name.contains("lora_B")) {
        let n = p.var.elem_count();
        let v: Vec<f32> = (0..n)
            .map(|i| ((i * 7919 % 13) as f32 - 6.0) * 0.05)
            .collect();
        p.var
            .set(&Tensor::from_vec(v, p.var.dims(), &Device::Cpu).unwrap())
            .unwrap();
    }
    let ids: Vec<u32> = (0..12).map(|i| (i * 37 % 300) as u32).collect();
    let targets: Vec<u32> = ids[1..].iter().copied().chain([0]).collect();
    let pass = Pass {
        kernels: Kernels::Fused,
        train: false,
        adapters: true,
        seed: 0,
    };
    let nll = m
        .losses(&ids, &targets, 1, ids.len(), &pass)
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();

    // The merge (the base copied, then one accumulating product) is W + scale·B·A as
    // candle's ops compute it.
    for layer in &m.layers {
        for (_, _, proj) in layer.projs() {
            let Proj::Frozen {
                w, lora: Some(l), ..
            } = proj
            else {
                continue;
            };
            let want = (w.dense().unwrap()
                + (l.b.var.matmul(l.a.var.as_tensor()).unwrap() * l.scale).unwrap())
            .unwrap();
            let diff = (proj.merged().unwrap() - want)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(diff < 1e-6, "merged weight off by {diff}");
        }
    }

    let llama = Llama::load(
        &Weights::memory(m.merged_tensors().unwrap(), "trainer weights"),
        cfg.clone(),
        &Device::Cpu,
    )
    .unwrap();
    // What GRPO's rollouts load: q|k|v and gate|up merged straight into their stacked
    // layout (adapted and plain projections mixed in one stack here). The same weights, so
    // the same logits to the bit.
    let stacked = Llama::load(
        &m.engine_weights("trainer weights").unwrap(),
        cfg,
        &Device::Cpu,
    )
    .unwrap();
    let run = |model: &Llama| {
        let mut cache = model.new_cache(1);
        model
            .forward(std::slice::from_ref(&ids), None, &mut cache, false)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
    };
    assert!(
        run(&llama) == run(&stacked),
        "the stacked engine's logits differ"
    );
    let mut cache = llama.new_cache(1);
    let logits = llama
        .forward(std::slice::from_ref(&ids), None, &mut cache, false)
        .unwrap()
        .squeeze(0)
        .unwrap();
    let lsm = candle_nn::ops::log_softmax(&logits, D::Minus1)
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    for (i, &t) in targets.iter().enumerate() {
        let e = (-lsm[i][t as usize] - nll[i]).abs();
        assert!(
            e < 1e-4 * (1.0 + nll[i].abs()),
            "position {i}: engine {} vs trainer {}",
            -lsm[i][t as usize],
            nll[i]
        );
    }
}
