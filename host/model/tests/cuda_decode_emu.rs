//! galley-model's CUDA decode kernels (`kernels/decode.cu`, the text NVRTC compiles on a GPU)
//! run on the CPU through galley-cuda-emu, against plain Rust written from the kernels'
//! definitions, in f32 and bf16, with the launch shapes `cuda_decode` uses
//! (`cuda_decode_chain_emu.rs` chains them into whole decode steps). The GPU tests
//! (`host/train/tests/gpu.rs`, built with `--features cuda`) stay the authority on the device.

use galley_cuda_emu::check::{Ty, assert_close as close};
use galley_cuda_emu::{Arg, Buf, LaunchCfg, Module};
use galley_model::cuda_src::{DECODE, PRELUDE};
use std::sync::OnceLock;

fn module() -> &'static Module {
    static M: OnceLock<Module> = OnceLock::new();
    M.get_or_init(|| Module::build(&[PRELUDE, DECODE]).expect("decode kernels compile"))
}

#[test]
fn rope_kv_rotates_queries_and_writes_only_each_rows_slot_of_each_cache() {
    // rows, query heads, kv heads, head dim, capacity
    let (b, h, kv, d, cap) = (3usize, 4usize, 2usize, 16usize, 5usize);
    // Each row's own slot (a ring's follow each row's token count); one outside the cache
    // writes nothing there.
    let slots = [3u32, 1, 5];
    let (half, eps) = (d / 2, 1e-6f32);
    // Without head norms, and with Gemma 3's (and Qwen3's): each query and key head RMS-normed
    // by its own weight before the rotation.
    for (ty, normed) in Ty::ALL.into_iter().flat_map(|ty| [(ty, false), (ty, true)]) {
        let (qn, kn) = (ty.input(d, 6), ty.input(d, 7));
        let w = (h + 2 * kv) * d;
        let qkv = ty.input(b * w, 1);
        let cs = ty.input(b * half, 2);
        let sn = ty.input(b * half, 3);
        let cache_k = ty.input(b * kv * cap * d, 4);
        let cache_v = ty.input(b * kv * cap * d, 5);
        let (mut bq, mut bk, mut bv) = (ty.uninit(b * h * d), ty.buf(&cache_k), ty.buf(&cache_v));
        module()
            .launch(
                &format!("rope_kv_{}", ty.suffix()),
                LaunchCfg::new((b as u32, (h + kv) as u32, 1), ((d / 2) as u32, 1, 1), 0),
                &mut [
                    Arg::Buf(&mut ty.buf(&qkv)),
                    Arg::Buf(&mut ty.buf(&cs)),
                    Arg::Buf(&mut ty.buf(&sn)),
                    Arg::Buf(&mut Buf::from_slice(&slots)),
                    Arg::Buf(&mut bq),
                    Arg::Buf(&mut bk),
                    Arg::Buf(&mut bv),
                    Arg::I32(h as i32),
                    Arg::I32(kv as i32),
                    Arg::I32(d as i32),
                    Arg::I32(cap as i32),
                    Arg::Buf(&mut ty.buf(&qn)),
                    Arg::Buf(&mut ty.buf(&kn)),
                    Arg::I32(normed as i32),
                    Arg::F32(eps),
                ],
            )
            .unwrap();
        // A head as the rotation sees it: normed (and stored) first where asked.
        let norm = |x: &[f32], w: &[f32]| -> Vec<f32> {
            if !normed {
                return x.to_vec();
            }
            let ms = x.iter().map(|v| (*v as f64).powi(2)).sum::<f64>() / d as f64;
            let inv = 1.0 / (ms + eps as f64).sqrt();
            (0..d)
                .map(|i| ty.round((x[i] as f64 * inv * w[i] as f64) as f32))
                .collect()
        };
        let rot = |row: usize, x: &[f32], w: &[f32]| -> Vec<f32> {
            let x = &norm(x, w)[..];
            let mut o = vec![0.0; d];
            for i in 0..half {
                let (c, s) = (cs[row * half + i], sn[row * half + i]);
                o[i] = ty.round(x[i] * c - x[i + half] * s);
                o[i + half] = ty.round(x[i + half] * c + x[i] * s);
            }
            o
        };
        let (mut q, mut kc, mut vc) = (vec![0.0; b * h * d], cache_k.clone(), cache_v.clone());
        for row in 0..b {
            let x = &qkv[row * w..(row + 1) * w];
            for hh in 0..h {
                q[(row * h + hh) * d..][..d].copy_from_slice(&rot(row, &x[hh * d..][..d], &qn));
            }
            for k in (0..kv).filter(|_| (slots[row] as usize) < cap) {
                let at = ((row * kv + k) * cap + slots[row] as usize) * d;
                kc[at..at + d].copy_from_slice(&rot(row, &x[(h + k) * d..][..d], &kn));
                vc[at..at + d].copy_from_slice(&x[(h + kv + k) * d..][..d]);
            }
        }
        close(
            &ty.read(&bq),
            &q,
            ty.tol(),
            &format!("q {ty:?} normed {normed}"),
        );
        close(
            &ty.read(&bk),
            &kc,
            ty.tol(),
            &format!("key cache {ty:?} normed {normed}"),
        );
        close(&ty.read(&bv), &vc, 0.0, "value cache");
    }
}

