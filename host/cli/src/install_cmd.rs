//! `galley plugin install | update | list | remove`: galley-registry's `Project` does the
//! work (resolution, verification, `galley.lock`); this module wires in the runtime's view of
//! components and prints what happened. Plugins come from the project's registry
//! (`--registry`, `GALLEY_REGISTRY`, else the built-in first-party one) or from an OCI
//! registry (`oci://HOST/REPO:TAG`).

use anyhow::{Result, bail};
use galley_registry::{
    Component, FileState, Installed, PackageName, Project, Registry, TrustStore,
};
use std::path::Path;

/// The largest component galley installs.
const MAX_BLOB: u64 = 256 << 20;

pub struct InstallArgs<'a> {
    pub reqs: &'a [String],
    pub registry: &'a Option<String>,
    pub into: &'a Path,
    pub lock: &'a Path,
    pub allow_unsigned: bool,
    pub offline: bool,
}

/// The registry's neutral description of a component, read by the runtime.
pub fn describe(bytes: &[u8], origin: &str) -> std::result::Result<Component, String> {
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
fn manifest_check(bytes: &[u8]) -> std::result::Result<(String, semver::Version), String> {
    let info = galley_runtime::inspect(bytes, "blob").map_err(|e| e.to_string())?;
    let m = info.manifest.ok_or("no galley manifest")?;
    Ok((m.full_name(), m.version))
}

fn with_project<T>(
    into: &Path,
    lock: &Path,
    allow_unsigned: bool,
    f: impl FnOnce(&Project<'_>) -> Result<T>,
) -> Result<T> {
    let trust = TrustStore::for_user()?;
    let project = Project {
        into: into.to_path_buf(),
        lock: lock.to_path_buf(),
        trust: &trust,
        cache: galley_core::dirs::blobs_dir(),
        allow_unsigned,
        max_blob: MAX_BLOB,
        wit_supported: &galley_runtime::wit_supported,
        describe: &describe,
        manifest_check: &manifest_check,
    };
    f(&project)
}

/// The signer column: `signed by KEY` or `UNSIGNED`.
fn signer(key: Option<&str>) -> String {
    key.map_or_else(|| "UNSIGNED".into(), |k| format!("signed by {k}"))
}

fn print_installed(installed: &[Installed]) {
    for i in installed {
        let by = signer(i.signer.as_deref());
        println!(
            "{:<32} {:<10} {by:<26} {}",
            i.name.to_string(),
            i.version.to_string(),
            i.path.display()
        );
    }
}

pub fn install(a: InstallArgs<'_>) -> Result<()> {
    with_project(a.into, a.lock, a.allow_unsigned, |p| {
        let installed = if a.reqs.is_empty() {
            let reg = if a.offline {
                None
            } else {
                Some(Registry::open(a.registry.as_deref())?)
            };
            p.install_locked(reg.as_ref())?
        } else {
            if a.offline {
                bail!(
                    "--offline installs what {} pins; name no plugins",
                    a.lock.display()
                );
            }
            p.install(a.reqs, &Registry::open(a.registry.as_deref())?)?
        };
        print_installed(&installed);
        Ok(())
    })
}

pub fn update(names: &[String], a: InstallArgs<'_>) -> Result<()> {
    let names = names
        .iter()
        .map(|n| PackageName::parse(n))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    with_project(a.into, a.lock, a.allow_unsigned, |p| {
        let changes = p.update(&names, &Registry::open(a.registry.as_deref())?)?;
        for c in &changes {
            let v = |v: &Option<semver::Version>, none: &str| {
                v.as_ref().map_or(none.to_string(), ToString::to_string)
            };
            println!(
                "{:<32} {} -> {}",
                c.name.to_string(),
                v(&c.from, "(new)"),
                v(&c.to, "(no longer needed)")
            );
        }
        if changes.is_empty() {
            println!("everything is at the newest version its requirements allow");
        }
        Ok(())
    })
}

/// `galley plugin list`: what galley.lock pins, and whether each file is in place and intact.
pub fn list(into: &Path, lock: &Path) -> Result<()> {
    with_project(into, lock, false, |p| {
        let Some(entries) = p.list()? else {
            println!("no {}: nothing installed here", lock.display());
            return Ok(());
        };
        for (e, state) in entries {
            let state = match state {
                FileState::Ok => "ok",
                FileState::Modified => "MODIFIED (reinstall: galley plugin install)",
                FileState::Missing => "missing (galley plugin install)",
            };
            let by = signer(e.key.as_deref());
            println!(
                "{:<32} {:<10} {by:<26} {state}",
                e.name.to_string(),
                e.version.to_string()
            );
        }
        Ok(())
    })
}

/// `galley plugin remove`: drops packages from galley.lock and the plugin folder.
pub fn remove(names: &[String], into: &Path, lock: &Path) -> Result<()> {
    let names = names
        .iter()
        .map(|n| PackageName::parse(n))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    with_project(into, lock, false, |p| {
        p.remove(&names)?;
        for n in &names {
            println!("removed {n}");
        }
        Ok(())
    })
}
