//! The registry commands that publish and look: `galley plugin keygen | trust | pack | publish
//! | search | yank | list | remove` and `galley registry serve` (installing is `install_cmd`).
//! Keys and the trust file live in galley's config folder (`GALLEY_CONFIG_DIR`, else
//! `~/.config/galley`). A registry is a folder (or `file://` URL), a `galley registry serve`
//! URL, or — when none is named — the first-party registry compiled into the binary.

use anyhow::{Context, Result, bail};
use galley_registry::{
    FileRegistry, HttpRegistry, KeyPair, Lockfile, OciClient, OciRef, PackageName, Release,
    ServerConfig, Source, StaticRegistry, TrustStore,
};
use std::path::{Path, PathBuf};

pub fn config_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("GALLEY_CONFIG_DIR") {
        return PathBuf::from(d);
    }
    std::env::var_os("HOME")
        .map(|h| PathBuf::from(h).join(".config/galley"))
        .unwrap_or_else(|| PathBuf::from(".galley"))
}

pub fn trust_path() -> PathBuf {
    config_dir().join("trusted-keys")
}

fn key_path(id: &str) -> PathBuf {
    config_dir().join("keys").join(format!("{id}.key"))
}

mod first_party {
    include!(concat!(env!("OUT_DIR"), "/default_registry.rs"));
}

/// The keys this user trusts: their trust file plus the first-party key galley ships with.
pub fn trusted_keys() -> Result<TrustStore> {
    let mut trust = TrustStore::load(&trust_path())?;
    if let Some((id, public)) = first_party::FIRST_PARTY_KEY.trim().split_once(' ') {
        trust
            .add(id, public.trim())
            .context("the built-in first-party key")?;
    }
    Ok(trust)
}

/// A registry named on the command line: a folder (`DIR` or `file://DIR`), a server
/// (`http://`, `https://`), or the built-in first-party registry.
pub enum Registry {
    File(FileRegistry),
    Http(HttpRegistry),
    BuiltIn(StaticRegistry),
}

impl Registry {
    pub fn source(&self) -> &dyn Source {
        match self {
            Registry::File(f) => f,
            Registry::Http(h) => h,
            Registry::BuiltIn(s) => s,
        }
    }
}

/// `--registry`, else `GALLEY_REGISTRY`, else the first-party registry built into galley.
pub fn registry(arg: &Option<String>) -> Result<Registry> {
    let spec = match arg
        .clone()
        .or_else(|| std::env::var("GALLEY_REGISTRY").ok())
    {
        Some(s) => s,
        None => {
            let files = first_party::FILES
                .iter()
                .map(|(p, b)| (p.to_string(), *b))
                .collect();
            return Ok(Registry::BuiltIn(StaticRegistry {
                label: "the built-in first-party registry".into(),
                files,
            }));
        }
    };
    if spec.starts_with("http://") || spec.starts_with("https://") {
        return Ok(Registry::Http(HttpRegistry::new(&spec)?));
    }
    if spec.contains("://") && !spec.starts_with("file://") {
        bail!("registry `{spec}`: use a folder, file://, http:// or https://");
    }
    Ok(Registry::File(FileRegistry::open(
        spec.strip_prefix("file://").unwrap_or(&spec),
    )))
}

fn token() -> Result<String> {
    std::env::var("GALLEY_REGISTRY_TOKEN")
        .context("publishing to a server needs a token: set GALLEY_REGISTRY_TOKEN")
}

pub fn keygen() -> Result<()> {
    let key = KeyPair::generate()?;
    let path = key_path(&key.id());
    key.save(&path)?;
    let mut trust = TrustStore::load(&trust_path())?;
    trust.add(&key.id(), &key.public_hex())?;
    trust.save(&trust_path())?;
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
    let mut trust = TrustStore::load(&trust_path())?;
    trust.add(id, public)?;
    trust.save(&trust_path())?;
    println!("trusting key {id}");
    Ok(())
}

/// A package: a built component and its release line, signed when a key is given.
struct Package {
    release: Release,
    blob: Vec<u8>,
    info: galley_runtime::ComponentInfo,
}

