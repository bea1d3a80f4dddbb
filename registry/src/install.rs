//! Verified installs. Order of checks for a release: signature (present, trusted key, valid
//! over the signed fields), then the blob — size cap, length and SHA-256 computed while it is
//! read, against the signed values — then the component's own manifest against the release.
//! Everything is fetched and verified before anything is installed, and every file is written
//! by rename, so a failure leaves neither the cache nor the plugin folder half-done.

use crate::error::{RegistryError, io};
use crate::index::{PackageName, Release};
use crate::keys::TrustStore;
use crate::lock::{LockEntry, Lockfile};
use crate::resolve::{Requirement, resolve};
use crate::source::Source;
use crate::store::write_atomic;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrustPolicy {
    /// Only releases signed by a trusted key.
    SignedOnly,
    /// Unsigned releases too (recorded as such in the lockfile); signed ones must still verify.
    AllowUnsigned,
}

/// Reads the component's embedded manifest: `(name, version)`, the name as `namespace/name`
/// when the manifest names its namespace. Supplied by the caller (the runtime owns component
/// parsing).
pub type ManifestCheck = dyn Fn(&[u8]) -> Result<(String, semver::Version), String>;

pub struct Installer<'a> {
    /// `None` when offline: only the cache is used.
    pub registry: Option<&'a dyn Source>,
    /// Content-addressed cache of verified blobs.
    pub cache: PathBuf,
    pub trust: &'a TrustStore,
    pub policy: TrustPolicy,
    /// The largest blob accepted, in bytes.
    pub max_blob: u64,
    pub wit_supported: &'a dyn Fn(&semver::Version) -> bool,
    pub manifest_check: &'a ManifestCheck,
    /// The key each package was signed by when it was last installed (`galley.lock`'s
    /// record; `None`: unsigned). A release by another key is refused unless
    /// `allow_signer_change`: a new signer can mean a stolen name.
    pub signers: BTreeMap<PackageName, Option<String>>,
    pub allow_signer_change: bool,
}

/// A release whose bytes passed every check, waiting to be written.
struct Verified {
    name: PackageName,
    version: semver::Version,
    digest: String,
    signer: Option<String>,
    blob: Vec<u8>,
    /// The release line it was verified against, kept in the cache beside the blob so a
    /// later offline install re-verifies the signature instead of trusting the lockfile.
    release: Option<Release>,
}

#[derive(Debug, Clone)]
pub struct Installed {
    pub name: PackageName,
    pub version: semver::Version,
    pub path: PathBuf,
    pub signer: Option<String>,
}

