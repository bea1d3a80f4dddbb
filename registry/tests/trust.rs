//! Whom an install trusts, tried as an attacker would: a trusted key signing outside its
//! namespaces (`galley/*` above all), a package whose signer changes between installs, and
//! a hand-edited `galley.lock` used to smuggle in unsigned or re-signed bytes. Each is
//! refused with an error naming the package and the key; the honest path still works.

mod common;

use common::{check, component, release, wit_ok};
use galley_registry::*;
use std::collections::BTreeMap;
use std::path::PathBuf;

struct World {
    _tmp: tempfile::TempDir,
    reg: FileRegistry,
    cache: PathBuf,
    into: PathBuf,
}

fn world() -> World {
    let tmp = tempfile::tempdir().unwrap();
    World {
        reg: FileRegistry::open(tmp.path().join("registry")),
        cache: tmp.path().join("cache"),
        into: tmp.path().join("plugins"),
        _tmp: tmp,
    }
}

impl World {
    fn installer<'a>(&'a self, trust: &'a TrustStore, online: bool) -> Installer<'a> {
        Installer {
            registry: online.then_some(&self.reg as &dyn Source),
            cache: self.cache.clone(),
            trust,
            policy: TrustPolicy::SignedOnly,
            max_blob: 64 << 20,
            wit_supported: &wit_ok,
            manifest_check: &check,
            signers: BTreeMap::new(),
            allow_signer_change: false,
        }
    }

    fn publish(&self, ns: &str, base: &str, name: &str, version: &str, key: Option<&KeyPair>) {
        let bytes = component(base, name, version);
        let mut r = release(ns, &bytes, &[]);
        if let Some(k) = key {
            k.sign(&mut r);
        }
        self.reg.publish(&r, &bytes).unwrap();
    }
}

fn reqs(specs: &[&str]) -> Vec<Requirement> {
    specs
        .iter()
        .map(|s| Requirement::parse(s).unwrap())
        .collect()
}

#[test]
fn a_trusted_key_signs_only_its_namespaces() {
    let w = world();
    let key = KeyPair::generate().unwrap();
    w.publish("acme", "a", "scorer", "1.0.0", Some(&key));
    w.publish("galley", "b", "scorer", "1.0.0", Some(&key));
    w.publish("other", "c", "scorer", "1.0.0", Some(&key));

    let mut trust = TrustStore::default();
    let acme = Scope::parse("acme").unwrap();
    trust
        .add_scoped(&key.id(), &key.public_hex(), acme)
        .unwrap();
    let i = w.installer(&trust, true);
    i.install(&reqs(&["acme/scorer"]), &w.into, None).unwrap();
    for ns in ["other", "galley"] {
        let e = i
            .install(&reqs(&[&format!("{ns}/scorer")]), &w.into, None)
            .unwrap_err();
        assert!(
            matches!(&e, RegistryError::KeyOutOfScope { namespace, .. } if namespace == ns),
            "{e}"
        );
        assert!(e.to_string().contains(&key.id()), "{e}");
    }

    // `*` (one's own key) covers every namespace but the first-party one.
    let mut own = TrustStore::default();
    own.add(&key.id(), &key.public_hex()).unwrap();
    let i = w.installer(&own, true);
    i.install(&reqs(&["other/scorer"]), &w.into, None).unwrap();
    let e = i
        .install(&reqs(&["galley/scorer"]), &w.into, None)
        .unwrap_err();
    assert!(matches!(e, RegistryError::KeyOutOfScope { .. }), "{e}");
}

#[test]
fn the_trust_file_keeps_scopes_and_reads_old_lines() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (KeyPair::generate().unwrap(), KeyPair::generate().unwrap());
    let path = tmp.path().join("trusted-keys");
    // A line from before keys were scoped, then one scoped line.
    std::fs::write(
        &path,
        format!(
            "{} {}\n{} {} acme,beta\n",
            a.id(),
            a.public_hex(),
            b.id(),
            b.public_hex()
        ),
    )
    .unwrap();
    let t = TrustStore::load(&path).unwrap();
    assert_eq!(t.scope(&a.id()), Some(&Scope::Any));
    assert!(t.scope(&b.id()).unwrap().allows("beta"));
    assert!(!t.scope(&b.id()).unwrap().allows("gamma"));
    t.save(&path).unwrap();
    let again = TrustStore::load(&path).unwrap();
    assert_eq!(again.scope(&b.id()), t.scope(&b.id()));
    assert!(Scope::parse("../etc").is_err());
}

