//! The fused kernels of a decode step on the GPU. `decode::Decoder` replays the step as a
//! CUDA graph, in which every kernel and every allocation is a node the GPU walks through one
//! after another (about 1-2 µs each, estimated from node counts), so each kernel fewer is
//! time saved. `rope_kv` puts the fused projection's queries through RoPE and writes the
//! rotated key and the value into the cache slot; `attend` attends a query over the whole
//! fixed-capacity cache under the slot mask; together they replace ~15 kernels and their
//! allocations per layer (the split copies, the transposes, the two RoPEs, the two scatters,
//! the scores' product, scale, mask, softmax, second product and transpose). `add_rms_norm`
//! is a residual connection and the RMS norm after it; `silu_mul` the MLP's gate. Compiled
//! once per process by NVRTC; f32 arithmetic on f32 or bf16 data.

use crate::cuda::{slice, view};
use crate::cuda_src::{DECODE, PRELUDE};
use crate::layers::rotary::Angles;
use candle_core::backend::BackendStorage;
use candle_core::cuda::cudarc::driver::{CudaSlice, DeviceRepr, LaunchConfig, PushKernelArg};
use candle_core::cuda::{CudaDType, CudaStorage};
use candle_core::{CpuStorage, CustomOp1, DType, Layout, Result, Shape, Tensor, bail};
use std::sync::OnceLock;

pub(crate) const MODULE: &str = "galley_decode";
const THREADS: u32 = 128;

pub(crate) fn ptx() -> Result<&'static str> {
    static PTX: OnceLock<std::result::Result<String, String>> = OnceLock::new();
    crate::cuda::compile_once(&PTX, &[PRELUDE, DECODE], "galley's CUDA decode kernels")
}

pub(crate) fn launch_err(e: impl std::fmt::Display) -> candle_core::Error {
    candle_core::Error::Msg(format!("galley CUDA decode kernel: {e}"))
}

/// `blocks` (x, y) of `threads` threads with `shared` bytes of dynamic shared memory.
fn grid((x, y): (usize, usize), threads: u32, shared: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (x as u32, y as u32, 1),
        block_dim: (threads, 1, 1),
        shared_mem_bytes: shared as u32,
    }
}

/// `fused` (b, 1, (heads + 2 kv_heads) head_dim), the fused projection's output: returns the
/// queries rotated, (b, heads, 1, head_dim), and writes each row's rotated key and its value
/// into `k_cache` / `v_cache` (b, kv_heads, capacity, head_dim) at its own slot (`slot`
/// (b,) u32: a sliding layer's ring slot follows each row's token count; a slot outside the
/// cache writes nothing). `norms`: the query and key heads' RMS norm weights and epsilon (Qwen3, Gemma 3),
/// applied to each head before it is rotated.
pub fn rope_kv(
    fused: &Tensor,
    angles: &Angles,
    slot: &Tensor,
    (k_cache, v_cache): (&Tensor, &Tensor),
    heads: usize,
    norms: Option<(&Tensor, &Tensor, f32)>,
) -> Result<Tensor> {
    let (b, kv, cap, d) = k_cache.dims4()?;
    fused.apply_op1_no_bwd(&RopeKv {
        norms: norms.map(|(q, k, eps)| (q.clone(), k.clone(), eps)),
        cos: angles.cos().clone(),
        sin: angles.sin().clone(),
        slot: slot.clone(),
        k: k_cache.clone(),
        v: v_cache.clone(),
        dims: [b, heads, kv, d, cap],
    })
}

/// Softmax attention of `q` (b, heads, 1, head_dim) over every slot of the caches under
/// `mask` (b, 1, 1, capacity): (b, 1, heads head_dim). Scores are scaled by `scale`, then
/// soft-capped where `softcap` says (Gemma 2).
pub fn attend(
    q: &Tensor,
    (k_cache, v_cache): (&Tensor, &Tensor),
    mask: &Tensor,
    (scale, softcap): (f32, Option<f32>),
) -> Result<Tensor> {
    let (b, heads, _, d) = q.dims4()?;
    let (_, kv, cap, _) = k_cache.dims4()?;
    q.apply_op1_no_bwd(&Attend {
        k: k_cache.clone(),
        v: v_cache.clone(),
        mask: mask.clone(),
        dims: [b, heads, kv, d, cap],
        scale,
        softcap: softcap.unwrap_or(0.0),
    })
}