impl Installer<'_> {
    /// Resolves `reqs` (keeping versions the lockfile pins when they still fit), verifies and
    /// installs them into `into/NAMESPACE/NAME.wasm`, and returns the new lockfile.
    pub fn install(
        &self,
        reqs: &[Requirement],
        into: &Path,
        lock: Option<&Lockfile>,
    ) -> Result<(Vec<Installed>, Lockfile), RegistryError> {
        let registry = self.registry.ok_or_else(|| {
            RegistryError::Unsatisfiable(
                "resolving needs a registry; offline, install from galley.lock".into(),
            )
        })?;
        let locked: BTreeMap<PackageName, semver::Version> = lock
            .map(|l| {
                l.plugins
                    .iter()
                    .map(|e| (e.name.clone(), e.version.clone()))
                    .collect()
            })
            .unwrap_or_default();
        // Resolution asks about a release many times; an ignored yank mark is said once.
        let warned = std::cell::RefCell::new(std::collections::BTreeSet::new());
        let yanked = |r: &Release| {
            let (yanked, ignored) = self.trust.yank_state(r);
            if let Some(why) = ignored
                && warned
                    .borrow_mut()
                    .insert((r.name.clone(), r.version.clone()))
            {
                tracing::warn!("{why}");
            }
            yanked
        };
        let releases = resolve(registry, reqs, self.wit_supported, &yanked, &locked)?;
        let mut verified = Vec::new();
        for r in &releases {
            // A locked version must still be the locked bytes.
            if let Some(e) = lock.and_then(|l| {
                l.plugins
                    .iter()
                    .find(|e| e.name == r.name && e.version == r.version)
            }) && e.digest != r.digest
            {
                return Err(RegistryError::LockedDigestChanged {
                    name: r.name.to_string(),
                    version: r.version.to_string(),
                    locked: e.digest.clone(),
                    offered: r.digest.clone(),
                });
            }
            let signer = self.check_signature(r)?;
            self.check_signer_kept(&r.name, &signer)?;
            let blob = self.fetch(r)?;
            verified.push(Verified {
                name: r.name.clone(),
                version: r.version.clone(),
                digest: r.digest.clone(),
                signer,
                blob,
                release: Some(r.clone()),
            });
        }
        self.commit(verified, into)
    }

    /// Installs exactly what `lock` pins: from the cache when the bytes are there (offline
    /// works), else from the registry, which must serve the same digest. The lockfile is not
    /// a trust root: each entry's signature is verified again (from the release line cached
    /// beside the blob, else the registry's) under the same policy as a fresh install, so a
    /// hand-edited entry cannot smuggle in an unsigned or re-signed package.
    pub fn install_locked(
        &self,
        lock: &Lockfile,
        into: &Path,
    ) -> Result<Vec<Installed>, RegistryError> {
        let mut verified = Vec::new();
        for e in &lock.plugins {
            let cached = self.read_cache(&e.digest)?;
            let release = match self.read_cached_release(&e.digest) {
                Some(r) => Some(r),
                None => match self.registry {
                    Some(reg) => Some(self.registry_release(reg, e)?),
                    None if cached.is_none() => {
                        return Err(RegistryError::NotCached {
                            name: e.name.to_string(),
                            version: e.version.to_string(),
                        });
                    }
                    None => None,
                },
            };
            let signer = self.verify_locked(e, release.as_ref())?;
            let blob = match (cached, &release) {
                (Some(blob), _) => {
                    // The cache file was hashed on read against the pinned digest.
                    self.check_manifest(&e.name, &e.version, &blob)?;
                    blob
                }
                (None, Some(r)) => self.fetch(r)?,
                (None, None) => unreachable!("no release only when the blob is cached"),
            };
            verified.push(Verified {
                name: e.name.clone(),
                version: e.version.clone(),
                digest: e.digest.clone(),
                signer,
                blob,
                release,
            });
        }
        Ok(self.commit(verified, into)?.0)
    }

    /// The registry's release line for a locked entry, which must carry the locked digest.
    fn registry_release(&self, reg: &dyn Source, e: &LockEntry) -> Result<Release, RegistryError> {
        let r = reg.release(&e.name, &e.version)?.ok_or_else(|| {
            RegistryError::Unsatisfiable(format!(
                "{}@{} is locked but no longer in the registry",
                e.name, e.version
            ))
        })?;
        if r.digest != e.digest {
            return Err(RegistryError::LockedDigestChanged {
                name: e.name.to_string(),
                version: e.version.to_string(),
                locked: e.digest.clone(),
                offered: r.digest.clone(),
            });
        }
        Ok(r)
    }

    /// Checks a locked entry against its release line under this installer's policy; returns
    /// the signer. Without a line (offline, nothing cached) only an unsigned entry can pass,
    /// and only where unsigned packages are allowed.
    fn verify_locked(
        &self,
        e: &LockEntry,
        release: Option<&Release>,
    ) -> Result<Option<String>, RegistryError> {
        let (name, version) = (e.name.to_string(), e.version.to_string());
        let Some(r) = release else {
            return match &e.key {
                Some(key) => Err(RegistryError::Unverifiable {
                    name,
                    version,
                    key: key.clone(),
                }),
                None if self.policy == TrustPolicy::AllowUnsigned => Ok(None),
                None => Err(RegistryError::Unsigned { name, version }),
            };
        };
        if r.name != e.name || r.version != e.version || r.digest != e.digest {
            return Err(RegistryError::LockMismatch {
                name,
                version,
                locked: e.digest.clone(),
                found: format!("{}@{} {}", r.name, r.version, r.digest),
            });
        }
        let signer = self.check_signature(r)?;
        if signer != e.key {
            let show = |k: &Option<String>| {
                k.as_ref()
                    .map_or("unsigned".to_string(), |k| format!("signed by {k}"))
            };
            return Err(RegistryError::LockMismatch {
                name,
                version,
                locked: show(&e.key),
                found: show(&signer),
            });
        }
        Ok(signer)
    }

    fn check_signature(&self, r: &Release) -> Result<Option<String>, RegistryError> {
        match self.trust.verify(r) {
            Ok(id) => Ok(Some(id)),
            Err(RegistryError::Unsigned { .. }) if self.policy == TrustPolicy::AllowUnsigned => {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// Refuses a release signed by another key than the package's last install was.
    fn check_signer_kept(
        &self,
        name: &PackageName,
        signer: &Option<String>,
    ) -> Result<(), RegistryError> {
        match self.signers.get(name) {
            Some(Some(old)) if signer.as_ref() != Some(old) && !self.allow_signer_change => {
                Err(RegistryError::SignerChanged {
                    name: name.to_string(),
                    old: old.clone(),
                    new: signer.clone().unwrap_or_else(|| "none (unsigned)".into()),
                })
            }
            _ => Ok(()),
        }
    }

    fn cache_path(&self, digest: &str) -> Option<PathBuf> {
        let hex = digest.strip_prefix("sha256:")?;
        (hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
            .then(|| self.cache.join(format!("{hex}.wasm")))
    }

    /// The release line an earlier install verified for `digest`, if it is in the cache
    /// (it is checked again: the cache is not trusted).
    fn read_cached_release(&self, digest: &str) -> Option<Release> {
        let path = self.cache_path(digest)?.with_extension("release.json");
        let bytes = std::fs::read(path).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    fn read_cache(&self, digest: &str) -> Result<Option<Vec<u8>>, RegistryError> {
        let Some(path) = self.cache_path(digest) else {
            return Ok(None);
        };
        match std::fs::read(&path) {
            Ok(bytes) if sha256(&bytes) == digest => Ok(Some(bytes)),
            Ok(_) => {
                // A corrupted cache entry is dropped and fetched again.
                let _ = std::fs::remove_file(&path);
                Ok(None)
            }
            Err(_) => Ok(None),
        }
    }

    /// The release's blob, verified against its signed size and digest and its manifest.
    fn fetch(&self, r: &Release) -> Result<Vec<u8>, RegistryError> {
        let (name, version) = (r.name.to_string(), r.version.to_string());
        if r.size > self.max_blob {
            return Err(RegistryError::TooLarge {
                name,
                version,
                cap: self.max_blob,
            });
        }
        let blob = match self.read_cache(&r.digest)? {
            Some(b) => b,
            None => {
                let reg = self.registry.ok_or_else(|| RegistryError::NotCached {
                    name: name.clone(),
                    version: version.clone(),
                })?;
                let path = PathBuf::from(format!("{}: {name}@{version} blob", reg.describe()));
                let file = reg.open_blob(r)?;
                // Hash while reading, and never read past the cap (or past the signed size).
                let mut limited = file.take(self.max_blob.min(r.size) + 1);
                let mut hasher = Sha256::new();
                let mut blob = Vec::with_capacity(r.size as usize);
                let mut chunk = [0u8; 64 * 1024];
                loop {
                    let n = limited.read(&mut chunk).map_err(|e| io(&path, e))?;
                    if n == 0 {
                        break;
                    }
                    hasher.update(&chunk[..n]);
                    blob.extend_from_slice(&chunk[..n]);
                }
                if blob.len() as u64 > self.max_blob {
                    return Err(RegistryError::TooLarge {
                        name,
                        version,
                        cap: self.max_blob,
                    });
                }
                if blob.len() as u64 != r.size {
                    return Err(RegistryError::SizeMismatch {
                        name,
                        version,
                        expected: r.size,
                        found: blob.len() as u64,
                    });
                }
                let found = format!("sha256:{}", hex::encode(hasher.finalize()));
                if found != r.digest {
                    return Err(RegistryError::DigestMismatch {
                        name,
                        version,
                        expected: r.digest.clone(),
                        found,
                    });
                }
                blob
            }
        };
        self.check_manifest(&r.name, &r.version, &blob)?;
        Ok(blob)
    }

    fn check_manifest(
        &self,
        want: &PackageName,
        version: &semver::Version,
        blob: &[u8],
    ) -> Result<(), RegistryError> {
        let mismatch = |found: String| RegistryError::ManifestMismatch {
            name: want.to_string(),
            version: version.to_string(),
            found,
        };
        let (name, v) =
            (self.manifest_check)(blob).map_err(|e| mismatch(format!("unreadable ({e})")))?;
        // A component that names its namespace must be published under it.
        if (name != want.name && name != want.to_string()) || &v != version {
            return Err(mismatch(format!("{name}@{v}")));
        }
        Ok(())
    }

    fn commit(
        &self,
        verified: Vec<Verified>,
        into: &Path,
    ) -> Result<(Vec<Installed>, Lockfile), RegistryError> {
        let mut installed = Vec::new();
        let mut lock = Lockfile::default();
        for v in verified {
            if let Some(cache) = self.cache_path(&v.digest) {
                write_atomic(&cache, &v.blob)?;
                if let Some(r) = &v.release {
                    let line = serde_json::to_vec(r).expect("a release serializes");
                    write_atomic(&cache.with_extension("release.json"), &line)?;
                }
            }
            let path = v.name.installed_path(into);
            write_atomic(&path, &v.blob)?;
            lock.plugins.push(LockEntry {
                registry: None,
                name: v.name.clone(),
                version: v.version.clone(),
                digest: v.digest,
                unsigned: v.signer.is_none(),
                key: v.signer.clone(),
                source: None,
            });
            installed.push(Installed {
                name: v.name,
                version: v.version,
                path,
                signer: v.signer,
            });
        }
        lock.plugins.sort_by(|a, b| a.name.cmp(&b.name));
        Ok((installed, lock))
    }
}

pub(crate) fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}
