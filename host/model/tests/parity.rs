//! Logit parity with PyTorch + transformers (fixtures written once by
//! `reference/make_fixtures.py`): tiny random models of every family switch, and SmolLM2
//! dequantized to f32; the KV cache and left-padded batches must not change a logit; the
//! GGUF tokenizer must give transformers' ids.

use galley_model::{LoadOptions, load, load_with};
use std::path::{Path, PathBuf};

mod common;
use common::{HEAVY, rel_err, smollm2};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn logits_of(
    m: &galley_model::Llama,
    rows: &[Vec<u32>],
    pad: Option<&[Vec<bool>]>,
) -> Vec<Vec<Vec<f32>>> {
    // Keys and values in f32, as transformers keeps them (the f16 default has its own test).
    let mut cache = m.new_exact_cache(rows.len(), 64);
    m.forward(rows, pad, &mut cache, false)
        .unwrap()
        .to_vec3::<f32>()
        .unwrap()
}

fn tiny(name: &str) -> (galley_model::LoadedModel, Vec<u32>, Vec<Vec<f32>>) {
    let dir = fixtures().join("tiny").join(name);
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("logits.json")).unwrap()).unwrap();
    let ids: Vec<u32> = serde_json::from_value(v["ids"].clone()).unwrap();
    let want: Vec<Vec<f32>> = serde_json::from_value(v["logits"].clone()).unwrap();
    (
        load(&dir, &galley_model::default_device()).unwrap(),
        ids,
        want,
    )
}

/// The log-likelihood engine on the tiny GQA model (64 positions).
fn tiny_engine() -> galley_model::NativeEngine {
    galley_model::NativeEngine::open(
        &fixtures().join("tiny/llama-gqa-tied"),
        &[],
        &galley_model::default_device(),
        LoadOptions::default(),
    )
    .unwrap()
}

const FAMILIES: [&str; 9] = [
    "llama-gqa-tied",
    "llama3-rope-scaling",
    "qwen2-bias",
    "qwen3-qk-norm",
    "mistral",
    "gemma3",
    // The same language model inside a Gemma3ForConditionalGeneration (tests/multimodal.rs).
    "gemma3-multimodal",
    // Scores and logits soft-capped (caps 2 and 3, so that the tanh bends them).
    "gemma2",
    // Four layers, the fourth without RoPE.
    "smollm3",
];

#[test]
fn tiny_random_models_match_transformers() {
    let _one = HEAVY.lock().unwrap_or_else(|e| e.into_inner());
    for name in FAMILIES {
        let (m, ids, want) = tiny(name);
        let got = logits_of(&m.model, &[ids], None);
        let err = rel_err(&got[0].concat(), &want.concat());
        println!("{name}: relative error {err:.2e}");
        assert!(err < 1e-4, "{name}: relative error {err}");
    }
}

/// Every family written by `galley export` as an f32 GGUF and read back gives transformers'
/// logits: llama.cpp's names for Qwen2's biases and Qwen3's q/k norms, the Llama family's Q/K
/// rows permuted on the way out and back, Llama 3.1's rope scaling as llama.cpp's
/// `rope_freqs` tensor (a factor per frequency, read back as such).
#[test]
fn every_family_exported_to_gguf_reads_back_with_transformers_logits() {
    let _one = HEAVY.lock().unwrap_or_else(|e| e.into_inner());
    let tmp = tempfile::tempdir().unwrap();
    for name in FAMILIES {
        let dir = fixtures().join("tiny").join(name);
        let ck = galley_model::open(&dir, LoadOptions::default()).unwrap();
        let out = tmp.path().join(format!("{name}.gguf"));
        let written = galley_model::gguf_export::write_gguf(
            &ck,
            name,
            galley_model::gguf_export::OutType::F32,
            &out,
        );
        if name.starts_with("gemma") {
            // Its score scale is not the one llama.cpp derives (see the test below).
            let e = written.unwrap_err().to_string();
            assert!(e.contains("query_pre_attn_scalar 24"), "{e}");
            continue;
        }
        written.unwrap();
        let (_, ids, want) = tiny(name);
        let m = load(&out, &galley_model::default_device()).unwrap();
        let got = logits_of(&m.model, &[ids], None);
        let err = rel_err(&got[0].concat(), &want.concat());
        println!("{name} through GGUF: relative error {err:.2e}");
        if name == "llama3-rope-scaling" {
            let ck = galley_model::open(&out, LoadOptions::default()).unwrap();
            assert!(
                matches!(
                    ck.config.rope_scaling,
                    galley_model::RopeScaling::Factors(_)
                ),
                "{:?}",
                ck.config.rope_scaling
            );
        }
        assert!(err < 1e-4, "{name} through GGUF: relative error {err}");
    }
}