#[test]
fn attend_is_a_softmax_over_the_unmasked_slots() {
    let (b, h, kv, d, cap) = (2usize, 4usize, 2usize, 16usize, 40usize);
    let scale = 1.0 / (d as f32).sqrt();
    // Plain, and under Gemma 2's soft cap scaled to these scores (about ±0.6): 0.3 bends them.
    for (ty, softcap) in Ty::ALL.into_iter().flat_map(|ty| [(ty, 0.0f32), (ty, 0.3)]) {
        let q = ty.input(b * h * d, 11);
        let kc = ty.input(b * kv * cap * d, 12);
        let vc = ty.input(b * kv * cap * d, 13);
        // Row 0 sees slots 0..30 but not 7; row 1 sees 0..4 and 35.
        let mask: Vec<f32> = (0..b * cap)
            .map(|i| {
                let (r, j) = (i / cap, i % cap);
                let open = if r == 0 {
                    j < 30 && j != 7
                } else {
                    j < 4 || j == 35
                };
                if open { 0.0 } else { f32::NEG_INFINITY }
            })
            .collect();
        let mut out = ty.uninit(b * h * d);
        module()
            .launch(
                &format!("attend_{}", ty.suffix()),
                LaunchCfg::new((b as u32, h as u32, 1), (128, 1, 1), (cap + d) * 4),
                &mut [
                    Arg::Buf(&mut ty.buf(&q)),
                    Arg::Buf(&mut ty.buf(&kc)),
                    Arg::Buf(&mut ty.buf(&vc)),
                    Arg::Buf(&mut ty.buf(&mask)),
                    Arg::Buf(&mut out),
                    Arg::I32(h as i32),
                    Arg::I32(kv as i32),
                    Arg::I32(d as i32),
                    Arg::I32(cap as i32),
                    Arg::F32(scale),
                    Arg::F32(softcap),
                ],
            )
            .unwrap();
        let mut want = vec![0.0; b * h * d];
        for r in 0..b {
            for hh in 0..h {
                let k = hh / (h / kv);
                let qv = &q[(r * h + hh) * d..][..d];
                let base = (r * kv + k) * cap * d;
                let logits: Vec<f32> = (0..cap)
                    .map(|j| {
                        let dot: f32 = (0..d).map(|i| qv[i] * kc[base + j * d + i]).sum();
                        let s = dot * scale;
                        let s = match softcap > 0.0 {
                            true => softcap * (s / softcap).tanh(),
                            false => s,
                        };
                        s + mask[r * cap + j]
                    })
                    .collect();
                let mx = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
                let e: Vec<f32> = logits.iter().map(|l| (l - mx).exp()).collect();
                let sum: f32 = e.iter().sum();
                for i in 0..d {
                    let acc: f32 = (0..cap).map(|j| e[j] * vc[base + j * d + i]).sum();
                    want[(r * h + hh) * d + i] = acc / sum;
                }
            }
        }
        close(
            &ty.read(&out),
            &want,
            ty.tol(),
            &format!("attend {ty:?} softcap {softcap}"),
        );
    }
}

