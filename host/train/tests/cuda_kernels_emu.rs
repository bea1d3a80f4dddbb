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
    for t in [5usize, 300] {
        let rows = 2 * t;
        let scale = 0.125f32;
        for ty in Ty::ALL {
            let s = ty.input(rows * t, t as u64);
            let mut p = ty.uninit(rows * t);
            let cfg = LaunchCfg::new((rows as u32, 1, 1), (256, 1, 1), 0);
            ops()
                .launch(
                    &format!("causal_softmax_{}", ty.suffix()),
                    cfg,
                    &mut [
                        Arg::Buf(&mut ty.buf(&s)),
                        Arg::Buf(&mut p),
                        Arg::I32(t as i32),
                        Arg::F32(scale),
                    ],
                )
                .unwrap();
            let mut want = vec![0.0f32; rows * t];
            for r in 0..rows {
                let pos = r % t;
                let x = &s[r * t..][..t];
                let m = x[..=pos].iter().map(|v| v * scale).fold(f32::MIN, f32::max);
                let z: f32 = x[..=pos].iter().map(|v| (v * scale - m).exp()).sum();
                for j in 0..=pos {
                    want[r * t + j] = (x[j] * scale - m).exp() / z;
                }
            }
            let got = ty.read(&p);
            assert_close(&got, &want, ty.tol(), &format!("softmax t={t} {ty:?}"));

            // Backward from the probabilities the forward pass stored.
            let dp = ty.input(rows * t, 7 + t as u64);
            let mut ds = ty.uninit(rows * t);
            ops()
                .launch(
                    &format!("causal_softmax_bwd_{}", ty.suffix()),
                    cfg,
                    &mut [
                        Arg::Buf(&mut ty.buf(&got)),
                        Arg::Buf(&mut ty.buf(&dp)),
                        Arg::Buf(&mut ds),
                        Arg::I32(t as i32),
                        Arg::F32(scale),
                    ],
                )
                .unwrap();
            let mut want = vec![0.0f32; rows * t];
            for r in 0..rows {
                let pos = r % t;
                let o = r * t;
                let dot: f32 = (0..=pos).map(|j| got[o + j] * dp[o + j]).sum();
                for j in 0..=pos {
                    want[o + j] = scale * got[o + j] * (dp[o + j] - dot);
                }
            }
            assert_close(
                &ty.read(&ds),
                &want,
                ty.tol(),
                &format!("softmax backward t={t} {ty:?}"),
            );
        }
    }
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
