//! The registry end to end on a folder registry, with stand-in components (see
//! `common`): keygen, publish, search, install with dependencies, lockfile, offline
//! reinstall, yank; then the attack suite — none of which installs anything.

mod common;

use common::{check, component, release, wit_ok};
use galley_registry::*;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn publish(reg: &FileRegistry, key: &KeyPair, bytes: &[u8], deps: &[(&str, &str)]) -> Release {
    let mut r = release("acme", bytes, deps);
    key.sign(&mut r);
    reg.publish(&r, bytes).unwrap();
    r
}

struct World {
    _tmp: tempfile::TempDir,
    reg: FileRegistry,
    key: KeyPair,
    trust: TrustStore,
    cache: PathBuf,
    into: PathBuf,
}

fn world() -> World {
    let tmp = tempfile::tempdir().unwrap();
    let reg = FileRegistry::open(tmp.path().join("registry"));
    let key = KeyPair::generate().unwrap();
    let mut trust = TrustStore::default();
    trust.add(&key.id(), &key.public_hex()).unwrap();
    let cache = tmp.path().join("cache");
    let into = tmp.path().join("plugins");
    World {
        _tmp: tmp,
        reg,
        key,
        trust,
        cache,
        into,
    }
}

impl World {
    fn installer<'a>(&'a self, online: bool, policy: TrustPolicy) -> Installer<'a> {
        Installer {
            registry: online.then_some(&self.reg),
            cache: self.cache.clone(),
            trust: &self.trust,
            policy,
            max_blob: 64 << 20,
            wit_supported: &wit_ok,
            manifest_check: &check,
            signers: Default::default(),
            allow_signer_change: false,
        }
    }

    fn install(&self, reqs: &[&str]) -> Result<(Vec<Installed>, Lockfile), RegistryError> {
        let reqs: Vec<Requirement> = reqs
            .iter()
            .map(|r| Requirement::parse(r).unwrap())
            .collect();
        self.installer(true, TrustPolicy::SignedOnly)
            .install(&reqs, &self.into, None)
    }

    fn nothing_installed(&self) {
        let count = |p: &Path| walk(p);
        assert_eq!(count(&self.into), 0, "something was installed");
        assert_eq!(count(&self.cache), 0, "something reached the cache");
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
fn publish_search_install_lock_offline_yank_update() {
    let w = world();
    publish(
        &w.reg,
        &w.key,
        &component("length-penalty", "penalty", "0.1.0"),
        &[],
    );
    publish(
        &w.reg,
        &w.key,
        &component("length-penalty", "penalty", "0.2.0"),
        &[],
    );
    publish(
        &w.reg,
        &w.key,
        &component("math-answer", "scorer", "1.0.0"),
        &[("acme/penalty", "^0.1")],
    );
    assert_eq!(w.reg.search("").unwrap().len(), 2);
    assert_eq!(
        w.reg.search("score").unwrap(),
        vec![PackageName::parse("acme/scorer").unwrap()]
    );

    // The dependency's requirement (^0.1) wins over the newer 0.2.0.
    let (installed, lock) = w.install(&["acme/scorer"]).unwrap();
    let got: BTreeMap<String, String> = installed
        .iter()
        .map(|i| (i.name.to_string(), i.version.to_string()))
        .collect();
    assert_eq!(got["acme/penalty"], "0.1.0");
    assert_eq!(got["acme/scorer"], "1.0.0");
    assert!(
        installed
            .iter()
            .all(|i| i.signer.as_deref() == Some(w.key.id().as_str()) && i.path.exists())
    );
    assert!(lock.plugins.iter().all(|e| e.key.is_some() && !e.unsigned));
    let lock_path = w.into.join("galley.lock");
    lock.save(&lock_path).unwrap();
    let lock = Lockfile::load(&lock_path).unwrap().unwrap();

    // Offline: the registry is gone, the cache serves the locked bytes.
    std::fs::remove_dir_all(w.into.join("acme")).unwrap();
    let again = w
        .installer(false, TrustPolicy::SignedOnly)
        .install_locked(&lock, &w.into)
        .unwrap();
    assert_eq!(again.len(), 2);
    assert!(again.iter().all(|i| i.path.exists()));

    // Yank penalty 0.1.0 (signed by its publisher): a fresh resolution cannot pick it; the
    // lockfile still installs it.
    yank(&w, "acme/penalty", "0.1.0", Some(&w.key), true);
    let err = w.install(&["acme/scorer"]).unwrap_err().to_string();
    assert!(
        err.contains("acme/penalty")
            && err.contains("0.1.0 (yanked)")
            && err.contains("acme/scorer@1.0.0 needs ^0.1"),
        "{err}"
    );
    let reqs = [Requirement::parse("acme/scorer").unwrap()];
    let (_, relocked) = w
        .installer(true, TrustPolicy::SignedOnly)
        .install(&reqs, &w.into, Some(&lock))
        .unwrap();
    assert_eq!(relocked, lock);

    // Update: a new compatible scorer that takes penalty ^0.2.
    publish(
        &w.reg,
        &w.key,
        &component("math-answer", "scorer", "1.1.0"),
        &[("acme/penalty", "^0.2")],
    );
    let (installed, _) = w.install(&["acme/scorer@^1"]).unwrap();
    let got: BTreeMap<String, String> = installed
        .iter()
        .map(|i| (i.name.to_string(), i.version.to_string()))
        .collect();
    assert_eq!(
        (got["acme/scorer"].as_str(), got["acme/penalty"].as_str()),
        ("1.1.0", "0.2.0")
    );

    // Releases are immutable.
    let err = w
        .reg
        .publish(
            &release(
                "acme",
                &component("length-penalty", "penalty", "0.2.0"),
                &[],
            ),
            &component("length-penalty", "penalty", "0.2.0"),
        )
        .unwrap_err();
    assert!(
        matches!(err, RegistryError::AlreadyPublished { .. }),
        "{err}"
    );
}

#[test]
fn tampered_or_swapped_blobs_are_refused() {
    let w = world();
    let r = publish(
        &w.reg,
        &w.key,
        &component("length-penalty", "penalty", "0.1.0"),
        &[],
    );
    let blob = w.reg.blob_path(&r).unwrap();
    let mut bytes = std::fs::read(&blob).unwrap();
    let n = bytes.len();
    bytes[n / 2] ^= 0xff;
    std::fs::write(&blob, &bytes).unwrap();
    let err = w.install(&["acme/penalty"]).unwrap_err();
    assert!(matches!(err, RegistryError::DigestMismatch { .. }), "{err}");
    w.nothing_installed();

    // Another valid package's bytes in its place (same size would be needed to pass the size
    // check; the digest catches it either way).
    std::fs::write(&blob, component("format", "format", "0.1.0")).unwrap();
    let err = w.install(&["acme/penalty"]).unwrap_err();
    assert!(
        matches!(
            err,
            RegistryError::SizeMismatch { .. } | RegistryError::DigestMismatch { .. }
        ),
        "{err}"
    );
    w.nothing_installed();

    // Truncated.
    std::fs::write(&blob, &bytes[..n / 3]).unwrap();
    assert!(matches!(
        w.install(&["acme/penalty"]).unwrap_err(),
        RegistryError::SizeMismatch { .. }
    ));
    w.nothing_installed();
}

fn rewrite_index(w: &World, name: &str, f: impl Fn(&mut serde_json::Value)) {
    let path = w
        .reg
        .root()
        .join(PackageName::parse(name).unwrap().index_path());
    let text: String = std::fs::read_to_string(&path)
        .unwrap()
        .lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            f(&mut v);
            format!("{v}\n")
        })
        .collect();
    std::fs::write(&path, text).unwrap();
}

