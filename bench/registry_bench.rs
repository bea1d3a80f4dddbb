//! Registry benchmark: resolve and install 50 signed packages with dependencies from a local
//! `galley registry serve` (loopback HTTP), cold (empty cache) and warm (verified blobs in the
//! cache), next to the same install from the folder registry directly, in one run.
//!
//! Run: `cargo run --release -p galley-bench --bin registry-bench` after `scripts/build-plugins.sh`.

use galley_registry::*;
use sha2::Digest;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

const N: usize = 50;

fn main() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let base = std::fs::read(root.join("target/plugins/length-penalty.wasm"))
        .expect("run scripts/build-plugins.sh");
    let tmp = std::env::temp_dir().join(format!("galley-registry-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let reg = FileRegistry::open(tmp.join("registry"));
    let key = KeyPair::generate().unwrap();
    let mut trust = TrustStore::default();
    trust.add(&key.id(), &key.public_hex()).unwrap();

    // pkg-i depends on pkg-(i+1) and pkg-(i+2): installing pkg-0 pulls in all 50.
    let m0 = galley_runtime::inspect(&base, "base")
        .unwrap()
        .manifest
        .unwrap();
    for i in 0..N {
        let mut m = m0.clone();
        m.name = format!("pkg-{i}");
        let bytes = galley_runtime::embed_manifest(&base, &m);
        let deps: BTreeMap<PackageName, semver::VersionReq> = (i + 1..(i + 3).min(N))
            .map(|j| {
                (
                    PackageName::parse(&format!("bench/pkg-{j}")).unwrap(),
                    semver::VersionReq::parse("^0.1").unwrap(),
                )
            })
            .collect();
        let mut r = Release {
            name: PackageName::parse(&format!("bench/pkg-{i}")).unwrap(),
            version: m.version.clone(),
            kind: m.kind,
            wit: m.wit.clone().unwrap(),
            digest: format!("sha256:{}", hex::encode(sha2::Sha256::digest(&bytes))),
            size: bytes.len() as u64,
            dependencies: deps,
            read_dirs: vec![],
            yanked: false,
            yank: None,
            key: None,
            signature: None,
        };
        key.sign(&mut r);
        reg.publish(&r, &bytes).unwrap();
    }

    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    listener.set_nonblocking(true).unwrap();
    let cfg = ServerConfig {
        root: tmp.join("registry"),
        tokens: BTreeMap::new(),
        max_upload: 1 << 20,
        limits: Default::default(),
    };
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            serve(tokio::net::TcpListener::from_std(listener).unwrap(), cfg)
                .await
                .unwrap()
        });
    });
    let http = HttpRegistry::new(&format!("http://{addr}")).unwrap();

    let check = |b: &[u8]| -> Result<(String, semver::Version), String> {
        let m = galley_runtime::inspect(b, "blob")
            .map_err(|e| e.to_string())?
            .manifest
            .ok_or("no manifest")?;
        Ok((m.name, m.version))
    };
    let wit = |_: &semver::Version| true;
    let reqs = [Requirement::parse("bench/pkg-0").unwrap()];
    let run = |src: &dyn Source, cache: &str, into: &str| {
        let inst = Installer {
            registry: Some(src),
            cache: tmp.join(cache),
            trust: &trust,
            policy: TrustPolicy::SignedOnly,
            max_blob: 64 << 20,
            wit_supported: &wit,
            manifest_check: &check,
            signers: Default::default(),
            allow_signer_change: false,
        };
        let t = Instant::now();
        let (installed, _) = inst.install(&reqs, &tmp.join(into), None).unwrap();
        assert_eq!(installed.len(), N);
        t.elapsed()
    };
    let size: u64 = std::fs::read_dir(tmp.join("registry/blobs/sha256"))
        .unwrap()
        .flatten()
        .map(|e| e.metadata().unwrap().len())
        .sum();
    println!(
        "resolve + verify + install {N} signed packages with dependencies ({:.1} MB of components)",
        size as f64 / 1e6
    );
    let http_cold = run(&http, "cache-http", "into-1");
    let http_warm = run(&http, "cache-http", "into-2");
    let file_cold = run(&reg, "cache-file", "into-3");
    println!(
        "{:<44} {:>9.1} ms",
        "HTTP (galley registry serve), cold cache",
        http_cold.as_secs_f64() * 1e3
    );
    println!(
        "{:<44} {:>9.1} ms  ({:.1}x faster than cold)",
        "HTTP, warm cache",
        http_warm.as_secs_f64() * 1e3,
        http_cold.as_secs_f64() / http_warm.as_secs_f64()
    );
    println!(
        "{:<44} {:>9.1} ms  (HTTP cold is {:.2}x this)",
        "folder registry, cold cache (peer)",
        file_cold.as_secs_f64() * 1e3,
        http_cold.as_secs_f64() / file_cold.as_secs_f64()
    );
    println!(
        "{}",
        serde_json::json!({"bench": "registry", "packages": N, "http_cold_ms": http_cold.as_secs_f64() * 1e3, "http_warm_ms": http_warm.as_secs_f64() * 1e3, "file_cold_ms": file_cold.as_secs_f64() * 1e3})
    );
    let _ = std::fs::remove_dir_all(&tmp);
}
