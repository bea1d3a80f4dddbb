//! galley-registry: how plugins are published, found, locked and installed without trusting
//! the place they come from. A registry is a sparse index (one JSON-lines file per package,
//! one line per version) plus content-addressed blobs; every release line is signed by its
//! publisher (ed25519) over the fields that matter, every blob is hashed while it is read and
//! checked against the signed digest and size, and installs go through a content-addressed
//! cache that makes a locked install work offline. The same layout is read from a folder, from
//! `galley registry serve` (this crate's axum server, which adds token-guarded publishing and
//! yanking), or from any static file host. Container registries that speak the OCI distribution API hold
//! plugins too, as Wasm OCI artifacts carrying the same signed release line.

mod error;
mod index;
mod install;
mod keys;
mod locate;
mod lock;
mod oci;
mod package;
mod project;
mod resolve;
mod server;
mod source;
mod store;

pub use error::RegistryError;
pub use index::{PackageName, Release, YankRecord};
pub use install::{Installed, Installer, TrustPolicy};
pub use keys::{FIRST_PARTY_NAMESPACE, KeyPair, Scope, TrustStore, key_id};
pub use locate::{
    DEFAULT_INSTALL_DIR, DEFAULT_LOCKFILE, Located, PluginLocator, default_search_path,
};
pub use lock::{LockEntry, Lockfile};
pub use oci::{OciClient, OciRef, OciSource, Pulled};
pub use package::{Component, Describe, Package};
pub use project::{
    BUILTIN, Change, FileState, PROJECT_CONFIG, Project, Registry, first_party_key,
    project_registries,
};
pub use resolve::{Requirement, resolve};
pub use server::{ServerConfig, ServerLimits, serve};
pub use source::{HttpRegistry, Source, StaticRegistry};
pub use store::FileRegistry;
