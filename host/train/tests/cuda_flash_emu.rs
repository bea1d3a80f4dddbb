//! The fused causal attention kernels (`kernels/flash.cu`) run on the CPU through
//! galley-cuda-emu, with the launch shapes `flash_cuda` uses, against attention written out
//! in f64: outputs, log-sum-exps, and dQ, dK, dV of a weighted sum, in f32 and bf16, for
//! grouped query heads and lengths that end inside a key chunk and a row tile, plain and with
//! Gemma's sliding window and soft cap.

use galley_cuda_emu::check::Ty;
use galley_cuda_emu::{Arg, Buf, LaunchCfg, Module};
use galley_model::cuda_src::PRELUDE;
use galley_train::cuda_src::{self, FLASH, Launch2};
use std::sync::OnceLock;

fn module() -> &'static Module {
    static M: OnceLock<Module> = OnceLock::new();
    M.get_or_init(|| Module::build(&[PRELUDE, FLASH]).expect("attention kernels compile"))
}

fn cfg(l: Launch2) -> LaunchCfg {
    let mut c = LaunchCfg::new((l.grid.0, l.grid.1, 1), (l.block, 1, 1), l.shared_bytes);
    // As `flash_cuda` raises the kernel's limit first (the emulation refuses it otherwise).
    c.shared_opt_in = l.opt_in();
    c
}

/// ||a - b|| / ||b||.
fn rel_err(a: &[f32], b: &[f64]) -> f64 {
    let num: f64 = a.iter().zip(b).map(|(&x, &y)| (x as f64 - y).powi(2)).sum();
    let den: f64 = b.iter().map(|y| y * y).sum();
    (num / den.max(1e-30)).sqrt()
}

struct Reference {
    o: Vec<f64>,
    lse: Vec<f64>,
    dq: Vec<f64>,
    dk: Vec<f64>,
    dv: Vec<f64>,
}

/// One shape: (batch x kv heads, group, length, head dim), the sliding window (0: none) and
/// the soft cap (0: none).
#[derive(Debug, Clone, Copy)]
struct Case {
    bkv: usize,
    g: usize,
    t: usize,
    d: usize,
    window: usize,
    cap: f64,
}

/// Attention in f64 over the grouped layout, and the gradients for output gradient `dout`.
fn reference(q: &[f32], k: &[f32], v: &[f32], dout: &[f32], c: Case, scale: f64) -> Reference {
    let Case { bkv, g, t, d, .. } = c;
    let seen = |pos: usize, j: usize| j <= pos && (c.window == 0 || pos - j < c.window);
    // A scaled score under the cap, and the cap's slope there.
    let capped = |x: f64| -> (f64, f64) {
        match c.cap > 0.0 {
            true => {
                let th = (x / c.cap).tanh();
                (c.cap * th, 1.0 - th * th)
            }
            false => (x, 1.0),
        }
    };
    let r_all = g * t;
    let mut out = Reference {
        o: vec![0.0; bkv * r_all * d],
        lse: vec![0.0; bkv * r_all],
        dq: vec![0.0; bkv * r_all * d],
        dk: vec![0.0; bkv * t * d],
        dv: vec![0.0; bkv * t * d],
    };
    for bh in 0..bkv {
        for r in 0..r_all {
            let pos = r % t;
            let qr = &q[(bh * r_all + r) * d..][..d];
            let dor = &dout[(bh * r_all + r) * d..][..d];
            // Unseen keys: score -inf, probability 0, slope 0.
            let (s, slope): (Vec<f64>, Vec<f64>) = (0..=pos)
                .map(|j| match seen(pos, j) {
                    true => capped(
                        (0..d)
                            .map(|x| qr[x] as f64 * k[(bh * t + j) * d + x] as f64)
                            .sum::<f64>()
                            * scale,
                    ),
                    false => (f64::NEG_INFINITY, 0.0),
                })
                .unzip();
            let m = s.iter().cloned().fold(f64::MIN, f64::max);
            let z: f64 = s.iter().map(|x| (x - m).exp()).sum();
            let p: Vec<f64> = s.iter().map(|x| (x - m).exp() / z).collect();
            out.lse[bh * r_all + r] = m + z.ln();
            let o = &mut out.o[(bh * r_all + r) * d..][..d];
            for j in 0..=pos {
                for x in 0..d {
                    o[x] += p[j] * v[(bh * t + j) * d + x] as f64;
                }
            }
            let dr: f64 = (0..d).map(|x| dor[x] as f64 * o[x]).sum();
            for j in 0..=pos {
                let dp: f64 = (0..d)
                    .map(|x| dor[x] as f64 * v[(bh * t + j) * d + x] as f64)
                    .sum();
                let ds = p[j] * (dp - dr) * slope[j];
                for x in 0..d {
                    out.dv[(bh * t + j) * d + x] += p[j] * dor[x] as f64;
                    out.dq[(bh * r_all + r) * d + x] += scale * ds * k[(bh * t + j) * d + x] as f64;
                    out.dk[(bh * t + j) * d + x] += scale * ds * qr[x] as f64;
                }
            }
        }
    }
    out
}

