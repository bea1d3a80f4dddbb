//! The hostile-plugin suite: purpose-built components that loop, hoard memory, recurse,
//! trap in every export, probe for files, environment, sockets, clocks, and return garbage.
//! Each must be contained with an error naming the plugin, the call and the limit, and a
//! well-behaved plugin in the same host must work afterwards.

mod common;

use common::*;
use galley_core::{
    DataSource, Evaluator, Metric, PluginError, PluginErrorKind as K, Prediction, Recipe,
    RewardFnExt, Value,
};
use galley_runtime::{Grants, InstanceOptions};
use serde_json::json;

fn hostile(mode: &str, opts: InstanceOptions) -> galley_runtime::WasmReward {
    load("hostile-reward")
        .reward(&json!({"mode": mode}), opts)
        .unwrap()
}

fn score_err(mode: &str, opts: InstanceOptions) -> PluginError {
    let mut r = hostile(mode, opts);
    let err = r
        .score_inputs(&[input("x", None)])
        .expect_err("the attack must fail");
    assert!(
        err.to_string()
            .starts_with("plugin hostile-reward@0.1.0: score: "),
        "{err}"
    );
    err
}

fn score_ok(mode: &str, opts: InstanceOptions) -> Option<f64> {
    hostile(mode, opts)
        .score_inputs(&[input("x", None)])
        .unwrap()[0]
}

#[test]
fn infinite_loop_is_stopped_at_its_time_budget() {
    let err = score_err("loop", opts(300, 64));
    assert_eq!(err.kind, K::Timeout);
    assert!(err.message.contains("time budget of 300.0ms"), "{err}");
    assert_host_healthy();
}

#[test]
fn infinite_loop_in_init_is_stopped_too() {
    let err = load("hostile-reward")
        .reward(&json!({"mode": "loop-init"}), opts(300, 64))
        .err()
        .unwrap();
    assert_eq!((err.kind, err.call.as_str()), (K::Timeout, "init"));
    assert_host_healthy();
}

#[test]
fn looping_plugin_does_not_block_other_plugins() {
    let looping = std::thread::spawn(|| score_err("loop", opts(3_000, 64)));
    std::thread::sleep(std::time::Duration::from_millis(200));
    // While the other thread's plugin spins, this one is served.
    assert_host_healthy();
    assert_eq!(looping.join().unwrap().kind, K::Timeout);
}

#[test]
fn memory_bomb_hits_the_cap() {
    let err = score_err("memory-bomb", opts(10_000, 64));
    assert_eq!(err.kind, K::OutOfMemory);
    assert!(err.message.contains("memory cap of 64 MiB"), "{err}");
    assert_host_healthy();
}

#[test]
fn deep_recursion_is_a_stack_overflow() {
    let err = score_err("recursion", opts(10_000, 64));
    assert_eq!(err.kind, K::Trap);
    assert!(err.message.contains("stack overflow"), "{err}");
    // A deep shadow stack (locals in linear memory) runs off the bottom of memory instead.
    let err = score_err("stack-hog", opts(10_000, 64));
    assert_eq!(err.kind, K::Trap);
    assert!(
        err.message.contains("out of bounds memory access") && err.message.contains("shadow stack"),
        "{err}"
    );
    assert_host_healthy();
}

