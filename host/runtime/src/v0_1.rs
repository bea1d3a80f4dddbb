//! Host bindings of the frozen `galley:plugin@0.1.0` WIT (wit/v0.1.0). One module per
//! released version (`v0_2`, `v0_3` beside this one): the host keeps serving 0.1 plugins through it.
//! What 0.1 has that later versions changed is here (a message is a role and a text, a
//! completion only its text); the rest is `crate::world_calls!`. Nothing outside this module
//! sees the generated types.

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

pub use reward::galley::plugin::types as wit;

// ---- conversions between galley-core and the 0.1 WIT types ----

/// Messages for a 0.1 plugin: a role and a text. A turn's tool calls and reasoning do not
/// cross (0.2 carries them).
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

/// A group for a 0.1 plugin: each completion's text as it came (reasoning and call markup
/// included), since 0.1 has nowhere to put its reading.
fn reward_group_in(
    g: &core::RewardGroup<'_>,
) -> reward::exports::galley::plugin::reward::RewardGroup {
    reward::exports::galley::plugin::reward::RewardGroup {
        prompt: messages_in(g.prompt),
        metadata: metadata_in(g.metadata),
        completions: g.completions.iter().map(|c| c.text.to_string()).collect(),
    }
}

crate::no_tool_world!();
crate::no_environment_world!();
crate::world_calls!();
