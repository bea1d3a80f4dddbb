//! Reward functions: score batches of completions, grouped by prompt (a GRPO group shares
//! its prompt and ground truth), in one call.
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
//!     fn score(&mut self, input: &RewardInput<'_>) -> Result<Option<f64>, Error> {
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
        path: "../../wit/v0.2.0",
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

/// One completion of a group, as the host sent it.
#[derive(Debug, Clone, PartialEq)]
pub struct Completion {
    /// What the model wrote, decoded as it came: reasoning and tool-call markup included.
    pub text: String,
    /// The text read as an assistant turn, as a server returns it: `content` without the
    /// reasoning and the calls, which are in `reasoning` and `tool_calls` (read in the format
    /// the model's chat template writes them; only where the prompt offered tools).
    pub message: Message,
    /// The token budget cut the completion before the model ended it.
    pub truncated: bool,
}

/// One completion to score, borrowing the group's prompt and metadata (zero-copy).
#[derive(Debug, Clone, Copy)]
pub struct RewardInput<'a> {
    /// The conversation the completion answers.
    pub prompt: &'a [Message],
    /// The model's completion as text (`message.content` is the answer without its
    /// reasoning and calls).
    pub completion: &'a str,
    /// The completion read as an assistant turn: its tool calls and reasoning apart.
    pub message: &'a Message,
    /// The token budget cut the completion before the model ended it.
    pub truncated: bool,
    /// The example's other columns: ground truth, source, the `tools` offered...
    pub metadata: &'a Metadata,
}

/// A reward function. `score` returns `Ok(None)` for "no opinion".
pub trait Reward: Sized + 'static {
    /// Builds the function from the user's settings; called once per instance.
    fn new(config: &Config) -> Result<Self, Error>;

    /// Scores one completion.
    fn score(&mut self, input: &RewardInput<'_>) -> Result<Option<f64>, Error>;

    /// Scores the completions of one prompt (a GRPO group); override when they share work,
    /// such as parsing the ground truth once. Must return one entry per completion.
    fn score_group(
        &mut self,
        prompt: &[Message],
        metadata: &Metadata,
        completions: &[Completion],
    ) -> Result<Vec<Option<f64>>, Error> {
        completions
            .iter()
            .map(|c| {
                self.score(&RewardInput {
                    prompt,
                    completion: &c.text,
                    message: &c.message,
                    truncated: c.truncated,
                    metadata,
                })
            })
            .collect()
    }
}

#[doc(hidden)]
pub fn __init<T: Reward>(
    config: String,
) -> Result<(), crate::reward::bindings::galley::plugin::types::PluginError> {
    let config = Config::parse(&config).map_err(conv::error_out)?;
    let value = T::new(&config).map_err(conv::error_out)?;
    crate::__private::set_state(value);
    Ok(())
}

#[doc(hidden)]
pub fn __score<T: Reward>(
    groups: Vec<wit::RewardGroup>,
) -> Result<Vec<Option<f64>>, crate::reward::bindings::galley::plugin::types::PluginError> {
    crate::__private::with_state::<T, _>(|state| {
        let Some(state) = state else {
            return Err(conv::not_initialised());
        };
        let mut out = Vec::with_capacity(groups.iter().map(|g| g.completions.len()).sum());
        for g in groups {
            let prompt = conv::messages_in(g.prompt);
            let metadata = conv::metadata_in(g.metadata);
            let completions: Vec<Completion> = g
                .completions
                .into_iter()
                .map(|c| Completion {
                    text: c.text,
                    message: conv::message_in(c.message),
                    truncated: c.truncated,
                })
                .collect();
            out.extend(
                state
                    .score_group(&prompt, &metadata, &completions)
                    .map_err(conv::error_out)?,
            );
        }
        Ok(out)
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
                    groups: ::std::vec::Vec<$crate::reward::bindings::exports::galley::plugin::reward::RewardGroup>,
                ) -> ::std::result::Result<
                    ::std::vec::Vec<::std::option::Option<f64>>,
                    $crate::reward::bindings::galley::plugin::types::PluginError,
                > {
                    $crate::reward::__score::<$ty>(groups)
                }
            }
            $crate::reward::bindings::__export_reward_world!(__GalleyReward with_types_in $crate::reward::bindings);
        };
    };
}
