//! Registries and projects with the runtime's view of components: which registry a command
//! means (`--registry`, GALLEY_REGISTRY, the built-in one; names from `.galley/config.toml`),
//! a `galley_registry::Project` under the install policy (trusted signers, galley.lock's
//! signers, the size cap) that reads components through the runtime's inspection, signing
//! keys from galley's config folder, and packages made from built components.

use crate::{HostingError, Result, chain};
use galley_registry::{
    Component, Installed, KeyPair, Package, Project, Registry, RegistryError, TrustStore,
};
use std::path::{Path, PathBuf};

/// The largest component galley installs.
pub const MAX_BLOB: u64 = 256 << 20;

/// How a command opens registries: plain http:// only on loopback unless `allow_http`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Registries {
    pub allow_http: bool,
}

impl Registries {
    /// What galley.lock calls the registry a command uses: `--registry` (a name from
    /// `.galley/config.toml`, a folder or URL), else GALLEY_REGISTRY, else `builtin`.
    pub fn label(&self, spec: Option<&str>) -> String {
        spec.map(String::from)
            .or_else(|| {
                std::env::var("GALLEY_REGISTRY")
                    .ok()
                    .filter(|s| !s.is_empty())
            })
            .unwrap_or_else(|| galley_registry::BUILTIN.to_string())
    }

    /// Opens a registry label, resolving the project's named registries; an error names it.
    pub fn open_label(&self, label: &str) -> Result<Registry, RegistryError> {
        let path = Path::new(galley_registry::PROJECT_CONFIG);
        let named = galley_registry::project_registries(path)?;
        Registry::open_label(label, &named, self.allow_http)
            .map_err(|e| RegistryError::BadReference(format!("registry `{label}`: {}", chain(&e))))
    }

    /// The registry `spec` names (else GALLEY_REGISTRY, else the built-in one).
    pub fn open(&self, spec: Option<&str>) -> Result<Registry> {
        Ok(self.open_label(&self.label(spec))?)
    }
}

/// The registry's neutral description of a component, read by the runtime.
pub fn describe(bytes: &[u8], origin: &str) -> Result<Component, String> {
    let info = galley_runtime::inspect(bytes, origin).map_err(|e| e.to_string())?;
    let m = info
        .manifest
        .ok_or("no galley manifest; build it with `galley plugin build`")?;
    let (kind, wit) = info
        .plugin_export
        .ok_or("exports no galley plugin interface")?;
    Ok(Component {
        namespace: m.namespace,
        name: m.name,
        version: m.version,
        kind,
        wit,
        description: m.description,
        dependencies: m.dependencies,
        read_dirs: m.capabilities.read_dirs,
        digest: info.digest,
        size: info.size as u64,
        imports: info.imports,
        exports: info.exports,
    })
}

/// Reads a component's embedded manifest for the installer's last check.
fn manifest_check(bytes: &[u8]) -> Result<(String, semver::Version), String> {
    let info = galley_runtime::inspect(bytes, "blob").map_err(|e| e.to_string())?;
    let m = info.manifest.ok_or("no galley manifest")?;
    Ok((m.full_name(), m.version))
}

/// Where a project keeps its plugins and lockfile, and what an install accepts beyond
/// signed-by-a-trusted-key.
#[derive(Debug, Clone)]
pub struct Policy {
    pub into: PathBuf,
    pub lock: PathBuf,
    /// Accept unsigned packages (recorded in the lockfile).
    pub allow_unsigned: bool,
    /// Accept a package signed by another key than galley.lock records for it.
    pub allow_signer_change: bool,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            into: PathBuf::from(galley_registry::DEFAULT_INSTALL_DIR),
            lock: PathBuf::from(galley_registry::DEFAULT_LOCKFILE),
            allow_unsigned: false,
            allow_signer_change: false,
        }
    }
}

