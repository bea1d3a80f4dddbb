//! Embeddings against sentence-transformers: two tiny random sentence-transformers folders
//! (`reference/make_embed_fixtures.py`) and the vectors its `encode` gave for five texts of
//! different lengths in one batch. Qwen3-Embedding's recipe (a bare Qwen3 base, EOS after each
//! text, last token, normalized, a query prompt, Matryoshka truncation) and every pooling mode
//! concatenated under two dense layers; then the first folder through a GGUF export, whose
//! `pooling_type` carries the recipe.

mod common;

use galley_model::{Embedder, Pool, load};
use std::path::{Path, PathBuf};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/embed")
        .join(name)
}

struct Expected {
    texts: Vec<String>,
    ids: Vec<Vec<u32>>,
    vectors: serde_json::Value,
}

fn expected(dir: &Path) -> Expected {
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap()).unwrap();
    Expected {
        texts: serde_json::from_value(v["texts"].clone()).unwrap(),
        ids: serde_json::from_value(v["ids"].clone()).unwrap(),
        vectors: v,
    }
}

fn vectors(e: &Expected, key: &str) -> Vec<Vec<f32>> {
    serde_json::from_value(e.vectors[key].clone()).unwrap()
}

/// Every vector within `tol` of the reference, relative to its largest value.
fn assert_close(got: &[Vec<f32>], want: &[Vec<f32>], tol: f32, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let err = common::rel_err(g, w);
        assert!(
            err < tol,
            "{what}: text {i} differs by {err}: {g:?} vs {w:?}"
        );
    }
}

fn embed_all(
    path: &Path,
    e: &Expected,
    prompt: Option<&str>,
    dims: Option<usize>,
    budget: usize,
) -> Vec<Vec<f32>> {
    let m = load(path, &candle_core::Device::Cpu).unwrap();
    let embedder = Embedder::for_model(path).unwrap();
    let rows: Vec<Vec<u32>> = e
        .texts
        .iter()
        .map(|t| embedder.tokens(&m.tokenizer, t, prompt).unwrap())
        .collect();
    if prompt.is_none() {
        assert_eq!(
            rows, e.ids,
            "token ids (the tokenizer's own special tokens)"
        );
    }
    embedder.embed(&m.model, &rows, dims, budget).unwrap()
}

#[test]
fn qwen3_embedding_recipe_matches_sentence_transformers() {
    let _g = common::HEAVY.lock();
    let dir = fixture("qwen3-last");
    let e = expected(&dir);
    let embedder = Embedder::for_model(&dir).unwrap();
    assert_eq!(embedder.pooling, vec![Pool::Last]);
    assert!(embedder.normalize && embedder.dense.is_empty());
    // One pass for all five texts, and one pass per text (the budget fits one row): padding
    // does not change a row's vector.
    for budget in [4096, 1] {
        assert_close(
            &embed_all(&dir, &e, None, None, budget),
            &vectors(&e, "plain"),
            2e-5,
            "plain",
        );
    }
    assert_close(
        &embed_all(&dir, &e, Some("query"), None, 4096),
        &vectors(&e, "query"),
        2e-5,
        "query",
    );
    // `dimensions` as OpenAI's API and vLLM give it: the first 16 values, normalized again
    // (sentence-transformers' `truncate_dim` cuts the normalized vector and leaves it so).
    let short = embed_all(&dir, &e, None, Some(16), 4096);
    let want: Vec<Vec<f32>> = vectors(&e, "dims16")
        .into_iter()
        .map(|v| {
            let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
            v.iter().map(|x| x / norm).collect()
        })
        .collect();
    assert!(short.iter().all(|v| v.len() == 16));
    assert_close(&short, &want, 2e-5, "truncated to 16");
}

#[test]
fn every_pooling_mode_and_dense_layers_match_sentence_transformers() {
    let _g = common::HEAVY.lock();
    let dir = fixture("llama-pools-dense");
    let e = expected(&dir);
    let embedder = Embedder::for_model(&dir).unwrap();
    assert_eq!(embedder.pooling.len(), 6);
    assert_eq!((embedder.dense.len(), embedder.normalize), (2, false));
    assert_eq!(embedder.dimension(32), 16);
    assert_close(
        &embed_all(&dir, &e, None, None, 4096),
        &vectors(&e, "plain"),
        2e-5,
        "pools + dense",
    );
}

