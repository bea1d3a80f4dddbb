//! The registry commands that publish and look: `galley plugin keygen | trust | pack |
//! publish | search | yank` and `galley registry serve`. galley-registry does the work
//! (packages, signing, registries); this module reads keys from galley's config folder
//! (`galley_core::dirs`), wires in the runtime's view of components, and prints.

use crate::install_cmd::describe;
use anyhow::{Context, Result, bail};
use galley_registry::{
    KeyPair, OciClient, OciRef, Package, PackageName, Registry, RegistryError, Release,
    ServerConfig, TrustStore,
};
use std::path::{Path, PathBuf};

fn key_path(id: &str) -> PathBuf {
    galley_core::dirs::keys_dir().join(format!("{id}.key"))
}

fn token() -> std::result::Result<String, RegistryError> {
    std::env::var("GALLEY_REGISTRY_TOKEN").map_err(|_| {
        RegistryError::BadReference(
            "publishing to a server needs a token: set GALLEY_REGISTRY_TOKEN".into(),
        )
    })
}

pub fn keygen() -> Result<()> {
    let key = KeyPair::generate()?;
    let path = key_path(&key.id());
    key.save(&path)?;
    let file = galley_core::dirs::trust_file();
    let mut trust = TrustStore::load(&file)?;
    trust.add(&key.id(), &key.public_hex())?;
    trust.save(&file)?;
    println!("key id      {}", key.id());
    println!("public key  {}", key.public_hex());
    println!("secret key  {} (keep it private)", path.display());
    println!(
        "others trust it with: galley plugin trust {} {}",
        key.id(),
        key.public_hex()
    );
    Ok(())
}

pub fn trust(id: &str, public: &str) -> Result<()> {
    let file = galley_core::dirs::trust_file();
    let mut trust = TrustStore::load(&file)?;
    trust.add(id, public)?;
    trust.save(&file)?;
    println!("trusting key {id}");
    Ok(())
}

/// The package of a built component, signed with `key` (a key id or a key file) if given.
fn package(file: &Path, namespace: Option<&str>, key: Option<&str>) -> Result<Package> {
    let mut p = Package::from_file(file, namespace, &describe)?;
    match key {
        Some(k) => {
            let path = if Path::new(k).exists() {
                PathBuf::from(k)
            } else {
                key_path(k)
            };
            p.sign(&KeyPair::load(&path).with_context(|| format!("signing key `{k}`"))?);
        }
        None => eprintln!(
            "warning: {}@{} is unsigned (pass --key ID to sign); installers refuse it by default",
            p.release.name, p.release.version
        ),
    }
    Ok(p)
}

fn signed_by(r: &Release) -> String {
    r.key
        .as_deref()
        .map(|k| format!(", signed by {k}"))
        .unwrap_or_else(|| ", UNSIGNED".into())
}

/// `galley plugin pack`: a publishable package, signed here so it can be uploaded elsewhere.
pub fn pack(file: &Path, namespace: Option<&str>, key: Option<&str>, out_dir: &Path) -> Result<()> {
    let p = package(file, namespace, key)?;
    let (wasm, line) = p.write_packed(out_dir)?;
    let r = &p.release;
    println!(
        "packed {}@{} ({} bytes, {}){}",
        r.name,
        r.version,
        r.size,
        r.digest,
        signed_by(r)
    );
    println!("  {}\n  {}", wasm.display(), line.display());
    Ok(())
}

pub struct PublishArgs<'a> {
    /// A built component, or a packed `*.release.json`.
    pub file: &'a Path,
    pub registry: &'a Option<String>,
    pub oci: Option<&'a str>,
    pub namespace: Option<&'a str>,
    pub key: Option<&'a str>,
}

pub fn publish(a: PublishArgs<'_>) -> Result<()> {
    let p = if a.file.to_string_lossy().ends_with(".release.json") {
        if a.key.is_some() || a.namespace.is_some() {
            bail!(
                "{}: a packed release is already named and signed; --key and --namespace apply to components",
                a.file.display()
            );
        }
        Package::load_packed(a.file, &describe)?
    } else {
        package(a.file, a.namespace, a.key)?
    };
    let r = &p.release;
    if let Some(oci) = a.oci {
        let mut reference = OciRef::parse(oci)?;
        if !oci
            .rsplit('/')
            .next()
            .is_some_and(|last| last.contains(':'))
        {
            // No tag given: tag with the version, as wkg does.
            reference.tag = Some(r.version.to_string());
        }
        let c = &p.component;
        let digest = OciClient::new(&reference)?.push(
            &reference,
            r,
            &p.blob,
            &c.exports,
            &c.imports,
            &c.description,
        )?;
        println!(
            "pushed {}@{} to {reference} (manifest {digest}){}",
            r.name,
            r.version,
            signed_by(r)
        );
        return Ok(());
    }
    Registry::open(a.registry.as_deref())?.publish(r, &p.blob, token)?;
    println!(
        "published {}@{} ({} bytes, {}){}",
        r.name,
        r.version,
        r.size,
        r.digest,
        signed_by(r)
    );
    Ok(())
}

pub fn search(term: &str, registry: &Option<String>) -> Result<()> {
    for (name, kind, live) in Registry::open(registry.as_deref())?.search(term)? {
        println!("{name:<32} {kind:<12} {}", live.join(", "));
    }
    Ok(())
}

pub fn yank(spec: &str, registry: &Option<String>, undo: bool) -> Result<()> {
    let reg = Registry::open(registry.as_deref())?;
    let (name, version) = spec
        .split_once('@')
        .with_context(|| format!("`{spec}`: expected NAMESPACE/NAME@VERSION"))?;
    let name = PackageName::parse(name)?;
    let version =
        semver::Version::parse(version).with_context(|| format!("`{spec}`: bad version"))?;
    reg.set_yanked(&name, &version, !undo, token)?;
    println!(
        "{} {name}@{version}",
        if undo { "unyanked" } else { "yanked" }
    );
    Ok(())
}

/// `galley registry serve`: prints the address it bound (useful with port 0), then serves.
pub fn serve(root: &Path, addr: &str, tokens: Option<&Path>, max_upload_mb: usize) -> Result<()> {
    let tokens = match tokens {
        Some(p) => ServerConfig::load_tokens(p)?,
        None => Default::default(),
    };
    if tokens.is_empty() {
        eprintln!("note: no --tokens file: the registry is read-only");
    }
    std::fs::create_dir_all(root).with_context(|| format!("creating {}", root.display()))?;
    let cfg = ServerConfig {
        root: root.to_path_buf(),
        tokens,
        max_upload: max_upload_mb << 20,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding {addr}"))?;
        println!(
            "serving {} on http://{}",
            cfg.root.display(),
            listener.local_addr()?
        );
        use std::io::Write;
        std::io::stdout().flush()?;
        galley_registry::serve(listener, cfg).await?;
        Ok(())
    })
}