/// The (unsigned) release line a built component is: its manifest's name and version under
/// `namespace` (the manifest's own when `None`), its kind, WIT version, digest, size,
/// dependencies and capabilities. `origin` names the file or reference in errors.
pub fn unsigned_release(
    info: &galley_runtime::ComponentInfo,
    namespace: Option<&str>,
    origin: &str,
) -> Result<Release> {
    let m = info.manifest.as_ref().with_context(|| {
        format!("{origin}: no galley manifest; build it with `galley plugin build`")
    })?;
    let (kind, wit) = info
        .plugin_export
        .clone()
        .with_context(|| format!("{origin}: exports no galley plugin interface"))?;
    let namespace = match (namespace, m.namespace.as_deref()) {
        (Some(a), Some(b)) if a != b => {
            bail!("{origin}: its galley.toml says namespace `{b}`, not `{a}`")
        }
        (Some(ns), _) | (None, Some(ns)) => ns.to_string(),
        (None, None) => {
            bail!("{origin}: no namespace: set `namespace` in the plugin's galley.toml")
        }
    };
    let name = PackageName::parse(&format!("{namespace}/{}", m.name))?;
    let mut dependencies = std::collections::BTreeMap::new();
    for (dep, req) in &m.dependencies {
        dependencies.insert(
            PackageName::parse(dep)
                .with_context(|| format!("{origin}: key `dependencies.{dep}`"))?,
            req.clone(),
        );
    }
    Ok(Release {
        name,
        version: m.version.clone(),
        kind,
        wit,
        digest: info.digest.clone(),
        size: info.size as u64,
        dependencies,
        read_dirs: m.capabilities.read_dirs.clone(),
        yanked: false,
        key: None,
        signature: None,
    })
}

fn package(file: &Path, namespace: Option<&str>, key: Option<&str>) -> Result<Package> {
    let blob = std::fs::read(file).with_context(|| format!("{}: cannot read", file.display()))?;
    let info = galley_runtime::inspect(&blob, &file.display().to_string())?;
    let mut release = unsigned_release(&info, namespace, &file.display().to_string())?;
    match key {
        Some(k) => {
            let path = if Path::new(k).exists() {
                PathBuf::from(k)
            } else {
                key_path(k)
            };
            KeyPair::load(&path)
                .with_context(|| format!("signing key `{k}`"))?
                .sign(&mut release);
        }
        None => eprintln!(
            "warning: {}@{} is unsigned (pass --key ID to sign); installers refuse it by default",
            release.name, release.version
        ),
    }
    Ok(Package {
        release,
        blob,
        info,
    })
}

/// A package made by `pack`: `NAME-VERSION.release.json` next to `NAME-VERSION.wasm`. The
/// blob must be exactly what the release line names.
fn load_packed(release_file: &Path) -> Result<Package> {
    let text = std::fs::read_to_string(release_file)
        .with_context(|| format!("{}: cannot read", release_file.display()))?;
    let release: Release = serde_json::from_str(text.trim())
        .with_context(|| format!("{}: not a release line", release_file.display()))?;
    let name = release_file
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_suffix(".release.json"))
        .unwrap_or_default();
    let wasm = release_file.with_file_name(format!("{name}.wasm"));
    let blob = std::fs::read(&wasm)
        .with_context(|| format!("{}: cannot read the package's component", wasm.display()))?;
    let info = galley_runtime::inspect(&blob, &wasm.display().to_string())?;
    if info.digest != release.digest || blob.len() as u64 != release.size {
        bail!(
            "{}: is {} ({} bytes), but {} says {} ({} bytes)",
            wasm.display(),
            info.digest,
            blob.len(),
            release_file.display(),
            release.digest,
            release.size
        );
    }
    Ok(Package {
        release,
        blob,
        info,
    })
}

