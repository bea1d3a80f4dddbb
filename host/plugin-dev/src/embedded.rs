//! Files the binary carries so it can build plugins anywhere: the frozen WIT the guest SDKs
//! are written against (plugins are built against the newest `galley:plugin` version; the
//! host still runs those built against earlier ones), and the guest SDKs.

use std::path::Path;

/// `galley:plugin@0.2.0`, file by file: what `galley plugin build` builds against.
pub const WIT_0_2_0: &[(&str, &str)] = &[
    ("types.wit", include_str!("../../../wit/v0.2.0/types.wit")),
    ("reward.wit", include_str!("../../../wit/v0.2.0/reward.wit")),
    (
        "data-loader.wit",
        include_str!("../../../wit/v0.2.0/data-loader.wit"),
    ),
    (
        "evaluator.wit",
        include_str!("../../../wit/v0.2.0/evaluator.wit"),
    ),
    ("recipe.wit", include_str!("../../../wit/v0.2.0/recipe.wit")),
];

/// `galley:plugin@0.3.0`, file by file: what the Rust SDK's tool world is built against (the
/// tool world is new in 0.3; the other kinds build against 0.2.0).
pub const WIT_0_3_0: &[(&str, &str)] = &[
    ("types.wit", include_str!("../../../wit/v0.3.0/types.wit")),
    ("reward.wit", include_str!("../../../wit/v0.3.0/reward.wit")),
    (
        "data-loader.wit",
        include_str!("../../../wit/v0.3.0/data-loader.wit"),
    ),
    (
        "evaluator.wit",
        include_str!("../../../wit/v0.3.0/evaluator.wit"),
    ),
    ("recipe.wit", include_str!("../../../wit/v0.3.0/recipe.wit")),
    ("tool.wit", include_str!("../../../wit/v0.3.0/tool.wit")),
];

/// `galley:plugin@0.4.0`, file by file: what the Rust SDK's environment world is built
/// against (new in 0.4).
pub const WIT_0_4_0: &[(&str, &str)] = &[
    ("types.wit", include_str!("../../../wit/v0.4.0/types.wit")),
    ("reward.wit", include_str!("../../../wit/v0.4.0/reward.wit")),
    (
        "data-loader.wit",
        include_str!("../../../wit/v0.4.0/data-loader.wit"),
    ),
    (
        "evaluator.wit",
        include_str!("../../../wit/v0.4.0/evaluator.wit"),
    ),
    ("recipe.wit", include_str!("../../../wit/v0.4.0/recipe.wit")),
    ("tool.wit", include_str!("../../../wit/v0.4.0/tool.wit")),
    (
        "environment.wit",
        include_str!("../../../wit/v0.4.0/environment.wit"),
    ),
];

/// The Python SDK package `galley_sdk`.
pub const PYTHON_SDK: &[(&str, &str)] = &[
    (
        "galley_sdk/__init__.py",
        include_str!("../../../sdk/python/galley_sdk/__init__.py"),
    ),
    (
        "galley_sdk/_core.py",
        include_str!("../../../sdk/python/galley_sdk/_core.py"),
    ),
    (
        "galley_sdk/_kinds.py",
        include_str!("../../../sdk/python/galley_sdk/_kinds.py"),
    ),
    (
        "galley_sdk/_exports.py",
        include_str!("../../../sdk/python/galley_sdk/_exports.py"),
    ),
];

/// The Rust guest SDK crate, laid out as in the repository (its bindings find the WIT at
/// `../../wit/v0.2.0`, for tools `../../wit/v0.3.0`, for environments `../../wit/v0.4.0`), so scaffolded plugins can depend on it by path anywhere.
pub const RUST_SDK: &[(&str, &str)] = &[
    (
        "sdk/rust/Cargo.toml",
        include_str!("../../../sdk/rust/Cargo.toml"),
    ),
    (
        "sdk/rust/src/lib.rs",
        include_str!("../../../sdk/rust/src/lib.rs"),
    ),
    (
        "sdk/rust/src/config.rs",
        include_str!("../../../sdk/rust/src/config.rs"),
    ),
    (
        "sdk/rust/src/types.rs",
        include_str!("../../../sdk/rust/src/types.rs"),
    ),
    (
        "sdk/rust/src/log.rs",
        include_str!("../../../sdk/rust/src/log.rs"),
    ),
    (
        "sdk/rust/src/reward.rs",
        include_str!("../../../sdk/rust/src/reward.rs"),
    ),
    (
        "sdk/rust/src/data_loader.rs",
        include_str!("../../../sdk/rust/src/data_loader.rs"),
    ),
    (
        "sdk/rust/src/evaluator.rs",
        include_str!("../../../sdk/rust/src/evaluator.rs"),
    ),
    (
        "sdk/rust/src/recipe.rs",
        include_str!("../../../sdk/rust/src/recipe.rs"),
    ),
    (
        "sdk/rust/src/tool.rs",
        include_str!("../../../sdk/rust/src/tool.rs"),
    ),
    (
        "sdk/rust/src/function.rs",
        include_str!("../../../sdk/rust/src/function.rs"),
    ),
    (
        "sdk/rust/src/environment.rs",
        include_str!("../../../sdk/rust/src/environment.rs"),
    ),
];

/// The C SDK: a header and its implementation over the generated bindings.
pub const C_SDK: &[(&str, &str)] = &[
    ("galley.h", include_str!("../../../sdk/c/galley.h")),
    ("galley.c", include_str!("../../../sdk/c/galley.c")),
];

/// The JavaScript SDK prelude.
pub const JS_SDK: &str = include_str!("../../../sdk/js/galley_sdk.js");

/// Writes `files` under `dir`.
pub fn write_all(dir: &Path, files: &[(&str, &str)]) -> std::io::Result<()> {
    for (name, text) in files {
        let path = dir.join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(path, text)?;
    }
    Ok(())
}
