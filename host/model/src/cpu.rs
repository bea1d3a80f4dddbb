//! The CPU kernels' plumbing and the inference ops built on it. The plumbing — f32 views of
//! candle's CPU storage, buffers a kernel writes in full without zero-filling them first, and
//! the safe wrappers over the `gemm` crate (one call, or blocks of output columns the
//! threads pack and multiply in parallel) — is shared with galley-train's fused training
//! ops. The inference ops replace chains of candle ops that each allocate and walk a full
//! tensor: attention over the KV cache with the causal and padding masks applied inside the
//! kernel (no mask tensor, no score tensor for the whole batch, keys after the last query of
//! a block never multiplied), and SiLU of the gate times the up projection read from their
//! fused output (with a backward pass: training's fused gate|up product uses it too).

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, CustomOp3, Layout, Result, Shape, Storage, Tensor, bail};
use rayon::prelude::*;
use std::mem::MaybeUninit;
use std::sync::Arc;

use crate::kernels::attend::Elems;

pub fn slice<'a>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [f32]> {
    let data = s.as_slice::<f32>()?;
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => bail!("galley op: input is not contiguous"),
    }
}

/// Runs `f` on the f32 data of a CPU tensor (made contiguous first if needed).
pub fn with_f32<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Result<R> {
    let t = if t.is_contiguous() {
        t.clone()
    } else {
        t.contiguous()?
    };
    let (st, l) = t.storage_and_layout();
    let Storage::Cpu(c) = &*st else {
        bail!("galley's fused ops run on the CPU")
    };
    Ok(f(slice(c, l)?))
}

/// A zero-filled buffer, for kernels that write only part of it or whose output is small.
pub fn zeroed(n: usize) -> Vec<f32> {
    vec![0f32; n]
}

/// A buffer a kernel will write in full, not yet initialised: `MaybeUninit`, so no `&[f32]`
/// over uninitialised memory ever exists (that would be undefined behaviour even if every
/// element were written before it is read). Zero-filling instead cost ~20% of a full
/// fine-tuning step (`train-bench`, same-run A/B): the backward pass makes many large
/// buffers that the kernels overwrite anyway.
pub fn uninit(n: usize) -> Vec<MaybeUninit<f32>> {
    let mut v = Vec::with_capacity(n);
    // SAFETY: `MaybeUninit` needs no initialisation, and the capacity is `n`.
    unsafe { v.set_len(n) };
    v
}

/// The floats of a buffer from `uninit` once written.
///
/// # Safety
/// Every element of `v` must have been written.
pub unsafe fn assume_init(v: Vec<MaybeUninit<f32>>) -> Vec<f32> {
    let mut v = std::mem::ManuallyDrop::new(v);
    let (ptr, len, cap) = (v.as_mut_ptr(), v.len(), v.capacity());
    // SAFETY: `MaybeUninit<f32>` has the layout of `f32`, the allocation is handed over
    // whole (the original is not dropped), and the caller vouches that every element is set.
    unsafe { Vec::from_raw_parts(ptr.cast::<f32>(), len, cap) }
}

/// A written part of an `uninit` buffer, as floats.
///
/// # Safety
/// Every element of `s` must have been written.
pub unsafe fn assume_init_mut(s: &mut [MaybeUninit<f32>]) -> &mut [f32] {
    // SAFETY: same layout; the caller vouches that every element is set.
    unsafe { &mut *(s as *mut [MaybeUninit<f32>] as *mut [f32]) }
}

/// A matrix view over a slice: element (i, j) at `data[i*rs + j*cs]`.
#[derive(Clone, Copy)]
pub struct Mat<'a> {
    data: &'a [f32],
    rs: usize,
    cs: usize,
}

impl Mat<'_> {
    /// Whether every element of a (rows, cols) matrix lies inside the slice.
    fn holds(&self, rows: usize, cols: usize) -> bool {
        rows == 0
            || cols == 0
            || (rows - 1)
                .checked_mul(self.rs)
                .zip((cols - 1).checked_mul(self.cs))
                .and_then(|(r, c)| r.checked_add(c))
                .is_some_and(|last| last < self.data.len())
    }
}

pub fn rm(s: &[f32], cols: usize) -> Mat<'_> {
    Mat {
        data: s,
        rs: cols,
        cs: 1,
    }
}

/// The transpose of a row-major (rows, cols) matrix.
pub fn tr(s: &[f32], cols: usize) -> Mat<'_> {
    Mat {
        data: s,
        rs: 1,
        cs: cols,
    }
}

/// dst (m, n, row-major) = [dst +] scale · a (m, k) · b (k, n), on rayon's threads.
/// Panics when a view does not fit its slice (a bug in the caller, never UB).
#[allow(clippy::too_many_arguments)]
pub fn gemm(
    dst: &mut [f32],
    m: usize,
    n: usize,
    k: usize,
    a: Mat,
    b: Mat,
    scale: f32,
    accumulate: bool,
) {
    let par = gemm::Parallelism::Rayon(rayon::current_num_threads());
    // SAFETY: gemm_with writes only floats through the view.
    gemm_with(
        par,
        unsafe { as_uninit(dst) },
        m,
        n,
        k,
        a,
        b,
        scale,
        accumulate,
    )
}

/// A strided view: element (i, j) at `s[i*rs + j*cs]` (a column block of a wider matrix).
pub fn view(s: &[f32], rs: usize, cs: usize) -> Mat<'_> {
    Mat { data: s, rs, cs }
}

