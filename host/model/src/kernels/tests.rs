#[cfg(target_arch = "x86_64")]
use super::q4_1::dot_avx2;
use super::q4_1::dot_portable;
use super::q8_0::dot_q8_0_portable;
use super::*;
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};

fn quantize(w: Vec<f32>, rows: usize, k: usize, t: GgmlDType) -> QTensor {
    let dev = Device::Cpu;
    QTensor::quantize(&Tensor::from_vec(w, (rows, k), &dev).unwrap(), t).unwrap()
}

/// `x` (n × k) times the dequantized `qt` transposed, in candle's f32.
fn dequantized_product(x: &[f32], n: usize, k: usize, qt: &QTensor) -> Vec<f32> {
    let dev = Device::Cpu;
    Tensor::from_slice(x, (n, k), &dev)
        .unwrap()
        .matmul(&qt.dequantize(&dev).unwrap().t().unwrap())
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
}

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
    // Every instruction set adds the same products in the same order: the same bits.
    for i in 0..n {
        for r in 0..rows {
            let portable = super::f32::dot_portable(&w[r * k..(r + 1) * k], &x[i * k..(i + 1) * k]);
            assert_eq!(got[i * rows + r].to_bits(), portable.to_bits(), "{i},{r}");
        }
    }
    // The AVX2 path too (this machine may run the AVX-512 one), every group size.
    #[cfg(target_arch = "x86_64")]
    if super::has_avx2() {
        let xs: Vec<&[f32]> = x.chunks_exact(k).collect();
        for r in 0..rows {
            let wr = &w[r * k..(r + 1) * k];
            for g in 1..=n {
                let mut v2 = [0f32; super::GROUP];
                // SAFETY: the CPU has AVX2 and FMA (checked); every row is k long.
                unsafe { super::f32::by_avx2(wr, &xs[..g], &mut v2) };
                for i in 0..g {
                    let portable = super::f32::dot_portable(wr, xs[i]);
                    assert_eq!(v2[i].to_bits(), portable.to_bits(), "avx2 {g}: {i},{r}");
                }
            }
        }
    }
    let one = f32_matmul(&x[k..2 * k], 1, k, &w, rows);
    assert_eq!(
        one,
        got[rows..2 * rows],
        "a row's result does not depend on its batch"
    );
}

/// Through `quant_matmul` (AVX-512 VNNI's two blocks a step where the CPU has it, an odd
/// last block included, else AVX2) against the portable dot product.
#[test]
fn q8_0_matches_the_portable_path_and_the_exact_product() {
    for k in [64, 96, 640] {
        q8_0_matches_at(k);
    }
}

fn q8_0_matches_at(k: usize) {
    let rows = 45;
    let w: Vec<f32> = (0..rows * k)
        .map(|i| ((i * 53 % 97) as f32 / 48.0 - 1.0) * 0.5)
        .collect();
    let x: Vec<f32> = (0..k)
        .map(|i| ((i * 7 % 23) as f32 / 11.0 - 1.0) * 3.0)
        .collect();
    let qt = quantize(w, rows, k, GgmlDType::Q8_0);
    let bytes = qt.data().unwrap();
    let ours = quant_matmul(Blocks::Q8_0, &x, 1, k, &bytes, rows);
    let act = quantize_row(&x, false);
    let exact = dequantized_product(&x, 1, k, &qt);
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
    let (rows, k) = (37, 96);
    let w: Vec<f32> = (0..rows * k)
        .map(|i| ((i * 29 % 89) as f32 / 44.0 - 1.0) * 0.7)
        .collect();
    let x: Vec<f32> = (0..2 * k)
        .map(|i| ((i * 11 % 31) as f32 / 15.0 - 1.0) * 1.5)
        .collect();
    let qt = quantize(w, rows, k, GgmlDType::Q8_0);
    let ours = q8_0_matmul_f32(&x, 2, k, &qt.data().unwrap(), rows);
    let exact = dequantized_product(&x, 2, k, &qt);
    for (a, b) in ours.iter().zip(&exact) {
        assert!((a - b).abs() <= 1e-4 * b.abs().max(1.0), "{a} vs {b}");
    }
}

