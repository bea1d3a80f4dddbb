//! A project's plugins: which registry it installs from, which keys it trusts, and
//! `galley.lock` kept in step with the install folder. These are the operations behind
//! `galley plugin install | update | list | remove`: resolve requirements (keeping what the
//! lockfile pins unless asked to move it), install from a registry or an OCI reference,
//! install exactly what the lockfile pins (offline from the cache), and merge the OCI entries
//! a registry resolution does not know about back into the new lockfile.

use crate::error::RegistryError;
use crate::index::{PackageName, Release};
use crate::install::{Installed, Installer, ManifestCheck, TrustPolicy};
use crate::keys::TrustStore;
use crate::lock::{LockEntry, Lockfile};
use crate::oci::{OciClient, OciRef, OciSource, Pulled};
use crate::package::Describe;
use crate::resolve::Requirement;
use crate::source::{HttpRegistry, Source, StaticRegistry};
use crate::store::FileRegistry;
use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::PathBuf;

mod first_party {
    include!(concat!(env!("OUT_DIR"), "/default_registry.rs"));
}

/// `ID PUBLIC_KEY_HEX` of the first-party signing key compiled into galley.
pub fn first_party_key() -> Option<(&'static str, &'static str)> {
    first_party::FIRST_PARTY_KEY
        .trim()
        .split_once(' ')
        .map(|(id, k)| (id, k.trim()))
}

/// Opens the registry a lockfile label names (the binary knows the project's names).
pub type OpenRegistry<'a> = dyn Fn(&str) -> Result<Registry, RegistryError> + 'a;

/// The lockfile label of the built-in first-party registry.
pub const BUILTIN: &str = "builtin";

/// Where a project names its registries (as cargo's `.cargo/config.toml`):
/// ```toml
/// [registries]
/// team = "https://plugins.example.com"
/// vendored = "third-party/registry"
/// ```
pub const PROJECT_CONFIG: &str = ".galley/config.toml";

/// The `[registries]` of the project config at `path` (none when the file is absent).
pub fn project_registries(
    path: &std::path::Path,
) -> Result<BTreeMap<String, String>, RegistryError> {
    #[derive(serde::Deserialize, Default)]
    #[serde(deny_unknown_fields)]
    struct ProjectConfig {
        #[serde(default)]
        registries: BTreeMap<String, String>,
    }
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
        Err(e) => return Err(crate::error::io(path, e)),
    };
    let cfg: ProjectConfig = toml::from_str(&text).map_err(|e| RegistryError::BadFile {
        path: path.into(),
        reason: e.to_string(),
    })?;
    if cfg.registries.contains_key(BUILTIN) {
        return Err(RegistryError::BadFile {
            path: path.into(),
            reason: format!("`registries.{BUILTIN}` is the name of the built-in registry"),
        });
    }
    Ok(cfg.registries)
}

/// A registry a project installs from or publishes to.
pub enum Registry {
    File(FileRegistry),
    Http(HttpRegistry),
    /// The first-party registry compiled into galley (read-only).
    BuiltIn(StaticRegistry),
}

impl Registry {
    /// `spec`, else `GALLEY_REGISTRY`, else the built-in first-party registry. A spec is a
    /// folder (`DIR` or `file://DIR`) or a server (`https://`, or `http://` on this machine).
    pub fn open(spec: Option<&str>) -> Result<Self, RegistryError> {
        Self::open_with(spec, false)
    }

    /// Like `open`; `allow_http` also admits plain `http://` to other machines, where anyone
    /// on the path can change index lines (hide versions, flip yank flags) and see tokens.
    pub fn open_with(spec: Option<&str>, allow_http: bool) -> Result<Self, RegistryError> {
        let spec = match spec.map(String::from).or_else(|| {
            std::env::var("GALLEY_REGISTRY")
                .ok()
                .filter(|s| !s.is_empty())
        }) {
            Some(s) => s,
            None => return Ok(Self::builtin()),
        };
        if let Some(rest) = spec.strip_prefix("http://")
            && !allow_http
            && !crate::oci::is_loopback(rest.split(['/', '?', '#']).next().unwrap_or(""))
        {
            return Err(RegistryError::BadReference(format!(
                "registry `{spec}`: plain http:// to another machine lets anyone on the path change what you install and read your token; use https://, or pass --allow-http if this network is yours"
            )));
        }
        if spec.starts_with("http://") || spec.starts_with("https://") {
            return Ok(Registry::Http(HttpRegistry::new(&spec)?));
        }
        if spec.contains("://") && !spec.starts_with("file://") {
            return Err(RegistryError::BadReference(format!(
                "registry `{spec}`: use a folder, file://, http:// or https://"
            )));
        }
        Ok(Registry::File(FileRegistry::open(
            spec.strip_prefix("file://").unwrap_or(&spec),
        )))
    }

