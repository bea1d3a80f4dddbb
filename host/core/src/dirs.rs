//! The one place that decides galley's folders. Every room asks here; nothing else reads
//! `HOME` or the XDG variables. Precedence, per folder: galley's own variable, then the XDG
//! base-directory variable (`XDG_CACHE_HOME`, `XDG_CONFIG_HOME`), then `~/.cache/galley` or
//! `~/.config/galley`, and with no home at all a `.galley` folder in the current directory
//! (a container with no `HOME` still works, visibly).
//!
//! | folder | variable | default |
//! | --- | --- | --- |
//! | cache root | `GALLEY_CACHE_DIR` | `$XDG_CACHE_HOME/galley`, `~/.cache/galley` |
//! | compiled components | — | `<cache>/components` |
//! | registry blobs | — | `<cache>/blobs` |
//! | models from `hf://` | `GALLEY_MODEL_CACHE` | `<cache>/models` |
//! | evaluation data (`scripts/fetch-eval-data.sh`) | `GALLEY_EVAL_DATA` | `<cache>/eval-data` |
//! | guest toolchains | `GALLEY_TOOLCHAIN_DIR` | `<cache>/toolchains` |
//! | wasm build target dirs | `GALLEY_WASM_TARGET_DIR` (one, shared: opt-in) | `<cache>/wasm-target/<plugin>-<hash>` (one per plugin) |
//! | config root | `GALLEY_CONFIG_DIR` | `$XDG_CONFIG_HOME/galley`, `~/.config/galley` |
//! | signing keys | — | `<config>/keys` |
//! | trusted keys | — | `<config>/trusted-keys` |
//! | compiled-cache secret | — | `<config>/cache.key` (not in the cache: see galley-runtime) |

use std::ffi::OsString;
use std::path::PathBuf;

/// Reads an environment variable, treating an empty value as unset (as the XDG spec asks).
fn var(name: &str) -> Option<PathBuf> {
    std::env::var_os(name)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

fn home() -> Option<OsString> {
    std::env::var_os("HOME").filter(|v| !v.is_empty())
}

/// A base folder: galley's variable, else `$XDG/galley`, else `~/<home_rel>/galley`.
fn base(own: &str, xdg: &str, home_rel: &str, fallback: &str) -> PathBuf {
    if let Some(d) = var(own) {
        return d;
    }
    // XDG says relative values are invalid and must be ignored.
    if let Some(d) = var(xdg).filter(|d| d.is_absolute()) {
        return d.join("galley");
    }
    match home() {
        Some(h) => PathBuf::from(h).join(home_rel).join("galley"),
        None => PathBuf::from(fallback),
    }
}

/// galley's cache root.
pub fn cache_dir() -> PathBuf {
    base(
        "GALLEY_CACHE_DIR",
        "XDG_CACHE_HOME",
        ".cache",
        ".galley/cache",
    )
}

/// Where benchmark datasets live, laid out as `<dataset_path>/<dataset_name>/<split>.jsonl`
/// (the hub ids of lm-evaluation-harness's task files, resolved locally: evaluation never
/// downloads).
pub fn eval_data_dir() -> PathBuf {
    var("GALLEY_EVAL_DATA").unwrap_or_else(|| cache_dir().join("eval-data"))
}

/// galley's config root (keys, trusted keys).
pub fn config_dir() -> PathBuf {
    base(
        "GALLEY_CONFIG_DIR",
        "XDG_CONFIG_HOME",
        ".config",
        ".galley/config",
    )
}

/// Compiled components, keyed by digest and engine settings.
pub fn components_dir() -> PathBuf {
    cache_dir().join("components")
}

/// The secret that authenticates compiled-component cache entries. It lives in the config
/// folder so that a cache restored or shared from elsewhere never brings its own key.
pub fn cache_key_file() -> PathBuf {
    config_dir().join("cache.key")
}

/// Registry blobs by digest, which make locked installs work offline.
pub fn blobs_dir() -> PathBuf {
    cache_dir().join("blobs")
}

/// Models downloaded from `hf://` references.
pub fn models_dir() -> PathBuf {
    var("GALLEY_MODEL_CACHE").unwrap_or_else(|| cache_dir().join("models"))
}

/// componentize-py, componentize-js and the unpacked Rust SDK.
pub fn toolchains_dir() -> PathBuf {
    var("GALLEY_TOOLCHAIN_DIR").unwrap_or_else(|| cache_dir().join("toolchains"))
}

/// The one cargo target dir all wasm plugin builds share, when the user opts in with
/// `GALLEY_WASM_TARGET_DIR` (faster: std for wasm is built once; but a plugin's build
/// script could then tamper with another plugin's artifacts).
pub fn shared_wasm_target_dir() -> Option<PathBuf> {
    var("GALLEY_WASM_TARGET_DIR")
}

/// Where each plugin's own cargo target dir goes by default.
pub fn wasm_target_root() -> PathBuf {
    cache_dir().join("wasm-target")
}

/// Publishing keys made by `galley plugin keygen`.
pub fn keys_dir() -> PathBuf {
    config_dir().join("keys")
}

/// The file of publisher keys this user trusts.
pub fn trust_file() -> PathBuf {
    config_dir().join("trusted-keys")
}

#[cfg(test)]
mod tests {
    use super::*;

    // One test owns the environment: tests in a binary share it and run in parallel.
    #[test]
    fn galley_variables_then_xdg_then_home() {
        // SAFETY: no other test in this crate reads or writes the environment.
        unsafe {
            std::env::remove_var("GALLEY_CACHE_DIR");
            std::env::remove_var("GALLEY_CONFIG_DIR");
            std::env::remove_var("GALLEY_TOOLCHAIN_DIR");
            std::env::set_var("HOME", "/home/u");
            std::env::remove_var("XDG_CACHE_HOME");
            std::env::remove_var("XDG_CONFIG_HOME");
        }
        assert_eq!(
            components_dir(),
            PathBuf::from("/home/u/.cache/galley/components")
        );
        assert_eq!(
            trust_file(),
            PathBuf::from("/home/u/.config/galley/trusted-keys")
        );
        unsafe {
            std::env::set_var("XDG_CACHE_HOME", "/x/cache");
            std::env::set_var("XDG_CONFIG_HOME", "relative/is/ignored");
        }
        assert_eq!(
            toolchains_dir(),
            PathBuf::from("/x/cache/galley/toolchains")
        );
        assert_eq!(keys_dir(), PathBuf::from("/home/u/.config/galley/keys"));
        unsafe {
            std::env::set_var("GALLEY_CACHE_DIR", "/g");
            std::env::set_var("GALLEY_TOOLCHAIN_DIR", "/t");
            std::env::set_var("XDG_CONFIG_HOME", "/x/config");
        }
        assert_eq!(blobs_dir(), PathBuf::from("/g/blobs"));
        assert_eq!(toolchains_dir(), PathBuf::from("/t"));
        assert_eq!(config_dir(), PathBuf::from("/x/config/galley"));
        unsafe { std::env::remove_var("HOME") };
        unsafe { std::env::remove_var("XDG_CONFIG_HOME") };
        assert_eq!(config_dir(), PathBuf::from(".galley/config"));
    }
}
