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
}
