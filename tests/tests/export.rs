//! `galley export`: a model (with LoRA adapters folded in) written as GGUF for llama.cpp and
//! as an HF folder. What is written is read back by galley — the GGUF's log-likelihoods
//! equal the source's (f32) or stay close (q8_0) on a scored task — and by the Python
//! ecosystem: gguf-py (llama.cpp's own reader) finds llama.cpp's tensor names, types and
//! metadata, and the permuted Q/K rows.

use galley_e2e::*;
use std::path::Path;
use std::process::Output;

fn ok(o: Output) -> String {
    assert!(o.status.success(), "failed:\n{}{}", stdout(&o), stderr(&o));
    stdout(&o)
}

/// The tiny model, a LoRA adapter for it and a multiple-choice task over local data.
fn project() -> tempfile::TempDir {
    project_with(galley_train::testing::tiny_chat_model)
}

/// A project whose `model` folder `write_model` writes.
fn project_with(write_model: impl FnOnce(&Path)) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    write_model(&d.join("model"));
    write_adapter(&d.join("model"), &d.join("adapter"));
    let mut mc = String::new();
    for i in 0..10 {
        let row = serde_json::json!({"q": format!("the number {i} is"), "choices": [format!("{}", i * 3 % 17), "yes", "no and"], "answer": 0});
        mc.push_str(&format!("{row}\n"));
    }
    std::fs::write(d.join("mc.jsonl"), mc).unwrap();
    std::fs::write(
        d.join("mc.yaml"),
        "task: mc\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: mc.jsonl\n\
         output_type: multiple_choice\ntest_split: test\ndoc_to_text: \"{{q}}\"\n\
         doc_to_target: answer\ndoc_to_choice: choices\nmetric_list:\n  - metric: acc\n",
    )
    .unwrap();
    tmp
}

/// Every choice's log-likelihood, document by document, when `model` (and `adapter`) score
/// the task.
fn scores(d: &Path, model: &str, adapter: Option<&str>, out: &str) -> Vec<f64> {
    let mut args = vec!["eval", "-m", model, "--tasks", "mc.yaml", "-o", out];
    if let Some(a) = adapter {
        args.extend(["--adapter", a]);
    }
    ok(galley(d, &args));
    loglikelihoods(&d.join(out))
}

/// Runs `script` with gguf-py (the tools venv scripts/fetch-data.sh makes) on `args`; it
/// must print "ok".
fn gguf_py(script: &str, args: &[&Path]) {
    let py = repo_root().join(".cache/tools-venv/bin/python");
    assert!(
        py.exists(),
        "{} is missing: run scripts/fetch-data.sh",
        py.display()
    );
    let o = std::process::Command::new(py)
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .unwrap();
    assert_eq!(ok(o).trim(), "ok");
}

