//! `galley plugin install | update`: resolve, verify and install plugins, and keep
//! `galley.lock` in step. Plugins come from the project's registry (`--registry`,
//! `GALLEY_REGISTRY`, else the built-in first-party one) or from an OCI registry
//! (`oci://HOST/REPO:TAG`); the lockfile remembers what was asked for, the exact digests and
//! signers, and — for OCI — the manifest digest, so a locked install fetches the same bytes
//! from wherever they came from, or from the cache when offline.

use crate::registry_cmd::{registry, trusted_keys};
use anyhow::{Context, Result, bail};
use galley_registry::{
    Installed, Installer, LockEntry, Lockfile, OciClient, OciRef, OciSource, PackageName, Release,
    Requirement, Source, TrustPolicy, TrustStore,
};
use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

/// The largest component galley installs.
const MAX_BLOB: u64 = 256 << 20;

pub struct InstallArgs<'a> {
    pub reqs: &'a [String],
    pub registry: &'a Option<String>,
    pub into: &'a Path,
    pub lock: &'a Path,
    pub allow_unsigned: bool,
    pub offline: bool,
}

fn blob_cache() -> PathBuf {
    galley_runtime::default_cache_dir()
        .and_then(|c| c.parent().map(|p| p.join("blobs")))
        .unwrap_or_else(|| PathBuf::from(".galley/cache"))
}

/// Reads a component's embedded manifest for the installer's last check.
fn manifest_check(bytes: &[u8]) -> std::result::Result<(String, semver::Version), String> {
    let info = galley_runtime::inspect(bytes, "blob").map_err(|e| e.to_string())?;
    let m = info.manifest.ok_or("no galley manifest")?;
    Ok((m.full_name(), m.version))
}

fn installer<'a>(
    source: Option<&'a dyn Source>,
    trust: &'a TrustStore,
    allow_unsigned: bool,
) -> Installer<'a> {
    Installer {
        registry: source,
        cache: blob_cache(),
        trust,
        policy: if allow_unsigned {
            TrustPolicy::AllowUnsigned
        } else {
            TrustPolicy::SignedOnly
        },
        max_blob: MAX_BLOB,
        wit_supported: &galley_runtime::wit_supported,
        manifest_check: &manifest_check,
    }
}

fn print_installed(installed: &[Installed]) {
    for i in installed {
        let by = i
            .signer
            .as_deref()
            .map(|k| format!("signed by {k}"))
            .unwrap_or_else(|| "UNSIGNED".into());
        println!(
            "{:<32} {:<10} {by:<26} {}",
            i.name.to_string(),
            i.version.to_string(),
            i.path.display()
        );
    }
}

pub fn install(a: InstallArgs<'_>) -> Result<()> {
    let trust = trusted_keys()?;
    let lock = Lockfile::load(a.lock)?;
    if a.reqs.is_empty() {
        let lock = lock.with_context(|| {
            format!(
                "nothing to install: name plugins, or have a {}",
                a.lock.display()
            )
        })?;
        return install_locked(&lock, &a, &trust);
    }
    if a.offline {
        bail!(
            "--offline installs what {} pins; name no plugins",
            a.lock.display()
        );
    }
    let (oci, named): (Vec<&String>, Vec<&String>) =
        a.reqs.iter().partition(|r| r.starts_with("oci://"));
    let mut lock = lock.unwrap_or_default();
    let mut installed = Vec::new();
    if !named.is_empty() {
        let mut wanted = lock.requirements.clone();
        if wanted.is_empty() {
            // A lockfile from before requirements were recorded: keep its registry packages.
            for e in lock.plugins.iter().filter(|e| e.source.is_none()) {
                wanted.insert(
                    e.name.clone(),
                    semver::VersionReq::parse(&format!("={}", e.version))?,
                );
            }
        }
        for r in &named {
            let r = Requirement::parse(r)?;
            wanted.insert(r.name, r.req);
        }
        let (done, new_lock) = resolve_and_install(&lock, wanted, &a, &trust, &BTreeMap::new())?;
        installed.extend(done);
        lock = new_lock;
    }
    for spec in oci {
        let (done, entry) = install_oci(spec, &a, &trust)?;
        lock.plugins.retain(|e| e.name != entry.name);
        lock.requirements.remove(&entry.name);
        lock.plugins.push(entry);
        installed.push(done);
    }
    lock.plugins.sort_by(|x, y| x.name.cmp(&y.name));
    lock.save(a.lock)?;
    print_installed(&installed);
    Ok(())
}

