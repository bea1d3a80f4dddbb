//! `galley infer` through the binary: SmolLM2 answers greedily, a JSONL batch, settings and
//! their errors, bad model files (each a one-line error naming the file), and `hf://` models
//! fetched from a Hub-like server on loopback that the test runs itself.

use galley_e2e::*;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::Mutex;

/// Model runs one at a time: candle's threads spin, and two models on two cores crawl.
static HEAVY: Mutex<()> = Mutex::new(());

fn smollm2() -> PathBuf {
    let p = repo_root().join(".cache/models/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(
        p.exists(),
        "{} is missing: run scripts/fetch-models.sh",
        p.display()
    );
    p
}

fn tiny() -> PathBuf {
    repo_root().join("host/model/tests/fixtures/tiny/llama-gqa-tied")
}

fn infer(dir: &Path, args: &[&str]) -> Output {
    let _one = HEAVY.lock().unwrap_or_else(|e| e.into_inner());
    let mut all = vec!["infer"];
    all.extend_from_slice(args);
    galley(dir, &all)
}

fn ok(o: Output) -> String {
    assert!(o.status.success(), "failed:\n{}{}", stdout(&o), stderr(&o));
    stdout(&o)
}

#[test]
fn smollm2_answers_the_capital_of_france() {
    let tmp = tempfile::tempdir().unwrap();
    let m = smollm2();
    // Quantized matmuls (the default) and f32 throughout, an f16 KV cache (the default on a
    // CPU) and an f32 one, give the same greedy answer.
    for extra in [
        &["-s", "dequantize=false"][..],
        &["-s", "dequantize=true"][..],
        &["-s", "kv_cache_dtype=f32"][..],
    ] {
        let mut args = vec![
            "-m",
            m.to_str().unwrap(),
            "-p",
            "What is the capital of France?",
            "-s",
            "temperature=0",
        ];
        args.extend_from_slice(extra);
        let out = ok(infer(tmp.path(), &args));
        assert_eq!(out.trim(), "The capital of France is Paris.", "{extra:?}");
    }
}

/// `--json-schema` (llama.cpp's `-j`): SmolLM2's answer, alone and in a JSONL batch, is one
/// object with the schema's keys in its order; a schema galley cannot enforce is an error
/// before anything loads. (Through a server: `tests/serve.rs`.)
#[test]
fn json_schema_holds_answers_to_the_schema() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let m = smollm2();
    let m = m.to_str().unwrap();
    std::fs::write(
        d.join("city.json"),
        r#"{"type": "object", "required": ["name", "country", "landmarks"], "additionalProperties": false,
            "properties": {"name": {"type": "string", "maxLength": 30}, "country": {"type": "string", "maxLength": 30},
                           "landmarks": {"type": "array", "items": {"type": "string", "maxLength": 40}, "minItems": 1, "maxItems": 3}}}"#,
    )
    .unwrap();
    let keys = |text: &str| -> Vec<String> {
        let v: serde_json::Value =
            serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("{e}: {text:?}"));
        let o = v.as_object().unwrap();
        assert!(
            (1..=3).contains(&o["landmarks"].as_array().unwrap().len()),
            "{text}"
        );
        // serde_json sorts keys: read the order from the text itself.
        let mut ks: Vec<(usize, String)> = o
            .keys()
            .map(|k| (text.find(&format!("\"{k}\"")).unwrap(), k.clone()))
            .collect();
        ks.sort();
        ks.into_iter().map(|(_, k)| k).collect()
    };
    let out = ok(infer(
        d,
        &[
            "-m",
            m,
            "-p",
            "Describe Paris.",
            "-j",
            "city.json",
            "-s",
            "temperature=0",
            "-s",
            "frequency_penalty=0.5",
        ],
    ));
    assert_eq!(keys(&out), ["name", "country", "landmarks"], "{out}");
    let rows =
        "{\"prompt\": \"Describe Rome.\"}\n{\"prompt\": \"Describe a small fishing town.\"}\n";
    std::fs::write(d.join("in.jsonl"), rows).unwrap();
    let inline = std::fs::read_to_string(d.join("city.json")).unwrap();
    ok(infer(
        d,
        &[
            "-m",
            m,
            "-i",
            "in.jsonl",
            "-o",
            "out.jsonl",
            "-j",
            &inline,
            "-s",
            "frequency_penalty=0.5",
            "-s",
            "seed=4",
        ],
    ));
    for line in std::fs::read_to_string(d.join("out.jsonl"))
        .unwrap()
        .lines()
    {
        let row: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(row["finish_reason"], "stop", "{row}");
        assert_eq!(
            keys(row["completion"].as_str().unwrap()),
            ["name", "country", "landmarks"],
            "{row}"
        );
    }
    let bad = r#"{"type": "object", "properties": {"age": {"type": "integer", "minimum": 0}}}"#;
    let o = infer(d, &["-m", "no-such-model.gguf", "-p", "x", "-j", bad]);
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(
        e.contains("--json-schema") && e.contains("/properties/age/minimum"),
        "{e}"
    );
}

