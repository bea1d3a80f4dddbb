//! `galley registry serve` on loopback, driven through the HTTP client: token-guarded
//! publish and yank, search, ETag / If-None-Match, install from HTTP, upload cap, path
//! traversal; and a hostile server (endless and truncated blobs) that installs nothing.

mod common;

use common::{check, signed as release, wit_ok};
use galley_registry::*;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::PathBuf;

fn component(name: &str, version: &str) -> Vec<u8> {
    common::component("length-penalty", name, version)
}

/// Starts a server on an ephemeral loopback port; returns its base URL.
fn start(root: PathBuf, max_upload: usize) -> String {
    start_with(root, max_upload, ServerLimits::default())
}

fn start_with(root: PathBuf, max_upload: usize, limits: ServerLimits) -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    listener.set_nonblocking(true).unwrap();
    let mut tokens = BTreeMap::new();
    tokens.insert("acme-token".to_string(), vec!["acme".to_string()]);
    tokens.insert("other-token".to_string(), vec!["other".to_string()]);
    let cfg = ServerConfig {
        root,
        tokens,
        max_upload,
        limits,
    };
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            serve(listener, cfg).await.unwrap();
        });
    });
    format!("http://{addr}")
}

fn installer<'a>(src: &'a dyn Source, trust: &'a TrustStore, cache: PathBuf) -> Installer<'a> {
    Installer {
        registry: Some(src),
        cache,
        trust,
        policy: TrustPolicy::SignedOnly,
        max_blob: 64 << 20,
        wit_supported: &wit_ok,
        manifest_check: &check,
        signers: Default::default(),
        allow_signer_change: false,
    }
}

#[test]
fn publish_search_install_yank_over_http() {
    let tmp = tempfile::tempdir().unwrap();
    let base = start(tmp.path().join("root"), 8 << 20);
    let http = HttpRegistry::new(&base).unwrap();
    let key = KeyPair::generate().unwrap();
    let mut trust = TrustStore::default();
    trust.add(&key.id(), &key.public_hex()).unwrap();

    let v1 = component("penalty", "0.1.0");
    let r1 = release("acme", &v1, &key);
    // Tokens guard namespaces; an unknown token is told exactly what a known one that does
    // not own the namespace is, so answers do not reveal which tokens exist.
    let unknown = http.publish(&r1, &v1, "wrong").unwrap_err().to_string();
    let e = http
        .publish(&r1, &v1, "other-token")
        .unwrap_err()
        .to_string();
    assert!(e.contains("403") && e.contains("namespace `acme`"), "{e}");
    assert_eq!(unknown, e);
    http.publish(&r1, &v1, "acme-token").unwrap();
    let e = http
        .publish(&r1, &v1, "acme-token")
        .unwrap_err()
        .to_string();
    assert!(e.contains("409") && e.contains("already published"), "{e}");
    // A body that is not what the line signs.
    let e = http
        .publish(
            &release("acme", &component("penalty", "0.2.0"), &key),
            &v1,
            "acme-token",
        )
        .unwrap_err()
        .to_string();
    assert!(e.contains("400"), "{e}");

    // Concurrent publishes of different versions.
    std::thread::scope(|s| {
        for i in 2..8 {
            let (http, key) = (&http, &key);
            s.spawn(move || {
                let b = component("penalty", &format!("0.{i}.0"));
                http.publish(&release("acme", &b, key), &b, "acme-token")
                    .unwrap();
            });
        }
    });
    let found = http.search("pen").unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].2.len(), 7);

    // Install from HTTP: highest version, verified.
    let into = tmp.path().join("plugins");
    let reqs = [Requirement::parse("acme/penalty@^0.7").unwrap()];
    let (installed, _) = installer(&http, &trust, tmp.path().join("cache"))
        .install(&reqs, &into, None)
        .unwrap();
    assert_eq!(installed[0].version.to_string(), "0.7.0");
    assert!(installed[0].path.exists());

    // Yank 0.7.0 over the API: the next fresh resolution is refused with the reason.
    let name = PackageName::parse("acme/penalty").unwrap();
    let v7 = semver::Version::new(0, 7, 0);
    let r7 = http.release(&name, &v7).unwrap().unwrap();
    let record = key.sign_yank(&r7, true);
    http.set_yanked(&name, &v7, true, Some(&record), "acme-token")
        .unwrap();
    let e = installer(&http, &trust, tmp.path().join("cache2"))
        .install(&reqs, &tmp.path().join("p2"), None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("0.7.0 (yanked)"), "{e}");
}

