//! Environments (`galley:plugin@0.4`'s environment world, TRL's `environment_factory`): the
//! adapters behind galley-core's `Environment` and `Episode`, and the world's calls as each
//! version's bindings expand them. Every episode is its own instance, in its own store, made
//! fresh from the pre-instantiated component: what one rollout did to the environment's
//! state cannot reach another, by construction rather than by the plugin's `reset` — and an
//! episode whose instance trapped is over (a new instance would have forgotten its state),
//! where the other kinds quietly start a fresh one.

use crate::plugin::{Plugin, Slot, bad_output, checked_calls, dispatch};
use crate::sandbox::{InstanceOptions, MemoryPool};
use galley_core::{
    Environment, Episode, FunctionCall, PluginError, PluginErrorKind as K, PluginKind, ToolFunction,
};

/// The longest text `reset` may append to a prompt, in bytes: it is rendered into the
/// prompt and tokenized, so it is bounded like a tool's result.
pub const MAX_OBSERVATION: usize = 64 * 1024;

impl Plugin {
    /// An environment: its functions are asked of one instance and checked here, once;
    /// each episode is then a fresh instance with `config` (a JSON object). Its episodes
    /// draw on one memory budget together, `opts.pool` (by default half of this machine's
    /// memory), on top of each one's own cap.
    pub fn environment(
        &self,
        config: &serde_json::Value,
        mut opts: InstanceOptions,
    ) -> Result<WasmEnvironment, PluginError> {
        self.expect(PluginKind::Environment)?;
        opts.pool
            .get_or_insert_with(|| MemoryPool::new(MemoryPool::default_cap()));
        let mut probe = Slot::new(self.clone(), config, opts.clone())?;
        let raw = probe.call("functions", |live, store| {
            dispatch!(live, store, env_functions())
        })?;
        let functions =
            crate::tools::check_functions(raw).map_err(|m| bad_output(&probe, "functions", m))?;
        Ok(WasmEnvironment {
            plugin: self.clone(),
            config: config.clone(),
            opts,
            functions,
        })
    }
}

/// An environment plugin behind the [`Environment`] trait.
pub struct WasmEnvironment {
    plugin: Plugin,
    config: serde_json::Value,
    opts: InstanceOptions,
    functions: Vec<ToolFunction>,
}

impl WasmEnvironment {
    /// The memory budget its episodes share.
    pub fn pool(&self) -> &MemoryPool {
        self.opts.pool.as_deref().expect("set when opened")
    }

    /// A new episode, typed (the trait's `start` boxes it).
    pub fn episode(
        &self,
        row: &serde_json::Value,
        seed: u64,
    ) -> Result<(WasmEpisode, Option<String>), PluginError> {
        let mut slot =
            Slot::new(self.plugin.clone(), &self.config, self.opts.clone()).map_err(|mut e| {
                // The pool of live instances is shared by the process; an environment holds
                // one per rollout of a step, so this is what to change.
                if e.message.contains("maximum concurrent limit") {
                    e.message.push_str(
                        " (an environment keeps one instance per rollout of a GRPO step alive until the step is scored: lower training.batch_size)",
                    );
                }
                e
            })?;
        slot.once = true;
        let row = row.to_string();
        let shown = slot.call("reset", |live, store| {
            dispatch!(live, store, env_reset(&row, seed))
        })?;
        if let Some(text) = &shown
            && text.len() > MAX_OBSERVATION
        {
            return Err(bad_output(
                &slot,
                "reset",
                format!(
                    "returned {} bytes to append to the prompt (at most {MAX_OBSERVATION})",
                    text.len()
                ),
            ));
        }
        Ok((
            WasmEpisode {
                slot,
                functions: self.functions.clone(),
            },
            shown,
        ))
    }
}

impl Environment for WasmEnvironment {
    fn name(&self) -> &str {
        self.plugin.id()
    }

    fn functions(&self) -> &[ToolFunction] {
        &self.functions
    }

    fn start(
        &mut self,
        row: &serde_json::Value,
        seed: u64,
    ) -> Result<(Box<dyn Episode>, Option<String>), PluginError> {
        let (e, shown) = self.episode(row, seed)?;
        Ok((Box::new(e), shown))
    }
}

/// One episode: an instance of its own.
pub struct WasmEpisode {
    slot: Slot,
    functions: Vec<ToolFunction>,
}

