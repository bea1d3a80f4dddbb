//! The registry commands that publish and look: `galley plugin keygen | trust | pack |
//! publish | search | yank` and `galley registry serve`. galley-registry does the work
//! (packages, signing, registries) and galley-hosting owns the flags, keys and packages;
//! this module prints.

use anyhow::{Result, bail};
use galley_hosting::flags::{
    KeygenFlags, PackFlags, PublishFlags, RegistryServeFlags, SearchFlags, SignFlags, TrustFlags,
    YankFlags,
};
use galley_hosting::project::{key_path, token};
use galley_registry::{KeyPair, Package, Release, Scope, TrustStore};
use std::path::Path;

pub fn keygen(a: KeygenFlags) -> Result<()> {
    if let Some(file) = a.show {
        let key = KeyPair::load(&file)?;
        println!("{} {}", key.id(), key.public_hex());
        return Ok(());
    }
    let key = KeyPair::generate()?;
    let path = key_path(&key.id());
    key.save(&path)?;
    let file = galley_core::dirs::trust_file();
    let mut trust = TrustStore::load(&file)?;
    trust.add(&key.id(), &key.public_hex())?;
    trust.save(&file)?;
    let (id, public) = (key.id(), key.public_hex());
    println!("key id      {id}\npublic key  {public}");
    println!("secret key  {} (keep it private)", path.display());
    println!("others trust it with: galley plugin trust {id} {public} --namespace YOUR_NAMESPACE");
    Ok(())
}

pub fn trust(a: TrustFlags) -> Result<()> {
    let file = galley_core::dirs::trust_file();
    let mut trust = TrustStore::load(&file)?;
    let scope = Scope::parse(&a.namespaces.join(","))?;
    println!("trusting key {} for {scope}", a.id);
    trust.add_scoped(&a.id, &a.public_key, scope)?;
    trust.save(&file)?;
    Ok(())
}

/// The package of a built component, signed if a key is given.
fn package(file: &Path, sign: &SignFlags) -> Result<Package> {
    let (namespace, key) = (sign.namespace.as_deref(), sign.key.as_deref());
    let p = galley_hosting::project::package(file, namespace, key)?;
    if key.is_none() {
        let r = &p.release;
        eprintln!(
            "warning: {}@{} is unsigned (pass --key ID to sign); installers refuse it by default",
            r.name, r.version
        );
    }
    Ok(p)
}

/// `, signed by KEY` or `, UNSIGNED`.
fn signed_by(r: &Release) -> String {
    let by = r.key.as_deref().map(|k| format!(", signed by {k}"));
    by.unwrap_or_else(|| ", UNSIGNED".into())
}

/// `NAME@VERSION (SIZE bytes, DIGEST), signed by KEY` (or `, UNSIGNED`).
fn described(r: &Release) -> String {
    let by = signed_by(r);
    format!(
        "{}@{} ({} bytes, {}){by}",
        r.name, r.version, r.size, r.digest
    )
}

/// `galley plugin pack`: a publishable package, signed here so it can be uploaded elsewhere.
pub fn pack(a: PackFlags) -> Result<()> {
    let p = package(&a.file, &a.sign)?;
    let (wasm, line) = p.write_packed(&a.out_dir)?;
    println!("packed {}", described(&p.release));
    println!("  {}\n  {}", wasm.display(), line.display());
    Ok(())
}

pub fn publish(a: PublishFlags) -> Result<()> {
    let p = if a.file.to_string_lossy().ends_with(".release.json") {
        if a.sign.key.is_some() || a.sign.namespace.is_some() {
            bail!(
                "{}: a packed release is already named and signed; --key and --namespace apply to components",
                a.file.display()
            );
        }
        galley_hosting::project::load_packed(&a.file)?
    } else {
        package(&a.file, &a.sign)?
    };
    let r = &p.release;
    if let Some(oci) = a.oci.as_deref() {
        let (reference, digest) = galley_hosting::project::push_oci(&p, oci)?;
        let by = signed_by(r);
        println!(
            "pushed {}@{} to {reference} (manifest {digest}){by}",
            r.name, r.version
        );
        return Ok(());
    }
    let registry = crate::registries().open(a.registry.as_deref())?;
    registry.publish(r, &p.blob, token)?;
    println!("published {}", described(r));
    Ok(())
}

pub fn search(a: SearchFlags) -> Result<()> {
    let registry = crate::registries().open(a.registry.as_deref())?;
    for (name, kind, live) in registry.search(&a.term)? {
        println!("{name:<32} {kind:<12} {}", live.join(", "));
    }
    Ok(())
}

pub fn yank(a: YankFlags) -> Result<()> {
    let reg = crate::registries().open(a.registry.as_deref())?;
    let (name, version) = galley_hosting::project::yank(&reg, &a.spec, a.key.as_deref(), a.undo)?;
    let done = if a.undo { "unyanked" } else { "yanked" };
    println!("{done} {name}@{version}");
    Ok(())
}

/// `galley registry serve`: prints the address it bound (useful with port 0), then serves.
pub fn serve(a: RegistryServeFlags) -> Result<()> {
    let cfg = a.config()?;
    if cfg.tokens.is_empty() {
        eprintln!("note: no --tokens file: the registry is read-only");
    }
    let root = cfg.root.display().to_string();
    let banner = |at| format!("serving {root} on http://{at}");
    crate::term::serve_on(&a.addr, 0, &banner, |listener| async move {
        Ok(galley_registry::serve(listener, cfg).await?)
    })
}
