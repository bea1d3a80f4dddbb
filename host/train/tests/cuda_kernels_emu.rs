//! galley-train's CUDA kernels (`kernels/*.cu`, the text NVRTC compiles on a GPU) run on the
//! CPU through galley-cuda-emu, against their definitions written in plain Rust, with the
//! launch shapes `ops_cuda` and `optim_cuda` use. `tests/gpu.rs` (under `--features cuda`)
//! runs them on the device.

use galley_cuda_emu::check::{Ty, assert_close, vals};
use galley_cuda_emu::{Arg, Buf, LaunchCfg, Module};
use galley_model::cuda_src::PRELUDE;
use galley_train::cuda_src::{OPS, OPTIM};
use std::sync::OnceLock;

fn ops() -> &'static Module {
    static M: OnceLock<Module> = OnceLock::new();
    M.get_or_init(|| Module::build(&[PRELUDE, OPS]).expect("training kernels compile"))
}

fn optim() -> &'static Module {
    static M: OnceLock<Module> = OnceLock::new();
    M.get_or_init(|| Module::build(&[OPTIM]).expect("optimizer kernels compile"))
}

#[test]
fn causal_softmax_and_its_backward_match_the_definition() {
    // Rows of 5 and 300 keys (the block's 256 threads loop); two heads of a batch of one.
    // Plain, under a sliding window (Gemma's local layers: 3 of 5 keys, 100 of 300), under a
    // soft cap (Gemma 2's, scaled to these scores: 0.05 bends scores of about ±0.125), and
    // both at once.
    for t in [5usize, 300] {
        let rows = 2 * t;
        let scale = 0.125f32;
        let w = if t == 5 { 3 } else { 100 };
        for (window, cap) in [(0i32, 0.0f32), (w, 0.0), (0, 0.05), (w, 0.05)] {
            for ty in Ty::ALL {
                let label = format!("t={t} window {window} cap {cap} {ty:?}");
                softmax_case(ty, (rows, t), (scale, window, cap), &label);
            }
        }
    }
}

/// One causal softmax launch and its backward, against the definition in f64.
fn softmax_case(
    ty: Ty,
    (rows, t): (usize, usize),
    (scale, window, cap): (f32, i32, f32),
    label: &str,
) {
    let s = ty.input(rows * t, t as u64);
    let mut p = ty.uninit(rows * t);
    let cfg = LaunchCfg::new((rows as u32, 1, 1), (256, 1, 1), 0);
    let t32 = t as i32;
    ops()
        .launch(
            &format!("causal_softmax_{}", ty.suffix()),
            cfg,
            &mut [
                Arg::Buf(&mut ty.buf(&s)),
                Arg::Buf(&mut p),
                Arg::I32(t32),
                Arg::F32(scale),
                Arg::I32(window),
                Arg::F32(cap),
            ],
        )
        .unwrap();
    // The score as the softmax sees it, and which keys a row sees.
    let z = |x: f64| -> f64 {
        let x = x * scale as f64;
        match cap > 0.0 {
            true => cap as f64 * (x / cap as f64).tanh(),
            false => x,
        }
    };
    let seen = |pos: usize, j: usize| j <= pos && (window == 0 || pos - j < window as usize);
    let mut want = vec![0.0f32; rows * t];
    for r in 0..rows {
        let pos = r % t;
        let x = &s[r * t..][..t];
        let keys: Vec<usize> = (0..t).filter(|&j| seen(pos, j)).collect();
        let m = keys
            .iter()
            .map(|&j| z(x[j] as f64))
            .fold(f64::MIN, f64::max);
        let total: f64 = keys.iter().map(|&j| (z(x[j] as f64) - m).exp()).sum();
        for &j in &keys {
            want[r * t + j] = ((z(x[j] as f64) - m).exp() / total) as f32;
        }
    }
    let got = ty.read(&p);
    assert_close(&got, &want, ty.tol(), &format!("softmax {label}"));

    // Backward from the probabilities the forward pass stored, and the scores.
    let dp = ty.input(rows * t, 7 + t as u64);
    let mut ds = ty.uninit(rows * t);
    ops()
        .launch(
            &format!("causal_softmax_bwd_{}", ty.suffix()),
            cfg,
            &mut [
                Arg::Buf(&mut ty.buf(&s)),
                Arg::Buf(&mut ty.buf(&got)),
                Arg::Buf(&mut ty.buf(&dp)),
                Arg::Buf(&mut ds),
                Arg::I32(t32),
                Arg::F32(scale),
                Arg::I32(window),
                Arg::F32(cap),
            ],
        )
        .unwrap();
    let mut want = vec![0.0f32; rows * t];
    for r in 0..rows {
        let o = r * t;
        let dot: f64 = (0..t).map(|j| got[o + j] as f64 * dp[o + j] as f64).sum();
        for j in (0..t).filter(|&j| seen(r % t, j)) {
            // The slope of z by central differences: scale, times the cap's where there is one.
            let (x, h) = (s[o + j] as f64, 1e-5);
            let slope = (z(x + h) - z(x - h)) / (2.0 * h);
            want[o + j] = (slope * got[o + j] as f64 * (dp[o + j] as f64 - dot)) as f32;
        }
    }
    assert_close(
        &ty.read(&ds),
        &want,
        ty.tol(),
        &format!("softmax backward {label}"),
    );
}

