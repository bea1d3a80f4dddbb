//! Whole decode steps of real (tiny, random, transformers-made) checkpoints chained from
//! galley-model's fused CUDA decode kernels (`kernels/decode.cu`) as `cuda_step` chains them
//! on a GPU, run on the CPU through galley-cuda-emu, against the CPU model's fixed-shape
//! decoder (`decode::Decoder`, itself checked against the growing cache in `parity.rs`):
//! Llama, Gemma 3 (head norms through `rope_kv`, four norms a layer, GELU, a sliding layer
//! in a ring of 4 slots next to a full one with linear RoPE scaling) and Gemma 2 (soft caps
//! on the scores and the logits). Seven tokens, so the sliding layer's ring wraps and later
//! steps attend over the caches the earlier ones wrote. The kernels' own tests are in
//! `cuda_decode_emu.rs`; the GPU tests (`host/train/tests/gpu.rs`) stay the authority.

use galley_cuda_emu::check::Ty;
use galley_cuda_emu::{Arg, Buf, LaunchCfg, Module};
use galley_model::cuda_src::{DECODE, PRELUDE, StepLaunch};
use std::collections::HashMap;
use std::sync::OnceLock;

fn module() -> &'static Module {
    static M: OnceLock<Module> = OnceLock::new();
    M.get_or_init(|| Module::build(&[PRELUDE, DECODE]).expect("decode kernels compile"))
}

/// What the chain does differently per family (the dimensions come from config.json).
struct Family {
    name: &'static str,
    /// Gemma: norms scale by 1 + w, the embeddings by √hidden, each sublayer's output is
    /// normed before it joins the stream, the MLP's gate is tanh-GELU.
    gemma: bool,
    /// Each query and key head RMS-normed before its rotation (`rope_kv` after a raw
    /// projection).
    head_norms: bool,
    /// Layer → (RoPE theta, linear scaling factor).
    rope: fn(usize) -> (f32, f32),
}

#[test]
fn a_llama_decode_step_chained_from_the_fused_kernels_matches_the_cpu_model() {
    chain(&Family {
        name: "llama-gqa-tied",
        gemma: false,
        head_norms: false,
        rope: |_| (10_000.0, 1.0),
    });
}

/// Gemma 3's fixture: layer 0 slides (window 4, local theta 10,000), layer 1 attends over
/// everything (theta 1e6, linear factor 2).
#[test]
fn a_gemma3_decode_step_chained_from_the_fused_kernels_matches_the_cpu_model() {
    chain(&Family {
        name: "gemma3",
        gemma: true,
        head_norms: true,
        rope: |l| if l == 0 { (10_000.0, 1.0) } else { (1e6, 2.0) },
    });
}

/// Gemma 2's fixture: layer 0 slides (window 4), scores capped at 2, logits at 3.
#[test]
fn a_gemma2_decode_step_chained_from_the_fused_kernels_matches_the_cpu_model() {
    chain(&Family {
        name: "gemma2",
        gemma: true,
        head_norms: false,
        rope: |_| (10_000.0, 1.0),
    });
}

fn step_cfg(l: StepLaunch) -> LaunchCfg {
    LaunchCfg::new((l.grid.0, l.grid.1, 1), (l.block, 1, 1), l.shared_bytes)
}

/// One layer's weights as the kernels take them (norms already shifted for Gemma).
struct Layer {
    in_norm: Vec<f32>,
    qkv: Vec<f32>,
    head_norms: Option<(Vec<f32>, Vec<f32>)>,
    o: Vec<f32>,
    /// Gemma's norm of the attention output (post_attention_layernorm).
    attn_out_norm: Option<Vec<f32>>,
    /// The norm before the MLP (Llama's post_attention_layernorm, Gemma's
    /// pre_feedforward_layernorm).
    mlp_norm: Vec<f32>,
    gate_up: Vec<f32>,
    down: Vec<f32>,
    /// Gemma's norm of the MLP output (post_feedforward_layernorm).
    mlp_out_norm: Option<Vec<f32>>,
    /// The sliding layers' ring size (their window).
    window: Option<usize>,
}