/// Panics unless an (m, n) block with rows `rs` apart fits a destination of `len` elements
/// from its start (a bug in the caller, never UB: checked before every block product).
fn check_block(len: usize, rs: usize, m: usize, n: usize) {
    assert!(
        n <= rs && (m == 0 || n == 0 || (m - 1) * rs + n <= len),
        "gemm: an ({m}, {n}) block with rows {rs} apart does not fit {len} elements"
    );
}

/// `gemm` into the (m, n) block of a row-major matrix whose rows are `rs` apart, starting at
/// `dst[0]` (a column block of a fused product's output). Panics when the block does not fit.
pub fn gemm_block(
    dst: &mut [f32],
    rs: usize,
    (m, n, k): (usize, usize, usize),
    a: Mat,
    b: Mat,
    scale: f32,
    accumulate: bool,
) {
    check_block(dst.len(), rs, m, n);
    check_views(m, n, k, a, b);
    if m == 0 || n == 0 {
        return;
    }
    let par = gemm::Parallelism::Rayon(rayon::current_num_threads());
    // SAFETY: every element of the (m, n) block at row stride rs lies inside dst (asserted),
    // which is exclusively borrowed and initialised; a and b are checked views.
    unsafe {
        raw_gemm(
            par,
            (dst.as_mut_ptr(), rs),
            (m, n, k),
            (a.data.as_ptr(), a),
            (b.data.as_ptr(), b),
            scale,
            accumulate,
        )
    }
}

/// `gemm` on the calling thread only (for callers that are themselves one of many parallel
/// tasks).
#[allow(clippy::too_many_arguments)]
pub fn gemm1(
    dst: &mut [f32],
    m: usize,
    n: usize,
    k: usize,
    a: Mat,
    b: Mat,
    scale: f32,
    accumulate: bool,
) {
    let par = gemm::Parallelism::None;
    // SAFETY: gemm_with writes only floats through the view.
    gemm_with(
        par,
        unsafe { as_uninit(dst) },
        m,
        n,
        k,
        a,
        b,
        scale,
        accumulate,
    )
}

/// Floats seen as possibly-uninitialised floats, for `gemm_with`.
///
/// # Safety
/// Only initialised floats may be written through the view (the slice stays `[f32]`).
unsafe fn as_uninit(s: &mut [f32]) -> &mut [MaybeUninit<f32>] {
    // SAFETY: same layout; the caller writes nothing but floats.
    unsafe { &mut *(s as *mut [f32] as *mut [MaybeUninit<f32>]) }
}

/// A fresh (m, n) matrix = scale · a (m, k) · b (k, n), on rayon's threads. Its buffer is
/// never zero-filled: gemm overwrites every element (see `gemm_with`).
pub fn product(m: usize, n: usize, k: usize, a: Mat, b: Mat, scale: f32) -> Vec<f32> {
    let mut dst = uninit(m * n);
    let par = gemm::Parallelism::Rayon(rayon::current_num_threads());
    gemm_with(par, &mut dst, m, n, k, a, b, scale, false);
    // SAFETY: without accumulation gemm writes all m·n elements.
    unsafe { assume_init(dst) }
}

/// Panics unless `a` holds an (m, k) matrix and `b` a (k, n) one (a bug in the caller, never
/// UB: checked before every call into gemm).
fn check_views(m: usize, n: usize, k: usize, a: Mat, b: Mat) {
    assert!(
        a.holds(m, k),
        "gemm: a is not ({m}, {k}) inside its {} elements",
        a.data.len()
    );
    assert!(
        b.holds(k, n),
        "gemm: b is not ({k}, {n}) inside its {} elements",
        b.data.len()
    );
}

/// Output columns per task of [`product_by_columns`]: whole 64-row tiles of gemm's AVX-512
/// kernel (it runs the transposed problem, so our columns are its rows).
const COLUMN_TILE: usize = 64;
/// At most this many tasks: fixed by the shape alone, never by the thread count, so a
/// product's bits do not depend on the machine (each task's elements are summed exactly as
/// in one call: tested).
const COLUMN_TASKS: usize = 16;

/// `product`, split into blocks of output columns that rayon's threads take, each a gemm
/// call of its own on one thread. gemm's own parallel product packs the whole `b` on the
/// calling thread first while the others wait (for an (out, in) weight read transposed, a
/// strided copy of all of it); here each task packs only its columns' part, in parallel.
/// Measured on 2 threads (row-major x times a transposed (out, in) weight): 300 rows x 576
/// -> 576 238 -> 287 GFLOP/s, 300 x 1536 -> 576 230 -> 288, 800 x 576 -> 960 293 -> 328,
/// 64 x 1536 -> 576 95 -> 179, 2048 x 576 -> 3072 354 -> 359. Narrow products (fewer
/// than two tiles of columns) stay one parallel gemm call.
pub fn product_by_columns(m: usize, n: usize, k: usize, a: Mat, b: Mat, scale: f32) -> Vec<f32> {
    let mut dst = uninit(m * n);
    product_by_columns_into(&mut dst, n, (m, n, k), a, b, scale);
    // SAFETY: `product_by_columns_into` writes every element of the (m, n) block, which is
    // all of dst (rows n apart).
    unsafe { assume_init(dst) }
}