#[test]
fn matches_candle_and_the_portable_path() {
    let (rows, k, n) = (70, 96, 3);
    let w: Vec<f32> = (0..rows * k)
        .map(|i| ((i * 37 % 101) as f32 / 50.0 - 1.0) * 0.3)
        .collect();
    let x: Vec<f32> = (0..n * k)
        .map(|i| ((i * 13 % 29) as f32 / 14.0 - 1.0) * 2.0)
        .collect();
    let qt = quantize(w, rows, k, GgmlDType::Q4_1);
    let bytes = qt.data().unwrap();
    let ours = q4_1_matmul(&x, n, k, &bytes, rows);
    // The same integers on every path: equal up to float summation order.
    #[cfg(target_arch = "x86_64")]
    if has_avx512_vnni() {
        let row_bytes = k / QK * Q4_1_BLOCK_BYTES;
        let act = quantize_row(&x[..k], true);
        for r in 0..rows {
            let wr = &bytes[r * row_bytes..(r + 1) * row_bytes];
            let mut v512 = [0f32];
            super::q4_1::rows(wr, std::slice::from_ref(&act), &mut v512);
            let v512 = v512[0];
            // SAFETY: checked by has_avx512_vnni (which implies AVX2).
            let v2 = unsafe { dot_avx2(wr, &act) };
            assert!(
                (v512 - v2).abs() <= 1e-4 * v2.abs().max(1.0),
                "{r}: {v512} vs {v2}"
            );
        }
    }
    let acts: Vec<Q8Row> = x.chunks_exact(k).map(|r| quantize_row(r, false)).collect();
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
    let exact = dequantized_product(&x, n, k, &qt);
    let scale = exact.iter().fold(0f32, |m, v| m.max(v.abs()));
    for (a, b) in ours.iter().zip(&exact) {
        assert!((a - b).abs() < 0.02 * scale, "{a} vs {b}");
    }
}

/// Batched decoding must give each sequence the bits it gets alone: every kernel, with group
/// sizes 4, 3, 2 and 1 (n = 7 is a group of four and one of three; n = 2 and 1 alone), an odd
/// number of Q4_1 blocks (the AVX2 tail) and f32 rows with a remainder past the 16 lanes.
#[test]
fn a_rows_result_does_not_depend_on_its_batch() {
    let (rows, k) = (23, 160);
    let w: Vec<f32> = (0..rows * k)
        .map(|i| ((i * 41 % 103) as f32 / 51.0 - 1.0) * 0.4)
        .collect();
    let x: Vec<f32> = (0..7 * k)
        .map(|i| ((i * 17 % 37) as f32 / 18.0 - 1.0) * 1.7)
        .collect();
    let bytes = |t| quantize(w.clone(), rows, k, t).data().unwrap().to_vec();
    let (q41, q80) = (bytes(GgmlDType::Q4_1), bytes(GgmlDType::Q8_0));
    type Product<'a> = Box<dyn Fn(&[f32], usize) -> Vec<f32> + 'a>;
    let kf = k - 3;
    let products: [(&str, usize, Product); 4] = [
        ("q4_1", k, Box::new(|x, n| q4_1_matmul(x, n, k, &q41, rows))),
        (
            "q8_0",
            k,
            Box::new(|x, n| quant_matmul(Blocks::Q8_0, x, n, k, &q80, rows)),
        ),
        (
            "q8_0 x f32",
            k,
            Box::new(|x, n| q8_0_matmul_f32(x, n, k, &q80, rows)),
        ),
        (
            "f32",
            kf,
            Box::new(|x, n| f32_matmul(x, n, kf, &w[..rows * kf], rows)),
        ),
    ];
    for (name, k, product) in &products {
        let k = *k;
        let alone: Vec<Vec<f32>> = (0..7).map(|i| product(&x[i * k..(i + 1) * k], 1)).collect();
        for n in [7, 2] {
            let got = product(&x[..n * k], n);
            for i in 0..n {
                assert_eq!(
                    &got[i * rows..(i + 1) * rows],
                    &alone[i][..],
                    "{name}: row {i} of {n}"
                );
            }
        }
    }
}

/// The vectorized activation quantization gives llama.cpp's integers (round half away from
/// zero) and scales bit for bit, ties, zero blocks and NaN included.
#[test]
fn activations_quantize_as_the_scalar_rule_does() {
    let mut x: Vec<f32> = (0..8 * QK)
        .map(|i| ((i * 7919 % 509) as f32 / 254.0 - 1.0) * 3.7)
        .collect();
    // Exact halves after scaling: amax 127 makes the scale 1.
    for (j, v) in [127.0, 0.5, -0.5, 1.5, -2.5, 126.5, -126.5, 3.0]
        .iter()
        .enumerate()
    {
        x[QK + j] = *v;
    }
    x[2 * QK..3 * QK].fill(0.0);
    x[3 * QK + 5] = f32::NAN;
    x[4 * QK + 1] = -0.0;
    let got = quantize_row(&x, false);
    for (b, chunk) in x.chunks_exact(QK).enumerate() {
        let amax = chunk.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
        let q: Vec<i32> = chunk.iter().map(|v| (v * inv).round() as i32).collect();
        let sum: i32 = q.iter().sum();
        assert_eq!(got.d[b].to_bits(), d.to_bits(), "block {b}");
        assert_eq!(got.s[b].to_bits(), (d * sum as f32).to_bits(), "block {b}");
        let ours: Vec<i32> = got.q[b * QK..(b + 1) * QK]
            .iter()
            .map(|&v| v as i32)
            .collect();
        assert_eq!(ours, q, "block {b}");
    }
    assert_eq!(&got.q[QK..QK + 8], &[127, 1, -1, 2, -3, 127, -127, 3]);
}