fn chain(f: &Family) {
    use candle_core::Device;
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/tiny")
        .join(f.name);
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    let int = |k: &str| cfg[k].as_u64().unwrap() as usize;
    let num = |k: &str| cfg[k].as_f64().map(|v| v as f32);
    let (layers, n, h, kv, d) = (
        int("num_hidden_layers"),
        int("hidden_size"),
        int("num_attention_heads"),
        int("num_key_value_heads"),
        int("head_dim"),
    );
    let (inter, vocab, eps) = (
        int("intermediate_size"),
        int("vocab_size"),
        num("rms_norm_eps").unwrap(),
    );
    let scale = 1.0 / num("query_pre_attn_scalar").unwrap_or(d as f32).sqrt();
    let (softcap, final_cap) = (
        num("attn_logit_softcapping").unwrap_or(0.0),
        num("final_logit_softcapping"),
    );
    let slides = |l: usize| cfg["layer_types"][l].as_str() == Some("sliding_attention");
    let cpu = galley_model::load(&dir, &Device::Cpu).unwrap().model;
    let w: HashMap<String, candle_core::Tensor> =
        candle_core::safetensors::load(dir.join("model.safetensors"), &Device::Cpu).unwrap();
    let get = |name: &str| -> Vec<f32> { w[name].flatten_all().unwrap().to_vec1::<f32>().unwrap() };
    let norm = |name: &str| -> Vec<f32> {
        let shift = if f.gemma { 1.0 } else { 0.0 };
        get(name).into_iter().map(|v| v + shift).collect()
    };
    let weights: Vec<Layer> = (0..layers)
        .map(|l| {
            let p = |s: &str| format!("model.layers.{l}.{s}.weight");
            let gemma = |s: &str| f.gemma.then(|| norm(&p(s)));
            Layer {
                in_norm: norm(&p("input_layernorm")),
                qkv: [
                    get(&p("self_attn.q_proj")),
                    get(&p("self_attn.k_proj")),
                    get(&p("self_attn.v_proj")),
                ]
                .concat(),
                head_norms: f
                    .head_norms
                    .then(|| (norm(&p("self_attn.q_norm")), norm(&p("self_attn.k_norm")))),
                o: get(&p("self_attn.o_proj")),
                attn_out_norm: gemma("post_attention_layernorm"),
                mlp_norm: norm(&p(if f.gemma {
                    "pre_feedforward_layernorm"
                } else {
                    "post_attention_layernorm"
                })),
                gate_up: [get(&p("mlp.gate_proj")), get(&p("mlp.up_proj"))].concat(),
                down: get(&p("mlp.down_proj")),
                mlp_out_norm: gemma("post_feedforward_layernorm"),
                window: slides(l).then(|| int("sliding_window")),
            }
        })
        .collect();
    let (embed, final_norm) = (get("model.embed_tokens.weight"), norm("model.norm.weight"));
    let embed_scale = if f.gemma { (n as f32).sqrt() } else { 1.0 };
    // Seven positions in a decoder of 8: a sliding layer's ring of 4 wraps at the fifth.
    let cap = 8usize;
    let slots = |l: &Layer| l.window.map_or(cap, |w| w.min(cap));
    let mut caches: Vec<(Buf, Buf)> = weights
        .iter()
        .map(|l| {
            (
                Buf::zeros::<f32>(kv * slots(l) * d),
                Buf::zeros::<f32>(kv * slots(l) * d),
            )
        })
        .collect();
    let mut dec = galley_model::decode::Decoder::new(&cpu, 1, cap).unwrap();
    let (m, ty, half) = (module(), Ty::F32, d / 2);
    let step = |name: &str, l: StepLaunch, args: &mut [Arg]| {
        m.launch(&format!("{name}_f32"), step_cfg(l), args).unwrap()
    };
    let gemv = |x: &mut Buf, wt: &[f32], inp: usize, out: usize| -> Buf {
        let mut y = Buf::uninit::<f32>(out);
        step(
            "gemv_rows",
            galley_model::cuda_src::gemv_rows(out),
            &mut [
                Arg::Buf(x),
                Arg::Buf(&mut ty.buf(wt)),
                Arg::Buf(&mut ty.buf(wt)),
                Arg::I32(0),
                Arg::Buf(&mut y),
                Arg::I32(inp as i32),
                Arg::I32(out as i32),
                Arg::I32(1),
            ],
        );
        y
    };
    for (pos, tok) in [5u32, 77, 3, 120, 9, 64, 31].into_iter().enumerate() {
        let want = dec
            .step(&[tok])
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let e: Vec<f32> = embed[tok as usize * n..][..n]
            .iter()
            .map(|v| v * embed_scale)
            .collect();
        let (mut hs, mut ds) = (Buf::from_slice(&e), Buf::zeros::<f32>(n));
        // The norm the stream's last addition takes first (the previous layer's MLP output's).
        let mut d_norm: Option<&Vec<f32>> = None;
        for (l, lw) in weights.iter().enumerate() {
            let (theta, factor) = (f.rope)(l);
            let (cs, sn): (Vec<f32>, Vec<f32>) = (0..half)
                .map(|i| {
                    let a = pos as f32 / factor / theta.powf((2 * i) as f32 / d as f32);
                    (a.cos(), a.sin())
                })
                .unzip();
            // A sliding layer writes slot pos mod its ring; a slot once written stays open.
            let ring = slots(lw);
            let slot = (pos % ring) as u32;
            let mask: Vec<f32> = (0..ring)
                .map(|j| if j <= pos { 0.0 } else { f32::NEG_INFINITY })
                .collect();
            let (kc, vc) = &mut caches[l];
            let width = if lw.head_norms.is_some() {
                h + 2 * kv
            } else {
                h
            };
            let (mut h1, mut q) = (Buf::uninit::<f32>(n), Buf::uninit::<f32>(width * d));
            let dw = d_norm.unwrap_or(&lw.in_norm);
            step(
                "qkv_step",
                galley_model::cuda_src::qkv_step(h + 2 * kv, d, 1, n),
                &mut [
                    Arg::Buf(&mut hs),
                    Arg::Buf(&mut ds),
                    Arg::Buf(&mut ty.buf(dw)),
                    Arg::I32(d_norm.is_some() as i32),
                    Arg::Buf(&mut ty.buf(&lw.in_norm)),
                    Arg::Buf(&mut h1),
                    Arg::Buf(&mut ty.buf(&lw.qkv)),
                    Arg::Buf(&mut ty.buf(&lw.qkv)),
                    Arg::I32(0),
                    Arg::Buf(&mut ty.buf(&cs)),
                    Arg::Buf(&mut ty.buf(&sn)),
                    Arg::Buf(&mut Buf::from_slice(&[slot])),
                    Arg::Buf(&mut q),
                    Arg::Buf(kc),
                    Arg::Buf(vc),
                    Arg::I32(n as i32),
                    Arg::I32(1),
                    Arg::F32(eps),
                    Arg::I32(h as i32),
                    Arg::I32(kv as i32),
                    Arg::I32(d as i32),
                    Arg::I32(ring as i32),
                    Arg::I32(lw.head_norms.is_some() as i32),
                ],
            );
            if let Some((qn, kn)) = &lw.head_norms {
                // Raw projection in `q`: `rope_kv` norms each head, rotates, writes the caches.
                let mut rotated = Buf::uninit::<f32>(h * d);
                m.launch(
                    "rope_kv_f32",
                    LaunchCfg::new((1, (h + kv) as u32, 1), (half as u32, 1, 1), 0),
                    &mut [
                        Arg::Buf(&mut q),
                        Arg::Buf(&mut ty.buf(&cs)),
                        Arg::Buf(&mut ty.buf(&sn)),
                        Arg::Buf(&mut Buf::from_slice(&[slot])),
                        Arg::Buf(&mut rotated),
                        Arg::Buf(kc),
                        Arg::Buf(vc),
                        Arg::I32(h as i32),
                        Arg::I32(kv as i32),
                        Arg::I32(d as i32),
                        Arg::I32(ring as i32),
                        Arg::Buf(&mut ty.buf(qn)),
                        Arg::Buf(&mut ty.buf(kn)),
                        Arg::I32(1),
                        Arg::F32(eps),
                    ],
                )
                .unwrap();
                q = rotated;
            }
            let mut att = Buf::uninit::<f32>(h * d);
            m.launch(
                "attend_f32",
                LaunchCfg::new((1, h as u32, 1), (128, 1, 1), (ring + d) * 4),
                &mut [
                    Arg::Buf(&mut q),
                    Arg::Buf(kc),
                    Arg::Buf(vc),
                    Arg::Buf(&mut ty.buf(&mask)),
                    Arg::Buf(&mut att),
                    Arg::I32(h as i32),
                    Arg::I32(kv as i32),
                    Arg::I32(d as i32),
                    Arg::I32(ring as i32),
                    Arg::F32(scale),
                    Arg::F32(softcap),
                ],
            )
            .unwrap();
            let mut d1 = gemv(&mut att, &lw.o, h * d, n);
            let (mut h2, mut act) = (Buf::uninit::<f32>(n), Buf::uninit::<f32>(inter));
            let out_norm = lw.attn_out_norm.as_ref();
            step(
                "mlp_up_step",
                galley_model::cuda_src::mlp_up_step(inter, 1, n),
                &mut [
                    Arg::Buf(&mut h1),
                    Arg::Buf(&mut d1),
                    Arg::Buf(&mut ty.buf(out_norm.unwrap_or(&lw.mlp_norm))),
                    Arg::I32(out_norm.is_some() as i32),
                    Arg::Buf(&mut ty.buf(&lw.mlp_norm)),
                    Arg::Buf(&mut h2),
                    Arg::Buf(&mut ty.buf(&lw.gate_up)),
                    Arg::Buf(&mut act),
                    Arg::I32(n as i32),
                    Arg::I32(1),
                    Arg::F32(eps),
                    Arg::I32(inter as i32),
                    Arg::I32(f.gemma as i32),
                ],
            );
            ds = gemv(&mut act, &lw.down, inter, n);
            hs = h2;
            d_norm = lw.mlp_out_norm.as_ref();
        }
        // After the last layer: its MLP output's norm (Gemma; the model's own op on a GPU),
        // the final add-and-norm, the tied head, Gemma 2's cap on the logits.
        if let Some(w) = d_norm {
            let x = ds.to_vec::<f32>();
            let inv = 1.0 / (x.iter().map(|v| v * v).sum::<f32>() / n as f32 + eps).sqrt();
            ds = Buf::from_slice(
                &x.iter()
                    .zip(w)
                    .map(|(v, w)| v * inv * w)
                    .collect::<Vec<_>>(),
            );
        }
        let mut both = Buf::uninit::<f32>(2 * n);
        m.launch(
            "add_rms_f32",
            LaunchCfg::new((1, 1, 1), (256, 1, 1), 0),
            &mut [
                Arg::Buf(&mut hs),
                Arg::Buf(&mut ds),
                Arg::Buf(&mut ty.buf(&final_norm)),
                Arg::Buf(&mut both),
                Arg::I32(n as i32),
                Arg::F32(eps),
                Arg::I32(1),
            ],
        )
        .unwrap();
        let mut normed = Buf::from_slice(&both.to_vec::<f32>()[n..]);
        let logits = gemv(&mut normed, &embed, n, vocab).to_vec::<f32>();
        let got: Vec<f32> = match final_cap {
            Some(c) => logits.iter().map(|v| c * (v / c).tanh()).collect(),
            None => logits,
        };
        let scale = want.iter().fold(0f32, |a, v| a.max(v.abs()));
        let worst = got
            .iter()
            .zip(&want)
            .fold(0f32, |a, (g, w)| a.max((g - w).abs()));
        assert!(
            worst <= 1e-5 * scale,
            "{}: step {pos}: logits off by {worst} (scale {scale})",
            f.name
        );
    }
}
