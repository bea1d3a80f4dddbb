//! The CUDA versions of the fused training ops (`kernels/ops.cu`: RMS norm, the SiLU and GELU gates, rotary
//! embedding with the head transpose, cross-entropy; forward and backward) run on the CPU
//! through galley-cuda-emu with the launch shapes `ops_cuda` uses (`cuda_src`), against the
//! definitions in plain Rust (f64 sums), in every dtype combination the trainer launches; slopes of the gates and of the soft cap
//! come from central differences of their definitions.

use galley_cuda_emu::check::{Ty, assert_close};
use galley_cuda_emu::{Arg, Buf, LaunchCfg, Module};
use galley_model::cuda_src::PRELUDE;
use galley_train::cuda_src::{self, OPS, Shape};
use std::sync::OnceLock;

fn ops() -> &'static Module {
    static M: OnceLock<Module> = OnceLock::new();
    M.get_or_init(|| Module::build(&[PRELUDE, OPS]).expect("training kernels compile"))
}

fn cfg(s: Shape) -> LaunchCfg {
    LaunchCfg::new((s.grid, 1, 1), (s.block, 1, 1), 0)
}

#[test]
fn rms_norm_forward_and_backward_in_every_dtype_pair() {
    // 300 rows (more than the backward's 128 blocks: blocks take several rows), 200 wide.
    let (rows, n, eps) = (300usize, 200usize, 1e-6f32);
    for (tx, ty) in [
        (Ty::F32, Ty::F32),
        (Ty::F32, Ty::Bf16),
        (Ty::Bf16, Ty::Bf16),
    ] {
        let name = format!("{}_{}", tx.suffix(), ty.suffix());
        let x = tx.input(rows * n, 1);
        let w: Vec<f32> = galley_cuda_emu::check::vals(n, 2)
            .iter()
            .map(|v| 1.0 + v)
            .collect();
        let mut y = ty.uninit(rows * n);
        ops()
            .launch(
                &format!("rms_fwd_{name}"),
                cfg(cuda_src::per_row(rows, cuda_src::ROW_THREADS)),
                &mut [
                    Arg::Buf(&mut tx.buf(&x)),
                    Arg::Buf(&mut Buf::from_slice(&w)),
                    Arg::Buf(&mut y),
                    Arg::I32(n as i32),
                    Arg::F32(eps),
                ],
            )
            .unwrap();
        let rstd: Vec<f64> = (0..rows)
            .map(|r| {
                let ss: f64 = x[r * n..][..n].iter().map(|&v| (v as f64).powi(2)).sum();
                1.0 / (ss / n as f64 + eps as f64).sqrt()
            })
            .collect();
        let want: Vec<f32> = (0..rows * n)
            .map(|k| (x[k] as f64 * rstd[k / n] * w[k % n] as f64) as f32)
            .collect();
        assert_close(&ty.read(&y), &want, ty.tol(), &format!("rms fwd {name}"));

        let g = ty.input(rows * n, 3);
        let parts = cuda_src::rms_bwd_parts(rows);
        let mut dx = tx.uninit(rows * n);
        let mut part = Buf::uninit::<f32>(parts * n);
        ops()
            .launch(
                &format!("rms_bwd_{name}"),
                cfg(Shape {
                    grid: parts as u32,
                    block: cuda_src::ROW_THREADS,
                }),
                &mut [
                    Arg::Buf(&mut tx.buf(&x)),
                    Arg::Buf(&mut Buf::from_slice(&w)),
                    Arg::Buf(&mut ty.buf(&g)),
                    Arg::Buf(&mut dx),
                    Arg::Buf(&mut part),
                    Arg::I32(n as i32),
                    Arg::F32(eps),
                    Arg::I64(rows as i64),
                ],
            )
            .unwrap();
        let mut dw = Buf::uninit::<f32>(n);
        ops()
            .launch(
                "rms_dw",
                cfg(cuda_src::elementwise(n)),
                &mut [
                    Arg::Buf(&mut part),
                    Arg::Buf(&mut dw),
                    Arg::I32(n as i32),
                    Arg::I32(parts as i32),
                ],
            )
            .unwrap();
        let (mut wdx, mut wdw) = (vec![0f32; rows * n], vec![0f64; n]);
        for r in 0..rows {
            let (xr, gr, rs) = (&x[r * n..][..n], &g[r * n..][..n], rstd[r]);
            let dot: f64 = (0..n).map(|i| (gr[i] * w[i] * xr[i]) as f64).sum();
            let k = rs.powi(3) * dot / n as f64;
            for i in 0..n {
                wdx[r * n + i] = (rs * (gr[i] * w[i]) as f64 - k * xr[i] as f64) as f32;
                wdw[i] += (gr[i] * xr[i]) as f64 * rs;
            }
        }
        let wdw: Vec<f32> = wdw.iter().map(|&v| v as f32).collect();
        assert_close(
            &tx.read(&dx),
            &wdx,
            tx.tol() * 4.0,
            &format!("rms dx {name}"),
        );
        // dw sums 300 rows: absolute error grows with the row count in f32.
        assert_close(&dw.to_vec::<f32>(), &wdw, 1e-4, &format!("rms dw {name}"));
    }
}