#[test]
fn signatures_are_required_trusted_and_valid() {
    let w = world();
    let bytes = component("length-penalty", "penalty", "0.1.0");

    // Unsigned: refused, unless allowed — and then the lockfile says so.
    w.reg
        .publish(&release("acme", &bytes, &[]), &bytes)
        .unwrap();
    assert!(matches!(
        w.install(&["acme/penalty"]).unwrap_err(),
        RegistryError::Unsigned { .. }
    ));
    w.nothing_installed();
    let reqs = [Requirement::parse("acme/penalty").unwrap()];
    let (_, lock) = w
        .installer(true, TrustPolicy::AllowUnsigned)
        .install(&reqs, &w.into, None)
        .unwrap();
    assert!(lock.plugins[0].unsigned && lock.plugins[0].key.is_none());

    // Signed by a key the user does not trust.
    let w = world();
    let stranger = KeyPair::generate().unwrap();
    publish(&w.reg, &stranger, &bytes, &[]);
    let err = w.install(&["acme/penalty"]).unwrap_err();
    assert!(
        matches!(&err, RegistryError::UntrustedKey { key, .. } if *key == stranger.id()),
        "{err}"
    );
    // AllowUnsigned does not lower the bar for signed packages.
    assert!(
        w.installer(true, TrustPolicy::AllowUnsigned)
            .install(&reqs, &w.into, None)
            .is_err()
    );
    w.nothing_installed();

    // A valid signature moved onto an altered line: downgrade of the version, a changed
    // digest, or a dropped dependency all break it.
    for (what, edit) in [
        (
            "version",
            &(|v: &mut serde_json::Value| v["version"] = "0.0.1".into())
                as &dyn Fn(&mut serde_json::Value),
        ),
        ("size", &|v: &mut serde_json::Value| {
            v["size"] = (v["size"].as_u64().unwrap() + 1).into()
        }),
        ("kind", &|v: &mut serde_json::Value| {
            v["kind"] = "evaluator".into()
        }),
        ("signature", &|v: &mut serde_json::Value| {
            v["signature"] = "00".repeat(64).into()
        }),
    ] {
        let w = world();
        publish(&w.reg, &w.key, &bytes, &[]);
        rewrite_index(&w, "acme/penalty", edit);
        let err = w.install(&["acme/penalty"]).unwrap_err();
        assert!(
            matches!(err, RegistryError::BadSignature { .. }),
            "{what}: {err}"
        );
        w.nothing_installed();
    }
}

