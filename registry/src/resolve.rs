//! Resolution: from requirements to one release per package, the highest that satisfies
//! every requirement on it (roots and dependencies), is not yanked (unless the lockfile
//! already pins it — cargo's rule) and whose WIT version this host runs. When nothing fits,
//! the error lists who asked for what and why each available version was passed over.

use crate::error::RegistryError;
use crate::index::{PackageName, Release};
use crate::source::Source;
use std::collections::BTreeMap;

#[derive(Debug, Clone)]
pub struct Requirement {
    pub name: PackageName,
    pub req: semver::VersionReq,
}

impl Requirement {
    /// `ns/name` or `ns/name@REQ` (e.g. `galley/math-answer@^0.1`).
    pub fn parse(s: &str) -> Result<Self, RegistryError> {
        let (name, req) = match s.split_once('@') {
            Some((n, r)) => (
                n,
                semver::VersionReq::parse(r).map_err(|e| {
                    RegistryError::Unsatisfiable(format!("`{s}`: bad version requirement: {e}"))
                })?,
            ),
            None => (s, semver::VersionReq::STAR),
        };
        Ok(Self {
            name: PackageName::parse(name)?,
            req,
        })
    }
}

/// `yanked` says whether a release counts as yanked (`TrustStore::yanked`: only signed
/// records count for signed releases).
pub fn resolve(
    registry: &dyn Source,
    roots: &[Requirement],
    wit_supported: &dyn Fn(&semver::Version) -> bool,
    yanked: &dyn Fn(&Release) -> bool,
    locked: &BTreeMap<PackageName, semver::Version>,
) -> Result<Vec<Release>, RegistryError> {
    let mut chosen: BTreeMap<PackageName, Release> = BTreeMap::new();
    let mut cache: BTreeMap<PackageName, Vec<Release>> = BTreeMap::new();
    for _round in 0..64 {
        // Requirements from the roots and the dependencies of what is chosen now.
        let mut reqs: BTreeMap<PackageName, Vec<(semver::VersionReq, String)>> = BTreeMap::new();
        for r in roots {
            reqs.entry(r.name.clone())
                .or_default()
                .push((r.req.clone(), "you".into()));
        }
        for rel in chosen.values() {
            for (dep, req) in &rel.dependencies {
                reqs.entry(dep.clone())
                    .or_default()
                    .push((req.clone(), format!("{}@{}", rel.name, rel.version)));
            }
        }
        chosen.retain(|name, _| reqs.contains_key(name));
        let mut changed = false;
        for (name, wants) in &reqs {
            if !cache.contains_key(name) {
                cache.insert(name.clone(), registry.releases(name)?);
            }
            let all = &cache[name];
            let fits = |r: &Release| {
                wants.iter().all(|(req, _)| req.matches(&r.version))
                    && wit_supported(&r.wit)
                    && (!yanked(r) || locked.get(name) == Some(&r.version))
            };
            let pick = match locked
                .get(name)
                .and_then(|v| all.iter().find(|r| &r.version == v && fits(r)))
            {
                Some(l) => Some(l),
                None => all
                    .iter()
                    .filter(|r| fits(r))
                    .max_by(|a, b| a.version.cmp(&b.version)),
            };
            let Some(pick) = pick else {
                return Err(RegistryError::Unsatisfiable(explain(
                    name,
                    wants,
                    all,
                    wit_supported,
                    yanked,
                )));
            };
            if chosen.get(name).map(|c| &c.version) != Some(&pick.version) {
                chosen.insert(name.clone(), pick.clone());
                changed = true;
            }
        }
        if !changed {
            return Ok(chosen.into_values().collect());
        }
    }
    Err(RegistryError::Unsatisfiable(
        "resolution did not settle after 64 rounds (dependency cycle between versions?)".into(),
    ))
}

fn explain(
    name: &PackageName,
    wants: &[(semver::VersionReq, String)],
    all: &[Release],
    wit_supported: &dyn Fn(&semver::Version) -> bool,
    yanked: &dyn Fn(&Release) -> bool,
) -> String {
    let asked: Vec<String> = wants
        .iter()
        .map(|(r, who)| format!("{who} needs {r}"))
        .collect();
    let mut seen: Vec<String> = all
        .iter()
        .map(|r| {
            let why = if yanked(r) {
                "yanked".to_string()
            } else if !wit_supported(&r.wit) {
                format!(
                    "built for galley:plugin@{}, which this galley does not run",
                    r.wit
                )
            } else {
                let unmet: Vec<String> = wants
                    .iter()
                    .filter(|(q, _)| !q.matches(&r.version))
                    .map(|(q, _)| q.to_string())
                    .collect();
                format!("does not match {}", unmet.join(", "))
            };
            format!("{} ({why})", r.version)
        })
        .collect();
    seen.sort();
    format!(
        "no version of {name} fits: {}; available: {}",
        asked.join("; "),
        if seen.is_empty() {
            "none".into()
        } else {
            seen.join(", ")
        }
    )
}
