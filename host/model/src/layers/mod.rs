//! The transformer's layers, one per file, each a plain struct with `load` (weights by their
//! HF names) and `forward`.

pub mod attention;
pub mod block;
pub mod linear;
pub mod mlp;
pub mod rms_norm;
pub mod rotary;

pub use attention::{Attention, Mask};
pub use block::DecoderLayer;
pub use linear::Linear;
pub use mlp::Mlp;
pub use rms_norm::RmsNorm;
pub use rotary::Rotary;
