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

// ---- what 0.3 added: the tool world ----

pub(crate) type ToolPre = tool::ToolPluginPre<PluginState>;
pub(crate) type ToolLive = tool::ToolPlugin;

fn tool_pre(pre: wasmtime::component::InstancePre<PluginState>) -> wasmtime::Result<ToolPre> {
    tool::ToolPluginPre::new(pre)
}

fn instantiate_tool(p: &ToolPre, store: &mut Store<PluginState>) -> wasmtime::Result<ToolLive> {
    p.instantiate(store)
}

fn init_tool(l: &ToolLive, store: &mut Store<PluginState>, config: &str) -> Call<()> {
    answer(l.galley_plugin_tool().call_init(store, config))
}

/// The functions as the plugin wrote them: (name, description, parameters as JSON text).
pub(crate) fn tool_functions(
    live: &Live,
    store: &mut Store<PluginState>,
) -> Call<Vec<(String, String, String)>> {
    let Live::Tool(b) = live else {
        unreachable!("kind checked at construction")
    };
    answer(b.galley_plugin_tool().call_functions(store)).map(|r| {
        r.map(|f| {
            f.into_iter()
                .map(|f| (f.name, f.description, f.parameters))
                .collect()
        })
    })
}

/// Each call's result as the plugin wrote it (its errors in the host's terms).
pub(crate) fn call_tool(
    live: &Live,
    store: &mut Store<PluginState>,
    calls: &[core::FunctionCall<'_>],
) -> Call<Vec<Result<String, (core::PluginErrorKind, String)>>> {
    use tool::exports::galley::plugin::tool as t;
    let Live::Tool(b) = live else {
        unreachable!("kind checked at construction")
    };
    let input: Vec<t::FunctionCall> = calls
        .iter()
        .map(|c| t::FunctionCall {
            name: c.name.to_string(),
            arguments: c.arguments.to_string(),
        })
        .collect();
    b.galley_plugin_tool()
        .call_call(store, &input)
        .map(|out| Ok(out.into_iter().map(|r| r.map_err(plugin_error)).collect()))
}

crate::world_calls!();
