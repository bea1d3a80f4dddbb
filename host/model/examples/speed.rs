//! Decode and prompt speed of the engine on whatever device `GALLEY_DEVICE` picks, for a
//! model of SmolLM2-135M's shape with random f32 weights (so it runs where no checkpoint can
//! be fetched, such as a GPU machine with no network), compared with this machine's CPU in the
//! same run. pp256 = one pass over 256 tokens; tg128 = 128 single-token passes; tg128x32 =
//! 128 steps of 32 sequences decoding together (tokens/s counts all 32). On a GPU it is
//! measured twice: with candle's per-allocation CUDA events (what `galley serve` runs, whose
//! requests arrive on several threads) and single-stream (`galley_model::cuda::single_stream`,
//! what training and GRPO rollouts run), then through `decode::Decoder` (one CUDA graph per
//! decode, replayed each step: what `generate` runs on a GPU), with and without reading each
//! step's logits back to the host as generation's sampling does.
//!
//! `GALLEY_SPEED_SHAPE=gemma3-270m` takes Gemma 3 270M's shape instead (its published
//! config.json: 18 layers, five in six sliding over 512 positions, q/k norms, 256-wide heads,
//! a 262,144-word vocabulary); its fused step is six kernels a layer (`rope_kv` norms the
//! heads). For it, `long` also times 64 decode steps of one sequence in a decoder of 8,192
//! positions (the largest `generate` makes): its sliding layers attend over their ring of
//! 512 slots, the three full layers over all 8,192 (masked), and the line gives the cache's
//! bytes against a cache of 8,192 slots in every layer.
//!
//!     cargo run --release -p galley-model --example speed [--features cuda]

use candle_core::{DType, Device, Tensor};
use galley_model::weights::Weights;
use galley_model::{Family, Llama, LlamaConfig, RopeScaling};
use std::collections::HashMap;
use std::time::Instant;

/// Gemma 3 270M's config.json as published, less what galley does not read (compiled in: the
/// binary travels to a GPU machine without the source tree).
const GEMMA3_270M: &str = include_str!("../../../bench/shapes/gemma3-270m.json");

/// The shape `GALLEY_SPEED_SHAPE` names (SmolLM2-135M's by default), and its label.
fn config() -> LlamaConfig {
    match std::env::var("GALLEY_SPEED_SHAPE").as_deref() {
        Ok("gemma3-270m") => {
            let origin = std::path::Path::new("bench/shapes/gemma3-270m.json");
            LlamaConfig::from_hf_text(GEMMA3_270M, origin).unwrap()
        }
        Ok(other) if other != "smollm2-135m" => {
            panic!("GALLEY_SPEED_SHAPE: smollm2-135m or gemma3-270m, not {other}")
        }
        _ => smollm2(),
    }
}

fn label() -> &'static str {
    match config().family.is_gemma() {
        true => "Gemma 3 270M",
        false => "SmolLM2-135M",
    }
}

fn smollm2() -> LlamaConfig {
    LlamaConfig {
        family: Family::Llama,
        vocab_size: 49152,
        hidden_size: 576,
        intermediate_size: 1536,
        num_layers: 30,
        num_heads: 9,
        num_kv_heads: 3,
        head_dim: 64,
        rms_norm_eps: 1e-5,
        rope_theta: 100_000.0,
        rope_scaling: RopeScaling::None,
        max_position_embeddings: 2048,
        tie_word_embeddings: true,
        qkv_bias: false,
        o_bias: false,
        mlp_bias: false,
        qk_norm: false,
        bos_token_id: Some(1),
        eos_token_ids: vec![2],
        sliding: None,
        query_pre_attn_scalar: None,
        attn_softcap: None,
        final_softcap: None,
        no_rope: None,
        bidirectional: false,
    }
}

