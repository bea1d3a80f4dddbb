//! Decoding one token per sequence with a step of fixed shape, so that a GPU can record the
//! step once as a CUDA graph and replay it for every token. A decode step of a small model
//! is ~25 kernels per layer of a few microseconds each, and candle issues each from the host
//! with an allocation and a launch: on an H200, SmolLM2-135M's batch-1 decode ran at ~250
//! tokens/s, the GPU idle most of the time. Replaying a graph issues the whole step in one
//! launch.
//!
//! A graph repeats the same kernels on the same addresses with the same arguments, so what
//! changes between tokens lives in device buffers the step reads: the token ids, each row's
//! rotary position, the cache slot written this step, and an additive mask over the slots.
//! The keys and values go to a cache of fixed capacity (`scatter_set` at the slot), and
//! attention always spans the whole capacity, the slots not yet written or holding left
//! padding masked out. Gemma's sliding layers keep a ring of `window` slots instead (position
//! p in slot p mod window, as llama.cpp's SWA cache does): the slot a step writes held the
//! position that just left the window, so their cache and their attention are the window's
//! size, not the capacity's (a window of 512 is 1/16 of an 8,192-position decoder). They read
//! their own slot and mask. Keys are stored rotated, and attention does not care in which
//! slot a key sits, so the ring's order costs nothing. A window counts a row's tokens, not
//! the cache's slots (padding lies between a resumed prefix and a row's left-padded new
//! part), so each row's ring goes by its own token count: its k-th token in ring slot k mod
//! window, each row writing its own slot. Off a GPU (or with
//! `GALLEY_CUDA_GRAPHS=0`) the same step runs eagerly, which is how the CPU tests check it
//! against the growing cache's decode.

use crate::model::{Cache, Llama};
use candle_core::{DType, Tensor};

/// A batch of sequences decoding together, one token each per `step`.
pub struct Decoder<'m> {
    model: &'m Llama,
    rows: usize,
    capacity: usize,
    /// Slots written so far, the same for every row (left padding takes slots too).
    len: usize,
    /// Each row's rotary position for its next token (real tokens before it).
    next_pos: Vec<u32>,
    kv: Vec<(Tensor, Tensor)>,
    inputs: Inputs,
    /// (rows, vocab) f32: the last step's logits.
    out: Tensor,
    #[cfg(feature = "cuda")]
    graph: Graph,
}

/// The device buffers a step reads.
struct Inputs {
    ids: Tensor,
    positions: Tensor,
    /// (rows,) u32: the slot this step writes, the same for every row.
    slot: Tensor,
    /// (rows, 1, 1, capacity) in the cache's dtype: 0 where a row may attend, -inf elsewhere.
    /// Made with the decoder from the prefill's padding; each step opens its own slot.
    mask: Tensor,
    /// (rows, 1, 1, 1) zeros: what opening a slot writes into `mask`.
    open: Tensor,
    /// For a model with sliding layers: the slot and mask they read instead.
    local: Option<Sliding>,
}

/// The sliding layers' ring of `ring` slots (the window, or the capacity if less).
struct Sliding {
    /// (rows,) u32: the ring slot each row writes this step, its token count modulo `ring`.
    slot: Tensor,
    /// (rows, 1, 1, ring): 0 where a row may attend (one of its tokens' keys), -inf where
    /// no token of the row is yet. A ring slot once written stays open.
    mask: Tensor,
    ring: usize,
}

/// A recorded step's nodes by kind (what a replay walks through).
#[cfg(feature = "cuda")]
#[derive(Debug, Default, Clone, Copy)]
pub struct GraphNodes {
    pub kernels: usize,
    pub copies: usize,
    pub memsets: usize,
    pub allocs: usize,
    pub frees: usize,
    pub other: usize,
}

#[cfg(feature = "cuda")]
enum Graph {
    /// Eager steps (no GPU, or graphs turned off).
    Off,
    /// To be recorded at the next step.
    Pending,
    Ready(candle_core::cuda::cudarc::driver::CudaGraph),
}

impl<'m> Decoder<'m> {
    /// A decoder for `rows` new sequences with room for `capacity` tokens each.
    pub fn new(model: &'m Llama, rows: usize, capacity: usize) -> candle_core::Result<Self> {
        let cache = model.new_cache(rows);
        Self::from_cache(model, &cache, capacity)
    }