/// Gemma 3 and Gemma 2 through GGUF and back: llama.cpp's norm names (its `ffn_norm` is
/// Gemma's norm before the MLP), the norms' `1 + weight` stored as llama.cpp's converter
/// stores it, the sliding layers, their window and RoPE base as `gemma3.*` keys, Gemma 2's
/// soft-capping as `gemma2.*_logit_softcapping`. The fixture's score scale is changed to the
/// one llama.cpp derives (head_dim), and galley's logits from the HF folder (transformers' to
/// 1e-6 above) are the reference.
#[test]
fn gemma_exported_to_gguf_reads_back_with_its_logits() {
    let _one = HEAVY.lock().unwrap_or_else(|e| e.into_inner());
    for name in ["gemma3", "gemma2"] {
        let tmp = tempfile::tempdir().unwrap();
        let src = fixtures().join("tiny").join(name);
        let dir = tmp.path().join("hf");
        std::fs::create_dir(&dir).unwrap();
        for f in ["model.safetensors", "tokenizer.json"] {
            std::fs::copy(src.join(f), dir.join(f)).unwrap();
        }
        let mut cfg: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap())
                .unwrap();
        cfg["query_pre_attn_scalar"] = 16.into();
        std::fs::write(dir.join("config.json"), cfg.to_string()).unwrap();
        let ck = galley_model::open(&dir, LoadOptions::default()).unwrap();
        let out = tmp.path().join("model.gguf");
        galley_model::gguf_export::write_gguf(
            &ck,
            name,
            galley_model::gguf_export::OutType::F32,
            &out,
        )
        .unwrap();
        let (_, ids, _) = tiny(name);
        let dev = galley_model::default_device();
        let want = logits_of(
            &load(&dir, &dev).unwrap().model,
            std::slice::from_ref(&ids),
            None,
        );
        let back = load(&out, &dev).unwrap();
        let c = &back.model.config;
        let s = c.sliding.as_ref().unwrap();
        assert_eq!(
            (s.window, s.layers.clone(), s.rope_theta),
            (4, vec![true, false], 10_000.0)
        );
        assert_eq!(c.query_pre_attn_scalar, Some(16.0));
        assert_eq!(c.family, ck.config.family);
        assert_eq!(
            (c.attn_softcap, c.final_softcap),
            (ck.config.attn_softcap, ck.config.final_softcap)
        );
        let got = logits_of(&back.model, &[ids], None);
        let err = rel_err(&got[0].concat(), &want[0].concat());
        println!("{name} through GGUF: relative error {err:.2e}");
        assert!(err < 1e-5, "{name} through GGUF: relative error {err}");
    }
}

/// The logits of `ids` with its first 6 tokens prefilled into `cache`, then one at a time.
fn prefill_then_decode(
    m: &galley_model::Llama,
    mut cache: galley_model::Cache,
    ids: &[u32],
) -> Vec<Vec<f32>> {
    let mut got = m
        .forward(&[ids[..6].to_vec()], None, &mut cache, false)
        .unwrap()
        .to_vec3::<f32>()
        .unwrap()[0]
        .clone();
    for &t in &ids[6..] {
        let step = m.forward(&[vec![t]], None, &mut cache, false);
        got.extend(step.unwrap().to_vec3::<f32>().unwrap()[0].clone());
    }
    got
}