#[test]
fn add_rms_and_silu_mul_match_their_definitions() {
    let (rows, n, inter, eps) = (3usize, 300usize, 200usize, 1e-5f32);
    for ty in Ty::ALL {
        let x = ty.input(rows * n, 21);
        let dd = ty.input(rows * n, 22);
        let w = ty.input(n, 23);
        let mut out = ty.uninit(2 * rows * n);
        module()
            .launch(
                &format!("add_rms_{}", ty.suffix()),
                LaunchCfg::new((rows as u32, 1, 1), (256, 1, 1), 0),
                &mut [
                    Arg::Buf(&mut ty.buf(&x)),
                    Arg::Buf(&mut ty.buf(&dd)),
                    Arg::Buf(&mut ty.buf(&w)),
                    Arg::Buf(&mut out),
                    Arg::I32(n as i32),
                    Arg::F32(eps),
                    Arg::I32(rows as i32),
                ],
            )
            .unwrap();
        let hs: Vec<f32> = x.iter().zip(&dd).map(|(a, b)| ty.round(a + b)).collect();
        let mut normed = vec![0.0; rows * n];
        for r in 0..rows {
            let row = &hs[r * n..][..n];
            let inv = 1.0 / (row.iter().map(|v| v * v).sum::<f32>() / n as f32 + eps).sqrt();
            for i in 0..n {
                normed[r * n + i] = row[i] * inv * w[i];
            }
        }
        let got = ty.read(&out);
        close(&got[..rows * n], &hs, 0.0, "residual sum");
        close(&got[rows * n..], &normed, ty.tol(), "rms norm");

        let gu = ty.input(rows * 2 * inter, 24);
        let mut out = ty.uninit(rows * inter);
        module()
            .launch(
                &format!("silu_mul_{}", ty.suffix()),
                LaunchCfg::new((rows as u32, 1, 1), (256, 1, 1), 0),
                &mut [
                    Arg::Buf(&mut ty.buf(&gu)),
                    Arg::Buf(&mut out),
                    Arg::I32(inter as i32),
                ],
            )
            .unwrap();
        let want: Vec<f32> = (0..rows * inter)
            .map(|k| {
                let (r, i) = (k / inter, k % inter);
                let (g, u) = (gu[r * 2 * inter + i], gu[r * 2 * inter + inter + i]);
                ty.round(g / (1.0 + (-g).exp())) * u
            })
            .collect();
        close(&ty.read(&out), &want, ty.tol(), "silu_mul");
    }
}

fn step_cfg(l: galley_model::cuda_src::StepLaunch) -> LaunchCfg {
    LaunchCfg::new((l.grid.0, l.grid.1, 1), (l.block, 1, 1), l.shared_bytes)
}

/// rms_norm(h + d) * w per row, with the stream and the norm rounded as stored.
fn norm_rows(ty: Ty, h: &[f32], d: &[f32], w: &[f32], n: usize, eps: f32) -> (Vec<f32>, Vec<f32>) {
    let hs: Vec<f32> = h.iter().zip(d).map(|(a, b)| ty.round(a + b)).collect();
    let mut a = vec![0.0; hs.len()];
    for r in 0..hs.len() / n {
        let row = &hs[r * n..][..n];
        let inv = 1.0 / (row.iter().map(|v| v * v).sum::<f32>() / n as f32 + eps).sqrt();
        for i in 0..n {
            a[r * n + i] = ty.round(row[i] * inv * w[i]);
        }
    }
    (hs, a)
}

/// y (rows, out) = x (rows, n) Wᵀ, rounded to the element type.
fn matvec(ty: Ty, x: &[f32], w: &[f32], n: usize) -> Vec<f32> {
    let out = w.len() / n;
    (0..x.len() / n)
        .flat_map(|r| (0..out).map(move |o| (r, o)))
        .map(|(r, o)| ty.round((0..n).map(|k| x[r * n + k] * w[o * n + k]).sum()))
        .collect()
}

