//! The registry through the `galley` command, as a team would use a shared folder registry:
//! keygen, trust, publish, search, install with a lockfile, offline reinstall, yank, and a
//! score run using the installed package by name.

use galley_e2e::*;
use std::path::Path;
use std::process::{Command, Output};

/// Runs galley in `home` as a user whose keys, trust file and caches live there, against
/// `registry` (`None`: the first-party registry built into galley), with a publish token.
fn as_user(home: &Path, registry: Option<&str>, token: Option<&str>, args: &[&str]) -> Output {
    let mut c = Command::new(galley_bin());
    c.current_dir(home)
        .args(args)
        .env("GALLEY_CONFIG_DIR", home.join("config"))
        .env("GALLEY_CACHE_DIR", home.join("cache"))
        .env_remove("GALLEY_REGISTRY")
        .env_remove("GALLEY_REGISTRY_TOKEN")
        .env_remove("RUST_LOG");
    if let Some(r) = registry {
        c.env("GALLEY_REGISTRY", r);
    }
    if let Some(t) = token {
        c.env("GALLEY_REGISTRY_TOKEN", t);
    }
    c.output().unwrap()
}

/// A user of the folder registry `dir/registry`.
fn run(dir: &Path, args: &[&str]) -> Output {
    as_user(
        dir,
        Some(dir.join("registry").to_str().unwrap()),
        None,
        args,
    )
}

/// The key id `galley plugin keygen` printed (its first line: `key id      ID`).
fn key_id(keygen_out: &str) -> String {
    keygen_out
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().last())
        .expect("keygen prints the key id")
        .to_string()
}

fn ok(o: Output) -> String {
    assert!(o.status.success(), "failed:\n{}{}", stdout(&o), stderr(&o));
    stdout(&o)
}

