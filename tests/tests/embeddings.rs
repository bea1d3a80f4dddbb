//! Embeddings through the binary: `galley embed` on a JSONL file run from another folder, and
//! `galley serve`'s `/v1/embeddings` called by the official `openai` Python client (which asks
//! for base64 by default), both against the vectors sentence-transformers computed for the
//! tiny Qwen3-Embedding-shaped folder (`host/model/reference/make_embed_fixtures.py`). The
//! server's vectors must not change while it decodes a long completion beside them, and its
//! refusals are OpenAI's 400s and 404s naming the input.

mod served;

use galley_e2e::*;
use served::*;

fn fixture() -> std::path::PathBuf {
    repo_root().join("host/model/tests/fixtures/embed/qwen3-last")
}

fn expected() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(fixture().join("expected.json")).unwrap())
        .unwrap()
}

fn close(a: &[f64], b: &[f64]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() < 2e-5)
}

#[test]
fn galley_embed_writes_sentence_transformers_vectors_beside_each_record() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let want = expected();
    let texts: Vec<String> = serde_json::from_value(want["texts"].clone()).unwrap();
    std::fs::create_dir(d.join("data")).unwrap();
    let lines: Vec<String> = texts
        .iter()
        .enumerate()
        .map(|(i, t)| match i {
            // Plain strings are records too.
            0 => serde_json::json!(t).to_string(),
            _ => serde_json::json!({"id": i, "body": t}).to_string(),
        })
        .collect();
    std::fs::write(d.join("data/texts.jsonl"), lines.join("\n") + "\n").unwrap();
    let model = fixture();
    let m = model.to_str().unwrap();
    let o = galley(
        d,
        &[
            "embed",
            "-m",
            m,
            "-i",
            "data/texts.jsonl",
            "-o",
            "out.jsonl",
            "--field",
            "body",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("5 texts"), "{}", stderr(&o));
    let out = jsonl(&d.join("out.jsonl"));
    for (i, rec) in out.iter().enumerate() {
        let got: Vec<f64> = serde_json::from_value(rec["embedding"].clone()).unwrap();
        let w: Vec<f64> = serde_json::from_value(want["plain"][i].clone()).unwrap();
        assert!(close(&got, &w), "text {i}: {got:?} vs {w:?}");
        assert_eq!(rec["body"], texts[i].as_str());
        if i > 0 {
            assert_eq!(rec["id"], i);
        }
    }
    // A line without the text is named by file and line; nothing is written.
    std::fs::write(
        d.join("data/bad.jsonl"),
        "{\"body\": \"a\"}\n{\"text\": \"b\"}\n",
    )
    .unwrap();
    let o = galley(
        d,
        &[
            "embed",
            "-m",
            m,
            "-i",
            "data/bad.jsonl",
            "-o",
            "bad.jsonl",
            "--field",
            "body",
        ],
    );
    assert!(!o.status.success());
    assert!(
        one_line_error(&o).contains("data/bad.jsonl:2") && one_line_error(&o).contains("`body`"),
        "{}",
        stderr(&o)
    );
    assert!(!d.join("bad.jsonl").exists());
    // A text past the model's context (64 positions) is named by its line too.
    let long = "x".repeat(80);
    std::fs::write(
        d.join("data/long.jsonl"),
        format!("{{\"body\": \"a\"}}\n\n{{\"body\": \"{long}\"}}\n"),
    )
    .unwrap();
    let o = galley(
        d,
        &["embed", "-m", m, "-i", "data/long.jsonl", "--field", "body"],
    );
    assert!(!o.status.success());
    let err = one_line_error(&o);
    assert!(
        err.contains("data/long.jsonl:3") && err.contains("81 tokens") && err.contains("64"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn the_openai_client_gets_sentence_transformers_vectors_from_galley_serve() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let model = fixture();
    let s = serve(d, &["-m", model.to_str().unwrap(), "--name", "emb"]);
    std::fs::copy(fixture().join("expected.json"), d.join("expected.json")).unwrap();
    let script = format!(
        "{COMMON}{}",
        r#"
import threading
want = json.load(open("expected.json"))
texts = want["texts"]
def close(a, b):
    return len(a) == len(b) and all(abs(x - y) < 2e-5 for x, y in zip(a, b))
def vectors(r):
    check([d.index for d in r.data] == list(range(len(r.data))), "indexes")
    return [d.embedding for d in r.data]

# The client's default (base64), floats, one text, token ids: the same vectors.
r = c.embeddings.create(model="emb", input=texts)
check(all(close(g, w) for g, w in zip(vectors(r), want["plain"])), "base64 vectors")
check(r.usage.prompt_tokens == sum(len(i) for i in want["ids"]), f"usage {r.usage}")
f = c.embeddings.create(model="emb", input=texts, encoding_format="float")
check(all(close(g, w) for g, w in zip(vectors(f), want["plain"])), "float vectors")
one = c.embeddings.create(model="emb", input=texts[2])
check(close(one.data[0].embedding, want["plain"][2]), "one text alone")
ids = c.embeddings.create(model="emb", input=want["ids"])
check(all(close(g, w) for g, w in zip(vectors(ids), want["plain"])), "token ids")
q = c.embeddings.create(model="emb", input=texts, extra_body={"prompt_name": "query"})
check(all(close(g, w) for g, w in zip(vectors(q), want["query"])), "query prompt")
short = c.embeddings.create(model="emb", input=texts, dimensions=16)
for g, w in zip(vectors(short), want["dims16"]):
    n = sum(x * x for x in w) ** 0.5
    check(close(g, [x / n for x in w]), "16 dimensions, normalized again")

# While the model decodes a long completion, embeddings are computed between its steps and
# come out the same.
done = []
def generate():
    done.append(c.completions.create(model="emb", prompt="hello", max_tokens=40, temperature=0))
t = threading.Thread(target=generate)
t.start()
during = [c.embeddings.create(model="emb", input=texts, encoding_format="float") for _ in range(3)]
t.join()
check(done and done[0].usage.completion_tokens > 0, "the completion ran")
for r in during:
    check(all(close(g, w) for g, w in zip(vectors(r), want["plain"])), "vectors during decoding")

# OpenAI's errors, naming what is wrong.
for kwargs, err, words in [
    (dict(model="nope", input="x"), openai.NotFoundError, ["nope"]),
    (dict(model="emb", input=[]), openai.BadRequestError, ["empty"]),
    (dict(model="emb", input=[[5, 999]]), openai.BadRequestError, ["input 0", "999", "vocabulary"]),
    (dict(model="emb", input=["a", "x" * 80]), openai.BadRequestError, ["input 1", "context"]),
    (dict(model="emb", input="x", dimensions=64), openai.BadRequestError, ["dimensions 64", "32"]),
    (dict(model="emb", input="x", encoding_format="int8"), openai.BadRequestError, ["int8"]),
    (dict(model="emb", input="x", extra_body={"prompt_name": "passage"}), openai.BadRequestError,
     ["passage", "document, query"]),
]:
    try:
        c.embeddings.create(**kwargs)
        check(False, f"{kwargs} accepted")
    except err as ex:
        msg = ex.body["message"]
        check(all(w in msg for w in words), f"{kwargs}: {msg}")
print("ok")
"#
    );
    assert_eq!(client(d, &s.url, &script).trim(), "ok");
}

/// EmbeddingGemma's recipe (attention both ways, mean pooling, two dense layers) through the
/// server; asked to generate, it refuses up front, and `galley train` refuses to train it
/// causally, naming the model.
#[test]
fn a_bidirectional_embedding_model_serves_vectors_and_refuses_to_generate_or_train() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let model = repo_root().join("host/model/tests/fixtures/embed/gemma3-bidirectional");
    let m = model.to_str().unwrap();
    std::fs::copy(model.join("expected.json"), d.join("expected.json")).unwrap();
    let s = serve(d, &["-m", m, "--name", "emb"]);
    let script = format!(
        "{COMMON}{}",
        r#"
want = json.load(open("expected.json"))
r = c.embeddings.create(model="emb", input=want["texts"])
got = [x.embedding for x in r.data]
check(all(len(g) == len(w) and all(abs(a - b) < 2e-5 for a, b in zip(g, w))
          for g, w in zip(got, want["plain"])), "EmbeddingGemma-shaped vectors")
for call in [lambda: c.completions.create(model="emb", prompt="hi", max_tokens=2),
             lambda: c.chat.completions.create(model="emb", messages=[{"role": "user", "content": "hi"}])]:
    try:
        call()
        check(False, "generation accepted")
    except openai.BadRequestError as ex:
        check("/v1/embeddings" in ex.body["message"], ex.body["message"])
print("ok")
"#
    );
    assert_eq!(client(d, &s.url, &script).trim(), "ok");
    drop(s);
    std::fs::write(
        d.join("train.yaml"),
        format!(
            "model: {{path: {m}}}\ndata: {{train: {{path: data.jsonl}}}}\ntraining: {{method: full, output_dir: out, max_steps: 1}}\n"
        ),
    )
    .unwrap();
    std::fs::write(
        d.join("data.jsonl"),
        "{\"messages\": [{\"role\": \"user\", \"content\": \"a\"}, {\"role\": \"assistant\", \"content\": \"b\"}]}\n",
    )
    .unwrap();
    let o = galley(d, &["train", "-c", "train.yaml"]);
    assert!(!o.status.success());
    let err = one_line_error(&o);
    assert!(
        err.contains("bidirectional") && err.contains("gemma3-bidirectional"),
        "{}",
        stderr(&o)
    );
}
