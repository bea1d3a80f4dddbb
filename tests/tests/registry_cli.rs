//! The registry through the `galley` command, as a team would use a shared folder registry:
//! keygen, trust, publish, search, install with a lockfile, offline reinstall, yank, and a
//! score run using the installed package by name.

use galley_e2e::*;
use std::path::Path;
use std::process::{Command, Output};

fn run(dir: &Path, args: &[&str]) -> Output {
    Command::new(galley_bin())
        .current_dir(dir)
        .args(args)
        .env("GALLEY_CONFIG_DIR", dir.join("config"))
        .env("GALLEY_CACHE_DIR", dir.join("cache"))
        .env("GALLEY_REGISTRY", dir.join("registry"))
        .env_remove("RUST_LOG")
        .output()
        .unwrap()
}

fn ok(o: Output) -> String {
    assert!(o.status.success(), "failed:\n{}{}", stdout(&o), stderr(&o));
    stdout(&o)
}

#[test]
fn keygen_publish_install_offline_yank() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let out = ok(run(d, &["plugin", "keygen"]));
    let id = out.lines().next().unwrap().split_whitespace().last().unwrap().to_string();
    let math = plugin("math-answer");
    let fmt = plugin("format");
    ok(run(d, &["plugin", "publish", math.to_str().unwrap(), "--namespace", "galley", "--key", &id]));
    ok(run(d, &["plugin", "publish", fmt.to_str().unwrap(), "--namespace", "galley", "--key", &id]));
    let line = one_line_error(&run(d, &["plugin", "publish", math.to_str().unwrap(), "--namespace", "galley", "--key", &id]));
    assert!(line.contains("already published"), "{line}");
    let listing = ok(run(d, &["plugin", "search", "math"]));
    assert!(listing.contains("galley/math-answer") && !listing.contains("galley/format"), "{listing}");

    let out = ok(run(d, &["plugin", "install", "galley/math-answer@^0.1"]));
    assert!(out.contains(&format!("signed by {id}")), "{out}");
    ok(run(d, &["plugin", "install", "galley/format"]));
    let lock = std::fs::read_to_string(d.join("galley.lock")).unwrap();
    assert!(lock.contains("galley/math-answer") && lock.contains("galley/format") && lock.contains(&id), "{lock}");

    let listing = ok(run(d, &["plugin", "list"]));
    assert!(listing.contains("galley/format") && listing.contains("ok"), "{listing}");
    std::fs::write(d.join(".galley/plugins/galley/format.wasm"), b"tampered").unwrap();
    assert!(ok(run(d, &["plugin", "list"])).contains("MODIFIED"));
    ok(run(d, &["plugin", "remove", "galley/format"]));
    assert!(!d.join(".galley/plugins/galley/format.wasm").exists());
    assert!(!std::fs::read_to_string(d.join("galley.lock")).unwrap().contains("galley/format"));
    ok(run(d, &["plugin", "install", "galley/format"]));

    // The installed package by name in a score config.
    std::fs::write(d.join("c.jsonl"), "{\"completion\": \"#### 4\", \"metadata\": {\"answer\": 4}}\n").unwrap();
    std::fs::write(d.join("score.yaml"), "rewards:\n  - plugin: galley/math-answer\ncompletions: c.jsonl\n").unwrap();
    assert!(ok(run(d, &["score", "score.yaml"])).contains("total   1.00"));

    // Offline reinstall from the cache, with the registry gone.
    std::fs::remove_dir_all(d.join(".galley")).unwrap();
    std::fs::rename(d.join("registry"), d.join("registry-away")).unwrap();
    let out = ok(run(d, &["plugin", "install", "--offline"]));
    assert!(out.contains("galley/math-answer") && out.contains("galley/format"), "{out}");
    std::fs::rename(d.join("registry-away"), d.join("registry")).unwrap();

    // Yank: the locked version still installs; without the lock nothing fits.
    ok(run(d, &["plugin", "yank", "galley/format@0.1.0"]));
    ok(run(d, &["plugin", "install"]));
    std::fs::remove_file(d.join("galley.lock")).unwrap();
    let line = one_line_error(&run(d, &["plugin", "install", "galley/format"]));
    assert!(line.contains("0.1.0 (yanked)"), "{line}");

    // A stranger's key is not trusted by another user.
    let other = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(other.path()).unwrap();
    let o = Command::new(galley_bin())
        .current_dir(other.path())
        .args(["plugin", "install", "galley/math-answer"])
        .env("GALLEY_CONFIG_DIR", other.path().join("config"))
        .env("GALLEY_CACHE_DIR", other.path().join("cache"))
        .env("GALLEY_REGISTRY", d.join("registry"))
        .output()
        .unwrap();
    let line = one_line_error(&o);
    assert!(line.contains("do not trust") && line.contains(&id), "{line}");
    assert!(!other.path().join(".galley").exists(), "nothing installed");
}

/// `galley registry serve` as a real server process on loopback, used by the CLI client.
#[test]
fn serve_publish_install_over_http() {
    use std::io::BufRead;
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    std::fs::write(d.join("tokens"), "s3cret galley\n").unwrap();
    let mut server = Command::new(galley_bin())
        .args(["registry", "serve", "--root"])
        .arg(d.join("served"))
        .args(["--addr", "127.0.0.1:0", "--tokens"])
        .arg(d.join("tokens"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut first = String::new();
    std::io::BufReader::new(server.stdout.take().unwrap()).read_line(&mut first).unwrap();
    let url = first.trim().rsplit(' ').next().unwrap().to_string();
    assert!(url.starts_with("http://127.0.0.1:"), "{first}");

    let with = |args: &[&str], token: Option<&str>| {
        let mut c = Command::new(galley_bin());
        c.current_dir(d)
            .args(args)
            .env("GALLEY_CONFIG_DIR", d.join("config"))
            .env("GALLEY_CACHE_DIR", d.join("cache"))
            .env("GALLEY_REGISTRY", &url);
        match token {
            Some(t) => c.env("GALLEY_REGISTRY_TOKEN", t),
            None => c.env_remove("GALLEY_REGISTRY_TOKEN"),
        };
        c.output().unwrap()
    };
    let out = ok(with(&["plugin", "keygen"], None));
    let id = out.lines().next().unwrap().split_whitespace().last().unwrap().to_string();
    let math = plugin("math-answer");
    let line = one_line_error(&with(&["plugin", "publish", math.to_str().unwrap(), "--namespace", "galley", "--key", &id], Some("wrong")));
    assert!(line.contains("401"), "{line}");
    ok(with(&["plugin", "publish", math.to_str().unwrap(), "--namespace", "galley", "--key", &id], Some("s3cret")));
    assert!(ok(with(&["plugin", "search"], None)).contains("galley/math-answer"));
    let out = ok(with(&["plugin", "install", "galley/math-answer"], None));
    assert!(out.contains(&format!("signed by {id}")), "{out}");
    ok(with(&["plugin", "yank", "galley/math-answer@0.1.0"], Some("s3cret")));
    std::fs::remove_file(d.join("galley.lock")).unwrap();
    let line = one_line_error(&with(&["plugin", "install", "galley/math-answer"], None));
    assert!(line.contains("yanked"), "{line}");
    server.kill().unwrap();
    let _ = server.wait();
}