struct RopeKv {
    /// The query and key heads' norm weights and epsilon, where the model norms them.
    norms: Option<(Tensor, Tensor, f32)>,
    cos: Tensor,
    sin: Tensor,
    slot: Tensor,
    k: Tensor,
    v: Tensor,
    /// b, heads, kv_heads, head_dim, capacity
    dims: [usize; 5],
}

struct Attend {
    k: Tensor,
    v: Tensor,
    mask: Tensor,
    dims: [usize; 5],
    scale: f32,
    /// 0: none.
    softcap: f32,
}

impl RopeKv {
    fn run<T: CudaDType + DeviceRepr>(
        &self,
        name: &str,
        s: &CudaStorage,
        l: &Layout,
    ) -> Result<CudaStorage> {
        let [b, h, kv, d, cap] = self.dims;
        if l.dims() != [b, 1, (h + 2 * kv) * d] || d % 2 != 0 || kv == 0 || h % kv != 0 {
            bail!(
                "rope_kv: a fused projection of shape {:?} does not fit {h} heads of {d} over {kv}",
                l.dims()
            );
        }
        if self.slot.dims() != [b] {
            bail!("rope_kv: slots {:?} for {b} rows", self.slot.dims());
        }
        let dev = s.device().clone();
        let fused = slice::<T>(s, l, "rope_kv's projection")?;
        let held =
            [&self.cos, &self.sin, &self.slot, &self.k, &self.v].map(Tensor::storage_and_layout);
        let cos = view::<T>(&held[0].0, held[0].1, "cos")?;
        let sin = view::<T>(&held[1].0, held[1].1, "sin")?;
        let slot = view::<u32>(&held[2].0, held[2].1, "slot")?;
        let kc = view::<T>(&held[3].0, held[3].1, "the key cache")?;
        let vc = view::<T>(&held[4].0, held[4].1, "the value cache")?;
        let norm_held = self
            .norms
            .as_ref()
            .map(|(qn, kn, _)| [qn, kn].map(Tensor::storage_and_layout));
        let norm_views = match &norm_held {
            Some([(qs, ql), (ks, kl)]) => {
                if ql.dims() != [d] || kl.dims() != [d] {
                    bail!(
                        "rope_kv: head norms of {:?} and {:?} for heads of {d}",
                        ql.dims(),
                        kl.dims()
                    )
                }
                Some((
                    view::<T>(qs, ql, "the query heads' norm")?,
                    view::<T>(ks, kl, "the key heads' norm")?,
                ))
            }
            None => None,
        };
        // SAFETY: the kernel writes every element of the (b, h, 1, d) output.
        let mut q: CudaSlice<T> = unsafe { dev.alloc::<T>(b * h * d)? };
        let f = dev.get_or_load_custom_func(name, MODULE, ptx()?)?;
        let ints = [h as i32, kv as i32, d as i32, cap as i32];
        let mut lb = f.builder();
        lb.arg(&fused)
            .arg(&cos)
            .arg(&sin)
            .arg(&slot)
            .arg(&mut q)
            .arg(&kc)
            .arg(&vc);
        for i in &ints {
            lb.arg(i);
        }
        // Without norms the kernel reads neither weight: the projection stands in for both.
        let (has_norm, eps) = match &self.norms {
            Some((_, _, eps)) => (1i32, *eps),
            None => (0i32, 0f32),
        };
        match &norm_views {
            Some((qn, kn)) => lb.arg(qn).arg(kn),
            None => lb.arg(&fused).arg(&fused),
        };
        lb.arg(&has_norm).arg(&eps);
        let cfg = grid((b, h + kv), (d as u32 / 2).clamp(1, THREADS), 0);
        // SAFETY: the arguments match the kernel's signature and the shapes checked above; the
        // kernel writes the caches (the decoder's own buffers, read by no other stream) only
        // at each row's slot, and only one inside their (b, kv, cap, d) extent.
        unsafe { lb.launch(cfg) }.map_err(launch_err)?;
        Ok(CudaStorage::wrap_cuda_slice(q, dev))
    }
}