/// `product_by_columns` into the (m, n) block of a row-major matrix whose rows are `rs`
/// apart, starting at `dst[0]` (a column block of a fused product's output): every element
/// of the block is written, nothing else. Panics when the block does not fit.
pub fn product_by_columns_into(
    dst: &mut [MaybeUninit<f32>],
    rs: usize,
    (m, n, k): (usize, usize, usize),
    a: Mat,
    b: Mat,
    scale: f32,
) {
    check_block(dst.len(), rs, m, n);
    check_views(m, n, k, a, b);
    if m == 0 || n == 0 {
        return;
    }
    let tiles = n / COLUMN_TILE;
    // Narrow products (fewer than two tiles of columns) stay one parallel gemm call.
    let width = match tiles < 2 {
        true => n,
        false => tiles.div_ceil(COLUMN_TASKS) * COLUMN_TILE,
    };
    let par = match tiles < 2 {
        true => gemm::Parallelism::Rayon(rayon::current_num_threads()),
        false => gemm::Parallelism::None,
    };
    by_column_blocks(dst.as_mut_ptr().cast::<f32>(), n, width, |j0, nb, out| {
        // SAFETY: the (m, n) block at row stride rs lies inside dst (asserted) and lives
        // until the tasks end; this task writes only columns j0..j0 + nb of it (no two tasks
        // share a column), and gemm writes every one of those elements (no accumulation;
        // with k == 0 it zeroes them). a is (m, k) and b's columns j0..j0 + nb are (k, nb)
        // inside their slices (checked above for the whole of b; column j0 starts j0·cs
        // further in).
        unsafe {
            raw_gemm(
                par,
                (out.add(j0), rs),
                (m, nb, k),
                (a.data.as_ptr(), a),
                (b.data.as_ptr().add(j0 * b.cs), b),
                scale,
                false,
            )
        }
    });
}

/// Runs `task(j0, nb, out)` on rayon's threads for each block of `width` columns (the last
/// narrower) of an output of `n` columns at `out`; each task may write only its own columns.
fn by_column_blocks(
    out: *mut f32,
    n: usize,
    width: usize,
    task: impl Fn(usize, usize, *mut f32) + Sync,
) {
    /// The output's address, shared by the tasks (each writes only its own columns).
    struct Out(*mut f32);
    // SAFETY: the pointer is only handed to tasks that write disjoint columns, inside `scope`.
    unsafe impl Sync for Out {}
    let (out, task) = (&Out(out), &task);
    rayon::scope(|sc| {
        for j0 in (0..n).step_by(width.max(1)) {
            let nb = width.min(n - j0);
            sc.spawn(move |_| task(j0, nb, out.0));
        }
    });
}

/// Floats of one task's block of `b` in [`product_by_made_columns`]: 256K (1 MiB), reused per
/// thread, so a task's columns stay in its core's cache from being made to being multiplied.
const MADE_BLOCK_FLOATS: usize = 1 << 18;

thread_local! {
    static MADE_BLOCK: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// [`product_by_columns`] with `b` (k, n) never whole in memory: each task has `make(j0, nb,
/// rows)` write b's columns j0..j0 + nb as nb rows of k values (b's transpose: a weight's
/// rows, dequantized) into a scratch block its thread reuses, then multiplies them. A
/// quantized weight's prompt-sized product runs this way instead of dequantizing the whole
/// weight first (whose fresh pages the kernel zero-fills on every pass). Blocks are whole
/// tiles of columns, as in `product_by_columns`, narrowed to keep a block within
/// `MADE_BLOCK_FLOATS`.
pub fn product_by_made_columns(
    m: usize,
    n: usize,
    k: usize,
    a: Mat,
    make: &(dyn Fn(usize, usize, &mut [f32]) + Sync),
) -> Vec<f32> {
    check_views(
        m,
        0,
        k,
        a,
        Mat {
            data: &[],
            rs: 1,
            cs: 1,
        },
    );
    let mut dst = uninit(m * n);
    if m == 0 || n == 0 {
        // SAFETY: nothing to write.
        return unsafe { assume_init(dst) };
    }
    let fit = (MADE_BLOCK_FLOATS / k.max(1)) / COLUMN_TILE * COLUMN_TILE;
    let width = (n / COLUMN_TILE)
        .div_ceil(COLUMN_TASKS)
        .max(1)
        .saturating_mul(COLUMN_TILE)
        .min(fit.max(COLUMN_TILE))
        .min(n);
    by_column_blocks(dst.as_mut_ptr().cast::<f32>(), n, width, |j0, nb, out| {
        MADE_BLOCK.with_borrow_mut(|block| {
            block.resize(nb * k, 0.0);
            make(j0, nb, &mut block[..nb * k]);
            // b's columns j0.. as made: element (i, j) at block[j·k + i].
            let b = Mat {
                data: &block[..nb * k],
                rs: 1,
                cs: k,
            };
            check_views(m, nb, k, a, b);
            // SAFETY: the (m, n) output lies in dst and lives until the tasks end; this task
            // writes only columns j0..j0 + nb (no two tasks share one), every one of them (no
            // accumulation); a is (m, k) and b (k, nb), checked.
            unsafe {
                raw_gemm(
                    gemm::Parallelism::None,
                    (out.add(j0), n),
                    (m, nb, k),
                    (a.data.as_ptr(), a),
                    (b.data.as_ptr(), b),
                    1.0,
                    false,
                )
            }
        })
    });
    // SAFETY: the tasks' column blocks cover all n columns of every row, each written whole.
    unsafe { assume_init(dst) }
}

/// `product` on one thread into a block of an `uninit` buffer; returns the block, written.
#[allow(clippy::too_many_arguments)]
pub fn product1<'d>(
    dst: &'d mut [MaybeUninit<f32>],
    m: usize,
    n: usize,
    k: usize,
    a: Mat,
    b: Mat,
    scale: f32,
) -> &'d mut [f32] {
    gemm_with(gemm::Parallelism::None, dst, m, n, k, a, b, scale, false);
    // SAFETY: without accumulation gemm writes all m·n elements of dst (checked to be m·n).
    unsafe { assume_init_mut(dst) }
}