#[test]
fn the_kv_cache_and_left_padding_change_nothing() {
    let _one = HEAVY.lock().unwrap_or_else(|e| e.into_inner());
    for name in FAMILIES {
        let (m, ids, want) = tiny(name);
        let got = prefill_then_decode(&m.model, m.model.new_exact_cache(1, 64), &ids);
        assert!(
            rel_err(&got.concat(), &want.concat()) < 1e-4,
            "{name}: cached decode differs"
        );
        // A batch of the full sequence and a 4-token one, left-padded.
        let short = ids[..4].to_vec();
        let n = ids.len();
        let padded = [vec![0u32; n - 4], short.clone()].concat();
        let pad = vec![
            vec![false; n],
            (0..n).map(|i| i < n - 4).collect::<Vec<bool>>(),
        ];
        let got = logits_of(&m.model, &[ids.clone(), padded], Some(&pad));
        assert!(
            rel_err(&got[0].concat(), &want.concat()) < 1e-4,
            "{name}: batched row 0 differs"
        );
        assert!(
            rel_err(&got[1][n - 4..].concat(), &want[..4].concat()) < 1e-4,
            "{name}: left-padded row differs"
        );
    }
}

/// A CPU cache keeps keys and values in f16 by default (llama.cpp's default cache type): half
/// the bytes, logits within that rounding of transformers' (an f32 cache: within 1e-4), in a
/// prefill, a cached decode and a left-padded batch alike; f32 can be asked for.
#[test]
fn an_f16_cache_holds_half_the_bytes_within_its_rounding_of_transformers() {
    let _one = HEAVY.lock().unwrap_or_else(|e| e.into_inner());
    for name in FAMILIES {
        let (mut m, ids, want) = tiny(name);
        assert_eq!(m.model.kv_dtype(), candle_core::DType::F16);
        let cache = m.model.new_cache(1);
        let got = prefill_then_decode(&m.model, cache.clone(), &ids);
        let mut cache = cache;
        m.model
            .forward(std::slice::from_ref(&ids), None, &mut cache, false)
            .unwrap();
        let err = rel_err(&got.concat(), &want.concat());
        println!("{name}, f16 cache: relative error {err:.2e}");
        assert!(err < 5e-4, "{name}: f16 cache off by {err}");
        let mut exact = m.model.new_exact_cache(1, 64);
        m.model
            .forward(std::slice::from_ref(&ids), None, &mut exact, false)
            .unwrap();
        assert_eq!(2 * cache.bytes(), exact.bytes(), "{name}");
        // A left-padded row of a batch.
        let n = ids.len();
        let padded = [vec![0u32; n - 4], ids[..4].to_vec()].concat();
        let pad = vec![vec![false; n], (0..n).map(|i| i < n - 4).collect()];
        let mut cache = m.model.new_cache(2);
        let got = m
            .model
            .forward(&[ids.clone(), padded], Some(&pad), &mut cache, false)
            .unwrap()
            .to_vec3::<f32>()
            .unwrap();
        assert!(rel_err(&got[0].concat(), &want.concat()) < 5e-4, "{name}");
        assert!(rel_err(&got[1][n - 4..].concat(), &want[..4].concat()) < 5e-4);
        // f32 asked for: transformers' logits to 1e-4 through `new_cache` as well.
        m.model.set_kv_dtype(candle_core::DType::F32).unwrap();
        let mut cache = m.model.new_cache(1);
        let got = m
            .model
            .forward(std::slice::from_ref(&ids), None, &mut cache, false);
        let err = rel_err(
            &got.unwrap().to_vec3::<f32>().unwrap()[0].concat(),
            &want.concat(),
        );
        assert!(err < 1e-4, "{name}: f32 cache off by {err}");
        let e = m.model.set_kv_dtype(candle_core::DType::BF16).unwrap_err();
        assert!(e.to_string().contains("f16 or f32"), "{e}");
    }
}

