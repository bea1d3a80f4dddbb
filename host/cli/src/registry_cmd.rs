//! The registry commands: `galley plugin keygen | trust | publish | search | install | yank`.
//! Keys and the trust file live in galley's config folder (`GALLEY_CONFIG_DIR`, else
//! `~/.config/galley`); a registry is a folder (or `file://` URL) laid out as galley-registry
//! describes.

use anyhow::{Context, Result, bail};
use galley_registry::{
    FileRegistry, HttpRegistry, Installer, KeyPair, Lockfile, PackageName, Release, Requirement, ServerConfig, Source, TrustPolicy, TrustStore,
};
use std::path::{Path, PathBuf};

pub fn config_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("GALLEY_CONFIG_DIR") {
        return PathBuf::from(d);
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config/galley")).unwrap_or_else(|| PathBuf::from(".galley"))
}

fn trust_path() -> PathBuf {
    config_dir().join("trusted-keys")
}

fn key_path(id: &str) -> PathBuf {
    config_dir().join("keys").join(format!("{id}.key"))
}

/// A registry named on the command line: a folder (`DIR` or `file://DIR`) or a server
/// (`http://`, `https://`).
pub enum Registry {
    File(FileRegistry),
    Http(HttpRegistry),
}

impl Registry {
    pub fn source(&self) -> &dyn Source {
        match self {
            Registry::File(f) => f,
            Registry::Http(h) => h,
        }
    }
}

pub fn registry(arg: &Option<String>) -> Result<Registry> {
    let spec = match arg {
        Some(s) => s.clone(),
        None => std::env::var("GALLEY_REGISTRY").context("no registry: pass --registry DIR|URL (or set GALLEY_REGISTRY)")?,
    };
    if spec.starts_with("http://") || spec.starts_with("https://") {
        return Ok(Registry::Http(HttpRegistry::new(&spec)?));
    }
    if spec.contains("://") && !spec.starts_with("file://") {
        bail!("registry `{spec}`: use a folder, file://, http:// or https://");
    }
    Ok(Registry::File(FileRegistry::open(spec.strip_prefix("file://").unwrap_or(&spec))))
}

fn token() -> Result<String> {
    std::env::var("GALLEY_REGISTRY_TOKEN").context("publishing to a server needs a token: set GALLEY_REGISTRY_TOKEN")
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
    println!("others trust it with: galley plugin trust {} {}", key.id(), key.public_hex());
    Ok(())
}

pub fn trust(id: &str, public: &str) -> Result<()> {
    let mut trust = TrustStore::load(&trust_path())?;
    trust.add(id, public)?;
    trust.save(&trust_path())?;
    println!("trusting key {id}");
    Ok(())
}

pub fn publish(file: &Path, registry: &Option<String>, namespace: &str, key: Option<&str>) -> Result<()> {
    let reg = self::registry(registry)?;
    let bytes = std::fs::read(file).with_context(|| format!("{}: cannot read", file.display()))?;
    let info = galley_runtime::inspect(&bytes, &file.display().to_string())?;
    let m = info.manifest.with_context(|| format!("{}: no galley manifest; build it with `galley plugin build`", file.display()))?;
    let (kind, wit) = info.plugin_export.with_context(|| format!("{}: exports no galley plugin interface", file.display()))?;
    let name = PackageName::parse(&format!("{namespace}/{}", m.name))?;
    let mut dependencies = std::collections::BTreeMap::new();
    for (dep, req) in &m.dependencies {
        dependencies.insert(PackageName::parse(dep).with_context(|| format!("{}: key `dependencies.{dep}`", file.display()))?, req.clone());
    }
    let mut release = Release {
        name,
        version: m.version.clone(),
        kind,
        wit,
        digest: info.digest.clone(),
        size: bytes.len() as u64,
        dependencies,
        read_dirs: m.capabilities.read_dirs.clone(),
        yanked: false,
        key: None,
        signature: None,
    };
    match key {
        Some(k) => {
            let path = if Path::new(k).exists() { PathBuf::from(k) } else { key_path(k) };
            KeyPair::load(&path).with_context(|| format!("signing key `{k}`"))?.sign(&mut release);
        }
        None => eprintln!("warning: publishing {}@{} unsigned (pass --key ID to sign); installers refuse it by default", release.name, release.version),
    }
    match &reg {
        Registry::File(f) => f.publish(&release, &bytes)?,
        Registry::Http(h) => h.publish(&release, &bytes, &token()?)?,
    }
    println!("published {}@{} ({} bytes, {}){}", release.name, release.version, release.size, release.digest, release.key.as_deref().map(|k| format!(", signed by {k}")).unwrap_or_default());
    Ok(())
}

pub fn search(term: &str, registry: &Option<String>) -> Result<()> {
    let rows: Vec<(String, String, Vec<String>)> = match self::registry(registry)? {
        Registry::Http(h) => h.search(term)?,
        Registry::File(f) => {
            let mut rows = Vec::new();
            for name in f.search(term)? {
                let releases = f.releases(&name)?;
                let live = releases.iter().filter(|r| !r.yanked).map(|r| r.version.to_string()).collect();
                rows.push((name.to_string(), releases.last().map(|r| r.kind.to_string()).unwrap_or_default(), live));
            }
            rows
        }
    };
    for (name, kind, live) in rows {
        println!("{name:<32} {kind:<12} {}", live.join(", "));
    }
    Ok(())
}

