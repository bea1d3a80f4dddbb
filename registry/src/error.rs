//! Registry errors. Each names the package, version, file or key at fault, and says what was
//! wrong; none of them leaves anything half-installed.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error(
        "`{0}` is not a package name: use NAMESPACE/NAME, each 1-64 of a-z, 0-9, '-', '_', starting with a letter"
    )]
    BadName(String),
    #[error("{path}:{line}: malformed index line: {reason}")]
    BadIndexLine {
        path: PathBuf,
        line: usize,
        reason: String,
    },
    #[error("{path}:{line}: index line names `{found}`, but this is the index of `{expected}`")]
    MisfiledLine {
        path: PathBuf,
        line: usize,
        found: String,
        expected: String,
    },
    #[error("{0}")]
    PluginNotFound(String),
    #[error("{origin}: {reason}")]
    Package { origin: String, reason: String },
    #[error("no package `{0}` in the registry")]
    NoPackage(String),
    #[error("{0}")]
    Unsatisfiable(String),
    #[error(
        "{name}@{version}: not signed; refusing it (pass --allow-unsigned to accept unsigned packages, which the lockfile then records)"
    )]
    Unsigned { name: String, version: String },
    #[error(
        "{name}@{version}: signed by key {key}, which you do not trust; trust it with `galley plugin trust {key} PUBLIC_KEY --namespace {namespace}` if you know its owner"
    )]
    UntrustedKey {
        name: String,
        version: String,
        key: String,
        namespace: String,
    },
    #[error(
        "{name}@{version}: signed by key {key}, which you trust for `{scope}` only, not for namespace `{namespace}`; if its owner really publishes there, `galley plugin trust {key} PUBLIC_KEY --namespace {namespace}`"
    )]
    KeyOutOfScope {
        name: String,
        version: String,
        key: String,
        namespace: String,
        scope: String,
    },
    #[error(
        "{name}: was signed by key {old}, this release by key {new}; a changed signer can mean a stolen package name. If the publisher really rotated keys, pass --allow-signer-change"
    )]
    SignerChanged {
        name: String,
        old: String,
        new: String,
    },
    #[error(
        "{name}@{version}: bad signature by key {key}: the index line was altered or not signed by that key"
    )]
    BadSignature {
        name: String,
        version: String,
        key: String,
    },
    #[error(
        "{name}@{version}: blob digest is {found}, but the signed release says {expected}: the blob was tampered with or swapped"
    )]
    DigestMismatch {
        name: String,
        version: String,
        expected: String,
        found: String,
    },
    #[error("{name}@{version}: blob is {found} bytes, but the signed release says {expected}")]
    SizeMismatch {
        name: String,
        version: String,
        expected: u64,
        found: u64,
    },
    #[error("{name}@{version}: blob is larger than the {cap}-byte limit")]
    TooLarge {
        name: String,
        version: String,
        cap: u64,
    },
    #[error(
        "{name}@{version}: the component inside is {found}, not the release it is published as"
    )]
    ManifestMismatch {
        name: String,
        version: String,
        found: String,
    },
    #[error(
        "{name}@{version}: locked to {locked}, but the registry now offers {offered}; refusing (a lockfile pins exact bytes)"
    )]
    LockedDigestChanged {
        name: String,
        version: String,
        locked: String,
        offered: String,
    },
    #[error("{name}@{version}: not in the local cache and the registry is not reachable (offline)")]
    NotCached { name: String, version: String },
    #[error(
        "{name}@{version}: galley.lock pins it as signed by {key}, but no signed release line for it is in the local cache and the registry is not reachable; install once online to verify it"
    )]
    Unverifiable {
        name: String,
        version: String,
        key: String,
    },
    #[error(
        "{name}@{version}: galley.lock says {locked}, but the release is {found}; the lockfile was edited or the release replaced"
    )]
    LockMismatch {
        name: String,
        version: String,
        locked: String,
        found: String,
    },
    #[error("{name}@{version}: already published; releases are immutable (publish a new version)")]
    AlreadyPublished { name: String, version: String },
    #[error("{path}: {reason}")]
    Io { path: PathBuf, reason: String },
    #[error("{path}: {reason}")]
    BadFile { path: PathBuf, reason: String },
    #[error("key: {0}")]
    Key(String),
    #[error("{0}")]
    BadReference(String),
    #[error("{url}: {reason}")]
    Http { url: String, reason: String },
}

pub(crate) fn io(path: &std::path::Path, e: impl std::fmt::Display) -> RegistryError {
    RegistryError::Io {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}
