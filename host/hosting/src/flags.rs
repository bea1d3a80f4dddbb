//! The flags of the commands that open projects and registries (`galley plugin install |
//! update | list | remove | keygen | trust | pack | publish | search | yank`, `galley registry
//! serve`), beside the `Policy` and server settings they become. Behind the `clap` feature;
//! the binary composes them and prints.

use crate::project::Policy;
use galley_registry::{RegistryError, ServerConfig};
use std::path::PathBuf;

/// Where a project keeps its plugins and its lockfile.
#[derive(clap::Args, Debug, Clone)]
pub struct ProjectFlags {
    #[arg(long, default_value = galley_registry::DEFAULT_INSTALL_DIR)]
    pub into: PathBuf,
    #[arg(long, default_value = galley_registry::DEFAULT_LOCKFILE)]
    pub lock: PathBuf,
}

/// Where packages come from and what an install accepts beyond signed-by-a-trusted-key.
#[derive(clap::Args, Debug, Clone)]
pub struct FetchFlags {
    #[arg(long)]
    pub registry: Option<String>,
    #[command(flatten)]
    pub project: ProjectFlags,
    /// Accept unsigned packages (recorded in the lockfile).
    #[arg(long)]
    pub allow_unsigned: bool,
    /// Accept a package signed by another key than galley.lock records for it.
    #[arg(long)]
    pub allow_signer_change: bool,
}

impl ProjectFlags {
    pub fn policy(&self) -> Policy {
        Policy {
            into: self.into.clone(),
            lock: self.lock.clone(),
            ..Policy::default()
        }
    }
}

impl FetchFlags {
    pub fn policy(&self) -> Policy {
        Policy {
            allow_unsigned: self.allow_unsigned,
            allow_signer_change: self.allow_signer_change,
            ..self.project.policy()
        }
    }
}

#[derive(clap::Args, Debug)]
pub struct InstallFlags {
    pub reqs: Vec<String>,
    #[command(flatten)]
    pub fetch: FetchFlags,
    /// Use only the local cache (install from galley.lock).
    #[arg(long)]
    pub offline: bool,
}

#[derive(clap::Args, Debug)]
pub struct UpdateFlags {
    pub names: Vec<String>,
    #[command(flatten)]
    pub fetch: FetchFlags,
}

#[derive(clap::Args, Debug)]
pub struct RemoveFlags {
    #[arg(required = true)]
    pub names: Vec<String>,
    #[command(flatten)]
    pub project: ProjectFlags,
}

#[derive(clap::Args, Debug)]
pub struct KeygenFlags {
    /// Print an existing key file's id and public key instead.
    #[arg(long)]
    pub show: Option<PathBuf>,
}

#[derive(clap::Args, Debug)]
pub struct TrustFlags {
    pub id: String,
    pub public_key: String,
    /// The namespaces this key may sign (repeatable, or comma-separated); `*` is every
    /// namespace but `galley`. A key is trusted for nothing it is not named for.
    #[arg(long = "namespace", required = true, value_name = "NAMESPACE")]
    pub namespaces: Vec<String>,
}

/// What names and signs a package made from a built component.
#[derive(clap::Args, Debug)]
pub struct SignFlags {
    /// The namespace (NAMESPACE/NAME); default: `namespace` in the plugin's galley.toml.
    #[arg(long)]
    pub namespace: Option<String>,
    /// Signing key: a key id from `galley plugin keygen`, or a key file.
    #[arg(long)]
    pub key: Option<String>,
}

#[derive(clap::Args, Debug)]
pub struct PackFlags {
    pub file: PathBuf,
    #[command(flatten)]
    pub sign: SignFlags,
    #[arg(short, long, default_value = "target/packages")]
    pub out_dir: PathBuf,
}

#[derive(clap::Args, Debug)]
pub struct PublishFlags {
    /// A built component, or a packed `*.release.json`.
    pub file: PathBuf,
    /// The registry: a folder, file://, or http(s):// URL of `galley registry serve`; default GALLEY_REGISTRY.
    #[arg(long, conflicts_with = "oci")]
    pub registry: Option<String>,
    /// Push to an OCI registry instead, as a Wasm OCI artifact: oci://HOST/REPO[:TAG] (tag defaults to the version).
    #[arg(long)]
    pub oci: Option<String>,
    #[command(flatten)]
    pub sign: SignFlags,
}

#[derive(clap::Args, Debug)]
pub struct SearchFlags {
    #[arg(default_value = "")]
    pub term: String,
    #[arg(long)]
    pub registry: Option<String>,
}

#[derive(clap::Args, Debug)]
pub struct YankFlags {
    /// NAMESPACE/NAME@VERSION
    pub spec: String,
    #[arg(long)]
    pub registry: Option<String>,
    #[arg(long)]
    pub undo: bool,
    /// The release's signing key (a key id or a key file); default: the key that signed it,
    /// if it is among yours. Installers ignore a yank its signer did not sign.
    #[arg(long)]
    pub key: Option<String>,
}

/// `galley registry serve`'s flags.
#[derive(clap::Args, Debug)]
pub struct RegistryServeFlags {
    #[arg(long)]
    pub root: PathBuf,
    #[arg(long, default_value = "127.0.0.1:7878")]
    pub addr: String,
    /// A file of `TOKEN NAMESPACE[,NAMESPACE]` lines; without it the registry is read-only.
    #[arg(long)]
    pub tokens: Option<PathBuf>,
    #[arg(long, default_value_t = 64)]
    pub max_upload_mb: usize,
}

impl RegistryServeFlags {
    /// The server's settings: the tokens file read and checked, the registry folder made.
    pub fn config(&self) -> Result<ServerConfig, RegistryError> {
        let tokens = match &self.tokens {
            Some(p) => ServerConfig::load_tokens(p)?,
            None => Default::default(),
        };
        std::fs::create_dir_all(&self.root).map_err(|e| RegistryError::Io {
            path: self.root.clone(),
            reason: format!("cannot create: {e}"),
        })?;
        Ok(ServerConfig {
            root: self.root.clone(),
            tokens,
            max_upload: self.max_upload_mb << 20,
            limits: Default::default(),
        })
    }
}