fn write_random(path: &std::path::Path, c: &LlamaConfig) {
    let cpu = Device::Cpu;
    let mut t: HashMap<String, Tensor> = HashMap::new();
    let mut put = |name: String, shape: &[usize]| {
        let fan = *shape.last().unwrap() as f64;
        t.insert(
            name,
            (Tensor::randn(0f32, 1.0, shape, &cpu).unwrap() / fan.sqrt()).unwrap(),
        );
    };
    put(
        "model.embed_tokens.weight".into(),
        &[c.vocab_size, c.hidden_size],
    );
    put("model.norm.weight".into(), &[c.hidden_size]);
    for i in 0..c.num_layers {
        let p = format!("model.layers.{i}");
        let (h, d) = (c.hidden_size, c.head_dim);
        put(
            format!("{p}.self_attn.q_proj.weight"),
            &[c.num_heads * d, h],
        );
        put(
            format!("{p}.self_attn.k_proj.weight"),
            &[c.num_kv_heads * d, h],
        );
        put(
            format!("{p}.self_attn.v_proj.weight"),
            &[c.num_kv_heads * d, h],
        );
        put(
            format!("{p}.self_attn.o_proj.weight"),
            &[h, c.num_heads * d],
        );
        put(
            format!("{p}.mlp.gate_proj.weight"),
            &[c.intermediate_size, h],
        );
        put(format!("{p}.mlp.up_proj.weight"), &[c.intermediate_size, h]);
        put(
            format!("{p}.mlp.down_proj.weight"),
            &[h, c.intermediate_size],
        );
        put(format!("{p}.input_layernorm.weight"), &[h]);
        put(format!("{p}.post_attention_layernorm.weight"), &[h]);
        if c.family.is_gemma() {
            put(format!("{p}.pre_feedforward_layernorm.weight"), &[h]);
            put(format!("{p}.post_feedforward_layernorm.weight"), &[h]);
        }
        if c.qk_norm {
            put(format!("{p}.self_attn.q_norm.weight"), &[d]);
            put(format!("{p}.self_attn.k_norm.weight"), &[d]);
        }
    }
    candle_core::safetensors::save(&t, path).unwrap();
}

fn measure(dev: &Device, path: &std::path::Path) -> (f64, f64, f64) {
    let w = Weights::safetensors(vec![path.to_path_buf()]).unwrap();
    let m = Llama::load(&w, config(), dev).unwrap();
    let prompt: Vec<u32> = (0..256u32).map(|i| (i * 7919 + 13) % 49152).collect();
    let best = |f: &mut dyn FnMut()| {
        f();
        (0..3)
            .map(|_| {
                let t = Instant::now();
                f();
                dev.synchronize().unwrap();
                t.elapsed().as_secs_f64()
            })
            .fold(f64::INFINITY, f64::min)
    };
    let pp = best(&mut || {
        let mut cache = m.new_cache(1);
        m.forward(std::slice::from_ref(&prompt), None, &mut cache, true)
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap();
    });
    let tg = best(&mut || {
        let mut cache = m.new_cache(1);
        for &t in &prompt[..128] {
            m.forward(&[vec![t]], None, &mut cache, true).unwrap();
        }
    });
    let tg32 = best(&mut || {
        let mut cache = m.new_cache(32);
        for &t in &prompt[..128] {
            let rows: Vec<Vec<u32>> = (0..32u32).map(|r| vec![(t + r) % 49152]).collect();
            m.forward(&rows, None, &mut cache, true).unwrap();
        }
    });
    (256.0 / pp, 128.0 / tg, 32.0 * 128.0 / tg32)
}

/// tg128 at batch 1 and 32 through `decode::Decoder`: on a GPU, one CUDA graph recorded at
/// the first step (its recording timed with the rest) and replayed for the other 127. With
/// `read`, every step's logits come back to the host and the next tokens are their argmax,
/// as `generate` reads them for sampling; without, the steps queue up as the rows above do.
#[cfg(feature = "cuda")]
fn measure_graph(dev: &Device, path: &std::path::Path, read: bool) -> (f64, f64) {
    let w = Weights::safetensors(vec![path.to_path_buf()]).unwrap();
    let m = Llama::load(&w, config(), dev).unwrap();
    let best = |rows: usize| {
        let run = || {
            let t = Instant::now();
            let mut d = galley_model::decode::Decoder::new(&m, rows, 192).unwrap();
            let mut ids: Vec<u32> = (0..rows as u32).map(|r| (r * 7919 + 13) % 49152).collect();
            for step in 0..128u32 {
                let logits = d.step(&ids).unwrap();
                ids = if read {
                    let rows = logits.to_vec2::<f32>().unwrap();
                    let argmax = |r: &Vec<f32>| {
                        (0..r.len()).fold(0, |b, i| if r[i] > r[b] { i } else { b }) as u32
                    };
                    rows.iter().map(argmax).collect()
                } else {
                    ids.iter().map(|t| (t + step + 1) % 49152).collect()
                };
            }
            dev.synchronize().unwrap();
            t.elapsed().as_secs_f64()
        };
        run();
        (0..3).map(|_| run()).fold(f64::INFINITY, f64::min)
    };
    (128.0 / best(1), 32.0 * 128.0 / best(32))
}

