//! galley-hosting is where the runtime (sandboxed components) meets the registry (packages,
//! galley.lock, signatures) on behalf of the rooms that must never know either: it finds each
//! plugin a config names with the one locator, relative to that config, loads only the bytes
//! galley.lock pins, starts it with the sandbox's limits and a derived seed, and hands it on as
//! a core trait (`RewardFn`, `DataSource`, `Evaluator`, `Recipe`). The `galley` binary is its
//! only user today; it is a library so that the policy (which key is at fault, which digest is
//! accepted, which seed a plugin gets) lives in one tested place and not in argument parsing.

pub mod call;
#[cfg(feature = "clap")]
pub mod flags;
pub mod open;
pub mod project;
pub mod run_host;
pub mod sandbox;
pub mod synth;

pub use open::{OnLoad, Opener, no_record, open_rewards, open_source, open_train};
pub use run_host::{RunHost, TaskPlugins};
pub use sandbox::Sandbox;

/// What went wrong, led by the config key, flag or file at fault.
#[derive(Debug, thiserror::Error)]
pub enum HostingError {
    /// `at` is a config key (`grpo.rewards[1]`), a flag (`--meta`) or a file.
    #[error("{at}: {message}")]
    At { at: String, message: String },
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Registry(#[from] galley_registry::RegistryError),
    #[error(transparent)]
    Runtime(#[from] galley_runtime::RuntimeError),
    #[error(transparent)]
    Plugin(#[from] galley_core::PluginError),
}

pub type Result<T, E = HostingError> = std::result::Result<T, E>;

/// An error's message followed by each of its causes (`a: b: c`): the messages below name the
/// file or plugin, and a caller that prints only the top one would lose them.
pub fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let m = c.to_string();
        // thiserror's `transparent` and some wrappers repeat their cause in their own text.
        if !s.ends_with(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = c.source();
    }
    s
}

/// Puts the key, flag or file at fault in front of an error.
pub trait At<T> {
    fn at(self, at: impl FnOnce() -> String) -> Result<T>;
}

impl<T, E: std::error::Error + 'static> At<T> for std::result::Result<T, E> {
    fn at(self, at: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| HostingError::At {
            at: at(),
            message: chain(&e),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn errors_keep_their_causes_after_the_key() {
        let inner = std::io::Error::other("disk on fire");
        let r: std::result::Result<(), Outer> = Err(Outer(inner));
        let e = r.at(|| "data.train.plugin".into()).unwrap_err();
        assert_eq!(e.to_string(), "data.train.plugin: outer: disk on fire");
    }
}
