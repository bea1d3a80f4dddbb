//! The compiled-component cache as an attacker who can write it sees it: entries swapped
//! between plugins, code bytes rewritten, entries made under another key, symlinks and FIFOs
//! planted under an entry's name, and a cache folder others can write. Each must end in a
//! recompile (or no cache at all), never in running bytes galley did not compile.

mod common;

use common::*;
use galley_core::RewardFnExt;
use galley_runtime::{CacheOutcome, InstanceOptions, Plugin, Runtime, RuntimeConfig};
use serde_json::json;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

struct Cache {
    dir: tempfile::TempDir,
    key: PathBuf,
}

impl Cache {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("config/cache.key");
        Self { dir, key }
    }

    fn components(&self) -> PathBuf {
        self.dir.path().join("components")
    }

    fn runtime(&self) -> Runtime {
        Runtime::new(RuntimeConfig {
            cache_dir: Some(self.components()),
            cache_key: self.key.clone(),
            ..RuntimeConfig::default()
        })
        .unwrap()
    }

    fn load(&self, name: &str) -> Plugin {
        self.runtime().load(&plugin_path(name)).unwrap()
    }

    /// The one entry file of `plugin` (named by its digest).
    fn entry(&self, plugin: &Plugin) -> PathBuf {
        let hex = plugin
            .info()
            .digest
            .trim_start_matches("sha256:")
            .to_string();
        std::fs::read_dir(self.components())
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| {
                p.file_name().unwrap().to_string_lossy().starts_with(&hex)
                    && p.extension().is_some_and(|e| e == "cwasm")
            })
            .expect("an entry")
    }
}

/// Length penalty's score of a 10-character completion (plain "ok" scoring would be 10 for
/// hostile-reward too, so the two plugins' answers differ).
fn length_penalty(p: &Plugin) -> Option<f64> {
    p.reward(&json!({"max_length": 4}), InstanceOptions::default())
        .unwrap()
        .score_inputs(&[input("0123456789", None)])
        .unwrap()[0]
}

#[test]
fn an_entry_copied_over_another_plugins_is_recompiled_not_run() {
    let c = Cache::new();
    let victim = c.load("length-penalty");
    let expected = length_penalty(&victim);
    let other = c.load("hostile-reward");
    assert_eq!(victim.cache_outcome(), CacheOutcome::Miss);
    std::fs::copy(c.entry(&other), c.entry(&victim)).unwrap();

    let again = c.load("length-penalty");
    assert_eq!(
        again.cache_outcome(),
        CacheOutcome::Miss,
        "swapped entry used"
    );
    assert_eq!(length_penalty(&again), expected);
    // The entry was rewritten with the right code and is trusted again.
    assert_eq!(c.load("length-penalty").cache_outcome(), CacheOutcome::Hit);
}

#[test]
fn rewritten_code_bytes_are_recompiled_not_run() {
    let c = Cache::new();
    let p = c.load("length-penalty");
    let entry = c.entry(&p);
    let mut bytes = std::fs::read(&entry).unwrap();
    // Flip bytes across the artifact, code section included.
    for i in (100..bytes.len()).step_by(bytes.len() / 16) {
        bytes[i] ^= 0xff;
    }
    std::fs::write(&entry, &bytes).unwrap();
    let again = c.load("length-penalty");
    assert_eq!(again.cache_outcome(), CacheOutcome::Miss);
    assert_eq!(length_penalty(&again), length_penalty(&p));
    assert_ne!(std::fs::read(&entry).unwrap(), bytes, "tampered entry kept");
}

#[test]
fn entries_made_under_another_key_are_foreign() {
    let c = Cache::new();
    c.load("length-penalty");
    // Same folder, another user's (or machine's) secret.
    let stranger = Runtime::new(RuntimeConfig {
        cache_dir: Some(c.components()),
        cache_key: c.dir.path().join("elsewhere/cache.key"),
        ..RuntimeConfig::default()
    })
    .unwrap();
    let p = stranger.load(&plugin_path("length-penalty")).unwrap();
    assert_eq!(p.cache_outcome(), CacheOutcome::Miss);
    // The stranger's entry now sits there; under our key it is foreign.
    assert_eq!(c.load("length-penalty").cache_outcome(), CacheOutcome::Miss);
    // And an entry without a tag (an earlier galley's, or one put there by hand) is not
    // trusted either.
    std::fs::remove_file(c.entry(&p).with_extension("tag")).unwrap();
    assert_eq!(c.load("length-penalty").cache_outcome(), CacheOutcome::Miss);
}

#[test]
fn symlinks_and_fifos_under_an_entry_name_are_not_followed() {
    let c = Cache::new();
    let p = c.load("length-penalty");
    let entry = c.entry(&p);
    let elsewhere = c.dir.path().join("planted.cwasm");
    std::fs::rename(&entry, &elsewhere).unwrap();
    std::os::unix::fs::symlink(&elsewhere, &entry).unwrap();
    assert_eq!(c.load("length-penalty").cache_outcome(), CacheOutcome::Miss);
    assert!(
        !std::fs::symlink_metadata(&entry)
            .unwrap()
            .file_type()
            .is_symlink(),
        "the symlink was written through, not replaced"
    );

    std::fs::remove_file(&entry).unwrap();
    let path = std::ffi::CString::new(entry.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(path.as_ptr(), 0o600) }, 0);
    let (tx, rx) = std::sync::mpsc::channel();
    let dir = c.components();
    let key = c.key.clone();
    std::thread::spawn(move || {
        let rt = Runtime::new(RuntimeConfig {
            cache_dir: Some(dir),
            cache_key: key,
            ..RuntimeConfig::default()
        })
        .unwrap();
        let _ = tx.send(
            rt.load(&plugin_path("length-penalty"))
                .unwrap()
                .cache_outcome(),
        );
    });
    let outcome = rx
        .recv_timeout(std::time::Duration::from_secs(60))
        .expect("a FIFO in the cache blocked the load");
    assert_eq!(outcome, CacheOutcome::Miss);
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