fn max_diff(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

#[test]
fn an_exported_gguf_scores_as_its_source_adapters_folded_in() {
    let tmp = project();
    let d = tmp.path();
    let base = scores(d, "model", None, "base");
    let adapted = scores(d, "model", Some("adapter"), "adapted");
    assert!(
        max_diff(&base, &adapted) > 1e-3,
        "the adapter changes scores"
    );

    ok(galley(
        d,
        &["export", "model", "-o", "f32.gguf", "--outtype", "f32"],
    ));
    assert!(max_diff(&scores(d, "f32.gguf", None, "f32"), &base) < 1e-4);
    let out = ok(galley(
        d,
        &[
            "export",
            "model",
            "--adapter",
            "adapter",
            "-o",
            "tuned.gguf",
            "--outtype",
            "f32",
        ],
    ));
    assert!(out.contains("tuned.gguf"), "{out}");
    assert!(max_diff(&scores(d, "tuned.gguf", None, "tuned"), &adapted) < 1e-4);

    // q8_0: a quarter of f32's bytes for the weights, scores close to the source's.
    ok(galley(
        d,
        &["export", "model", "-o", "q8.gguf", "--outtype", "q8_0"],
    ));
    let size = |f: &str| std::fs::metadata(d.join(f)).unwrap().len();
    assert!(
        size("q8.gguf") < size("f32.gguf") / 2,
        "{} vs {}",
        size("q8.gguf"),
        size("f32.gguf")
    );
    let q8 = max_diff(&scores(d, "q8.gguf", None, "q8"), &base);
    assert!(q8 < 0.05 && q8 > 0.0, "q8_0 differs by {q8}");

    // And back: a GGUF to an HF folder (dequantized), which scores as the GGUF does.
    ok(galley(d, &["export", "tuned.gguf", "-o", "tuned-hf"]));
    for f in ["model.safetensors", "config.json", "tokenizer.json"] {
        assert!(d.join("tuned-hf").join(f).exists(), "{f}");
    }
    assert!(max_diff(&scores(d, "tuned-hf", None, "back"), &adapted) < 1e-4);
}

#[test]
fn gguf_py_reads_llama_cpps_names_types_and_metadata() {
    let tmp = project();
    let d = tmp.path();
    ok(galley(
        d,
        &["export", "model", "-o", "m.gguf", "--outtype", "q8_0"],
    ));
    let script = r#"
import json, sys
import numpy as np
from gguf import GGUFReader, GGMLQuantizationType as T
from gguf.quants import dequantize
from safetensors.numpy import load_file
r = GGUFReader(sys.argv[1])
def field(k):
    f = r.fields[k]
    return f.contents()
def check(c, what):
    if not c:
        raise SystemExit("FAILED: " + what)
check(field("general.architecture") == "llama", "architecture")
check(field("llama.block_count") == 2 and field("llama.embedding_length") == 32, "sizes")
check(field("llama.attention.head_count") == 4 and field("llama.attention.head_count_kv") == 2, "heads")
check(field("tokenizer.ggml.model") == "gpt2" and field("tokenizer.ggml.pre") == "gpt-2", "tokenizer")
# Merges: an array typed as strings (the part after the array type), as llama.cpp demands.
check(int(r.fields["tokenizer.ggml.merges"].parts[3][0]) == 8, "merges' type")
tok = json.load(open(sys.argv[2] + "/tokenizer.json"))
check(len(field("tokenizer.ggml.tokens")) == len(tok["model"]["vocab"]) + 2, "tokens")
check("<|im_start|>" in field("tokenizer.chat_template"), "chat template")
types = dict(zip(field("tokenizer.ggml.tokens"), field("tokenizer.ggml.token_type")))
check(types["<|im_end|>"] == 3, "control token")
t = {x.name: x for x in r.tensors}
names = {"token_embd.weight", "output_norm.weight", "blk.0.attn_q.weight", "blk.1.ffn_down.weight", "blk.0.attn_norm.weight"}
check(names <= set(t), f"names {sorted(t)}")
check(t["blk.0.attn_q.weight"].tensor_type == T.Q8_0 and t["blk.0.attn_norm.weight"].tensor_type == T.F32, "types")
# llama.cpp's Q row order: within each head, HF's halves interleaved.
hf = load_file(sys.argv[2] + "/model.safetensors")["model.layers.0.self_attn.q_proj.weight"]
q = dequantize(t["blk.0.attn_q.weight"].data, T.Q8_0).reshape(hf.shape)
heads, d = 4, 8
perm = hf.reshape(heads, 2, d // 2, -1).swapaxes(1, 2).reshape(hf.shape)
check(np.abs(q - perm).max() < 0.01 and np.abs(q - hf).max() > 0.01, "q rows permuted")
print("ok")
"#;
    gguf_py(script, &[&d.join("m.gguf"), &d.join("model")]);
}

/// A tiny model with Llama 2's SentencePiece vocabulary (from llama.cpp's test files), kept
/// as transformers keeps it: a BPE over `▁` with byte fallback, BOS first.
fn sentencepiece_model(dir: &Path) {
    let vocab = repo_root().join(".cache/llama-vocab/ggml-vocab-llama-spm.gguf");
    assert!(
        vocab.exists(),
        "{} is missing: run scripts/fetch-data.sh",
        vocab.display()
    );
    let mut f = std::fs::File::open(&vocab).unwrap();
    let md = candle_core::quantized::gguf_file::Content::read(&mut f)
        .unwrap()
        .metadata;
    let tok = galley_model::Tokenizer::from_gguf(&vocab, &md).unwrap();
    let mut inner = tok.inner().clone();
    let bos = tokenizers::processors::template::TemplateProcessing::builder()
        .try_single("<s> $A")
        .unwrap()
        .special_tokens(vec![("<s>".to_string(), tok.bos.unwrap())])
        .build()
        .unwrap();
    inner.with_post_processor(Some(bos));
    let template = "{% for m in messages %}{% if m['role'] == 'user' %}[INST] {{ m['content'] }} [/INST]{% else %} {{ m['content'] }}</s>{% endif %}{% endfor %}";
    let tc =
        serde_json::json!({"chat_template": template, "bos_token": "<s>", "eos_token": "</s>"});
    galley_train::testing::tiny_model_with_tokenizer(dir, &inner, Some("<s>"), "</s>", &tc);
}

/// Llama 2's and Mistral's kind of vocabulary is written as llama.cpp's `llama` tokenizer
/// (tokens, scores derived from the merges, byte and control types, the space prefix), and
/// the GGUF scores a task as its source does: galley rebuilds from it the tokenizer the HF
/// folder has (and `host/model/tests/gguf_vocab.rs` holds that rebuild to llama.cpp's ids).
#[test]
fn a_sentencepiece_vocabulary_exports_as_llama_cpps_llama_tokenizer() {
    let tmp = project_with(sentencepiece_model);
    let d = tmp.path();
    let base = scores(d, "model", None, "base");
    ok(galley(
        d,
        &["export", "model", "-o", "spm.gguf", "--outtype", "f32"],
    ));
    assert!(max_diff(&scores(d, "spm.gguf", None, "gguf"), &base) < 1e-4);
    // A SentencePiece token's text mid-answer keeps its `▁` as a space: structured output
    // from the GGUF (random weights, so only the mask makes it valid) parses, spaces and all.
    let schema = r#"{"type": "object", "required": ["note", "pick"], "properties": {
        "note": {"type": "string", "minLength": 3, "maxLength": 24}, "pick": {"enum": ["a b", "c"]}}}"#;
    for seed in ["1", "2", "3"] {
        let out = ok(galley(
            d,
            &[
                "infer",
                "-m",
                "spm.gguf",
                "-p",
                "hello there",
                "-j",
                schema,
                "-s",
                "max_tokens=400",
                "-s",
                &format!("seed={seed}"),
            ],
        ));
        let v: serde_json::Value =
            serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out:?}"));
        let note = v["note"].as_str().unwrap();
        assert!((3..=24).contains(&note.chars().count()), "{v}");
        assert!(["a b", "c"].contains(&v["pick"].as_str().unwrap()), "{v}");
    }
    // scripts/gguf-check.sh keeps the file to hand to llama.cpp itself.
    if let Some(keep) = std::env::var_os("GALLEY_KEEP_SPM_GGUF") {
        std::fs::copy(d.join("spm.gguf"), keep).unwrap();
    }
    let script = r#"