fn read_f32(path: &Path) -> Vec<f32> {
    std::fs::read(path)
        .unwrap()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

#[test]
fn smollm2_dequantized_matches_transformers() {
    let _one = HEAVY.lock().unwrap_or_else(|e| e.into_inner());
    let dir = fixtures().join("smollm2");
    let p: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("prompt.json")).unwrap()).unwrap();
    let ids: Vec<u32> = serde_json::from_value(p["ids"].clone()).unwrap();
    let vocab = p["vocab"].as_u64().unwrap() as usize;
    let want = read_f32(&dir.join("logits.f32"));
    let m = load_with(
        &smollm2(),
        &galley_model::default_device(),
        LoadOptions {
            dequantize: true,
            ..Default::default()
        },
    )
    .unwrap();
    // The template renders the prompt transformers rendered, token for token.
    let text = m
        .template
        .as_ref()
        .unwrap()
        .render(
            &[galley_core::Message::new(
                "user",
                "What is the capital of France?",
            )],
            true,
            None,
        )
        .unwrap();
    assert_eq!(text, p["text"].as_str().unwrap());
    assert_eq!(m.tokenizer.encode(&text, false).unwrap(), ids);
    let got = logits_of(&m.model, std::slice::from_ref(&ids), None);
    let n = ids.len();
    let got: Vec<f32> = got[0][n - 2..].concat();
    assert_eq!(got.len(), 2 * vocab);
    let err = rel_err(&got, &want);
    println!("smollm2 f32: relative error {err:.2e}");
    assert!(err < 1e-4, "relative error {err}");
}

#[test]
fn gguf_tokenizer_gives_transformers_ids() {
    let _one = HEAVY.lock().unwrap_or_else(|e| e.into_inner());
    let m = load(&smollm2(), &galley_model::default_device()).unwrap();
    let cases: Vec<serde_json::Value> = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("smollm2/tokens.json")).unwrap(),
    )
    .unwrap();
    for c in cases {
        let text = c["text"].as_str().unwrap();
        let want: Vec<u32> = serde_json::from_value(c["ids"].clone()).unwrap();
        let got = m.tokenizer.encode(text, false).unwrap();
        assert_eq!(got, want, "{text:?}");
        assert_eq!(
            m.tokenizer.decode(&got, false).unwrap(),
            text,
            "round trip of {text:?}"
        );
    }
}

/// A checkpoint split into shards with `model.safetensors.index.json` loads to the same logits.
#[test]
fn sharded_checkpoints_load_like_single_files() {
    let _one = HEAVY.lock().unwrap_or_else(|e| e.into_inner());
    let src = fixtures().join("tiny/qwen2-bias");
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    for f in ["config.json", "tokenizer.json"] {
        std::fs::copy(src.join(f), dir.join(f)).unwrap();
    }
    let all =
        candle_core::safetensors::load(src.join("model.safetensors"), &candle_core::Device::Cpu)
            .unwrap();
    let mut names: Vec<&String> = all.keys().collect();
    names.sort();
    let (a, b) = names.split_at(names.len() / 2);
    let mut map = serde_json::Map::new();
    for (file, part) in [
        ("model-00001-of-00002.safetensors", a),
        ("model-00002-of-00002.safetensors", b),
    ] {
        let shard: std::collections::HashMap<String, candle_core::Tensor> = part
            .iter()
            .map(|n| ((*n).clone(), all[*n].clone()))
            .collect();
        candle_core::safetensors::save(&shard, dir.join(file)).unwrap();
        for n in part {
            map.insert((*n).clone(), file.into());
        }
    }
    std::fs::write(
        dir.join("model.safetensors.index.json"),
        serde_json::json!({"metadata": {}, "weight_map": map}).to_string(),
    )
    .unwrap();
    let (single, ids, want) = tiny("qwen2-bias");
    let sharded = load(dir, &candle_core::Device::Cpu).unwrap();
    let got = logits_of(&sharded.model, std::slice::from_ref(&ids), None);
    assert!(rel_err(&got[0].concat(), &want.concat()) < 1e-4);
    assert_eq!(logits_of(&single.model, &[ids], None), got);
    // A shard the index names but the folder lacks is named in the error.
    std::fs::remove_file(dir.join("model-00002-of-00002.safetensors")).unwrap();
    let e = load(dir, &candle_core::Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("model.safetensors.index.json")
            && e.contains("model-00002-of-00002.safetensors"),
        "{e}"
    );
}

