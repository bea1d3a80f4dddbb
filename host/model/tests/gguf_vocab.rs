//! The tokenizer rebuilt from a GGUF's metadata against llama.cpp's own expectations: the
//! vocabulary-only GGUFs and the `.inp`/`.out` pairs llama.cpp's `test-tokenizer-0` checks
//! (its `models/` folder, from the llama-cpp-python source archive that
//! scripts/fetch-data.sh unpacks into `.cache/llama-vocab`). Each text must give llama.cpp's
//! ids exactly (no BOS, special-token text not parsed, as that test runs).

use candle_core::quantized::gguf_file;
use galley_model::Tokenizer;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

fn vocab_dir() -> PathBuf {
    let p = std::env::var_os("GALLEY_LLAMA_VOCAB")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.cache/llama-vocab")
        });
    assert!(
        p.join("ggml-vocab-llama-spm.gguf").exists(),
        "{} is missing llama.cpp's vocabulary files: run scripts/fetch-data.sh",
        p.display()
    );
    p
}

/// (text, ids) pairs of one vocabulary's test files.
fn cases(gguf: &Path) -> Vec<(String, Vec<u32>)> {
    let read = |ext: &str| {
        let mut p = gguf.as_os_str().to_owned();
        p.push(ext);
        std::fs::read_to_string(&p).unwrap()
    };
    let inp = read(".inp");
    let out = read(".out");
    // As test-tokenizer-0 splits: the separator ends every text, the last one included.
    let mut texts: Vec<&str> = inp.split("\n__ggml_vocab_test__\n").collect();
    if texts.last() == Some(&"") {
        texts.pop();
    }
    let ids: Vec<&str> = out.lines().collect();
    assert_eq!(texts.len(), ids.len(), "{}", gguf.display());
    texts
        .iter()
        .zip(ids)
        .map(|(t, i)| {
            (
                t.to_string(),
                i.split_whitespace().map(|x| x.parse().unwrap()).collect(),
            )
        })
        .collect()
}

fn tokenizer(gguf: &Path) -> galley_model::Result<Tokenizer> {
    let mut f = std::fs::File::open(gguf).unwrap();
    let content = gguf_file::Content::read(&mut f).unwrap();
    Tokenizer::from_gguf(gguf, &content.metadata)
}

/// The vocabularies galley rebuilds: SentencePiece-style (Llama 2 / Mistral, Phi-3) and
/// byte-level BPE with each split rule it knows.
const SUPPORTED: [&str; 7] = [
    "llama-spm",
    "phi-3",
    "gpt-2",
    "llama-bpe",
    "qwen2",
    "deepseek-llm",
    "deepseek-coder",
];

/// The first text `tok` does not give llama.cpp's ids for.
fn mismatch(tok: &Tokenizer, cases: &[(String, Vec<u32>)]) -> Option<String> {
    cases.iter().find_map(|(text, want)| {
        let got = tok.encode(text, false).unwrap();
        (&got != want).then(|| format!("{text:?}: galley {got:?}, llama.cpp {want:?}"))
    })
}

/// What `galley export` would write for `tok`, read back as llama.cpp reads it.
fn through_gguf(tok: &Tokenizer) -> Tokenizer {
    let md: HashMap<String, gguf_file::Value> = tok
        .gguf_metadata(tok.vocab_size())
        .unwrap()
        .into_iter()
        .collect();
    Tokenizer::from_gguf(Path::new("exported.gguf"), &md).unwrap()
}

#[test]
fn every_test_text_tokenizes_as_llama_cpp_does() {
    let dir = vocab_dir();
    for name in SUPPORTED {
        let gguf = dir.join(format!("ggml-vocab-{name}.gguf"));
        let tok = tokenizer(&gguf).unwrap_or_else(|e| panic!("{name}: {e}"));
        let cases = cases(&gguf);
        assert!(cases.len() > 30, "{name}: {} texts", cases.len());
        assert_eq!(mismatch(&tok, &cases), None, "{name}");
    }
}

#[test]
fn an_exported_vocabulary_tokenizes_as_its_source() {
    let dir = vocab_dir();
    for name in SUPPORTED {
        let gguf = dir.join(format!("ggml-vocab-{name}.gguf"));
        let tok = tokenizer(&gguf).unwrap();
        let cases = cases(&gguf);
        assert_eq!(mismatch(&through_gguf(&tok), &cases), None, "{name}");
        // As transformers keeps it (tokenizer.json, no scores: a SentencePiece vocabulary's
        // scores are derived from its merges on the way back).
        let tmp = tempfile::tempdir().unwrap();
        let json = tmp.path().join("tokenizer.json");
        tok.inner().save(&json, false).unwrap();
        let mut hf = Tokenizer::from_file(&json, tok.bos, tok.eos.clone()).unwrap();
        hf.add_bos = tok.add_bos;
        assert_eq!(mismatch(&hf, &cases), None, "{name} as tokenizer.json");
        let back = through_gguf(&hf);
        assert_eq!(mismatch(&back, &cases), None, "{name} from tokenizer.json");
        assert_eq!(back.add_bos, tok.add_bos, "{name}");
        assert_eq!(back.bos, tok.bos, "{name}");
    }
}

#[test]
fn sentencepiece_text_decodes_back_and_pieces_keep_their_spaces() {
    let gguf = vocab_dir().join("ggml-vocab-llama-spm.gguf");
    let tok = tokenizer(&gguf).unwrap();
    assert!(tok.add_bos, "Llama's vocabulary puts BOS first");
    assert_eq!(tok.encode("Hi", true).unwrap()[0], tok.bos.unwrap());
    for (text, ids) in cases(&gguf) {
        // SentencePiece's decoder drops the one space it prepended, and no other.
        assert_eq!(tok.decode(&ids, false).unwrap(), text);
    }
    let hello = tok.token_to_id("▁Hello").unwrap();
    assert_eq!(tok.piece(hello).unwrap(), " Hello");
    assert_eq!(tok.decode(&[hello], false).unwrap(), "Hello");
    let newline = tok.token_to_id("<0x0A>").unwrap();
    assert_eq!(tok.piece(newline).unwrap(), "\n");
}

#[test]
fn an_unsupported_vocabulary_is_an_error_naming_the_file_and_what_is_missing() {
    let dir = vocab_dir();
    let bert = dir.join("ggml-vocab-bert-bge.gguf");
    let e = tokenizer(&bert).err().unwrap().to_string();
    assert!(
        e.contains("ggml-vocab-bert-bge.gguf") && e.contains("`bert`"),
        "{e}"
    );
    // Token types that do not line up with the tokens: refused, not indexed past the end.
    let spm = dir.join("ggml-vocab-llama-spm.gguf");
    let mut f = std::fs::File::open(&spm).unwrap();
    let mut md = gguf_file::Content::read(&mut f).unwrap().metadata;
    if let Some(gguf_file::Value::Array(types)) = md.get_mut("tokenizer.ggml.token_type") {
        types.push(gguf_file::Value::I32(3));
    }
    let e = Tokenizer::from_gguf(&spm, &md).err().unwrap().to_string();
    assert!(e.contains("32001 token types for 32000 tokens"), "{e}");
    let falcon = dir.join("ggml-vocab-falcon.gguf");
    let e = tokenizer(&falcon).err().unwrap().to_string();
    assert!(e.contains("`falcon`") && e.contains("llama-bpe"), "{e}");
}
