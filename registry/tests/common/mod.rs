//! Stand-in components for the registry's own tests. The registry never parses WebAssembly:
//! the caller supplies the installer's manifest check and WIT test (the CLI passes the
//! runtime's). So these tests hand it blobs in a small format of their own — a header line,
//! the manifest as JSON, then filler — and check them the same way; real components go
//! through these very paths in the end-to-end tests (tests/tests/registry_cli.rs, oci.rs).

#![allow(dead_code)]

use galley_registry::{KeyPair, PackageName, Release};
use serde_json::json;
use sha2::Digest;
use std::collections::BTreeMap;

const HEADER: &[u8] = b"galley-registry-test-component\n";

/// A stand-in for the component `base` relabelled `name@version` (like a real component
/// whose embedded manifest was replaced): different bases have different bytes.
pub fn component(base: &str, name: &str, version: &str) -> Vec<u8> {
    let manifest = json!({"name": name, "version": version, "kind": "reward", "wit": "0.1.0"});
    let mut out = HEADER.to_vec();
    out.extend(manifest.to_string().into_bytes());
    out.push(b'\n');
    // ~160 KB of filler fixed by `base` (about a small Rust component), so size and upload
    // caps have something to bite on.
    let mut h = sha2::Sha256::digest(base.as_bytes()).to_vec();
    while out.len() < 160_000 + base.len() * 97 {
        h = sha2::Sha256::digest(&h).to_vec();
        out.extend(&h);
    }
    out
}

/// The stand-in's manifest: (name, version).
pub fn manifest_of(bytes: &[u8]) -> Result<(String, semver::Version), String> {
    let rest = bytes.strip_prefix(HEADER).ok_or("not a component")?;
    let end = rest.iter().position(|b| *b == b'\n').ok_or("no manifest")?;
    let m: serde_json::Value =
        serde_json::from_slice(&rest[..end]).map_err(|e| format!("bad manifest: {e}"))?;
    let name = m["name"].as_str().ok_or("no name")?.to_string();
    let version = semver::Version::parse(m["version"].as_str().ok_or("no version")?)
        .map_err(|e| e.to_string())?;
    Ok((name, version))
}

/// The installer's last check, as the CLI's is over real components.
pub fn check(bytes: &[u8]) -> Result<(String, semver::Version), String> {
    manifest_of(bytes)
}

pub fn wit_ok(v: &semver::Version) -> bool {
    v.major == 0 && v.minor == 1
}

pub fn digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(bytes)))
}

/// The unsigned release line of a stand-in under `ns`, with dependencies.
pub fn release(ns: &str, bytes: &[u8], deps: &[(&str, &str)]) -> Release {
    let (name, version) = manifest_of(bytes).unwrap();
    Release {
        name: PackageName::parse(&format!("{ns}/{name}")).unwrap(),
        version,
        kind: galley_core::PluginKind::Reward,
        wit: semver::Version::new(0, 1, 0),
        digest: digest(bytes),
        size: bytes.len() as u64,
        dependencies: deps
            .iter()
            .map(|(n, r)| {
                (
                    PackageName::parse(n).unwrap(),
                    semver::VersionReq::parse(r).unwrap(),
                )
            })
            .collect::<BTreeMap<_, _>>(),
        read_dirs: vec![],
        yanked: false,
        yank: None,
        key: None,
        signature: None,
    }
}

pub fn signed(ns: &str, bytes: &[u8], key: &KeyPair) -> Release {
    let mut r = release(ns, bytes, &[]);
    key.sign(&mut r);
    r
}