/// Log-softmax of `logits` at `token`, in f64.
fn logprob(logits: &[f32], token: u32) -> f64 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let z: f64 = logits.iter().map(|&x| ((x as f64) - max).exp()).sum();
    logits[token as usize] as f64 - max - z.ln()
}

#[test]
fn rolling_log_likelihoods_of_a_text_past_the_window_equal_its_windows_scored_one_by_one() {
    // lm-evaluation-harness's loglikelihood_rolling: a text longer than max_length is scored
    // in windows, each token once. The engine's batched, shared-prefix scoring must give what
    // plain forward passes over each window give.
    use galley_core::Engine;
    let mut e = tiny_engine();
    let text = "the quick brown fox jumps over the lazy dog while seven wizards quietly box jugs of liquid; ".repeat(4);
    let tokens = e.tokenizer.encode(&text, false).unwrap();
    let max_len = 24;
    assert!(tokens.len() > 3 * max_len, "{} tokens", tokens.len());
    e.max_length = Some(max_len);
    let got = e
        .loglikelihood_rolling(&[text.clone(), "the dog".into()], &mut |_| {})
        .unwrap();
    let prefix = e
        .tokenizer
        .bos
        .or(e.tokenizer.eos.first().copied())
        .unwrap();
    let windows = galley_model::engine::rolling_windows(&tokens, prefix, max_len);
    // Every token predicted once, in order, and no window longer than the model takes.
    let predicted: Vec<u32> = windows.iter().flat_map(|(_, c)| c.clone()).collect();
    assert_eq!(predicted, tokens);
    assert!(
        windows
            .iter()
            .all(|(c, p)| c.len() + p.len() - 1 <= max_len)
    );
    let mut want = 0.0;
    let mut want_tokens = Vec::new();
    for (ctx, cont) in &windows {
        let mut input = ctx.clone();
        input.extend_from_slice(&cont[..cont.len() - 1]);
        let logits = logits_of(&e.model, &[input], None).remove(0);
        for (j, &t) in cont.iter().enumerate() {
            let lp = logprob(&logits[ctx.len() - 1 + j], t);
            want += lp;
            want_tokens.push(lp);
        }
    }
    assert_eq!(got[0].token_logprobs.len(), tokens.len());
    assert!(
        (got[0].logprob - want).abs() < 1e-3 * want.abs(),
        "{} vs {want}",
        got[0].logprob
    );
    for (g, w) in got[0].token_logprobs.iter().zip(&want_tokens) {
        assert!((*g as f64 - w).abs() < 1e-3, "{g} vs {w}");
    }
    // A short text is one window: what an empty-context request gives.
    let one = e
        .loglikelihood(
            &[galley_core::LoglikelihoodRequest {
                context: String::new(),
                continuation: "the dog".into(),
            }],
            &mut |_| {},
        )
        .unwrap();
    // The same up to summation order: in the rolling call it shares passes with the long
    // text's windows, whose lengths choose the attention kernel's blocking.
    assert_eq!(got[1].greedy, one[0].greedy);
    assert_eq!(got[1].token_logprobs.len(), one[0].token_logprobs.len());
    assert!(rel_err(&got[1].token_logprobs, &one[0].token_logprobs) < 1e-6);
}

/// One token per row through the growing cache `c`: each row's logits.
fn grow_step(m: &galley_model::Llama, c: &mut galley_model::Cache, ids: &[u32]) -> Vec<Vec<f32>> {
    let rows: Vec<Vec<u32>> = ids.iter().map(|&t| vec![t]).collect();
    let out = m.forward(&rows, None, c, true).unwrap();
    out.squeeze(1).unwrap().to_vec2::<f32>().unwrap()
}