/// 64 decode steps of one sequence through a decoder of `MAX_CAPACITY` positions, on `dev`
/// (eager on a CPU, one graph on a GPU), and the cache's bytes: tokens/s, bytes, and the
/// bytes with every layer holding every position.
fn measure_long(dev: &Device, path: &std::path::Path) -> (f64, usize, usize) {
    let w = Weights::safetensors(vec![path.to_path_buf()]).unwrap();
    let c = config();
    let m = Llama::load(&w, c.clone(), dev).unwrap();
    let cap = galley_model::decode::MAX_CAPACITY;
    let mut d = galley_model::decode::Decoder::new(&m, 1, cap).unwrap();
    let bytes = d.cache_bytes();
    let full = 2 * c.num_layers * c.num_kv_heads * cap * c.head_dim * m.dtype().size_in_bytes();
    let mut ids = vec![13u32];
    d.step(&ids).unwrap();
    let t = Instant::now();
    for step in 0..64u32 {
        let logits = d.step(&ids).unwrap();
        if step == 63 {
            logits.to_vec2::<f32>().unwrap();
        }
        ids = vec![(ids[0] * 7919 + step) % c.vocab_size as u32];
    }
    dev.synchronize().unwrap();
    (64.0 / t.elapsed().as_secs_f64(), bytes, full)
}

/// What one replayed step is made of, and what replaying it costs alone (no inputs written,
/// no host work between launches): where the decode step's time goes.
#[cfg(feature = "cuda")]
fn anatomy(dev: &Device, path: &std::path::Path) {
    let w = Weights::safetensors(vec![path.to_path_buf()]).unwrap();
    let m = Llama::load(&w, config(), dev).unwrap();
    for rows in [1usize, 32] {
        let mut d = galley_model::decode::Decoder::new(&m, rows, 192).unwrap();
        let ids: Vec<u32> = (0..rows as u32).collect();
        d.step(&ids).unwrap();
        d.step(&ids).unwrap();
        let n = d.graph_nodes().expect("a recorded graph");
        d.replay(20).unwrap();
        dev.synchronize().unwrap();
        let t = Instant::now();
        d.replay(500).unwrap();
        dev.synchronize().unwrap();
        let us = t.elapsed().as_secs_f64() / 500.0 * 1e6;
        println!(
            "batch {rows}: a step's graph has {} kernels, {} copies, {} memsets, {} allocations, {} frees, {} other; a bare replay takes {us:.0} us",
            n.kernels, n.copies, n.memsets, n.allocs, n.frees, n.other
        );
        // GALLEY_CUDA_PROFILE=1: what 100 replays ran, kernel by kernel (CUPTI).
        if std::env::var_os("GALLEY_CUDA_PROFILE").is_some() {
            let table = galley_model::cupti::Profiler::start().and_then(|p| {
                d.replay(100).map_err(|e| e.to_string())?;
                dev.synchronize().map_err(|e| e.to_string())?;
                Ok(p.take()?.table(15))
            });
            match table {
                Ok(t) => println!("batch {rows}, 100 replayed steps, kernel by kernel:\n{t}"),
                Err(e) => println!("batch {rows}: no profile: {e}"),
            }
        }
    }
}

/// The time one op takes inside a chain of dependent ops, as a decode step's graph runs them:
/// 100 copies of the op recorded as one CUDA graph, replayed 10 times. For the products of a
/// SmolLM2-135M decode step at batch 1 and 32, and its elementwise ops.
#[cfg(feature = "cuda")]
fn kernel_times(dev: &Device) {
    use candle_core::cuda::cudarc::driver::sys;
    let cuda = dev.as_cuda_device().unwrap();
    let stream = cuda.cuda_stream();
    let time = |name: &str, f: &dyn Fn() -> candle_core::Result<Tensor>| {
        let _cached = cuda.enable_cuda_graph_htod_cache();
        f().unwrap();
        let relaxed = sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_RELAXED;
        stream.begin_capture(relaxed).unwrap();
        for _ in 0..100 {
            f().unwrap();
        }
        let g = stream.end_capture(sys::CUgraphInstantiate_flags(0));
        let g = g.unwrap().unwrap();
        g.launch().unwrap();
        dev.synchronize().unwrap();
        let t = Instant::now();
        for _ in 0..10 {
            g.launch().unwrap();
        }
        dev.synchronize().unwrap();
        let us = t.elapsed().as_secs_f64() / 1000.0 * 1e6;
        println!("  {name:<44} {us:>8.1} us");
    };
    let c = config();
    let (h, i, v) = (c.hidden_size, c.intermediate_size, c.vocab_size);
    let qkv = (c.num_heads + 2 * c.num_kv_heads) * c.head_dim;
    let w = |o: usize, k: usize| Tensor::randn(0f32, 0.02, (o, k), dev).unwrap();
    let (wqkv, wo, wgu, wd, wlm) = (w(qkv, h), w(h, h), w(2 * i, h), w(h, i), w(v, h));
    let norm = Tensor::ones(h, DType::F32, dev).unwrap();
    println!(
        "one op in a chain of 100, replayed as a CUDA graph ({} shapes, f32):",
        label()
    );
    for rows in [1usize, 32] {
        let x = Tensor::randn(0f32, 1.0, (rows, h), dev).unwrap();
        let xi = Tensor::randn(0f32, 1.0, (rows, i), dev).unwrap();
        let gu = Tensor::randn(0f32, 1.0, (rows, 2 * i), dev).unwrap();
        time(&format!("{rows} x {h} . ({h} x {qkv}) q/k/v"), &|| {
            x.matmul(&wqkv.t()?)
        });
        time(&format!("{rows} x {h} . ({h} x {h}) output"), &|| {
            x.matmul(&wo.t()?)
        });
        time(
            &format!("{rows} x {h} . ({h} x {}) gate/up", 2 * i),
            &|| x.matmul(&wgu.t()?),
        );
        time(&format!("{rows} x {i} . ({i} x {h}) down"), &|| {
            xi.matmul(&wd.t()?)
        });
        time(&format!("{rows} x {h} . ({h} x {v}) LM head"), &|| {
            x.matmul(&wlm.t()?)
        });
        time(&format!("{rows} x {h} RMS norm"), &|| {
            candle_nn::ops::rms_norm(&x, &norm, 1e-5)
        });
        time(&format!("{rows} x {h} residual add"), &|| &x + &x);
        time(&format!("{rows} x {i} SiLU of a gate/up half"), &|| {
            candle_nn::ops::silu(&gu.narrow(1, 0, i)?)
        });
    }
}

