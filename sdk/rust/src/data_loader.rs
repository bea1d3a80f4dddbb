//! Data loaders: stream examples to the host, a page at a time.
//!
//! A loader reads files only under directories its manifest requests and the user grants;
//! each granted directory `NAME` appears read-only at `/NAME`. The manifest asks with
//! `[capabilities] read-dirs = ["data"]`.
//!
//! ```no_run
//! use galley_sdk::data_loader::DataLoader;
//! use galley_sdk::{Config, Error, Example, Message, Value};
//!
//! /// Counts from `start` to `end`, one question per number.
//! struct Counting {
//!     next: u64,
//!     end: u64,
//! }
//!
//! impl DataLoader for Counting {
//!     fn new(config: &Config, _seed: u64) -> Result<Self, Error> {
//!         let start = config.get_f64("start").unwrap_or(0.0) as u64;
//!         let end = config.get_f64("end").ok_or_else(|| Error::config("`end` is required"))? as u64;
//!         Ok(Self { next: start, end })
//!     }
//!
//!     fn next_page(&mut self, max: usize) -> Result<Vec<Example>, Error> {
//!         let mut page = Vec::new();
//!         while page.len() < max && self.next < self.end {
//!             let n = self.next;
//!             self.next += 1;
//!             let mut ex = Example {
//!                 id: format!("count-{n}"),
//!                 messages: vec![Message::new("user", format!("What comes after {n}?"))],
//!                 ..Default::default()
//!             };
//!             ex.metadata.insert("answer", Value::Int(n as i64 + 1));
//!             page.push(ex);
//!         }
//!         Ok(page) // an empty page ends the stream
//!     }
//! }
//!
//! galley_sdk::export_data_loader!(Counting);
//! ```

use crate::{Config, Error, Example};

#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../../wit/v0.2.0",
        world: "galley:plugin/data-loader-plugin",
        pub_export_macro: true,
        export_macro_name: "__export_data_loader_world",
        default_bindings_module: "galley_sdk::data_loader::bindings",
        runtime_path: "galley_sdk::__private::wit_bindgen::rt",
    });
}

mod conv {
    crate::__conversions!(super::bindings::galley::plugin::types);
}

use bindings::galley::plugin::types as wit;

/// Where a file `path` of the granted directory `dir` is inside the sandbox (`/dir/path`);
/// a path that is absolute or climbs out with `..` is a configuration error.
pub fn granted_path(dir: &str, path: &str) -> Result<String, crate::Error> {
    if path.starts_with('/') || path.split('/').any(|p| p == "..") {
        return Err(crate::Error::config(format!(
            "`path` {path} must be relative to the granted directory, without `..`"
        )));
    }
    Ok(format!("/{dir}/{path}"))
}

/// Shuffles `v` in place with the run's `seed` (Fisher-Yates over splitmix64): the same seed
/// gives the same order on every machine, so a run replays.
pub fn shuffle<T>(v: &mut [T], seed: u64) {
    let mut state = seed;
    for i in (1..v.len()).rev() {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        v.swap(i, (z % (i as u64 + 1)) as usize);
    }
}

/// A source of examples.
pub trait DataLoader: Sized + 'static {
    /// Builds the loader from the user's settings and the run's seed.
    fn new(config: &Config, seed: u64) -> Result<Self, Error>;

    /// Up to `max` examples; an empty page means the source is exhausted.
    fn next_page(&mut self, max: usize) -> Result<Vec<Example>, Error>;
}

#[doc(hidden)]
pub fn __init<T: DataLoader>(config: String, seed: u64) -> Result<(), wit::PluginError> {
    let config = Config::parse(&config).map_err(conv::error_out)?;
    let value = T::new(&config, seed).map_err(conv::error_out)?;
    crate::__private::set_state(value);
    Ok(())
}

#[doc(hidden)]
pub fn __next_page<T: DataLoader>(max: u32) -> Result<Vec<wit::Example>, wit::PluginError> {
    crate::__private::with_state::<T, _>(|state| match state {
        Some(state) => {
            let page = state.next_page(max as usize).map_err(conv::error_out)?;
            Ok(page
                .into_iter()
                .map(|e| wit::Example {
                    id: e.id,
                    messages: conv::messages_out(e.messages),
                    metadata: conv::metadata_out(e.metadata),
                })
                .collect())
        }
        None => Err(conv::not_initialised()),
    })
}

/// Exports a [`DataLoader`] implementation as the component's `galley:plugin/data-loader`.
#[macro_export]
macro_rules! export_data_loader {
    ($ty:ty) => {
        const _: () = {
            struct __GalleyLoader;
            impl $crate::data_loader::bindings::exports::galley::plugin::data_loader::Guest for __GalleyLoader {
                fn init(
                    config: ::std::string::String,
                    seed: u64,
                ) -> ::std::result::Result<(), $crate::data_loader::bindings::galley::plugin::types::PluginError> {
                    $crate::data_loader::__init::<$ty>(config, seed)
                }
                fn next_page(
                    max: u32,
                ) -> ::std::result::Result<
                    ::std::vec::Vec<$crate::data_loader::bindings::galley::plugin::types::Example>,
                    $crate::data_loader::bindings::galley::plugin::types::PluginError,
                > {
                    $crate::data_loader::__next_page::<$ty>(max)
                }
            }
            $crate::data_loader::bindings::__export_data_loader_world!(__GalleyLoader with_types_in $crate::data_loader::bindings);
        };
    };
}