    /// The registry a lockfile label names: `builtin`, a name from the project's
    /// `[registries]` (`.galley/config.toml`), or a folder or URL.
    pub fn open_label(
        label: &str,
        named: &BTreeMap<String, String>,
        allow_http: bool,
    ) -> Result<Self, RegistryError> {
        if label == BUILTIN {
            return Ok(Self::builtin());
        }
        Self::open_with(
            Some(named.get(label).map_or(label, String::as_str)),
            allow_http,
        )
    }

    /// The first-party registry compiled into galley.
    pub fn builtin() -> Self {
        let files = first_party::FILES
            .iter()
            .map(|(p, b)| (p.to_string(), *b))
            .collect();
        Registry::BuiltIn(StaticRegistry {
            label: "the built-in first-party registry".into(),
            files,
        })
    }

    pub fn source(&self) -> &dyn Source {
        match self {
            Registry::File(f) => f,
            Registry::Http(h) => h,
            Registry::BuiltIn(s) => s,
        }
    }

    fn read_only() -> RegistryError {
        RegistryError::BadReference(
            "the built-in registry is read-only: pass --registry DIR|URL (or set GALLEY_REGISTRY)"
                .into(),
        )
    }

    /// Publishes a (signed) release and its blob; a server needs `token`.
    pub fn publish(
        &self,
        r: &Release,
        blob: &[u8],
        token: impl FnOnce() -> Result<String, RegistryError>,
    ) -> Result<(), RegistryError> {
        match self {
            Registry::File(f) => f.publish(r, blob),
            Registry::Http(h) => h.publish(r, blob, &token()?),
            Registry::BuiltIn(_) => Err(Self::read_only()),
        }
    }

    /// Refuses writes to the built-in registry.
    pub fn check_writable(&self) -> Result<(), RegistryError> {
        match self {
            Registry::BuiltIn(_) => Err(Self::read_only()),
            _ => Ok(()),
        }
    }

    /// The release `name@version` as this registry lists it.
    pub fn release(
        &self,
        name: &PackageName,
        version: &semver::Version,
    ) -> Result<Release, RegistryError> {
        self.source()
            .release(name, version)?
            .ok_or_else(|| RegistryError::Unsatisfiable(format!("{name} has no version {version}")))
    }

    /// Yanks (or unyanks) a version. A signed release needs `key`, its own signing key:
    /// installers believe only a yank record signed by the release's key.
    pub fn set_yanked(
        &self,
        name: &PackageName,
        version: &semver::Version,
        yanked: bool,
        key: Option<&crate::keys::KeyPair>,
        token: impl FnOnce() -> Result<String, RegistryError>,
    ) -> Result<(), RegistryError> {
        let record = match key {
            Some(k) => Some(k.sign_yank(&self.release(name, version)?, yanked)),
            None => None,
        };
        match self {
            Registry::File(f) => f.set_yanked(name, version, yanked, record),
            Registry::Http(h) => h.set_yanked(name, version, yanked, record.as_ref(), &token()?),
            Registry::BuiltIn(_) => Err(Self::read_only()),
        }
    }