fn main() {
    let dir = std::env::temp_dir().join("galley-speed");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!(
        "{}-shaped-random.safetensors",
        label().replace(' ', "-")
    ));
    write_random(&path, &config());
    let dev = match std::env::var("GALLEY_DEVICE") {
        Ok(spec) => galley_model::device(&spec).unwrap_or_else(|e| panic!("{e}")),
        Err(_) => galley_model::default_device(),
    };
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    // GALLEY_SPEED_GPU_ONLY=1 skips the CPU's row (minutes on a GPU machine's lease).
    let cpu = match std::env::var_os("GALLEY_SPEED_GPU_ONLY") {
        Some(_) => (f64::NAN, f64::NAN, f64::NAN),
        None => measure(&Device::Cpu, &path),
    };
    println!(
        "{} shape, random f32 weights; CPU: {threads} threads",
        label()
    );
    println!(
        "{:<10} {:>12} {:>12} {:>15}",
        "", "pp256 tok/s", "tg128 tok/s", "tg128x32 tok/s"
    );
    let row = |name: &str, r: (f64, f64, f64)| {
        println!("{name:<10} {:>12.1} {:>12.1} {:>15.1}", r.0, r.1, r.2)
    };
    row("cpu", cpu);
    let long = |name: &str, dev: &Device| {
        let (tps, bytes, full) = measure_long(dev, &path);
        let mib = |b: usize| b as f64 / (1 << 20) as f64;
        println!(
            "{name}: long: tg64 in a decoder of {} positions {tps:.1} tok/s; its cache {:.1} MiB ({:.1} MiB with every layer holding every position)",
            galley_model::decode::MAX_CAPACITY,
            mib(bytes),
            mib(full)
        );
    };
    let sliding = config().sliding.is_some();
    if sliding && std::env::var_os("GALLEY_SPEED_GPU_ONLY").is_none() {
        long("cpu", &Device::Cpu);
    }
    if !dev.is_cpu() {
        let gpu = measure(&dev, &path);
        row("gpu", gpu);
        println!(
            "gpu/cpu    {:>11.1}x {:>11.1}x {:>14.1}x",
            gpu.0 / cpu.0,
            gpu.1 / cpu.1,
            gpu.2 / cpu.2
        );
        #[cfg(feature = "cuda")]
        {
            let single = galley_model::device("cuda").unwrap();
            galley_model::cuda::single_stream(&single);
            row("gpu 1-str", measure(&single, &path));
            let (g1, g32) = measure_graph(&single, &path, false);
            println!("{:<10} {:>12} {g1:>12.1} {g32:>15.1}", "gpu graph", "-");
            let (r1, r32) = measure_graph(&single, &path, true);
            println!("{:<10} {:>12} {r1:>12.1} {r32:>15.1}", "graph+read", "-");
            // The same graph with the nine-kernel layer (candle's products and the four
            // decode kernels) instead of the fused step's five, for batch 1 (a batch of 32
            // takes the nine-kernel layer either way).
            galley_model::decode::set_fused_step(false);
            let (u1, u32_) = measure_graph(&single, &path, false);
            println!("{:<10} {:>12} {u1:>12.1} {u32_:>15.1}", "graph 9/l", "-");
            galley_model::decode::set_fused_step(true);
            println!(
                "fused step vs nine-kernel layer at batch 1: {:.2}x",
                g1 / u1
            );
            if sliding {
                long("gpu graph", &single);
            }
            anatomy(&single, &path);
            kernel_times(&single);
        }
    }
}
