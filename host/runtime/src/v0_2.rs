//! Host bindings of the frozen `galley:plugin@0.2.0` WIT (wit/v0.2.0), beside `v0_1`. What
//! 0.2 changed is here: a message carries its tool calls, a tool turn's call id and name and
//! an assistant turn's reasoning; a completion comes with its reading as an assistant turn
//! and whether the budget cut it. The rest is `crate::world_calls!`. Nothing outside this
//! module sees the generated types.

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

// ---- what 0.2 changed ----

/// The longest tool-call id, function name or call id kept from a data loader, in bytes: they
/// are identifiers, shown in logs and rendered into prompts.
const MAX_IDENT: usize = 256;

fn tool_calls_in(calls: &[core::ToolCall]) -> Vec<wit::ToolCall> {
    calls
        .iter()
        .map(|c| wit::ToolCall {
            id: c.id.clone(),
            name: c.name.clone(),
            arguments: c.arguments.clone(),
        })
        .collect()
}

fn message_in(m: &core::Message) -> wit::Message {
    wit::Message {
        role: m.role.clone(),
        content: m.content.clone(),
        tool_calls: tool_calls_in(&m.tool_calls),
        tool_call_id: m.tool_call_id.clone(),
        name: m.name.clone(),
        reasoning: m.reasoning_content.clone(),
    }
}

pub(crate) fn messages_in(m: &[core::Message]) -> Vec<wit::Message> {
    m.iter().map(message_in).collect()
}

/// Messages from a data loader. Identifiers are capped; a call's arguments stay as written
/// (the trainer's chat template and the data checks read them as JSON later, and refuse
/// them there with the example's id).
pub(crate) fn messages_out(m: Vec<wit::Message>) -> Vec<core::Message> {
    let ident = |s: String| galley_core::text::untrusted(&s, MAX_IDENT);
    m.into_iter()
        .map(|m| core::Message {
            role: m.role,
            content: m.content,
            tool_calls: m
                .tool_calls
                .into_iter()
                .map(|c| core::ToolCall {
                    id: c.id.map(ident),
                    name: ident(c.name),
                    arguments: c.arguments,
                })
                .collect(),
            tool_call_id: m.tool_call_id.map(ident),
            name: m.name.map(ident),
            reasoning_content: m.reasoning,
        })
        .collect()
}

/// A group for a 0.2 plugin: each completion's text and its reading as an assistant turn
/// (the text itself as content where the caller had no reading).
fn reward_group_in(
    g: &core::RewardGroup<'_>,
) -> reward::exports::galley::plugin::reward::RewardGroup {
    use reward::exports::galley::plugin::reward as r;
    r::RewardGroup {
        prompt: messages_in(g.prompt),
        metadata: metadata_in(g.metadata),
        completions: g
            .completions
            .iter()
            .map(|c| r::Completion {
                text: c.text.to_string(),
                message: match c.message {
                    Some(m) => message_in(m),
                    None => wit::Message {
                        role: "assistant".into(),
                        content: c.text.to_string(),
                        tool_calls: Vec::new(),
                        tool_call_id: None,
                        name: None,
                        reasoning: None,
                    },
                },
                truncated: c.truncated,
            })
            .collect(),
    }
}

crate::world_calls!();