#[test]
fn traps_in_every_export_carry_the_panic_message() {
    let err = load("hostile-reward")
        .reward(&json!({"mode": "trap-init"}), InstanceOptions::default())
        .err()
        .unwrap();
    assert_eq!((err.kind, err.call.as_str()), (K::Trap, "init"));
    assert!(err.message.contains("panicked in init on purpose"), "{err}");

    let err = score_err("trap-score", InstanceOptions::default());
    assert_eq!(err.kind, K::Trap);
    assert!(
        err.message.contains("panicked in score on purpose"),
        "{err}"
    );

    let err = score_err("unreachable", InstanceOptions::default());
    assert!(err.message.contains("unreachable"), "{err}");

    let err = load("hostile-loader")
        .data_loader(&json!({"mode": "trap-init"}), granted_tmp().1)
        .err()
        .unwrap();
    assert!(err.message.contains("panicked in init"), "{err}");
    let (_dir, o) = granted_tmp();
    let err = load("hostile-loader")
        .data_loader(&json!({"mode": "trap-next"}), o)
        .unwrap()
        .next_page(4)
        .unwrap_err();
    assert_eq!((err.kind, err.call.as_str()), (K::Trap, "next-page"));

    let ev = load("hostile-evaluator");
    let err = ev
        .evaluator(&json!({"mode": "trap-init"}), InstanceOptions::default())
        .err()
        .unwrap();
    assert_eq!(err.call, "init");
    let pred = Prediction {
        prediction: "a".into(),
        references: vec!["a".into()],
        ..Default::default()
    };
    let err = ev
        .evaluator(&json!({"mode": "trap-score"}), InstanceOptions::default())
        .unwrap()
        .score(&[pred])
        .unwrap_err();
    assert_eq!((err.kind, err.call.as_str()), (K::Trap, "score"));
    let err = ev
        .evaluator(
            &json!({"mode": "trap-aggregate"}),
            InstanceOptions::default(),
        )
        .unwrap()
        .aggregate(&[vec![Metric::new("score", 1.0)]])
        .unwrap_err();
    assert_eq!((err.kind, err.call.as_str()), (K::Trap, "aggregate"));

    let rc = load("hostile-recipe");
    let err = rc
        .recipe(InstanceOptions::default())
        .unwrap()
        .plan(&json!({"mode": "trap-plan"}))
        .unwrap_err();
    assert_eq!((err.kind, err.call.as_str()), (K::Trap, "plan"));
    let mut r = rc.recipe(InstanceOptions::default()).unwrap();
    r.plan(&json!({"mode": "trap-metrics"})).unwrap();
    let err = r.on_metrics("only", 1, &[]).unwrap_err();
    assert_eq!((err.kind, err.call.as_str()), (K::Trap, "on-metrics"));
    assert_host_healthy();
}

#[test]
fn a_trapped_instance_is_replaced_not_reused() {
    // After a trap the adapter re-instantiates: the plugin keeps serving the same way.
    let mut r = hostile("trap-score", InstanceOptions::default());
    for _ in 0..3 {
        assert_eq!(
            r.score_inputs(&[input("x", None)]).unwrap_err().kind,
            K::Trap
        );
    }
    let mut ok = hostile("ok", InstanceOptions::default());
    assert_eq!(
        ok.score_inputs(&[input("abc", None)]).unwrap(),
        vec![Some(3.0)]
    );
}

#[test]
fn files_outside_grants_are_invisible() {
    assert_eq!(score_ok("read-file", InstanceOptions::default()), Some(0.0));
}

#[test]
fn the_environment_is_empty() {
    // SAFETY: tests in this binary only read the environment.
    assert!(
        std::env::vars().count() > 0,
        "the host has an environment to leak"
    );
    assert_eq!(score_ok("env", InstanceOptions::default()), Some(0.0));
}

#[test]
fn the_wall_clock_reads_the_epoch() {
    assert_eq!(score_ok("clock", InstanceOptions::default()), Some(0.0));
}

#[test]
fn randomness_is_seeded_by_the_host() {
    let with_seed = |seed| {
        score_ok(
            "random",
            InstanceOptions {
                seed,
                ..Default::default()
            },
        )
    };
    assert_eq!(with_seed(1), with_seed(1));
    assert_ne!(with_seed(1), with_seed(2));
}

#[test]
fn sockets_are_denied() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut r = load("hostile-reward")
        .reward(
            &json!({"mode": "socket", "port": port}),
            InstanceOptions::default(),
        )
        .unwrap();
    assert_eq!(
        r.score_inputs(&[input("x", None)]).unwrap(),
        vec![Some(0.0)]
    );
    match listener.accept() {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        other => panic!("the plugin reached the host's socket: {other:?}"),
    }
}

