//! The one plugin locator. A config or a command line names a plugin in one of three ways,
//! and every room that opens plugins resolves the name here, once:
//!
//! - a path to a component (ends in `.wasm`, or starts with `/`, `./` or `../`), relative to
//!   the folder of the file that names it (the config file; the current folder for a
//!   command line);
//! - `NAMESPACE/NAME`, a package `galley plugin install` put in the install folder
//!   (`.galley/plugins` by default);
//! - a bare `NAME`, looked up as `NAME.wasm` in the search path: the config's own
//!   `plugin_path`, else `GALLEY_PLUGIN_PATH` (colon-separated), else `target/plugins` (what
//!   `scripts/build-plugins.sh` fills).

use crate::error::RegistryError;
use crate::index::PackageName;
use std::path::{Path, PathBuf};

/// Where `galley plugin install` puts packages unless told otherwise.
pub const DEFAULT_INSTALL_DIR: &str = ".galley/plugins";

/// Resolves plugin names for one file that names plugins.
#[derive(Debug, Clone)]
pub struct PluginLocator {
    /// The folder relative paths are taken from.
    pub base: PathBuf,
    /// Folders searched for bare names.
    pub search: Vec<PathBuf>,
    /// The install folder of `NAMESPACE/NAME` packages.
    pub installed: PathBuf,
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
        }
    }

    /// Replaces the search path with `dirs` (relative to the base) when any are given.
    pub fn with_search(mut self, dirs: &[PathBuf]) -> Self {
        if !dirs.is_empty() {
            self.search = dirs.iter().map(|d| self.base.join(d)).collect();
        }
        self
    }

    /// The component file `spec` names.
    pub fn locate(&self, spec: &str) -> Result<PathBuf, RegistryError> {
        if looks_like_path(spec) {
            let p = self.base.join(spec);
            if !p.is_file() {
                return Err(RegistryError::PluginNotFound(format!(
                    "plugin `{spec}`: no such file {}",
                    p.display()
                )));
            }
            return Ok(p);
        }
        if spec.contains('/') {
            let name = PackageName::parse(spec)?;
            let p = name.installed_path(&self.installed);
            if p.is_file() {
                return Ok(p);
            }
            return Err(RegistryError::PluginNotFound(format!(
                "package `{spec}` is not installed in {}; run `galley plugin install {spec}`",
                self.installed.display()
            )));
        }
        for dir in &self.search {
            let p = dir.join(format!("{spec}.wasm"));
            if p.is_file() {
                return Ok(p);
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
