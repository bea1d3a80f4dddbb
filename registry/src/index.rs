//! The sparse index: one file per package (`index/NAMESPACE/NAME.jsonl`), one JSON line per
//! release. Lines are immutable except `yanked`. What a signature covers is spelled out in
//! `Release::signed_message`: everything an installer relies on, and nothing that may change.

use crate::error::RegistryError;
use galley_core::PluginKind;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

/// `namespace/name`, validated so it is always a safe relative path.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PackageName {
    pub namespace: String,
    pub name: String,
}

fn ok_part(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.starts_with(|c: char| c.is_ascii_lowercase())
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
}

impl PackageName {
    pub fn parse(s: &str) -> Result<Self, RegistryError> {
        match s.split_once('/') {
            Some((ns, name)) if ok_part(ns) && ok_part(name) => Ok(Self {
                namespace: ns.into(),
                name: name.into(),
            }),
            _ => Err(RegistryError::BadName(s.into())),
        }
    }

    /// Where the package's component lands in an install folder (`into/NAMESPACE/NAME.wasm`).
    pub fn installed_path(&self, into: &Path) -> std::path::PathBuf {
        into.join(&self.namespace)
            .join(format!("{}.wasm", self.name))
    }

    /// The index file, relative to the registry root.
    pub fn index_path(&self) -> std::path::PathBuf {
        Path::new("index")
            .join(&self.namespace)
            .join(format!("{}.jsonl", self.name))
    }
}

impl fmt::Display for PackageName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

impl TryFrom<String> for PackageName {
    type Error = RegistryError;
    fn try_from(s: String) -> Result<Self, RegistryError> {
        Self::parse(&s)
    }
}

impl From<PackageName> for String {
    fn from(n: PackageName) -> String {
        n.to_string()
    }
}

/// One index line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Release {
    pub name: PackageName,
    pub version: semver::Version,
    pub kind: PluginKind,
    /// The `galley:plugin` version the component was built against.
    pub wit: semver::Version,
    /// `sha256:<hex>` of the component.
    pub digest: String,
    pub size: u64,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub dependencies: BTreeMap<PackageName, semver::VersionReq>,
    /// Read-only directories the plugin asks for.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub read_dirs: Vec<String>,
    /// The registry's yank flag. For a signed release it counts only when `yank` carries it,
    /// signed by the release's own key (see `TrustStore::yanked`): a flag anyone holding the
    /// index can flip must not hide a version or bring one back.
    #[serde(default)]
    pub yanked: bool,
    /// The publisher's signed statement of the yank state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub yank: Option<YankRecord>,
    /// Key id of the publisher's signing key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Hex ed25519 signature of `signed_message`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
}

/// A signed yank (or unyank) of one release, made by its publisher after the release.
/// `seq` grows with each record for the release, so a record is tied to its place in the
/// release's history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct YankRecord {
    pub yanked: bool,
    pub seq: u64,
    /// Key id of the signer (the release's own key).
    pub key: String,
    /// Hex ed25519 signature of `Release::yank_message`.
    pub signature: String,
}

impl Release {
    /// The bytes a yank record signs: the release it is about (name, version, digest), the
    /// state and its sequence number.
    pub fn yank_message(&self, yanked: bool, seq: u64) -> Vec<u8> {
        format!(
            "galley-yank-v1\nname {}\nversion {}\ndigest {}\nyanked {yanked}\nseq {seq}\n",
            self.name, self.version, self.digest
        )
        .into_bytes()
    }

    /// The sequence number the next yank record of this release takes.
    pub fn next_yank_seq(&self) -> u64 {
        self.yank.as_ref().map_or(1, |y| y.seq + 1)
    }

    /// The bytes a publisher signs: every field an installer trusts, in a fixed order, and not
    /// `yanked` (which the registry may flip) nor the signature itself. Changing the version,
    /// digest, size, kind, WIT, dependencies or capabilities breaks the signature.
    pub fn signed_message(&self) -> Vec<u8> {
        let deps: Vec<String> = self
            .dependencies
            .iter()
            .map(|(n, r)| format!("{n} {r}"))
            .collect();
        let mut dirs = self.read_dirs.clone();
        dirs.sort();
        format!(
            "galley-release-v1\nname {}\nversion {}\nkind {}\nwit {}\ndigest {}\nsize {}\ndeps {}\nread-dirs {}\n",
            self.name,
            self.version,
            self.kind,
            self.wit,
            self.digest,
            self.size,
            deps.join(","),
            dirs.join(",")
        )
        .into_bytes()
    }

    /// `sha256:<hex>` with nothing else, so it can name a blob file safely.
    pub fn digest_hex(&self) -> Option<&str> {
        let hex = self.digest.strip_prefix("sha256:")?;
        (hex.len() == 64
            && hex
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()))
        .then_some(hex)
    }
}

/// Parses an index file; every error names the file and line.
pub(crate) fn parse_index(
    text: &str,
    path: &Path,
    expected: &PackageName,
) -> Result<Vec<Release>, RegistryError> {
    let mut out: Vec<Release> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let r: Release = serde_json::from_str(line).map_err(|e| RegistryError::BadIndexLine {
            path: path.into(),
            line: i + 1,
            reason: e.to_string(),
        })?;
        if &r.name != expected {
            return Err(RegistryError::MisfiledLine {
                path: path.into(),
                line: i + 1,
                found: r.name.to_string(),
                expected: expected.to_string(),
            });
        }
        if r.digest_hex().is_none() {
            return Err(RegistryError::BadIndexLine {
                path: path.into(),
                line: i + 1,
                reason: format!("digest `{}` is not sha256:<64 lowercase hex>", r.digest),
            });
        }
        if out.iter().any(|o| o.version == r.version) {
            return Err(RegistryError::BadIndexLine {
                path: path.into(),
                line: i + 1,
                reason: format!("version {} appears twice", r.version),
            });
        }
        out.push(r);
    }
    Ok(out)
}