impl Episode for WasmEpisode {
    fn call(
        &mut self,
        calls: &[FunctionCall<'_>],
    ) -> Result<Vec<Result<String, PluginError>>, PluginError> {
        checked_calls(
            &mut self.slot,
            &self.functions,
            calls,
            |live, store, sent| dispatch!(live, store, env_call(sent)),
        )
    }

    fn reward(&mut self) -> Result<Option<f64>, PluginError> {
        let r = self
            .slot
            .call("reward", |live, store| dispatch!(live, store, env_reward()))?;
        match r {
            Some(v) if !v.is_finite() => Err(self.slot.err(
                "reward",
                K::BadOutput,
                format!("returned a non-finite score ({v})"),
            )),
            r => Ok(r),
        }
    }
}

/// The environment world as 0.4 defined it, for 0.4 and every later version that keeps it.
#[macro_export]
#[doc(hidden)]
macro_rules! environment_world_since_0_4 {
    () => {
        pub(crate) type EnvPre = environment::EnvironmentPluginPre<$crate::sandbox::PluginState>;
        pub(crate) type EnvLive = environment::EnvironmentPlugin;

        fn env_pre(
            pre: wasmtime::component::InstancePre<$crate::sandbox::PluginState>,
        ) -> wasmtime::Result<EnvPre> {
            environment::EnvironmentPluginPre::new(pre)
        }

        fn instantiate_env(
            p: &EnvPre,
            store: &mut wasmtime::Store<$crate::sandbox::PluginState>,
        ) -> wasmtime::Result<EnvLive> {
            p.instantiate(store)
        }

        fn init_env(
            l: &EnvLive,
            store: &mut wasmtime::Store<$crate::sandbox::PluginState>,
            config: &str,
        ) -> $crate::calls::Call<()> {
            answer(l.galley_plugin_environment().call_init(store, config))
        }

        fn env_of(live: &Live) -> &EnvLive {
            let Live::Environment(b) = live else {
                unreachable!("kind checked at construction")
            };
            b
        }

        /// The functions as the plugin wrote them: (name, description, parameters).
        pub(crate) fn env_functions(
            live: &Live,
            store: &mut wasmtime::Store<$crate::sandbox::PluginState>,
        ) -> $crate::calls::Call<Vec<(String, String, String)>> {
            answer(
                env_of(live)
                    .galley_plugin_environment()
                    .call_functions(store),
            )
            .map(|r| {
                r.map(|f| {
                    f.into_iter()
                        .map(|f| (f.name, f.description, f.parameters))
                        .collect()
                })
            })
        }

        pub(crate) fn env_reset(
            live: &Live,
            store: &mut wasmtime::Store<$crate::sandbox::PluginState>,
            row: &str,
            seed: u64,
        ) -> $crate::calls::Call<Option<String>> {
            answer(
                env_of(live)
                    .galley_plugin_environment()
                    .call_reset(store, row, seed),
            )
        }

        #[allow(clippy::type_complexity)]
        pub(crate) fn env_call(
            live: &Live,
            store: &mut wasmtime::Store<$crate::sandbox::PluginState>,
            calls: &[galley_core::FunctionCall<'_>],
        ) -> $crate::calls::Call<Vec<Result<String, (galley_core::PluginErrorKind, String)>>> {
            use environment::exports::galley::plugin::environment as e;
            let input: Vec<e::FunctionCall> = calls
                .iter()
                .map(|c| e::FunctionCall {
                    name: c.name.to_string(),
                    arguments: c.arguments.to_string(),
                })
                .collect();
            env_of(live)
                .galley_plugin_environment()
                .call_call(store, &input)
                .map(|out| Ok(out.into_iter().map(|r| r.map_err(plugin_error)).collect()))
        }

        pub(crate) fn env_reward(
            live: &Live,
            store: &mut wasmtime::Store<$crate::sandbox::PluginState>,
        ) -> $crate::calls::Call<Option<f64>> {
            answer(env_of(live).galley_plugin_environment().call_reward(store))
        }
    };
}

/// The environment world of versions before 0.4, which have none: a component claiming one
/// is refused when it is loaded, and no environment value of these versions can exist.
#[macro_export]
#[doc(hidden)]
macro_rules! no_environment_world {
    () => {
        pub(crate) enum EnvPre {}
        pub(crate) enum EnvLive {}

        fn env_pre(
            _: wasmtime::component::InstancePre<$crate::sandbox::PluginState>,
        ) -> wasmtime::Result<EnvPre> {
            Err(wasmtime::Error::msg(
                "the environment world is new in galley:plugin@0.4.0",
            ))
        }

        fn instantiate_env(
            p: &EnvPre,
            _: &mut wasmtime::Store<$crate::sandbox::PluginState>,
        ) -> wasmtime::Result<EnvLive> {
            match *p {}
        }

        fn init_env(
            l: &EnvLive,
            _: &mut wasmtime::Store<$crate::sandbox::PluginState>,
            _: &str,
        ) -> $crate::calls::Call<()> {
            match *l {}
        }

        fn env_of(live: &Live) -> &EnvLive {
            let Live::Environment(b) = live else {
                unreachable!("kind checked at construction")
            };
            b
        }

        pub(crate) fn env_functions(
            live: &Live,
            _: &mut wasmtime::Store<$crate::sandbox::PluginState>,
        ) -> $crate::calls::Call<Vec<(String, String, String)>> {
            match *env_of(live) {}
        }

        pub(crate) fn env_reset(
            live: &Live,
            _: &mut wasmtime::Store<$crate::sandbox::PluginState>,
            _: &str,
            _: u64,
        ) -> $crate::calls::Call<Option<String>> {
            match *env_of(live) {}
        }

        #[allow(clippy::type_complexity)]
        pub(crate) fn env_call(
            live: &Live,
            _: &mut wasmtime::Store<$crate::sandbox::PluginState>,
            _: &[galley_core::FunctionCall<'_>],
        ) -> $crate::calls::Call<Vec<Result<String, (galley_core::PluginErrorKind, String)>>> {
            match *env_of(live) {}
        }

        pub(crate) fn env_reward(
            live: &Live,
            _: &mut wasmtime::Store<$crate::sandbox::PluginState>,
        ) -> $crate::calls::Call<Option<f64>> {
            match *env_of(live) {}
        }
    };
}
