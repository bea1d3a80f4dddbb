//! Environments: functions with state that a model acts through during GRPO rollouts — a
//! game, a file system, a shop — as TRL's `environment_factory`. galley makes one fresh
//! instance per rollout, so the value your `new` returns lives for exactly one episode:
//! `reset` starts it from the dataset row, the model's calls change it, `reward` scores it.
//! No other rollout can see it (no two episodes share memory).
//!
//! An environment is a `galley:plugin@0.4.0` component (the world is new in 0.4).
//!
//! ```no_run
//! use galley_sdk::environment::Environment;
//! use galley_sdk::{Config, Error, Function, serde_json::{json, Value}};
//!
//! /// Guess a number from 1 to 100; each guess is answered "higher", "lower" or "correct".
//! struct Guess { secret: i64, guesses: u32, solved: bool }
//!
//! impl Environment for Guess {
//!     fn new(_config: &Config) -> Result<Self, Error> {
//!         Ok(Guess { secret: 0, guesses: 0, solved: false })
//!     }
//!
//!     fn functions(&self) -> Vec<Function> {
//!         vec![Function::new(
//!             "guess",
//!             "Guess the secret number.",
//!             json!({"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}),
//!         )]
//!     }
//!
//!     fn reset(&mut self, row: &Value, seed: u64) -> Result<Option<String>, Error> {
//!         // The row's `secret` column where it has one, else one drawn from the seed.
//!         self.secret = row["secret"].as_i64().unwrap_or((seed % 100) as i64 + 1);
//!         Ok(Some(" (I am thinking of a number from 1 to 100.)".into()))
//!     }
//!
//!     fn call(&mut self, _name: &str, args: &Value) -> Result<String, Error> {
//!         let n = args["n"].as_i64().ok_or_else(|| Error::input("`n` must be an integer"))?;
//!         self.guesses += 1;
//!         self.solved |= n == self.secret;
//!         Ok(match n.cmp(&self.secret) {
//!             std::cmp::Ordering::Less => "higher",
//!             std::cmp::Ordering::Greater => "lower",
//!             std::cmp::Ordering::Equal => "correct",
//!         }.into())
//!     }
//!
//!     fn reward(&mut self) -> Result<Option<f64>, Error> {
//!         Ok(Some(if self.solved { 1.0 / self.guesses as f64 } else { 0.0 }))
//!     }
//! }
//!
//! galley_sdk::export_environment!(Guess);
//! ```

use crate::{Config, Error, Function};

#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../../wit/v0.4.0",
        world: "galley:plugin/environment-plugin",
        pub_export_macro: true,
        export_macro_name: "__export_environment_world",
        default_bindings_module: "galley_sdk::environment::bindings",
        runtime_path: "galley_sdk::__private::wit_bindgen::rt",
    });
}

mod conv {
    crate::__conversions!(super::bindings::galley::plugin::types);
}

use bindings::exports::galley::plugin::environment as wit_env;
use bindings::galley::plugin::types as wit;

/// An environment: one value per episode.
pub trait Environment: Sized + 'static {
    /// Called once per instance (once per episode) with the user's settings.
    fn new(config: &Config) -> Result<Self, Error>;

    /// The functions the model may call. galley asks one instance and offers the answer to
    /// every rollout, so it should depend on the settings alone.
    fn functions(&self) -> Vec<Function>;

    /// Starts the episode from its dataset row (a JSON object: the example's columns and
    /// `prompt`, its messages) and a seed; the text returned is appended to the prompt's last
    /// message. Every rollout of one prompt gets the same row and seed, and galley requires
    /// the same text from each: draw any randomness from `seed`, not from elsewhere.
    fn reset(&mut self, row: &serde_json::Value, seed: u64) -> Result<Option<String>, Error>;

    /// Runs function `name` with the arguments the model wrote (a JSON object the host
    /// checked against the top of the schema); the text is the tool turn the model reads, an
    /// error is shown to it as `{"error": "..."}`.
    fn call(&mut self, name: &str, arguments: &serde_json::Value) -> Result<String, Error>;

    /// The episode's score once the model has finished, or `None` to leave scoring to the
    /// run's reward functions.
    fn reward(&mut self) -> Result<Option<f64>, Error> {
        Ok(None)
    }
}

