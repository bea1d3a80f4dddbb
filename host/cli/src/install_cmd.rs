//! `galley plugin install | update | list | remove`: galley-registry's `Project` does the
//! work (resolution, verification, `galley.lock`); this module wires in the runtime's view of
//! components and prints what happened. Plugins come from a registry (`--registry` — a name
//! from `.galley/config.toml`'s `[registries]`, a folder or URL —, `GALLEY_REGISTRY`, else the
//! built-in first-party one) or from an OCI registry (`oci://HOST/REPO:TAG`); galley.lock
//! records which, and each package is only ever re-resolved against its own.

use anyhow::{Result, bail};
use galley_registry::{Component, FileState, Installed, PackageName, Project, TrustStore};
use std::path::PathBuf;

/// The largest component galley installs.
const MAX_BLOB: u64 = 256 << 20;

/// Where a project keeps its plugins and its lockfile.
#[derive(clap::Args)]
pub struct ProjectArgs {
    #[arg(long, default_value = ".galley/plugins")]
    into: PathBuf,
    #[arg(long, default_value = "galley.lock")]
    lock: PathBuf,
}

/// Where packages come from and what an install accepts beyond signed-by-a-trusted-key.
#[derive(clap::Args)]
pub struct FetchArgs {
    #[arg(long)]
    registry: Option<String>,
    #[command(flatten)]
    project: ProjectArgs,
    /// Accept unsigned packages (recorded in the lockfile).
    #[arg(long)]
    allow_unsigned: bool,
    /// Accept a package signed by another key than galley.lock records for it.
    #[arg(long)]
    allow_signer_change: bool,
}

#[derive(clap::Args)]
pub struct InstallArgs {
    reqs: Vec<String>,
    #[command(flatten)]
    fetch: FetchArgs,
    /// Use only the local cache (install from galley.lock).
    #[arg(long)]
    offline: bool,
}

#[derive(clap::Args)]
pub struct UpdateArgs {
    names: Vec<String>,
    #[command(flatten)]
    fetch: FetchArgs,
}

#[derive(clap::Args)]
pub struct RemoveArgs {
    #[arg(required = true)]
    names: Vec<String>,
    #[command(flatten)]
    project: ProjectArgs,
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

/// What a command allows beyond the default policy.
#[derive(Default)]
struct Allow {
    unsigned: bool,
    signer_change: bool,
}

impl From<&FetchArgs> for Allow {
    fn from(f: &FetchArgs) -> Self {
        Self {
            unsigned: f.allow_unsigned,
            signer_change: f.allow_signer_change,
        }
    }
}

fn with_project<T>(
    a: &ProjectArgs,
    allow: Allow,
    f: impl FnOnce(&Project<'_>) -> Result<T>,
) -> Result<T> {
    let trust = TrustStore::for_user()?;
    let project = Project {
        into: a.into.clone(),
        lock: a.lock.clone(),
        trust: &trust,
        cache: galley_core::dirs::blobs_dir(),
        allow_unsigned: allow.unsigned,
        allow_signer_change: allow.signer_change,
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

pub fn install(a: InstallArgs) -> Result<()> {
    let f = &a.fetch;
    with_project(&f.project, f.into(), |p| {
        let label = crate::registry_label(&f.registry);
        let installed = if a.reqs.is_empty() {
            let open = |l: &str| {
                crate::open_label(l).map_err(|e| {
                    galley_registry::RegistryError::BadReference(format!("registry `{l}`: {e:#}"))
                })
            };
            let open: Option<&dyn Fn(&str) -> _> = (!a.offline).then_some(&open as _);
            p.install_locked(open, &label)?
        } else {
            if a.offline {
                bail!(
                    "--offline installs what {} pins; name no plugins",
                    f.project.lock.display()
                );
            }
            p.install(&a.reqs, &crate::open_label(&label)?, &label)?
        };
        print_installed(&installed);
        Ok(())
    })
}

/// Installs exactly what the project's galley.lock pins, each package from its own registry
/// (a replay fetching the plugins its run used); returns what was installed.
pub fn install_project_lock() -> Result<Vec<Installed>> {
    let project = ProjectArgs {
        into: PathBuf::from(galley_registry::DEFAULT_INSTALL_DIR),
        lock: PathBuf::from(galley_registry::DEFAULT_LOCKFILE),
    };
    with_project(&project, Allow::default(), |p| {
        let open = |l: &str| {
            crate::open_label(l).map_err(|e| {
                galley_registry::RegistryError::BadReference(format!("registry `{l}`: {e:#}"))
            })
        };
        let label = crate::registry_label(&None);
        Ok(p.install_locked(Some(&open), &label)?)
    })
}

fn parse_names(names: &[String]) -> Result<Vec<PackageName>> {
    Ok(names
        .iter()
        .map(|n| PackageName::parse(n))
        .collect::<std::result::Result<Vec<_>, _>>()?)
}

pub fn update(a: UpdateArgs) -> Result<()> {
    let names = parse_names(&a.names)?;
    let f = &a.fetch;
    with_project(&f.project, f.into(), |p| {
        let open = |l: &str| {
            crate::open_label(l).map_err(|e| {
                galley_registry::RegistryError::BadReference(format!("registry `{l}`: {e:#}"))
            })
        };
        let changes = p.update(&names, &open, &crate::registry_label(&f.registry))?;
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
pub fn list(a: ProjectArgs) -> Result<()> {
    with_project(&a, Allow::default(), |p| {
        let Some(entries) = p.list()? else {
            println!("no {}: nothing installed here", a.lock.display());
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
pub fn remove(a: RemoveArgs) -> Result<()> {
    let names = parse_names(&a.names)?;
    with_project(&a.project, Allow::default(), |p| {
        p.remove(&names)?;
        for n in &names {
            println!("removed {n}");
        }
        Ok(())
    })
}