/// `galley plugin pack`: a publishable package, signed here so it can be uploaded elsewhere.
pub fn pack(file: &Path, namespace: Option<&str>, key: Option<&str>, out_dir: &Path) -> Result<()> {
    let p = package(file, namespace, key)?;
    let stem = format!("{}-{}", p.release.name.name, p.release.version);
    std::fs::create_dir_all(out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let wasm = out_dir.join(format!("{stem}.wasm"));
    let line = out_dir.join(format!("{stem}.release.json"));
    std::fs::write(&wasm, &p.blob).with_context(|| format!("writing {}", wasm.display()))?;
    std::fs::write(&line, format!("{}\n", serde_json::to_string(&p.release)?))
        .with_context(|| format!("writing {}", line.display()))?;
    println!(
        "packed {}@{} ({} bytes, {}){}",
        p.release.name,
        p.release.version,
        p.release.size,
        p.release.digest,
        signed_by(&p.release)
    );
    println!("  {}\n  {}", wasm.display(), line.display());
    Ok(())
}

fn signed_by(r: &Release) -> String {
    r.key
        .as_deref()
        .map(|k| format!(", signed by {k}"))
        .unwrap_or_else(|| ", UNSIGNED".into())
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
        load_packed(a.file)?
    } else {
        package(a.file, a.namespace, a.key)?
    };
    let r = &p.release;
    if let Some(oci) = a.oci {
        let reference = OciRef::parse(oci)?;
        let reference = if oci
            .rsplit('/')
            .next()
            .is_some_and(|last| last.contains(':'))
        {
            reference
        } else {
            // No tag given: tag with the version, as wkg does.
            OciRef {
                tag: Some(r.version.to_string()),
                ..reference
            }
        };
        let description = p
            .info
            .manifest
            .as_ref()
            .map(|m| m.description.clone())
            .unwrap_or_default();
        let digest = OciClient::new(&reference)?.push(
            &reference,
            r,
            &p.blob,
            &p.info.exports,
            &p.info.imports,
            &description,
        )?;
        println!(
            "pushed {}@{} to {reference} (manifest {digest}){}",
            r.name,
            r.version,
            signed_by(r)
        );
        return Ok(());
    }
    match registry(a.registry)? {
        Registry::File(f) => f.publish(r, &p.blob)?,
        Registry::Http(h) => h.publish(r, &p.blob, &token()?)?,
        Registry::BuiltIn(_) => bail!(
            "the built-in registry is read-only: pass --registry DIR|URL (or set GALLEY_REGISTRY)"
        ),
    }
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
    let reg = self::registry(registry)?;
    let names = match &reg {
        Registry::Http(h) => return print_rows(h.search(term)?),
        Registry::File(f) => f.search(term)?,
        Registry::BuiltIn(b) => b.search(term),
    };
    let mut rows = Vec::new();
    for name in names {
        let releases = reg.source().releases(&name)?;
        let live = releases
            .iter()
            .filter(|r| !r.yanked)
            .map(|r| r.version.to_string())
            .collect();
        rows.push((
            name.to_string(),
            releases
                .last()
                .map(|r| r.kind.to_string())
                .unwrap_or_default(),
            live,
        ));
    }
    print_rows(rows)
}

fn print_rows(rows: Vec<(String, String, Vec<String>)>) -> Result<()> {
    for (name, kind, live) in rows {
        println!("{name:<32} {kind:<12} {}", live.join(", "));
    }
    Ok(())
}

pub fn yank(spec: &str, registry: &Option<String>, undo: bool) -> Result<()> {
    let reg = self::registry(registry)?;
    let (name, version) = spec
        .split_once('@')
        .with_context(|| format!("`{spec}`: expected NAMESPACE/NAME@VERSION"))?;
    let name = PackageName::parse(name)?;
    let version =
        semver::Version::parse(version).with_context(|| format!("`{spec}`: bad version"))?;
    match &reg {
        Registry::File(f) => f.set_yanked(&name, &version, !undo)?,
        Registry::Http(h) => h.set_yanked(&name, &version, !undo, &token()?)?,
        Registry::BuiltIn(_) => bail!(
            "the built-in registry is read-only: pass --registry DIR|URL (or set GALLEY_REGISTRY)"
        ),
    }
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

/// `galley plugin list`: what galley.lock pins, and whether each file is in place and intact.
pub fn list(into: &Path, lock: &Path) -> Result<()> {
    let Some(lock) = Lockfile::load(lock)? else {
        println!("no {}: nothing installed here", lock.display());
        return Ok(());
    };
    for e in &lock.plugins {
        let path = into
            .join(&e.name.namespace)
            .join(format!("{}.wasm", e.name.name));
        let state = match std::fs::read(&path) {
            Ok(bytes) if galley_runtime::digest_of(&bytes) == e.digest => "ok",
            Ok(_) => "MODIFIED (reinstall: galley plugin install)",
            Err(_) => "missing (galley plugin install)",
        };
        let by = e
            .key
            .as_deref()
            .map(|k| format!("signed by {k}"))
            .unwrap_or_else(|| "UNSIGNED".into());
        println!(
            "{:<32} {:<10} {by:<26} {state}",
            e.name.to_string(),
            e.version.to_string()
        );
    }
    Ok(())
}

/// `galley plugin remove`: drops packages from galley.lock and the plugin folder.
pub fn remove(names: &[String], into: &Path, lock_path: &Path) -> Result<()> {
    let mut lock = Lockfile::load(lock_path)?
        .with_context(|| format!("no {}: nothing installed here", lock_path.display()))?;
    for n in names {
        let name = PackageName::parse(n)?;
        let before = lock.plugins.len();
        lock.plugins.retain(|e| e.name != name);
        lock.requirements.remove(&name);
        if lock.plugins.len() == before {
            bail!("{name} is not in {}", lock_path.display());
        }
        let path = into
            .join(&name.namespace)
            .join(format!("{}.wasm", name.name));
        if path.exists() {
            std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
        }
        println!("removed {name}");
    }
    lock.save(lock_path)?;
    Ok(())
}