/// The fixed-shape decode step (what a GPU replays as a CUDA graph) gives the growing cache's
/// logits: after a left-padded batched prefill, and from an empty cache. For Gemma the
/// positions run past its fixtures' window of 4, so the sliding layers' ring of 4 slots
/// wraps as the steps go (a left-padded row included), under Gemma 2's soft caps: after
/// prefills of 4 positions (the ring exactly full) and of 7 (the ring filled from the
/// prefill's last 4, wrapped, padding among them), and in a decoder smaller than the window.
#[test]
fn the_fixed_shape_decoder_matches_the_growing_cache() {
    use galley_model::decode::Decoder;
    let _one = HEAVY.lock().unwrap_or_else(|e| e.into_inner());
    for name in FAMILIES {
        let (m, ids, _) = tiny(name);
        let m = &m.model;
        let n = ids.len();
        for (prefill, padding) in [(4, 2), (7, 5)] {
            let tok = |i: usize| ids[i % n];
            let rows = [
                (0..prefill).map(tok).collect::<Vec<_>>(),
                (0..prefill)
                    .map(|i| if i < padding { 0 } else { tok(i + 3) })
                    .collect(),
            ];
            let pad = vec![
                vec![false; prefill],
                (0..prefill).map(|i| i < padding).collect(),
            ];
            // The fixed-shape buffers hold the activations' dtype, as this cache does.
            let mut cache = m.new_exact_cache(2, 64);
            m.forward(&rows, Some(&pad), &mut cache, true).unwrap();
            let mut dec = Decoder::from_cache(m, &cache, 16).unwrap();
            for i in 0..6 {
                let next = [tok(i + 6), tok(i + 1)];
                let want = grow_step(m, &mut cache, &next);
                let got = dec.step(&next).unwrap().to_vec2::<f32>().unwrap();
                for r in 0..2 {
                    let err = rel_err(&got[r], &want[r]);
                    assert!(
                        err < 1e-5,
                        "{name}: prefill {prefill}, step {i}, row {r}: relative error {err}"
                    );
                }
            }
            assert_eq!(dec.len(), prefill + 6);
        }
        // A decoder of 3 positions, under Gemma's window: its ring is the capacity.
        let mut small = Decoder::new(m, 1, 3).unwrap();
        let mut cache = m.new_exact_cache(1, 64);
        for &t in &ids[..3] {
            let (want, got) = (grow_step(m, &mut cache, &[t]), small.step(&[t]).unwrap());
            let err = rel_err(&got.to_vec2::<f32>().unwrap()[0], &want[0]);
            assert!(err < 1e-5, "{name}: capacity 3: relative error {err}");
        }
        let mut fresh = Decoder::new(m, 1, 8).unwrap();
        let mut cache = m.new_exact_cache(1, 64);
        for &t in &ids[..8.min(n)] {
            let (want, got) = (grow_step(m, &mut cache, &[t]), fresh.step(&[t]).unwrap());
            let err = rel_err(&got.to_vec2::<f32>().unwrap()[0], &want[0]);
            assert!(err < 1e-5, "{name}: from empty: relative error {err}");
        }
        if n >= 8 {
            let full = fresh.step(&[1]).unwrap_err().to_string();
            assert!(
                full.starts_with("the decoder is full (8 positions)"),
                "{name}: {full}"
            );
        }
    }
}

