//! `galley plugin install | update | list | remove`: galley-registry's `Project` does the
//! work (resolution, verification, `galley.lock`); galley-hosting wires in the runtime's view
//! of components and owns the flags; this module prints what happened. Plugins come from a
//! registry (`--registry` — a name from `.galley/config.toml`'s `[registries]`, a folder or
//! URL —, `GALLEY_REGISTRY`, else the built-in first-party one) or from an OCI registry
//! (`oci://HOST/REPO:TAG`); galley.lock records which, and each package is only ever
//! re-resolved against its own.

use anyhow::{Result, bail};
use galley_hosting::flags::{InstallFlags, ProjectFlags, RemoveFlags, UpdateFlags};
use galley_hosting::project::with_project;
use galley_registry::{FileState, PackageName};

/// A table row: name, version, signer (`signed by KEY` or `UNSIGNED`), then `last`.
fn row(
    name: &dyn std::fmt::Display,
    version: &dyn std::fmt::Display,
    key: Option<&str>,
    last: &dyn std::fmt::Display,
) {
    let by = key.map_or_else(|| "UNSIGNED".into(), |k| format!("signed by {k}"));
    println!(
        "{:<32} {:<10} {by:<26} {last}",
        name.to_string(),
        version.to_string()
    );
}

pub fn install(a: InstallFlags) -> Result<()> {
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
                let lock = f.project.lock.display();
                bail!("--offline installs what {lock} pins; name no plugins");
            }
            p.install(&a.reqs, &reg.open_label(&label)?, &label)?
        };
        for i in &installed {
            row(&i.name, &i.version, i.signer.as_deref(), &i.path.display());
        }
        Ok(())
    })
}

fn parse_names(names: &[String]) -> Result<Vec<PackageName>> {
    let parsed: Result<Vec<_>, _> = names.iter().map(|n| PackageName::parse(n)).collect();
    Ok(parsed?)
}

pub fn update(a: UpdateFlags) -> Result<()> {
    let names = parse_names(&a.names)?;
    let f = &a.fetch;
    let reg = crate::registries();
    with_project(&f.policy(), |p| {
        let open = |l: &str| reg.open_label(l);
        let changes = p.update(&names, &open, &reg.label(f.registry.as_deref()))?;
        let v = |v: &Option<semver::Version>, none: &str| {
            v.as_ref().map_or(none.into(), ToString::to_string)
        };
        for c in &changes {
            let (from, to) = (v(&c.from, "(new)"), v(&c.to, "(no longer needed)"));
            println!("{:<32} {from} -> {to}", c.name.to_string());
        }
        if changes.is_empty() {
            println!("everything is at the newest version its requirements allow");
        }
        Ok(())
    })
}

/// `galley plugin list`: what galley.lock pins, and whether each file is in place and intact.
pub fn list(a: ProjectFlags) -> Result<()> {
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
            row(&e.name, &e.version, e.key.as_deref(), &state);
        }
        Ok(())
    })
}

/// `galley plugin remove`: drops packages from galley.lock and the plugin folder.
pub fn remove(a: RemoveFlags) -> Result<()> {
    let names = parse_names(&a.names)?;
    with_project(&a.project.policy(), |p| {
        p.remove(&names)?;
        for n in &names {
            println!("removed {n}");
        }
        Ok(())
    })
}
