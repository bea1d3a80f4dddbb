//! The training engine's errors: each names the file, line, key or example at fault.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("{file}: {msg}")]
    Config { file: String, msg: String },
    #[error("{at}: {msg}")]
    Data { at: String, msg: String },
    #[error("{path}: {msg}")]
    File { path: PathBuf, msg: String },
    #[error("peft.target_modules: `{module}` is not a module of this model (it has {known})")]
    UnknownTarget { module: String, known: String },
    #[error("data plugin {plugin}: {msg}")]
    Plugin { plugin: String, msg: String },
    /// A reward function failed and the run's policy is to stop.
    #[error("{0}")]
    Reward(String),
    #[error(transparent)]
    Model(#[from] galley_model::ModelError),
    #[error("tensor: {0}")]
    Candle(#[from] candle_core::Error),
    #[error("training stopped: {0}")]
    Stopped(String),
}

pub type Result<T, E = TrainError> = std::result::Result<T, E>;

pub(crate) fn file_err(path: &std::path::Path, e: impl std::fmt::Display) -> TrainError {
    TrainError::File {
        path: path.into(),
        msg: e.to_string(),
    }
}
