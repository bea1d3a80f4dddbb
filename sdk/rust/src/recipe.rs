//! Recipes: plan the stages of a run and react to the metrics they report.
//!
//! ```no_run
//! use galley_sdk::recipe::{Decision, Recipe, Stage};
//! use galley_sdk::{Config, Error, Metric};
//!
//! /// SFT, then GRPO until the mean reward reaches `target`, then evaluate.
//! #[derive(Default)]
//! struct SftThenGrpo {
//!     target: f64,
//! }
//!
//! impl Recipe for SftThenGrpo {
//!     fn plan(&mut self, config: &Config) -> Result<Vec<Stage>, Error> {
//!         self.target = config.get_f64("target").unwrap_or(0.9);
//!         Ok(vec![
//!             Stage::new("sft", "sft", galley_sdk::serde_json::json!({"epochs": 1})),
//!             Stage::new("grpo", "grpo", galley_sdk::serde_json::json!({"num_generations": 8})),
//!             Stage::new("eval", "evaluate", galley_sdk::serde_json::json!({})),
//!         ])
//!     }
//!
//!     fn on_metrics(&mut self, stage: &str, _step: u64, metrics: &[Metric]) -> Result<Decision, Error> {
//!         let reward = metrics.iter().find(|m| m.name == "reward").map(|m| m.value);
//!         Ok(match (stage, reward) {
//!             ("grpo", Some(r)) if r >= self.target => Decision::NextStage,
//!             _ => Decision::Proceed,
//!         })
//!     }
//! }
//!
//! galley_sdk::export_recipe!(SftThenGrpo);
//! ```

use crate::{Config, Error, Metric};

#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../../wit/v0.2.0",
        world: "galley:plugin/recipe-plugin",
        pub_export_macro: true,
        export_macro_name: "__export_recipe_world",
        default_bindings_module: "galley_sdk::recipe::bindings",
        runtime_path: "galley_sdk::__private::wit_bindgen::rt",
    });
}

mod conv {
    crate::__conversions!(super::bindings::galley::plugin::types);
}

use bindings::exports::galley::plugin::recipe as wit_recipe;
use bindings::galley::plugin::types as wit;

/// One stage of the plan.
#[derive(Debug, Clone, PartialEq)]
pub struct Stage {
    pub name: String,
    pub kind: String,
    pub config: serde_json::Value,
}

impl Stage {
    pub fn new(
        name: impl Into<String>,
        kind: impl Into<String>,
        config: serde_json::Value,
    ) -> Self {
        Self {
            name: name.into(),
            kind: kind.into(),
            config,
        }
    }
}

/// What to do after a batch of metrics.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    Proceed,
    NextStage,
    Stop(String),
}

/// The host's description of itself.
pub mod host {
    /// The galley version running this recipe.
    pub fn version() -> String {
        super::bindings::galley::plugin::host::version()
    }
    /// The stage kinds this host can run.
    pub fn stage_kinds() -> Vec<String> {
        super::bindings::galley::plugin::host::stage_kinds()
    }
}

/// A recipe. One value lives for the whole run, so it may keep state between calls.
pub trait Recipe: Default + 'static {
    fn plan(&mut self, config: &Config) -> Result<Vec<Stage>, Error>;

    fn on_metrics(
        &mut self,
        stage: &str,
        step: u64,
        metrics: &[Metric],
    ) -> Result<Decision, Error> {
        let _ = (stage, step, metrics);
        Ok(Decision::Proceed)
    }
}

fn ensure_state<T: Recipe>() {
    let missing = crate::__private::with_state::<T, _>(|s| s.is_none());
    if missing {
        crate::__private::set_state(T::default());
    }
}

#[doc(hidden)]
pub fn __plan<T: Recipe>(config: String) -> Result<Vec<wit_recipe::Stage>, wit::PluginError> {
    let config = Config::parse(&config).map_err(conv::error_out)?;
    ensure_state::<T>();
    crate::__private::with_state::<T, _>(|state| {
        let state = state.ok_or_else(conv::not_initialised)?;
        let stages = state.plan(&config).map_err(conv::error_out)?;
        Ok(stages
            .into_iter()
            .map(|s| wit_recipe::Stage {
                name: s.name,
                kind: s.kind,
                config: s.config.to_string(),
            })
            .collect())
    })
}

#[doc(hidden)]
pub fn __on_metrics<T: Recipe>(
    stage: String,
    step: u64,
    metrics: Vec<wit::Metric>,
) -> Result<wit_recipe::Decision, wit::PluginError> {
    ensure_state::<T>();
    let metrics = conv::metrics_in(metrics);
    crate::__private::with_state::<T, _>(|state| {
        let state = state.ok_or_else(conv::not_initialised)?;
        Ok(
            match state
                .on_metrics(&stage, step, &metrics)
                .map_err(conv::error_out)?
            {
                Decision::Proceed => wit_recipe::Decision::Proceed,
                Decision::NextStage => wit_recipe::Decision::NextStage,
                Decision::Stop(why) => wit_recipe::Decision::Stop(why),
            },
        )
    })
}

/// Exports a [`Recipe`] implementation as the component's `galley:plugin/recipe`.
#[macro_export]
macro_rules! export_recipe {
    ($ty:ty) => {
        const _: () = {
            use $crate::recipe::bindings::exports::galley::plugin::recipe as __r;
            use $crate::recipe::bindings::galley::plugin::types as __t;
            struct __GalleyRecipe;
            impl __r::Guest for __GalleyRecipe {
                fn plan(
                    config: ::std::string::String,
                ) -> ::std::result::Result<::std::vec::Vec<__r::Stage>, __t::PluginError> {
                    $crate::recipe::__plan::<$ty>(config)
                }
                fn on_metrics(
                    stage: ::std::string::String,
                    step: u64,
                    metrics: ::std::vec::Vec<__t::Metric>,
                ) -> ::std::result::Result<__r::Decision, __t::PluginError> {
                    $crate::recipe::__on_metrics::<$ty>(stage, step, metrics)
                }
            }
            $crate::recipe::bindings::__export_recipe_world!(__GalleyRecipe with_types_in $crate::recipe::bindings);
        };
    };
}