/// SiLU, and GELU's tanh form (Gemma's `gelu_pytorch_tanh`), in f64.
fn act(name: &str, x: f64) -> f64 {
    match name {
        "silu" => x / (1.0 + (-x).exp()),
        _ => {
            let k = (2.0 / std::f64::consts::PI).sqrt();
            0.5 * x * (1.0 + (k * (x + 0.044715 * x * x * x)).tanh())
        }
    }
}

#[test]
fn the_gates_and_rotary_heads_forward_and_backward() {
    for ty in Ty::ALL {
        let s = ty.suffix();
        let n = 5000usize;
        let (g, u, dy) = (ty.input(n, 11), ty.input(n, 12), ty.input(n, 13));
        // Gates of up to ±4, where GELU's tanh bends.
        let g: Vec<f32> = g.iter().map(|x| ty.round(x * 4.0)).collect();
        for a in ["silu", "gelu"] {
            let mut y = ty.uninit(n);
            ops()
                .launch(
                    &format!("{a}_gate_{s}"),
                    cfg(cuda_src::elementwise(n)),
                    &mut [
                        Arg::Buf(&mut ty.buf(&g)),
                        Arg::Buf(&mut ty.buf(&u)),
                        Arg::Buf(&mut y),
                        Arg::I64(n as i64),
                    ],
                )
                .unwrap();
            let want: Vec<f32> = (0..n)
                .map(|i| (act(a, g[i] as f64) * u[i] as f64) as f32)
                .collect();
            assert_close(&ty.read(&y), &want, ty.tol(), &format!("{a} {s}"));
            let (mut dg, mut du) = (ty.uninit(n), ty.uninit(n));
            ops()
                .launch(
                    &format!("{a}_gate_bwd_{s}"),
                    cfg(cuda_src::elementwise(n)),
                    &mut [
                        Arg::Buf(&mut ty.buf(&g)),
                        Arg::Buf(&mut ty.buf(&u)),
                        Arg::Buf(&mut ty.buf(&dy)),
                        Arg::Buf(&mut dg),
                        Arg::Buf(&mut du),
                        Arg::I64(n as i64),
                    ],
                )
                .unwrap();
            let wdu: Vec<f32> = (0..n)
                .map(|i| (dy[i] as f64 * act(a, g[i] as f64)) as f32)
                .collect();
            // The activation's slope by central differences of its f64 definition, so the
            // kernel's closed form is checked, not copied.
            let wdg: Vec<f32> = (0..n)
                .map(|i| {
                    let (x, h) = (g[i] as f64, 1e-5);
                    let slope = (act(a, x + h) - act(a, x - h)) / (2.0 * h);
                    (dy[i] as f64 * u[i] as f64 * slope) as f32
                })
                .collect();
            assert_close(&ty.read(&du), &wdu, ty.tol(), &format!("{a} du {s}"));
            assert_close(&ty.read(&dg), &wdg, ty.tol(), &format!("{a} dg {s}"));
        }

        // RoPE: (B, t, h, d) -> (B, h, t, d), then the backward maps the result back to x.
        let (b, t, h, d) = (2usize, 7usize, 3usize, 16usize);
        let half = d / 2;
        let x = ty.input(b * t * h * d, 14);
        let (cs, sn): (Vec<f32>, Vec<f32>) = (0..t * half)
            .map(|k| {
                let a = (k / half) as f32 * 10f32.powf(-((k % half) as f32) / half as f32);
                (a.cos(), a.sin())
            })
            .unzip();
        let run = |src: &[f32], to_heads: i32| -> Vec<f32> {
            let mut out = ty.uninit(src.len());
            ops()
                .launch(
                    &format!("rope_heads_{s}"),
                    cfg(cuda_src::elementwise(src.len() / 2)),
                    &mut [
                        Arg::Buf(&mut ty.buf(src)),
                        Arg::Buf(&mut Buf::from_slice(&cs)),
                        Arg::Buf(&mut Buf::from_slice(&sn)),
                        Arg::Buf(&mut out),
                        Arg::I32(b as i32),
                        Arg::I32(t as i32),
                        Arg::I32(h as i32),
                        Arg::I32(d as i32),
                        Arg::I32(to_heads),
                    ],
                )
                .unwrap();
            ty.read(&out)
        };
        let y = run(&x, 1);
        let mut want = vec![0f32; x.len()];
        for bb in 0..b {
            for tt in 0..t {
                for hh in 0..h {
                    let src = &x[((bb * t + tt) * h + hh) * d..][..d];
                    let dst = ((bb * h + hh) * t + tt) * d;
                    for i in 0..half {
                        let (c, sv) = (cs[tt * half + i], sn[tt * half + i]);
                        want[dst + i] = src[i] * c - src[half + i] * sv;
                        want[dst + half + i] = src[half + i] * c + src[i] * sv;
                    }
                }
            }
        }
        assert_close(&y, &want, ty.tol(), &format!("rope {s}"));
        // A rotation's backward is the inverse rotation: it takes y back to x.
        assert_close(
            &run(&y, 0),
            &x,
            ty.tol() * 2.0,
            &format!("rope backward {s}"),
        );
    }
}