#[test]
fn embedding_gemma_recipe_attends_both_ways_and_matches_sentence_transformers() {
    let _g = common::HEAVY.lock();
    let dir = fixture("gemma3-bidirectional");
    let e = expected(&dir);
    let m = load(&dir, &candle_core::Device::Cpu).unwrap();
    assert!(m.model.config.bidirectional);
    let embedder = Embedder::for_model(&dir).unwrap();
    assert_eq!(embedder.pooling, vec![Pool::Mean]);
    assert_eq!((embedder.dense.len(), embedder.normalize), (2, true));
    // Texts of 3 to 40 tokens under a window of 6 (3 each side) and a full layer; in one
    // left-padded pass, one at a time (no padding), and in passes of four long blocks of
    // queries (a budget of 64 puts the 40-token text alone).
    for budget in [4096, 64, 1] {
        let got = embed_all(&dir, &e, None, None, budget);
        assert_close(&got, &vectors(&e, "plain"), 2e-5, "bidirectional");
    }
    assert_close(
        &embed_all(&dir, &e, Some("query"), None, 4096),
        &vectors(&e, "query"),
        2e-5,
        "query prompt",
    );
    // A causal reading of the same weights gives other vectors: the test sees the direction.
    let mut causal = load(&dir, &candle_core::Device::Cpu).unwrap();
    causal.model.config.bidirectional = false;
    let rows: Vec<Vec<u32>> = e.ids.clone();
    let one_way = embedder.embed(&causal.model, &rows, None, 4096).unwrap();
    assert!(common::rel_err(&one_way[2], &vectors(&e, "plain")[2]) > 1e-2);
    // It does not generate: the first decode step is refused by name.
    let err = galley_model::generate(
        &m.model,
        &m.tokenizer,
        &[rows[0].clone()],
        &galley_model::SamplingParams {
            max_tokens: 3,
            ..Default::default()
        },
        &mut |_, _| {},
    )
    .err()
    .map(|e| e.to_string())
    .unwrap_or_default();
    assert!(err.contains("bidirectional"), "{err}");
    // As a GGUF it is llama.cpp's `gemma-embedding` (both ways, mean pooling, the dense layers
    // as `dense_2` / `dense_3`), and gives the same vectors read back.
    let ck = galley_model::open(&dir, Default::default()).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("gemma.gguf");
    galley_model::gguf_export::write_gguf(&ck, "x", galley_model::gguf_export::OutType::F32, &out)
        .unwrap();
    let back = load(&out, &candle_core::Device::Cpu).unwrap();
    assert!(back.model.config.bidirectional);
    let from_gguf = Embedder::for_model(&out).unwrap();
    assert_eq!(
        (
            from_gguf.pooling.as_slice(),
            from_gguf.dense.len(),
            from_gguf.normalize
        ),
        (&[Pool::Mean][..], 2, true)
    );
    assert_close(
        &embed_all(&out, &e, None, None, 4096),
        &vectors(&e, "plain"),
        2e-5,
        "from its GGUF",
    );
}

#[test]
fn bad_requests_and_folders_are_named() {
    let _g = common::HEAVY.lock();
    let dir = fixture("qwen3-last");
    let m = load(&dir, &candle_core::Device::Cpu).unwrap();
    let embedder = Embedder::for_model(&dir).unwrap();
    let err = embedder
        .tokens(&m.tokenizer, "x", Some("pasage"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("pasage") && err.contains("document, query"),
        "{err}"
    );
    let row = embedder.tokens(&m.tokenizer, "x", None).unwrap();
    let err = embedder
        .embed(&m.model, std::slice::from_ref(&row), Some(33), 64)
        .unwrap_err()
        .to_string();
    assert!(err.contains("dimensions 33") && err.contains("32"), "{err}");
    let long = vec![5u32; 65];
    let err = embedder
        .embed(&m.model, &[row, long], None, 64)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("input 1 has 65 tokens") && err.contains("64"),
        "{err}"
    );

    // A copy whose modules.json names a module galley does not run, and one whose Dense
    // weights are missing: each error names the file and the module.
    let tmp = tempfile::tempdir().unwrap();
    let copy = |name: &str| {
        let to = tmp.path().join(name);
        for entry in walk(&fixture("llama-pools-dense")) {
            let rel = entry.strip_prefix(fixture("llama-pools-dense")).unwrap();
            std::fs::create_dir_all(to.join(rel).parent().unwrap()).unwrap();
            std::fs::copy(&entry, to.join(rel)).unwrap();
        }
        to
    };
    let odd = copy("odd");
    let modules = odd.join("modules.json");
    let text = std::fs::read_to_string(&modules).unwrap();
    std::fs::write(
        &modules,
        text.replace("base.modules.dense.Dense", "models.LayerNorm"),
    )
    .unwrap();
    let err = Embedder::for_model(&odd).unwrap_err().to_string();
    assert!(
        err.contains("modules.json") && err.contains("LayerNorm"),
        "{err}"
    );
    let escape = copy("escape");
    let modules = escape.join("modules.json");
    let text = std::fs::read_to_string(&modules).unwrap();
    std::fs::write(&modules, text.replace("\"2_Dense\"", "\"../../etc\"")).unwrap();
    let err = Embedder::for_model(&escape).unwrap_err().to_string();
    assert!(err.contains("leaves the folder"), "{err}");
    let gone = copy("gone");
    std::fs::remove_file(gone.join("3_Dense/model.safetensors")).unwrap();
    let err = Embedder::for_model(&gone).unwrap_err().to_string();
    assert!(
        err.contains("3_Dense") && err.contains("model.safetensors"),
        "{err}"
    );
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        match e.path().is_dir() {
            true => out.extend(walk(&e.path())),
            false => out.push(e.path()),
        }
    }
    out
}

#[test]
fn a_gguf_export_carries_the_pooling_and_the_closing_eos() {
    let _g = common::HEAVY.lock();
    let dir = fixture("qwen3-last");
    let e = expected(&dir);
    let ck = galley_model::open(&dir, Default::default()).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("embed.gguf");
    galley_model::gguf_export::write_gguf(
        &ck,
        "embed",
        galley_model::gguf_export::OutType::F32,
        &out,
    )
    .unwrap();
    let embedder = Embedder::for_model(&out).unwrap();
    assert_eq!(
        (embedder.pooling.as_slice(), embedder.normalize),
        (&[Pool::Last][..], true)
    );
    // The GGUF's tokenizer appends EOS from `add_eos_token`, as the folder's post-processor did.
    assert_close(
        &embed_all(&out, &e, None, None, 4096),
        &vectors(&e, "plain"),
        2e-5,
        "from GGUF",
    );
    // Dense layers have no place in a GGUF: refused, not dropped.
    let ck = galley_model::open(&fixture("llama-pools-dense"), Default::default()).unwrap();
    let err = galley_model::gguf_export::write_gguf(
        &ck,
        "x",
        galley_model::gguf_export::OutType::F32,
        &tmp.path().join("x.gguf"),
    )
    .err()
    .unwrap()
    .to_string();
    assert!(err.contains("dense layers"), "{err}");
}