#[test]
fn a_blob_must_be_the_package_it_is_published_as() {
    // A signed release whose bytes are a different (valid) plugin: the digest matches what
    // was signed, but the component says it is something else.
    let w = world();
    let other = component("length-penalty", "not-penalty", "0.1.0");
    let mut r = release("acme", &other, &[]);
    r.name = PackageName::parse("acme/penalty").unwrap();
    w.key.sign(&mut r);
    w.reg.publish(&r, &other).unwrap();
    let err = w.install(&["acme/penalty"]).unwrap_err();
    assert!(
        matches!(err, RegistryError::ManifestMismatch { .. }),
        "{err}"
    );
    w.nothing_installed();
}

#[test]
fn oversized_blobs_are_refused_before_reading() {
    let w = world();
    publish(
        &w.reg,
        &w.key,
        &component("length-penalty", "penalty", "0.1.0"),
        &[],
    );
    let reqs = [Requirement::parse("acme/penalty").unwrap()];
    let mut inst = w.installer(true, TrustPolicy::SignedOnly);
    inst.max_blob = 1000;
    assert!(matches!(
        inst.install(&reqs, &w.into, None).unwrap_err(),
        RegistryError::TooLarge { .. }
    ));
    w.nothing_installed();
}

#[test]
fn names_and_index_lines_are_validated() {
    for bad in [
        "../etc/passwd",
        "acme/../x",
        "acme",
        "Acme/x",
        "acme/x/y",
        "acme/x y",
        "/x",
        "acme/",
        "acme/ünï",
    ] {
        assert!(
            matches!(PackageName::parse(bad), Err(RegistryError::BadName(_))),
            "{bad}"
        );
        assert!(Requirement::parse(bad).is_err(), "{bad}");
    }
    let w = world();
    publish(
        &w.reg,
        &w.key,
        &component("length-penalty", "penalty", "0.1.0"),
        &[],
    );
    let path = w.reg.root().join("index/acme/penalty.jsonl");
    let good = std::fs::read_to_string(&path).unwrap();
    for (broken, want) in [
        (
            format!("{good}{{not json\n"),
            "penalty.jsonl:2: malformed index line",
        ),
        (
            format!("{good}{}", good.replace("acme/penalty", "acme/other")),
            "names `acme/other`",
        ),
        (good.replace("sha256:", "sha256:../../"), "is not sha256"),
        (format!("{good}{good}"), "appears twice"),
        (
            good.replace("\"kind\"", "\"extra\":1,\"kind\""),
            "unknown field `extra`",
        ),
    ] {
        std::fs::write(&path, &broken).unwrap();
        let err = w.install(&["acme/penalty"]).unwrap_err().to_string();
        assert!(err.contains(want), "want {want:?}, got: {err}");
        w.nothing_installed();
    }
}