    /// `(name, kind, live versions)` of the packages whose name contains `term`.
    pub fn search(&self, term: &str) -> Result<Vec<(String, String, Vec<String>)>, RegistryError> {
        let names = match self {
            Registry::Http(h) => return h.search(term),
            Registry::File(f) => f.search(term)?,
            Registry::BuiltIn(b) => b.search(term),
        };
        let mut rows = Vec::new();
        for name in names {
            let releases = self.source().releases(&name)?;
            let live = releases
                .iter()
                .filter(|r| !r.yanked)
                .map(|r| r.version.to_string())
                .collect();
            let kind = releases
                .last()
                .map(|r| r.kind.to_string())
                .unwrap_or_default();
            rows.push((name.to_string(), kind, live));
        }
        Ok(rows)
    }
}

impl TrustStore {
    /// The keys this user trusts: their trust file plus the first-party key galley ships
    /// with, which signs the `galley` namespace only.
    pub fn for_user() -> Result<Self, RegistryError> {
        let mut trust = TrustStore::load(&galley_core::dirs::trust_file())?;
        if let Some((id, public)) = first_party_key() {
            let only = crate::keys::Scope::Only(vec![crate::keys::FIRST_PARTY_NAMESPACE.into()]);
            trust.add_scoped(id, public, only)?;
        }
        Ok(trust)
    }
}

/// The registry label an entry belongs to (`default` for one from before labels).
fn group_of<'a>(e: &'a LockEntry, default: &'a str) -> &'a str {
    e.registry.as_deref().unwrap_or(default)
}

/// A package whose version `update` moved: `from` none when new, `to` none when dropped.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub name: PackageName,
    pub from: Option<semver::Version>,
    pub to: Option<semver::Version>,
}

/// What `list` finds on disk for a locked package.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileState {
    Ok,
    Modified,
    Missing,
}

/// A project's plugins: the install folder, its lockfile, and how installs are checked.
pub struct Project<'a> {
    pub into: PathBuf,
    pub lock: PathBuf,
    pub trust: &'a TrustStore,
    /// Content-addressed cache of verified blobs (offline installs read it).
    pub cache: PathBuf,
    pub allow_unsigned: bool,
    /// Accept a package whose signer differs from the one galley.lock records.
    pub allow_signer_change: bool,
    /// The largest component installed, in bytes.
    pub max_blob: u64,
    pub wit_supported: &'a dyn Fn(&semver::Version) -> bool,
    /// Reads a component's description (the runtime's inspection, through the caller).
    pub describe: &'a Describe<'a>,
    /// The installer's last check: the name and version the blob's own manifest gives.
    pub manifest_check: &'a ManifestCheck,
}