import sys
from gguf import GGUFReader
r = GGUFReader(sys.argv[1])
def field(k):
    return r.fields[k].contents()
def check(c, what):
    if not c:
        raise SystemExit("FAILED: " + what)
check(field("tokenizer.ggml.model") == "llama", "model")
check("tokenizer.ggml.merges" not in r.fields and "tokenizer.ggml.pre" not in r.fields, "no BPE keys")
tokens = field("tokenizer.ggml.tokens")
scores = field("tokenizer.ggml.scores")
check(len(tokens) == 32000 and len(scores) == 32000, "sizes")
types = dict(zip(tokens, field("tokenizer.ggml.token_type")))
check(types["<unk>"] == 2 and types["<s>"] == 3 and types["<0x0A>"] == 6 and types["▁the"] == 1, "types")
s = dict(zip(tokens, scores))
check(s["▁the"] > s["▁Hello"], "scores follow the merges")
check(field("tokenizer.ggml.add_space_prefix") is True, "space prefix")
check(field("tokenizer.ggml.add_bos_token") is True and field("tokenizer.ggml.bos_token_id") == 1, "BOS")
check(field("tokenizer.ggml.unknown_token_id") == 0, "unknown")
print("ok")
"#;
    gguf_py(script, &[&d.join("spm.gguf")]);
}