/// The one call into the `gemm` crate: every length and stride is checked first, so the
/// wrapper is safe whatever its callers pass. `dst` may be uninitialised unless
/// `accumulate`: gemm then only writes it, every element (with k == 0, zeroes). With
/// `accumulate` it is read, and the callers pass initialised floats (`gemm`, `gemm1`).
#[allow(clippy::too_many_arguments)]
fn gemm_with(
    par: gemm::Parallelism,
    dst: &mut [MaybeUninit<f32>],
    m: usize,
    n: usize,
    k: usize,
    a: Mat,
    b: Mat,
    scale: f32,
    accumulate: bool,
) {
    assert_eq!(dst.len(), m * n, "gemm: dst is not ({m}, {n})");
    check_views(m, n, k, a, b);
    if m == 0 || n == 0 {
        return;
    }
    // SAFETY: dst is exactly (m, n) row-major and exclusively borrowed; the asserts above
    // put every element gemm reads of a (m, k) and b (k, n) inside their slices, which are
    // borrowed (alive, unaliased by dst) for the call. Strides fit isize because they index
    // inside a slice. With k == 0 gemm reads neither input and scales or zeroes dst. dst is
    // read only when `accumulate`, which only the initialised-float callers ask for.
    unsafe {
        raw_gemm(
            par,
            (dst.as_mut_ptr().cast::<f32>(), n),
            (m, n, k),
            (a.data.as_ptr(), a),
            (b.data.as_ptr(), b),
            scale,
            accumulate,
        )
    }
}

/// dst (m, n; rows `dst.1` apart) = [dst +] scale · a (m, k) · b (k, n), the matrices' first
/// elements at the given pointers with the strides of their views.
///
/// # Safety
/// Every element of the three matrices lies inside live memory that nothing else uses
/// during the call (dst: nothing else reads or writes it); dst is initialised when
/// `accumulate`.
unsafe fn raw_gemm(
    par: gemm::Parallelism,
    dst: (*mut f32, usize),
    (m, n, k): (usize, usize, usize),
    a: (*const f32, Mat),
    b: (*const f32, Mat),
    scale: f32,
    accumulate: bool,
) {
    // SAFETY: the caller's contract is gemm's.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.0,
            1,
            dst.1 as isize,
            accumulate,
            a.0,
            a.1.cs as isize,
            a.1.rs as isize,
            b.0,
            b.1.cs as isize,
            b.1.rs as isize,
            1.0,
            scale,
            false,
            false,
            false,
            par,
        )
    }
}

// ------------------------------------------------------------------ attention (inference)

/// Which keys each query of a forward pass sees: rows of `past + t` flags (false for padding)
/// and the causal rule (query i of the pass sits at `past + i`), within the last `window`
/// tokens where a layer slides (Gemma's local layers: the query at position p sees positions
/// p - window + 1 ..= p). The window counts tokens, not cache slots, so a row with padding
/// (left of it, or between a resumed prefix and its new tokens) sees what it sees alone. A
/// padding query sees itself as well, so its softmax is defined (its output is never read).
/// `both_ways` (a bidirectional model's one pass over whole texts, `past` 0, padding only on
/// the left): a query sees every token, or with a window the tokens at most `window` slots
/// away on either side (EmbeddingGemma's sliding layers; slots are tokens after the padding).
#[derive(Debug, Clone)]
pub struct Visible {
    pub past: usize,
    pub valid: Arc<Vec<Vec<bool>>>,
    pub window: Option<usize>,
    pub both_ways: bool,
}

impl Visible {
    /// For each row, the first cache slot each query of the pass (slots past..past + t) may
    /// see; `None` without a window. One pass over each row's flags, once per layer.
    fn window_starts(&self, t: usize) -> Option<Vec<Vec<usize>>> {
        let w = self.window?;
        Some(
            self.valid
                .iter()
                .map(|v| window_starts(v, self.past, t, w))
                .collect(),
        )
    }
}

/// For slots past..past + t of a row, the first slot each query's window sees, from the
/// tokens' ranks (the definition, scanning back, is in the tests): a query
/// sees itself and the `window - 1` tokens before it, so its first slot is the token of rank
/// (tokens before it) + 1 - window.
pub(crate) fn window_starts(valid: &[bool], past: usize, t: usize, window: usize) -> Vec<usize> {
    let tokens: Vec<usize> = (0..past + t).filter(|&j| valid[j]).collect();
    let mut before = tokens.partition_point(|&j| j < past);
    (past..past + t)
        .map(|at| {
            while before < tokens.len() && tokens[before] < at {
                before += 1;
            }
            match window {
                // Only itself, token or padding.
                0 | 1 => at,
                w if before + 1 >= w => tokens[before + 1 - w],
                _ => 0,
            }
        })
        .collect()
}

struct Attend {
    scale: f32,
    /// Scores become `c·tanh(score/c)` before the softmax (Gemma 2).
    softcap: Option<f32>,
    visible: Visible,
}

/// Query rows per block: each block's scores are (rows, keys up to the block's last query).
const QUERY_BLOCK: usize = 64;