#[test]
fn keygen_publish_install_offline_yank() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let id = key_id(&ok(run(d, &["plugin", "keygen"])));
    // The user's own key signs their own namespace (it is not trusted for `galley/*`).
    let math = relabelled(d, "math-answer", "acme", "math-answer", "0.1.0", &[]);
    let fmt = relabelled(d, "format", "acme", "format", "0.1.0", &[]);
    ok(run(
        d,
        &[
            "plugin",
            "publish",
            math.to_str().unwrap(),
            "--namespace",
            "acme",
            "--key",
            &id,
        ],
    ));
    ok(run(
        d,
        &[
            "plugin",
            "publish",
            fmt.to_str().unwrap(),
            "--namespace",
            "acme",
            "--key",
            &id,
        ],
    ));
    let line = one_line_error(&run(
        d,
        &[
            "plugin",
            "publish",
            math.to_str().unwrap(),
            "--namespace",
            "acme",
            "--key",
            &id,
        ],
    ));
    assert!(line.contains("already published"), "{line}");
    let listing = ok(run(d, &["plugin", "search", "math"]));
    assert!(
        listing.contains("acme/math-answer") && !listing.contains("acme/format"),
        "{listing}"
    );

    let out = ok(run(d, &["plugin", "install", "acme/math-answer@^0.1"]));
    assert!(out.contains(&format!("signed by {id}")), "{out}");
    ok(run(d, &["plugin", "install", "acme/format"]));
    let lock = std::fs::read_to_string(d.join("galley.lock")).unwrap();
    assert!(
        lock.contains("acme/math-answer") && lock.contains("acme/format") && lock.contains(&id),
        "{lock}"
    );

    let listing = ok(run(d, &["plugin", "list"]));
    assert!(
        listing.contains("acme/format") && listing.contains("ok"),
        "{listing}"
    );
    std::fs::write(d.join(".galley/plugins/acme/format.wasm"), b"tampered").unwrap();
    assert!(ok(run(d, &["plugin", "list"])).contains("MODIFIED"));
    ok(run(d, &["plugin", "remove", "acme/format"]));
    assert!(!d.join(".galley/plugins/acme/format.wasm").exists());
    assert!(
        !std::fs::read_to_string(d.join("galley.lock"))
            .unwrap()
            .contains("acme/format")
    );
    ok(run(d, &["plugin", "install", "acme/format"]));

    // The installed package by name in a score config.
    std::fs::write(
        d.join("c.jsonl"),
        "{\"completion\": \"#### 4\", \"metadata\": {\"answer\": 4}}\n",
    )
    .unwrap();
    std::fs::write(
        d.join("score.yaml"),
        "rewards:\n  - plugin: acme/math-answer\ncompletions: c.jsonl\n",
    )
    .unwrap();
    assert!(ok(run(d, &["score", "score.yaml"])).contains("total   1.00"));
    // A component swapped in after install never runs: its bytes are not the ones pinned.
    let installed = d.join(".galley/plugins/acme/math-answer.wasm");
    let good = std::fs::read(&installed).unwrap();
    std::fs::copy(plugin("hostile-reward"), &installed).unwrap();
    let line = one_line_error(&run(d, &["score", "score.yaml"]));
    assert!(
        line.contains("rewards[0].plugin") && line.contains("galley.lock pins"),
        "{line}"
    );
    std::fs::write(&installed, good).unwrap();

    // Offline reinstall from the cache, with the registry gone.
    std::fs::remove_dir_all(d.join(".galley")).unwrap();
    std::fs::rename(d.join("registry"), d.join("registry-away")).unwrap();
    let out = ok(run(d, &["plugin", "install", "--offline"]));
    assert!(
        out.contains("acme/math-answer") && out.contains("acme/format"),
        "{out}"
    );
    std::fs::rename(d.join("registry-away"), d.join("registry")).unwrap();

    // Yank: the locked version still installs; without the lock nothing fits.
    ok(run(d, &["plugin", "yank", "acme/format@0.1.0"]));
    ok(run(d, &["plugin", "install"]));
    std::fs::remove_file(d.join("galley.lock")).unwrap();
    let line = one_line_error(&run(d, &["plugin", "install", "acme/format"]));
    assert!(line.contains("0.1.0 (yanked)"), "{line}");

    // A stranger's key is not trusted by another user.
    let other = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(other.path()).unwrap();
    let o = as_user(
        other.path(),
        Some(d.join("registry").to_str().unwrap()),
        None,
        &["plugin", "install", "acme/math-answer"],
    );
    let line = one_line_error(&o);
    assert!(
        line.contains("do not trust") && line.contains(&id),
        "{line}"
    );
    assert!(!other.path().join(".galley").exists(), "nothing installed");
}

/// `galley registry serve` as a real server process on loopback, used by the CLI client.
#[test]
fn serve_publish_install_over_http() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    std::fs::write(d.join("tokens"), "s3cret acme\n").unwrap();
    let server = serve(&d.join("served"), &d.join("tokens"));
    let with = |args: &[&str], token: Option<&str>| as_user(d, Some(&server.url), token, args);
    let id = key_id(&ok(with(&["plugin", "keygen"], None)));
    let math = relabelled(d, "math-answer", "acme", "math-answer", "0.1.0", &[]);
    let line = one_line_error(&with(
        &[
            "plugin",
            "publish",
            math.to_str().unwrap(),
            "--namespace",
            "acme",
            "--key",
            &id,
        ],
        Some("wrong"),
    ));
    assert!(line.contains("403"), "{line}");
    ok(with(
        &[
            "plugin",
            "publish",
            math.to_str().unwrap(),
            "--namespace",
            "acme",
            "--key",
            &id,
        ],
        Some("s3cret"),
    ));
    assert!(ok(with(&["plugin", "search"], None)).contains("acme/math-answer"));
    let out = ok(with(&["plugin", "install", "acme/math-answer"], None));
    assert!(out.contains(&format!("signed by {id}")), "{out}");
    ok(with(
        &["plugin", "yank", "acme/math-answer@0.1.0"],
        Some("s3cret"),
    ));
    std::fs::remove_file(d.join("galley.lock")).unwrap();
    let line = one_line_error(&with(&["plugin", "install", "acme/math-answer"], None));
    assert!(line.contains("yanked"), "{line}");
}

