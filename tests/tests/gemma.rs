//! Gemma 3 and Gemma 2 through the binary, as a newcomer runs them: `galley train` (LoRA,
//! sequences longer than the sliding window) on a tiny random Gemma in HF's layout, `galley infer` on the
//! merged model, `galley export` of it to GGUF, and `galley infer` on that GGUF giving the
//! same greedy text; and a LoRA on Gemma 3's multimodal layout (the 4B and up), written with
//! the keys PEFT gives that model. (The model's numbers against transformers are galley-model's
//! and galley-train's tests; this is the CLI's path through them.)

use galley_e2e::*;
use std::path::Path;
use std::process::Output;

fn ok(o: Output) -> String {
    assert!(o.status.success(), "failed:\n{}{}", stdout(&o), stderr(&o));
    stdout(&o)
}

/// galley-model's tiny Gemma 3 or 2 (a window of 4, a local and a global layer), with the
/// score scale llama.cpp derives (head_dim) so that a GGUF can carry it.
fn tiny_gemma(name: &str, dir: &Path) {
    copy_fixture(name, dir, |cfg| cfg["query_pre_attn_scalar"] = 16.into());
}

fn copy_fixture(name: &str, dir: &Path, edit: impl Fn(&mut serde_json::Value)) {
    let src = repo_root()
        .join("host/model/tests/fixtures/tiny")
        .join(name);
    std::fs::create_dir_all(dir).unwrap();
    for f in ["model.safetensors", "tokenizer.json"] {
        std::fs::copy(src.join(f), dir.join(f)).unwrap();
    }
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap()).unwrap();
    edit(&mut cfg);
    std::fs::write(dir.join("config.json"), cfg.to_string()).unwrap();
}

/// TRL's prompt/completion shape; every row longer than the 4-token window. (The tiny
/// byte-level vocabulary has no space: its 125 symbols stop before `Ġ`.)
fn sums(dir: &Path) {
    let rows: String = (0..48)
        .map(|i| {
            let (a, b) = (i % 7, (i * 3) % 5);
            format!(
                "{{\"prompt\": \"add{a}and{b}:\", \"completion\": \"{}{}\"}}\n",
                a + b,
                "ok".repeat(1 + i % 3)
            )
        })
        .collect();
    std::fs::write(dir.join("train.jsonl"), rows).unwrap();
}

fn greedy(d: &Path, model: &str) -> String {
    ok(galley(
        d,
        &[
            "infer",
            "-m",
            model,
            "-p",
            "add3and4:",
            "-s",
            "temperature=0",
            "-s",
            "max_tokens=6",
        ],
    ))
}

#[test]
fn a_tiny_gemma3_trains_infers_and_exports_through_the_cli() {
    trains_infers_and_exports("gemma3");
}

/// The same for Gemma 2, whose scores and logits are soft-capped.
#[test]
fn a_tiny_gemma2_trains_infers_and_exports_through_the_cli() {
    trains_infers_and_exports("gemma2");
}

fn trains_infers_and_exports(name: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    tiny_gemma(name, &d.join("base"));
    sums(d);
    std::fs::write(
        d.join("sft.yaml"),
        "model:
  path: base
data:
  train: {path: train.jsonl}
  validation_split: 0.25
  max_length: 48
training:
  method: lora
  output_dir: run
  batch_size: 6
  learning_rate: 2.0e-2
  lr_scheduler: constant
  max_steps: 12
  eval_steps: 12
  save_merged: true
peft:
  r: 4
  lora_alpha: 8
  target_modules: [q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj]
",
    )
    .unwrap();
    let out: serde_json::Value =
        serde_json::from_str(&ok(galley(d, &["train", "-c", "sft.yaml", "--json"]))).unwrap();
    let s = &out["summary"];
    let (before, after) = (
        s["first_eval_loss"].as_f64().unwrap(),
        s["last_eval_loss"].as_f64().unwrap(),
    );
    assert!(after < before - 0.1, "validation loss {before} -> {after}");
    assert!(d.join("run/adapter/adapter_model.safetensors").exists());

    let merged = greedy(d, "run/model");
    assert!(!merged.trim().is_empty(), "no text from the merged model");
    ok(galley(
        d,
        &[
            "export",
            "run/model",
            "-o",
            "tuned.gguf",
            "--outtype",
            "f32",
        ],
    ));
    assert_eq!(
        greedy(d, "tuned.gguf"),
        merged,
        "the GGUF decodes otherwise"
    );
}

/// Gemma 3 4B and up are `Gemma3ForConditionalGeneration` checkpoints. A LoRA on one trains
/// its language model; the adapter's keys are the module names PEFT gives that model
/// (`model.language_model.layers...`) and its targets a pattern only the language model's
/// modules match, so PEFT adds nothing to the vision tower. Folded back by `galley export`,
/// it decodes as the merged model the run wrote.
#[test]
fn a_lora_on_a_multimodal_gemma3_is_keyed_for_peft_and_folds_back() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    copy_fixture("gemma3-multimodal", &d.join("base"), |cfg| {
        cfg["text_config"]["query_pre_attn_scalar"] = 16.into()
    });
    sums(d);
    std::fs::write(
        d.join("sft.yaml"),
        "model: {path: base}
data: {train: {path: train.jsonl}, max_length: 48}
training: {method: lora, output_dir: run, batch_size: 6, learning_rate: 2.0e-2, max_steps: 4, save_merged: true}
peft: {r: 4, lora_alpha: 8, target_modules: [q_proj, v_proj, down_proj]}
",
    )
    .unwrap();
    ok(galley(d, &["train", "-c", "sft.yaml"]));
    let st = d.join("run/adapter/adapter_model.safetensors");
    let keys: Vec<String> = candle_core::safetensors::load(&st, &candle_core::Device::Cpu)
        .unwrap()
        .into_keys()
        .collect();
    assert_eq!(keys.len(), 2 * 3 * 2, "{keys:?}");
    for k in &keys {
        assert!(
            k.starts_with("base_model.model.model.language_model.layers."),
            "{k}"
        );
    }
    let cfg: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(d.join("run/adapter/adapter_config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        cfg["target_modules"],
        r"model\.language_model\.layers\.\d+\.(self_attn|mlp)\.(down_proj|q_proj|v_proj)"
    );
    // The merged model is the language model alone, as transformers' causal LM.
    let merged_cfg = std::fs::read_to_string(d.join("run/model/config.json")).unwrap();
    assert!(merged_cfg.contains("Gemma3ForCausalLM"), "{merged_cfg}");
    ok(galley(
        d,
        &[
            "export",
            "base",
            "-a",
            "run/adapter",
            "-o",
            "folded.gguf",
            "--outtype",
            "f32",
        ],
    ));
    let merged = greedy(d, "run/model");
    assert!(!merged.trim().is_empty(), "no text from the merged model");
    assert_eq!(greedy(d, "folded.gguf"), merged);
    // And as a llama.cpp LoRA GGUF over the base's own GGUF.
    ok(galley(
        d,
        &["export", "run/adapter", "--base", "base", "-o", "lora.gguf"],
    ));
}