#[test]
fn a_changed_signer_is_refused_unless_the_user_allows_it() {
    let w = world();
    let (old, new) = (KeyPair::generate().unwrap(), KeyPair::generate().unwrap());
    let mut trust = TrustStore::default();
    trust.add(&old.id(), &old.public_hex()).unwrap();
    trust.add(&new.id(), &new.public_hex()).unwrap();
    w.publish("acme", "a", "scorer", "1.0.0", Some(&old));
    let (_, lock) = w
        .installer(&trust, true)
        .install(&reqs(&["acme/scorer@^1"]), &w.into, None)
        .unwrap();
    // The name's next release comes signed by someone else (a stolen account, say).
    w.publish("acme", "b", "scorer", "1.1.0", Some(&new));
    let mut i = w.installer(&trust, true);
    i.signers = lock
        .plugins
        .iter()
        .map(|e| (e.name.clone(), e.key.clone()))
        .collect();
    let e = i
        .install(&reqs(&["acme/scorer@^1"]), &w.into, None)
        .unwrap_err();
    assert!(
        matches!(&e, RegistryError::SignerChanged { old: o, new: n, .. }
            if *o == old.id() && *n == new.id()),
        "{e}"
    );
    assert!(e.to_string().contains("--allow-signer-change"), "{e}");
    i.allow_signer_change = true;
    let (done, _) = i
        .install(&reqs(&["acme/scorer@^1"]), &w.into, None)
        .unwrap();
    assert_eq!(done[0].version.to_string(), "1.1.0");
}

#[test]
fn a_hand_written_lock_entry_does_not_bypass_signatures() {
    let w = world();
    let trust = TrustStore::default();
    // An unsigned package in the registry, and a lockfile entry someone wrote for it.
    let bytes = component("x", "scorer", "1.0.0");
    let r = release("acme", &bytes, &[]);
    w.reg.publish(&r, &bytes).unwrap();
    let lock = Lockfile {
        plugins: vec![LockEntry {
            name: r.name.clone(),
            version: r.version.clone(),
            digest: r.digest.clone(),
            key: None,
            unsigned: true,
            source: None,
            registry: None,
        }],
        ..Lockfile::default()
    };
    let e = w
        .installer(&trust, true)
        .install_locked(&lock, &w.into)
        .unwrap_err();
    assert!(matches!(e, RegistryError::Unsigned { .. }), "{e}");
    assert!(!r.name.installed_path(&w.into).exists());
    // The user's explicit --allow-unsigned still works.
    let mut i = w.installer(&trust, true);
    i.policy = TrustPolicy::AllowUnsigned;
    i.install_locked(&lock, &w.into).unwrap();
}

#[test]
fn an_offline_locked_install_verifies_the_cached_signature_again() {
    let w = world();
    let key = KeyPair::generate().unwrap();
    let mut trust = TrustStore::default();
    trust.add(&key.id(), &key.public_hex()).unwrap();
    w.publish("acme", "a", "scorer", "1.0.0", Some(&key));
    let (_, lock) = w
        .installer(&trust, true)
        .install(&reqs(&["acme/scorer"]), &w.into, None)
        .unwrap();
    // Offline, from the cache: fine as locked.
    w.installer(&trust, false)
        .install_locked(&lock, &w.into)
        .unwrap();

    // A lockfile claiming another signer does not match the cached, signed line.
    let mut forged = lock.clone();
    forged.plugins[0].key = Some("0123456789abcdef".into());
    let e = w
        .installer(&trust, false)
        .install_locked(&forged, &w.into)
        .unwrap_err();
    assert!(matches!(e, RegistryError::LockMismatch { .. }), "{e}");

    // Once the key is no longer trusted, the cached bytes no longer install.
    let e = w
        .installer(&TrustStore::default(), false)
        .install_locked(&lock, &w.into)
        .unwrap_err();
    assert!(matches!(e, RegistryError::UntrustedKey { .. }), "{e}");

    // A cached release line with a forged signature is caught.
    let hex = lock.plugins[0]
        .digest
        .trim_start_matches("sha256:")
        .to_string();
    let line = w.cache.join(format!("{hex}.release.json"));
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&line).unwrap()).unwrap();
    v["signature"] = serde_json::json!("00".repeat(64));
    std::fs::write(&line, v.to_string()).unwrap();
    let e = w
        .installer(&trust, false)
        .install_locked(&lock, &w.into)
        .unwrap_err();
    assert!(matches!(e, RegistryError::BadSignature { .. }), "{e}");

    // With no line cached at all, offline cannot verify a signed entry: it says so.
    std::fs::remove_file(&line).unwrap();
    let e = w
        .installer(&trust, false)
        .install_locked(&lock, &w.into)
        .unwrap_err();
    assert!(matches!(e, RegistryError::Unverifiable { .. }), "{e}");
    // Online, the registry's line is verified instead.
    w.installer(&trust, true)
        .install_locked(&lock, &w.into)
        .unwrap();
}

#[test]
fn plain_http_is_for_this_machine_only() {
    for url in ["http://example.com/registry", "http://10.0.0.7:7878"] {
        let e = Registry::open(Some(url)).err().expect("refused");
        assert!(e.to_string().contains("--allow-http"), "{e}");
        assert!(Registry::open_with(Some(url), true).is_ok());
    }
    for url in [
        "http://127.0.0.1:7878",
        "http://localhost:1/x",
        "http://[::1]:9/",
        "https://example.com/registry",
    ] {
        assert!(Registry::open(Some(url)).is_ok(), "{url}");
    }
}