/// A settings file names its model and schema relative to itself, and works from another
/// folder; a random tiny model, held to the schema, still answers with an instance of it.
#[test]
fn settings_paths_are_relative_to_the_settings_file() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let cfg = d.join("cfg");
    std::fs::create_dir_all(&cfg).unwrap();
    tiny_copy(&cfg);
    std::fs::write(
        cfg.join("answer.json"),
        r#"{"type": "object", "required": ["ok", "pick"],
            "properties": {"ok": {"type": "boolean"}, "pick": {"enum": ["x", "y", 3]}}}"#,
    )
    .unwrap();
    std::fs::write(
        cfg.join("infer.yaml"),
        "model: model
json_schema: answer.json
sampling:
  max_tokens: 300
  seed: 7
",
    )
    .unwrap();
    let out = ok(infer(d, &["cfg/infer.yaml", "-p", "hello"]));
    let v: serde_json::Value =
        serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out:?}"));
    assert!(
        v["ok"].is_boolean() && ["x", "y", "3"].contains(&v["pick"].to_string().trim_matches('"')),
        "{v}"
    );
    // A missing schema file is named as the settings file's key resolves it.
    std::fs::write(
        cfg.join("infer.yaml"),
        "model: model
json_schema: nope.json
",
    )
    .unwrap();
    let o = infer(d, &["cfg/infer.yaml", "-p", "hello"]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("json_schema cfg/nope.json"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn a_jsonl_batch_with_settings_from_yaml() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    std::fs::write(
        d.join("in.jsonl"),
        "{\"id\": 1, \"messages\": [{\"role\": \"user\", \"content\": \"What is 2+2?\"}]}\n{\"id\": 2, \"prompt\": \"Name a color.\"}\n\n{\"id\": 3, \"prompt\": \"Say hi.\"}\n",
    )
    .unwrap();
    std::fs::write(
        d.join("infer.yaml"),
        format!(
            "model: {}\nbatch_size: 2\nsampling:\n  temperature: 0\n  max_tokens: 6\n",
            smollm2().display()
        ),
    )
    .unwrap();
    let out = ok(infer(
        d,
        &["infer.yaml", "-i", "in.jsonl", "-o", "out.jsonl"],
    ));
    assert!(
        out.contains("3 conversations") && out.contains("tok/s"),
        "{out}"
    );
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(d.join("out.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    for (i, l) in lines.iter().enumerate() {
        assert_eq!(l["id"], i + 1);
        assert!(
            l["completion"].as_str().is_some_and(|c| !c.is_empty()),
            "{l}"
        );
        assert!(
            l["completion_tokens"].as_u64().unwrap() <= 6
                && l["prompt_tokens"].as_u64().unwrap() > 5,
            "{l}"
        );
        assert!(
            matches!(l["finish_reason"].as_str(), Some("stop" | "length")),
            "{l}"
        );
    }
    // A bad line is named by file and line; nothing is generated.
    std::fs::write(
        d.join("bad.jsonl"),
        "{\"prompt\": \"ok\"}\n{\"messages\": \"not a list\"}\n",
    )
    .unwrap();
    let line = one_line_error(&infer(
        d,
        &["infer.yaml", "-i", "bad.jsonl", "-o", "bad-out.jsonl"],
    ));
    assert!(
        line.contains("bad.jsonl:2") && line.contains("messages"),
        "{line}"
    );
}

#[test]
fn settings_errors_name_the_file_and_key() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    std::fs::write(
        d.join("s.yaml"),
        "model: x.gguf\nsampling:\n  temprature: 0.5\n",
    )
    .unwrap();
    let line = one_line_error(&infer(d, &["s.yaml"]));
    assert!(
        line.contains("s.yaml:3:") && line.contains("temprature"),
        "{line}"
    );
    let line = one_line_error(&infer(d, &["-m", "x.gguf", "-s", "top_p=2"]));
    assert!(line.contains("top_p"), "{line}");
    let line = one_line_error(&infer(d, &["-m", "nope.gguf", "-p", "hi"]));
    assert!(line.contains("nope.gguf"), "{line}");
    let line = one_line_error(&infer(d, &["-m", "x.gguf", "-s", "kv_cache_dtype=q8"]));
    assert!(
        line.contains("kv_cache_dtype") && line.contains("f16"),
        "{line}"
    );
}

/// Copies the tiny checkpoint into `dir` so a test can break one file of it.
fn tiny_copy(dir: &Path) -> PathBuf {
    let out = dir.join("model");
    std::fs::create_dir_all(&out).unwrap();
    for f in ["config.json", "model.safetensors", "tokenizer.json"] {
        std::fs::copy(tiny().join(f), out.join(f)).unwrap();
    }
    out
}

#[test]
fn bad_model_files_are_one_line_errors_naming_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let run = |model: &Path| {
        one_line_error(&infer(
            d,
            &[
                "-m",
                model.to_str().unwrap(),
                "-p",
                "hi",
                "-s",
                "max_tokens=2",
            ],
        ))
    };

    // A truncated GGUF (as from an interrupted download).
    let bytes = std::fs::read(smollm2()).unwrap();
    let cut = d.join("cut.gguf");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let line = run(&cut);
    assert!(
        line.contains("cut.gguf") && line.contains("truncated"),
        "{line}"
    );
    std::fs::write(&cut, &bytes[..100]).unwrap();
    assert!(run(&cut).contains("cut.gguf"));

    // Safetensors whose shapes disagree with config.json.
    let m = tiny_copy(&d.join("shape"));
    let cfg = std::fs::read_to_string(m.join("config.json"))
        .unwrap()
        .replace("\"intermediate_size\": 64", "\"intermediate_size\": 96");
    std::fs::write(m.join("config.json"), cfg).unwrap();
    let line = run(&m);
    assert!(
        line.contains("model.safetensors")
            && line.contains("mlp.gate_proj.weight")
            && line.contains("[64, 32]")
            && line.contains("[96, 32]"),
        "{line}"
    );

    // An architecture galley does not run.
    let m = tiny_copy(&d.join("arch"));
    let cfg = std::fs::read_to_string(m.join("config.json"))
        .unwrap()
        .replace("LlamaForCausalLM", "GPT2LMHeadModel");
    std::fs::write(m.join("config.json"), cfg).unwrap();
    let line = run(&m);
    assert!(
        line.contains("config.json") && line.contains("GPT2LMHeadModel"),
        "{line}"
    );

    // No tokenizer.
    let m = tiny_copy(&d.join("notok"));
    std::fs::remove_file(m.join("tokenizer.json")).unwrap();
    let line = run(&m);
    assert!(
        line.contains("notok/model") && line.contains("tokenizer"),
        "{line}"
    );

    // A chat template that does not compile.
    let m = tiny_copy(&d.join("tmpl"));
    std::fs::write(
        m.join("tokenizer_config.json"),
        r#"{"chat_template": "{% for m in messages %}{{ m.content }"}"#,
    )
    .unwrap();
    let line = run(&m);
    assert!(
        line.contains("tokenizer_config.json: chat_template"),
        "{line}"
    );
}