/// A first-party plugin relabelled as another package (namespace, name, version, dependencies),
/// written to `dir`: fixtures for resolution and update.
fn relabelled(
    dir: &Path,
    base: &str,
    ns: &str,
    name: &str,
    version: &str,
    deps: &[(&str, &str)],
) -> std::path::PathBuf {
    let bytes = std::fs::read(plugin(base)).unwrap();
    let mut m = galley_runtime::inspect(&bytes, base)
        .unwrap()
        .manifest
        .unwrap();
    m.namespace = Some(ns.into());
    m.name = name.into();
    m.version = semver::Version::parse(version).unwrap();
    m.dependencies = deps
        .iter()
        .map(|(n, r)| (n.to_string(), semver::VersionReq::parse(r).unwrap()))
        .collect();
    let path = dir.join(format!("{name}-{version}.wasm"));
    std::fs::write(&path, galley_runtime::embed_manifest(&bytes, &m)).unwrap();
    path
}

struct Served {
    child: std::process::Child,
    url: String,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve(root: &Path, tokens: &Path) -> Served {
    use std::io::BufRead;
    let mut child = Command::new(galley_bin())
        .args(["registry", "serve", "--root"])
        .arg(root)
        .args(["--addr", "127.0.0.1:0", "--tokens"])
        .arg(tokens)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut first = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    let url = first.trim().rsplit(' ').next().unwrap().to_string();
    assert!(url.starts_with("http://127.0.0.1:"), "{first}");
    Served { child, url }
}

/// The whole life of a dependency through a real server: pack + publish, install pulling in
/// a dependency, lockfile, update, yank, and a reinstall from the cache with the server gone.
#[test]
fn dependencies_pack_update_yank_offline_over_http() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    std::fs::write(d.join("tokens"), "t0k acme\n").unwrap();
    let server = serve(&d.join("served"), &d.join("tokens"));
    let url = server.url.clone();
    let with = |args: &[&str]| as_user(d, Some(&url), Some("t0k"), args);
    let id = key_id(&ok(with(&["plugin", "keygen"])));
    let grader = relabelled(
        d,
        "math-answer",
        "acme",
        "grader",
        "1.0.0",
        &[("acme/rules", "^0.1")],
    );
    let rules_010 = relabelled(d, "length-penalty", "acme", "rules", "0.1.0", &[]);
    let rules_011 = relabelled(d, "length-penalty", "acme", "rules", "0.1.1", &[]);
    let rules_020 = relabelled(d, "length-penalty", "acme", "rules", "0.2.0", &[]);

    // Pack (sign here), then publish the packed files; a packed file cannot be re-signed.
    let out = ok(with(&[
        "plugin",
        "pack",
        grader.to_str().unwrap(),
        "--key",
        &id,
        "-o",
        "pkgs",
    ]));
    assert!(out.contains(&format!("signed by {id}")), "{out}");
    let line = one_line_error(&with(&[
        "plugin",
        "publish",
        "pkgs/grader-1.0.0.release.json",
        "--key",
        &id,
    ]));
    assert!(line.contains("already named and signed"), "{line}");
    ok(with(&[
        "plugin",
        "publish",
        "pkgs/grader-1.0.0.release.json",
    ]));
    // A packed component that no longer matches its release line is refused.
    std::fs::copy(&rules_010, d.join("pkgs/grader-1.0.0.wasm")).unwrap();
    let line = one_line_error(&with(&[
        "plugin",
        "publish",
        "pkgs/grader-1.0.0.release.json",
    ]));
    assert!(line.contains("grader-1.0.0.release.json says"), "{line}");
    for f in [&rules_010, &rules_020] {
        ok(with(&[
            "plugin",
            "publish",
            f.to_str().unwrap(),
            "--key",
            &id,
        ]));
    }
    // The namespace comes from galley.toml; another one is refused.
    let line = one_line_error(&with(&[
        "plugin",
        "publish",
        rules_011.to_str().unwrap(),
        "--key",
        &id,
        "--namespace",
        "evil",
    ]));
    assert!(line.contains("says namespace `acme`"), "{line}");

