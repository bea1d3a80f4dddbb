//! The data-parallel all-reduce: galley's TCP group (`galley_train::dist::TcpGroup`, the
//! path gradients take between ranks) summing f32 buffers across 2 ranks (or `--ranks N`) on
//! loopback, against PyTorch's gloo backend (`torch.distributed.all_reduce`,
//! `bench/dist_peer.py`) on the same sizes in the same run. Sizes: 1M floats, 16M, and 135M
//! (SmolLM2-135M's gradients).
//!
//!     cargo run --release -p galley-bench --bin dist-bench -- [--python PY] [--ranks N]

use galley_train::dist::{Collective, Placement, TcpGroup};
use std::time::{Duration, Instant};

const SIZES: [usize; 3] = [1 << 20, 16 << 20, 135_000_000];

/// Seconds per all-reduce of `n` floats over `world` ranks (best of 3 after a warm-up).
fn galley(n: usize, world: usize) -> f64 {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let times: Vec<f64> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..world)
            .map(|rank| {
                s.spawn(move || {
                    let p = Placement {
                        rank,
                        world_size: world,
                        local_rank: rank,
                        master: Some(format!("127.0.0.1:{port}")),
                    };
                    let mut g = TcpGroup::connect(&p, "bench", Duration::from_secs(60)).unwrap();
                    let mut buf = vec![rank as f32 + 1.0; n];
                    g.all_reduce_f32(&mut buf).unwrap();
                    (0..3)
                        .map(|_| {
                            let t = Instant::now();
                            g.all_reduce_f32(&mut buf).unwrap();
                            t.elapsed().as_secs_f64()
                        })
                        .fold(f64::INFINITY, f64::min)
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    times.into_iter().fold(0.0, f64::max)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let py = args
        .iter()
        .position(|a| a == "--python")
        .map(|i| args[i + 1].clone())
        .unwrap_or_else(|| "bench/.venv-eval/bin/python".into());
    let world: usize = args
        .iter()
        .position(|a| a == "--ranks")
        .map_or(2, |i| args[i + 1].parse().expect("--ranks N"));
    let sizes: Vec<String> = SIZES.iter().map(|n| n.to_string()).collect();
    let out = std::process::Command::new(&py)
        .arg("bench/dist_peer.py")
        .args(["--ranks", &world.to_string()])
        .args(&sizes)
        .output()
        .expect("running the PyTorch peer");
    assert!(
        out.status.success(),
        "peer: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let peer: Vec<f64> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1)?.parse().ok())
        .collect();
    println!(
        "all-reduce of f32 buffers, {world} ranks on loopback (best of 3; GB/s = buffer bytes / time)"
    );
    println!("| floats | galley TCP group | PyTorch gloo | ratio |");
    println!("| ---: | ---: | ---: | ---: |");
    for (n, p) in SIZES.iter().zip(peer) {
        let g = galley(*n, world);
        let gb = |t: f64| *n as f64 * 4.0 / t / 1e9;
        println!(
            "| {n} | {:.1} ms ({:.2} GB/s) | {:.1} ms ({:.2} GB/s) | {:.2}x |",
            g * 1e3,
            gb(g),
            p * 1e3,
            gb(p),
            p / g
        );
    }
}
