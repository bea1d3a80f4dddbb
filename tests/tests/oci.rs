//! OCI interop against a real registry: Debian's `docker-registry` (the CNCF distribution
//! server) on loopback. A signed plugin is pushed as a Wasm OCI artifact, pulled, verified
//! and installed; artifacts whose layer is not the signed bytes, whose signature is bad or
//! untrusted, or whose component is another package install nothing.

use galley_e2e::DockerRegistry;
use galley_registry::*;
use galley_runtime::Manifest;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn plugin_bytes(name: &str) -> Vec<u8> {
    std::fs::read(
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../target/plugins")
            .join(format!("{name}.wasm")),
    )
    .expect("run scripts/build-plugins.sh first")
}

fn release(ns: &str, bytes: &[u8]) -> Release {
    let info = galley_runtime::inspect(bytes, "t").unwrap();
    let m: Manifest = info.manifest.unwrap();
    Release {
        name: PackageName::parse(&format!("{ns}/{}", m.name)).unwrap(),
        version: m.version,
        kind: m.kind,
        wit: m.wit.unwrap(),
        digest: info.digest,
        size: bytes.len() as u64,
        dependencies: BTreeMap::new(),
        read_dirs: vec![],
        yanked: false,
        yank: None,
        key: None,
        signature: None,
    }
}

fn check(bytes: &[u8]) -> Result<(String, semver::Version), String> {
    let m = galley_runtime::inspect(bytes, "blob")
        .map_err(|e| e.to_string())?
        .manifest
        .ok_or("no manifest")?;
    Ok((m.full_name(), m.version))
}

struct World {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    registry: DockerRegistry,
    trust: TrustStore,
    key: KeyPair,
}

fn world() -> World {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().to_path_buf();
    let registry = DockerRegistry::start(&root);
    let key = KeyPair::generate().unwrap();
    let mut trust = TrustStore::default();
    // These tests publish the first-party plugins under their own `galley` namespace, so the
    // key stands in for the first-party one, trusted for that namespace alone.
    let galley_only = Scope::Only(vec!["galley".into()]);
    trust
        .add_scoped(&key.id(), &key.public_hex(), galley_only)
        .unwrap();
    World {
        _tmp: tmp,
        root,
        registry,
        trust,
        key,
    }
}

impl World {
    fn reference(&self, repo: &str, tag: &str) -> OciRef {
        OciRef::parse(&format!("oci://{}/{repo}:{tag}", self.registry.host)).unwrap()
    }

    fn push(&self, r: &OciRef, release: &Release, blob: &[u8]) -> String {
        let info = galley_runtime::inspect(blob, "t").unwrap();
        OciClient::new(r)
            .unwrap()
            .push(r, release, blob, &info.exports, &info.imports, "test")
            .unwrap()
    }

    /// Pulls `r` and installs it the way `galley plugin install oci://...` does.
    fn install(&self, r: &OciRef) -> Result<Vec<Installed>, RegistryError> {
        let client = OciClient::new(r)?;
        let pulled = client.pull(r)?;
        let release = pulled.release.expect("a galley artifact");
        let req = Requirement {
            name: release.name.clone(),
            req: semver::VersionReq::parse(&format!("={}", release.version)).unwrap(),
        };
        let source = OciSource::new(client, r.clone(), release);
        let installer = Installer {
            registry: Some(&source),
            cache: self.root.join("cache"),
            trust: &self.trust,
            policy: TrustPolicy::SignedOnly,
            max_blob: 64 << 20,
            wit_supported: &galley_runtime::wit_supported,
            manifest_check: &check,
            signers: Default::default(),
            allow_signer_change: false,
        };
        installer
            .install(&[req], &self.root.join("plugins"), None)
            .map(|(i, _)| i)
    }

    fn nothing_installed(&self) {
        for d in ["plugins", "cache"] {
            let p = self.root.join(d);
            assert!(!p.exists() || walk(&p) == 0, "{d} must stay empty");
        }
    }
}