impl Attend {
    fn run<T: CudaDType + DeviceRepr>(
        &self,
        name: &str,
        s: &CudaStorage,
        l: &Layout,
    ) -> Result<CudaStorage> {
        let [b, h, kv, d, cap] = self.dims;
        if kv == 0 || h % kv != 0 || self.mask.dims() != [b, 1, 1, cap] {
            bail!(
                "attend: {h} heads over {kv}, mask {:?} for {b} rows of {cap} slots",
                self.mask.dims()
            );
        }
        let dev = s.device().clone();
        let q = slice::<T>(s, l, "attend's queries")?;
        let held = [&self.k, &self.v, &self.mask].map(Tensor::storage_and_layout);
        let kc = view::<T>(&held[0].0, held[0].1, "the key cache")?;
        let vc = view::<T>(&held[1].0, held[1].1, "the value cache")?;
        let mask = view::<T>(&held[2].0, held[2].1, "the mask")?;
        // SAFETY: the kernel writes every element of the (b, 1, h * d) output.
        let mut out: CudaSlice<T> = unsafe { dev.alloc::<T>(b * h * d)? };
        let f = dev.get_or_load_custom_func(name, MODULE, ptx()?)?;
        let ints = [h as i32, kv as i32, d as i32, cap as i32];
        let mut lb = f.builder();
        lb.arg(&q).arg(&kc).arg(&vc).arg(&mask).arg(&mut out);
        for i in &ints {
            lb.arg(i);
        }
        lb.arg(&self.scale).arg(&self.softcap);
        let cfg = grid((b, h), THREADS, (cap + d) * 4);
        // SAFETY: the arguments match the kernel's signature and the shapes checked above;
        // (cap + d) floats of shared memory stay under the 48 KiB default for the decoder's
        // capacities (at most `decode::MAX_CAPACITY`).
        unsafe { lb.launch(cfg) }.map_err(launch_err)?;
        Ok(CudaStorage::wrap_cuda_slice(out, dev))
    }
}

/// `x + d` and its RMS norm with `weight` in one kernel: (x + d, rms_norm(x + d) * weight),
/// both shaped as `x` (rows of its last dimension).
pub fn add_rms_norm(x: &Tensor, d: &Tensor, weight: &Tensor, eps: f32) -> Result<(Tensor, Tensor)> {
    let n = x.dim(candle_core::D::Minus1)?;
    let rows = x.elem_count() / n.max(1);
    let both = x.apply_op1_no_bwd(&AddRms {
        d: d.contiguous()?,
        w: weight.clone(),
        dims: [rows, 0, 0, n, 0],
        eps,
    })?;
    Ok((
        both.get(0)?.reshape(x.shape())?,
        both.get(1)?.reshape(x.shape())?,
    ))
}

/// `silu(gate) * up` of the fused gate/up product `gu` (..., 2 I): (..., I).
pub fn silu_mul(gu: &Tensor) -> Result<Tensor> {
    let two = gu.dim(candle_core::D::Minus1)?;
    let rows = gu.elem_count() / two.max(1);
    let mut shape = gu.dims().to_vec();
    *shape.last_mut().expect("rank >= 1") = two / 2;
    let out = gu.contiguous()?.apply_op1_no_bwd(&SiluMul {
        dims: [rows, 0, 0, two / 2, 0],
    })?;
    out.reshape(shape)
}

struct AddRms {
    d: Tensor,
    w: Tensor,
    /// rows, -, -, n, -
    dims: [usize; 5],
    eps: f32,
}

struct SiluMul {
    /// rows, -, -, I, -
    dims: [usize; 5],
}