/// Padding between a row's tokens (a resumed prefix, then its new part left-padded) takes
/// slots but not a window's room: each row's ring holds its own last tokens, so the fixed
/// decoder gives the growing cache's logits with the padding inside the sliding window of
/// the next token (1 new token) and behind it, from a cache the sliding layers trimmed to
/// their last 3 slots (4 new tokens).
#[test]
fn the_fixed_shape_decoder_counts_each_rows_tokens_not_its_slots() {
    use galley_model::decode::Decoder;
    let _one = HEAVY.lock().unwrap_or_else(|e| e.into_inner());
    for name in ["gemma3", "gemma2", "llama-gqa-tied"] {
        let (m, ids, _) = tiny(name);
        let m = &m.model;
        let tok = |i: usize| ids[i % ids.len()];
        // Three positions each, then a second part: row 1's two new slots of padding come
        // right before its new tokens.
        for own in [1usize, 4] {
            let mut cache = m.new_exact_cache(2, 64);
            let first: Vec<Vec<u32>> = (0..2)
                .map(|r| (0..3).map(|i| tok(r + i)).collect())
                .collect();
            m.forward(&first, None, &mut cache, true).unwrap();
            let n = 2 + own;
            let second = vec![
                (0..n).map(tok).collect::<Vec<_>>(),
                (0..n).map(|i| tok(i + 5)).collect(),
            ];
            let pad = vec![vec![false; n], (0..n).map(|i| i < 2).collect()];
            m.forward(&second, Some(&pad), &mut cache, true).unwrap();
            if name != "llama-gqa-tied" {
                // Layer 0 slides (window 4): 6 slots and none trimmed, or 9 trimmed to 3.
                let held = cache.len() - cache.first_held(0).unwrap();
                assert_eq!(held, [6, 3][own / 4], "{name}: {own} own: slots held");
            }
            let mut dec = Decoder::from_cache(m, &cache, 32).unwrap();
            for i in 0..6 {
                let next = [tok(i + 7), tok(i + 9)];
                let want = grow_step(m, &mut cache, &next);
                let got = dec.step(&next).unwrap().to_vec2::<f32>().unwrap();
                for r in 0..2 {
                    let err = rel_err(&got[r], &want[r]);
                    assert!(err < 1e-5, "{name}: {own} own, step {i}, row {r}: {err}");
                }
            }
        }
    }
}

/// Contexts that share a long prefix (a task's few-shot examples) have it computed once and
/// its cache rows copied, with padding between it and each row's own tokens: every score must
/// be what the same requests give with sharing off, and what a plain forward pass gives.
#[test]
fn a_shared_prefix_scores_as_if_every_context_ran_alone() {
    use galley_core::{Engine, LoglikelihoodRequest};
    let _one = HEAVY.lock().unwrap_or_else(|e| e.into_inner());
    let mut e = tiny_engine();
    // The tiny model takes 64 positions.
    let shots = "Q: 2+2? A: 4.\n".repeat(2);
    let pairs = [
        ("Q: cat? A:", " sat"),
        ("Q: cat sat on? A:", " mat"),
        ("Q: dog? A:", " ran away"),
        ("Q: dog? A:", " slept"),
    ];
    let mut requests: Vec<LoglikelihoodRequest> = pairs
        .iter()
        .map(|(q, a)| LoglikelihoodRequest {
            context: format!("{shots}{q}"),
            continuation: a.to_string(),
        })
        .collect();
    requests.push(LoglikelihoodRequest {
        context: "unrelated words here".into(),
        continuation: " yes".into(),
    });
    let shared_tokens = e.tokenizer.encode(&shots, false).unwrap().len();
    assert!(shared_tokens > 16, "{shared_tokens}");
    e.share_prefix_from = 16;
    let shared = e.loglikelihood(&requests, &mut |_| {}).unwrap();
    e.share_prefix_from = usize::MAX;
    let alone = e.loglikelihood(&requests, &mut |_| {}).unwrap();
    for (i, (a, b)) in shared.iter().zip(&alone).enumerate() {
        assert_eq!(a.token_logprobs.len(), b.token_logprobs.len());
        assert!(
            (a.logprob - b.logprob).abs() < 1e-4 * b.logprob.abs().max(1.0),
            "request {i}: {} vs {}",
            a.logprob,
            b.logprob
        );
        assert_eq!(a.greedy, b.greedy, "request {i}");
    }
    // And a plain forward pass over one context and its continuation.
    let ctx = e.tokenizer.encode(&requests[2].context, false).unwrap();
    let whole = e
        .tokenizer
        .encode(
            &format!("{}{}", requests[2].context, requests[2].continuation),
            false,
        )
        .unwrap();
    assert_eq!(&whole[..ctx.len()], ctx.as_slice());
    let logits = logits_of(&e.model, &[whole[..whole.len() - 1].to_vec()], None).remove(0);
    let want: f64 = (ctx.len()..whole.len())
        .map(|j| logprob(&logits[j - 1], whole[j]))
        .sum();
    assert!(
        (shared[2].logprob - want).abs() < 1e-4 * want.abs().max(1.0),
        "{} vs {want}",
        shared[2].logprob
    );
}