#[test]
fn flash_attention_forward_and_backward_match_attention_in_f64() {
    // Rows end mid-tile (3 x 37 = 111), keys mid-chunk (37, 70, 100); d = 32 (one dimension
    // per lane), 64 (two), 160 and 256. Gemma's attention: windows that skip whole key chunks for the
    // later rows (34 of 100 keys), one narrower than a chunk (5), and soft caps scaled to
    // these scores (about ±0.3 after the scale), alone and with a window.
    let plain = |bkv, g, t, d| Case {
        bkv,
        g,
        t,
        d,
        window: 0,
        cap: 0.0,
    };
    for c in [
        plain(2, 3, 37, 64),
        plain(1, 1, 70, 32),
        Case {
            window: 34,
            ..plain(1, 2, 100, 32)
        },
        Case {
            window: 5,
            cap: 0.2,
            ..plain(2, 3, 37, 64)
        },
        Case {
            cap: 0.2,
            ..plain(1, 1, 70, 32)
        },
        // Gemma's 256-wide heads (8 dimensions a lane, 8 threads a key, more than 48 KiB of
        // shared memory) with a window and a cap, and 160 (5 a lane, 20 a thread).
        Case {
            window: 20,
            cap: 0.2,
            ..plain(1, 2, 45, 256)
        },
        plain(1, 1, 37, 160),
    ] {
        let Case { bkv, g, t, d, .. } = c;
        let (window, cap) = (c.window as i32, c.cap as f32);
        let r_all = g * t;
        let scale = 1.0 / (d as f64).sqrt();
        for ty in Ty::ALL {
            let s = ty.suffix();
            let (nq, nk) = (bkv * r_all * d, bkv * t * d);
            let (q, k, v) = (ty.input(nq, 1), ty.input(nk, 2), ty.input(nk, 3));
            let dout = ty.input(nq, 4);
            let (mut bq, mut bk, mut bv) = (ty.buf(&q), ty.buf(&k), ty.buf(&v));
            let mut o = ty.uninit(nq);
            let mut lse = Buf::uninit::<f32>(bkv * r_all);
            module()
                .launch(
                    &format!("flash_fwd_{s}"),
                    cfg(cuda_src::flash_fwd(r_all, bkv, d)),
                    &mut [
                        Arg::Buf(&mut bq),
                        Arg::Buf(&mut bk),
                        Arg::Buf(&mut bv),
                        Arg::Buf(&mut o),
                        Arg::Buf(&mut lse),
                        Arg::I32(r_all as i32),
                        Arg::I32(t as i32),
                        Arg::I32(d as i32),
                        Arg::F32(scale as f32),
                        Arg::I32(window),
                        Arg::F32(cap),
                    ],
                )
                .unwrap();
            let want = reference(&q, &k, &v, &dout, c, scale);
            let tol = if ty == Ty::F32 { 1e-5 } else { 1e-2 };
            let what = format!("{c:?} {s}");
            let e = rel_err(&ty.read(&o), &want.o);
            assert!(e < tol, "{what}: output off by {e}");
            let e = rel_err(&lse.to_vec::<f32>(), &want.lse);
            assert!(e < 1e-5, "{what}: log-sum-exp off by {e}");

            let mut bdo = ty.buf(&dout);
            let mut dr = Buf::uninit::<f32>(bkv * r_all);
            module()
                .launch(
                    &format!("flash_dot_{s}"),
                    cfg(cuda_src::flash_dot(bkv * r_all)),
                    &mut [
                        Arg::Buf(&mut o),
                        Arg::Buf(&mut bdo),
                        Arg::Buf(&mut dr),
                        Arg::I64((bkv * r_all) as i64),
                        Arg::I32(d as i32),
                    ],
                )
                .unwrap();
            let (mut dk, mut dv) = (ty.uninit(nk), ty.uninit(nk));
            module()
                .launch(
                    &format!("flash_bwd_kv_{s}"),
                    cfg(cuda_src::flash_bwd_kv(t, bkv, d)),
                    &mut [
                        Arg::Buf(&mut bq),
                        Arg::Buf(&mut bk),
                        Arg::Buf(&mut bv),
                        Arg::Buf(&mut bdo),
                        Arg::Buf(&mut lse),
                        Arg::Buf(&mut dr),
                        Arg::Buf(&mut dk),
                        Arg::Buf(&mut dv),
                        Arg::I32(r_all as i32),
                        Arg::I32(t as i32),
                        Arg::I32(g as i32),
                        Arg::I32(d as i32),
                        Arg::F32(scale as f32),
                        Arg::I32(window),
                        Arg::F32(cap),
                    ],
                )
                .unwrap();
            let mut dq = ty.uninit(nq);
            module()
                .launch(
                    &format!("flash_bwd_q_{s}"),
                    cfg(cuda_src::flash_bwd_q(r_all, bkv, d)),
                    &mut [
                        Arg::Buf(&mut bq),
                        Arg::Buf(&mut bk),
                        Arg::Buf(&mut bv),
                        Arg::Buf(&mut bdo),
                        Arg::Buf(&mut lse),
                        Arg::Buf(&mut dr),
                        Arg::Buf(&mut dq),
                        Arg::I32(r_all as i32),
                        Arg::I32(t as i32),
                        Arg::I32(d as i32),
                        Arg::F32(scale as f32),
                        Arg::I32(window),
                        Arg::F32(cap),
                    ],
                )
                .unwrap();
            for (name, got, want) in [
                ("dq", &dq, &want.dq),
                ("dk", &dk, &want.dk),
                ("dv", &dv, &want.dv),
            ] {
                let e = rel_err(&ty.read(got), want);
                assert!(e < tol * 3.0, "{what}: {name} off by {e}");
            }
        }
    }
}