#[test]
fn the_optimizer_kernels_follow_adamw_sgd_and_a_fixed_order_norm() {
    let n = 3000usize;
    let cfg = LaunchCfg::new((n.div_ceil(256) as u32, 1, 1), (256, 1, 1), 0);
    let (p0, g) = (vals(n, 1), vals(n, 2));
    let m0: Vec<f32> = vals(n, 3).iter().map(|v| v * 0.1).collect();
    let v0: Vec<f32> = vals(n, 4).iter().map(|v| v * v * 0.01).collect();
    // AdamW at step 3 with decoupled weight decay and a clipping scale, as optim_cuda passes
    // it: decay = 1 - lr wd, step = lr / (1 - b1^t), sbc2 = sqrt(1 - b2^t).
    let (lr, wd, b1, b2, eps, t, gscale) = (1e-3f64, 0.1f64, 0.9f64, 0.999f64, 1e-8f64, 3, 0.5f32);
    let (bc1, bc2) = (1.0 - b1.powi(t), 1.0 - b2.powi(t));
    let (mut p, mut m, mut v) = (
        Buf::from_slice(&p0),
        Buf::from_slice(&m0),
        Buf::from_slice(&v0),
    );
    optim()
        .launch(
            "galley_adamw",
            cfg,
            &mut [
                Arg::Buf(&mut p),
                Arg::Buf(&mut Buf::from_slice(&g)),
                Arg::Buf(&mut m),
                Arg::Buf(&mut v),
                Arg::U64(n as u64),
                Arg::F32((1.0 - lr * wd) as f32),
                Arg::F32((lr / bc1) as f32),
                Arg::F32(b1 as f32),
                Arg::F32(b2 as f32),
                Arg::F32((1.0 - b1) as f32),
                Arg::F32((1.0 - b2) as f32),
                Arg::F32(bc2.sqrt() as f32),
                Arg::F32(eps as f32),
                Arg::F32(gscale),
            ],
        )
        .unwrap();
    let (mut wp, mut wm, mut wv) = (vec![0.0; n], vec![0.0; n], vec![0.0; n]);
    for i in 0..n {
        let gi = (g[i] * gscale) as f64;
        let mi = b1 * m0[i] as f64 + (1.0 - b1) * gi;
        let vi = b2 * v0[i] as f64 + (1.0 - b2) * gi * gi;
        let upd = (mi / bc1) / ((vi / bc2).sqrt() + eps);
        wp[i] = (p0[i] as f64 * (1.0 - lr * wd) - lr * upd) as f32;
        wm[i] = mi as f32;
        wv[i] = vi as f32;
    }
    assert_close(&m.to_vec::<f32>(), &wm, 1e-6, "adamw m");
    assert_close(&v.to_vec::<f32>(), &wv, 1e-6, "adamw v");
    assert_close(&p.to_vec::<f32>(), &wp, 1e-6, "adamw p");

    // SGD with momentum 0.9 and without it (then `buf` is never touched).
    for mu in [0.9f32, 0.0] {
        let mut p = Buf::from_slice(&p0);
        let mut buf = Buf::from_slice(&m0);
        optim()
            .launch(
                "galley_sgd",
                cfg,
                &mut [
                    Arg::Buf(&mut p),
                    Arg::Buf(&mut Buf::from_slice(&g)),
                    Arg::Buf(&mut buf),
                    Arg::U64(n as u64),
                    Arg::F32(0.99),
                    Arg::F32(0.01),
                    Arg::F32(mu),
                    Arg::F32(gscale),
                    Arg::I32((mu > 0.0) as i32),
                ],
            )
            .unwrap();
        let d: Vec<f32> = (0..n)
            .map(|i| {
                if mu > 0.0 {
                    mu * m0[i] + g[i] * gscale
                } else {
                    g[i] * gscale
                }
            })
            .collect();
        let want: Vec<f32> = (0..n).map(|i| p0[i] * 0.99 - 0.01 * d[i]).collect();
        assert_close(&p.to_vec::<f32>(), &want, 1e-6, "sgd p");
        let kept = if mu > 0.0 { d } else { m0.clone() };
        assert_close(&buf.to_vec::<f32>(), &kept, 1e-6, "sgd momentum buffer");
    }

    // The norm's partial sums: 7 blocks striding over n; their total is the sum of squares.
    let mut partial = Buf::uninit::<f64>(7);
    optim()
        .launch(
            "galley_sumsq",
            LaunchCfg::new((7, 1, 1), (256, 1, 1), 0),
            &mut [
                Arg::Buf(&mut Buf::from_slice(&g)),
                Arg::U64(n as u64),
                Arg::Buf(&mut partial),
            ],
        )
        .unwrap();
    let got: f64 = partial.to_vec::<f64>().iter().sum();
    let want: f64 = g.iter().map(|&x| (x as f64) * (x as f64)).sum();
    assert!(
        (got - want).abs() < 1e-9 * want,
        "sum of squares {got} vs {want}"
    );
}
