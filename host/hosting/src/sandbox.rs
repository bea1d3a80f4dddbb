//! The limits and seed every plugin-running command shares (`--timeout-ms`, `--memory-mb`,
//! `--seed`, `--no-cache`), and how they become a runtime and a plugin's `InstanceOptions`.
//! A config's own limits for one plugin (`grpo.rewards[i].limits`, a run's `limits`) are laid
//! over these by `with_limits`.

use galley_runtime::{Grants, InstanceOptions, Limits, Runtime, RuntimeConfig};
use std::time::Duration;

/// Limits and seed of the plugins one command starts.
#[derive(Debug, Clone)]
#[cfg_attr(feature = "clap", derive(clap::Args))]
pub struct Sandbox {
    /// Time budget of one plugin call, in milliseconds.
    #[cfg_attr(feature = "clap", arg(long, default_value_t = 10_000,
        value_parser = clap::value_parser!(u64).range(1..)))]
    pub timeout_ms: u64,
    /// Memory cap of one plugin instance (all its memories together), in MiB.
    #[cfg_attr(feature = "clap", arg(long, default_value_t = 256,
        value_parser = clap::value_parser!(u64).range(1..=galley_train::config::MAX_MEMORY_MB)))]
    pub memory_mb: u64,
    /// Seed of the plugin's randomness.
    #[cfg_attr(feature = "clap", arg(long, default_value_t = 0))]
    pub seed: u64,
    /// Compile every time instead of using the compiled-component cache.
    #[cfg_attr(feature = "clap", arg(long))]
    pub no_cache: bool,
}

impl Sandbox {
    /// A runtime with galley's compiled-component cache (none with `no_cache`).
    pub fn runtime(&self) -> crate::Result<Runtime> {
        let mut cfg = RuntimeConfig::default();
        if self.no_cache {
            cfg.cache_dir = None;
        }
        Ok(Runtime::new(cfg)?)
    }

    /// These limits with a config's own where it gives them.
    pub fn with_limits(&self, timeout_ms: Option<u64>, memory_mb: Option<u64>) -> Self {
        Self {
            timeout_ms: timeout_ms.unwrap_or(self.timeout_ms),
            memory_mb: memory_mb.unwrap_or(self.memory_mb),
            ..self.clone()
        }
    }

    /// The same limits with another seed.
    pub fn seeded(&self, seed: u64) -> Self {
        Self {
            seed,
            ..self.clone()
        }
    }

    /// What one plugin instance is started with; a recipe asking which stage kinds the host
    /// runs is told galley-run's.
    pub fn options(&self, grants: Grants) -> InstanceOptions {
        InstanceOptions {
            limits: Limits {
                call_timeout: Duration::from_millis(self.timeout_ms),
                // Saturates rather than wraps; configs are checked against MAX_MEMORY_MB.
                memory_bytes: self.memory_mb.saturating_mul(1 << 20),
                ..Limits::default()
            },
            grants,
            seed: self.seed,
            pool: None,
            stage_kinds: galley_run::STAGE_KINDS
                .iter()
                .map(|k| k.to_string())
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_configs_limits_override_the_flags_and_keep_the_rest() {
        let flags = Sandbox {
            timeout_ms: 500,
            memory_mb: 64,
            seed: 9,
            no_cache: true,
        };
        let s = flags.with_limits(Some(20), None).seeded(3);
        assert_eq!(
            (s.timeout_ms, s.memory_mb, s.seed, s.no_cache),
            (20, 64, 3, true)
        );
        let o = s.options(Grants::default());
        assert_eq!(o.limits.call_timeout, Duration::from_millis(20));
        assert_eq!(o.limits.memory_bytes, 64 << 20);
        assert!(o.stage_kinds.iter().any(|k| k == "grpo"));
    }
}
