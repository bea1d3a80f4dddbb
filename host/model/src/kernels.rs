//! Kernels galley owns where candle's are slow. First: the Q4_1 matrix–vector product of
//! decoding. candle's Q4_1 dot product is scalar (4x slower than llama.cpp here); this one
//! rounds the activations to 8-bit blocks (as llama.cpp's Q8_1) and multiplies 32 weights at
//! a time with AVX2 integer dot products (`vpmaddubsw`), picked at run time, with a portable
//! fallback that computes the same integers.
//!
//! Q4_1 block (ggml layout, 20 bytes per 32 weights): f16 `d`, f16 `m`, 16 bytes of nibbles;
//! weight j is `d * q_j + m` with q_j the low nibble of byte j (j < 16) or the high nibble of
//! byte j - 16. A block's dot with activations `a ≈ da * qa` is then
//! `d * da * Σ q_j qa_j + m * (da * Σ qa_j)`.

pub const QK: usize = 32;
const Q4_1_BLOCK_BYTES: usize = 20;

/// Activations of one row rounded to 8 bits per block of 32: scale, scale × sum, values.
struct Q8Row {
    d: Vec<f32>,
    s: Vec<f32>,
    q: Vec<i8>,
}

fn quantize_row(x: &[f32]) -> Q8Row {
    let blocks = x.len() / QK;
    let mut row = Q8Row {
        d: Vec::with_capacity(blocks),
        s: Vec::with_capacity(blocks),
        q: vec![0; x.len()],
    };
    for (b, chunk) in x.chunks_exact(QK).enumerate() {
        let amax = chunk.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
        let mut sum = 0i32;
        for (j, v) in chunk.iter().enumerate() {
            let q = (v * inv).round() as i32;
            row.q[b * QK + j] = q as i8;
            sum += q;
        }
        row.d.push(d);
        row.s.push(d * sum as f32);
    }
    row
}

/// A pointer the pool's threads may share; each writes its own disjoint part.
#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
// SAFETY: the pointer is only dereferenced inside `Pool::run` jobs, which do not outlive the
// buffer it points into, and each part writes a disjoint set of indices (no data race).
unsafe impl Send for SendPtr {}
// SAFETY: as for Send: shared access never writes the same element from two threads.
unsafe impl Sync for SendPtr {}

impl SendPtr {
    fn get(self) -> *mut f32 {
        self.0
    }
}

#[inline]
fn f16(bytes: &[u8], at: usize) -> f32 {
    half::f16::from_bits(u16::from_le_bytes([bytes[at], bytes[at + 1]])).to_f32()
}

/// One weight row (its Q4_1 blocks) against one quantized activation row.
fn dot_portable(w: &[u8], a: &Q8Row) -> f32 {
    let mut acc = 0f32;
    for (b, blk) in w.chunks_exact(Q4_1_BLOCK_BYTES).enumerate() {
        let (d, m) = (f16(blk, 0), f16(blk, 2));
        let qs = &blk[4..];
        let qa = &a.q[b * QK..(b + 1) * QK];
        let mut sum = 0i32;
        for j in 0..16 {
            sum += i32::from(qs[j] & 0x0F) * i32::from(qa[j])
                + i32::from(qs[j] >> 4) * i32::from(qa[j + 16]);
        }
        acc += d * a.d[b] * sum as f32 + m * a.s[b];
    }
    acc
}

/// The sum of an AVX register's eight lanes.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn hsum(acc: std::arch::x86_64::__m256) -> f32 {
    use std::arch::x86_64::*;
    let quad = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
    let pair = _mm_add_ps(quad, _mm_movehl_ps(quad, quad));
    _mm_cvtss_f32(_mm_add_ss(pair, _mm_shuffle_ps(pair, pair, 1)))
}

/// # Safety
/// The CPU must have AVX2, FMA and F16C (callers check `is_x86_feature_detected!`); `w`
/// must hold whole Q4_1 blocks, no more than `a` has activation blocks.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_avx2(w: &[u8], a: &Q8Row) -> f32 {
    // SAFETY: same target features as this function; `w` starts at block 0.
    unsafe { dot_avx2_at(w, a, 0) }
}

