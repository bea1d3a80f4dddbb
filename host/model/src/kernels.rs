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

use rayon::prelude::*;

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

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_avx2(w: &[u8], a: &Q8Row) -> f32 {
    use std::arch::x86_64::*;
    let blocks = w.len() / Q4_1_BLOCK_BYTES;
    // SAFETY: every load reads 16 or 32 bytes inside `w` or `a.q`: block b's nibbles are
    // w[20b+4 .. 20b+20] and its activations a.q[32b .. 32b+32], for b < blocks.
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
            let q8 = _mm256_loadu_si256(a.q.as_ptr().add(b * QK) as *const __m256i);
            // u8 × i8 pairs summed to i16 (at most 2·15·127, no saturation), then pairs to i32.
            let prod = _mm256_madd_epi16(_mm256_maddubs_epi16(q4, q8), ones);
            acc = _mm256_fmadd_ps(_mm256_set1_ps(d * a.d[b]), _mm256_cvtepi32_ps(prod), acc);
            mins += m * a.s[b];
        }
        let quad = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
        let pair = _mm_add_ps(quad, _mm_movehl_ps(quad, quad));
        let one = _mm_add_ss(pair, _mm_shuffle_ps(pair, pair, 1));
        _mm_cvtss_f32(one) + mins
    }
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
    if has_avx2() {
        // SAFETY: the CPU has AVX2, FMA and F16C (checked at run time).
        return unsafe { dot_avx2(w, a) };
    }
    dot_portable(w, a)
}

/// `x` (n × k, row-major) times the Q4_1 matrix `w` (rows × k, ggml bytes) transposed:
/// returns n × rows. Rows are split across rayon's threads.
pub fn q4_1_matmul(x: &[f32], n: usize, k: usize, w: &[u8], rows: usize) -> Vec<f32> {
    assert!(
        k.is_multiple_of(QK) && x.len() == n * k && w.len() == rows * k / QK * Q4_1_BLOCK_BYTES
    );
    let row_bytes = k / QK * Q4_1_BLOCK_BYTES;
    let acts: Vec<Q8Row> = x.chunks_exact(k).map(quantize_row).collect();
    let mut out = vec![0f32; n * rows];
    // One task per thread and activation row: a decode step's products take tens of
    // microseconds, so scheduling more tasks than threads costs more than it balances.
    let per = rows.div_ceil(rayon::current_num_threads().max(1));
    out.par_chunks_mut(rows)
        .enumerate()
        .for_each(|(i, out_row)| {
            out_row
                .par_chunks_mut(per)
                .enumerate()
                .for_each(|(c, chunk)| {
                    for (r, o) in chunk.iter_mut().enumerate() {
                        let row = c * per + r;
                        *o = dot(&w[row * row_bytes..(row + 1) * row_bytes], &acts[i]);
                    }
                });
        });
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::{GgmlDType, QTensor};
    use candle_core::{Device, Tensor};

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
        // The same integers on both paths: equal up to float summation order.
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
