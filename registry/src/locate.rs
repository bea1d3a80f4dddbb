//! The one plugin locator. A config or a command line names a plugin in one of three ways,
//! and every room that opens plugins resolves the name here, once:
//!
//! - a path to a component (ends in `.wasm`, or starts with `/`, `./` or `../`), relative to
//!   the folder of the file that names it (the config file; the current folder for a
//!   command line);
//! - `NAMESPACE/NAME`, a package `galley plugin install` put in the install folder
//!   (`.galley/plugins` by default), with the digest `galley.lock` pins for it: the loader
//!   checks the bytes it reads against it, so a component swapped after install never runs;
//! - a bare `NAME`, looked up as `NAME.wasm` in the search path: the config's own
//!   `plugin_path`, else `GALLEY_PLUGIN_PATH` (colon-separated), else `target/plugins` (what
//!   `scripts/build-plugins.sh` fills).

use crate::error::RegistryError;
use crate::index::PackageName;
use std::path::{Path, PathBuf};

/// Where `galley plugin install` puts packages unless told otherwise.
pub const DEFAULT_INSTALL_DIR: &str = ".galley/plugins";
/// The lockfile beside it.
pub const DEFAULT_LOCKFILE: &str = "galley.lock";

/// Resolves plugin names for one file that names plugins.
#[derive(Debug, Clone)]
pub struct PluginLocator {
    /// The folder relative paths are taken from.
    pub base: PathBuf,
    /// Folders searched for bare names.
    pub search: Vec<PathBuf>,
    /// The install folder of `NAMESPACE/NAME` packages.
    pub installed: PathBuf,
    /// The lockfile that pins their digests.
    pub lock: PathBuf,
}

/// A located component, and the digest it must have when it is an installed package.
#[derive(Debug, Clone, PartialEq)]
pub struct Located {
    pub path: PathBuf,
    /// `sha256:...` from `galley.lock`, for `NAMESPACE/NAME` packages.
    pub pinned: Option<String>,
}

impl PluginLocator {
    /// A locator for names written in `file` (a config file), or on the command line when
    /// `file` is `None`.
    pub fn for_file(file: Option<&Path>) -> Self {
        let base = file
            .and_then(Path::parent)
            .filter(|p| !p.as_os_str().is_empty())
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        Self {
            base,
            search: default_search_path(),
            installed: PathBuf::from(DEFAULT_INSTALL_DIR),
            lock: PathBuf::from(DEFAULT_LOCKFILE),
        }
    }

    /// The same locator for names written in a file in `dir`: relative paths are taken from
    /// `dir`; the search path, the install folder and the lockfile stay the project's.
    pub fn named_in(&self, dir: &Path) -> Self {
        Self {
            base: dir.to_path_buf(),
            ..self.clone()
        }
    }

    /// Replaces the search path with `dirs` (relative to the base) when any are given.
    pub fn with_search(mut self, dirs: &[PathBuf]) -> Self {
        if !dirs.is_empty() {
            self.search = dirs.iter().map(|d| self.base.join(d)).collect();
        }
        self
    }

    /// The component file `spec` names (for a package, without its pin: see `locate_pinned`).
    pub fn locate(&self, spec: &str) -> Result<PathBuf, RegistryError> {
        self.locate_pinned(spec).map(|l| l.path)
    }

    /// The component file `spec` names and, for an installed package, the digest
    /// `galley.lock` pins for it (a package installed but not pinned is refused).
    pub fn locate_pinned(&self, spec: &str) -> Result<Located, RegistryError> {
        let unpinned = |path: PathBuf| Located { path, pinned: None };
        if looks_like_path(spec) {
            let p = self.base.join(spec);
            if !p.is_file() {
                return Err(RegistryError::PluginNotFound(format!(
                    "plugin `{spec}`: no such file {}",
                    p.display()
                )));
            }
            return Ok(unpinned(p));
        }
        if spec.contains('/') {
            let name = PackageName::parse(spec)?;
            let p = name.installed_path(&self.installed);
            if !p.is_file() {
                return Err(RegistryError::PluginNotFound(format!(
                    "package `{spec}` is not installed in {}; run `galley plugin install {spec}`",
                    self.installed.display()
                )));
            }
            let lock = crate::lock::Lockfile::load(&self.lock)?.unwrap_or_default();
            let Some(entry) = lock.plugins.iter().find(|e| e.name == name) else {
                return Err(RegistryError::PluginNotFound(format!(
                    "package `{spec}` is in {} but {} does not pin it, so its bytes cannot be checked; run `galley plugin install {spec}`",
                    self.installed.display(),
                    self.lock.display()
                )));
            };
            return Ok(Located {
                path: p,
                pinned: Some(entry.digest.clone()),
            });
        }
        for dir in &self.search {
            let p = dir.join(format!("{spec}.wasm"));
            if p.is_file() {
                return Ok(unpinned(p));
            }
        }
        Err(RegistryError::PluginNotFound(format!(
            "no plugin named `{spec}` in {}; build it with `galley plugin build plugins/{spec}`, or give a path to its .wasm",
            self.search
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )))
    }
}

fn looks_like_path(spec: &str) -> bool {
    spec.ends_with(".wasm")
        || spec.starts_with('/')
        || spec.starts_with("./")
        || spec.starts_with("../")
}

/// `GALLEY_PLUGIN_PATH` (colon-separated), else `target/plugins`.
pub fn default_search_path() -> Vec<PathBuf> {
    match std::env::var("GALLEY_PLUGIN_PATH") {
        Ok(v) if !v.is_empty() => v.split(':').map(PathBuf::from).collect(),
        _ => vec![PathBuf::from("target/plugins")],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_joined_to_the_naming_file_once() {
        let tmp = tempfile::tempdir().unwrap();
        let cfg_dir = tmp.path().join("examples/train");
        std::fs::create_dir_all(&cfg_dir).unwrap();
        std::fs::create_dir_all(tmp.path().join("examples/plugins")).unwrap();
        std::fs::write(tmp.path().join("examples/plugins/x.wasm"), b"").unwrap();
        let loc = PluginLocator::for_file(Some(&cfg_dir.join("x.yaml")));
        let p = loc.locate("../plugins/x.wasm").unwrap();
        assert_eq!(p, cfg_dir.join("../plugins/x.wasm"));
        assert!(p.is_file());
        let e = loc.locate("../plugins/y.wasm").unwrap_err().to_string();
        assert!(e.contains("../plugins/y.wasm"), "{e}");

        let mut loc = loc.with_search(&[PathBuf::from("../plugins")]);
        assert_eq!(loc.locate("x").unwrap(), cfg_dir.join("../plugins/x.wasm"));
        loc.installed = tmp.path().join("installed");
        let e = loc.locate("acme/x").unwrap_err().to_string();
        assert!(e.contains("galley plugin install acme/x"), "{e}");
        assert!(loc.locate("Bad Name/x").is_err());
    }
}