/// An adapter folder on its own becomes a llama.cpp LoRA adapter GGUF: gguf-py finds
/// llama.cpp's `adapter` metadata and `.lora_a` / `.lora_b` tensors, B's Q rows permuted as the
/// base's are; and `--adapter lora.gguf` reads it back, scoring as the PEFT folder does.
#[test]
fn an_adapter_becomes_a_llama_cpp_lora_gguf() {
    let tmp = project();
    let d = tmp.path();
    let o = galley(d, &["export", "adapter", "-o", "lora.gguf"]);
    assert!(
        !o.status.success() && stderr(&o).contains("--base"),
        "{}",
        stderr(&o)
    );
    let o = galley(d, &["export", "adapter", "--base", "model", "-o", "lora"]);
    assert!(
        !o.status.success() && stderr(&o).contains(".gguf"),
        "{}",
        stderr(&o)
    );
    ok(galley(
        d,
        &[
            "export",
            "adapter",
            "--base",
            "model",
            "-o",
            "lora.gguf",
            "--outtype",
            "f32",
        ],
    ));
    let script = r#"
import json, sys
import numpy as np
from gguf import GGUFReader
from safetensors.numpy import load_file
r = GGUFReader(sys.argv[1])
cfg = json.load(open(sys.argv[2] + "/adapter_config.json"))
st = load_file(sys.argv[2] + "/adapter_model.safetensors")
def check(c, what):
    if not c:
        raise SystemExit("FAILED: " + what)
f = lambda k: r.fields[k].contents()
check(f("general.type") == "adapter" and f("adapter.type") == "lora", "adapter metadata")
check(f("general.architecture") == "llama", "architecture")
check(abs(f("adapter.lora.alpha") - cfg["lora_alpha"]) < 1e-6, "alpha")
t = {x.name: np.asarray(x.data) for x in r.tensors}
pre = "base_model.model.model.layers.0.self_attn."
a, b = st[pre + "q_proj.lora_A.weight"], st[pre + "q_proj.lora_B.weight"]
check(np.array_equal(t["blk.0.attn_q.weight.lora_a"].reshape(a.shape), a), "A as is")
perm = b.reshape(4, 2, b.shape[0] // 8, -1).swapaxes(1, 2).reshape(b.shape)
check(np.array_equal(t["blk.0.attn_q.weight.lora_b"].reshape(b.shape), perm), "B rows permuted")
vb = st[pre + "v_proj.lora_B.weight"]
check(np.array_equal(t["blk.0.attn_v.weight.lora_b"].reshape(vb.shape), vb), "V's B as is")
check(len(t) == 2 * sum(1 for k in st if k.endswith("lora_A.weight")), f"tensors {sorted(t)}")
print("ok")
"#;
    gguf_py(script, &[&d.join("lora.gguf"), &d.join("adapter")]);
    // And galley reads it back as an adapter: the same scores as the PEFT folder.
    let peft = scores(d, "model", Some("adapter"), "peft");
    let gguf = scores(d, "model", Some("lora.gguf"), "gguf");
    assert!(max_diff(&peft, &gguf) < 1e-4, "{}", max_diff(&peft, &gguf));
    let base = scores(d, "model", None, "base");
    assert!(max_diff(&peft, &base) > 1e-3);
    // A model GGUF is not an adapter.
    ok(galley(
        d,
        &["export", "model", "-o", "m.gguf", "--outtype", "f32"],
    ));
    let o = galley(
        d,
        &[
            "eval",
            "-m",
            "model",
            "--adapter",
            "m.gguf",
            "--tasks",
            "mc.yaml",
        ],
    );
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("not a LoRA adapter GGUF"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn export_errors_name_the_input() {
    let tmp = project();
    let d = tmp.path();
    let o = galley(d, &["export", "nope", "-o", "x.gguf"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("nope"), "{}", stderr(&o));
    let o = galley(d, &["export", "model", "-o", "x.gguf", "--outtype", "q5_k"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("q5_k"), "{}", stderr(&o));
    let o = galley(
        d,
        &["export", "model", "--adapter", "missing", "-o", "x.gguf"],
    );
    assert!(!o.status.success());
    assert!(stderr(&o).contains("missing"), "{}", stderr(&o));
    assert!(!d.join("x.gguf").exists());
    // Flags that would change nothing are refused, not ignored.
    for (args, flag) in [
        (
            &["export", "model", "-o", "hf", "--outtype", "q8_0"][..],
            "--outtype",
        ),
        (
            &["export", "model", "-o", "hf", "--name", "x"][..],
            "--name",
        ),
        (
            &["export", "model", "--base", "model", "-o", "x.gguf"][..],
            "--base",
        ),
    ] {
        let o = galley(d, args);
        assert!(
            !o.status.success() && stderr(&o).contains(flag),
            "{}",
            stderr(&o)
        );
    }
    assert!(!d.join("hf").exists() && !d.join("x.gguf").exists());
    // The output may not be the input: it is memory-mapped while it is read.
    ok(galley(
        d,
        &["export", "model", "-o", "m.gguf", "--outtype", "f32"],
    ));
    let before = std::fs::read(d.join("m.gguf")).unwrap();
    for (input, out) in [("m.gguf", "m.gguf"), ("model", "model")] {
        let o = galley(d, &["export", input, "-o", out]);
        assert!(!o.status.success());
        assert!(stderr(&o).contains("is the input"), "{}", stderr(&o));
    }
    assert_eq!(std::fs::read(d.join("m.gguf")).unwrap(), before);
}

/// A Llama 3.1-scaled model through GGUF and back to an HF folder: the GGUF carries the
/// scaling as llama.cpp's `rope_freqs` factors, config.json says them again as `rope_scaling`
/// settings, and the model gives the logits it started with.
#[test]
fn llama_3_rope_scaling_survives_gguf_and_back() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let src = repo_root().join("host/model/tests/fixtures/tiny/llama3-rope-scaling");
    let src = src.to_str().unwrap();
    ok(galley(
        d,
        &["export", src, "-o", "l3.gguf", "--outtype", "f32"],
    ));
    ok(galley(d, &["export", "l3.gguf", "-o", "back"]));
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("back/config.json")).unwrap())
            .unwrap();
    assert_eq!(cfg["rope_scaling"]["rope_type"], "llama3", "{cfg}");
    let dev = candle_core::Device::Cpu;
    let logits = |path: &Path| {
        let m = galley_model::load(path, &dev).unwrap().model;
        let mut cache = m.new_cache(1);
        let ids: Vec<u32> = (1..40).collect();
        m.forward(&[ids], None, &mut cache, false)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
    };
    let (a, b) = (logits(Path::new(src)), logits(&d.join("back")));
    let diff = a
        .iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max);
    assert!(diff < 1e-4, "logits differ by {diff}");
}