#[test]
fn cross_entropy_and_its_gradient_with_temperature_soft_cap_and_ignored_rows() {
    let (rows, v) = (5usize, 1000usize);
    let inv_t = 1.0f32 / 0.7;
    let targets = [3u32, u32::MAX, 999, 0, 500];
    // Without a cap, and under Gemma 2's final cap scaled to these logits (±8): 5 bends them.
    for (ty, cap) in Ty::ALL.into_iter().flat_map(|ty| [(ty, 0.0f32), (ty, 5.0)]) {
        // The capped logit in f64, as the reference's loss sees it.
        let c = |x: f64| -> f64 {
            match cap > 0.0 {
                true => cap as f64 * (x / cap as f64).tanh(),
                false => x,
            }
        };
        let s = ty.suffix();
        let z: Vec<f32> = ty
            .input(rows * v, 21)
            .iter()
            .map(|x| ty.round(x * 8.0))
            .collect();
        let mut nll = Buf::uninit::<f32>(rows);
        let shape = cfg(cuda_src::per_row(rows, cuda_src::VOCAB_THREADS));
        ops()
            .launch(
                &format!("xent_{s}"),
                shape,
                &mut [
                    Arg::Buf(&mut ty.buf(&z)),
                    Arg::Buf(&mut Buf::from_slice(&targets)),
                    Arg::Buf(&mut nll),
                    Arg::I32(v as i32),
                    Arg::F32(inv_t),
                    Arg::F32(cap),
                ],
            )
            .unwrap();
        let lse: Vec<f64> = (0..rows)
            .map(|r| {
                let row = &z[r * v..][..v];
                row.iter()
                    .map(|&x| (c(x as f64) * inv_t as f64).exp())
                    .sum::<f64>()
                    .ln()
            })
            .collect();
        let want: Vec<f32> = (0..rows)
            .map(|r| match targets[r] {
                u32::MAX => 0.0,
                t => (lse[r] - c(z[r * v + t as usize] as f64) * inv_t as f64) as f32,
            })
            .collect();
        let got = nll.to_vec::<f32>();
        assert_close(&got, &want, 1e-5, &format!("xent {s} cap {cap}"));

        let gout = [0.5f32, 2.0, -1.0, 1.0, 0.25];
        let mut dz = ty.uninit(rows * v);
        ops()
            .launch(
                &format!("xent_bwd_{s}"),
                shape,
                &mut [
                    Arg::Buf(&mut ty.buf(&z)),
                    Arg::Buf(&mut Buf::from_slice(&targets)),
                    Arg::Buf(&mut Buf::from_slice(&got)),
                    Arg::Buf(&mut Buf::from_slice(&gout)),
                    Arg::Buf(&mut dz),
                    Arg::I32(v as i32),
                    Arg::F32(inv_t),
                    Arg::F32(cap),
                ],
            )
            .unwrap();
        let want: Vec<f32> = (0..rows * v)
            .map(|k| {
                let (r, j) = (k / v, k % v);
                if targets[r] == u32::MAX {
                    return 0.0;
                }
                let (x, h) = (z[k] as f64, 1e-5);
                let p = (c(x) * inv_t as f64 - lse[r]).exp();
                let hot = if j == targets[r] as usize { 1.0 } else { 0.0 };
                // The cap's slope by central differences of c.
                let slope = (c(x + h) - c(x - h)) / (2.0 * h);
                ((gout[r] * inv_t) as f64 * (p - hot) * slope) as f32
            })
            .collect();
        // Absolute tolerance: most probabilities are tiny.
        let got = ty.read(&dz);
        for (k, (g, w)) in got.iter().zip(&want).enumerate() {
            let tol = if ty == Ty::F32 {
                1e-6
            } else {
                1e-2 * w.abs() + 1e-6
            };
            assert!(
                (g - w).abs() <= tol,
                "xent dz {s} cap {cap} [{k}]: {g} vs {w}"
            );
        }
    }
}