    /// A decoder that continues from `cache` (a prefill's): its keys and values are copied
    /// into the fixed-capacity cache, its padding stays masked.
    pub fn from_cache(
        model: &'m Llama,
        cache: &Cache,
        capacity: usize,
    ) -> candle_core::Result<Self> {
        let c = &model.config;
        let (rows, len, dev) = (cache.valid.len(), cache.len(), model.device());
        if rows == 0 || capacity <= len || capacity > c.max_position_embeddings.max(1) {
            candle_core::bail!(
                "a decoder needs rows and room: {rows} rows, capacity {capacity} for {len} cached positions (the model has {})",
                c.max_position_embeddings
            );
        }
        let dtype = model.dtype();
        let ring = c.sliding.as_ref().map(|s| s.window.min(capacity));
        // Each row's tokens' slots in the cache, for a ring (filled by rank, not by slot).
        let tokens: Vec<Vec<usize>> = match ring {
            Some(_) => cache
                .valid
                .iter()
                .map(|v| (0..len).filter(|&p| v[p]).collect())
                .collect(),
            None => Vec::new(),
        };
        let mut kv = Vec::with_capacity(c.num_layers);
        for (i, layer) in cache.layers.iter().enumerate() {
            // A sliding layer's ring holds each row's last `ring` tokens, its k-th in slot k
            // mod ring; the other layers hold slot p of the cache in slot p.
            let ring = c.window(i).and(ring);
            let slots = ring.unwrap_or(capacity);
            let shape = (rows, c.num_kv_heads, slots, c.head_dim);
            let (pk, pv) = match (layer.k()?, layer.v()?) {
                (Some(pk), Some(pv)) => (pk, pv),
                _ => {
                    kv.push((
                        Tensor::zeros(shape, dtype, dev)?,
                        Tensor::zeros(shape, dtype, dev)?,
                    ));
                    continue;
                }
            };
            // A CPU cache may hold f16 (`Llama::kv_dtype`); these buffers hold `dtype`.
            let (pk, pv) = (pk.to_dtype(dtype)?, pv.to_dtype(dtype)?);
            // The layer's cache holds the last `held` slots (a trimmed sliding layer's fewer
            // than all), from slot `first` on.
            let held = pk.dim(2)?;
            let Some(first) = len.checked_sub(held) else {
                candle_core::bail!("layer {i}'s cache holds {held} slots of {len}");
            };
            let (k, v) = if ring.is_none() {
                // Slot p holds position p, padding included (masked).
                if first > 0 {
                    candle_core::bail!(
                        "layer {i}'s cache holds {held} of {len} slots, and the decoder needs them all"
                    );
                }
                let (k, v) = (
                    Tensor::zeros(shape, dtype, dev)?,
                    Tensor::zeros(shape, dtype, dev)?,
                );
                k.slice_set(&pk.contiguous()?, 2, 0)?;
                v.slice_set(&pv.contiguous()?, 2, 0)?;
                (k, v)
            } else {
                let at = ring_sources(&tokens, slots, first, held)
                    .map_err(|(row, rank)| {
                        candle_core::Error::Msg(format!(
                            "layer {i}'s cache holds {held} of {len} slots, and row {row}'s token {rank} (within the window of its next) is not among them"
                        ))
                    })?;
                let at = Tensor::from_vec(at, rows * slots, dev)?;
                // (rows, kv, held, d) as rows of (kv d) per slot, gathered by ring slot.
                let (kh, hd) = (c.num_kv_heads, c.head_dim);
                let gather = |t: &Tensor| {
                    t.transpose(1, 2)?
                        .contiguous()?
                        .reshape((rows * held, kh * hd))?
                        .index_select(&at, 0)?
                        .reshape((rows, slots, kh, hd))?
                        .transpose(1, 2)?
                        .contiguous()
                };
                (gather(&pk)?, gather(&pv)?)
            };
            kv.push((k, v));
        }
        let next_pos = cache
            .valid
            .iter()
            .map(|v| v.iter().filter(|x| **x).count() as u32)
            .collect();
        // Prefill slots holding real tokens are open, padding and the slots to come closed.
        let mut mask = vec![f32::NEG_INFINITY; rows * capacity];
        for (row, valid) in cache.valid.iter().enumerate() {
            for (slot, _) in valid.iter().enumerate().filter(|(_, v)| **v) {
                mask[row * capacity + slot] = 0.0;
            }
        }
        // A ring's slots open where they hold one of the row's last `ring` tokens (the first
        // step overwrites the oldest, which leaves the window then).
        let local = match ring {
            Some(ring) => {
                let mut local = vec![f32::NEG_INFINITY; rows * ring];
                for (row, t) in tokens.iter().enumerate() {
                    for rank in t.len().saturating_sub(ring)..t.len() {
                        local[row * ring + rank % ring] = 0.0;
                    }
                }
                let local = Tensor::from_vec(local, (rows, 1, 1, ring), dev)?;
                Some(Sliding {
                    slot: Tensor::zeros(rows, DType::U32, dev)?,
                    mask: local.to_dtype(dtype)?,
                    ring,
                })
            }
            None => None,
        };
        let inputs = Inputs {
            ids: Tensor::zeros(rows, DType::U32, dev)?,
            positions: Tensor::zeros(rows, DType::U32, dev)?,
            slot: Tensor::zeros(rows, DType::U32, dev)?,
            mask: Tensor::from_vec(mask, (rows, 1, 1, capacity), dev)?.to_dtype(dtype)?,
            open: Tensor::zeros((rows, 1, 1, 1), dtype, dev)?,
            local,
        };
        Ok(Self {
            model,
            rows,
            capacity,
            len,
            next_pos,
            kv,
            inputs,
            out: Tensor::zeros((rows, c.vocab_size), DType::F32, dev)?,
            #[cfg(feature = "cuda")]
            graph: if dev.is_cuda() && graphs_enabled() {
                Graph::Pending
            } else {
                Graph::Off
            },
        })
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Positions written so far (prefill included).
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The bytes its keys and values take (a sliding layer's ring holds its window only).
    pub fn cache_bytes(&self) -> usize {
        let bytes = |t: &Tensor| t.elem_count() * t.dtype().size_in_bytes();
        self.kv.iter().map(|(k, v)| bytes(k) + bytes(v)).sum()
    }

    /// Feeds one token per row and returns the logits after it, (rows, vocab) f32. The tensor
    /// is the decoder's own buffer: the next step overwrites it, so read it before.
    pub fn step(&mut self, ids: &[u32]) -> candle_core::Result<Tensor> {
        if ids.len() != self.rows {
            candle_core::bail!("a step takes {} tokens, got {}", self.rows, ids.len());
        }
        if self.len >= self.capacity {
            candle_core::bail!("the decoder is full ({} positions)", self.capacity);
        }
        self.write_inputs(ids)?;
        #[cfg(feature = "cuda")]
        match &self.graph {
            Graph::Ready(g) => g.launch().map_err(candle_core::Error::wrap)?,
            Graph::Pending => self.record()?,
            Graph::Off => self.run()?,
        }
        #[cfg(not(feature = "cuda"))]
        self.run()?;
        self.next_pos.iter_mut().for_each(|p| *p += 1);
        self.len += 1;
        Ok(self.out.clone())
    }

    /// The recorded graph's nodes by kind, once a step has recorded it.
    #[cfg(feature = "cuda")]
    pub fn graph_nodes(&self) -> Option<GraphNodes> {
        use candle_core::cuda::cudarc::driver::sys;
        let Graph::Ready(g) = &self.graph else {
            return None;
        };
        let mut n = 0usize;
        // SAFETY: a live graph; a null array asks for the count only.
        let r = unsafe { sys::cuGraphGetNodes(g.cu_graph(), std::ptr::null_mut(), &mut n) };
        if r != sys::CUresult::CUDA_SUCCESS {
            return None;
        }
        let mut nodes = vec![std::ptr::null_mut(); n];
        // SAFETY: `nodes` has room for the `n` handles the call writes.
        let r = unsafe { sys::cuGraphGetNodes(g.cu_graph(), nodes.as_mut_ptr(), &mut n) };
        if r != sys::CUresult::CUDA_SUCCESS {
            return None;
        }
        let mut out = GraphNodes::default();
        for node in nodes {
            let mut t = sys::CUgraphNodeType::CU_GRAPH_NODE_TYPE_EMPTY;
            // SAFETY: a node handle of the live graph, and an out-pointer to fill.
            unsafe { sys::cuGraphNodeGetType(node, &mut t) };
            use sys::CUgraphNodeType as T;
            match t {
                T::CU_GRAPH_NODE_TYPE_KERNEL => out.kernels += 1,
                T::CU_GRAPH_NODE_TYPE_MEMCPY => out.copies += 1,
                T::CU_GRAPH_NODE_TYPE_MEMSET => out.memsets += 1,
                T::CU_GRAPH_NODE_TYPE_MEM_ALLOC => out.allocs += 1,
                T::CU_GRAPH_NODE_TYPE_MEM_FREE => out.frees += 1,
                _ => out.other += 1,
            }
        }
        Some(out)
    }

    /// Launches the recorded graph `n` times on the inputs of the last step (it rewrites the
    /// same slot with the same values): the replay's own cost, for benchmarks.
    #[cfg(feature = "cuda")]
    pub fn replay(&self, n: usize) -> candle_core::Result<()> {
        let Graph::Ready(g) = &self.graph else {
            candle_core::bail!("no graph recorded yet")
        };
        for _ in 0..n {
            g.launch().map_err(candle_core::Error::wrap)?;
        }
        Ok(())
    }

    /// Copies this step's inputs into the buffers the step reads.
    fn write_inputs(&self, ids: &[u32]) -> candle_core::Result<()> {
        let dev = self.model.device();
        let put = |dst: &Tensor, src: Tensor| dst.slice_set(&src, 0, 0);
        put(&self.inputs.ids, Tensor::new(ids, dev)?)?;
        put(
            &self.inputs.positions,
            Tensor::new(self.next_pos.as_slice(), dev)?,
        )?;
        put(
            &self.inputs.slot,
            Tensor::new(vec![self.len as u32; self.rows], dev)?,
        )?;
        // The token of this step attends to itself (and stays open for the steps after).
        self.inputs.mask.slice_set(&self.inputs.open, 3, self.len)?;
        if let Some(s) = &self.inputs.local {
            // Each row's ring slot: it held the row's token leaving the window.
            let slots: Vec<u32> = self.next_pos.iter().map(|&p| p % s.ring as u32).collect();
            put(&s.slot, Tensor::new(slots.as_slice(), dev)?)?;
            // Once every row has filled its ring, every slot is open already.
            if self.next_pos.iter().any(|&p| (p as usize) < s.ring) {
                let at = Tensor::from_vec(slots, (self.rows, 1, 1, 1), dev)?;
                s.mask.scatter_set(&at, &self.inputs.open, 3)?;
            }
        }
        Ok(())
    }

    /// One step, eagerly: the model's fixed-shape step, its logits copied into `out`.
    fn run(&self) -> candle_core::Result<()> {
        let i = &self.inputs;
        let local = i.local.as_ref().map(|s| (&s.slot, &s.mask));
        let logits = self
            .model
            .step(&i.ids, &i.positions, (&i.slot, &i.mask), local, &self.kv)?;
        self.out.slice_set(&logits, 0, 0)
    }

    /// Runs this step eagerly (which loads every kernel and uploads every kernel argument
    /// array once, into candle's capture cache), then records the same step as a graph for
    /// the steps after it. Recording runs nothing: this step's logits are the eager run's.
    /// A step that cannot be recorded leaves the decoder eager (and says so).
    #[cfg(feature = "cuda")]
    fn record(&mut self) -> candle_core::Result<()> {
        let dev = self.model.device().as_cuda_device()?.clone();
        let _cached = dev.enable_cuda_graph_htod_cache();
        self.run()?;
        self.graph = match self.capture(&dev) {
            Ok(g) => Graph::Ready(g),
            Err(e) => {
                tracing::warn!("decoding without a CUDA graph: {e}");
                Graph::Off
            }
        };
        Ok(())
    }

    #[cfg(feature = "cuda")]
    fn capture(
        &self,
        dev: &candle_core::CudaDevice,
    ) -> candle_core::Result<candle_core::cuda::cudarc::driver::CudaGraph> {
        use candle_core::cuda::cudarc::driver::sys;
        let w = candle_core::Error::wrap;
        let stream = dev.cuda_stream();
        let relaxed = sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_RELAXED;
        stream.begin_capture(relaxed).map_err(w)?;
        let ran = self.run();
        // The capture ends whatever happened, or the stream stays unusable.
        let graph = stream.end_capture(sys::CUgraphInstantiate_flags(0));
        ran?;
        let graph = graph.map_err(w)?;
        let graph = graph.ok_or_else(|| candle_core::Error::Msg("an empty CUDA graph".into()))?;
        graph.upload().map_err(w)?;
        Ok(graph)
    }
}

/// Where each ring slot of each row is filled from, as rows of the (rows held, ...) flattened
/// cache whose slots start at `first`: row r's token of rank k (its cache slot `tokens[r][k]`)
/// goes to ring slot k mod `ring`, for its last `ring` tokens. All but the oldest of them must
/// be held (the first step overwrites that one before it attends); a slot with nothing to
/// hold takes the row's latest token (it stays masked). Err: (row, rank) of a token not held.
fn ring_sources(
    tokens: &[Vec<usize>],
    ring: usize,
    first: usize,
    held: usize,
) -> Result<Vec<u32>, (usize, usize)> {
    let mut at = Vec::with_capacity(tokens.len() * ring);
    for (row, t) in tokens.iter().enumerate() {
        let base = row * held;
        let latest = t.last().map_or(0, |&p| p.saturating_sub(first));
        let mut slots = vec![(base + latest) as u32; ring];
        let n = t.len();
        for rank in n.saturating_sub(ring)..n {
            match t[rank].checked_sub(first) {
                Some(p) => slots[rank % ring] = (base + p) as u32,
                None if rank + ring == n => {}
                None => return Err((row, rank)),
            }
        }
        at.extend(slots);
    }
    Ok(at)
}

/// A choice the process can turn on or off over its environment variable (on unless the
/// variable is `0`): tests and benchmarks compare both ways in one process.
struct Switch {
    /// 0: not yet read from the variable; 1: on; 2: off.
    state: std::sync::atomic::AtomicU8,
    var: &'static str,
}

impl Switch {
    const fn new(var: &'static str) -> Self {
        Self {
            state: std::sync::atomic::AtomicU8::new(0),
            var,
        }
    }

    fn on(&self) -> bool {
        use std::sync::atomic::Ordering::Relaxed;
        match self.state.load(Relaxed) {
            1 => true,
            2 => false,
            _ => {
                let on = std::env::var(self.var).map_or(true, |v| v != "0");
                self.set(on);
                on
            }
        }
    }

    fn set(&self, on: bool) {
        let v = if on { 1 } else { 2 };
        self.state.store(v, std::sync::atomic::Ordering::Relaxed);
    }
}

static GRAPHS: Switch = Switch::new("GALLEY_CUDA_GRAPHS");
static FUSED_STEP: Switch = Switch::new("GALLEY_CUDA_FUSED_STEP");

/// Whether GPU decoding replays CUDA graphs (default) or issues every kernel
/// (`GALLEY_CUDA_GRAPHS=0`, for comparison and as a way out).
pub fn graphs_enabled() -> bool {
    GRAPHS.on()
}

/// Turns graph replay on or off for this process, over `GALLEY_CUDA_GRAPHS`.
pub fn set_graphs(on: bool) {
    GRAPHS.set(on)
}

/// Whether a GPU decode step of a few rows takes the fused kernels (`cuda_step`: five a
/// layer instead of nine; default) or candle's products with the four decode kernels
/// (`GALLEY_CUDA_FUSED_STEP=0`, for comparison and as a way out).
pub fn fused_step_enabled() -> bool {
    FUSED_STEP.on()
}

/// Turns the fused step on or off for this process, over `GALLEY_CUDA_FUSED_STEP`.
pub fn set_fused_step(on: bool) {
    FUSED_STEP.set(on)
}

/// The decoder `generate` continues a prefill with: on a GPU with graphs on, when the
/// prompt and `max_tokens` fit a cache of at most `MAX_CAPACITY` positions (and a sliding
/// model's ring can take the cache: `Decoder::from_cache`); otherwise none (the growing
/// cache's eager steps, which also let finished rows leave the batch).
pub fn for_generation<'m>(
    model: &'m Llama,
    cache: &Cache,
    max_tokens: usize,
) -> Option<Decoder<'m>> {
    if !model.device().is_cuda() || !graphs_enabled() {
        return None;
    }
    let need = cache.len().checked_add(max_tokens)?;
    // Room rounded up to 64 positions: attention spans the whole capacity each step.
    let capacity = need.div_ceil(64) * 64;
    let capacity = capacity.min(model.config.max_position_embeddings);
    if need > capacity || capacity > MAX_CAPACITY {
        return None;
    }
    match Decoder::from_cache(model, cache, capacity) {
        Ok(d) => Some(d),
        Err(e) => {
            tracing::warn!("decoding without a fixed-shape cache: {e}");
            None
        }
    }
}

/// The largest cache `generate` gives a decoder: past it, attending over every slot of the
/// capacity at every step costs more than the graph saves, and the cache's memory is
/// allocated whole up front.
pub const MAX_CAPACITY: usize = 8192;
