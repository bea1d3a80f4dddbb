//! Errors of loading and instantiating plugins (call failures are `galley_core::PluginError`).
//! Every message says what is wrong and what to do, and names the file or plugin.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("{path}: cannot read plugin: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },

    #[error(
        "{origin}: not a WebAssembly component ({reason}); build plugins with `galley plugin build`"
    )]
    NotAComponent { origin: String, reason: String },

    #[error(
        "{origin}: is a core WebAssembly module, not a component; run `galley plugin build` on its crate (it componentizes with the WASI adapter)"
    )]
    CoreModule { origin: String },

    #[error("{origin}: invalid component: {reason}")]
    Invalid { origin: String, reason: String },

    #[error(
        "{origin}: has no galley manifest (custom section `galley:manifest`); build it with `galley plugin build`, which embeds galley.toml"
    )]
    NoManifest { origin: String },

    #[error("{origin}: bad manifest: {reason}")]
    BadManifest { origin: String, reason: String },

    #[error(
        "{origin}: exports no galley plugin interface (galley:plugin/reward, data-loader, evaluator or recipe); exports: {exports}"
    )]
    NoPluginExport { origin: String, exports: String },

    #[error(
        "{plugin}: built against galley:plugin@{found}, but this galley supports {supported}; {advice}"
    )]
    UnsupportedWit {
        plugin: String,
        found: String,
        supported: String,
        advice: String,
    },

    #[error("{plugin}: is a plugin of kind `{found}`, but one of kind `{expected}` is needed here")]
    WrongKind {
        plugin: String,
        found: String,
        expected: String,
    },

    #[error(
        "{plugin}: manifest says kind `{manifest}` but the component exports the {exported} interface"
    )]
    KindMismatch {
        plugin: String,
        manifest: String,
        exported: String,
    },

    #[error(
        "{plugin}: imports `{import}`, which galley does not provide to plugins (it links galley:plugin/{{log,host}} and wasi:{{cli,clocks,filesystem,io,random,sockets}}@0.2, sandboxed); rebuild without it (a JS plugin needs `-d http fetch-event`)"
    )]
    UnknownImport { plugin: String, import: String },

    #[error(
        "{plugin}: asks to read directory `{name}`; allow it with `--allow-dir {name}=PATH` (or `allow_dirs: {{{name}: PATH}}` in the config)"
    )]
    DirNotGranted { plugin: String, name: String },

    #[error("{plugin}: cannot grant directory `{name}` = {path}: {reason}")]
    BadGrant {
        plugin: String,
        name: String,
        path: PathBuf,
        reason: String,
    },

    #[error("{plugin}: cannot instantiate: {reason}")]
    Instantiate { plugin: String, reason: String },

    #[error("cannot start the WebAssembly engine: {0}")]
    Engine(String),

    #[error(
        "{origin}: its digest {found} is not the {pinned} galley.lock pins: the file changed after it was installed; reinstall it with `galley plugin install`"
    )]
    NotPinned {
        origin: String,
        pinned: String,
        found: String,
    },
}