/// A (b, dim1, n, d) tensor's view of batch row `bi`, head `h`: its (n, d) rows, in place
/// when f32, else widened into `buf` (the products read f32).
fn head_rows<'a>(
    data: Elems<'a>,
    l: &Layout,
    bi: usize,
    h: usize,
    buf: &'a mut Vec<f32>,
) -> Result<Mat<'a>> {
    let st = l.stride();
    if st.len() != 4 || st[3] != 1 {
        bail!("galley attention: keys and values need a unit stride in the head dimension");
    }
    let at = l.start_offset() + bi * st[0] + h * st[1];
    match data {
        Elems::F32(x) => Ok(Mat {
            data: x.get(at..).unwrap_or_default(),
            rs: st[2],
            cs: 1,
        }),
        Elems::F16(x) => {
            let (n, d) = (l.dims()[2], l.dims()[3]);
            buf.resize(n * d, 0.0);
            for (j, dst) in buf.chunks_exact_mut(d).enumerate() {
                let row = x.get(at + j * st[2]..).and_then(|r| r.get(..d));
                let Some(row) = row else {
                    bail!("galley attention: a key or value row past its storage");
                };
                crate::kernels::attend::widen(row, dst);
            }
            Ok(Mat {
                data: &buf[..],
                rs: d,
                cs: 1,
            })
        }
    }
}

/// `m`'s rows from row `from` on (a sliding window's first key).
fn rows_from(m: Mat<'_>, from: usize) -> Result<Mat<'_>> {
    match m.data.get(from * m.rs..) {
        Some(data) => Ok(Mat { data, ..m }),
        None => bail!("galley attention: a window starts past the keys held"),
    }
}

/// A KV cache's storage as the attention kernels read it: f32 or f16.
fn elems(s: &CpuStorage) -> Result<Elems<'_>> {
    match s {
        CpuStorage::F32(x) => Ok(Elems::F32(x)),
        CpuStorage::F16(x) => Ok(Elems::F16(x)),
        other => bail!(
            "galley attention: keys and values in {:?} (f32 or f16 are read)",
            other.dtype()
        ),
    }
}

impl CustomOp3 for Attend {
    fn name(&self) -> &'static str {
        "galley-attend"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let q = slice(s1, l1)?;
        let (ks, vs) = (elems(s2)?, elems(s3)?);
        if s2.dtype() != s3.dtype() {
            bail!(
                "galley attention: keys in {:?}, values in {:?}",
                s2.dtype(),
                s3.dtype()
            );
        }
        let (b, heads, t, d) = l1.shape().dims4()?;
        let (kb, kvh, n, kd) = l2.shape().dims4()?;
        if l3.shape().dims4()? != (kb, kvh, n, kd)
            || (kb, kd) != (b, d)
            || kvh == 0
            || !heads.is_multiple_of(kvh)
            || self.visible.valid.len() != b
            || self.visible.valid.iter().any(|v| v.len() != n)
            || self.visible.past + t != n
        {
            bail!(
                "galley attention: q {:?}, k {:?}, v {:?} and the mask ({} rows, past {}) disagree",
                l1.shape(),
                l2.shape(),
                l3.shape(),
                self.visible.valid.len(),
                self.visible.past
            );
        }
        let rep = heads / kvh;
        let past = self.visible.past;
        if t == 1 && rep <= crate::kernels::attend::MAX_GROUP {
            // A decode step: its own kernel (no gemm packing for 3 x n products).
            let rows = |l: &Layout, data| -> Result<crate::kernels::attend::Rows<'_>> {
                let st = l.stride();
                if st[3] != 1 {
                    bail!(
                        "galley attention: keys and values need a unit stride in the head dimension"
                    );
                }
                Ok(crate::kernels::attend::Rows {
                    data,
                    start: l.start_offset(),
                    sb: st[0],
                    sh: st[1],
                    sj: st[2],
                })
            };
            let step = crate::kernels::attend::Step {
                q,
                k: rows(l2, ks)?,
                v: rows(l3, vs)?,
                valid: &self.visible.valid,
                past,
                window: self.visible.window,
                heads,
                kv_heads: kvh,
                d,
                scale: self.scale,
                softcap: self.softcap,
            };
            let out = crate::kernels::attend::decode(&step);
            return Ok((CpuStorage::F32(out), Shape::from((b, heads, t, d))));
        }
        // A short pass (a decode step, a short prefill) multiplies the query heads that share
        // a KV head as one block of rep·t rows (row r at position r % t): bigger products, a
        // fraction of the calls. A long one goes head by head in blocks of query positions,
        // each multiplying only the keys up to its last query.
        let group = if t <= QUERY_BLOCK { rep } else { 1 };
        let block_rows = if group > 1 {
            group * t
        } else {
            QUERY_BLOCK.min(t)
        };
        if self.visible.both_ways && past != 0 {
            bail!("galley attention: a bidirectional pass reads no cache (past {past})");
        }
        let starts = match self.visible.both_ways {
            true => None,
            false => self.visible.window_starts(t),
        };
        // The first slot the query at `at` of row `bi` sees, and one past its last.
        let first_key = |bi: usize, at: usize| match (self.visible.both_ways, self.visible.window) {
            (true, Some(w)) => at.saturating_sub(w),
            (true, None) => 0,
            (false, _) => starts.as_ref().map_or(0, |s| s[bi][at - past]),
        };
        let end_key = |at: usize| match (self.visible.both_ways, self.visible.window) {
            (true, Some(w)) => (at + w + 1).min(n),
            (true, None) => n,
            (false, _) => at + 1,
        };
        let mut out = uninit(b * heads * t * d);
        // On galley's pool, as the products between which this runs (see `Pool::chunks_mut`).
        let failed = std::sync::Mutex::new(None);
        crate::pool::Pool::global().chunks_mut(&mut out, group * t * d, &|task, o| {
            let done = (|| -> Result<()> {
                let per_row = heads / group;
                let (bi, h0) = (task / per_row, (task % per_row) * group);
                let valid = &self.visible.valid[bi];
                let (mut kbuf, mut vbuf) = (Vec::new(), Vec::new());
                let (kr, vr) = (
                    head_rows(ks, l2, bi, h0 / rep, &mut kbuf)?,
                    head_rows(vs, l3, bi, h0 / rep, &mut vbuf)?,
                );
                // Rows (bi, h0..h0 + group, all t positions) of q and of the output.
                let qh = &q[task * group * t * d..][..group * t * d];
                let mut scores = uninit(block_rows * n);
                for r0 in (0..group * t).step_by(block_rows) {
                    let rows = block_rows.min(group * t - r0);
                    let last = if group > 1 { t - 1 } else { r0 + rows - 1 };
                    // Keys after the block's last query are masked for every row of it, and
                    // (a sliding layer) keys before its first query's window for every row:
                    // the products span only the keys between (both ways: to the last query's
                    // window's end).
                    let keys = end_key(past + last);
                    let first = if group > 1 { 0 } else { r0 };
                    let from = first_key(bi, past + first);
                    let span = keys - from;
                    let (kw, vw) = (rows_from(kr, from)?, rows_from(vr, from)?);
                    let s = product1(
                        &mut scores[..rows * span],
                        rows,
                        span,
                        d,
                        rm(&qh[r0 * d..], d),
                        Mat {
                            data: kw.data,
                            rs: 1,
                            cs: kw.rs,
                        },
                        self.scale,
                    );
                    for (r, row) in s.chunks_exact_mut(span).enumerate() {
                        let at = past + (r0 + r) % t;
                        // Keys before this row's window get probability 0 (their products
                        // with the values then add nothing), as do keys past its last (both
                        // ways; causally the softmax zeroes what follows the query).
                        let lo = first_key(bi, at) - from;
                        let hi = end_key(at) - from;
                        if let Some(cap) = self.softcap {
                            crate::kernels::rowwise::softcap_row(&mut row[lo..hi], cap);
                        }
                        // The last key seen is a token: the query itself, or (both ways, padding
                        // on the left only) one after it.
                        crate::kernels::rowwise::softmax_causal(
                            &mut row[lo..hi],
                            hi - 1 - lo,
                            &valid[from + lo..],
                            1.0,
                        );
                        row[..lo].fill(0.0);
                        row[hi..].fill(0.0);
                    }
                    let s = &*s;
                    gemm_with(
                        gemm::Parallelism::None,
                        &mut o[r0 * d..][..rows * d],
                        rows,
                        d,
                        span,
                        rm(s, span),
                        vw,
                        1.0,
                        false,
                    );
                }
                Ok(())
            })();
            if let Err(e) = done {
                failed
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get_or_insert(e);
            }
        });
        if let Some(e) = failed.into_inner().unwrap_or_else(|e| e.into_inner()) {
            return Err(e);
        }
        // SAFETY: the tasks' chunks cover `out` and each chunk's row blocks were written whole.
        let out = unsafe { assume_init(out) };
        Ok((CpuStorage::F32(out), Shape::from((b, heads, t, d))))
    }
}