/// `w` holds the weight blocks that meet activation blocks `first..`; `a` must hold them all.
/// # Safety
/// The CPU must have AVX2, FMA and F16C; `w` must hold whole Q4_1 blocks and `a` must hold
/// activation blocks `first..first + w.len() / Q4_1_BLOCK_BYTES`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_avx2_at(w: &[u8], a: &Q8Row, first: usize) -> f32 {
    use std::arch::x86_64::*;
    let blocks = w.len() / Q4_1_BLOCK_BYTES;
    debug_assert!(a.q.len() >= (first + blocks) * QK);
    // SAFETY: every load reads 16 or 32 bytes inside `w` or `a.q`: block b's nibbles are
    // w[20b+4 .. 20b+20] and its activations a.q[32(first+b) .. 32(first+b)+32], b < blocks.
    unsafe {
        let mut acc = _mm256_setzero_ps();
        let mut mins = 0f32;
        let low = _mm_set1_epi8(0x0F);
        let ones = _mm256_set1_epi16(1);
        for b in 0..blocks {
            let blk = w.as_ptr().add(b * Q4_1_BLOCK_BYTES);
            // The block's f16 scale and minimum, converted together by F16C.
            let dm = _mm_cvtph_ps(_mm_cvtsi32_si128((blk as *const i32).read_unaligned()));
            let d = _mm_cvtss_f32(dm);
            let m = _mm_cvtss_f32(_mm_shuffle_ps(dm, dm, 1));
            let packed = _mm_loadu_si128(blk.add(4) as *const __m128i);
            let lo = _mm_and_si128(packed, low);
            let hi = _mm_and_si128(_mm_srli_epi16(packed, 4), low);
            let q4 = _mm256_set_m128i(hi, lo);
            let q8 = _mm256_loadu_si256(a.q.as_ptr().add((first + b) * QK) as *const __m256i);
            // u8 × i8 pairs summed to i16 (at most 2·15·127, no saturation), then pairs to i32.
            let prod = _mm256_madd_epi16(_mm256_maddubs_epi16(q4, q8), ones);
            acc = _mm256_fmadd_ps(
                _mm256_set1_ps(d * a.d[first + b]),
                _mm256_cvtepi32_ps(prod),
                acc,
            );
            mins += m * a.s[first + b];
        }
        hsum(acc) + mins
    }
}

/// Two Q4_1 blocks per step with AVX-512 VNNI (`vpdpbusd`: u8 x i8 products summed into i32
/// in one instruction); an odd last block goes through the AVX2 path.
/// # Safety
/// The CPU must have every feature named in `target_feature` (callers check); `w` must hold
/// whole Q4_1 blocks, no more than `a` has activation blocks.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vnni,avx2,fma,f16c")]
unsafe fn dot_avx512(w: &[u8], a: &Q8Row) -> f32 {
    use std::arch::x86_64::*;
    let blocks = w.len() / Q4_1_BLOCK_BYTES;
    let pairs = blocks / 2;
    // SAFETY: as in dot_avx2; block b's nibbles are w[20b+4 .. 20b+20] and the activations of
    // blocks b and b+1 are a.q[32b .. 32b+64], for b + 1 < blocks.
    unsafe {
        let low = _mm_set1_epi8(0x0F);
        let mut acc = _mm512_setzero_ps();
        let mut mins = 0f32;
        for p in 0..pairs {
            let b = 2 * p;
            let blk0 = w.as_ptr().add(b * Q4_1_BLOCK_BYTES);
            let blk1 = blk0.add(Q4_1_BLOCK_BYTES);
            let n0 = _mm_loadu_si128(blk0.add(4) as *const __m128i);
            let n1 = _mm_loadu_si128(blk1.add(4) as *const __m128i);
            let mut q4 = _mm512_castsi128_si512(_mm_and_si128(n0, low));
            q4 = _mm512_inserti32x4::<1>(q4, _mm_and_si128(_mm_srli_epi16(n0, 4), low));
            q4 = _mm512_inserti32x4::<2>(q4, _mm_and_si128(n1, low));
            q4 = _mm512_inserti32x4::<3>(q4, _mm_and_si128(_mm_srli_epi16(n1, 4), low));
            let q8 = _mm512_loadu_si512(a.q.as_ptr().add(b * QK) as *const __m512i);
            let dots = _mm512_dpbusd_epi32(_mm512_setzero_si512(), q4, q8);
            let dm0 = _mm_cvtph_ps(_mm_cvtsi32_si128((blk0 as *const i32).read_unaligned()));
            let dm1 = _mm_cvtph_ps(_mm_cvtsi32_si128((blk1 as *const i32).read_unaligned()));
            let s0 = _mm_cvtss_f32(dm0) * a.d[b];
            let s1 = _mm_cvtss_f32(dm1) * a.d[b + 1];
            let scale = _mm512_insertf32x8::<1>(
                _mm512_castps256_ps512(_mm256_set1_ps(s0)),
                _mm256_set1_ps(s1),
            );
            acc = _mm512_fmadd_ps(scale, _mm512_cvtepi32_ps(dots), acc);
            mins += _mm_cvtss_f32(_mm_shuffle_ps(dm0, dm0, 1)) * a.s[b]
                + _mm_cvtss_f32(_mm_shuffle_ps(dm1, dm1, 1)) * a.s[b + 1];
        }
        let mut total = _mm512_reduce_add_ps(acc) + mins;
        if blocks % 2 == 1 {
            let b = blocks - 1;
            total += dot_avx2_at(&w[b * Q4_1_BLOCK_BYTES..], a, b);
        }
        total
    }
}

