//! The registry commands that publish and look: `galley plugin keygen | trust | pack |
//! publish | search | yank` and `galley registry serve`. galley-registry does the work
//! (packages, signing, registries); this module reads keys from galley's config folder
//! (`galley_core::dirs`), wires in the runtime's view of components, and prints.

use anyhow::{Context, Result, bail};
use galley_hosting::project::{key_path, token};
use galley_registry::{KeyPair, Package, Release, Scope, ServerConfig, TrustStore};
use std::path::{Path, PathBuf};

#[derive(clap::Args)]
pub struct KeygenArgs {
    /// Print an existing key file's id and public key instead.
    #[arg(long)]
    show: Option<PathBuf>,
}

#[derive(clap::Args)]
pub struct TrustArgs {
    id: String,
    public_key: String,
    /// The namespaces this key may sign (repeatable, or comma-separated); `*` is every
    /// namespace but `galley`. A key is trusted for nothing it is not named for.
    #[arg(long = "namespace", required = true, value_name = "NAMESPACE")]
    namespaces: Vec<String>,
}

#[derive(clap::Args)]
pub struct PackArgs {
    file: PathBuf,
    /// The namespace (NAMESPACE/NAME); default: `namespace` in the plugin's galley.toml.
    #[arg(long)]
    namespace: Option<String>,
    /// Signing key: a key id from `galley plugin keygen`, or a key file.
    #[arg(long)]
    key: Option<String>,
    #[arg(short, long, default_value = "target/packages")]
    out_dir: PathBuf,
}

#[derive(clap::Args)]
pub struct PublishArgs {
    /// A built component, or a packed `*.release.json`.
    file: PathBuf,
    /// The registry: a folder, file://, or http(s):// URL of `galley registry serve`; default GALLEY_REGISTRY.
    #[arg(long, conflicts_with = "oci")]
    registry: Option<String>,
    /// Push to an OCI registry instead, as a Wasm OCI artifact: oci://HOST/REPO[:TAG] (tag defaults to the version).
    #[arg(long)]
    oci: Option<String>,
    /// The namespace (NAMESPACE/NAME); default: `namespace` in the plugin's galley.toml.
    #[arg(long)]
    namespace: Option<String>,
    /// Signing key: a key id from `galley plugin keygen`, or a key file.
    #[arg(long)]
    key: Option<String>,
}

#[derive(clap::Args)]
pub struct SearchArgs {
    #[arg(default_value = "")]
    term: String,
    #[arg(long)]
    registry: Option<String>,
}

#[derive(clap::Args)]
pub struct YankArgs {
    /// NAMESPACE/NAME@VERSION
    spec: String,
    #[arg(long)]
    registry: Option<String>,
    #[arg(long)]
    undo: bool,
    /// The release's signing key (a key id or a key file); default: the key that signed it,
    /// if it is among yours. Installers ignore a yank its signer did not sign.
    #[arg(long)]
    key: Option<String>,
}

#[derive(clap::Args)]
pub struct ServeArgs {
    #[arg(long)]
    root: PathBuf,
    #[arg(long, default_value = "127.0.0.1:7878")]
    addr: String,
    /// A file of `TOKEN NAMESPACE[,NAMESPACE]` lines; without it the registry is read-only.
    #[arg(long)]
    tokens: Option<PathBuf>,
    #[arg(long, default_value_t = 64)]
    max_upload_mb: usize,
}

pub fn keygen(a: KeygenArgs) -> Result<()> {
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
    println!("key id      {}", key.id());
    println!("public key  {}", key.public_hex());
    println!("secret key  {} (keep it private)", path.display());
    println!(
        "others trust it with: galley plugin trust {} {} --namespace YOUR_NAMESPACE",
        key.id(),
        key.public_hex()
    );
    Ok(())
}

pub fn trust(a: TrustArgs) -> Result<()> {
    let file = galley_core::dirs::trust_file();
    let mut trust = TrustStore::load(&file)?;
    let scope = Scope::parse(&a.namespaces.join(","))?;
    println!("trusting key {} for {scope}", a.id);
    trust.add_scoped(&a.id, &a.public_key, scope)?;
    trust.save(&file)?;
    Ok(())
}

/// The package of a built component, signed with `key` (a key id or a key file) if given.
fn package(file: &Path, namespace: Option<&str>, key: Option<&str>) -> Result<Package> {
    let p = galley_hosting::project::package(file, namespace, key)?;
    if key.is_none() {
        eprintln!(
            "warning: {}@{} is unsigned (pass --key ID to sign); installers refuse it by default",
            p.release.name, p.release.version
        );
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
pub fn pack(a: PackArgs) -> Result<()> {
    let p = package(&a.file, a.namespace.as_deref(), a.key.as_deref())?;
    let (wasm, line) = p.write_packed(&a.out_dir)?;
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

pub fn publish(a: PublishArgs) -> Result<()> {
    let p = if a.file.to_string_lossy().ends_with(".release.json") {
        if a.key.is_some() || a.namespace.is_some() {
            bail!(
                "{}: a packed release is already named and signed; --key and --namespace apply to components",
                a.file.display()
            );
        }
        galley_hosting::project::load_packed(&a.file)?
    } else {
        package(&a.file, a.namespace.as_deref(), a.key.as_deref())?
    };
    let r = &p.release;
    if let Some(oci) = a.oci.as_deref() {
        let (reference, digest) = galley_hosting::project::push_oci(&p, oci)?;
        let (name, version, by) = (&r.name, &r.version, signed_by(r));
        println!("pushed {name}@{version} to {reference} (manifest {digest}){by}");
        return Ok(());
    }
    crate::registries()
        .open(a.registry.as_deref())?
        .publish(r, &p.blob, token)?;
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

pub fn search(a: SearchArgs) -> Result<()> {
    for (name, kind, live) in crate::registries()
        .open(a.registry.as_deref())?
        .search(&a.term)?
    {
        println!("{name:<32} {kind:<12} {}", live.join(", "));
    }
    Ok(())
}

pub fn yank(a: YankArgs) -> Result<()> {
    let reg = crate::registries().open(a.registry.as_deref())?;
    let (name, version) = galley_hosting::project::yank(&reg, &a.spec, a.key.as_deref(), a.undo)?;
    let done = if a.undo { "unyanked" } else { "yanked" };
    println!("{done} {name}@{version}");
    Ok(())
}

/// `galley registry serve`: prints the address it bound (useful with port 0), then serves.
pub fn serve(a: ServeArgs) -> Result<()> {
    let (root, addr) = (&a.root, &a.addr);
    let tokens = match &a.tokens {
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
        max_upload: a.max_upload_mb << 20,
        limits: Default::default(),
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