#[test]
fn a_cache_folder_others_can_write_is_not_used() {
    let c = Cache::new();
    c.load("length-penalty");
    assert_eq!(
        std::fs::metadata(c.components())
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o700,
        "a new cache folder is private"
    );
    assert_eq!(
        std::fs::metadata(&c.key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    chmod(&c.components(), 0o777);
    assert_eq!(
        c.load("length-penalty").cache_outcome(),
        CacheOutcome::Disabled
    );
    chmod(&c.components(), 0o700);
    assert_eq!(c.load("length-penalty").cache_outcome(), CacheOutcome::Hit);
    // A key others can read is no secret.
    chmod(&c.key, 0o644);
    assert_eq!(
        c.load("length-penalty").cache_outcome(),
        CacheOutcome::Disabled
    );
    chmod(&c.key, 0o600);
    // A symlinked cache folder is refused too.
    let link = c.dir.path().join("link");
    std::os::unix::fs::symlink(c.components(), &link).unwrap();
    let rt = Runtime::new(RuntimeConfig {
        cache_dir: Some(link),
        cache_key: c.key.clone(),
        ..RuntimeConfig::default()
    })
    .unwrap();
    assert_eq!(
        rt.load(&plugin_path("length-penalty"))
            .unwrap()
            .cache_outcome(),
        CacheOutcome::Disabled
    );
}

impl Cache {
    fn bounded(&self, limit: Option<u64>) -> Runtime {
        Runtime::new(RuntimeConfig {
            cache_dir: Some(self.components()),
            cache_key: self.key.clone(),
            cache_limit: limit,
            ..RuntimeConfig::default()
        })
        .unwrap()
    }
}

/// Regression: the cache grew without bound (18 GB of compiled Python plugins after two days
/// of test runs). Past its limit, a new entry pushes out the least recently *used* one: a hit
/// counts as a use, so an entry loaded often outlives one stored after it.
#[test]
fn a_bounded_cache_evicts_the_least_recently_used_entry() {
    let names = ["length-penalty", "exact-match", "arith"];
    // Each entry's size, learnt from an unbounded cache.
    let sizes: Vec<u64> = {
        let c = Cache::new();
        let rt = c.bounded(None);
        names
            .iter()
            .map(|n| {
                let before = rt.cache_usage().unwrap().unwrap().bytes;
                rt.load(&plugin_path(n)).unwrap();
                rt.cache_usage().unwrap().unwrap().bytes - before
            })
            .collect()
    };
    let c = Cache::new();
    // Room for the first entry and either of the others, not for all three.
    let rt = c.bounded(Some(sizes[0] + sizes[1].max(sizes[2])));
    let outcome = |n: &str| rt.load(&plugin_path(n)).unwrap().cache_outcome();
    assert_eq!(outcome(names[0]), CacheOutcome::Miss);
    assert_eq!(outcome(names[1]), CacheOutcome::Miss);
    std::thread::sleep(std::time::Duration::from_millis(20));
    assert_eq!(
        outcome(names[0]),
        CacheOutcome::Hit,
        "the first, used again"
    );
    std::thread::sleep(std::time::Duration::from_millis(20));
    assert_eq!(outcome(names[2]), CacheOutcome::Miss);
    let u = rt.cache_usage().unwrap().unwrap();
    assert_eq!(u.entries, 2, "{u:?}");
    assert!(u.bytes <= u.limit.unwrap(), "{u:?}");
    assert_eq!(
        outcome(names[0]),
        CacheOutcome::Hit,
        "the recently used entry stayed"
    );
    assert_eq!(outcome(names[2]), CacheOutcome::Hit, "the new entry stayed");
    assert_eq!(
        outcome(names[1]),
        CacheOutcome::Miss,
        "the least recently used went"
    );
    // An entry bigger than the whole bound is still stored (and is all that stays).
    let tiny = c.bounded(Some(1));
    assert_eq!(
        tiny.load(&plugin_path(names[1])).unwrap().cache_outcome(),
        CacheOutcome::Hit
    );
    assert_eq!(
        tiny.load(&plugin_path("preference"))
            .unwrap()
            .cache_outcome(),
        CacheOutcome::Miss
    );
    assert_eq!(tiny.cache_usage().unwrap().unwrap().entries, 1);
    // `galley cache prune` with a bound of nothing empties it.
    let p = tiny.prune_cache(Some(0)).unwrap().unwrap();
    assert_eq!((p.removed, p.kept), (1, 0), "{p:?}");
    assert_eq!(
        tiny.load(&plugin_path("preference"))
            .unwrap()
            .cache_outcome(),
        CacheOutcome::Miss
    );
}