pub struct InstallArgs<'a> {
    pub reqs: &'a [String],
    pub registry: &'a Option<String>,
    pub into: &'a Path,
    pub lock: &'a Path,
    pub allow_unsigned: bool,
    pub offline: bool,
}

pub fn install(a: InstallArgs<'_>) -> Result<()> {
    let trust = TrustStore::load(&trust_path())?;
    let cache = galley_runtime::default_cache_dir()
        .and_then(|c| c.parent().map(|p| p.join("blobs")))
        .unwrap_or_else(|| PathBuf::from(".galley/cache"));
    let reg = if a.offline { None } else { Some(registry(a.registry)?) };
    let check = |bytes: &[u8]| -> std::result::Result<(String, semver::Version), String> {
        let info = galley_runtime::inspect(bytes, "blob").map_err(|e| e.to_string())?;
        let m = info.manifest.ok_or("no galley manifest")?;
        Ok((m.name, m.version))
    };
    let installer = Installer {
        registry: reg.as_ref().map(|r| r.source()),
        cache,
        trust: &trust,
        policy: if a.allow_unsigned { TrustPolicy::AllowUnsigned } else { TrustPolicy::SignedOnly },
        max_blob: 256 << 20,
        wit_supported: &galley_runtime::wit_supported,
        manifest_check: &check,
    };
    let lock = Lockfile::load(a.lock)?;
    let installed = if a.reqs.is_empty() {
        let lock = lock.with_context(|| format!("nothing to install: name plugins, or have a {}", a.lock.display()))?;
        installer.install_locked(&lock, a.into)?
    } else {
        let mut reqs = a.reqs.iter().map(|r| Requirement::parse(r)).collect::<std::result::Result<Vec<_>, _>>()?;
        // What the lockfile already holds stays installed, at its locked version, unless
        // this command names it again.
        for e in lock.iter().flat_map(|l| &l.plugins) {
            if !reqs.iter().any(|r| r.name == e.name) {
                reqs.push(Requirement { name: e.name.clone(), req: semver::VersionReq::parse(&format!("={}", e.version))? });
            }
        }
        let (installed, new_lock) = installer.install(&reqs, a.into, lock.as_ref())?;
        new_lock.save(a.lock)?;
        installed
    };
    for i in &installed {
        let by = i.signer.as_deref().map(|k| format!("signed by {k}")).unwrap_or_else(|| "UNSIGNED".into());
        println!("{:<32} {:<10} {by:<26} {}", i.name.to_string(), i.version.to_string(), i.path.display());
    }
    Ok(())
}

pub fn yank(spec: &str, registry: &Option<String>, undo: bool) -> Result<()> {
    let reg = self::registry(registry)?;
    let (name, version) = spec.split_once('@').with_context(|| format!("`{spec}`: expected NAMESPACE/NAME@VERSION"))?;
    let name = PackageName::parse(name)?;
    let version = semver::Version::parse(version).with_context(|| format!("`{spec}`: bad version"))?;
    match &reg {
        Registry::File(f) => f.set_yanked(&name, &version, !undo)?,
        Registry::Http(h) => h.set_yanked(&name, &version, !undo, &token()?)?,
    }
    println!("{} {name}@{version}", if undo { "unyanked" } else { "yanked" });
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
    let cfg = ServerConfig { root: root.to_path_buf(), tokens, max_upload: max_upload_mb << 20 };
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("binding {addr}"))?;
        println!("serving {} on http://{}", cfg.root.display(), listener.local_addr()?);
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
        let path = into.join(&e.name.namespace).join(format!("{}.wasm", e.name.name));
        let state = match std::fs::read(&path) {
            Ok(bytes) if galley_runtime::digest_of(&bytes) == e.digest => "ok",
            Ok(_) => "MODIFIED (reinstall: galley plugin install)",
            Err(_) => "missing (galley plugin install)",
        };
        let by = e.key.as_deref().map(|k| format!("signed by {k}")).unwrap_or_else(|| "UNSIGNED".into());
        println!("{:<32} {:<10} {by:<26} {state}", e.name.to_string(), e.version.to_string());
    }
    Ok(())
}

/// `galley plugin remove`: drops packages from galley.lock and the plugin folder.
pub fn remove(names: &[String], into: &Path, lock_path: &Path) -> Result<()> {
    let mut lock = Lockfile::load(lock_path)?.with_context(|| format!("no {}: nothing installed here", lock_path.display()))?;
    for n in names {
        let name = PackageName::parse(n)?;
        let before = lock.plugins.len();
        lock.plugins.retain(|e| e.name != name);
        if lock.plugins.len() == before {
            bail!("{name} is not in {}", lock_path.display());
        }
        let path = into.join(&name.namespace).join(format!("{}.wasm", name.name));
        if path.exists() {
            std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
        }
        println!("removed {name}");
    }
    lock.save(lock_path)?;
    Ok(())
}