impl AddRms {
    fn run<T: CudaDType + DeviceRepr>(
        &self,
        name: &str,
        s: &CudaStorage,
        l: &Layout,
    ) -> Result<CudaStorage> {
        let [rows, _, _, n, _] = self.dims;
        if self.d.elem_count() != rows * n || self.w.elem_count() != n {
            bail!(
                "add_rms_norm: {:?} + {:?} under a weight of {:?}",
                l.dims(),
                self.d.dims(),
                self.w.dims()
            );
        }
        let dev = s.device().clone();
        let x = slice::<T>(s, l, "add_rms_norm's input")?;
        let held = [&self.d, &self.w].map(Tensor::storage_and_layout);
        let d = view::<T>(&held[0].0, held[0].1, "the addend")?;
        let w = view::<T>(&held[1].0, held[1].1, "the norm's weight")?;
        // SAFETY: the kernel writes every element of both (rows, n) halves.
        let mut out: CudaSlice<T> = unsafe { dev.alloc::<T>(2 * rows * n)? };
        let f = dev.get_or_load_custom_func(name, MODULE, ptx()?)?;
        let (n32, rows32) = (n as i32, rows as i32);
        let mut lb = f.builder();
        lb.arg(&x)
            .arg(&d)
            .arg(&w)
            .arg(&mut out)
            .arg(&n32)
            .arg(&self.eps)
            .arg(&rows32);
        let cfg = grid((rows, 1), 256, 0);
        // SAFETY: the arguments match the kernel's signature and the sizes checked above.
        unsafe { lb.launch(cfg) }.map_err(launch_err)?;
        Ok(CudaStorage::wrap_cuda_slice(out, dev))
    }
}

impl SiluMul {
    fn run<T: CudaDType + DeviceRepr>(
        &self,
        name: &str,
        s: &CudaStorage,
        l: &Layout,
    ) -> Result<CudaStorage> {
        let [rows, _, _, inter, _] = self.dims;
        let dev = s.device().clone();
        let gu = slice::<T>(s, l, "silu_mul's input")?;
        if gu.len() != rows * 2 * inter {
            bail!("silu_mul: {:?} is not (rows, 2 I)", l.dims());
        }
        // SAFETY: the kernel writes every element of the (rows, I) output.
        let mut out: CudaSlice<T> = unsafe { dev.alloc::<T>(rows * inter)? };
        let f = dev.get_or_load_custom_func(name, MODULE, ptx()?)?;
        let i32_ = inter as i32;
        let mut lb = f.builder();
        lb.arg(&gu).arg(&mut out).arg(&i32_);
        let cfg = grid((rows, 1), 256, 0);
        // SAFETY: the arguments match the kernel's signature and the sizes checked above.
        unsafe { lb.launch(cfg) }.map_err(launch_err)?;
        Ok(CudaStorage::wrap_cuda_slice(out, dev))
    }
}

macro_rules! by_dtype {
    ($op:ty, $label:literal, $out:expr) => {
        impl CustomOp1 for $op {
            fn name(&self) -> &'static str {
                concat!("galley-", $label)
            }

            fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
                bail!(concat!("galley's CUDA ", $label, " was given a CPU tensor"))
            }

            fn cuda_fwd(&self, s: &CudaStorage, l: &Layout) -> Result<(CudaStorage, Shape)> {
                let out = match s.dtype() {
                    DType::F32 => self.run::<f32>(concat!($label, "_f32"), s, l)?,
                    DType::BF16 => self.run::<half::bf16>(concat!($label, "_bf16"), s, l)?,
                    d => bail!(
                        concat!("galley's ", $label, " takes f32 or bf16, not {:?}"),
                        d
                    ),
                };
                let [b, h, _, d, _] = self.dims;
                Ok((out, $out(b, h, d)))
            }
        }
    };
}

by_dtype!(RopeKv, "rope_kv", |b, h, d| Shape::from((b, h, 1, d)));
by_dtype!(Attend, "attend", |b, h, d| Shape::from((b, 1, h * d)));
by_dtype!(AddRms, "add_rms", |rows, _, n| Shape::from((2, rows, n)));
by_dtype!(SiluMul, "silu_mul", |rows, _, inter| Shape::from((
    rows, inter
)));
