//! Gemma 3 4B, 12B and 27B are published as `Gemma3ForConditionalGeneration`: the language
//! model beside a vision tower, its settings under `text_config`, its tensors nested under
//! `language_model.` in one of two spellings. galley runs the language model on text. The
//! fixture (`reference/make_fixtures.py`) is such a checkpoint written by transformers with a
//! tiny vision tower, its text-only logits, and a LoRA adapter PEFT wrote for it (with the
//! vision tower's projections adapted too, as PEFT's targets by name do).

use candle_core::{Device, Tensor};
use galley_model::{LoadOptions, TextLayout, load, load_adapted};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

mod common;
use common::{HEAVY, rel_err};

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny/gemma3-multimodal")
}

fn ids_and_logits(path: &Path) -> (Vec<u32>, Vec<f32>) {
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let ids: Vec<u32> = serde_json::from_value(v["ids"].clone()).unwrap();
    let rows: Vec<Vec<f32>> = serde_json::from_value(v["logits"].clone()).unwrap();
    (ids, rows.concat())
}

fn logits(m: &galley_model::Llama, ids: &[u32]) -> Vec<f32> {
    let mut cache = m.new_exact_cache(1, 64);
    m.forward(&[ids.to_vec()], None, &mut cache, false)
        .unwrap()
        .to_vec3::<f32>()
        .unwrap()[0]
        .concat()
}

/// The fixture with its tensors renamed by `rename`, into `dir`, split over two shards with
/// an index (as the larger checkpoints are).
fn copy_renamed(dir: &Path, rename: impl Fn(&str) -> String) {
    let src = fixture();
    for f in ["config.json", "tokenizer.json"] {
        std::fs::copy(src.join(f), dir.join(f)).unwrap();
    }
    let all = candle_core::safetensors::load(src.join("model.safetensors"), &Device::Cpu).unwrap();
    let mut names: Vec<&String> = all.keys().collect();
    names.sort();
    let (a, b) = names.split_at(names.len() / 2);
    let mut map = serde_json::Map::new();
    for (file, part) in [("m-1.safetensors", a), ("m-2.safetensors", b)] {
        let shard: HashMap<String, Tensor> =
            part.iter().map(|n| (rename(n), all[*n].clone())).collect();
        candle_core::safetensors::save(&shard, dir.join(file)).unwrap();
        for n in part {
            map.insert(rename(n), file.into());
        }
    }
    std::fs::write(
        dir.join("model.safetensors.index.json"),
        serde_json::json!({"metadata": {}, "weight_map": map}).to_string(),
    )
    .unwrap();
}

/// transformers 4.52-4.57's spelling: everything under `model.`, the head at the top.
fn model_first(name: &str) -> String {
    match name.strip_prefix("language_model.model.") {
        Some(rest) => format!("model.language_model.{rest}"),
        None => match name.strip_prefix("language_model.") {
            Some(rest) => rest.to_string(),
            None => format!("model.{name}"),
        },
    }
}

#[test]
fn a_multimodal_checkpoint_runs_its_language_model_in_either_spelling() {
    let _one = HEAVY.lock().unwrap_or_else(|e| e.into_inner());
    let dev = Device::Cpu;
    let (ids, want) = ids_and_logits(&fixture().join("logits.json"));
    let m = load(&fixture(), &dev).unwrap();
    let c = &m.model.config;
    assert_eq!(c.family, galley_model::Family::Gemma3);
    // The global layer's RoPE scaled by 8 (as the 4B's), the local one's not.
    assert_eq!(
        c.rope_scaling,
        galley_model::RopeScaling::Linear { factor: 8.0 }
    );
    assert_eq!(c.window(0), Some(4));
    let first = logits(&m.model, &ids);
    let err = rel_err(&first, &want);
    println!("gemma3-multimodal: relative error {err:.2e}");
    assert!(err < 1e-4, "relative error {err}");

    // The other spelling, sharded: the same numbers, bit for bit.
    let tmp = tempfile::tempdir().unwrap();
    copy_renamed(tmp.path(), model_first);
    let ck = galley_model::open(tmp.path(), LoadOptions::default()).unwrap();
    assert_eq!(ck.weights.layout(), TextLayout::ModelFirst);
    let other = load(tmp.path(), &dev).unwrap();
    assert_eq!(logits(&other.model, &ids), first);

    // A language-model tensor missing is named as the file spells it.
    let tmp = tempfile::tempdir().unwrap();
    copy_renamed(tmp.path(), |n| {
        if n == "language_model.model.layers.1.mlp.up_proj.weight" {
            "something.else".into()
        } else {
            n.into()
        }
    });
    let e = load(tmp.path(), &dev).err().unwrap().to_string();
    assert!(
        e.contains("language_model.model.layers.1.mlp.up_proj.weight"),
        "{e}"
    );
}