/// softmax(scale·q·kᵀ under `visible`)·v for q (b, heads, t, d), k and v (b, kv_heads, past +
/// t, d) (views into a KV cache are read in place; f32 or f16); returns (b, heads, t, d).
/// With `softcap` c, each scaled score s becomes c·tanh(s/c) first. CPU; q f32.
pub fn attend(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    (scale, softcap): (f32, Option<f32>),
    visible: Visible,
) -> Result<Tensor> {
    q.contiguous()?.apply_op3_no_bwd(
        k,
        v,
        &Attend {
            scale,
            softcap,
            visible,
        },
    )
}

// ------------------------------------------------------------------ SiLU and GELU gates

/// act(gate)·up over gate|up halves: SiLU (Llama, Qwen, Mistral) or GELU's tanh
/// approximation (Gemma).
struct GateMulHalves {
    gelu: bool,
}

impl CustomOp1 for GateMulHalves {
    fn name(&self) -> &'static str {
        match self.gelu {
            true => "galley-gelu-mul-halves",
            false => "galley-silu-mul-halves",
        }
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = slice(s, l)?;
        let dims = l.shape().dims();
        let w = *dims.last().unwrap_or(&0);
        if !w.is_multiple_of(2) {
            bail!("galley silu-mul: the last dimension ({w}) is not gate and up halves");
        }
        let i = w / 2;
        let mut y = uninit(x.len() / 2);
        let gelu = self.gelu;
        // On galley's pool, as the products around it (see `Pool::chunks_mut`).
        crate::pool::Pool::global().chunks_mut(&mut y, i, &|row, y| {
            let (g, u) = x[row * w..][..w].split_at(i);
            match gelu {
                true => crate::kernels::rowwise::gelu_gate(y, g, u),
                false => crate::kernels::rowwise::silu_gate(y, g, u),
            }
        });
        // SAFETY: one (i) output row per input row, every element written.
        let y = unsafe { assume_init(y) };
        let mut out = dims.to_vec();
        if let Some(last) = out.last_mut() {
            *last = i;
        }
        Ok((CpuStorage::F32(y), Shape::from(out)))
    }
    /// For training (the fused gate|up product's output): both halves' gradients in one
    /// tensor of x's shape.
    fn bwd(&self, x: &Tensor, _res: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
        let w = *x.dims().last().unwrap_or(&0);
        let i = w / 2;
        let gelu = self.gelu;
        let dx = with_f32(x, |x| {
            with_f32(dy, |dy| {
                let mut dx = uninit(x.len());
                dx.par_chunks_mut(w.max(1))
                    .zip(x.par_chunks(w.max(1)).zip(dy.par_chunks(i.max(1))))
                    .for_each(|(d, (r, dy))| {
                        let (dg, du) = d.split_at_mut(i);
                        let (g, u) = r.split_at(i);
                        match gelu {
                            true => crate::kernels::rowwise::gelu_gate_grad(dg, du, g, u, dy),
                            false => crate::kernels::rowwise::silu_gate_grad(dg, du, g, u, dy),
                        }
                    });
                // SAFETY: every row's two halves written.
                unsafe { assume_init(dx) }
            })
        })??;
        Ok(Some(Tensor::from_vec(dx, x.shape(), x.device())?))
    }
}