#[test]
fn the_fused_step_kernels_match_norm_projection_rope_and_gate() {
    // A hidden size that is no multiple of 32, three rows, grouped heads, a partial last block.
    let (b, n, h, kv, d, cap, eps) = (3usize, 96usize, 4usize, 2usize, 16usize, 5usize, 1e-5f32);
    // Each row's own slot; the last row's is outside the cache and writes nothing there.
    let slots = [2u32, 4, 5];
    let half = d / 2;
    for ty in Ty::ALL {
        let s = ty.suffix();
        let (hh, dd, nw) = (ty.input(b * n, 31), ty.input(b * n, 32), ty.input(n, 33));
        let wq = ty.input((h + 2 * kv) * d * n, 34);
        let bias = ty.input((h + 2 * kv) * d, 35);
        let (cs, sn) = (ty.input(b * half, 36), ty.input(b * half, 37));
        let (k0, v0) = (
            ty.input(b * kv * cap * d, 38),
            ty.input(b * kv * cap * d, 39),
        );
        // Gemma's output norm of the previous sublayer (`dw`), applied to d first.
        let dw = ty.input(n, 43);
        let dd_normed = norm_rows(ty, &vec![0.0; b * n], &dd, &dw, n, eps).1;
        // Plain; with a bias; Gemma's: d normed first and, for heads normed before their
        // rotation, the projection written as it is (`raw`, for rope_kv).
        for (has_bias, gemma) in [(0, 0), (1, 0), (0, 1)] {
            let width = if gemma == 1 { h + 2 * kv } else { h } * d;
            let (mut hout, mut q) = (ty.uninit(b * n), ty.uninit(b * width));
            let (mut kc, mut vc) = (ty.buf(&k0), ty.buf(&v0));
            module()
                .launch(
                    &format!("qkv_step_{s}"),
                    step_cfg(galley_model::cuda_src::qkv_step(h + 2 * kv, d, b, n)),
                    &mut [
                        Arg::Buf(&mut ty.buf(&hh)),
                        Arg::Buf(&mut ty.buf(&dd)),
                        Arg::Buf(&mut ty.buf(&dw)),
                        Arg::I32(gemma),
                        Arg::Buf(&mut ty.buf(&nw)),
                        Arg::Buf(&mut hout),
                        Arg::Buf(&mut ty.buf(&wq)),
                        Arg::Buf(&mut ty.buf(&bias)),
                        Arg::I32(has_bias),
                        Arg::Buf(&mut ty.buf(&cs)),
                        Arg::Buf(&mut ty.buf(&sn)),
                        Arg::Buf(&mut Buf::from_slice(&slots)),
                        Arg::Buf(&mut q),
                        Arg::Buf(&mut kc),
                        Arg::Buf(&mut vc),
                        Arg::I32(n as i32),
                        Arg::I32(b as i32),
                        Arg::F32(eps),
                        Arg::I32(h as i32),
                        Arg::I32(kv as i32),
                        Arg::I32(d as i32),
                        Arg::I32(cap as i32),
                        Arg::I32(gemma),
                    ],
                )
                .unwrap();
            let d_in = if gemma == 1 { &dd_normed } else { &dd };
            let (hs, a) = norm_rows(ty, &hh, d_in, &nw, n, eps);
            let mut proj = matvec(ty, &a, &wq, n);
            if has_bias == 1 {
                let w = (h + 2 * kv) * d;
                for (i, p) in proj.iter_mut().enumerate() {
                    *p = ty.round(*p + bias[i % w]);
                }
            }
            let (mut wq_, mut wk, mut wv) = (vec![0.0; b * h * d], k0.clone(), v0.clone());
            for r in 0..b {
                let row = &proj[r * (h + 2 * kv) * d..];
                let rot = |x: &[f32]| -> Vec<f32> {
                    let mut o = vec![0.0; d];
                    for i in 0..half {
                        let (c, sv) = (cs[r * half + i], sn[r * half + i]);
                        o[i] = x[i] * c - x[i + half] * sv;
                        o[i + half] = x[i + half] * c + x[i] * sv;
                    }
                    o
                };
                for head in 0..h {
                    wq_[(r * h + head) * d..][..d].copy_from_slice(&rot(&row[head * d..][..d]));
                }
                for k in (0..kv).filter(|_| (slots[r] as usize) < cap) {
                    let at = ((r * kv + k) * cap + slots[r] as usize) * d;
                    wk[at..at + d].copy_from_slice(&rot(&row[(h + k) * d..][..d]));
                    wv[at..at + d].copy_from_slice(&row[(h + kv + k) * d..][..d]);
                }
            }
            let what = format!("qkv_step {s} bias={has_bias} gemma={gemma}");
            // Exact, but for the output norm's sum of squares (another summation order).
            let exact = if gemma == 1 { ty.tol() } else { 0.0 };
            close(&ty.read(&hout), &hs, exact, &format!("{what}: stream"));
            if gemma == 1 {
                // The projection as it is; the caches untouched (rope_kv writes them).
                close(
                    &ty.read(&q),
                    &proj,
                    ty.tol(),
                    &format!("{what}: projection"),
                );
                close(&ty.read(&kc), &k0, 0.0, &format!("{what}: key cache"));
                close(&ty.read(&vc), &v0, 0.0, &format!("{what}: value cache"));
                continue;
            }
            close(&ty.read(&q), &wq_, ty.tol(), &format!("{what}: q"));
            close(&ty.read(&kc), &wk, ty.tol(), &format!("{what}: key cache"));
            close(
                &ty.read(&vc),
                &wv,
                ty.tol(),
                &format!("{what}: value cache"),
            );
        }

        // The MLP's first half (plain: SiLU; Gemma's: d normed first, GELU's tanh form), then
        // the down projection through gemv_rows (with a bias).
        let inter = 40usize;
        let wgu = ty.input(2 * inter * n, 40);
        let mut act_v = Vec::new();
        for gemma in [1, 0] {
            let (mut hout, mut act) = (ty.uninit(b * n), ty.uninit(b * inter));
            module()
                .launch(
                    &format!("mlp_up_step_{s}"),
                    step_cfg(galley_model::cuda_src::mlp_up_step(inter, b, n)),
                    &mut [
                        Arg::Buf(&mut ty.buf(&hh)),
                        Arg::Buf(&mut ty.buf(&dd)),
                        Arg::Buf(&mut ty.buf(&dw)),
                        Arg::I32(gemma),
                        Arg::Buf(&mut ty.buf(&nw)),
                        Arg::Buf(&mut hout),
                        Arg::Buf(&mut ty.buf(&wgu)),
                        Arg::Buf(&mut act),
                        Arg::I32(n as i32),
                        Arg::I32(b as i32),
                        Arg::F32(eps),
                        Arg::I32(inter as i32),
                        Arg::I32(gemma),
                    ],
                )
                .unwrap();
            let d_in = if gemma == 1 { &dd_normed } else { &dd };
            let (hs, a) = norm_rows(ty, &hh, d_in, &nw, n, eps);
            let gu = matvec(ty, &a, &wgu, n);
            let k = (2.0f32 / std::f32::consts::PI).sqrt();
            let want: Vec<f32> = (0..b * inter)
                .map(|x| {
                    let (r, i) = (x / inter, x % inter);
                    let (g, u) = (gu[r * 2 * inter + i], gu[r * 2 * inter + inter + i]);
                    let act = match gemma {
                        1 => 0.5 * g * (1.0 + (k * (g + 0.044715 * g * g * g)).tanh()),
                        _ => g / (1.0 + (-g).exp()),
                    };
                    ty.round(ty.round(act) * u)
                })
                .collect();
            let what = format!("mlp_up_step {s} gemma={gemma}");
            // Exact, but for the output norm's sum of squares (another summation order).
            let exact = if gemma == 1 { ty.tol() } else { 0.0 };
            close(&ty.read(&hout), &hs, exact, &format!("{what}: stream"));
            act_v = ty.read(&act);
            close(&act_v, &want, ty.tol(), &format!("{what}: activation"));
        }

        let out = 50usize;
        let wd = ty.input(out * inter, 41);
        let bd = ty.input(out, 42);
        let mut y = ty.uninit(b * out);
        module()
            .launch(
                &format!("gemv_rows_{s}"),
                step_cfg(galley_model::cuda_src::gemv_rows(out)),
                &mut [
                    Arg::Buf(&mut ty.buf(&act_v)),
                    Arg::Buf(&mut ty.buf(&wd)),
                    Arg::Buf(&mut ty.buf(&bd)),
                    Arg::I32(1),
                    Arg::Buf(&mut y),
                    Arg::I32(inter as i32),
                    Arg::I32(out as i32),
                    Arg::I32(b as i32),
                ],
            )
            .unwrap();
        let want: Vec<f32> = matvec(ty, &act_v, &wd, inter)
            .iter()
            .enumerate()
            .map(|(k, v)| ty.round(v + bd[k % out]))
            .collect();
        close(&ty.read(&y), &want, ty.tol(), &format!("gemv_rows {s}"));
    }
}