#[test]
fn garbage_outputs_are_rejected() {
    let mut r = hostile("wrong-length", InstanceOptions::default());
    let err = r
        .score_inputs(&[input("a", None), input("b", None)])
        .unwrap_err();
    assert_eq!(err.kind, K::BadOutput);
    assert!(err.message.contains("3 scores for a batch of 2"), "{err}");

    let err = score_err("nan", InstanceOptions::default());
    assert_eq!(err.kind, K::BadOutput);
    assert!(err.message.contains("non-finite"), "{err}");

    let (_dir, o) = granted_tmp();
    let err = load("hostile-loader")
        .data_loader(&json!({"mode": "too-many"}), o)
        .unwrap()
        .next_page(4)
        .unwrap_err();
    assert_eq!(err.kind, K::BadOutput);
    assert!(err.message.contains("9 examples when at most 4"), "{err}");

    let pred = Prediction {
        prediction: "a".into(),
        references: vec!["a".into()],
        ..Default::default()
    };
    let err = load("hostile-evaluator")
        .evaluator(&json!({"mode": "nan"}), InstanceOptions::default())
        .unwrap()
        .score(&[pred])
        .unwrap_err();
    assert_eq!(err.kind, K::BadOutput);

    let err = load("hostile-recipe")
        .recipe(InstanceOptions::default())
        .unwrap()
        .plan(&json!({"mode": "duplicate"}))
        .unwrap_err();
    assert!(err.message.contains("two stages are named `a`"), "{err}");
    assert_host_healthy();
}

#[test]
fn no_opinion_is_kept_per_item() {
    let mut r = hostile("no-opinion-odd", InstanceOptions::default());
    let got = r
        .score_inputs(&[input("a", None), input("b", None), input("c", None)])
        .unwrap();
    assert_eq!(got, vec![Some(1.0), None, Some(1.0)]);
}

#[test]
fn a_gigabyte_string_return_is_contained() {
    let (_dir, mut o) = granted_tmp();
    o.limits.call_timeout = std::time::Duration::from_secs(20);
    let err = load("hostile-loader")
        .data_loader(&json!({"mode": "huge-string"}), o)
        .unwrap()
        .next_page(1)
        .unwrap_err();
    assert_eq!(err.kind, K::OutOfMemory);
    assert!(
        err.message.contains("memory cap of 256 MiB") && err.message.contains("1.0 GiB"),
        "{err}"
    );
    assert_host_healthy();
}

#[test]
fn log_and_stdout_floods_are_bounded() {
    assert_eq!(score_ok("log-flood", opts(20_000, 64)), Some(1.0));
    assert_eq!(score_ok("stdout-flood", opts(20_000, 64)), Some(2.0));
}

fn granted_tmp() -> (tempfile::TempDir, InstanceOptions) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("secret.txt"), "granted content").unwrap();
    let opts = InstanceOptions {
        grants: Grants::default().allow_dir("data", dir.path()),
        ..Default::default()
    };
    (dir, opts)
}

/// A 0.2 loader's tool calls are data the host renders into prompts and logs: identifiers
/// (call ids, function names, a tool turn's call id and name) arrive escaped and capped, and
/// the arguments as written (the chat template and the data checks read them as JSON).
#[test]
fn a_loaders_tool_call_identifiers_are_escaped_and_capped() {
    let (_dir, o) = granted_tmp();
    let page = load("hostile-loader")
        .data_loader(&json!({"mode": "forged-calls"}), o)
        .unwrap()
        .next_page(1)
        .unwrap();
    let m = &page[0].messages;
    let call = &m[1].tool_calls[0];
    for ident in [
        call.id.as_deref().unwrap(),
        call.name.as_str(),
        m[2].tool_call_id.as_deref().unwrap(),
        m[2].name.as_deref().unwrap(),
    ] {
        assert!(ident.len() <= 256 + 32, "{} bytes", ident.len());
        assert!(!galley_core::text::has_control(ident), "{ident:?}");
    }
    assert!(
        call.name.starts_with("get\\u{1b}[2J\\nINFO"),
        "{}",
        call.name
    );
    assert!(call.name.contains("more bytes]"), "{}", call.name);
    assert_eq!(call.arguments, "{\"city\": ");
    assert_host_healthy();
}

