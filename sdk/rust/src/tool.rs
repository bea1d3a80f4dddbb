//! Tools: functions a model calls while it answers. During a GRPO rollout galley reads each
//! call from the model's turn, runs it here, and feeds the result back as a tool turn before
//! the model goes on (TRL's `GRPOTrainer(tools=...)`, with the tool sandboxed).
//!
//! A tool plugin is a `galley:plugin@0.3.0` component (the tool world is new in 0.3; the
//! other kinds are still built against 0.2.0, so they run on every host since 0.2).
//!
//! ```no_run
//! use galley_sdk::tool::{Function, Tool};
//! use galley_sdk::{Config, Error, serde_json::{json, Value}};
//!
//! #[derive(Default)]
//! struct Multiply;
//!
//! impl Tool for Multiply {
//!     fn new(_config: &Config) -> Result<Self, Error> {
//!         Ok(Multiply)
//!     }
//!
//!     fn functions(&self) -> Vec<Function> {
//!         vec![Function::new(
//!             "multiply",
//!             "Multiplies two integers.",
//!             json!({"type": "object",
//!                    "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
//!                    "required": ["a", "b"]}),
//!         )]
//!     }
//!
//!     fn call(&mut self, _name: &str, args: &Value) -> Result<String, Error> {
//!         let arg = |k: &str| args[k].as_i64().ok_or_else(|| Error::input(format!("`{k}` must be an integer")));
//!         Ok((arg("a")? * arg("b")?).to_string())
//!     }
//! }
//!
//! galley_sdk::export_tool!(Multiply);
//! ```

use crate::{Config, Error};

#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../../wit/v0.3.0",
        world: "galley:plugin/tool-plugin",
        pub_export_macro: true,
        export_macro_name: "__export_tool_world",
        default_bindings_module: "galley_sdk::tool::bindings",
        runtime_path: "galley_sdk::__private::wit_bindgen::rt",
    });
}

mod conv {
    crate::__conversions!(super::bindings::galley::plugin::types);
}

use bindings::exports::galley::plugin::tool as wit_tool;
use bindings::galley::plugin::types as wit;

pub use crate::function::Function;

/// A tool plugin: its functions, and what a call of one returns. The host may send any call
/// to any instance, so a call should depend on its arguments (and the settings) alone.
pub trait Tool: Sized + 'static {
    /// Called once per instance with the user's settings.
    fn new(config: &Config) -> Result<Self, Error>;

    /// The functions this plugin offers (asked once per instance).
    fn functions(&self) -> Vec<Function>;

    /// Runs function `name` with the arguments the model wrote (a JSON object: the host
    /// checked that it parses, has the schema's required keys and their declared types). The text returned is the tool turn the model reads; an
    /// error is shown to the model as `{"error": "..."}`
    /// ([`Error::input`]: the call was wrong).
    fn call(&mut self, name: &str, arguments: &serde_json::Value) -> Result<String, Error>;
}

#[doc(hidden)]
pub fn __init<T: Tool>(config: String) -> Result<(), wit::PluginError> {
    let config = Config::parse(&config).map_err(conv::error_out)?;
    let value = T::new(&config).map_err(conv::error_out)?;
    crate::__private::set_state(value);
    Ok(())
}

#[doc(hidden)]
pub fn __functions<T: Tool>() -> Result<Vec<wit_tool::Function>, wit::PluginError> {
    crate::__private::with_state::<T, _>(|state| {
        let state = state.ok_or_else(conv::not_initialised)?;
        Ok(state
            .functions()
            .into_iter()
            .map(|f| wit_tool::Function {
                name: f.name,
                description: f.description,
                parameters: f.parameters.to_string(),
            })
            .collect())
    })
}

#[doc(hidden)]
pub fn __call<T: Tool>(
    calls: Vec<wit_tool::FunctionCall>,
) -> Result<Vec<Result<String, wit::PluginError>>, wit::PluginError> {
    crate::__private::with_state::<T, _>(|state| {
        let state = state.ok_or_else(conv::not_initialised)?;
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

/// Exports a [`Tool`] implementation as the component's `galley:plugin/tool`.
#[macro_export]
macro_rules! export_tool {
    ($ty:ty) => {
        const _: () = {
            use $crate::tool::bindings::exports::galley::plugin::tool as __t;
            use $crate::tool::bindings::galley::plugin::types as __ty;
            struct __GalleyTool;
            impl __t::Guest for __GalleyTool {
                fn init(
                    config: ::std::string::String,
                ) -> ::std::result::Result<(), __ty::PluginError> {
                    $crate::tool::__init::<$ty>(config)
                }
                fn functions()
                -> ::std::result::Result<::std::vec::Vec<__t::Function>, __ty::PluginError> {
                    $crate::tool::__functions::<$ty>()
                }
                fn call(
                    calls: ::std::vec::Vec<__t::FunctionCall>,
                ) -> ::std::vec::Vec<::std::result::Result<::std::string::String, __ty::PluginError>>
                {
                    match $crate::tool::__call::<$ty>(calls) {
                        ::std::result::Result::Ok(out) => out,
                        // Not initialised: there is no per-call answer to give, so trap.
                        ::std::result::Result::Err(e) => ::std::panic!("{e:?}"),
                    }
                }
            }
            $crate::tool::bindings::__export_tool_world!(__GalleyTool with_types_in $crate::tool::bindings);
        };
    };
}
