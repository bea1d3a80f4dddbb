//! The error of building and scaffolding plugins. Building shells out to compilers and
//! package managers whose failures are text, so most errors are a message plus the chain of
//! what galley was doing (`context`), each link naming the file, tool or plugin at fault;
//! `source()` walks the chain so a caller's `{:#}` prints it whole.

use std::fmt::Display;

#[derive(Debug, thiserror::Error)]
pub enum PluginDevError {
    /// What went wrong, already naming the file, tool or plugin.
    #[error("{0}")]
    Msg(String),
    /// What galley was doing when `source` failed.
    #[error("{context}")]
    Context {
        context: String,
        #[source]
        source: Box<PluginDevError>,
    },
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Runtime(#[from] galley_runtime::RuntimeError),
    /// wit-component and wit-parser report through anyhow; kept as text with its chain.
    #[error("{0}")]
    Wit(String),
}

impl From<anyhow::Error> for PluginDevError {
    fn from(e: anyhow::Error) -> Self {
        PluginDevError::Wit(format!("{e:#}"))
    }
}

pub type Result<T, E = PluginDevError> = std::result::Result<T, E>;

/// `anyhow::Context`'s two methods, producing a typed error.
pub(crate) trait Context<T> {
    fn context(self, context: impl Display) -> Result<T>;
    fn with_context<D: Display>(self, f: impl FnOnce() -> D) -> Result<T>;
}

impl<T, E: Into<PluginDevError>> Context<T> for std::result::Result<T, E> {
    fn context(self, context: impl Display) -> Result<T> {
        self.map_err(|e| PluginDevError::Context {
            context: context.to_string(),
            source: Box::new(e.into()),
        })
    }
    fn with_context<D: Display>(self, f: impl FnOnce() -> D) -> Result<T> {
        self.map_err(|e| PluginDevError::Context {
            context: f().to_string(),
            source: Box::new(e.into()),
        })
    }
}

impl<T> Context<T> for Option<T> {
    fn context(self, context: impl Display) -> Result<T> {
        self.ok_or_else(|| PluginDevError::Msg(context.to_string()))
    }
    fn with_context<D: Display>(self, f: impl FnOnce() -> D) -> Result<T> {
        self.ok_or_else(|| PluginDevError::Msg(f().to_string()))
    }
}

/// Returns a `PluginDevError::Msg` built like `format!`.
macro_rules! bail {
    ($($arg:tt)*) => {
        return Err($crate::error::PluginDevError::Msg(format!($($arg)*)))
    };
}
pub(crate) use bail;