    // Installing grader pulls in rules ^0.1 (0.1.0; 0.2.0 does not fit).
    let out = ok(with(&["plugin", "install", "acme/grader"]));
    assert!(
        out.contains("acme/grader") && out.contains("acme/rules") && out.contains("0.1.0"),
        "{out}"
    );
    let lock = std::fs::read_to_string(d.join("galley.lock")).unwrap();
    assert!(
        lock.contains("[requirements]")
            && lock.contains("\"acme/grader\" = \"*\"")
            && !lock.contains("\"acme/rules\" ="),
        "{lock}"
    );

    // A new patch release: a plain install keeps the lock; update moves to it.
    ok(with(&[
        "plugin",
        "publish",
        rules_011.to_str().unwrap(),
        "--key",
        &id,
    ]));
    ok(with(&["plugin", "install"]));
    assert!(
        std::fs::read_to_string(d.join("galley.lock"))
            .unwrap()
            .contains("version = \"0.1.0\"")
    );
    let out = ok(with(&["plugin", "update"]));
    assert!(
        out.contains("acme/rules") && out.contains("0.1.0 -> 0.1.1"),
        "{out}"
    );
    assert!(ok(with(&["plugin", "update", "acme/rules"])).contains("newest version"));

    // Yanked: the locked 0.1.1 still installs; update leaves it for the newest unyanked.
    ok(with(&["plugin", "yank", "acme/rules@0.1.1"]));
    ok(with(&["plugin", "install"]));
    let out = ok(with(&["plugin", "update", "acme/rules"]));
    assert!(out.contains("0.1.1 -> 0.1.0"), "{out}");
    let line = one_line_error(&with(&["plugin", "update", "acme/nope"]));
    assert!(line.contains("not in galley.lock"), "{line}");

    // Server gone, plugin folder gone: the lockfile reinstalls from the cache.
    drop(server);
    std::fs::remove_dir_all(d.join(".galley")).unwrap();
    let out = ok(with(&["plugin", "install"]));
    assert!(
        out.contains("acme/grader") && out.contains("acme/rules"),
        "{out}"
    );
    assert!(
        ok(with(&["plugin", "list"]))
            .lines()
            .all(|l| l.ends_with("ok"))
    );
}

/// `galley plugin install galley/NAME` on a fresh checkout, no server, no GALLEY_REGISTRY:
/// the first-party registry built into galley, verified with the first-party key.
#[test]
fn first_party_plugins_install_with_no_server() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let first_party =
        std::fs::read_to_string(repo_root().join("registry/default/first-party.pub")).unwrap();
    let id = first_party.split_whitespace().next().unwrap();
    let run = |args: &[&str]| as_user(d, None, None, args);
    let listing = ok(run(&["plugin", "search"]));
    for p in [
        "arith",
        "bfcl-prompts",
        "calculator",
        "curriculum",
        "exact-match",
        "format",
        "function-call",
        "jsonl-chat",
        "length-penalty",
        "math-answer",
        "preference",
        "wordle",
    ] {
        assert!(listing.contains(&format!("galley/{p}")), "{listing}");
    }
    let out = ok(run(&["plugin", "install", "galley/math-answer"]));
    assert!(out.contains(&format!("signed by {id}")), "{out}");
    std::fs::write(
        d.join("c.jsonl"),
        "{\"completion\": \"so #### 12\", \"metadata\": {\"answer\": 12}}\n",
    )
    .unwrap();
    std::fs::write(
        d.join("score.yaml"),
        "rewards:\n  - plugin: galley/math-answer\ncompletions: c.jsonl\n",
    )
    .unwrap();
    assert!(ok(run(&["score", "score.yaml"])).contains("total   1.00"));
    let line = one_line_error(&run(&["plugin", "yank", "galley/math-answer@0.1.0"]));
    assert!(line.contains("read-only"), "{line}");
}