/// Resolves `wanted` against the project's registry, keeping the versions `lock` pins unless
/// they are in `unpin`, installs, and returns the new lockfile (OCI entries carried over).
fn resolve_and_install(
    lock: &Lockfile,
    wanted: BTreeMap<PackageName, semver::VersionReq>,
    a: &InstallArgs<'_>,
    trust: &TrustStore,
    unpin: &BTreeMap<PackageName, ()>,
) -> Result<(Vec<Installed>, Lockfile)> {
    let reg = registry(a.registry)?;
    let reqs: Vec<Requirement> = wanted
        .iter()
        .map(|(name, req)| Requirement {
            name: name.clone(),
            req: req.clone(),
        })
        .collect();
    let pinned = Lockfile {
        plugins: lock
            .plugins
            .iter()
            .filter(|e| e.source.is_none() && !unpin.contains_key(&e.name))
            .cloned()
            .collect(),
        ..Lockfile::default()
    };
    let (installed, mut new_lock) = installer(Some(reg.source()), trust, a.allow_unsigned)
        .install(&reqs, a.into, Some(&pinned))?;
    new_lock.requirements = wanted;
    for e in lock.plugins.iter().filter(|e| e.source.is_some()) {
        if !new_lock.plugins.iter().any(|n| n.name == e.name) {
            new_lock.plugins.push(e.clone());
        }
    }
    new_lock.plugins.sort_by(|x, y| x.name.cmp(&y.name));
    Ok((installed, new_lock))
}

/// `galley plugin update [NAME...]`: re-resolves what the lockfile's requirements allow,
/// moving the named packages (all, when none are named) to their newest fitting versions.
pub fn update(names: &[String], a: InstallArgs<'_>) -> Result<()> {
    let trust = trusted_keys()?;
    let lock = Lockfile::load(a.lock)?
        .with_context(|| format!("no {}: install something first", a.lock.display()))?;
    let mut wanted = lock.requirements.clone();
    if wanted.is_empty() {
        for e in lock.plugins.iter().filter(|e| e.source.is_none()) {
            wanted.insert(e.name.clone(), semver::VersionReq::STAR);
        }
    }
    let mut unpin = BTreeMap::new();
    for n in names {
        let name = PackageName::parse(n)?;
        match lock.plugins.iter().find(|e| e.name == name) {
            None => bail!("{name} is not in {}", a.lock.display()),
            Some(e) if e.source.is_some() => bail!(
                "{name} came from {}; update it by installing the new OCI reference",
                e.source.as_deref().unwrap_or("")
            ),
            Some(_) => unpin.insert(name, ()),
        };
    }
    if names.is_empty() {
        unpin = lock.plugins.iter().map(|e| (e.name.clone(), ())).collect();
    }
    let (_, new_lock) = resolve_and_install(&lock, wanted, &a, &trust, &unpin)?;
    let mut changed = 0;
    for e in &new_lock.plugins {
        match lock.plugins.iter().find(|o| o.name == e.name) {
            Some(o) if o.version == e.version => {}
            Some(o) => {
                println!("{:<32} {} -> {}", e.name.to_string(), o.version, e.version);
                changed += 1;
            }
            None => {
                println!("{:<32} (new) {}", e.name.to_string(), e.version);
                changed += 1;
            }
        }
    }
    for o in lock
        .plugins
        .iter()
        .filter(|o| !new_lock.plugins.iter().any(|e| e.name == o.name))
    {
        println!(
            "{:<32} {} -> (no longer needed)",
            o.name.to_string(),
            o.version
        );
        changed += 1;
    }
    if changed == 0 {
        println!("everything is at the newest version its requirements allow");
    }
    new_lock.save(a.lock)?;
    Ok(())
}

