//! Environment plugins (`galley:plugin@0.4.0`'s environment world) through the real runtime:
//! the first-party Wordle built from source, and a hostile environment that keeps a counter
//! per episode and panics, spins, hoards memory, floods the prompt and returns NaN. What the
//! host promises: every episode is an instance of its own (one rollout's state is never
//! another's), an episode that trapped is over rather than silently restarted with its state
//! gone, and the others go on.

mod common;

use common::{assert_host_healthy, load, opts};
use galley_core::{Environment, Episode, FunctionCall, PluginError, PluginErrorKind as K};
use serde_json::json;

fn one(e: &mut impl Episode, name: &str, arguments: &str) -> Result<String, PluginError> {
    let mut out = e.call(&[FunctionCall { name, arguments }])?;
    assert_eq!(out.len(), 1);
    out.remove(0)
}

fn guess(e: &mut impl Episode, word: &str) -> Result<String, PluginError> {
    one(e, "guess", &json!({ "word": word }).to_string())
}

#[test]
fn wordle_plays_a_game_per_episode() {
    let p = load("wordle");
    assert_eq!(p.kind(), galley_core::PluginKind::Environment);
    assert_eq!(p.wit_version(), &semver::Version::new(0, 4, 0));
    let env = p
        .environment(&json!({"max_guesses": 4}), opts(2_000, 64))
        .unwrap();
    assert_eq!(env.functions().len(), 1);
    assert_eq!(env.functions()[0].name, "guess");
    // Two games at once, one secret from the row and one from the seed.
    let (mut a, shown) = env.episode(&json!({"word": "crane"}), 7).unwrap();
    let rules = shown.expect("the rules are appended to the prompt");
    assert!(rules.contains("at most 4 guesses"), "{rules}");
    let (mut b, _) = env.episode(&json!({"word": "plate"}), 7).unwrap();
    assert_eq!(
        guess(&mut a, "trace").unwrap(),
        "TRACE: _ G G Y G (3 guesses left)"
    );
    assert_eq!(
        guess(&mut b, "trace").unwrap(),
        "TRACE: Y _ G _ G (3 guesses left)"
    );
    assert_eq!(
        guess(&mut a, "crane").unwrap(),
        "CRANE: G G G G G, solved in 2 guesses"
    );
    assert_eq!(a.reward().unwrap(), Some(1.0));
    // b's game is its own: one guess made, two greens at best.
    assert_eq!(b.reward().unwrap(), Some(0.2));
    // The model's mistakes are answered in the game's words, the call's fault...
    let e = guess(&mut b, "xyz").unwrap_err();
    assert_eq!(e.kind, K::InvalidInput);
    assert!(e.message.contains("not a five-letter word"), "{e}");
    // ...and a call that breaks the schema never reaches it.
    let e = one(&mut b, "guess", r#"{"word": "plate", "cheat": true}"#).unwrap_err();
    assert_eq!(e.kind, K::InvalidInput);
    let e = one(&mut b, "reveal", "{}").unwrap_err();
    assert!(e.message.contains("no function named `reveal`"), "{e}");
    // The same row and seed start the same game (the host relies on it for a group).
    let (mut c, _) = env.episode(&json!({}), 11).unwrap();
    let (mut d, _) = env.episode(&json!({}), 11).unwrap();
    assert_eq!(
        guess(&mut c, "about").unwrap(),
        guess(&mut d, "about").unwrap()
    );
}

#[test]
fn bad_settings_and_rows_name_the_plugin_and_call() {
    let p = load("wordle");
    let e = p
        .environment(&json!({"max_guesses": 0}), opts(2_000, 64))
        .err()
        .unwrap();
    assert_eq!((e.kind, e.call.as_str()), (K::InvalidConfig, "init"));
    assert!(e.to_string().contains("wordle@0.1.0"), "{e}");
    assert!(e.message.contains("max_guesses"), "{e}");
    let env = p.environment(&json!({}), opts(2_000, 64)).unwrap();
    let e = env.episode(&json!({"word": 42}), 0).err().unwrap();
    assert_eq!((e.kind, e.call.as_str()), (K::InvalidInput, "reset"));
    assert!(e.message.contains("`word`"), "{e}");
}

#[test]
fn other_kinds_are_not_environments() {
    let e = load("calculator")
        .environment(&json!({}), opts(2_000, 64))
        .err()
        .unwrap();
    assert!(e.message.contains("environment"), "{e}");
    let e = load("wordle")
        .tool(&json!({}), opts(2_000, 64))
        .err()
        .unwrap();
    assert!(e.message.contains("tool"), "{e}");
}

fn hostile(mode: &str, timeout_ms: u64) -> galley_runtime::WasmEnvironment {
    load("hostile-env")
        .environment(&json!({ "mode": mode }), opts(timeout_ms, 64))
        .unwrap()
}

#[test]
fn episodes_share_no_state() {
    let env = hostile("ok", 2_000);
    let (mut a, shown) = env.episode(&json!({"tag": "t"}), 5).unwrap();
    assert_eq!(
        shown.as_deref(),
        Some(" [t 5]"),
        "the row and seed reach reset"
    );
    let (mut b, _) = env.episode(&json!({}), 5).unwrap();
    for n in 1..=3 {
        assert_eq!(one(&mut a, "bump", "{}").unwrap(), n.to_string());
    }
    assert_eq!(one(&mut b, "bump", "{}").unwrap(), "1");
    // One turn's calls cross together and see each other's effects, in order.
    let two = [FunctionCall {
        name: "bump",
        arguments: "{}",
    }; 2];
    let out: Vec<String> = b
        .call(&two)
        .unwrap()
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert_eq!(out, ["2", "3"]);
    assert_eq!(a.reward().unwrap(), Some(3.0));
    assert_eq!(b.reward().unwrap(), Some(3.0));
    // A new episode starts from nothing.
    let (mut c, _) = env.episode(&json!({}), 5).unwrap();
    assert_eq!(c.reward().unwrap(), Some(0.0));
}

#[test]
fn a_trapped_episode_is_over_and_the_others_go_on() {
    let env = hostile("trap", 2_000);
    let (mut a, _) = env.episode(&json!({}), 0).unwrap();
    let (mut b, _) = env.episode(&json!({}), 0).unwrap();
    let e = one(&mut a, "bump", "{}").unwrap_err();
    assert_eq!(e.kind, K::Trap, "{e}");
    assert!(e.message.contains("panicked on purpose"), "{e}");
    // Not restarted with its state gone: every later call of that episode fails.
    let e = a.reward().unwrap_err();
    assert_eq!(e.kind, K::Failed);
    assert!(e.message.contains("episode ended"), "{e}");
    let e = one(&mut a, "bump", "{}").unwrap_err();
    assert!(e.message.contains("episode ended"), "{e}");
    // The other episode has its own instance.
    assert_eq!(b.reward().unwrap(), Some(0.0));
    assert_host_healthy();
}

#[test]
fn a_spinning_episode_is_stopped_at_its_budget() {
    let env = hostile("loop", 300);
    let (mut a, _) = env.episode(&json!({}), 0).unwrap();
    let t0 = std::time::Instant::now();
    let e = one(&mut a, "bump", "{}").unwrap_err();
    assert_eq!(e.kind, K::Timeout, "{e}");
    assert!(
        t0.elapsed() < std::time::Duration::from_secs(30),
        "held the host for {:?}",
        t0.elapsed()
    );
    assert!(a.reward().unwrap_err().message.contains("episode ended"));
}

#[test]
fn an_episode_that_hoards_memory_hits_its_cap() {
    let env = hostile("grow", 10_000);
    let (mut a, _) = env.episode(&json!({}), 0).unwrap();
    let e = one(&mut a, "bump", "{}").unwrap_err();
    assert_eq!(e.kind, K::OutOfMemory, "{e}");
    assert!(e.message.contains("memory cap of 64 MiB"), "{e}");
    // A fresh episode of the same environment starts within its cap again.
    let (mut b, _) = env.episode(&json!({}), 0).unwrap();
    assert_eq!(b.reward().unwrap(), Some(0.0));
}

#[test]
fn a_flooded_prompt_and_a_nan_score_are_refused() {
    let e = hostile("huge", 2_000).episode(&json!({}), 0).err().unwrap();
    assert_eq!((e.kind, e.call.as_str()), (K::BadOutput, "reset"));
    assert!(e.message.contains("1048576 bytes"), "{e}");
    let (mut a, _) = hostile("nan", 2_000).episode(&json!({}), 0).unwrap();
    let e = a.reward().unwrap_err();
    assert_eq!((e.kind, e.call.as_str()), (K::BadOutput, "reward"));
    assert!(e.message.contains("non-finite"), "{e}");
}

/// A TRL-style environment class in Python (`@environment`): its public methods are the
/// functions, typed from their hints and docstrings; `reset` gets the row's columns and the
/// seed; TRL's `get_reward` scores; each episode is an instance of its own.
#[test]
fn python_environments_are_trl_classes() {
    let env = load("env-py")
        .environment(&json!({"target": 9}), opts(10_000, 256))
        .unwrap();
    let names: Vec<&str> = env.functions().iter().map(|f| f.name.as_str()).collect();
    assert_eq!(
        names,
        ["move", "peek"],
        "no reset, reward or private method"
    );
    let mv = &env.functions()[0];
    assert_eq!(mv.description, "Moves the counter.");
    assert_eq!(mv.parameters["properties"]["by"]["type"], "integer");
    assert_eq!(
        mv.parameters["properties"]["direction"]["enum"],
        json!(["up", "down"])
    );
    assert_eq!(mv.parameters["required"], json!(["by"]));
    let (mut a, shown) = env.episode(&json!({"start": 7}), 3).unwrap();
    assert_eq!(
        shown.as_deref(),
        Some(" The counter is at 7; bring it to 9 (seed 3).")
    );
    let (mut b, _) = env.episode(&json!({}), 3).unwrap();
    assert_eq!(
        one(&mut a, "move", r#"{"by": 2}"#).unwrap(),
        "the counter is at 9"
    );
    assert_eq!(one(&mut b, "peek", "{}").unwrap(), "0");
    // The schema's types are the host's to check; the method's own rule, the plugin's.
    let e = one(&mut a, "move", r#"{"by": "two"}"#).unwrap_err();
    assert_eq!(e.kind, K::InvalidInput);
    let e = one(&mut a, "move", r#"{"by": 9}"#).unwrap_err();
    assert!(e.message.contains("at most 5"), "{e}");
    assert_eq!(a.reward().unwrap(), Some(1.0));
    assert_eq!(b.reward().unwrap(), Some(0.0));
}

/// A GRPO step keeps one episode per rollout alive until it is scored: a step of 600
/// rollouts (more than the 256 instances the runtime once allowed at once) starts them all.
#[test]
fn a_big_steps_episodes_are_alive_together() {
    let env = load("wordle")
        .environment(&json!({}), opts(2_000, 64))
        .unwrap();
    let mut alive = Vec::new();
    for i in 0..600 {
        alive.push(env.episode(&json!({}), i).unwrap().0);
    }
    for e in alive.iter_mut().step_by(97) {
        assert!(guess(e, "crane").unwrap().starts_with("CRANE: "));
    }
}

/// Each episode has its own cap, and all of an environment's episodes share one budget: a
/// plugin whose every episode grows to its cap cannot hold cap x rollouts.
#[test]
fn episodes_share_one_memory_budget() {
    let pool = galley_runtime::MemoryPool::new(30 << 20);
    let env = load("hostile-env")
        .environment(
            &json!({"mode": "hold"}),
            galley_runtime::InstanceOptions {
                pool: Some(pool.clone()),
                ..opts(10_000, 64)
            },
        )
        .unwrap();
    let (mut a, _) = env.episode(&json!({}), 0).unwrap();
    let (mut b, _) = env.episode(&json!({}), 0).unwrap();
    for _ in 0..2 {
        one(&mut a, "bump", "{}").unwrap();
    }
    one(&mut b, "bump", "{}").unwrap();
    // b is far below its own 64 MiB, but a and b together would pass 30.
    let e = one(&mut b, "bump", "{}").unwrap_err();
    assert_eq!(e.kind, K::OutOfMemory, "{e}");
    assert!(e.message.contains("shared memory budget of 30 MiB"), "{e}");
    assert!(e.message.contains("episodes_memory_mb"), "{e}");
    // b's instance is gone and gave its memory back; a goes on.
    assert_eq!(a.reward().unwrap(), Some(2.0));
    drop(a);
    let (mut c, _) = env.episode(&json!({}), 0).unwrap();
    for _ in 0..3 {
        one(&mut c, "bump", "{}").unwrap();
    }
    drop(c);
    assert_eq!(env.pool().used(), 0, "every episode's memory went back");
}