/// PEFT's adapter for the multimodal model names modules `model.language_model.layers...`
/// (transformers 5's module tree) and adapts the vision tower's `q_proj`/`v_proj` too:
/// galley applies the language model's part and gives PEFT's logits, over either spelling
/// of the base.
#[test]
fn a_peft_adapter_for_the_multimodal_model_gives_peft_logits() {
    let _one = HEAVY.lock().unwrap_or_else(|e| e.into_inner());
    let dev = Device::Cpu;
    let peft = fixture().join("peft");
    let (ids, want) = ids_and_logits(&peft.join("logits.json"));
    let (_, base) = ids_and_logits(&fixture().join("logits.json"));
    assert!(
        rel_err(&base, &want) > 1e-2,
        "the adapter must change the logits"
    );
    let adapted = load_adapted(&fixture(), Some(&peft), &dev, LoadOptions::default()).unwrap();
    let got = logits(&adapted.model, &ids);
    let err = rel_err(&got, &want);
    println!("gemma3-multimodal + PEFT adapter: relative error {err:.2e}");
    assert!(err < 1e-4, "relative error {err}");
    let tmp = tempfile::tempdir().unwrap();
    copy_renamed(tmp.path(), model_first);
    let other = load_adapted(tmp.path(), Some(&peft), &dev, LoadOptions::default()).unwrap();
    assert_eq!(logits(&other.model, &ids), got);
}

/// `galley export` of a multimodal checkpoint writes its language model as llama.cpp's
/// converter does (a `gemma3` GGUF; the vision tower would go to a separate projector file,
/// which galley does not write), and it reads back with the same logits.
#[test]
fn a_multimodal_checkpoint_exports_its_language_model_to_gguf() {
    let _one = HEAVY.lock().unwrap_or_else(|e| e.into_inner());
    let dev = Device::Cpu;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("hf");
    std::fs::create_dir(&dir).unwrap();
    for f in ["model.safetensors", "tokenizer.json"] {
        std::fs::copy(fixture().join(f), dir.join(f)).unwrap();
    }
    // A score scale llama.cpp derives from the shapes (the fixture's is not; see parity.rs).
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture().join("config.json")).unwrap())
            .unwrap();
    cfg["text_config"]["query_pre_attn_scalar"] = 16.into();
    std::fs::write(dir.join("config.json"), cfg.to_string()).unwrap();
    let ck = galley_model::open(&dir, LoadOptions::default()).unwrap();
    let out = tmp.path().join("gemma3.gguf");
    galley_model::gguf_export::write_gguf(
        &ck,
        "gemma3-mm",
        galley_model::gguf_export::OutType::F32,
        &out,
    )
    .unwrap();
    let (ids, _) = ids_and_logits(&fixture().join("logits.json"));
    let want = logits(&load(&dir, &dev).unwrap().model, &ids);
    let back = load(&out, &dev).unwrap();
    assert_eq!(
        back.model.config.rope_scaling,
        galley_model::RopeScaling::Linear { factor: 8.0 }
    );
    let err = rel_err(&logits(&back.model, &ids), &want);
    println!("gemma3-multimodal through GGUF: relative error {err:.2e}");
    assert!(err < 1e-5, "relative error {err}");
}

/// A multimodal checkpoint's processor keeps the chat template in `chat_template.json`
/// (Gemma 3 4B's, where its `tokenizer_config.json` has none): galley reads it from there, and
/// a broken one is named by file.
#[test]
fn the_chat_template_is_read_from_chat_template_json() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    for f in ["config.json", "model.safetensors", "tokenizer.json"] {
        std::fs::copy(fixture().join(f), dir.join(f)).unwrap();
    }
    let template = "{% for m in messages %}<start_of_turn>{{ m.role }}\n{{ m.content }}<end_of_turn>\n{% endfor %}";
    std::fs::write(
        dir.join("chat_template.json"),
        serde_json::json!({ "chat_template": template }).to_string(),
    )
    .unwrap();
    let ck = galley_model::open(dir, LoadOptions::default()).unwrap();
    let t = ck.template.expect("the processor's template");
    let msgs: Vec<galley_core::Message> =
        serde_json::from_value(serde_json::json!([{"role": "user", "content": "hi"}])).unwrap();
    assert_eq!(
        t.render(&msgs, false, None).unwrap(),
        "<start_of_turn>user\nhi<end_of_turn>\n"
    );
    std::fs::write(dir.join("chat_template.json"), r#"{"chat_template": 3}"#).unwrap();
    let e = galley_model::open(dir, LoadOptions::default())
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("chat_template.json") && e.contains("chat_template"),
        "{e}"
    );
}
