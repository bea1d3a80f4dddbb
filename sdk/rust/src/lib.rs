//! # galley-sdk: write galley plugins in Rust
//!
//! A galley plugin is a WebAssembly component that the galley host runs in a sandbox: no
//! files (unless a data loader is granted a read-only directory), no network, no environment,
//! no wall clock, seeded randomness, and a time and memory budget on every call. This crate is
//! the Rust face of the `galley:plugin` WIT contract: implement one trait, call one export
//! macro, and build with `galley plugin build`. (galley-sdk 0.1 built against
//! `galley:plugin@0.1.0`; galley keeps running those plugins. 0.2 adds a message's tool calls
//! and reasoning, and a completion's reading as an assistant turn. 0.3 adds tools, built
//! against `galley:plugin@0.3.0`, where their world is new; the other kinds are still built
//! against 0.2.0, the oldest contract that has all they use, so they run on any host since.
//! 0.4 adds environments — functions with state, one instance per rollout — built against
//! `galley:plugin@0.4.0`.)
//!
//! | kind | cargo feature | trait | macro |
//! | --- | --- | --- | --- |
//! | reward function | `reward` | [`reward::Reward`] | [`export_reward!`] |
//! | data loader | `data-loader` | [`data_loader::DataLoader`] | [`export_data_loader!`] |
//! | evaluator | `evaluator` | [`evaluator::Evaluator`] | [`export_evaluator!`] |
//! | recipe | `recipe` | [`recipe::Recipe`] | [`export_recipe!`] |
//! | tool | `tool` | [`tool::Tool`] | [`export_tool!`] |
//! | environment | `environment` | [`environment::Environment`] | [`export_environment!`] |
//!
//! Enable exactly one feature: a component exports exactly one world.
//!
//! A plugin crate is a `cdylib` with a `galley.toml` manifest beside its `Cargo.toml`:
//!
//! ```toml
//! name = "my-reward"
//! version = "0.1.0"
//! kind = "reward"
//! description = "Rewards completions that end with a period."
//! license = "Apache-2.0"
//! ```
//!
//! Each kind's module has a complete example. Values that cross the boundary use this crate's
//! own types ([`Message`], [`ToolCall`], [`Metadata`], [`Value`], [`Metric`]), so nothing of the WIT
//! bindings leaks into plugin code.

extern crate self as galley_sdk;

mod config;
mod function;
mod types;

pub use config::Config;
pub use function::Function;
pub use serde_json;
pub use types::{Error, ErrorKind, Example, Message, Metadata, Metric, ToolCall, Value};

#[cfg(feature = "data-loader")]
pub mod data_loader;
#[cfg(feature = "environment")]
pub mod environment;
#[cfg(feature = "evaluator")]
pub mod evaluator;
#[cfg(feature = "recipe")]
pub mod recipe;
#[cfg(feature = "reward")]
pub mod reward;
#[cfg(feature = "tool")]
pub mod tool;

pub mod log;

#[doc(hidden)]
pub mod __private {
    pub use wit_bindgen;

    use std::any::Any;
    use std::cell::RefCell;

    // A component instance is single-threaded and holds one plugin value, created by `init`.
    // Keeping it type-erased here lets the export macros stay tiny.
    thread_local! {
        static STATE: RefCell<Option<Box<dyn Any>>> = const { RefCell::new(None) };
    }

    pub fn set_state<T: 'static>(value: T) {
        STATE.with(|s| *s.borrow_mut() = Some(Box::new(value)));
    }

    pub fn with_state<T: 'static, R>(f: impl FnOnce(Option<&mut T>) -> R) -> R {
        STATE.with(|s| {
            let mut guard = s.borrow_mut();
            f(guard.as_mut().and_then(|b| b.downcast_mut::<T>()))
        })
    }
}
