//! galley-plugin-dev owns building plugins: the route per language (Rust through rustup's
//! `wasm32-wasip2` or Debian's Rust with `-Zbuild-std`, Python through componentize-py,
//! JavaScript through componentize-js, C through clang with bindings generated in-process),
//! componentizing core modules with the WASI adapter, embedding the manifest, installing the
//! pinned guest toolchains, and scaffolding new plugins from templates compiled into the
//! binary. It knows the runtime only to inspect what it built; it never runs a plugin.

pub mod build;
pub mod cplugin;
pub mod embedded;
mod error;
#[cfg(feature = "clap")]
pub mod flags;
pub mod inspect;
pub mod new;
pub mod toolchains;

pub use build::{Built, Lang, Toolchain, build, componentize, default_target_dir, world_of};
pub use error::{PluginDevError, Result};
pub use new::{NewKind, NewLang};
