//! What the `galley serve` tests share: a server on loopback started by the test (and killed
//! with it), the tiny chat model, and the openai client run from the tools venv.
#![allow(dead_code)]

use galley_e2e::*;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// A running `galley serve`; killed when dropped.
pub struct Server {
    child: Child,
    pub url: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn serve(dir: &Path, args: &[&str]) -> Server {
    let mut child = Command::new(galley_bin())
        .current_dir(dir)
        .arg("serve")
        .args(["--port", "0"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let url = line
        .split_whitespace()
        .find(|w| w.starts_with("http://127.0.0.1:"))
        .unwrap_or_else(|| panic!("no address in {line:?}"))
        .to_string();
    Server { child, url }
}

/// Serves SmolLM2 as `smol` without a prompt cache (one request must not start from
/// another's rows) and runs `script` (after COMMON) against it; it must print "ok".
pub fn serve_smollm2_and_run(script: &str) {
    let model = repo_root().join(".cache/models/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(
        model.exists(),
        "{} is missing: run scripts/fetch-models.sh",
        model.display()
    );
    let tmp = tempfile::tempdir().unwrap();
    let m = model.to_str().unwrap();
    let s = serve(
        tmp.path(),
        &["-m", m, "--name", "smol", "--prompt-cache-mib", "0"],
    );
    assert_eq!(
        client(tmp.path(), &s.url, &format!("{COMMON}{script}")).trim(),
        "ok"
    );
}

pub fn python() -> PathBuf {
    let py = repo_root().join(".cache/tools-venv/bin/python");
    assert!(
        py.exists(),
        "{} is missing: run scripts/fetch-data.sh (it installs the openai client there)",
        py.display()
    );
    py
}

pub fn client(dir: &Path, url: &str, script: &str) -> String {
    let out = Command::new(python())
        .current_dir(dir)
        .arg("-c")
        .arg(script)
        .env("URL", format!("{url}/v1"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "client failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The tiny chat model with room for long generations, and an adapter for it.
pub fn setup() -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    tiny_model(d, &[]);
    write_adapter(&d.join("model"), &d.join("adapter"));
    tmp
}

/// Writes the tiny chat model into `d/model`, with `added` as whole tokens of its
/// vocabulary, and room for long prompts.
pub fn tiny_model(d: &Path, added: &[&str]) {
    let text: Vec<String> = (0..120)
        .map(|i| format!("the number {i} is {} and the answer is yes", i * 3 % 17))
        .collect();
    galley_train::testing::tiny_chat_model_with(&d.join("model"), &text, added);
    let cfg_path = d.join("model/config.json");
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();
    cfg["max_position_embeddings"] = 4096.into();
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
}

/// Serves the tiny model and runs `script` (after COMMON) against it; it must print "ok".
pub fn serve_and_run(script: &str) {
    let tmp = setup();
    let d = tmp.path();
    let s = serve(d, &["-m", "model"]);
    assert_eq!(client(d, &s.url, &format!("{COMMON}{script}")).trim(), "ok");
}

pub const COMMON: &str = r#"
import os, sys, json, openai
c = openai.OpenAI(base_url=os.environ["URL"], api_key="none", max_retries=0)
def check(cond, what):
    if not cond:
        raise SystemExit("FAILED: " + what)
def post_json(path, body):
    import urllib.request
    root = os.environ["URL"][:-len("/v1")]
    req = urllib.request.Request(root + path, data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    return json.load(urllib.request.urlopen(req))
def one_token(text):
    ids = post_json("/tokenize", {"prompt": text, "add_special_tokens": False})["tokens"]
    check(len(ids) == 1, f"{text} is {ids}")
    return ids[0]
"#;

/// A Hermes-style template written for these tests (the tools in the system turn, calls in
/// `<tool_call>` blocks, results in `<tool_response>` blocks, as Qwen's and Hermes' do).
pub const TOOLS_TEMPLATE: &str = r#"{%- if tools %}<|im_start|>system
You may call these functions:
<tools>
{%- for tool in tools %}
{{ tool | tojson }}
{%- endfor %}
</tools>
Call one as <tool_call>
{"name": <name>, "arguments": <object>}
</tool_call><|im_end|>
{% endif %}
{%- for m in messages %}
{%- if m.role == "tool" %}<|im_start|>user
<tool_response>
{{ m.content }}
</tool_response><|im_end|>
{% elif m.tool_calls %}<|im_start|>assistant
{%- for c in m.tool_calls %}
<tool_call>
{"name": "{{ c.function.name }}", "arguments": {{ c.function.arguments | tojson }}}
</tool_call>
{%- endfor %}<|im_end|>
{% else %}<|im_start|>{{ m.role }}
{{ m.content }}<|im_end|>
{% endif %}
{%- endfor %}
{%- if add_generation_prompt %}<|im_start|>assistant
{% endif %}"#;