fn with<T: Environment, R>(
    f: impl FnOnce(&mut T) -> Result<R, wit::PluginError>,
) -> Result<R, wit::PluginError> {
    crate::__private::with_state::<T, _>(|state| f(state.ok_or_else(conv::not_initialised)?))
}

#[doc(hidden)]
pub fn __init<T: Environment>(config: String) -> Result<(), wit::PluginError> {
    let config = Config::parse(&config).map_err(conv::error_out)?;
    let value = T::new(&config).map_err(conv::error_out)?;
    crate::__private::set_state(value);
    Ok(())
}

#[doc(hidden)]
pub fn __functions<T: Environment>() -> Result<Vec<wit_env::Function>, wit::PluginError> {
    with::<T, _>(|state| {
        Ok(state
            .functions()
            .into_iter()
            .map(|f| wit_env::Function {
                name: f.name,
                description: f.description,
                parameters: f.parameters.to_string(),
            })
            .collect())
    })
}

#[doc(hidden)]
pub fn __reset<T: Environment>(row: String, seed: u64) -> Result<Option<String>, wit::PluginError> {
    with::<T, _>(|state| {
        let row: serde_json::Value = serde_json::from_str(&row)
            .map_err(|e| conv::error_out(Error::input(format!("the row is not JSON: {e}"))))?;
        state.reset(&row, seed).map_err(conv::error_out)
    })
}

#[doc(hidden)]
pub fn __call<T: Environment>(
    calls: Vec<wit_env::FunctionCall>,
) -> Result<Vec<Result<String, wit::PluginError>>, wit::PluginError> {
    with::<T, _>(|state| {
        Ok(calls
            .into_iter()
            .map(|c| {
                let args: serde_json::Value = serde_json::from_str(&c.arguments).map_err(|e| {
                    conv::error_out(Error::input(format!("the arguments are not JSON: {e}")))
                })?;
                state.call(&c.name, &args).map_err(conv::error_out)
            })
            .collect())
    })
}

#[doc(hidden)]
pub fn __reward<T: Environment>() -> Result<Option<f64>, wit::PluginError> {
    with::<T, _>(|state| state.reward().map_err(conv::error_out))
}

/// Exports an [`Environment`] implementation as the component's `galley:plugin/environment`.
#[macro_export]
macro_rules! export_environment {
    ($ty:ty) => {
        const _: () = {
            use $crate::environment::bindings::exports::galley::plugin::environment as __e;
            use $crate::environment::bindings::galley::plugin::types as __ty;
            struct __GalleyEnvironment;
            impl __e::Guest for __GalleyEnvironment {
                fn init(
                    config: ::std::string::String,
                ) -> ::std::result::Result<(), __ty::PluginError> {
                    $crate::environment::__init::<$ty>(config)
                }
                fn functions()
                -> ::std::result::Result<::std::vec::Vec<__e::Function>, __ty::PluginError> {
                    $crate::environment::__functions::<$ty>()
                }
                fn reset(
                    row: ::std::string::String,
                    seed: u64,
                ) -> ::std::result::Result<
                    ::std::option::Option<::std::string::String>,
                    __ty::PluginError,
                > {
                    $crate::environment::__reset::<$ty>(row, seed)
                }
                fn call(
                    calls: ::std::vec::Vec<__e::FunctionCall>,
                ) -> ::std::vec::Vec<::std::result::Result<::std::string::String, __ty::PluginError>>
                {
                    match $crate::environment::__call::<$ty>(calls) {
                        ::std::result::Result::Ok(out) => out,
                        // Not initialised: there is no per-call answer to give, so trap.
                        ::std::result::Result::Err(e) => ::std::panic!("{e:?}"),
                    }
                }
                fn reward()
                -> ::std::result::Result<::std::option::Option<f64>, __ty::PluginError> {
                    $crate::environment::__reward::<$ty>()
                }
            }
            $crate::environment::bindings::__export_environment_world!(__GalleyEnvironment with_types_in $crate::environment::bindings);
        };
    };
}