#[test]
fn etags_uploads_and_paths() {
    let tmp = tempfile::tempdir().unwrap();
    let base = start(tmp.path().join("root"), 100_000);
    let http = HttpRegistry::new(&base).unwrap();
    let key = KeyPair::generate().unwrap();
    let small = component("penalty", "0.1.0");
    // Over the upload cap (the component is ~160 KB).
    let e = http
        .publish(&release("acme", &small, &key), &small, "acme-token")
        .unwrap_err()
        .to_string();
    assert!(e.contains("413"), "{e}");
    // Publish straight into the folder and read it back over HTTP with an ETag.
    FileRegistry::open(tmp.path().join("root"))
        .publish(&release("acme", &small, &key), &small)
        .unwrap();
    let client = reqwest::blocking::Client::new();
    let url = format!("{base}/index/acme/penalty.jsonl");
    let first = client.get(&url).send().unwrap();
    assert_eq!(first.status(), 200);
    let etag = first.headers()["etag"].to_str().unwrap().to_string();
    let again = client
        .get(&url)
        .header("if-none-match", &etag)
        .send()
        .unwrap();
    assert_eq!(again.status(), 304);
    for bad in [
        "index/..%2F..%2Fetc/passwd.jsonl",
        "index/acme/..%2Fpenalty.jsonl",
        "blobs/sha256/..%2F..%2Findex.wasm",
        "index/Acme/X.jsonl",
        "blobs/sha256/abc.wasm",
    ] {
        assert_eq!(
            client.get(format!("{base}/{bad}")).send().unwrap().status(),
            404,
            "{bad}"
        );
    }
}

/// A server that serves one valid signed index line and then misbehaves on the blob.
fn hostile_server(index: String, blob: fn(&mut std::net::TcpStream)) -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(8) {
            let Ok(mut s) = stream else { continue };
            let mut buf = [0u8; 4096];
            let n = s.read(&mut buf).unwrap_or(0);
            let req = String::from_utf8_lossy(&buf[..n]).to_string();
            if req.starts_with("GET /index/") {
                let _ = write!(
                    s,
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{}",
                    index.len(),
                    index
                );
            } else {
                blob(&mut s);
            }
        }
    });
    format!("http://{addr}")
}

#[test]
fn endless_and_truncated_blobs_install_nothing() {
    let key = KeyPair::generate().unwrap();
    let mut trust = TrustStore::default();
    trust.add(&key.id(), &key.public_hex()).unwrap();
    let bytes = component("penalty", "0.1.0");
    let line = format!(
        "{}\n",
        serde_json::to_string(&release("acme", &bytes, &key)).unwrap()
    );
    let reqs = [Requirement::parse("acme/penalty").unwrap()];

    let endless = hostile_server(line.clone(), |s| {
        let _ = write!(s, "HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n");
        let chunk = [0u8; 65536];
        for _ in 0..4096 {
            if s.write_all(&chunk).is_err() {
                return;
            }
        }
    });
    let truncated = hostile_server(line, |s| {
        let _ = write!(
            s,
            "HTTP/1.1 200 OK\r\ncontent-length: 100\r\nconnection: close\r\n\r\n{}",
            "x".repeat(100)
        );
    });
    for (what, base) in [("endless", endless), ("truncated", truncated)] {
        let tmp = tempfile::tempdir().unwrap();
        let http = HttpRegistry::new(&base).unwrap();
        let err = installer(&http, &trust, tmp.path().join("cache"))
            .install(&reqs, &tmp.path().join("plugins"), None)
            .unwrap_err();
        assert!(
            matches!(
                err,
                RegistryError::SizeMismatch { .. }
                    | RegistryError::DigestMismatch { .. }
                    | RegistryError::Http { .. }
            ),
            "{what}: {err}"
        );
        assert!(
            !tmp.path().join("plugins").exists() && !tmp.path().join("cache").exists(),
            "{what}: something was written"
        );
    }
}