#[test]
fn a_read_only_grant_cannot_be_escaped_or_written() {
    let (dir, o) = granted_tmp();
    let page = load("hostile-loader")
        .data_loader(&json!({"mode": "escape"}), o)
        .unwrap()
        .next_page(1)
        .unwrap();
    let m = &page[0].metadata;
    assert_eq!(m["granted"], Value::Text("granted content".into()));
    for key in ["dotdot", "absolute", "relative"] {
        let Value::Text(t) = &m[key] else {
            panic!("{key}")
        };
        assert!(t.starts_with("denied"), "{key}: {t}");
    }
    assert_eq!(m["wrote"], Value::Bool(false));
    assert!(!dir.path().join("pwned.txt").exists());
}

/// Runs `f` on its own thread and fails (instead of hanging the suite) if it has not
/// returned within a minute: the attacks below hang the host when the defence is missing.
fn within_a_minute<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(std::time::Duration::from_secs(60))
        .unwrap_or_else(|_| panic!("{what}: the host was still blocked after a minute"))
}

#[test]
fn sleeping_in_a_host_call_returns_at_once_on_a_virtual_clock() {
    // A 10^6 s sleep, a wait on a pollable that never fires, and a retry loop that naps until
    // an hour has passed: each ends at once, and the plugin sees the time it asked for pass.
    let slept = within_a_minute("sleep", || score_ok("sleep", opts(2_000, 64)));
    assert!(slept.unwrap() >= 1e6, "{slept:?}");
    let forever = within_a_minute("sleep-forever", || {
        score_ok("sleep-forever", opts(2_000, 64))
    });
    assert!(forever.unwrap() > 1e9, "{forever:?}");
    let naps = within_a_minute("sleep-until", || score_ok("sleep-until", opts(2_000, 64)));
    assert_eq!(naps, Some(60.0));
    assert_host_healthy();
}

#[test]
fn a_fifo_in_a_granted_folder_is_refused_not_waited_on() {
    let (dir, o) = granted_tmp();
    let fifo = dir.path().join("fifo");
    let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo");
    let page = within_a_minute("fifo", move || {
        load("hostile-loader")
            .data_loader(&json!({"mode": "fifo"}), o)
            .unwrap()
            .next_page(1)
            .unwrap()
    });
    let m = &page[0].metadata;
    let Value::Text(t) = &m["fifo"] else {
        panic!("{m:?}")
    };
    assert!(t.starts_with("denied"), "{t}");
    // The regular file beside it still reads: only the FIFO is refused.
    assert_eq!(m["plain"], Value::Text("granted content".into()));
    assert_host_healthy();
}

#[test]
fn plugin_text_is_escaped_before_it_can_reach_a_terminal() {
    let forged = "\\u{1b}[2J";
    for mode in ["ansi-error", "ansi-panic"] {
        let err = score_err(mode, opts(2_000, 64));
        let msg = err.to_string();
        assert!(!galley_core::text::has_control(&msg), "{mode}: {msg:?}");
        assert!(msg.contains(forged), "{mode}: {msg}");
        // The carriage return shows as `\r`; the newline as `\n` (or, in an output tail,
        // as the ` | ` that joins its lines): either way the forged line stays inside ours.
        assert!(msg.contains("\\rALL TESTS PASSED"), "{mode}: {msg}");
        assert!(
            msg.contains("\\nINFO galley: forged") || msg.contains(" | INFO galley: forged"),
            "{mode}: {msg}"
        );
    }
    assert_eq!(score_ok("ansi-log", opts(2_000, 64)), Some(1.0));
}
