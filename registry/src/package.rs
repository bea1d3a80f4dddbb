//! A package: a built component and its release line. This module makes a `Release` from a
//! neutral description of the component (the registry never parses WebAssembly; whoever can
//! — the runtime, through the CLI — fills in a [`Component`]), signs it, and reads and writes
//! the packed form `galley plugin pack` leaves for publishing elsewhere:
//! `NAME-VERSION.wasm` beside its signed line `NAME-VERSION.release.json`.

use crate::error::{RegistryError, io};
use crate::index::{PackageName, Release};
use crate::keys::KeyPair;
use galley_core::PluginKind;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// What the registry needs to know of a built component, from its embedded manifest and its
/// component type.
#[derive(Debug, Clone, PartialEq)]
pub struct Component {
    pub namespace: Option<String>,
    pub name: String,
    pub version: semver::Version,
    pub kind: PluginKind,
    /// The `galley:plugin` version it exports.
    pub wit: semver::Version,
    pub description: String,
    pub dependencies: BTreeMap<String, semver::VersionReq>,
    pub read_dirs: Vec<String>,
    /// `sha256:<hex>` of the bytes.
    pub digest: String,
    pub size: u64,
    pub imports: Vec<String>,
    pub exports: Vec<String>,
}

/// Reads a component's description from its bytes; `origin` names it in errors.
pub type Describe<'a> = dyn Fn(&[u8], &str) -> Result<Component, String> + 'a;

fn bad(origin: &str, reason: impl Into<String>) -> RegistryError {
    RegistryError::Package {
        origin: origin.into(),
        reason: reason.into(),
    }
}

impl Release {
    /// The unsigned release line `c` is: its name and version under `namespace` (the
    /// manifest's own when `None`), kind, WIT version, digest, size, dependencies and
    /// capabilities.
    pub fn from_component(
        c: &Component,
        namespace: Option<&str>,
        origin: &str,
    ) -> Result<Release, RegistryError> {
        let namespace = match (namespace, c.namespace.as_deref()) {
            (Some(a), Some(b)) if a != b => {
                return Err(bad(
                    origin,
                    format!("its galley.toml says namespace `{b}`, not `{a}`"),
                ));
            }
            (Some(ns), _) | (None, Some(ns)) => ns.to_string(),
            (None, None) => {
                return Err(bad(
                    origin,
                    "no namespace: set `namespace` in the plugin's galley.toml",
                ));
            }
        };
        let name = PackageName::parse(&format!("{namespace}/{}", c.name))?;
        let mut dependencies = BTreeMap::new();
        for (dep, req) in &c.dependencies {
            let dep_name = PackageName::parse(dep)
                .map_err(|e| bad(origin, format!("key `dependencies.{dep}`: {e}")))?;
            dependencies.insert(dep_name, req.clone());
        }
        Ok(Release {
            name,
            version: c.version.clone(),
            kind: c.kind,
            wit: c.wit.clone(),
            digest: c.digest.clone(),
            size: c.size,
            dependencies,
            read_dirs: c.read_dirs.clone(),
            yanked: false,
            yank: None,
            key: None,
            signature: None,
        })
    }
}

/// A component with its release line, ready to publish.
#[derive(Debug, Clone)]
pub struct Package {
    pub release: Release,
    pub blob: Vec<u8>,
    pub component: Component,
}

impl Package {
    /// The unsigned package of the component in `file`.
    pub fn from_file(
        file: &Path,
        namespace: Option<&str>,
        describe: &Describe<'_>,
    ) -> Result<Self, RegistryError> {
        let blob = std::fs::read(file).map_err(|e| io(file, e))?;
        let origin = file.display().to_string();
        let component = describe(&blob, &origin).map_err(|e| bad(&origin, e))?;
        let release = Release::from_component(&component, namespace, &origin)?;
        Ok(Self {
            release,
            blob,
            component,
        })
    }

    pub fn sign(&mut self, key: &KeyPair) {
        key.sign(&mut self.release);
    }

    /// `NAME-VERSION`, the stem of the packed files.
    pub fn stem(&self) -> String {
        format!("{}-{}", self.release.name.name, self.release.version)
    }

