//! Host bindings of the frozen `galley:plugin@0.1.0` WIT (wit/v0.1.0). One module per
//! released version: a later host adds a `v0_2` module beside this one and keeps serving 0.1
//! plugins through it. Nothing outside this module sees the generated types.

use crate::sandbox::PluginState;
use galley_core as core;

/// The WIT text this module was generated from, frozen with the release.
pub const WIT_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../wit/v0.1.0");

pub const VERSION: semver::Version = semver::Version::new(0, 1, 0);

pub mod reward {
    wasmtime::component::bindgen!({
        path: "../../wit/v0.1.0",
        world: "galley:plugin/reward-plugin",
    });
}

pub mod data_loader {
    wasmtime::component::bindgen!({
        path: "../../wit/v0.1.0",
        world: "galley:plugin/data-loader-plugin",
        with: {
            "galley:plugin/types": super::reward::galley::plugin::types,
            "galley:plugin/log": super::reward::galley::plugin::log,
        },
    });
}

pub mod evaluator {
    wasmtime::component::bindgen!({
        path: "../../wit/v0.1.0",
        world: "galley:plugin/evaluator-plugin",
        with: {
            "galley:plugin/types": super::reward::galley::plugin::types,
            "galley:plugin/log": super::reward::galley::plugin::log,
        },
    });
}

pub mod recipe {
    wasmtime::component::bindgen!({
        path: "../../wit/v0.1.0",
        world: "galley:plugin/recipe-plugin",
        with: {
            "galley:plugin/types": super::reward::galley::plugin::types,
            "galley:plugin/log": super::reward::galley::plugin::log,
        },
    });
}

use reward::galley::plugin::log;
pub use reward::galley::plugin::types as wit;

/// Adds the 0.1 host imports (log, host) to a linker.
pub(crate) fn add_to_linker(
    linker: &mut wasmtime::component::Linker<PluginState>,
) -> wasmtime::Result<()> {
    use wasmtime::component::HasSelf;
    log::add_to_linker::<PluginState, HasSelf<PluginState>>(linker, |s| s)?;
    recipe::galley::plugin::host::add_to_linker::<PluginState, HasSelf<PluginState>>(
        linker,
        |s| s,
    )?;
    Ok(())
}

impl wit::Host for PluginState {}

impl log::Host for PluginState {
    fn log(&mut self, level: log::Level, message: String) {
        self.log.used += 1;
        if self.log.used > self.limits.log_lines_per_call {
            if !self.log.warned {
                self.log.warned = true;
                tracing::warn!(plugin = %self.plugin, "log limit of {} lines per call reached; dropping the rest", self.limits.log_lines_per_call);
            }
            return;
        }
        // Escaped: a newline would forge a log line of the host's, ESC a terminal command.
        let message = galley_core::text::untrusted(&message, self.limits.log_line_bytes);
        let plugin = &self.plugin;
        match level {
            log::Level::Trace => {
                tracing::trace!(target: "galley::plugin", plugin = %plugin, "{message}")
            }
            log::Level::Debug => {
                tracing::debug!(target: "galley::plugin", plugin = %plugin, "{message}")
            }
            log::Level::Info => {
                tracing::info!(target: "galley::plugin", plugin = %plugin, "{message}")
            }
            log::Level::Warn => {
                tracing::warn!(target: "galley::plugin", plugin = %plugin, "{message}")
            }
            log::Level::Error => {
                tracing::error!(target: "galley::plugin", plugin = %plugin, "{message}")
            }
        }
    }
}

impl recipe::galley::plugin::host::Host for PluginState {
    fn version(&mut self) -> String {
        env!("CARGO_PKG_VERSION").to_string()
    }
    fn stage_kinds(&mut self) -> Vec<String> {
        self.stage_kinds.clone()
    }
}

// ---- conversions between galley-core and the 0.1 WIT types ----

pub(crate) fn value_in(v: &core::Value) -> wit::Value {
    match v {
        core::Value::Null => wit::Value::Null,
        core::Value::Bool(b) => wit::Value::Boolean(*b),
        core::Value::Int(i) => wit::Value::Integer(*i),
        core::Value::Float(f) => wit::Value::Number(*f),
        core::Value::Text(s) => wit::Value::Text(s.clone()),
        core::Value::Json(s) => wit::Value::Json(s.clone()),
    }
}

pub(crate) fn value_out(v: wit::Value) -> core::Value {
    match v {
        wit::Value::Null => core::Value::Null,
        wit::Value::Boolean(b) => core::Value::Bool(b),
        wit::Value::Integer(i) => core::Value::Int(i),
        wit::Value::Number(f) => core::Value::Float(f),
        wit::Value::Text(s) => core::Value::Text(s),
        wit::Value::Json(s) => core::Value::Json(s),
    }
}

pub(crate) fn metadata_in(m: &core::Metadata) -> Vec<wit::Entry> {
    m.iter()
        .map(|(k, v)| wit::Entry {
            key: k.clone(),
            value: value_in(v),
        })
        .collect()
}

pub(crate) fn metadata_out(m: Vec<wit::Entry>) -> core::Metadata {
    m.into_iter().map(|e| (e.key, value_out(e.value))).collect()
}

/// Messages for a plugin. WIT v0.1's message is a role and a text: a turn's tool calls do not
/// cross (a later WIT version would carry them).
pub(crate) fn messages_in(m: &[core::Message]) -> Vec<wit::Message> {
    m.iter()
        .map(|m| wit::Message {
            role: m.role.clone(),
            content: m.content.clone(),
        })
        .collect()
}

pub(crate) fn messages_out(m: Vec<wit::Message>) -> Vec<core::Message> {
    m.into_iter()
        .map(|m| core::Message::new(m.role, m.content))
        .collect()
}

pub(crate) fn metrics_in(m: &[core::Metric]) -> Vec<wit::Metric> {
    m.iter()
        .map(|m| wit::Metric {
            name: m.name.clone(),
            value: m.value,
        })
        .collect()
}

pub(crate) fn metrics_out(m: Vec<wit::Metric>) -> Vec<core::Metric> {
    m.into_iter()
        .map(|m| core::Metric {
            name: galley_core::text::untrusted(&m.name, MAX_NAME),
            value: m.value,
        })
        .collect()
}

/// The longest metric or stage name kept from a plugin, in bytes.
pub(crate) const MAX_NAME: usize = 128;
/// The longest message (an error, a stop reason) kept from a plugin, in bytes.
pub(crate) const MAX_MESSAGE: usize = 2048;

/// A plugin's own error, in the host's terms, its message escaped and capped.
pub(crate) fn plugin_error(e: wit::PluginError) -> (core::PluginErrorKind, String) {
    let shown = |m: &str| galley_core::text::untrusted(m, MAX_MESSAGE);
    match e {
        wit::PluginError::InvalidConfig(m) => (
            core::PluginErrorKind::InvalidConfig,
            format!("invalid settings: {}", shown(&m)),
        ),
        wit::PluginError::InvalidInput(m) => (
            core::PluginErrorKind::InvalidInput,
            format!("invalid input: {}", shown(&m)),
        ),
        wit::PluginError::Failed(m) => (core::PluginErrorKind::Failed, shown(&m)),
    }
}
