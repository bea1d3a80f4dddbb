//! Reward functions: score a batch of completions (one GRPO group) in one call.
//!
//! ```no_run
//! use galley_sdk::reward::{Reward, RewardInput};
//! use galley_sdk::{Config, Error};
//!
//! /// 1.0 when the completion contains the example's `answer` column, else 0.0.
//! struct ContainsAnswer {
//!     case_sensitive: bool,
//! }
//!
//! impl Reward for ContainsAnswer {
//!     fn new(config: &Config) -> Result<Self, Error> {
//!         Ok(Self { case_sensitive: config.get_bool("case_sensitive").unwrap_or(false) })
//!     }
//!
//!     fn score(&mut self, input: &RewardInput) -> Result<Option<f64>, Error> {
//!         // No ground truth: no opinion, so the trainer leaves this function out of the sum.
//!         let Some(answer) = input.metadata.text("answer") else { return Ok(None) };
//!         let hit = if self.case_sensitive {
//!             input.completion.contains(&answer)
//!         } else {
//!             input.completion.to_lowercase().contains(&answer.to_lowercase())
//!         };
//!         Ok(Some(if hit { 1.0 } else { 0.0 }))
//!     }
//! }
//!
//! galley_sdk::export_reward!(ContainsAnswer);
//! ```

use crate::{Config, Error, Message, Metadata};

#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../../wit/v0.1.0",
        world: "galley:plugin/reward-plugin",
        pub_export_macro: true,
        export_macro_name: "__export_reward_world",
        default_bindings_module: "galley_sdk::reward::bindings",
        runtime_path: "galley_sdk::__private::wit_bindgen::rt",
    });
}

mod conv {
    crate::__conversions!(super::bindings::galley::plugin::types);
}

use bindings::exports::galley::plugin::reward as wit;

/// One completion to score.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RewardInput {
    /// The conversation the completion answers.
    pub prompt: Vec<Message>,
    /// The model's completion.
    pub completion: String,
    /// The example's other columns: ground truth, source, ...
    pub metadata: Metadata,
}

/// A reward function. `score` returns `Ok(None)` for "no opinion".
pub trait Reward: Sized + 'static {
    /// Builds the function from the user's settings; called once per instance.
    fn new(config: &Config) -> Result<Self, Error>;

    /// Scores one completion.
    fn score(&mut self, input: &RewardInput) -> Result<Option<f64>, Error>;

    /// Scores a batch; override when items share work (a group's prompt, say).
    fn score_batch(&mut self, batch: &[RewardInput]) -> Result<Vec<Option<f64>>, Error> {
        batch.iter().map(|i| self.score(i)).collect()
    }
}

#[doc(hidden)]
pub fn __init<T: Reward>(config: String) -> Result<(), crate::reward::bindings::galley::plugin::types::PluginError> {
    let config = Config::parse(&config).map_err(conv::error_out)?;
    let value = T::new(&config).map_err(conv::error_out)?;
    crate::__private::set_state(value);
    Ok(())
}

#[doc(hidden)]
pub fn __score<T: Reward>(
    batch: Vec<wit::RewardInput>,
) -> Result<Vec<Option<f64>>, crate::reward::bindings::galley::plugin::types::PluginError> {
    let batch: Vec<RewardInput> = batch
        .into_iter()
        .map(|i| RewardInput {
            prompt: conv::messages_in(i.prompt),
            completion: i.completion,
            metadata: conv::metadata_in(i.metadata),
        })
        .collect();
    crate::__private::with_state::<T, _>(|state| match state {
        Some(state) => state.score_batch(&batch).map_err(conv::error_out),
        None => Err(conv::not_initialised()),
    })
}

/// Exports a [`Reward`] implementation as the component's `galley:plugin/reward` interface.
#[macro_export]
macro_rules! export_reward {
    ($ty:ty) => {
        const _: () = {
            struct __GalleyReward;
            impl $crate::reward::bindings::exports::galley::plugin::reward::Guest for __GalleyReward {
                fn init(
                    config: ::std::string::String,
                ) -> ::std::result::Result<(), $crate::reward::bindings::galley::plugin::types::PluginError> {
                    $crate::reward::__init::<$ty>(config)
                }
                fn score(
                    batch: ::std::vec::Vec<$crate::reward::bindings::exports::galley::plugin::reward::RewardInput>,
                ) -> ::std::result::Result<
                    ::std::vec::Vec<::std::option::Option<f64>>,
                    $crate::reward::bindings::galley::plugin::types::PluginError,
                > {
                    $crate::reward::__score::<$ty>(batch)
                }
            }
            $crate::reward::bindings::__export_reward_world!(__GalleyReward with_types_in $crate::reward::bindings);
        };
    };
}
