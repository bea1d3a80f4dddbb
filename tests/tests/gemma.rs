//! Gemma 3 through the binary, as a newcomer runs it: `galley train` (LoRA, sequences longer
//! than the sliding window) on a tiny random Gemma 3 in HF's layout, `galley infer` on the
//! merged model, `galley export` of it to GGUF, and `galley infer` on that GGUF giving the
//! same greedy text. (The model's numbers against transformers are galley-model's and
//! galley-train's tests; this is the CLI's path through them.)

use galley_e2e::*;
use std::path::Path;
use std::process::Output;

fn ok(o: Output) -> String {
    assert!(o.status.success(), "failed:\n{}{}", stdout(&o), stderr(&o));
    stdout(&o)
}

/// galley-model's tiny Gemma 3 (a window of 4, a local and a global layer), with the score
/// scale llama.cpp derives (head_dim) so that a GGUF can carry it.
fn tiny_gemma(dir: &Path) {
    let src = repo_root().join("host/model/tests/fixtures/tiny/gemma3");
    std::fs::create_dir_all(dir).unwrap();
    for f in ["model.safetensors", "tokenizer.json"] {
        std::fs::copy(src.join(f), dir.join(f)).unwrap();
    }
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap()).unwrap();
    cfg["query_pre_attn_scalar"] = 16.into();
    std::fs::write(dir.join("config.json"), cfg.to_string()).unwrap();
}

#[test]
fn a_tiny_gemma3_trains_infers_and_exports_through_the_cli() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    tiny_gemma(&d.join("base"));
    // TRL's prompt/completion shape; every row longer than the 4-token window. (The tiny
    // byte-level vocabulary has no space: its 125 symbols stop before `Ġ`.)
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
    std::fs::write(d.join("train.jsonl"), rows).unwrap();
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

    let greedy = |model: &str| {
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
    };
    let merged = greedy("run/model");
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
    assert_eq!(greedy("tuned.gguf"), merged, "the GGUF decodes otherwise");
}