fn has_avx512_vnni() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static VNNI: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *VNNI.get_or_init(|| {
            has_avx512f()
                && has_avx2()
                && is_x86_feature_detected!("avx512bw")
                && is_x86_feature_detected!("avx512dq")
                && is_x86_feature_detected!("avx512vnni")
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

fn has_avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static AVX2: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *AVX2.get_or_init(|| {
            is_x86_feature_detected!("avx2")
                && is_x86_feature_detected!("fma")
                && is_x86_feature_detected!("f16c")
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

fn dot(w: &[u8], a: &Q8Row) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if has_avx512_vnni() {
        // SAFETY: the CPU has AVX-512 F/BW/DQ/VNNI, AVX2, FMA and F16C (checked at run time).
        return unsafe { dot_avx512(w, a) };
    }
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: the CPU has AVX2, FMA and F16C (checked at run time).
        return unsafe { dot_avx2(w, a) };
    }
    dot_portable(w, a)
}

/// Q8_0 block (34 bytes per 32 weights): f16 `d`, 32 signed bytes; weight j is `d * q_j`.
const Q8_0_BLOCK_BYTES: usize = 34;

fn dot_q8_0_portable(w: &[u8], a: &Q8Row) -> f32 {
    let mut acc = 0f32;
    for (b, blk) in w.chunks_exact(Q8_0_BLOCK_BYTES).enumerate() {
        let qa = &a.q[b * QK..(b + 1) * QK];
        let sum: i32 = blk[2..]
            .iter()
            .zip(qa)
            .map(|(&q, &x)| i32::from(q as i8) * i32::from(x))
            .sum();
        acc += f16(blk, 0) * a.d[b] * sum as f32;
    }
    acc
}

/// # Safety
/// The CPU must have AVX2, FMA and F16C (callers check); `w` must hold whole Q8_0 blocks,
/// no more than `a` has activation blocks.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_q8_0_avx2(w: &[u8], a: &Q8Row) -> f32 {
    use std::arch::x86_64::*;
    let blocks = w.len() / Q8_0_BLOCK_BYTES;
    // SAFETY: block b's weights are w[34b+2 .. 34b+34], its activations a.q[32b .. 32b+32].
    unsafe {
        let mut acc = _mm256_setzero_ps();
        let ones = _mm256_set1_epi16(1);
        for b in 0..blocks {
            let blk = w.as_ptr().add(b * Q8_0_BLOCK_BYTES);
            let d = _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(i32::from(
                (blk as *const u16).read_unaligned(),
            ))));
            let qw = _mm256_loadu_si256(blk.add(2) as *const __m256i);
            let qa = _mm256_loadu_si256(a.q.as_ptr().add(b * QK) as *const __m256i);
            // Signed x signed via |w| x (a with w's sign), the unsigned x signed form AVX2 has.
            let prod = _mm256_madd_epi16(
                _mm256_maddubs_epi16(_mm256_sign_epi8(qw, qw), _mm256_sign_epi8(qa, qw)),
                ones,
            );
            acc = _mm256_fmadd_ps(_mm256_set1_ps(d * a.d[b]), _mm256_cvtepi32_ps(prod), acc);
        }
        hsum(acc)
    }
}

