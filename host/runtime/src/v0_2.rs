//! Host bindings of the frozen `galley:plugin@0.2.0` WIT (wit/v0.2.0), beside `v0_1`. What
//! 0.2 changed is here: a message carries its tool calls, a tool turn's call id and name and
//! an assistant turn's reasoning; a completion comes with its reading as an assistant turn
//! and whether the budget cut it (`crate::messages_since_0_2!`, which 0.3 keeps). The rest
//! is `crate::world_calls!`. Nothing outside this module sees the generated types.

/// The WIT text this module was generated from, frozen with the release.
pub const WIT_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../wit/v0.2.0");

pub const VERSION: semver::Version = semver::Version::new(0, 2, 0);

pub mod reward {
    wasmtime::component::bindgen!({
        path: "../../wit/v0.2.0",
        world: "galley:plugin/reward-plugin",
    });
}

pub mod data_loader {
    wasmtime::component::bindgen!({
        path: "../../wit/v0.2.0",
        world: "galley:plugin/data-loader-plugin",
        with: {
            "galley:plugin/types": super::reward::galley::plugin::types,
            "galley:plugin/log": super::reward::galley::plugin::log,
        },
    });
}

pub mod evaluator {
    wasmtime::component::bindgen!({
        path: "../../wit/v0.2.0",
        world: "galley:plugin/evaluator-plugin",
        with: {
            "galley:plugin/types": super::reward::galley::plugin::types,
            "galley:plugin/log": super::reward::galley::plugin::log,
        },
    });
}

pub mod recipe {
    wasmtime::component::bindgen!({
        path: "../../wit/v0.2.0",
        world: "galley:plugin/recipe-plugin",
        with: {
            "galley:plugin/types": super::reward::galley::plugin::types,
            "galley:plugin/log": super::reward::galley::plugin::log,
        },
    });
}

pub use reward::galley::plugin::types as wit;

// ---- what 0.2 changed (kept by later versions) ----

crate::messages_since_0_2!();
crate::no_tool_world!();
crate::no_environment_world!();
crate::world_calls!();
