//! `galley plugin install | update | list | remove`: galley-registry's `Project` does the
//! work (resolution, verification, `galley.lock`); this module wires in the runtime's view of
//! components and prints what happened. Plugins come from a registry (`--registry` — a name
//! from `.galley/config.toml`'s `[registries]`, a folder or URL —, `GALLEY_REGISTRY`, else the
//! built-in first-party one) or from an OCI registry (`oci://HOST/REPO:TAG`); galley.lock
//! records which, and each package is only ever re-resolved against its own.

use anyhow::{Result, bail};
use galley_hosting::project::{Policy, with_project};
use galley_registry::{FileState, Installed, PackageName};
use std::path::PathBuf;

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

impl FetchArgs {
    fn policy(&self) -> Policy {
        Policy {
            allow_unsigned: self.allow_unsigned,
            allow_signer_change: self.allow_signer_change,
            ..self.project.policy()
        }
    }
}

impl ProjectArgs {
    fn policy(&self) -> Policy {
        Policy {
            into: self.into.clone(),
            lock: self.lock.clone(),
            ..Policy::default()
        }
    }
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
    let reg = crate::registries();
    with_project(&f.policy(), |p| {
        let label = reg.label(f.registry.as_deref());
        let installed = if a.reqs.is_empty() {
            let open = |l: &str| reg.open_label(l);
            let open: Option<&dyn Fn(&str) -> _> = (!a.offline).then_some(&open as _);
            p.install_locked(open, &label)?
        } else {
            if a.offline {
                bail!(
                    "--offline installs what {} pins; name no plugins",
                    f.project.lock.display()
                );
            }
            p.install(&a.reqs, &reg.open_label(&label)?, &label)?
        };
        print_installed(&installed);
        Ok(())
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
    let reg = crate::registries();
    with_project(&f.policy(), |p| {
        let open = |l: &str| reg.open_label(l);
        let changes = p.update(&names, &open, &reg.label(f.registry.as_deref()))?;
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
    with_project(&a.policy(), |p| {
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
    with_project(&a.project.policy(), |p| {
        p.remove(&names)?;
        for n in &names {
            println!("removed {n}");
        }
        Ok(())
    })
}