/// Installs exactly what the lockfile pins: registry entries from the registry (or the cache),
/// OCI entries from their pinned manifests (or the cache).
fn install_locked(lock: &Lockfile, a: &InstallArgs<'_>, trust: &TrustStore) -> Result<()> {
    let (oci, plain): (Vec<&LockEntry>, Vec<&LockEntry>) =
        lock.plugins.iter().partition(|e| e.source.is_some());
    let mut installed = Vec::new();
    if !plain.is_empty() {
        let sub = Lockfile {
            plugins: plain.into_iter().cloned().collect(),
            ..Lockfile::default()
        };
        let reg = if a.offline {
            None
        } else {
            Some(registry(a.registry)?)
        };
        installed.extend(
            installer(reg.as_ref().map(|r| r.source()), trust, true)
                .install_locked(&sub, a.into)?,
        );
    }
    for e in oci {
        let sub = Lockfile {
            plugins: vec![e.clone()],
            ..Lockfile::default()
        };
        let cached = installer(None, trust, true).install_locked(&sub, a.into);
        let done = match cached {
            Ok(done) => done,
            Err(galley_registry::RegistryError::NotCached { .. }) if !a.offline => {
                let reference = OciRef::parse(e.source.as_deref().unwrap_or_default())?;
                let client = OciClient::new(&reference)?;
                let pulled = client.pull(&reference)?;
                let release = oci_release(&client, &reference, pulled, e.unsigned)?;
                let source = OciSource::new(client, reference, release);
                installer(Some(&source), trust, e.unsigned).install_locked(&sub, a.into)?
            }
            Err(err) => return Err(err.into()),
        };
        installed.extend(done);
    }
    print_installed(&installed);
    Ok(())
}

/// The release an OCI artifact is: its signed annotation, or — for an artifact another tool
/// pushed — an unsigned release read from the component itself (only with --allow-unsigned).
fn oci_release(
    client: &OciClient,
    reference: &OciRef,
    pulled: galley_registry::Pulled,
    allow_unsigned: bool,
) -> Result<Release> {
    if let Some(r) = pulled.release {
        return Ok(r);
    }
    if !allow_unsigned {
        bail!(
            "{reference}: carries no galley release line (pushed by another tool), so it is unsigned; pass --allow-unsigned to install it anyway"
        );
    }
    if pulled.layer.size > MAX_BLOB {
        bail!(
            "{reference}: the component is {} bytes, over the {MAX_BLOB}-byte limit",
            pulled.layer.size
        );
    }
    let mut blob = Vec::new();
    client
        .open_blob(&reference.repo, &pulled.layer.digest)?
        .take(pulled.layer.size + 1)
        .read_to_end(&mut blob)?;
    let info = galley_runtime::inspect(&blob, &reference.to_string())?;
    if info.digest != pulled.layer.digest || blob.len() as u64 != pulled.layer.size {
        bail!(
            "{reference}: the layer is {} ({} bytes), but the manifest says {} ({} bytes)",
            info.digest,
            blob.len(),
            pulled.layer.digest,
            pulled.layer.size
        );
    }
    crate::registry_cmd::unsigned_release(&info, None, &reference.to_string())
}

fn install_oci(
    spec: &str,
    a: &InstallArgs<'_>,
    trust: &TrustStore,
) -> Result<(Installed, LockEntry)> {
    let reference = OciRef::parse(spec)?;
    let client = OciClient::new(&reference)?;
    let pulled = client.pull(&reference)?;
    let pinned = reference.pinned(&pulled.manifest_digest);
    let release = oci_release(&client, &reference, pulled, a.allow_unsigned)?;
    let req = Requirement {
        name: release.name.clone(),
        req: semver::VersionReq::parse(&format!("={}", release.version))?,
    };
    let source = OciSource::new(client, reference, release);
    let (mut installed, lock) =
        installer(Some(&source), trust, a.allow_unsigned).install(&[req], a.into, None)?;
    let mut entry = lock
        .plugins
        .into_iter()
        .next()
        .context("the OCI install produced no lock entry")?;
    entry.source = Some(pinned.to_string());
    Ok((installed.remove(0), entry))
}
