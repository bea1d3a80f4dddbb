//! TEST ONLY. A reward plugin that attacks its host in the way its `mode` setting says, so
//! the runtime's containment can be tested against real compiled behaviour, not mocks.
//! Modes that probe a capability return 1.0 when the capability was available (a sandbox
//! hole) and 0.0 when it was denied.

use galley_sdk::reward::{Completion, Reward, RewardInput};
use galley_sdk::{Config, Error, Message, Metadata};
use std::hint::black_box;

struct Hostile {
    mode: String,
    port: u16,
    /// `trap-on`: panic on completions containing this.
    needle: String,
    /// `trap-after`: completions scored fine before it starts panicking.
    after: u64,
    scored: u64,
}

/// Recursion through an opaque function pointer: no tail-call or loop rewrite can remove it,
/// and it keeps nothing in linear memory, so it exhausts the engine's wasm stack.
fn recurse(n: u64, next: fn(u64, fn(u64) -> u64) -> u64) -> u64 {
    next(n + 1, |_| 0).wrapping_mul(3).wrapping_add(n)
}

fn recurse_again(n: u64, _: fn(u64) -> u64) -> u64 {
    recurse(
        n,
        black_box(recurse_again as fn(u64, fn(u64) -> u64) -> u64),
    )
}

/// Recursion with a big local array: in Rust and C that lives on the shadow stack in linear
/// memory, which runs out before the engine's stack does.
fn hog(n: u64) -> u64 {
    let buf = black_box([n; 64]);
    if buf[0] == u64::MAX {
        0
    } else {
        hog(n + 1) + buf[1]
    }
}

impl Reward for Hostile {
    fn new(config: &Config) -> Result<Self, Error> {
        let mode = config.get_str("mode").unwrap_or("ok").to_string();
        if mode == "trap-init" {
            panic!("hostile plugin panicked in init on purpose");
        }
        if mode == "loop-init" {
            let mut i = 0u64;
            loop {
                i = black_box(i.wrapping_add(1));
            }
        }
        let needle = config.get_str("needle").unwrap_or("").to_string();
        let after = config.get_f64("after").unwrap_or(0.0) as u64;
        Ok(Self {
            mode,
            port: config.get_f64("port").unwrap_or(9.0) as u16,
            needle,
            after,
            scored: 0,
        })
    }

