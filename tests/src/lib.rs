//! Helpers for the end-to-end tests: they drive the `galley` binary the way a user does.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .unwrap()
}

/// The `galley` binary of this checkout (`cargo build -p galley`; scripts/test.sh does it).
pub fn galley_bin() -> PathBuf {
    let bin = std::env::var_os("GALLEY_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target/debug/galley"));
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build -p galley` first (scripts/test.sh does)",
        bin.display()
    );
    bin
}

pub fn plugins_dir() -> PathBuf {
    std::env::var_os("GALLEY_PLUGIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target/plugins"))
}

pub fn plugin(name: &str) -> PathBuf {
    let p = plugins_dir().join(format!("{name}.wasm"));
    assert!(
        p.exists(),
        "{} is missing: run scripts/build-plugins.sh",
        p.display()
    );
    p
}

/// Runs galley in `cwd` with a private component cache.
pub fn galley(cwd: &Path, args: &[&str]) -> Output {
    Command::new(galley_bin())
        .current_dir(cwd)
        .args(args)
        .env(
            "GALLEY_CACHE_DIR",
            repo_root().join("target/test-galley-cache"),
        )
        // Share the toolchains and the wasm std build with scripts/build-plugins.sh.
        .env(
            "GALLEY_TOOLCHAIN_DIR",
            repo_root().join("target/toolchains"),
        )
        .env("GALLEY_WASM_TARGET_DIR", repo_root().join("target/wasm"))
        .env_remove("RUST_LOG")
        .output()
        .expect("galley runs")
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Asserts a failed run printed exactly one `error:` line, and returns it.
pub fn one_line_error(o: &Output) -> String {
    assert!(
        !o.status.success(),
        "expected failure, got success: {}",
        stdout(o)
    );
    let err = stderr(o);
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line of error, got:\n{err}");
    assert!(lines[0].starts_with("error: "), "{err}");
    lines[0].to_string()
}

/// Debian's `docker-registry` (the CNCF distribution server), started on a free loopback port
/// with its storage in `dir`, for the OCI tests; killed on drop. scripts/setup.sh installs it.
pub struct DockerRegistry {
    child: std::process::Child,
    /// `127.0.0.1:PORT`
    pub host: String,
}

impl DockerRegistry {
    pub fn start(dir: &Path) -> Self {
        let bin = Path::new("/usr/bin/docker-registry");
        assert!(
            bin.exists(),
            "{} is missing: scripts/setup.sh installs Debian's docker-registry",
            bin.display()
        );
        std::fs::create_dir_all(dir).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let host = format!("127.0.0.1:{port}");
        let config = dir.join("registry.yml");
        std::fs::write(
            &config,
            format!("version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {host}\n", dir.join("data").display()),
        )
        .unwrap();
        let child = Command::new(bin)
            .args(["serve"])
            .arg(&config)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("docker-registry starts");
        let me = Self { child, host };
        // Ready when it answers the API's base endpoint.
        for _ in 0..200 {
            if let Ok(mut s) = std::net::TcpStream::connect(&me.host) {
                use std::io::{Read, Write};
                let _ = write!(s, "GET /v2/ HTTP/1.0\r\nHost: {}\r\n\r\n", me.host);
                let mut head = [0u8; 12];
                if s.read_exact(&mut head).is_ok() && head.starts_with(b"HTTP/1.") {
                    return me;
                }
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        panic!("docker-registry did not come up on {}", me.host);
    }
}

impl Drop for DockerRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A PEFT LoRA adapter for layer 0's q and v projections of the HF model in `model`, with
/// fixed non-zero weights (so it moves the outputs), written into `dir`.
pub fn write_adapter(model: &Path, dir: &Path) {
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(model.join("config.json")).unwrap()).unwrap();
    let h = cfg["hidden_size"].as_u64().unwrap() as usize;
    let kv = cfg["num_key_value_heads"].as_u64().unwrap() as usize
        * (h / cfg["num_attention_heads"].as_u64().unwrap() as usize);
    let r = 4;
    let mut tensors: Vec<(String, Vec<usize>, Vec<f32>)> = vec![];
    for (proj, out) in [("q_proj", h), ("v_proj", kv)] {
        let p = format!("base_model.model.model.layers.0.self_attn.{proj}");
        tensors.push((
            format!("{p}.lora_A.weight"),
            vec![r, h],
            (0..r * h)
                .map(|i| ((i * 7 % 11) as f32 - 5.0) * 0.05)
                .collect(),
        ));
        tensors.push((
            format!("{p}.lora_B.weight"),
            vec![out, r],
            (0..out * r)
                .map(|i| ((i * 5 % 13) as f32 - 6.0) * 0.05)
                .collect(),
        ));
    }
    let mut header = serde_json::Map::new();
    let mut data = vec![];
    for (name, shape, vals) in &tensors {
        let start = data.len();
        for v in vals {
            data.extend_from_slice(&v.to_le_bytes());
        }
        header.insert(name.clone(), serde_json::json!({"dtype": "F32", "shape": shape, "data_offsets": [start, data.len()]}));
    }
    let mut h = serde_json::Value::Object(header).to_string();
    while !h.len().is_multiple_of(8) {
        h.push(' ');
    }
    std::fs::create_dir_all(dir).unwrap();
    let mut file = (h.len() as u64).to_le_bytes().to_vec();
    file.extend_from_slice(h.as_bytes());
    file.extend_from_slice(&data);
    std::fs::write(dir.join("adapter_model.safetensors"), file).unwrap();
    std::fs::write(
        dir.join("adapter_config.json"),
        serde_json::json!({"peft_type": "LORA", "r": r, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"], "task_type": "CAUSAL_LM"}).to_string(),
    )
    .unwrap();
}

/// Every choice's log-likelihood in a `galley eval` output folder's samples.jsonl, document
/// by document.
pub fn loglikelihoods(out: &Path) -> Vec<f64> {
    std::fs::read_to_string(out.join("samples.jsonl"))
        .unwrap()
        .lines()
        .flat_map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["loglikelihoods"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p[0].as_f64().unwrap())
                .collect::<Vec<_>>()
        })
        .collect()
}

/// `samples.jsonl` of a `galley eval -o DIR` run, one value per document.
pub fn samples(dir: &Path) -> Vec<serde_json::Value> {
    jsonl(&dir.join("samples.jsonl"))
}

/// The values of a JSON-lines file (a run's completions.jsonl, say), one per line.
pub fn jsonl(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Sets `key` of a JSON object file: a model's `tokenizer_config.json` (its chat template)
/// or `config.json`.
pub fn set_json_key(path: &Path, key: &str, value: impl Into<serde_json::Value>) {
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    v[key] = value.into();
    std::fs::write(path, v.to_string()).unwrap();
}

/// A stand-in HTTP server on loopback for galley's remote engines: every POST body is given
/// to `answer` as JSON, which returns the status line (`"200 OK"`) and the JSON answer.
/// Returns the server's `/v1` URL; it serves until the test process ends.
pub fn loopback_json_server(
    answer: impl Fn(serde_json::Value) -> (&'static str, serde_json::Value) + Send + Sync + 'static,
) -> String {
    use std::io::{BufRead, BufReader, Read, Write};
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/v1", l.local_addr().unwrap());
    let answer = std::sync::Arc::new(answer);
    std::thread::spawn(move || {
        for stream in l.incoming() {
            let Ok(mut s) = stream else { continue };
            let answer = answer.clone();
            std::thread::spawn(move || {
                let mut r = BufReader::new(s.try_clone().unwrap());
                let mut len = 0usize;
                loop {
                    let mut line = String::new();
                    if r.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                        len = v.trim().parse().unwrap();
                    }
                    if line == "\r\n" {
                        break;
                    }
                }
                let mut body = vec![0u8; len];
                r.read_exact(&mut body).unwrap();
                let (status, v) = answer(serde_json::from_slice(&body).unwrap());
                let body = v.to_string();
                let _ = write!(
                    s,
                    "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
            });
        }
    });
    url
}

pub use galley_train::testing::HERMES_TEMPLATE;

/// A one-step GRPO run of `model` on `prompts.jsonl` (2 prompts x 2 completions, nearly
/// greedy, full fine-tuning into `grpo/`), with `plugins` — YAML lines under `grpo:` (its
/// rewards, tools, environments) — appended.
pub fn grpo_yaml(model: &str, plugins: &str) -> String {
    format!(
        "model: {{path: {model}}}
data: {{train: {{path: prompts.jsonl}}, max_length: 1024}}
training:
  method: grpo
  tuning: full
  output_dir: grpo
  batch_size: 4
  max_steps: 1
  learning_rate: 0.0001
  eval_on_start: false
grpo:
  num_generations: 2
  max_completion_length: 96
  temperature: 0.05
{plugins}"
    )
}

/// Full fine-tuning of `dir/model` on `dir/sft.jsonl` into `dir/sft/model`: 120 steps at a
/// high constant rate, enough for a tiny model to learn the few rows by heart (the tool
/// and environment tests teach one to call a function this way).
pub fn teach_by_sft(dir: &Path) {
    std::fs::write(
        dir.join("sft.yaml"),
        "model: {path: model}
data: {train: {path: sft.jsonl}, max_length: 1024}
training:
  method: sft
  tuning: full
  output_dir: sft
  batch_size: 8
  max_steps: 120
  learning_rate: 0.01
  lr_scheduler: constant
  warmup_steps: 0
  eval_on_start: false
",
    )
    .unwrap();
    let o = galley(dir, &["train", "-c", "sft.yaml"]);
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
}

/// A tiny chat model in `dir/model` whose tokenizer learned `text` (with `added` as whole
/// tokens) and whose template is [`HERMES_TEMPLATE`], with `positions` positions: the model
/// the tool-calling tests teach by SFT.
pub fn hermes_model(dir: &Path, text: &[String], added: &[&str], positions: usize) {
    galley_train::testing::tiny_chat_model_with(&dir.join("model"), text, added);
    set_json_key(
        &dir.join("model/tokenizer_config.json"),
        "chat_template",
        HERMES_TEMPLATE,
    );
    set_json_key(
        &dir.join("model/config.json"),
        "max_position_embeddings",
        positions,
    );
}