/// OCI through the CLI against Debian's docker-registry on loopback: publish --oci, install
/// oci://, a lockfile pinned to the manifest digest, a reinstall that pulls by that digest,
/// and an unsigned artifact refused without --allow-unsigned.
#[test]
fn oci_publish_install_and_locked_reinstall() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let registry = DockerRegistry::start(&d.join("oci"));
    let run = |args: &[&str]| as_user(d, None, None, args);
    let id = key_id(&ok(run(&["plugin", "keygen"])));
    // Under the user's own namespace: their key is not trusted for `galley/*`.
    let math = relabelled(d, "math-answer", "acme", "math-answer", "0.1.0", &[]);
    let repo = format!("oci://{}/team/math-answer", registry.host);
    let out = ok(run(&[
        "plugin",
        "publish",
        math.to_str().unwrap(),
        "--oci",
        &repo,
        "--key",
        &id,
    ]));
    assert!(
        out.contains(&format!("{repo}:0.1.0")),
        "tagged with the version: {out}"
    );

    let out = ok(run(&["plugin", "install", &format!("{repo}:0.1.0")]));
    assert!(
        out.contains("acme/math-answer") && out.contains(&format!("signed by {id}")),
        "{out}"
    );
    let lock = std::fs::read_to_string(d.join("galley.lock")).unwrap();
    assert!(
        lock.contains(&format!("source = \"{repo}@sha256:")),
        "{lock}"
    );
    assert_eq!(
        std::fs::read(d.join(".galley/plugins/acme/math-answer.wasm")).unwrap(),
        std::fs::read(&math).unwrap()
    );

    // Cache and plugins gone: the lockfile pulls the pinned manifest again.
    std::fs::remove_dir_all(d.join(".galley")).unwrap();
    std::fs::remove_dir_all(d.join("cache")).unwrap();
    assert!(ok(run(&["plugin", "install"])).contains("acme/math-answer"));
    // And offline, from the cache that install refilled.
    std::fs::remove_dir_all(d.join(".galley")).unwrap();
    assert!(ok(run(&["plugin", "install", "--offline"])).contains("acme/math-answer"));

    // Unsigned: refused unless allowed, and then recorded.
    let fmt = plugin("format");
    let fmt_ref = format!("oci://{}/team/format:edge", registry.host);
    run(&[
        "plugin",
        "publish",
        fmt.to_str().unwrap(),
        "--oci",
        &fmt_ref,
    ]);
    let line = one_line_error(&run(&["plugin", "install", &fmt_ref]));
    assert!(line.contains("not signed"), "{line}");
    ok(run(&["plugin", "install", "--allow-unsigned", &fmt_ref]));
    let lock = std::fs::read_to_string(d.join("galley.lock")).unwrap();
    assert!(
        lock.contains("galley/format") && lock.contains("unsigned = true"),
        "{lock}"
    );
}

/// A loopback "OCI registry" that answers 401 to everything and reports whether each request
/// carried an Authorization header.
fn credential_trap() -> (String, std::sync::mpsc::Receiver<bool>) {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let host = listener.local_addr().unwrap().to_string();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { return };
            let mut req = Vec::new();
            let mut buf = [0u8; 4096];
            while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => req.extend_from_slice(&buf[..n]),
                }
            }
            let text = String::from_utf8_lossy(&req).to_lowercase();
            let _ = tx.send(text.contains("\nauthorization:"));
            let _ = s.write_all(
                b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            );
        }
    });
    (host, rx)
}

/// A lockfile (from a pull request, say) names an OCI host: the user's registry credentials
/// must not go there unless the user named that host for them.
#[test]
fn oci_credentials_go_only_to_hosts_named_for_them() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let (host, seen) = credential_trap();
    let install = |hosts: Option<&str>| {
        let mut c = Command::new(galley_bin());
        c.current_dir(d)
            .args(["plugin", "install", &format!("oci://{host}/team/x:1.0.0")])
            .env("GALLEY_CONFIG_DIR", d.join("config"))
            .env("GALLEY_CACHE_DIR", d.join("cache"))
            .env("GALLEY_OCI_TOKEN", "s3cret-token");
        match hosts {
            Some(h) => c.env("GALLEY_OCI_HOSTS", h),
            None => c.env_remove("GALLEY_OCI_HOSTS"),
        };
        c.output().unwrap()
    };
    let line = one_line_error(&install(None));
    assert!(
        line.contains("401") && line.contains("GALLEY_OCI_HOSTS"),
        "{line}"
    );
    assert!(
        !seen.try_iter().any(|auth| auth),
        "the token went to an unnamed host"
    );
    one_line_error(&install(Some(&format!("registry.example,{host}"))));
    assert!(
        seen.try_iter().any(|auth| auth),
        "the named host got no token"
    );
}

