//! `galley.lock`: the exact releases a project runs, pinned by digest and signer, so an
//! install from it reproduces the same bytes — offline from the cache, or from a registry
//! that must still serve exactly those bytes.

use crate::error::{RegistryError, io};
use crate::index::PackageName;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockEntry {
    pub name: PackageName,
    pub version: semver::Version,
    pub digest: String,
    /// Key id of the signer the install verified, or none when `unsigned` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Installed although unsigned, because the user allowed it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unsigned: bool,
    /// Where the bytes came from when not the project's registry: an OCI reference pinned
    /// by manifest digest (`oci://HOST/REPO@sha256:...`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// The registry the package was resolved from: `builtin`, a name the project's
    /// `.galley/config.toml` gives, or a folder or URL. Installing or updating resolves each
    /// package against its own registry only. None: a lockfile from before galley recorded
    /// it (such entries belong to whichever registry a command names).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registry: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lockfile {
    pub version: u32,
    /// What the user asked for (`galley plugin install NAME@REQ`), so `galley plugin update`
    /// can re-resolve within the same bounds; dependencies are not listed here.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub requirements: BTreeMap<PackageName, semver::VersionReq>,
    #[serde(default, rename = "plugin")]
    pub plugins: Vec<LockEntry>,
}

impl Default for Lockfile {
    fn default() -> Self {
        Self {
            version: 1,
            requirements: BTreeMap::new(),
            plugins: Vec::new(),
        }
    }
}

impl Lockfile {
    pub fn load(path: &Path) -> Result<Option<Self>, RegistryError> {
        match std::fs::read_to_string(path) {
            Ok(text) => toml::from_str(&text)
                .map(Some)
                .map_err(|e| RegistryError::BadFile {
                    path: path.into(),
                    reason: e.to_string(),
                }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io(path, e)),
        }
    }

    pub fn save(&self, path: &Path) -> Result<(), RegistryError> {
        let text = format!(
            "# galley.lock: written by `galley plugin install`; pins exact plugin bytes.\n{}",
            toml::to_string(self).expect("lockfile serializes")
        );
        crate::store::write_atomic(path, text.as_bytes())
    }

    /// The requirements to resolve: what the user asked for; for a lockfile written before
    /// requirements were recorded, every registry package at `old` (else its exact version).
    pub fn wanted(
        &self,
        old: Option<semver::VersionReq>,
    ) -> BTreeMap<PackageName, semver::VersionReq> {
        if !self.requirements.is_empty() {
            return self.requirements.clone();
        }
        self.plugins
            .iter()
            .filter(|e| e.source.is_none())
            .map(|e| {
                let req = old.clone().unwrap_or_else(|| {
                    semver::VersionReq::parse(&format!("={}", e.version))
                        .expect("an exact requirement parses")
                });
                (e.name.clone(), req)
            })
            .collect()
    }

    /// The registry (non-OCI) entries to keep pinned, leaving out `unpin`.
    pub fn registry_pins(&self, unpin: &std::collections::BTreeSet<PackageName>) -> Lockfile {
        Lockfile {
            plugins: self
                .plugins
                .iter()
                .filter(|e| e.source.is_none() && !unpin.contains(&e.name))
                .cloned()
                .collect(),
            ..Lockfile::default()
        }
    }

    /// Carries over `old`'s OCI entries that a registry resolution did not replace.
    pub fn merge_oci_from(&mut self, old: &Lockfile) {
        for e in old.plugins.iter().filter(|e| e.source.is_some()) {
            if !self.plugins.iter().any(|n| n.name == e.name) {
                self.plugins.push(e.clone());
            }
        }
        self.plugins.sort_by(|x, y| x.name.cmp(&y.name));
    }

    /// Pins `entry` in place of any entry (and requirement) of the same name.
    pub fn upsert(&mut self, entry: LockEntry) {
        self.remove(&entry.name);
        self.plugins.push(entry);
        self.plugins.sort_by(|x, y| x.name.cmp(&y.name));
    }

    /// Drops `name`'s entry and requirement; false when it was not pinned.
    pub fn remove(&mut self, name: &PackageName) -> bool {
        let before = self.plugins.len();
        self.plugins.retain(|e| &e.name != name);
        self.requirements.remove(name);
        self.plugins.len() != before
    }

    /// Packages whose pinned version differs in `new` (added, moved or dropped).
    pub fn changes_to(&self, new: &Lockfile) -> Vec<crate::project::Change> {
        let version = |l: &Lockfile, n: &PackageName| {
            l.plugins
                .iter()
                .find(|e| &e.name == n)
                .map(|e| e.version.clone())
        };
        let mut names: Vec<&PackageName> = self
            .plugins
            .iter()
            .chain(&new.plugins)
            .map(|e| &e.name)
            .collect();
        names.sort();
        names.dedup();
        names
            .into_iter()
            .filter_map(|n| {
                let (from, to) = (version(self, n), version(new, n));
                (from != to).then(|| crate::project::Change {
                    name: n.clone(),
                    from,
                    to,
                })
            })
            .collect()
    }
}