#[test]
fn a_crashed_publish_leaves_no_lock_behind() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    // The lock file a crashed publish of an older galley left (it took the lock by creating it).
    std::fs::create_dir_all(root.join("index/acme")).unwrap();
    std::fs::write(root.join("index/acme/penalty.lock"), b"").unwrap();
    let http = HttpRegistry::new(&start(root, 8 << 20)).unwrap();
    let key = KeyPair::generate().unwrap();
    let v1 = component("penalty", "0.1.0");
    http.publish(&release("acme", &v1, &key), &v1, "acme-token")
        .unwrap();
}

#[test]
fn a_refused_publish_leaves_no_blob() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    let http = HttpRegistry::new(&start(root.clone(), 8 << 20)).unwrap();
    let key = KeyPair::generate().unwrap();
    let v1 = component("penalty", "0.1.0");
    http.publish(&release("acme", &v1, &key), &v1, "acme-token")
        .unwrap();
    // Same version, other bytes: refused as a duplicate, and its blob is not kept.
    let mut other = component("penalty", "0.1.0");
    other.extend_from_slice(b"different bytes");
    let r = release("acme", &other, &key);
    let e = http
        .publish(&r, &other, "acme-token")
        .unwrap_err()
        .to_string();
    assert!(e.contains("409"), "{e}");
    let blobs = std::fs::read_dir(root.join("blobs/sha256"))
        .unwrap()
        .count();
    assert_eq!(blobs, 1, "the refused publish left a blob");
}

#[test]
fn a_client_that_never_finishes_its_headers_is_dropped() {
    let tmp = tempfile::tempdir().unwrap();
    let limits = ServerLimits {
        header_timeout: std::time::Duration::from_millis(300),
        ..ServerLimits::default()
    };
    let base = start_with(tmp.path().join("root"), 8 << 20, limits);
    let addr = base.trim_start_matches("http://");
    let mut slow = std::net::TcpStream::connect(addr).unwrap();
    slow.write_all(b"GET /index/acme/penalty.jsonl HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    slow.set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    let mut buf = Vec::new();
    // The server closes the connection (with or without a 408) instead of waiting forever.
    let _ = slow.read_to_end(&mut buf);
    let answer = String::from_utf8_lossy(&buf);
    assert!(
        buf.is_empty() || answer.starts_with("HTTP/1.1 408"),
        "{answer}"
    );
    // And it still serves everyone else.
    let e = HttpRegistry::new(&base)
        .unwrap()
        .releases(&PackageName::parse("acme/none").unwrap())
        .unwrap_err();
    assert!(matches!(e, RegistryError::NoPackage(_)), "{e}");
}

#[test]
fn an_endless_search_answer_is_cut_off() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let mut s = stream.unwrap();
            let mut req = [0u8; 4096];
            let _ = s.read(&mut req);
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n[");
            let chunk = vec![b' '; 1 << 20];
            // 64 MiB of whitespace unless the client hangs up first.
            for _ in 0..64 {
                if s.write_all(&chunk).is_err() {
                    break;
                }
            }
        }
    });
    let e = HttpRegistry::new(&format!("http://{addr}"))
        .unwrap()
        .search("")
        .unwrap_err()
        .to_string();
    assert!(e.contains("larger than"), "{e}");
}

#[test]
fn connections_past_the_limit_wait_for_a_free_slot() {
    let tmp = tempfile::tempdir().unwrap();
    let limits = ServerLimits {
        max_connections: 1,
        header_timeout: std::time::Duration::from_secs(120),
        ..ServerLimits::default()
    };
    let base = start_with(tmp.path().join("root"), 8 << 20, limits);
    let addr = base.trim_start_matches("http://").to_string();
    // The only slot, held by a client that sends nothing.
    let hog = std::net::TcpStream::connect(&addr).unwrap();
    let mut next = std::net::TcpStream::connect(&addr).unwrap();
    next.write_all(b"GET /index/acme/none.jsonl HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    // While the slot is held, no answer comes (the connection waits in the accept queue).
    next.set_read_timeout(Some(std::time::Duration::from_secs(1)))
        .unwrap();
    let mut first = [0u8; 1];
    let waited = next.read(&mut first);
    assert!(
        matches!(&waited, Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut)),
        "answered past the connection limit: {waited:?}"
    );
    // Once the slot is free, it is served.
    drop(hog);
    next.set_read_timeout(Some(std::time::Duration::from_secs(60)))
        .unwrap();
    let mut answer = Vec::new();
    next.read_to_end(&mut answer).unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 404"), "{answer}");
}