fn walk(p: &Path) -> usize {
    std::fs::read_dir(p)
        .map(|d| {
            d.flatten()
                .map(|e| {
                    if e.path().is_dir() {
                        walk(&e.path())
                    } else {
                        1
                    }
                })
                .sum()
        })
        .unwrap_or(0)
}

#[test]
fn push_pull_install_and_pin_by_digest() {
    let w = world();
    let blob = plugin_bytes("math-answer");
    let mut rel = release("galley", &blob);
    w.key.sign(&mut rel);
    let r = w.reference("galley/math-answer", "0.1.0");
    let digest = w.push(&r, &rel, &blob);
    // The same package makes the same manifest: pushes are reproducible.
    assert_eq!(w.push(&r, &rel, &blob), digest);

    let pulled = OciClient::new(&r).unwrap().pull(&r).unwrap();
    assert_eq!(pulled.manifest_digest, digest);
    assert_eq!(pulled.layer.digest, rel.digest);
    assert_eq!(pulled.release.as_ref(), Some(&rel));

    let installed = w.install(&r).unwrap();
    assert_eq!(installed[0].signer.as_deref(), Some(w.key.id().as_str()));
    assert_eq!(std::fs::read(&installed[0].path).unwrap(), blob);

    // Pinned by manifest digest (what a lockfile records) it pulls the same; a wrong pin fails.
    let pinned = r.pinned(&digest);
    assert_eq!(
        OciClient::new(&pinned)
            .unwrap()
            .pull(&pinned)
            .unwrap()
            .layer
            .digest,
        rel.digest
    );
    let wrong = r.pinned(&format!("sha256:{}", "0".repeat(64)));
    assert!(OciClient::new(&wrong).unwrap().pull(&wrong).is_err());
    // A tag that is not there names the URL and the status.
    let missing = w.reference("galley/math-answer", "9.9.9");
    let e = OciClient::new(&missing)
        .unwrap()
        .pull(&missing)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("/v2/galley/math-answer/manifests/9.9.9") && e.contains("404"),
        "{e}"
    );
}

#[test]
fn a_layer_that_is_not_the_signed_bytes_is_refused() {
    let w = world();
    let good = plugin_bytes("math-answer");
    let evil = plugin_bytes("format");
    let mut rel = release("galley", &good);
    w.key.sign(&mut rel);
    // The signed line names `good`, the layer is `evil`.
    let r = w.reference("galley/math-answer", "0.1.0");
    w.push(&r, &rel, &evil);
    let e = w.install(&r).unwrap_err();
    assert!(matches!(e, RegistryError::DigestMismatch { .. }), "{e}");
    assert!(e.to_string().contains("in the OCI manifest"), "{e}");
    w.nothing_installed();
}

#[test]
fn bad_untrusted_and_misnamed_artifacts_install_nothing() {
    let w = world();
    let blob = plugin_bytes("math-answer");

    // A line altered after signing (it now asks for a directory).
    let mut rel = release("galley", &blob);
    w.key.sign(&mut rel);
    rel.read_dirs = vec!["data".into()];
    let r = w.reference("galley/math-answer", "altered");
    w.push(&r, &rel, &blob);
    let e = w.install(&r).unwrap_err();
    assert!(matches!(e, RegistryError::BadSignature { .. }), "{e}");

    // Signed by a key this user does not trust.
    let stranger = KeyPair::generate().unwrap();
    let mut rel = release("galley", &blob);
    stranger.sign(&mut rel);
    let r = w.reference("galley/math-answer", "stranger");
    w.push(&r, &rel, &blob);
    let e = w.install(&r).unwrap_err();
    assert!(
        matches!(e, RegistryError::UntrustedKey { .. }) && e.to_string().contains(&stranger.id()),
        "{e}"
    );

    // Validly signed, but the component inside is another package.
    let other = plugin_bytes("format");
    let mut rel = release("galley", &other);
    rel.name = PackageName::parse("galley/math-answer").unwrap();
    w.key.sign(&mut rel);
    let r = w.reference("galley/math-answer", "swapped");
    w.push(&r, &rel, &other);
    let e = w.install(&r).unwrap_err();
    assert!(matches!(e, RegistryError::ManifestMismatch { .. }), "{e}");
    w.nothing_installed();
}