/// A Hub-like server: `GET /api/models/ORG/NAME/revision/REV` and
/// `GET /ORG/NAME/resolve/SHA/FILE`, serving `dir`'s files (with `lie` as a wrong SHA-256
/// for one file, when set). Returns its base URL; it serves until the process ends.
fn hub(dir: PathBuf, lie: Option<&'static str>) -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            let mut first = String::new();
            let mut r = BufReader::new(s.try_clone().unwrap());
            if r.read_line(&mut first).is_err() {
                continue;
            }
            loop {
                let mut h = String::new();
                if r.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                    break;
                }
            }
            let path = first.split_whitespace().nth(1).unwrap_or("/").to_string();
            let (status, body): (&str, Vec<u8>) =
                if path.starts_with("/api/models/org/tiny/revision/main") {
                    let siblings: Vec<serde_json::Value> = std::fs::read_dir(&dir)
                        .unwrap()
                        .flatten()
                        .map(|e| {
                            let name = e.file_name().to_string_lossy().into_owned();
                            let bytes = std::fs::read(e.path()).unwrap();
                            let mut v = serde_json::json!({"rfilename": name, "size": bytes.len()});
                            if name.ends_with(".safetensors") {
                                let sha = if lie == Some("model.safetensors") {
                                    "0".repeat(64)
                                } else {
                                    sha256_hex(&bytes)
                                };
                                v["lfs"] = serde_json::json!({"sha256": sha});
                            }
                            v
                        })
                        .collect();
                    (
                        "200 OK",
                        serde_json::json!({"sha": "0123abcd", "siblings": siblings})
                            .to_string()
                            .into_bytes(),
                    )
                } else if let Some(file) = path.strip_prefix("/org/tiny/resolve/0123abcd/") {
                    match std::fs::read(dir.join(file)) {
                        Ok(b) => ("200 OK", b),
                        Err(_) => ("404 Not Found", vec![]),
                    }
                } else {
                    ("404 Not Found", vec![])
                };
            let _ = write!(
                s,
                "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = s.write_all(&body);
        }
    });
    base
}

