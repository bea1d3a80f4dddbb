//! What every `galley:plugin` version's bindings module has in common, written once: the
//! pre-instantiated and live forms of each world, one function per export that takes and
//! returns galley-core's types, the conversions of the types no version has changed (values,
//! metadata, metrics, errors), and the host imports (log, host). A version module runs
//! `bindgen!` for its own WIT folder, defines what its version changed (`messages_in`,
//! `messages_out`, `reward_group_in`) and then `crate::world_calls!()`: the generated paths
//! are the same in every version, so this text compiles against each. The adapters in
//! `plugin` see only these functions and core types, never a generated one.

/// The result of a call into a plugin: a trap (`Err`), or the plugin's answer, which may be
/// its own error, already in the host's terms.
pub(crate) type Call<R> = wasmtime::Result<Result<R, (galley_core::PluginErrorKind, String)>>;

/// The longest metric or stage name kept from a plugin, in bytes.
pub(crate) const MAX_NAME: usize = 128;
/// The longest message (an error, a stop reason) kept from a plugin, in bytes.
pub(crate) const MAX_MESSAGE: usize = 2048;

/// One log line from a plugin into the host's log, under the per-call line limit.
pub(crate) fn log_line(
    state: &mut crate::sandbox::PluginState,
    level: tracing::Level,
    message: &str,
) {
    state.log.used += 1;
    if state.log.used > state.limits.log_lines_per_call {
        if !state.log.warned {
            state.log.warned = true;
            tracing::warn!(plugin = %state.plugin, "log limit of {} lines per call reached; dropping the rest", state.limits.log_lines_per_call);
        }
        return;
    }
    // Escaped: a newline would forge a log line of the host's, ESC a terminal command.
    let message = galley_core::text::untrusted(message, state.limits.log_line_bytes);
    let plugin = &state.plugin;
    match level {
        tracing::Level::TRACE => {
            tracing::trace!(target: "galley::plugin", plugin = %plugin, "{message}")
        }
        tracing::Level::DEBUG => {
            tracing::debug!(target: "galley::plugin", plugin = %plugin, "{message}")
        }
        tracing::Level::INFO => {
            tracing::info!(target: "galley::plugin", plugin = %plugin, "{message}")
        }
        tracing::Level::WARN => {
            tracing::warn!(target: "galley::plugin", plugin = %plugin, "{message}")
        }
        tracing::Level::ERROR => {
            tracing::error!(target: "galley::plugin", plugin = %plugin, "{message}")
        }
    }
}

