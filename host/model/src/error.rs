//! Model errors. Each names the file (and key or tensor) at fault in one line.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("{path}: {reason}")]
    BadFile { path: PathBuf, reason: String },
    #[error("{path}: unknown architecture `{arch}` (galley runs {known})")]
    UnknownArchitecture {
        path: PathBuf,
        arch: String,
        known: String,
    },
    #[error("{path}: tensor `{tensor}` has shape {found:?}, but config.json implies {expected:?}")]
    ShapeMismatch {
        path: PathBuf,
        tensor: String,
        found: Vec<usize>,
        expected: Vec<usize>,
    },
    #[error("{path}: no tensor `{tensor}`")]
    MissingTensor { path: PathBuf, tensor: String },
    #[error(
        "{path}: no tokenizer (expected tokenizer.json next to the weights, or tokenizer metadata in the GGUF)"
    )]
    MissingTokenizer { path: PathBuf },
    #[error("{origin}: chat template: {reason}")]
    Template { origin: String, reason: String },
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("{0}")]
    Download(String),
    #[error("{0}")]
    Invalid(String),
    /// candle's message, without the backtrace it carries when RUST_BACKTRACE is set.
    #[error("{}", first_line(.0))]
    Candle(#[from] candle_core::Error),
}

pub fn first_line(e: &impl std::fmt::Display) -> String {
    e.to_string().lines().next().unwrap_or_default().to_string()
}

pub type Result<T> = std::result::Result<T, ModelError>;

pub(crate) fn bad(path: &std::path::Path, reason: impl std::fmt::Display) -> ModelError {
    ModelError::BadFile {
        path: path.to_path_buf(),
        reason: first_line(&reason),
    }
}