/// Generation from prompts that share a long prefix (a few-shot prompt) prefills it once:
/// every row must decode the tokens, with the log-probabilities, it decodes alone.
#[test]
fn generation_after_a_shared_prefix_decodes_as_each_prompt_alone() {
    use galley_model::{SamplingParams, generate_sharing};
    let _one = HEAVY.lock().unwrap_or_else(|e| e.into_inner());
    let m = load(
        &fixtures().join("tiny/llama-gqa-tied"),
        &galley_model::default_device(),
    )
    .unwrap();
    let shots = "Q: 2+2? A: 4.\n".repeat(2);
    let prompts: Vec<Vec<u32>> = ["Q: cat? A:", "Q: cat sat on the? A:", "Q: dog ran? A:"]
        .iter()
        .map(|q| m.tokenizer.encode(&format!("{shots}{q}"), false).unwrap())
        .collect();
    let shared = m.tokenizer.encode(&shots, false).unwrap().len();
    assert!(shared > 16, "{shared}");
    let params = SamplingParams {
        temperature: 0.0,
        max_tokens: 8,
        ..SamplingParams::default()
    };
    let run = |prompts: &[Vec<u32>], from: usize| {
        generate_sharing(
            &m.model,
            &m.tokenizer,
            prompts,
            &params,
            from,
            &mut |_, _| {},
        )
        .unwrap()
    };
    let together = run(&prompts, 16);
    for (i, p) in prompts.iter().enumerate() {
        let alone = run(std::slice::from_ref(p), usize::MAX).remove(0);
        assert_eq!(together[i].tokens, alone.tokens, "prompt {i}");
        assert!(
            rel_err(&together[i].logprobs, &alone.logprobs) < 1e-4,
            "prompt {i}: {:?} vs {:?}",
            together[i].logprobs,
            alone.logprobs
        );
    }
}

/// Regression: asking a 64-position model for more tokens than it has positions failed the
/// request ("position 64 is past the model's 64 positions"). The answer now ends where the
/// context does (a length stop), and a long prompt keeps its last half-context of tokens.
#[test]
fn a_budget_past_the_context_ends_the_answer_at_the_context() {
    use galley_core::engine::{Engine, GenerateRequest};
    let _one = HEAVY.lock().unwrap_or_else(|e| e.into_inner());
    let mut e = tiny_engine();
    let ask = |prompt: &str, max_tokens: usize| GenerateRequest {
        prompt: prompt.into(),
        until: vec![],
        max_tokens,
        temperature: 0.0,
        seed: 0,
        json_schema: None,
    };
    let long = "the cat sat on the mat and ".repeat(20);
    let out = e
        .generate(
            &[ask("Q: cat? A:", 500), ask(&long, 100), ask("Q:", 4)],
            &mut |_| {},
        )
        .unwrap();
    let prompt_len = |p: &str| e.tokenizer.encode(p, false).unwrap().len();
    assert!(
        out[0].tokens <= 64 - prompt_len("Q: cat? A:"),
        "{}",
        out[0].tokens
    );
    assert!(
        out[1].tokens <= 32,
        "the long prompt kept 32 tokens: {}",
        out[1].tokens
    );
    assert!(out[2].tokens <= 4);
}