/// silu(gate)·up for `x` (..., 2·i) holding the gate and up projections side by side; returns
/// (..., i). CPU, f32; with a backward pass when x is tracked (training's fused gate|up).
pub fn silu_mul_halves(x: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op1(GateMulHalves { gelu: false })
}

/// `silu_mul_halves` with GELU's tanh approximation (PyTorch's `gelu(approximate="tanh")`,
/// Gemma's `gelu_pytorch_tanh`) for the gate.
pub fn gelu_mul_halves(x: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op1(GateMulHalves { gelu: true })
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{D, DType, Device};

    /// The dense-mask path GPUs run: scores, additive mask, softmax, product.
    fn reference(
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        (scale, cap): (f32, Option<f32>),
        vis: &Visible,
    ) -> Tensor {
        let (b, heads, t, _) = q.dims4().unwrap();
        let (kvh, n) = (k.dim(1).unwrap(), k.dim(2).unwrap());
        let rep = heads / kvh;
        let mut m = vec![0f32; b * t * n];
        for (r, valid) in vis.valid.iter().enumerate() {
            for i in 0..t {
                for j in 0..n {
                    let at = vis.past + i;
                    let first = vis.window.map_or(0, |w| first_in_window(valid, at, w));
                    if !(j == at || (j < at && valid[j])) || j < first {
                        m[(r * t + i) * n + j] = f32::NEG_INFINITY;
                    }
                }
            }
        }
        let mask = Tensor::from_vec(m, (b, 1, t, n), &Device::Cpu).unwrap();
        let expand = |x: &Tensor| {
            x.unsqueeze(2)
                .unwrap()
                .repeat((1, 1, rep, 1, 1))
                .unwrap()
                .reshape((b, heads, n, x.dim(3).unwrap()))
                .unwrap()
        };
        let (k, v) = (expand(k), expand(v));
        let s = (q.matmul(&k.t().unwrap()).unwrap() * scale as f64).unwrap();
        let s = match cap {
            Some(c) => ((s / c as f64).unwrap().tanh().unwrap() * c as f64).unwrap(),
            None => s,
        };
        let p = candle_nn::ops::softmax_last_dim(&s.broadcast_add(&mask).unwrap()).unwrap();
        p.matmul(&v).unwrap()
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(D::Minus1)
            .unwrap()
            .to_scalar()
            .unwrap()
    }

    #[test]
    fn attention_matches_the_dense_mask_path_with_padding_past_and_cache_views() {
        let dev = Device::Cpu;
        // 70 queries: two query blocks head by head, the second partial; 9 and 1 (a decode
        // step): the heads of a KV group as one block. Row 1 is left-padded by 5 and has a
        // padding hole in the past (a joined cache); keys and values are views into a cache
        // buffer with room to spare, as KvCache hands them out.
        // A decode step also with heads of 64 and of 40 (a partial lane group) dimensions.
        for (t, d) in [(70, 16), (9, 16), (1, 16), (1, 64), (1, 40)] {
            let (b, heads, kvh, past) = (2, 6, 2, 9);
            let n = past + t;
            let q = Tensor::randn(0f32, 1.0, (b, heads, t, d), &dev).unwrap();
            let kbuf = Tensor::randn(0f32, 1.0, (b, kvh, n + 30, d), &dev).unwrap();
            let vbuf = Tensor::randn(0f32, 1.0, (b, kvh, n + 30, d), &dev).unwrap();
            let (k, v) = (kbuf.narrow(2, 0, n).unwrap(), vbuf.narrow(2, 0, n).unwrap());
            let mut valid = vec![vec![true; n]; b];
            valid[1][..5].fill(false);
            valid[1][past + t / 2] = false;
            let vis = Visible {
                past,
                valid: Arc::new(valid),
                window: None,
                both_ways: false,
            };
            let got = attend(&q, &k, &v, (0.25, None), vis.clone()).unwrap();
            let (kc, vc) = (k.contiguous().unwrap(), v.contiguous().unwrap());
            let want = reference(&q, &kc, &vc, (0.25, None), &vis);
            assert_eq!(got.dims(), want.dims());
            let diff = max_diff(&got, &want);
            assert!(diff < 1e-5, "t = {t}, d = {d}: {diff}");
            // An f16 cache (views into it, as for f32) gives the bits of its values widened
            // first, in the decode kernel and in the blocked products alike.
            let (kh, vh) = (
                kbuf.to_dtype(DType::F16).unwrap(),
                vbuf.to_dtype(DType::F16).unwrap(),
            );
            let view = |x: &Tensor| x.narrow(2, 0, n).unwrap();
            let wide = |x: &Tensor| x.to_dtype(DType::F32).unwrap().narrow(2, 0, n).unwrap();
            let half = attend(&q, &view(&kh), &view(&vh), (0.25, None), vis.clone()).unwrap();
            let widened = attend(&q, &wide(&kh), &wide(&vh), (0.25, None), vis.clone()).unwrap();
            let bits = |x: &Tensor| -> Vec<u32> {
                let v = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                v.iter().map(|x| x.to_bits()).collect()
            };
            assert_eq!(bits(&half), bits(&widened), "t = {t}, d = {d}");
            // Keys in f16, values in f32: refused, not misread.
            assert!(attend(&q, &view(&kh), &v, (0.25, None), vis.clone()).is_err());
            // A sliding window (Gemma's local layers): narrower than the pass, and wider;
            // with Gemma 2's soft-capping of the scores too (a cap that bends them).
            for (window, cap) in [
                (4, None),
                (7, None),
                (n + 3, None),
                (4, Some(0.7)),
                (n, Some(0.7)),
            ] {
                let vis = Visible {
                    window: Some(window),
                    both_ways: false,
                    ..vis.clone()
                };
                let got = attend(&q, &k, &v, (0.25, cap), vis.clone()).unwrap();
                let want = reference(&q, &kc, &vc, (0.25, cap), &vis);
                let diff = max_diff(&got, &want);
                assert!(
                    diff < 1e-5,
                    "t = {t}, d = {d}, window {window}, cap {cap:?}: {diff}"
                );
            }
        }
    }

    /// The slot of the `window`-th token back from slot `at` (itself counted), 0 when fewer:
    /// the definition `window_starts` computes for a whole pass.
    fn first_in_window(valid: &[bool], at: usize, window: usize) -> usize {
        let mut seen = 0;
        for j in (0..=at).rev() {
            if j == at || valid[j] {
                seen += 1;
                if seen == window {
                    return j;
                }
            }
        }
        0
    }

    /// A pass's window starts, from the tokens' ranks, are the definition's for every slot:
    /// left padding, holes, a padding query, windows from 1 to past the row.
    #[test]
    fn window_starts_are_the_definitions_for_every_slot() {
        let valid: Vec<bool> = (0..40).map(|j| j >= 3 && j % 7 != 5).collect();
        for window in 1..45 {
            for (past, t) in [(0, 40), (9, 31), (39, 1)] {
                let got = window_starts(&valid, past, t, window);
                let want: Vec<usize> = (past..past + t)
                    .map(|at| first_in_window(&valid, at, window))
                    .collect();
                assert_eq!(got, want, "window {window}, past {past}");
            }
        }
    }

    /// Column blocks give the same bits as one gemm call for products of more than a few
    /// rows (gemm takes other kernels for a handful of rows, where they agree to rounding),
    /// for widths that split into one, several and a partial block, and for a transposed
    /// weight read in place.
    #[test]
    fn products_by_column_blocks_are_one_calls_bits() {
        for (m, k, n) in [
            (33, 40, 100),
            (40, 40, 128),
            (70, 64, 64 * 17 + 5),
            (3, 9, 2000),
        ] {
            let a: Vec<f32> = (0..m * k)
                .map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0)
                .collect();
            let w: Vec<f32> = (0..n * k)
                .map(|i| ((i * 53 % 97) as f32 - 48.0) / 9.0)
                .collect();
            let want = product(m, n, k, rm(&a, k), tr(&w, k), 0.5);
            let wt: Vec<f32> = (0..k * n).map(|i| w[(i % n) * k + i / n]).collect();
            for (got, how) in [
                (
                    product_by_columns(m, n, k, rm(&a, k), tr(&w, k), 0.5),
                    "weight",
                ),
                (
                    product_by_columns(m, n, k, rm(&a, k), rm(&wt, n), 0.5),
                    "transposed",
                ),
            ] {
                assert_eq!(got.len(), want.len());
                let first = got.iter().zip(&want).position(|(g, w)| {
                    if m > 32 {
                        g.to_bits() != w.to_bits()
                    } else {
                        (g - w).abs() > 1e-5 * (1.0 + w.abs())
                    }
                });
                assert_eq!(first, None, "({m}, {k}, {n}) {how}");
            }
        }
    }

    #[test]
    fn attention_refuses_a_mask_of_another_shape() {
        let dev = Device::Cpu;
        let q = Tensor::zeros((1, 2, 3, 4), candle_core::DType::F32, &dev).unwrap();
        let k = Tensor::zeros((1, 1, 3, 4), candle_core::DType::F32, &dev).unwrap();
        let vis = Visible {
            past: 1,
            valid: Arc::new(vec![vec![true; 3]]),
            window: None,
            both_ways: false,
        };
        let e = attend(&q, &k, &k, (1.0, None), vis)
            .unwrap_err()
            .to_string();
        assert!(e.contains("disagree"), "{e}");
    }

    #[test]
    fn silu_gate_of_halves_matches_candle() {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 2.0, (3, 5, 2 * 7), &dev).unwrap();
        let got = silu_mul_halves(&x).unwrap();
        let (g, u) = (x.narrow(2, 0, 7).unwrap(), x.narrow(2, 7, 7).unwrap());
        let want = (candle_nn::ops::silu(&g).unwrap() * u).unwrap();
        assert_eq!(got.dims(), &[3, 5, 7]);
        // The vectorized exp is within 2 ulp of libm's.
        let diff = max_diff(&got, &want);
        assert!(diff < 1e-5, "{diff}");
    }
}