fn dot_q8_0(w: &[u8], a: &Q8Row) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: the CPU has AVX2, FMA and F16C (checked at run time).
        return unsafe { dot_q8_0_avx2(w, a) };
    }
    dot_q8_0_portable(w, a)
}

/// One Q8_0 weight row against f32 activations (no rounding of the activations): for the LM
/// head, where the choice of the next token is made and 8-bit activations can flip a close one.
fn dot_q8_0_f32_portable(w: &[u8], x: &&[f32]) -> f32 {
    let mut acc = 0f32;
    for (b, blk) in w.chunks_exact(Q8_0_BLOCK_BYTES).enumerate() {
        let xs = &x[b * QK..(b + 1) * QK];
        let sum: f32 = blk[2..]
            .iter()
            .zip(xs)
            .map(|(&q, &v)| f32::from(q as i8) * v)
            .sum();
        acc += f16(blk, 0) * sum;
    }
    acc
}

/// # Safety
/// The CPU must have AVX2, FMA and F16C (callers check); `x` must hold 32 floats per Q8_0
/// block of `w`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_q8_0_f32_avx2(w: &[u8], x: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    let blocks = w.len() / Q8_0_BLOCK_BYTES;
    // SAFETY: block b's weights are w[34b+2 .. 34b+34], its activations x[32b .. 32b+32].
    unsafe {
        let mut acc = _mm256_setzero_ps();
        for b in 0..blocks {
            let blk = w.as_ptr().add(b * Q8_0_BLOCK_BYTES);
            let d = _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(i32::from(
                (blk as *const u16).read_unaligned(),
            ))));
            let mut s = _mm256_setzero_ps();
            for g in 0..4 {
                let q = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(
                    blk.add(2 + 8 * g) as *const __m128i,
                )));
                s = _mm256_fmadd_ps(q, _mm256_loadu_ps(x.as_ptr().add(b * QK + 8 * g)), s);
            }
            acc = _mm256_fmadd_ps(_mm256_set1_ps(d), s, acc);
        }
        hsum(acc)
    }
}

fn dot_q8_0_f32(w: &[u8], x: &&[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: the CPU has AVX2, FMA and F16C (checked at run time).
        return unsafe { dot_q8_0_f32_avx2(w, x) };
    }
    dot_q8_0_f32_portable(w, x)
}

/// `x` (n × k) times the Q8_0 matrix `w` transposed, with the activations kept in f32.
pub fn q8_0_matmul_f32(x: &[f32], n: usize, k: usize, w: &[u8], rows: usize) -> Vec<f32> {
    assert!(
        k.is_multiple_of(QK) && x.len() == n * k && w.len() == rows * k / QK * Q8_0_BLOCK_BYTES
    );
    let acts: Vec<&[f32]> = x.chunks_exact(k).collect();
    drive(
        dot_q8_0_f32,
        k / QK * Q8_0_BLOCK_BYTES,
        &acts,
        w,
        rows,
        false,
    )
}