/// Runs `f` on the project `policy` describes, trusting the user's keys and the first-party one.
pub fn with_project<T, E: From<RegistryError>>(
    policy: &Policy,
    f: impl FnOnce(&Project<'_>) -> Result<T, E>,
) -> Result<T, E> {
    let trust = TrustStore::for_user()?;
    let project = Project {
        into: policy.into.clone(),
        lock: policy.lock.clone(),
        trust: &trust,
        cache: galley_core::dirs::blobs_dir(),
        allow_unsigned: policy.allow_unsigned,
        allow_signer_change: policy.allow_signer_change,
        max_blob: MAX_BLOB,
        wit_supported: &galley_runtime::wit_supported,
        describe: &describe,
        manifest_check: &manifest_check,
    };
    f(&project)
}

/// Installs exactly what the project's galley.lock pins, each package from its own registry
/// (a replay fetching the plugins its run used); returns what was installed.
pub fn install_project_lock(reg: Registries) -> Result<Vec<Installed>> {
    with_project(&Policy::default(), |p| {
        let open = |l: &str| reg.open_label(l);
        Ok(p.install_locked(Some(&open), &reg.label(None))?)
    })
}

/// Where `galley plugin keygen` keeps the secret key `id`.
pub fn key_path(id: &str) -> PathBuf {
    galley_core::dirs::keys_dir().join(format!("{id}.key"))
}

/// A signing key given as a key id from `galley plugin keygen` or as a key file.
pub fn load_key(k: &str) -> Result<KeyPair> {
    let path = if Path::new(k).exists() {
        PathBuf::from(k)
    } else {
        key_path(k)
    };
    KeyPair::load(&path).map_err(|e| HostingError::At {
        at: format!("signing key `{k}`"),
        message: chain(&e),
    })
}

/// The package of a built component, signed with `key` (a key id or a key file) if given.
pub fn package(file: &Path, namespace: Option<&str>, key: Option<&str>) -> Result<Package> {
    let mut p = Package::from_file(file, namespace, &describe)?;
    if let Some(k) = key {
        p.sign(&load_key(k)?);
    }
    Ok(p)
}

/// A packed release (`NAME-VERSION.release.json` next to its component), read back.
pub fn load_packed(file: &Path) -> Result<Package> {
    Ok(Package::load_packed(file, &describe)?)
}

/// The token a registry server's publish and yank need.
pub fn token() -> Result<String, RegistryError> {
    std::env::var("GALLEY_REGISTRY_TOKEN").map_err(|_| {
        RegistryError::BadReference(
            "publishing to a server needs a token: set GALLEY_REGISTRY_TOKEN".into(),
        )
    })
}

/// Pushes a package to an OCI registry as a Wasm OCI artifact (`oci://HOST/REPO[:TAG]`; the
/// tag defaults to the version, as wkg does); returns the reference and manifest digest.
pub fn push_oci(p: &Package, oci: &str) -> Result<(galley_registry::OciRef, String)> {
    let mut reference = galley_registry::OciRef::parse(oci)?;
    let tagged = oci.rsplit('/').next().is_some_and(|l| l.contains(':'));
    if !tagged {
        reference.tag = Some(p.release.version.to_string());
    }
    let c = &p.component;
    let client = galley_registry::OciClient::new(&reference)?;
    let digest = client.push(
        &reference,
        &p.release,
        &p.blob,
        &c.exports,
        &c.imports,
        &c.description,
    )?;
    Ok((reference, digest))
}

/// Yanks (or, with `undo`, restores) `NAMESPACE/NAME@VERSION`, signed by `key` (a key id or
/// file) or else by the release's own signer when that key is among the user's: installers
/// ignore a yank its signer did not sign. Returns the package and version.
pub fn yank(
    reg: &Registry,
    spec: &str,
    key: Option<&str>,
    undo: bool,
) -> Result<(galley_registry::PackageName, semver::Version)> {
    reg.check_writable()?;
    let bad = |msg: &str| HostingError::At {
        at: format!("`{spec}`"),
        message: msg.to_string(),
    };
    let (name, version) = spec
        .split_once('@')
        .ok_or_else(|| bad("expected NAMESPACE/NAME@VERSION"))?;
    let name = galley_registry::PackageName::parse(name)?;
    let version = semver::Version::parse(version).map_err(|_| bad("bad version"))?;
    let signer = reg.release(&name, &version)?.key;
    let key = match (key, &signer) {
        (Some(k), _) => Some(load_key(k)?),
        (None, Some(id)) if key_path(id).exists() => Some(load_key(id)?),
        (None, Some(id)) => {
            return Err(HostingError::Invalid(format!(
                "{name}@{version} is signed by key {id}, which is not among yours; installers ignore a yank that key did not sign: pass --key with its key file"
            )));
        }
        (None, None) => None,
    };
    reg.set_yanked(&name, &version, !undo, key.as_ref(), token)?;
    Ok((name, version))
}