#[test]
fn a_changed_locked_digest_is_refused() {
    let w = world();
    publish(
        &w.reg,
        &w.key,
        &component("length-penalty", "penalty", "0.1.0"),
        &[],
    );
    let (_, mut lock) = w.install(&["acme/penalty"]).unwrap();
    lock.plugins[0].digest = format!("sha256:{}", "ab".repeat(32));
    std::fs::remove_dir_all(&w.cache).unwrap();
    let err = w
        .installer(true, TrustPolicy::SignedOnly)
        .install_locked(&lock, &w.into)
        .unwrap_err();
    assert!(
        matches!(err, RegistryError::LockedDigestChanged { .. }),
        "{err}"
    );
    let err = w
        .installer(false, TrustPolicy::SignedOnly)
        .install_locked(&lock, &w.into)
        .unwrap_err();
    assert!(matches!(err, RegistryError::NotCached { .. }), "{err}");
}

#[test]
fn concurrent_publishes_never_corrupt_the_index() {
    let w = world();
    let versions: Vec<Vec<u8>> = (0..8)
        .map(|i| component("length-penalty", "penalty", &format!("0.{i}.0")))
        .collect();
    std::thread::scope(|s| {
        for bytes in &versions {
            let (reg, key) = (&w.reg, &w.key);
            s.spawn(move || publish(reg, key, bytes, &[]));
        }
    });
    let releases = w
        .reg
        .releases(&PackageName::parse("acme/penalty").unwrap())
        .unwrap();
    assert_eq!(releases.len(), 8);
    let (installed, _) = w.install(&["acme/penalty"]).unwrap();
    assert_eq!(installed[0].version, semver::Version::new(0, 7, 0));
}

/// Sets the yank state of `name@version` in `w`'s registry, with a record signed by `key`.
fn yank(w: &World, name: &str, version: &str, key: Option<&KeyPair>, yanked: bool) {
    let name = PackageName::parse(name).unwrap();
    let version = semver::Version::parse(version).unwrap();
    let r = w.reg.release(&name, &version).unwrap().unwrap();
    let record = key.map(|k| k.sign_yank(&r, yanked));
    w.reg.set_yanked(&name, &version, yanked, record).unwrap();
}

#[test]
fn only_the_publisher_can_yank_a_signed_release() {
    let mut w = world();
    publish(
        &w.reg,
        &w.key,
        &component("math-answer", "scorer", "1.0.0"),
        &[],
    );
    publish(
        &w.reg,
        &w.key,
        &component("math-answer", "scorer", "1.1.0"),
        &[],
    );
    let newest = |w: &World| {
        w.install(&["acme/scorer"]).unwrap().0[0]
            .version
            .to_string()
    };

    // Whoever holds the index flips the flag to force the older version: ignored.
    yank(&w, "acme/scorer", "1.1.0", None, true);
    assert_eq!(newest(&w), "1.1.0");
    // A record signed by another key (trusted, even) does not count either.
    let other = KeyPair::generate().unwrap();
    w.trust.add(&other.id(), &other.public_hex()).unwrap();
    yank(&w, "acme/scorer", "1.1.0", Some(&other), true);
    assert_eq!(newest(&w), "1.1.0");
    // The publisher's own record does.
    let key = &w.key;
    yank(&w, "acme/scorer", "1.1.0", Some(key), true);
    assert_eq!(newest(&w), "1.0.0");
    // An older record replayed over a newer one is refused by the registry.
    let name = PackageName::parse("acme/scorer").unwrap();
    let v = semver::Version::new(1, 1, 0);
    let r = w.reg.releases(&name).unwrap().pop().unwrap();
    let mut stale = key.sign_yank(&r, false);
    stale.seq = 1;
    let e = w.reg.set_yanked(&name, &v, false, Some(stale)).unwrap_err();
    assert!(e.to_string().contains("older"), "{e}");
    // The publisher's unyank brings it back.
    yank(&w, "acme/scorer", "1.1.0", Some(key), false);
    assert_eq!(newest(&w), "1.1.0");
}