/// One project, packages from three registries: the first-party one built into galley, a
/// team's `galley registry serve` named in `.galley/config.toml`, and a folder. galley.lock
/// records where each came from; installing from one never re-resolves the others against it
/// (it used to: "no package `galley/math-answer` in the registry"); a locked reinstall on a
/// clean machine fetches each from its own registry; an update moves each against its own.
#[test]
fn a_project_installs_from_three_registries_into_one_lockfile() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    std::fs::write(d.join("tokens"), "t0k team\n").unwrap();
    let server = serve(&d.join("served"), &d.join("tokens"));
    let user = |reg: Option<&str>, args: &[&str]| as_user(d, reg, None, args);
    let id = key_id(&ok(user(None, &["plugin", "keygen"])));
    let scorer = relabelled(d, "math-answer", "team", "scorer", "0.1.0", &[]);
    let fmt = relabelled(d, "format", "acme", "fmt", "0.1.0", &[]);
    let publish = |reg: &str, token: Option<&str>, file: &Path, ns: &str| {
        ok(as_user(
            d,
            Some(reg),
            token,
            &[
                "plugin",
                "publish",
                file.to_str().unwrap(),
                "--namespace",
                ns,
                "--key",
                &id,
            ],
        ))
    };
    publish(&server.url, Some("t0k"), &scorer, "team");
    let folder = d.join("vendored");
    publish(folder.to_str().unwrap(), None, &fmt, "acme");
    std::fs::create_dir_all(d.join(".galley")).unwrap();
    std::fs::write(
        d.join(".galley/config.toml"),
        format!("[registries]\nteam = \"{}\"\n", server.url),
    )
    .unwrap();

    ok(user(None, &["plugin", "install", "galley/math-answer"]));
    ok(user(
        None,
        &["plugin", "install", "team/scorer", "--registry", "team"],
    ));
    ok(user(
        None,
        &["plugin", "install", "acme/fmt", "--registry", "vendored"],
    ));
    let lock: toml::Value =
        toml::from_str(&std::fs::read_to_string(d.join("galley.lock")).unwrap()).unwrap();
    let from: std::collections::BTreeMap<String, String> = lock["plugin"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["name"].as_str().unwrap().to_string(),
                e["registry"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(from["galley/math-answer"], "builtin");
    assert_eq!(from["team/scorer"], "team");
    assert_eq!(from["acme/fmt"], "vendored");

    // A clean machine: no plugins, no cache. `install` reads each from its own registry.
    std::fs::remove_dir_all(d.join(".galley/plugins")).unwrap();
    std::fs::remove_dir_all(d.join("cache")).unwrap();
    let out = ok(user(None, &["plugin", "install"]));
    for p in ["galley/math-answer", "team/scorer", "acme/fmt"] {
        assert!(out.contains(p), "{out}");
    }
    // A new release on the team's server: update moves it there and leaves the others be.
    let newer = relabelled(d, "math-answer", "team", "scorer", "0.1.1", &[]);
    publish(&server.url, Some("t0k"), &newer, "team");
    let out = ok(user(None, &["plugin", "update"]));
    assert!(
        out.contains("team/scorer") && out.contains("0.1.0 -> 0.1.1"),
        "{out}"
    );
    assert!(
        !out.contains("galley/math-answer") && !out.contains("acme/fmt"),
        "{out}"
    );
    // All three run by name in one scoring config.
    std::fs::write(
        d.join("c.jsonl"),
        "{\"completion\": \"so #### 12\", \"metadata\": {\"answer\": 12}}\n",
    )
    .unwrap();
    std::fs::write(
        d.join("score.yaml"),
        "rewards:\n  - plugin: galley/math-answer\n  - plugin: team/scorer\n  - plugin: acme/fmt\ncompletions: c.jsonl\n",
    )
    .unwrap();
    ok(user(None, &["score", "score.yaml"]));
}
