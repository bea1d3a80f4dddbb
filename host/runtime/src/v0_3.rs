//! Host bindings of the frozen `galley:plugin@0.3.0` WIT (wit/v0.3.0), beside `v0_1` and
//! `v0_2`. What 0.3 added is here: the tool world, functions a model calls while it answers
//! (a GRPO rollout's tool turns). Messages and completions are 0.2's
//! (`crate::messages_since_0_2!`); the rest is `crate::world_calls!`. Nothing outside this
//! module sees the generated types.

/// The WIT text this module was generated from, frozen with the release.
pub const WIT_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../wit/v0.3.0");

pub const VERSION: semver::Version = semver::Version::new(0, 3, 0);

pub mod reward {
    wasmtime::component::bindgen!({
        path: "../../wit/v0.3.0",
        world: "galley:plugin/reward-plugin",
    });
}

pub mod data_loader {
    wasmtime::component::bindgen!({
        path: "../../wit/v0.3.0",
        world: "galley:plugin/data-loader-plugin",
        with: {
            "galley:plugin/types": super::reward::galley::plugin::types,
            "galley:plugin/log": super::reward::galley::plugin::log,
        },
    });
}

pub mod evaluator {
    wasmtime::component::bindgen!({
        path: "../../wit/v0.3.0",
        world: "galley:plugin/evaluator-plugin",
        with: {
            "galley:plugin/types": super::reward::galley::plugin::types,
            "galley:plugin/log": super::reward::galley::plugin::log,
        },
    });
}

pub mod recipe {
    wasmtime::component::bindgen!({
        path: "../../wit/v0.3.0",
        world: "galley:plugin/recipe-plugin",
        with: {
            "galley:plugin/types": super::reward::galley::plugin::types,
            "galley:plugin/log": super::reward::galley::plugin::log,
        },
    });
}

pub mod tool {
    wasmtime::component::bindgen!({
        path: "../../wit/v0.3.0",
        world: "galley:plugin/tool-plugin",
        with: {
            "galley:plugin/types": super::reward::galley::plugin::types,
            "galley:plugin/log": super::reward::galley::plugin::log,
        },
    });
}

pub use reward::galley::plugin::types as wit;

crate::messages_since_0_2!();

// What 0.3 added: the tool world.
crate::tool_world_since_0_3!();
crate::no_environment_world!();

crate::world_calls!();