fn sha256_hex(bytes: &[u8]) -> String {
    // The e2e crate has no hashing dependency: ask the system's sha256sum.
    let mut child = std::process::Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(bytes).unwrap();
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    child.wait().unwrap();
    out.split_whitespace().next().unwrap().to_string()
}

fn infer_hf(d: &Path, endpoint: &str, args: &[&str]) -> Output {
    let _one = HEAVY.lock().unwrap_or_else(|e| e.into_inner());
    std::process::Command::new(galley_bin())
        .current_dir(d)
        .arg("infer")
        .args(args)
        .env("HF_ENDPOINT", endpoint)
        .env("GALLEY_MODEL_CACHE", d.join("models"))
        .env_remove("HF_TOKEN")
        .env_remove("RUST_LOG")
        .output()
        .unwrap()
}

#[test]
fn hf_models_download_once_verified_then_run_from_the_cache() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let url = hub(tiny(), None);
    let args = [
        "-m",
        "hf://org/tiny",
        "-p",
        "hello",
        "-s",
        "max_tokens=3",
        "-s",
        "temperature=0",
    ];
    ok(infer_hf(d, &url, &args));
    let snap = d.join("models/org--tiny/0123abcd");
    for f in ["config.json", "model.safetensors", "tokenizer.json"] {
        assert_eq!(
            std::fs::read(snap.join(f)).unwrap(),
            std::fs::read(tiny().join(f)).unwrap(),
            "{f}"
        );
    }
    assert!(
        !snap.join("logits.json").exists(),
        "only the files a checkpoint needs"
    );
    // Offline: an unreachable endpoint falls back to the complete earlier download.
    ok(infer_hf(d, "http://127.0.0.1:9", &args));
    let never = tempfile::tempdir().unwrap();
    let line = one_line_error(&infer_hf(never.path(), "http://127.0.0.1:9", &args));
    assert!(line.contains("127.0.0.1:9"), "{line}");
    // Unknown repository and a file whose SHA-256 is not what the Hub says.
    let line = one_line_error(&infer_hf(d, &url, &["-m", "hf://org/missing", "-p", "x"]));
    assert!(
        line.contains("/api/models/org/missing") && line.contains("404"),
        "{line}"
    );
    let liar = hub(tiny(), Some("model.safetensors"));
    let fresh = tempfile::tempdir().unwrap();
    let line = one_line_error(&infer_hf(fresh.path(), &liar, &args));
    assert!(
        line.contains("model.safetensors") && line.contains("SHA-256"),
        "{line}"
    );
    let left: Vec<_> = walk(&fresh.path().join("models"));
    assert!(
        left.iter()
            .all(|p| !p.ends_with("model.safetensors") && !p.to_string_lossy().ends_with(".part")),
        "{left:?}"
    );
}

fn walk(p: &Path) -> Vec<PathBuf> {
    let mut out = vec![];
    if let Ok(rd) = std::fs::read_dir(p) {
        for e in rd.flatten() {
            if e.path().is_dir() {
                out.extend(walk(&e.path()));
            } else {
                out.push(e.path());
            }
        }
    }
    out
}