/// `x` (n × k) times the f32 matrix `w` (rows × k) transposed, for decode-sized n: every
/// output is one dot product of two contiguous rows, split across the decode pool. gemm's
/// AVX-512 path packs the whole weight for each such product: GRPO's f32 rollouts (16 rows)
/// took 1.6x as long through it as through its AVX2 path (`bench/RESULTS.md`).
pub fn f32_matmul(x: &[f32], n: usize, k: usize, w: &[f32], rows: usize) -> Vec<f32> {
    assert!(k > 0 && x.len() == n * k && w.len() == rows * k);
    let acts: Vec<&[f32]> = x.chunks_exact(k).collect();
    let row_bytes = k * std::mem::size_of::<f32>();
    drive(
        dot_f32,
        row_bytes,
        &acts,
        bytemuck::cast_slice(w),
        rows,
        true,
    )
}

fn dot_f32(w: &[u8], x: &&[f32]) -> f32 {
    let w: &[f32] = bytemuck::cast_slice(w);
    #[cfg(target_arch = "x86_64")]
    if has_avx512f() {
        // SAFETY: the CPU has AVX-512F (checked at run time).
        return unsafe { dot_f32_avx512(w, x) };
    }
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: the CPU has AVX2 and FMA (checked at run time).
        return unsafe { dot_f32_avx2(w, x) };
    }
    dot_f32_portable(w, x)
}