impl Project<'_> {
    /// An installer under this project's policy (the same for fresh and locked installs),
    /// remembering the signers `lock` records.
    fn installer<'s>(
        &'s self,
        source: Option<&'s dyn Source>,
        lock: Option<&Lockfile>,
    ) -> Installer<'s> {
        Installer {
            registry: source,
            cache: self.cache.clone(),
            trust: self.trust,
            policy: if self.allow_unsigned {
                TrustPolicy::AllowUnsigned
            } else {
                TrustPolicy::SignedOnly
            },
            max_blob: self.max_blob,
            wit_supported: self.wit_supported,
            manifest_check: self.manifest_check,
            signers: lock
                .map(|l| {
                    l.plugins
                        .iter()
                        .map(|e| (e.name.clone(), e.key.clone()))
                        .collect()
                })
                .unwrap_or_default(),
            allow_signer_change: self.allow_signer_change,
        }
    }

    fn load_lock(&self) -> Result<Option<Lockfile>, RegistryError> {
        Lockfile::load(&self.lock)
    }

    fn nothing_here(&self, what: &str) -> RegistryError {
        RegistryError::Unsatisfiable(format!("no {}: {what}", self.lock.display()))
    }

    /// Installs `reqs` (`NAMESPACE/NAME[@REQ]` from `registry`, whose label — `builtin`, a
    /// project registry's name, a folder or URL — the lockfile records, or
    /// `oci://HOST/REPO:TAG`), keeping every other pin: packages from other registries are
    /// not re-resolved at all. Saves the lockfile.
    pub fn install(
        &self,
        reqs: &[String],
        registry: &Registry,
        label: &str,
    ) -> Result<Vec<Installed>, RegistryError> {
        let mut lock = self.load_lock()?.unwrap_or_default();
        let (oci, named): (Vec<&String>, Vec<&String>) =
            reqs.iter().partition(|r| r.starts_with("oci://"));
        let mut installed = Vec::new();
        if !named.is_empty() {
            let mut extra = Vec::new();
            for r in &named {
                let r = Requirement::parse(r)?;
                // Asked for from this registry: it moves here, whatever pinned it before.
                let elsewhere = lock.plugins.iter().any(|e| {
                    e.name == r.name && (e.source.is_some() || group_of(e, label) != label)
                });
                if elsewhere {
                    lock.remove(&r.name);
                }
                extra.push(r);
            }
            let (done, new_lock) =
                self.resolve_group(&lock, label, registry, &extra, &BTreeSet::new(), None)?;
            installed.extend(done);
            lock = new_lock;
        }
        for spec in oci {
            let (done, entry) = self.install_oci(spec, &lock)?;
            lock.upsert(entry);
            installed.push(done);
        }
        lock.save(&self.lock)?;
        Ok(installed)
    }

    /// Re-resolves what the lockfile's requirements allow, moving `names` (all, when empty)
    /// to their newest fitting versions, each against the registry it came from (`open`
    /// opens a label; entries without one belong to `default`). Saves the lockfile and
    /// returns what changed.
    pub fn update(
        &self,
        names: &[PackageName],
        open: &OpenRegistry<'_>,
        default: &str,
    ) -> Result<Vec<Change>, RegistryError> {
        let lock = self
            .load_lock()?
            .ok_or_else(|| self.nothing_here("install something first"))?;
        for name in names {
            match lock.plugins.iter().find(|e| &e.name == name) {
                None => {
                    return Err(RegistryError::Unsatisfiable(format!(
                        "{name} is not in {}",
                        self.lock.display()
                    )));
                }
                Some(e) if e.source.is_some() => {
                    return Err(RegistryError::Unsatisfiable(format!(
                        "{name} came from {}; update it by installing the new OCI reference",
                        e.source.as_deref().unwrap_or("")
                    )));
                }
                Some(_) => {}
            }
        }
        let labels: BTreeSet<String> = lock
            .plugins
            .iter()
            .filter(|e| e.source.is_none())
            .map(|e| group_of(e, default).to_string())
            .collect();
        let mut current = lock.clone();
        for label in labels {
            let unpin: BTreeSet<PackageName> = current
                .plugins
                .iter()
                .filter(|e| e.source.is_none() && group_of(e, default) == label)
                .filter(|e| names.is_empty() || names.contains(&e.name))
                .map(|e| e.name.clone())
                .collect();
            if unpin.is_empty() {
                continue;
            }
            let registry = open(&label)?;
            let (_, next) = self.resolve_group(
                &current,
                &label,
                &registry,
                &[],
                &unpin,
                Some(semver::VersionReq::STAR),
            )?;
            current = next;
        }
        let changes = lock.changes_to(&current);
        current.save(&self.lock)?;
        Ok(changes)
    }

    /// Resolves the packages of registry `label` (plus `extra` requirements) against
    /// `registry`, keeping the versions `lock` pins unless they are in `unpin`, and returns
    /// the new lockfile: that registry's entries replaced, every other registry's entries and
    /// every OCI entry as they were.
    fn resolve_group(
        &self,
        lock: &Lockfile,
        label: &str,
        registry: &Registry,
        extra: &[Requirement],
        unpin: &BTreeSet<PackageName>,
        old: Option<semver::VersionReq>,
    ) -> Result<(Vec<Installed>, Lockfile), RegistryError> {
        let (mine, others): (Vec<LockEntry>, Vec<LockEntry>) = lock
            .plugins
            .iter()
            .cloned()
            .partition(|e| e.source.is_none() && group_of(e, label) == label);
        let theirs: BTreeSet<PackageName> = others.iter().map(|e| e.name.clone()).collect();
        let mut wanted: BTreeMap<PackageName, semver::VersionReq> = lock
            .wanted(old)
            .into_iter()
            .filter(|(n, _)| !theirs.contains(n))
            .collect();
        for r in extra {
            wanted.insert(r.name.clone(), r.req.clone());
        }
        let sub = Lockfile {
            plugins: mine,
            requirements: wanted.clone(),
            ..Lockfile::default()
        };
        let (installed, mut out) = self.resolve(&sub, wanted, registry, unpin)?;
        if let Some(e) = out.plugins.iter().find(|e| theirs.contains(&e.name)) {
            let from = lock
                .plugins
                .iter()
                .find(|o| o.name == e.name)
                .map(|o| o.source.clone().or(o.registry.clone()).unwrap_or_default())
                .unwrap_or_default();
            return Err(RegistryError::Unsatisfiable(format!(
                "{} is pinned from {from}, but resolving from {label} needs it too (a dependency); install it from one registry",
                e.name
            )));
        }
        for e in &mut out.plugins {
            e.registry = Some(label.to_string());
        }
        for (n, r) in &lock.requirements {
            if theirs.contains(n) {
                out.requirements.insert(n.clone(), r.clone());
            }
        }
        out.plugins.extend(others);
        out.plugins.sort_by(|x, y| x.name.cmp(&y.name));
        Ok((installed, out))
    }

    /// Resolves `wanted` against `registry`, keeping the versions `lock` pins unless they are
    /// in `unpin`, installs, and returns the new lockfile (OCI entries carried over).
    fn resolve(
        &self,
        lock: &Lockfile,
        wanted: BTreeMap<PackageName, semver::VersionReq>,
        registry: &Registry,
        unpin: &BTreeSet<PackageName>,
    ) -> Result<(Vec<Installed>, Lockfile), RegistryError> {
        let reqs: Vec<Requirement> = wanted
            .iter()
            .map(|(name, req)| Requirement {
                name: name.clone(),
                req: req.clone(),
            })
            .collect();
        let pinned = lock.registry_pins(unpin);
        let (installed, mut new_lock) = self
            .installer(Some(registry.source()), Some(lock))
            .install(&reqs, &self.into, Some(&pinned))?;
        new_lock.requirements = wanted;
        new_lock.merge_oci_from(lock);
        Ok((installed, new_lock))
    }

    /// Installs exactly what the lockfile pins: each registry entry from the registry it came
    /// from (`open` opens a label; entries without one belong to `default`), or only from the
    /// cache when `open` is `None` (offline); OCI entries from their pinned manifests (or the
    /// cache).
    pub fn install_locked(
        &self,
        open: Option<&OpenRegistry<'_>>,
        default: &str,
    ) -> Result<Vec<Installed>, RegistryError> {
        let lock = self.load_lock()?.ok_or_else(|| {
            RegistryError::Unsatisfiable(format!(
                "nothing to install: name plugins, or have a {}",
                self.lock.display()
            ))
        })?;
        let (oci, plain): (Vec<&LockEntry>, Vec<&LockEntry>) =
            lock.plugins.iter().partition(|e| e.source.is_some());
        let mut installed = Vec::new();
        let mut groups: BTreeMap<&str, Vec<LockEntry>> = BTreeMap::new();
        for e in plain {
            groups
                .entry(group_of(e, default))
                .or_default()
                .push(e.clone());
        }
        for (label, entries) in groups {
            let sub = Lockfile {
                plugins: entries,
                ..Lockfile::default()
            };
            let registry = open.map(|o| o(label)).transpose()?;
            installed.extend(
                self.installer(registry.as_ref().map(Registry::source), None)
                    .install_locked(&sub, &self.into)?,
            );
        }
        for e in oci {
            let sub = Lockfile {
                plugins: vec![e.clone()],
                ..Lockfile::default()
            };
            match self.installer(None, None).install_locked(&sub, &self.into) {
                Ok(done) => installed.extend(done),
                Err(RegistryError::NotCached { .. } | RegistryError::Unverifiable { .. })
                    if open.is_some() =>
                {
                    let reference = OciRef::parse(e.source.as_deref().unwrap_or_default())?;
                    let client = OciClient::new(&reference)?;
                    let pulled = client.pull(&reference)?;
                    let release =
                        self.oci_release(&client, &reference, pulled, self.allow_unsigned)?;
                    let source = OciSource::new(client, reference, release);
                    installed.extend(
                        self.installer(Some(&source), None)
                            .install_locked(&sub, &self.into)?,
                    );
                }
                Err(err) => return Err(err),
            }
        }
        Ok(installed)
    }

    /// The release an OCI artifact is: its signed annotation, or — for an artifact another
    /// tool pushed — an unsigned release read from the component itself (only when
    /// unsigned packages are allowed).
    fn oci_release(
        &self,
        client: &OciClient,
        reference: &OciRef,
        pulled: Pulled,
        allow_unsigned: bool,
    ) -> Result<Release, RegistryError> {
        if let Some(r) = pulled.release {
            return Ok(r);
        }
        let refuse = |reason: String| RegistryError::Package {
            origin: reference.to_string(),
            reason,
        };
        if !allow_unsigned {
            return Err(refuse(
                "carries no galley release line (pushed by another tool), so it is unsigned; pass --allow-unsigned to install it anyway".into(),
            ));
        }
        if pulled.layer.size > self.max_blob {
            return Err(refuse(format!(
                "the component is {} bytes, over the {}-byte limit",
                pulled.layer.size, self.max_blob
            )));
        }
        let mut blob = Vec::new();
        client
            .open_blob(&reference.repo, &pulled.layer.digest)?
            .take(pulled.layer.size + 1)
            .read_to_end(&mut blob)
            .map_err(|e| refuse(e.to_string()))?;
        let c = (self.describe)(&blob, &reference.to_string()).map_err(refuse)?;
        if c.digest != pulled.layer.digest || blob.len() as u64 != pulled.layer.size {
            return Err(refuse(format!(
                "the layer is {} ({} bytes), but the manifest says {} ({} bytes)",
                c.digest,
                blob.len(),
                pulled.layer.digest,
                pulled.layer.size
            )));
        }
        Release::from_component(&c, None, &reference.to_string())
    }

    fn install_oci(
        &self,
        spec: &str,
        lock: &Lockfile,
    ) -> Result<(Installed, LockEntry), RegistryError> {
        let reference = OciRef::parse(spec)?;
        let client = OciClient::new(&reference)?;
        let pulled = client.pull(&reference)?;
        let pinned = reference.pinned(&pulled.manifest_digest);
        let release = self.oci_release(&client, &reference, pulled, self.allow_unsigned)?;
        let req = Requirement {
            name: release.name.clone(),
            req: semver::VersionReq::parse(&format!("={}", release.version))
                .expect("an exact requirement parses"),
        };
        let source = OciSource::new(client, reference, release);
        let (mut installed, new) =
            self.installer(Some(&source), Some(lock))
                .install(&[req], &self.into, None)?;
        let mut entry = new.plugins.into_iter().next().ok_or_else(|| {
            RegistryError::Unsatisfiable(format!("{spec}: the install produced no lock entry"))
        })?;
        entry.source = Some(pinned.to_string());
        Ok((installed.remove(0), entry))
    }

    /// Every locked package and the state of its file; `None` without a lockfile.
    pub fn list(&self) -> Result<Option<Vec<(LockEntry, FileState)>>, RegistryError> {
        let Some(lock) = self.load_lock()? else {
            return Ok(None);
        };
        Ok(Some(
            lock.plugins
                .into_iter()
                .map(|e| {
                    let state = match std::fs::read(e.name.installed_path(&self.into)) {
                        Ok(b) if crate::install::sha256(&b) == e.digest => FileState::Ok,
                        Ok(_) => FileState::Modified,
                        Err(_) => FileState::Missing,
                    };
                    (e, state)
                })
                .collect(),
        ))
    }

    /// Drops `names` from the lockfile and the install folder.
    pub fn remove(&self, names: &[PackageName]) -> Result<(), RegistryError> {
        let mut lock = self
            .load_lock()?
            .ok_or_else(|| self.nothing_here("nothing installed here"))?;
        for name in names {
            if !lock.remove(name) {
                return Err(RegistryError::Unsatisfiable(format!(
                    "{name} is not in {}",
                    self.lock.display()
                )));
            }
            let path = name.installed_path(&self.into);
            if path.exists() {
                std::fs::remove_file(&path).map_err(|e| crate::error::io(&path, e))?;
            }
        }
        lock.save(&self.lock)
    }
}