    /// Writes `NAME-VERSION.wasm` and `NAME-VERSION.release.json` into `out_dir`.
    pub fn write_packed(&self, out_dir: &Path) -> Result<(PathBuf, PathBuf), RegistryError> {
        std::fs::create_dir_all(out_dir).map_err(|e| io(out_dir, e))?;
        let wasm = out_dir.join(format!("{}.wasm", self.stem()));
        let line = out_dir.join(format!("{}.release.json", self.stem()));
        std::fs::write(&wasm, &self.blob).map_err(|e| io(&wasm, e))?;
        let text = serde_json::to_string(&self.release).expect("a release serializes");
        std::fs::write(&line, format!("{text}\n")).map_err(|e| io(&line, e))?;
        Ok((wasm, line))
    }

    /// A package `write_packed` made: the component beside the release file must be exactly
    /// the bytes the (signed) line names.
    pub fn load_packed(
        release_file: &Path,
        describe: &Describe<'_>,
    ) -> Result<Self, RegistryError> {
        let text = std::fs::read_to_string(release_file).map_err(|e| io(release_file, e))?;
        let origin = release_file.display().to_string();
        let release: Release = serde_json::from_str(text.trim())
            .map_err(|e| bad(&origin, format!("not a release line: {e}")))?;
        let stem = release_file
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".release.json"))
            .unwrap_or_default();
        let wasm = release_file.with_file_name(format!("{stem}.wasm"));
        let blob = std::fs::read(&wasm).map_err(|e| io(&wasm, e))?;
        let component =
            describe(&blob, &wasm.display().to_string()).map_err(|e| bad(&origin, e))?;
        if component.digest != release.digest || blob.len() as u64 != release.size {
            return Err(bad(
                &wasm.display().to_string(),
                format!(
                    "is {} ({} bytes), but {origin} says {} ({} bytes)",
                    component.digest,
                    blob.len(),
                    release.digest,
                    release.size
                ),
            ));
        }
        Ok(Self {
            release,
            blob,
            component,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn component() -> Component {
        Component {
            namespace: Some("acme".into()),
            name: "x".into(),
            version: semver::Version::new(1, 2, 3),
            kind: PluginKind::Reward,
            wit: semver::Version::new(0, 1, 0),
            description: String::new(),
            dependencies: [(
                "acme/y".to_string(),
                semver::VersionReq::parse("^1").unwrap(),
            )]
            .into(),
            read_dirs: vec![],
            digest: "sha256:00".into(),
            size: 4,
            imports: vec![],
            exports: vec![],
        }
    }

    #[test]
    fn release_lines_name_the_namespace_and_refuse_conflicts() {
        let r = Release::from_component(&component(), None, "x.wasm").unwrap();
        assert_eq!(r.name.to_string(), "acme/x");
        assert_eq!(r.dependencies.len(), 1);
        let e = Release::from_component(&component(), Some("other"), "x.wasm").unwrap_err();
        assert!(
            e.to_string().contains("namespace `acme`, not `other`"),
            "{e}"
        );
        let mut c = component();
        c.namespace = None;
        assert!(Release::from_component(&c, None, "x.wasm").is_err());
        c.dependencies
            .insert("no-slash".into(), semver::VersionReq::STAR);
        let e = Release::from_component(&c, Some("acme"), "x.wasm").unwrap_err();
        assert!(e.to_string().contains("dependencies.no-slash"), "{e}");
    }

    #[test]
    fn packed_packages_round_trip_and_refuse_other_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("x.wasm");
        std::fs::write(&file, b"abcd").unwrap();
        let describe = |b: &[u8], _: &str| {
            Ok(Component {
                digest: format!("sha256:{}", b.len()),
                size: b.len() as u64,
                ..component()
            })
        };
        let mut p = Package::from_file(&file, None, &describe).unwrap();
        p.sign(&KeyPair::generate().unwrap());
        let (wasm, line) = p.write_packed(&dir.path().join("out")).unwrap();
        assert!(wasm.ends_with("x-1.2.3.wasm"));
        let back = Package::load_packed(&line, &describe).unwrap();
        assert_eq!(back.release, p.release);
        std::fs::write(&wasm, b"abcde").unwrap();
        let e = Package::load_packed(&line, &describe).unwrap_err();
        assert!(e.to_string().contains("5 bytes"), "{e}");
    }
}