    fn score(&mut self, input: &RewardInput) -> Result<Option<f64>, Error> {
        Ok(Some(match self.mode.as_str() {
            "ok" => input.completion.len() as f64,
            // Not attacks: what 0.2 hands over, made visible to the tests.
            "reasoning-chars" => input
                .message
                .reasoning
                .as_ref()
                .map_or(-1.0, |r| r.chars().count() as f64),
            "truncated" => f64::from(u8::from(input.truncated)),
            "tool-calls" => input.message.tool_calls.len() as f64,
            // The number hostile-py and hostile-js compute from what their SDKs hand over.
            "reading" => {
                let calls = &input.message.tool_calls;
                let keys: usize = calls
                    .iter()
                    .filter_map(|c| c.arguments_json())
                    .map(|a| a.len())
                    .sum();
                1000.0 * calls.len() as f64
                    + 100.0 * keys as f64
                    + input
                        .message
                        .reasoning
                        .as_ref()
                        .map_or(0, |r| r.chars().count()) as f64
                    + if input.truncated { 0.5 } else { 0.0 }
            }
            "loop" => {
                let mut i = 0u64;
                loop {
                    i = black_box(i.wrapping_add(1));
                }
            }
            "memory-bomb" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(black_box(vec![1u8; 16 << 20]));
                }
            }
            "recursion" => recurse_again(black_box(0), |_| 0) as f64,
            "stack-hog" => hog(black_box(0)) as f64,
            "trap-score" => panic!("hostile plugin panicked in score on purpose"),
            // Only some samples: the rest score 1.0, so a trainer's skip policy has something to keep.
            "trap-on" => {
                if !self.needle.is_empty() && input.completion.contains(&self.needle) {
                    panic!(
                        "hostile plugin panicked on a completion containing {:?}",
                        self.needle
                    );
                }
                1.0
            }
            "trap-after" => {
                self.scored += 1;
                if self.scored > self.after {
                    panic!("hostile plugin panicked after {} completions", self.after);
                }
                1.0
            }
            "unreachable" => {
                #[cfg(target_family = "wasm")]
                core::arch::wasm32::unreachable();
                #[cfg(not(target_family = "wasm"))]
                unreachable!()
            }
            "read-file" => {
                let probes = [
                    "/etc/passwd",
                    "/proc/self/environ",
                    "/data/secret.txt",
                    "../../etc/passwd",
                    ".",
                ];
                let opened = probes
                    .iter()
                    .filter(|p| std::fs::read(p).is_ok() || std::fs::read_dir(p).is_ok())
                    .count();
                if opened > 0 { 1.0 } else { 0.0 }
            }
            "env" => {
                let seen = std::env::vars().count() + std::env::args().count();
                if seen > 0 { 1.0 } else { 0.0 }
            }
            "clock" => std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs_f64())
                .unwrap_or(-1.0),
            "random" => (wasi::random::random::get_random_u64() >> 11) as f64,
            "socket" => {
                use wasi::sockets::network::{IpAddressFamily, IpSocketAddress, Ipv4SocketAddress};
                let net = wasi::sockets::instance_network::instance_network();
                match wasi::sockets::tcp_create_socket::create_tcp_socket(IpAddressFamily::Ipv4) {
                    Err(e) => {
                        galley_sdk::log::info(&format!("create-tcp-socket refused: {e:?}"));
                        0.0
                    }
                    Ok(sock) => {
                        let addr = IpSocketAddress::Ipv4(Ipv4SocketAddress {
                            port: self.port,
                            address: (127, 0, 0, 1),
                        });
                        match sock.start_connect(&net, addr) {
                            Err(e) => {
                                galley_sdk::log::info(&format!("connect refused: {e:?}"));
                                0.0
                            }
                            Ok(()) => {
                                sock.subscribe().block();
                                if sock.finish_connect().is_ok() {
                                    1.0
                                } else {
                                    0.0
                                }
                            }
                        }
                    }
                }
            }
            "nan" => f64::NAN,
            // Blocks in a host call, not in wasm: epoch interruption alone cannot stop these.
            // The score is the monotonic time the plugin saw pass, in seconds.
            "sleep" => {
                let t = std::time::Instant::now();
                std::thread::sleep(std::time::Duration::from_secs(1_000_000));
                t.elapsed().as_secs_f64()
            }
            "sleep-forever" => {
                let t = wasi::clocks::monotonic_clock::now();
                wasi::clocks::monotonic_clock::subscribe_duration(u64::MAX).block();
                let later = wasi::clocks::monotonic_clock::now();
                later.saturating_sub(t) as f64 / 1e9
            }
            // Waits for a deadline by polling the clock in short sleeps, as a retry loop does.
            "sleep-until" => {
                let t = std::time::Instant::now();
                let mut naps = 0u32;
                while t.elapsed() < std::time::Duration::from_secs(3600) {
                    std::thread::sleep(std::time::Duration::from_secs(60));
                    naps += 1;
                }
                f64::from(naps)
            }
            // Terminal escapes, a carriage return over the line and a forged log line.
            "ansi-error" => {
                return Err(Error::failed(
                    "\x1b[2J\x1b]0;owned\x07\rALL TESTS PASSED\nINFO galley: forged line",
                ));
            }
            "ansi-log" => {
                galley_sdk::log::warn("\x1b[2J\rALL TESTS PASSED\nINFO galley: forged line");
                1.0
            }
            "ansi-panic" => panic!("\x1b[2J\rALL TESTS PASSED\nINFO galley: forged line"),
            "log-flood" => {
                for i in 0..20_000 {
                    galley_sdk::log::info(&format!("line {i} {}", "x".repeat(10_000)));
                }
                1.0
            }
            "stdout-flood" => {
                for i in 0..20_000 {
                    println!("line {i} {}", "y".repeat(100));
                }
                2.0
            }
            other => return Err(Error::config(format!("unknown mode `{other}`"))),
        }))
    }

    fn score_group(
        &mut self,
        prompt: &[Message],
        metadata: &Metadata,
        completions: &[Completion],
    ) -> Result<Vec<Option<f64>>, Error> {
        if self.mode == "wrong-length" {
            return Ok(vec![Some(1.0); completions.len() + 1]);
        }
        if self.mode == "no-opinion-odd" {
            return Ok((0..completions.len())
                .map(|i| if i % 2 == 1 { None } else { Some(1.0) })
                .collect());
        }
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

galley_sdk::export_reward!(Hostile);