/// Sixteen independent sums (so the loop vectorizes), added in a fixed order: the same bits
/// with every instruction set (no fused multiply-add).
#[inline(always)]
fn dot_f32_portable(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let (ca, cb) = (a.chunks_exact(16), b.chunks_exact(16));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..16 {
            acc[i] += x[i] * y[i];
        }
    }
    let mut s = acc.iter().sum::<f32>();
    for (x, y) in ra.iter().zip(rb) {
        s += x * y;
    }
    s
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn dot_f32_avx512(a: &[f32], b: &[f32]) -> f32 {
    dot_f32_portable(a, b)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_f32_avx2(a: &[f32], b: &[f32]) -> f32 {
    dot_f32_portable(a, b)
}

fn has_avx512f() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static F: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *F.get_or_init(|| {
            std::env::var_os("GALLEY_NO_AVX512").is_none() && is_x86_feature_detected!("avx512f")
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// The block formats galley's kernels multiply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Blocks {
    Q4_1,
    Q8_0,
}

impl Blocks {
    pub fn of(dtype: candle_core::quantized::GgmlDType) -> Option<Self> {
        match dtype {
            candle_core::quantized::GgmlDType::Q4_1 => Some(Self::Q4_1),
            candle_core::quantized::GgmlDType::Q8_0 => Some(Self::Q8_0),
            _ => None,
        }
    }

    fn bytes(self) -> usize {
        match self {
            Self::Q4_1 => Q4_1_BLOCK_BYTES,
            Self::Q8_0 => Q8_0_BLOCK_BYTES,
        }
    }
}

/// `x` (n × k) times the quantized matrix `w` (rows × k, ggml bytes of `kind`) transposed.
pub fn quant_matmul(
    kind: Blocks,
    x: &[f32],
    n: usize,
    k: usize,
    w: &[u8],
    rows: usize,
) -> Vec<f32> {
    match kind {
        Blocks::Q4_1 => matmul_with(dot, kind.bytes(), x, n, k, w, rows),
        Blocks::Q8_0 => matmul_with(dot_q8_0, kind.bytes(), x, n, k, w, rows),
    }
}

/// `x` (n × k, row-major) times the Q4_1 matrix `w` (rows × k, ggml bytes) transposed:
/// returns n × rows. Rows are split across the decode pool's threads.
pub fn q4_1_matmul(x: &[f32], n: usize, k: usize, w: &[u8], rows: usize) -> Vec<f32> {
    quant_matmul(Blocks::Q4_1, x, n, k, w, rows)
}

fn matmul_with(
    dot: fn(&[u8], &Q8Row) -> f32,
    block_bytes: usize,
    x: &[f32],
    n: usize,
    k: usize,
    w: &[u8],
    rows: usize,
) -> Vec<f32> {
    assert!(k.is_multiple_of(QK) && x.len() == n * k && w.len() == rows * k / QK * block_bytes);
    let acts: Vec<Q8Row> = x.chunks_exact(k).map(quantize_row).collect();
    drive(dot, k / QK * block_bytes, &acts, w, rows, false)
}

/// Splits `rows` weight rows across the decode pool and applies `dot` to each with every
/// activation row. `rows_outer` takes each weight row once for all the activation rows (kept
/// in cache); otherwise a thread streams its band of weight rows once per activation row,
/// which suits quantized rows (small) and costs f32 rows, whose bands do not stay in a core's
/// cache (GRPO's rollouts: 28.5 s against 17.6 s of generation).
fn drive<A: Sync>(
    dot: fn(&[u8], &A) -> f32,
    row_bytes: usize,
    acts: &[A],
    w: &[u8],
    rows: usize,
    rows_outer: bool,
) -> Vec<f32> {
    let n = acts.len();
    let mut out = vec![0f32; n * rows];
    // Each thread of the decode pool takes a contiguous band of weight rows for every
    // activation row: the bands are disjoint, so the writes never overlap.
    let pool = crate::pool::Pool::global();
    let per = rows.div_ceil(pool.parts());
    let dst = SendPtr(out.as_mut_ptr());
    pool.run(&|part, _| {
        let start = (part * per).min(rows);
        let end = ((part + 1) * per).min(rows);
        let one = |i: usize, row: usize| {
            let v = dot(&w[row * row_bytes..(row + 1) * row_bytes], &acts[i]);
            // SAFETY: `i * rows + row` is inside `out` (len n * rows) and only this part
            // writes rows start..end.
            unsafe { *dst.get().add(i * rows + row) = v };
        };
        if rows_outer {
            (start..end).for_each(|row| (0..n).for_each(|i| one(i, row)));
        } else {
            (0..n).for_each(|i| (start..end).for_each(|row| one(i, row)));
        }
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::{GgmlDType, QTensor};
    use candle_core::{Device, Tensor};

    /// The f32 decode product against the plain sum in f64, on rows not a multiple of the
    /// pool's parts and lengths with a remainder past the 16 lanes.
    #[test]
    fn f32_matmul_matches_the_exact_product() {
        // k = 100: not a multiple of the 16 lanes, nor of a quantized block.
        let (n, k, rows) = (3, 100, 37);
        let w: Vec<f32> = (0..rows * k)
            .map(|i| (i * 53 % 97) as f32 / 48.0 - 1.0)
            .collect();
        let x: Vec<f32> = (0..n * k)
            .map(|i| (i * 7 % 23) as f32 / 11.0 - 1.0)
            .collect();
        let got = f32_matmul(&x, n, k, &w, rows);
        for i in 0..n {
            for r in 0..rows {
                let want: f64 = (0..k)
                    .map(|j| x[i * k + j] as f64 * w[r * k + j] as f64)
                    .sum();
                let g = got[i * rows + r] as f64;
                assert!(
                    (g - want).abs() < 1e-4 * (1.0 + want.abs()),
                    "{i},{r}: {g} {want}"
                );
            }
        }
        let one = f32_matmul(&x[k..2 * k], 1, k, &w, rows);
        assert_eq!(
            one,
            got[rows..2 * rows],
            "a row's result does not depend on its batch"
        );
    }

    #[test]
    fn q8_0_matches_the_portable_path_and_the_exact_product() {
        let dev = Device::Cpu;
        let (rows, k) = (45, 64);
        let w: Vec<f32> = (0..rows * k)
            .map(|i| ((i * 53 % 97) as f32 / 48.0 - 1.0) * 0.5)
            .collect();
        let x: Vec<f32> = (0..k)
            .map(|i| ((i * 7 % 23) as f32 / 11.0 - 1.0) * 3.0)
            .collect();
        let qt = QTensor::quantize(
            &Tensor::from_vec(w, (rows, k), &dev).unwrap(),
            GgmlDType::Q8_0,
        )
        .unwrap();
        let bytes = qt.data().unwrap();
        let ours = quant_matmul(Blocks::Q8_0, &x, 1, k, &bytes, rows);
        let act = quantize_row(&x);
        let exact = Tensor::from_vec(x.clone(), (1, k), &dev)
            .unwrap()
            .matmul(&qt.dequantize(&dev).unwrap().t().unwrap())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        for r in 0..rows {
            let rb = k / QK * Q8_0_BLOCK_BYTES;
            let p = dot_q8_0_portable(&bytes[r * rb..(r + 1) * rb], &act);
            assert!(
                (ours[r] - p).abs() <= 1e-4 * p.abs().max(1.0),
                "{r}: {} vs {p}",
                ours[r]
            );
            assert!(
                (ours[r] - exact[r]).abs() < 0.02 * exact[r].abs().max(1.0),
                "{r}"
            );
        }
    }

    #[test]
    fn q8_0_with_f32_activations_is_the_exact_product() {
        let dev = Device::Cpu;
        let (rows, k) = (37, 96);
        let w: Vec<f32> = (0..rows * k)
            .map(|i| ((i * 29 % 89) as f32 / 44.0 - 1.0) * 0.7)
            .collect();
        let x: Vec<f32> = (0..2 * k)
            .map(|i| ((i * 11 % 31) as f32 / 15.0 - 1.0) * 1.5)
            .collect();
        let qt = QTensor::quantize(
            &Tensor::from_vec(w, (rows, k), &dev).unwrap(),
            GgmlDType::Q8_0,
        )
        .unwrap();
        let ours = q8_0_matmul_f32(&x, 2, k, &qt.data().unwrap(), rows);
        let exact = Tensor::from_vec(x, (2, k), &dev)
            .unwrap()
            .matmul(&qt.dequantize(&dev).unwrap().t().unwrap())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        for (a, b) in ours.iter().zip(&exact) {
            assert!((a - b).abs() <= 1e-4 * b.abs().max(1.0), "{a} vs {b}");
        }
    }

    #[test]
    fn matches_candle_and_the_portable_path() {
        let dev = Device::Cpu;
        let (rows, k, n) = (70, 96, 3);
        let w: Vec<f32> = (0..rows * k)
            .map(|i| ((i * 37 % 101) as f32 / 50.0 - 1.0) * 0.3)
            .collect();
        let x: Vec<f32> = (0..n * k)
            .map(|i| ((i * 13 % 29) as f32 / 14.0 - 1.0) * 2.0)
            .collect();
        let qt = QTensor::quantize(
            &Tensor::from_vec(w, (rows, k), &dev).unwrap(),
            GgmlDType::Q4_1,
        )
        .unwrap();
        let bytes = qt.data().unwrap();
        let ours = q4_1_matmul(&x, n, k, &bytes, rows);
        // The same integers on every path: equal up to float summation order.
        #[cfg(target_arch = "x86_64")]
        if has_avx512_vnni() {
            let row_bytes = k / QK * Q4_1_BLOCK_BYTES;
            let act = quantize_row(&x[..k]);
            for r in 0..rows {
                let wr = &bytes[r * row_bytes..(r + 1) * row_bytes];
                // SAFETY: checked by has_avx512_vnni (which implies AVX2).
                let (v512, v2) = unsafe { (dot_avx512(wr, &act), dot_avx2(wr, &act)) };
                assert!(
                    (v512 - v2).abs() <= 1e-4 * v2.abs().max(1.0),
                    "{r}: {v512} vs {v2}"
                );
            }
        }
        let acts: Vec<Q8Row> = x.chunks_exact(k).map(quantize_row).collect();
        let row_bytes = k / QK * Q4_1_BLOCK_BYTES;
        for i in 0..n {
            for r in 0..rows {
                let p = dot_portable(&bytes[r * row_bytes..(r + 1) * row_bytes], &acts[i]);
                assert!(
                    (ours[i * rows + r] - p).abs() <= 1e-4 * p.abs().max(1.0),
                    "{i},{r}"
                );
            }
        }
        // And close to the exact product with the dequantized weights (activation rounding only).
        let exact = Tensor::from_vec(x, (n, k), &dev)
            .unwrap()
            .matmul(&qt.dequantize(&dev).unwrap().t().unwrap())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let scale = exact.iter().fold(0f32, |m, v| m.max(v.abs()));
        for (a, b) in ours.iter().zip(&exact) {
            assert!((a - b).abs() < 0.02 * scale, "{a} vs {b}");
        }
    }
}