/// Expands, inside a version module that has run `bindgen!` into `reward`, `data_loader`,
/// `evaluator` and `recipe` and defines `messages_in`, `messages_out`, `reward_group_in`
/// its tool world (`ToolPre`, `ToolLive`, `tool_pre`, `instantiate_tool`, `init_tool`,
/// `tool_functions`, `call_tool`: `crate::no_tool_world!()` before 0.3) and its environment
/// world (`crate::episodes`' macros), to that version's calls (see the module comment).
#[macro_export]
#[doc(hidden)]
macro_rules! world_calls {
    () => {
        use galley_core as core;
        use reward::galley::plugin::log;
        use wasmtime::Store;
        use $crate::calls::Call;
        use $crate::sandbox::PluginState;

        /// Adds this version's host imports (log, host) to a linker.
        pub(crate) fn add_to_linker(
            linker: &mut wasmtime::component::Linker<PluginState>,
        ) -> wasmtime::Result<()> {
            use wasmtime::component::HasSelf;
            log::add_to_linker::<PluginState, HasSelf<PluginState>>(linker, |s| s)?;
            recipe::galley::plugin::host::add_to_linker::<PluginState, HasSelf<PluginState>>(
                linker,
                |s| s,
            )?;
            Ok(())
        }

        impl wit::Host for PluginState {}

        impl log::Host for PluginState {
            fn log(&mut self, level: log::Level, message: String) {
                let level = match level {
                    log::Level::Trace => tracing::Level::TRACE,
                    log::Level::Debug => tracing::Level::DEBUG,
                    log::Level::Info => tracing::Level::INFO,
                    log::Level::Warn => tracing::Level::WARN,
                    log::Level::Error => tracing::Level::ERROR,
                };
                $crate::calls::log_line(self, level, &message);
            }
        }

        impl recipe::galley::plugin::host::Host for PluginState {
            fn version(&mut self) -> String {
                env!("CARGO_PKG_VERSION").to_string()
            }
            fn stage_kinds(&mut self) -> Vec<String> {
                self.stage_kinds.clone()
            }
        }

        /// Pre-instantiated components of this version, one variant per world.
        pub(crate) enum Pre {
            Reward(reward::RewardPluginPre<PluginState>),
            DataLoader(data_loader::DataLoaderPluginPre<PluginState>),
            Evaluator(evaluator::EvaluatorPluginPre<PluginState>),
            Recipe(recipe::RecipePluginPre<PluginState>),
            Tool(ToolPre),
            Environment(EnvPre),
        }

        /// A live instance of one of this version's worlds.
        pub(crate) enum Live {
            Reward(reward::RewardPlugin),
            DataLoader(data_loader::DataLoaderPlugin),
            Evaluator(evaluator::EvaluatorPlugin),
            Recipe(recipe::RecipePlugin),
            Tool(ToolLive),
            Environment(EnvLive),
        }

        /// Checks that the component exports `kind`'s world as this version defines it.
        pub(crate) fn pre(
            kind: core::PluginKind,
            pre: wasmtime::component::InstancePre<PluginState>,
        ) -> wasmtime::Result<Pre> {
            use core::PluginKind as K;
            Ok(match kind {
                K::Reward => Pre::Reward(reward::RewardPluginPre::new(pre)?),
                K::DataLoader => Pre::DataLoader(data_loader::DataLoaderPluginPre::new(pre)?),
                K::Evaluator => Pre::Evaluator(evaluator::EvaluatorPluginPre::new(pre)?),
                K::Recipe => Pre::Recipe(recipe::RecipePluginPre::new(pre)?),
                K::Tool => Pre::Tool(tool_pre(pre)?),
                K::Environment => Pre::Environment(env_pre(pre)?),
            })
        }

        pub(crate) fn instantiate(
            pre: &Pre,
            store: &mut Store<PluginState>,
        ) -> wasmtime::Result<Live> {
            match pre {
                Pre::Reward(p) => p.instantiate(store).map(Live::Reward),
                Pre::DataLoader(p) => p.instantiate(store).map(Live::DataLoader),
                Pre::Evaluator(p) => p.instantiate(store).map(Live::Evaluator),
                Pre::Recipe(p) => p.instantiate(store).map(Live::Recipe),
                Pre::Tool(p) => instantiate_tool(p, store).map(Live::Tool),
                Pre::Environment(p) => instantiate_env(p, store).map(Live::Environment),
            }
        }

        fn answer<R>(r: wasmtime::Result<Result<R, wit::PluginError>>) -> Call<R> {
            r.map(|r| r.map_err(plugin_error))
        }

        /// The world's `init`, where it has one.
        pub(crate) fn init(
            live: &Live,
            store: &mut Store<PluginState>,
            config: &str,
            seed: u64,
        ) -> Call<()> {
            answer(match live {
                Live::Reward(b) => b.galley_plugin_reward().call_init(store, config),
                Live::DataLoader(b) => b.galley_plugin_data_loader().call_init(store, config, seed),
                Live::Evaluator(b) => b.galley_plugin_evaluator().call_init(store, config),
                Live::Recipe(_) => Ok(Ok(())),
                Live::Tool(b) => return init_tool(b, store, config),
                Live::Environment(b) => return init_env(b, store, config),
            })
        }

        pub(crate) fn score_rewards(
            live: &Live,
            store: &mut Store<PluginState>,
            groups: &[core::RewardGroup<'_>],
        ) -> Call<Vec<Option<f64>>> {
            let Live::Reward(b) = live else {
                unreachable!("kind checked at construction")
            };
            let input: Vec<_> = groups.iter().map(reward_group_in).collect();
            answer(b.galley_plugin_reward().call_score(store, &input))
        }

        pub(crate) fn next_page(
            live: &Live,
            store: &mut Store<PluginState>,
            max: u32,
        ) -> Call<Vec<core::Example>> {
            let Live::DataLoader(b) = live else {
                unreachable!("kind checked at construction")
            };
            answer(b.galley_plugin_data_loader().call_next_page(store, max)).map(|r| {
                r.map(|page| {
                    page.into_iter()
                        .map(|e| core::Example {
                            id: e.id,
                            messages: messages_out(e.messages),
                            metadata: metadata_out(e.metadata),
                        })
                        .collect()
                })
            })
        }

        pub(crate) fn evaluate(
            live: &Live,
            store: &mut Store<PluginState>,
            batch: &[core::Prediction],
        ) -> Call<Vec<Vec<core::Metric>>> {
            use evaluator::exports::galley::plugin::evaluator as e;
            let Live::Evaluator(b) = live else {
                unreachable!("kind checked at construction")
            };
            let input: Vec<e::Prediction> = batch
                .iter()
                .map(|p| e::Prediction {
                    id: p.id.clone(),
                    prediction: p.prediction.clone(),
                    references: p.references.clone(),
                    metadata: metadata_in(&p.metadata),
                })
                .collect();
            answer(b.galley_plugin_evaluator().call_score(store, &input))
                .map(|r| r.map(|out| out.into_iter().map(metrics_out).collect()))
        }

        pub(crate) fn aggregate(
            live: &Live,
            store: &mut Store<PluginState>,
            scores: &[Vec<core::Metric>],
        ) -> Call<Vec<core::Metric>> {
            let Live::Evaluator(b) = live else {
                unreachable!("kind checked at construction")
            };
            let input: Vec<Vec<wit::Metric>> = scores.iter().map(|m| metrics_in(m)).collect();
            answer(b.galley_plugin_evaluator().call_aggregate(store, &input))
                .map(|r| r.map(metrics_out))
        }

        /// The plan's stages as the plugin wrote them: (name, kind, settings as JSON text).
        pub(crate) fn plan(
            live: &Live,
            store: &mut Store<PluginState>,
            config: &str,
        ) -> Call<Vec<(String, String, String)>> {
            let Live::Recipe(b) = live else {
                unreachable!("kind checked at construction")
            };
            answer(b.galley_plugin_recipe().call_plan(store, config))
                .map(|r| r.map(|s| s.into_iter().map(|s| (s.name, s.kind, s.config)).collect()))
        }

        /// The recipe's decision, its stop reason as the plugin wrote it.
        pub(crate) fn on_metrics(
            live: &Live,
            store: &mut Store<PluginState>,
            stage: &str,
            step: u64,
            metrics: &[core::Metric],
        ) -> Call<core::Decision> {
            use recipe::exports::galley::plugin::recipe as r;
            let Live::Recipe(b) = live else {
                unreachable!("kind checked at construction")
            };
            let input = metrics_in(metrics);
            answer(
                b.galley_plugin_recipe()
                    .call_on_metrics(store, stage, step, &input),
            )
            .map(|r| {
                r.map(|d| match d {
                    r::Decision::Proceed => core::Decision::Proceed,
                    r::Decision::NextStage => core::Decision::NextStage,
                    r::Decision::Stop(why) => core::Decision::Stop(why),
                })
            })
        }

        pub(crate) fn value_in(v: &core::Value) -> wit::Value {
            match v {
                core::Value::Null => wit::Value::Null,
                core::Value::Bool(b) => wit::Value::Boolean(*b),
                core::Value::Int(i) => wit::Value::Integer(*i),
                core::Value::Float(f) => wit::Value::Number(*f),
                core::Value::Text(s) => wit::Value::Text(s.clone()),
                core::Value::Json(s) => wit::Value::Json(s.clone()),
            }
        }

        pub(crate) fn value_out(v: wit::Value) -> core::Value {
            match v {
                wit::Value::Null => core::Value::Null,
                wit::Value::Boolean(b) => core::Value::Bool(b),
                wit::Value::Integer(i) => core::Value::Int(i),
                wit::Value::Number(f) => core::Value::Float(f),
                wit::Value::Text(s) => core::Value::Text(s),
                wit::Value::Json(s) => core::Value::Json(s),
            }
        }

        pub(crate) fn metadata_in(m: &core::Metadata) -> Vec<wit::Entry> {
            m.iter()
                .map(|(k, v)| wit::Entry {
                    key: k.clone(),
                    value: value_in(v),
                })
                .collect()
        }

        pub(crate) fn metadata_out(m: Vec<wit::Entry>) -> core::Metadata {
            m.into_iter().map(|e| (e.key, value_out(e.value))).collect()
        }

        pub(crate) fn metrics_in(m: &[core::Metric]) -> Vec<wit::Metric> {
            m.iter()
                .map(|m| wit::Metric {
                    name: m.name.clone(),
                    value: m.value,
                })
                .collect()
        }

        pub(crate) fn metrics_out(m: Vec<wit::Metric>) -> Vec<core::Metric> {
            m.into_iter()
                .map(|m| core::Metric {
                    name: galley_core::text::untrusted(&m.name, $crate::calls::MAX_NAME),
                    value: m.value,
                })
                .collect()
        }

        /// A plugin's own error, in the host's terms, its message escaped and capped.
        pub(crate) fn plugin_error(e: wit::PluginError) -> (core::PluginErrorKind, String) {
            let shown = |m: &str| galley_core::text::untrusted(m, $crate::calls::MAX_MESSAGE);
            match e {
                wit::PluginError::InvalidConfig(m) => (
                    core::PluginErrorKind::InvalidConfig,
                    format!("invalid settings: {}", shown(&m)),
                ),
                wit::PluginError::InvalidInput(m) => (
                    core::PluginErrorKind::InvalidInput,
                    format!("invalid input: {}", shown(&m)),
                ),
                wit::PluginError::Failed(m) => (core::PluginErrorKind::Failed, shown(&m)),
            }
        }
    };
}

/// The tool world of versions before 0.3, which have none: a component claiming one is
/// refused when it is loaded, and no tool value of these versions can exist.
#[macro_export]
#[doc(hidden)]
macro_rules! no_tool_world {
    () => {
        pub(crate) enum ToolPre {}
        pub(crate) enum ToolLive {}

        fn tool_pre(
            _: wasmtime::component::InstancePre<$crate::sandbox::PluginState>,
        ) -> wasmtime::Result<ToolPre> {
            Err(wasmtime::Error::msg(
                "the tool world is new in galley:plugin@0.3.0",
            ))
        }

        fn instantiate_tool(
            p: &ToolPre,
            _: &mut wasmtime::Store<$crate::sandbox::PluginState>,
        ) -> wasmtime::Result<ToolLive> {
            match *p {}
        }

        fn init_tool(
            l: &ToolLive,
            _: &mut wasmtime::Store<$crate::sandbox::PluginState>,
            _: &str,
        ) -> $crate::calls::Call<()> {
            match *l {}
        }

        pub(crate) fn tool_functions(
            live: &Live,
            _: &mut wasmtime::Store<$crate::sandbox::PluginState>,
        ) -> $crate::calls::Call<Vec<(String, String, String)>> {
            let Live::Tool(l) = live else {
                unreachable!("kind checked at construction")
            };
            match *l {}
        }

        #[allow(clippy::type_complexity)]
        pub(crate) fn call_tool(
            live: &Live,
            _: &mut wasmtime::Store<$crate::sandbox::PluginState>,
            _: &[galley_core::FunctionCall<'_>],
        ) -> $crate::calls::Call<Vec<Result<String, (galley_core::PluginErrorKind, String)>>> {
            let Live::Tool(l) = live else {
                unreachable!("kind checked at construction")
            };
            match *l {}
        }
    };
}

/// What 0.2 changed, for 0.2 and every later version that keeps it (the generated types
/// differ per version, so each expands its own): a message carries its tool calls, a tool
/// turn's call id and name and an assistant turn's reasoning; a completion comes with its
/// reading as an assistant turn and whether the budget cut it.
#[macro_export]
#[doc(hidden)]
macro_rules! messages_since_0_2 {
    () => {
        /// The longest tool-call id, function name or call id kept from a data loader, in
        /// bytes: they are identifiers, shown in logs and rendered into prompts.
        const MAX_IDENT: usize = 256;

        fn tool_calls_in(calls: &[galley_core::ToolCall]) -> Vec<wit::ToolCall> {
            calls
                .iter()
                .map(|c| wit::ToolCall {
                    id: c.id.clone(),
                    name: c.name.clone(),
                    arguments: c.arguments.clone(),
                })
                .collect()
        }

        fn message_in(m: &galley_core::Message) -> wit::Message {
            wit::Message {
                role: m.role.clone(),
                content: m.content.clone(),
                tool_calls: tool_calls_in(&m.tool_calls),
                tool_call_id: m.tool_call_id.clone(),
                name: m.name.clone(),
                reasoning: m.reasoning_content.clone(),
            }
        }

        pub(crate) fn messages_in(m: &[galley_core::Message]) -> Vec<wit::Message> {
            m.iter().map(message_in).collect()
        }

        /// Messages from a data loader. Identifiers are capped; a call's arguments stay as
        /// written (the trainer's chat template and the data checks read them as JSON later,
        /// and refuse them there with the example's id).
        pub(crate) fn messages_out(m: Vec<wit::Message>) -> Vec<galley_core::Message> {
            let ident = |s: String| galley_core::text::untrusted(&s, MAX_IDENT);
            m.into_iter()
                .map(|m| galley_core::Message {
                    role: m.role,
                    content: m.content,
                    tool_calls: m
                        .tool_calls
                        .into_iter()
                        .map(|c| galley_core::ToolCall {
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

        /// A group: each completion's text and its reading as an assistant turn (the text
        /// itself as content where the caller had no reading).
        fn reward_group_in(
            g: &galley_core::RewardGroup<'_>,
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
    };
}

/// The tool world as 0.3 defined it, for 0.3 and every later version that keeps it (the
/// generated types differ per version, so each expands its own).
#[macro_export]
#[doc(hidden)]
macro_rules! tool_world_since_0_3 {
    () => {
        pub(crate) type ToolPre = tool::ToolPluginPre<$crate::sandbox::PluginState>;
        pub(crate) type ToolLive = tool::ToolPlugin;

        fn tool_pre(
            pre: wasmtime::component::InstancePre<$crate::sandbox::PluginState>,
        ) -> wasmtime::Result<ToolPre> {
            tool::ToolPluginPre::new(pre)
        }

        fn instantiate_tool(
            p: &ToolPre,
            store: &mut wasmtime::Store<$crate::sandbox::PluginState>,
        ) -> wasmtime::Result<ToolLive> {
            p.instantiate(store)
        }

        fn init_tool(
            l: &ToolLive,
            store: &mut wasmtime::Store<$crate::sandbox::PluginState>,
            config: &str,
        ) -> $crate::calls::Call<()> {
            answer(l.galley_plugin_tool().call_init(store, config))
        }

        /// The functions as the plugin wrote them: (name, description, parameters as JSON text).
        pub(crate) fn tool_functions(
            live: &Live,
            store: &mut wasmtime::Store<$crate::sandbox::PluginState>,
        ) -> $crate::calls::Call<Vec<(String, String, String)>> {
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
            store: &mut wasmtime::Store<$crate::sandbox::PluginState>,
            calls: &[galley_core::FunctionCall<'_>],
        ) -> $crate::calls::Call<Vec<Result<String, (galley_core::PluginErrorKind, String)>>> {
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
    };
}
