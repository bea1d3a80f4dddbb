//! Host bindings of the frozen `galley:plugin@0.4.0` WIT (wit/v0.4.0), beside `v0_1` to
//! `v0_3`. What 0.4 added: the environment world, functions with state, one instance per
//! GRPO rollout (`crate::episodes`). Messages are 0.2's (`crate::messages_since_0_2!`), the
//! tool world 0.3's (`crate::tool_world_since_0_3!`), the rest `crate::world_calls!`.
//! Nothing outside this module sees the generated types.

/// The WIT text this module was generated from, frozen with the release.
pub const WIT_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../wit/v0.4.0");

pub const VERSION: semver::Version = semver::Version::new(0, 4, 0);

pub mod reward {
    wasmtime::component::bindgen!({
        path: "../../wit/v0.4.0",
        world: "galley:plugin/reward-plugin",
    });
}

pub mod data_loader {
    wasmtime::component::bindgen!({
        path: "../../wit/v0.4.0",
        world: "galley:plugin/data-loader-plugin",
        with: {
            "galley:plugin/types": super::reward::galley::plugin::types,
            "galley:plugin/log": super::reward::galley::plugin::log,
        },
    });
}

pub mod evaluator {
    wasmtime::component::bindgen!({
        path: "../../wit/v0.4.0",
        world: "galley:plugin/evaluator-plugin",
        with: {
            "galley:plugin/types": super::reward::galley::plugin::types,
            "galley:plugin/log": super::reward::galley::plugin::log,
        },
    });
}

pub mod recipe {
    wasmtime::component::bindgen!({
        path: "../../wit/v0.4.0",
        world: "galley:plugin/recipe-plugin",
        with: {
            "galley:plugin/types": super::reward::galley::plugin::types,
            "galley:plugin/log": super::reward::galley::plugin::log,
        },
    });
}

pub mod tool {
    wasmtime::component::bindgen!({
        path: "../../wit/v0.4.0",
        world: "galley:plugin/tool-plugin",
        with: {
            "galley:plugin/types": super::reward::galley::plugin::types,
            "galley:plugin/log": super::reward::galley::plugin::log,
        },
    });
}

pub mod environment {
    wasmtime::component::bindgen!({
        path: "../../wit/v0.4.0",
        world: "galley:plugin/environment-plugin",
        with: {
            "galley:plugin/types": super::reward::galley::plugin::types,
            "galley:plugin/log": super::reward::galley::plugin::log,
        },
    });
}

pub use reward::galley::plugin::types as wit;

crate::messages_since_0_2!();

crate::tool_world_since_0_3!();
// What 0.4 added.
crate::environment_world_since_0_4!();

crate::world_calls!();
