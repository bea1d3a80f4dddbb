//! Evaluators: grade predictions against references, then fold the grades into metrics.
//!
//! ```no_run
//! use galley_sdk::evaluator::{Evaluator, Prediction};
//! use galley_sdk::{Config, Error, Metric};
//!
//! /// Fraction of predictions that start with one of their references.
//! struct Prefix;
//!
//! impl Evaluator for Prefix {
//!     fn new(_config: &Config) -> Result<Self, Error> {
//!         Ok(Prefix)
//!     }
//!
//!     fn score(&mut self, p: &Prediction) -> Result<Vec<Metric>, Error> {
//!         let hit = p.references.iter().any(|r| p.prediction.trim().starts_with(r.as_str()));
//!         Ok(vec![Metric::new("prefix_match", if hit { 1.0 } else { 0.0 })])
//!     }
//!     // `aggregate` defaults to the mean of each metric name, plus a `count`.
//! }
//!
//! galley_sdk::export_evaluator!(Prefix);
//! ```

use crate::{Config, Error, Metadata, Metric};

#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../../wit/v0.2.0",
        world: "galley:plugin/evaluator-plugin",
        pub_export_macro: true,
        export_macro_name: "__export_evaluator_world",
        default_bindings_module: "galley_sdk::evaluator::bindings",
        runtime_path: "galley_sdk::__private::wit_bindgen::rt",
    });
}

mod conv {
    crate::__conversions!(super::bindings::galley::plugin::types);
}

use bindings::exports::galley::plugin::evaluator as wit_eval;
use bindings::galley::plugin::types as wit;

/// One prediction to grade.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Prediction {
    pub id: String,
    pub prediction: String,
    pub references: Vec<String>,
    pub metadata: Metadata,
}

/// An evaluator.
pub trait Evaluator: Sized + 'static {
    fn new(config: &Config) -> Result<Self, Error>;

    /// The metrics of one prediction.
    fn score(&mut self, prediction: &Prediction) -> Result<Vec<Metric>, Error>;

    /// Summary metrics over many predictions' metrics. The default is the mean of each metric
    /// name (in first-seen order) and `count`, the number of predictions.
    fn aggregate(&mut self, scores: &[Vec<Metric>]) -> Result<Vec<Metric>, Error> {
        Ok(mean_by_name(scores))
    }
}

/// The mean of each metric name, in first-seen order, followed by `count`.
pub fn mean_by_name(scores: &[Vec<Metric>]) -> Vec<Metric> {
    let mut sums: Vec<(String, f64, usize)> = Vec::new();
    for m in scores.iter().flatten() {
        match sums.iter_mut().find(|(n, _, _)| *n == m.name) {
            Some(slot) => {
                slot.1 += m.value;
                slot.2 += 1;
            }
            None => sums.push((m.name.clone(), m.value, 1)),
        }
    }
    let mut out: Vec<Metric> = sums
        .into_iter()
        .map(|(n, s, c)| Metric::new(n, s / c as f64))
        .collect();
    out.push(Metric::new("count", scores.len() as f64));
    out
}

#[doc(hidden)]
pub fn __init<T: Evaluator>(config: String) -> Result<(), wit::PluginError> {
    let config = Config::parse(&config).map_err(conv::error_out)?;
    let value = T::new(&config).map_err(conv::error_out)?;
    crate::__private::set_state(value);
    Ok(())
}

#[doc(hidden)]
pub fn __score<T: Evaluator>(
    batch: Vec<wit_eval::Prediction>,
) -> Result<Vec<Vec<wit::Metric>>, wit::PluginError> {
    crate::__private::with_state::<T, _>(|state| {
        let Some(state) = state else {
            return Err(conv::not_initialised());
        };
        batch
            .into_iter()
            .map(|p| {
                let p = Prediction {
                    id: p.id,
                    prediction: p.prediction,
                    references: p.references,
                    metadata: conv::metadata_in(p.metadata),
                };
                state
                    .score(&p)
                    .map(conv::metrics_out)
                    .map_err(conv::error_out)
            })
            .collect()
    })
}

#[doc(hidden)]
pub fn __aggregate<T: Evaluator>(
    scores: Vec<Vec<wit::Metric>>,
) -> Result<Vec<wit::Metric>, wit::PluginError> {
    let scores: Vec<Vec<Metric>> = scores.into_iter().map(conv::metrics_in).collect();
    crate::__private::with_state::<T, _>(|state| match state {
        Some(state) => state
            .aggregate(&scores)
            .map(conv::metrics_out)
            .map_err(conv::error_out),
        None => Err(conv::not_initialised()),
    })
}

/// Exports an [`Evaluator`] implementation as the component's `galley:plugin/evaluator`.
#[macro_export]
macro_rules! export_evaluator {
    ($ty:ty) => {
        const _: () = {
            use $crate::evaluator::bindings::exports::galley::plugin::evaluator as __e;
            use $crate::evaluator::bindings::galley::plugin::types as __t;
            struct __GalleyEvaluator;
            impl __e::Guest for __GalleyEvaluator {
                fn init(config: ::std::string::String) -> ::std::result::Result<(), __t::PluginError> {
                    $crate::evaluator::__init::<$ty>(config)
                }
                fn score(
                    batch: ::std::vec::Vec<__e::Prediction>,
                ) -> ::std::result::Result<::std::vec::Vec<::std::vec::Vec<__t::Metric>>, __t::PluginError> {
                    $crate::evaluator::__score::<$ty>(batch)
                }
                fn aggregate(
                    scores: ::std::vec::Vec<::std::vec::Vec<__t::Metric>>,
                ) -> ::std::result::Result<::std::vec::Vec<__t::Metric>, __t::PluginError> {
                    $crate::evaluator::__aggregate::<$ty>(scores)
                }
            }
            $crate::evaluator::bindings::__export_evaluator_world!(__GalleyEvaluator with_types_in $crate::evaluator::bindings);
        };
    };
}
