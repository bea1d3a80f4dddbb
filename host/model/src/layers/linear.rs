//! A projection `y = x Wᵀ + b` whose weight is dense (safetensors, F16/F32 GGUF) or
//! quantized blocks (Q4_0, Q4_1, Q8_0, K-quants from GGUF). Projections that read the same
//! input (q/k/v, gate/up) can be loaded fused — one weight with their rows stacked — so a
//! decode step pays one dispatch and one activation quantization instead of several.

use crate::error::Result;
use crate::weights::{LinearWeight, Weights};
use candle_core::quantized::{QMatMul, QTensor};
use candle_core::{Device, Module, Tensor};

pub struct Linear {
    weight: LinearWeight,
    bias: Option<Tensor>,
    /// Output widths of the fused projections, in order (one entry when not fused).
    parts: Vec<usize>,
    /// Multiply Q8_0 weights with unrounded f32 activations (the LM head: close next-token
    /// choices must not flip on 8-bit rounding).
    exact_activations: bool,
    /// The quantized weight dequantized once and kept (`keep_dense`): products of
    /// `DENSE_CACHED_FROM_ROWS` rows or more use it, as a server's grouped prefills do.
    dense_copy: Option<Tensor>,
    /// The kept copy is stored transposed, (in, out): a vocabulary-wide weight on the CPU,
    /// which products of that many rows read transposed anyway (see `TRANSPOSE_FROM_OUT`), so
    /// the one copy `--dense-batches` budgets for is the only one.
    copy_transposed: bool,
    /// A vocabulary-wide f32 weight (an LM head) transposed, made at its first product of
    /// more than `SKINNY_ROWS` rows (see `TRANSPOSE_FROM_OUT`).
    transposed: std::sync::OnceLock<Tensor>,
}

/// Output widths from which a dense CPU weight keeps a transposed copy for products of many
/// rows. gemm multiplies a row-major (out, in) weight by packing all of it, on the calling
/// thread, at every call; for an LM head scoring a few hundred positions (log-likelihoods of
/// continuations) that pack of 28M floats took as long as the product, with the other cores
/// idle. Transposed, gemm reads it in place. Costs one more copy of the head (113 MB for
/// SmolLM2-135M); projections (a few thousand wide) are multiplied with thousands of rows,
/// where the pack is a small part, and keep their one copy.
const TRANSPOSE_FROM_OUT: usize = 8192;

/// Rows from which a kept dense copy beats the quantized kernels: galley's f32 kernel (up to
/// `SKINNY_ROWS`) reads each weight row once for sixteen products, the quantized ones for four,
/// with more work per product. SmolLM2-135M's 30 layers and head, 2 threads (`decode_kernels`
/// example, 2026-12-07): 16 rows 48.5-57.2 ms quantized against 52.3-59.5 in f32, 24 rows
/// 88.3 against 73.5, 32 rows 112-127 against 65-74. A transposed copy (an LM head) is only
/// read by gemm, so past `SKINNY_ROWS`; below, the head stays on its quantized kernel.
const DENSE_CACHED_FROM_ROWS: usize = 24;

/// Rows at or above which a quantized weight with no kept copy (evaluation, `galley infer`)
/// is dequantized and multiplied in f32: prompt passes keep f32 activations, which is what
/// holds galley's log-likelihoods within 1e-4 of lm-evaluation-harness on the dequantized
/// model (the quantized kernels round activations to 8 bits), and is faster from ~56 rows.
const DENSE_FROM_ROWS: usize = 32;
/// Up to this many rows, an f32 product on the CPU is galley's dot-product kernel (tiles of
/// four weight rows by four activation rows), not gemm by blocks of output columns:
/// SmolLM2-135M's step, 2 threads, 32 rows 64.6 ms against 76.0, 48 rows 90.2 against 90.0,
/// 64 rows 137.5 against 107.0 (`decode_kernels` example, 2026-12-07).
const SKINNY_ROWS: usize = 32;

impl Linear {
    /// Loads `{prefix}.weight` of shape (out, inp) and, when `bias`, `{prefix}.bias`.
    pub fn load(
        w: &Weights,
        prefix: &str,
        out: usize,
        inp: usize,
        bias: bool,
        dev: &Device,
    ) -> Result<Self> {
        Self::load_fused(w, &[(prefix, out)], inp, bias, dev)
    }

    /// Loads several projections of the same input as one (their rows stacked in order).
    pub fn load_fused(
        w: &Weights,
        parts: &[(&str, usize)],
        inp: usize,
        bias: bool,
        dev: &Device,
    ) -> Result<Self> {
        let names: Vec<String> = parts.iter().map(|(p, _)| format!("{p}.weight")).collect();
        let rows = parts.iter().map(|p| p.1).sum();
        let ready = match parts.len() {
            1 => None,
            _ => w.stacked(&names, rows, inp, dev)?,
        };
        let weight = match ready {
            Some(t) => LinearWeight::Dense(t),
            None => {
                let mut weights = Vec::with_capacity(parts.len());
                for (name, (_, out)) in names.iter().zip(parts) {
                    weights.push(w.linear(name, *out, inp, dev)?);
                }
                if weights.len() == 1 {
                    weights.remove(0)
                } else {
                    stack(weights, dev)?
                }
            }
        };
        let mut biases = Vec::new();
        if bias {
            for (prefix, out) in parts {
                biases.push(w.tensor(&format!("{prefix}.bias"), &[*out], dev)?);
            }
        }
        let bias = if bias {
            Some(Tensor::cat(&biases, 0)?)
        } else {
            None
        };
        Ok(Self {
            weight,
            bias,
            parts: parts.iter().map(|p| p.1).collect(),
            exact_activations: false,
            dense_copy: None,
            copy_transposed: false,
            transposed: Default::default(),
        })
    }

    pub fn from_weight(weight: LinearWeight) -> Self {
        Self {
            weight,
            bias: None,
            parts: vec![],
            exact_activations: false,
            dense_copy: None,
            copy_transposed: false,
            transposed: Default::default(),
        }
    }

    /// `x Wᵀ` for this projection's f32 weight `w`: through the transposed copy when `w` is
    /// vocabulary-wide and `x` has many rows on the CPU.
    fn dense(&self, x: &Tensor, w: &Tensor) -> candle_core::Result<Tensor> {
        let f32 = candle_core::DType::F32;
        let (out, k) = w.dims2()?;
        let n = x.elem_count() / k.max(1);
        if out < TRANSPOSE_FROM_OUT
            || n <= SKINNY_ROWS
            || !x.device().is_cpu()
            || (x.dtype(), w.dtype()) != (f32, f32)
            || k == 0
        {
            return dense(x, w);
        }
        if self.transposed.get().is_none() {
            // Two threads racing here both build it; one is kept.
            let _ = self.transposed.set(w.t()?.contiguous()?);
        }
        let wt = self.transposed.get().expect("set above");
        by_columns(x, wt, out, k, |wt| crate::cpu::rm(wt, out))
    }

    /// The bytes `keep_dense` would add (0 for a dense weight or one already copied).
    pub fn dense_copy_bytes(&self) -> usize {
        match &self.weight {
            LinearWeight::Quant(QMatMul::QTensor(q)) if self.dense_copy.is_none() => {
                q.shape().elem_count() * 4
            }
            _ => 0,
        }
    }

    /// Keeps a dequantized f32 copy of a quantized weight for batched products (a serving
    /// choice: memory for throughput). Returns the bytes it adds.
    pub fn keep_dense(&mut self) -> candle_core::Result<usize> {
        match &self.weight {
            LinearWeight::Quant(QMatMul::QTensor(q)) if self.dense_copy.is_none() => {
                let d = q.dequantize(&q.device())?;
                let bytes = d.elem_count() * 4;
                self.copy_transposed = d.dim(0)? >= TRANSPOSE_FROM_OUT && d.device().is_cpu();
                self.dense_copy = Some(match self.copy_transposed {
                    true => d.t()?.contiguous()?,
                    false => d,
                });
                Ok(bytes)
            }
            _ => Ok(0),
        }
    }

    /// The LM head's setting: f32 activations into Q8_0 weights.
    pub fn with_exact_activations(mut self) -> Self {
        self.exact_activations = true;
        self
    }

    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let rows = x.elem_count() / x.dim(candle_core::D::Minus1)?;
        let y = match &self.weight {
            LinearWeight::Dense(w) => self.dense(x, w)?,
            LinearWeight::Quant(_)
                if rows >= DENSE_CACHED_FROM_ROWS
                    && self.dense_copy.is_some()
                    && (!self.copy_transposed || rows > SKINNY_ROWS) =>
            {
                let copy = self.dense_copy.as_ref().expect("checked");
                match self.copy_transposed {
                    true if x.dtype() == candle_core::DType::F32 => {
                        let (k, out) = copy.dims2()?;
                        by_columns(x, copy, out, k, |wt| crate::cpu::rm(wt, out))?
                    }
                    true => dense(x, &copy.t()?)?,
                    false => self.dense(x, copy)?,
                }
            }
            LinearWeight::Quant(QMatMul::QTensor(q))
                if rows >= DENSE_FROM_ROWS && self.dense_copy.is_none() && x.device().is_cpu() =>
            {
                match crate::kernels::Blocks::of(q.dtype()) {
                    Some(kind) if x.dtype() == candle_core::DType::F32 => {
                        quant_by_columns(x, q, kind)?
                    }
                    _ => dense(x, &q.dequantize(x.device())?)?,
                }
            }
            LinearWeight::Quant(QMatMul::QTensor(q))
                if crate::kernels::Blocks::of(q.dtype()).is_some() && x.device().is_cpu() =>
            {
                quant_forward(x, q, self.exact_activations)?
            }
            LinearWeight::Quant(q) => q.forward(x)?,
        };
        match &self.bias {
            Some(b) => y.broadcast_add(b),
            None => Ok(y),
        }
    }

    /// The dense weight (out, in) and the bias, when the weight is a plain contiguous f32
    /// or bf16 matrix (what the fused decode step's products read).
    pub(crate) fn dense_parts(&self) -> Option<(&Tensor, Option<&Tensor>)> {
        match &self.weight {
            LinearWeight::Dense(w)
                if w.is_contiguous()
                    && matches!(
                        w.dtype(),
                        candle_core::DType::F32 | candle_core::DType::BF16
                    ) =>
            {
                Some((w, self.bias.as_ref()))
            }
            _ => None,
        }
    }

    /// The fused projections' outputs, split back apart along the last dimension.
    pub fn forward_split(&self, x: &Tensor) -> candle_core::Result<Vec<Tensor>> {
        let y = self.forward(x)?;
        let last = y.rank() - 1;
        let mut at = 0;
        let mut out = Vec::with_capacity(self.parts.len());
        for &n in &self.parts {
            out.push(y.narrow(last, at, n)?);
            at += n;
        }
        Ok(out)
    }
}

/// `x Wᵀ` as one (rows, in) x (in, out) product. candle_nn's Linear multiplies a (b, t, in)
/// input batch by batch, streaming the whole weight once per row of the batch: for the short
/// sequences of a batched prefill or a batch of continuations (t of 1 to 40, b up to 128) that
/// ran the GEMM far below its peak. Folding the batch into the rows streams it once.
fn dense(x: &Tensor, w: &Tensor) -> candle_core::Result<Tensor> {
    let dims = x.dims();
    let k = *dims.last().expect("rank >= 1");
    let n = x.elem_count() / k.max(1);
    let f32 = candle_core::DType::F32;
    if n <= SKINNY_ROWS && x.device().is_cpu() && (x.dtype(), w.dtype()) == (f32, f32) && k > 0 {
        let rows = w.dim(0)?;
        let out = crate::cpu::with_f32(x, |xs| {
            crate::cpu::with_f32(w, |ws| crate::kernels::f32_matmul(xs, n, k, ws, rows))
        })??;
        let mut shape = dims.to_vec();
        *shape.last_mut().expect("rank >= 1") = rows;
        return Tensor::from_vec(out, shape, x.device());
    }
    let rows = w.dim(0)?;
    if x.device().is_cpu() && (x.dtype(), w.dtype()) == (f32, f32) && k > 0 {
        // The same product as candle's matmul, without its zero-filled output buffer (a
        // memset of every output, 2.7% of a batched prefill): gemm writes each element.
        return by_columns(x, w, rows, k, |ws| crate::cpu::tr(ws, k));
    }
    let mut shape = dims.to_vec();
    *shape.last_mut().expect("rank >= 1") = rows;
    x.reshape(((), k))?.matmul(&w.t()?)?.reshape(shape)
}

/// `x` (..., k) times the (k, out) matrix `view` makes of `w`'s floats, in blocks of output
/// columns (`cpu::product_by_columns`); CPU, f32.
fn by_columns(
    x: &Tensor,
    w: &Tensor,
    out: usize,
    k: usize,
    view: impl Fn(&[f32]) -> crate::cpu::Mat<'_>,
) -> candle_core::Result<Tensor> {
    let n = x.elem_count() / k;
    let mut shape = x.dims().to_vec();
    *shape.last_mut().expect("rank >= 1") = out;
    let y = crate::cpu::with_f32(x, |xs| {
        crate::cpu::with_f32(w, |ws| {
            crate::cpu::product_by_columns(n, out, k, crate::cpu::rm(xs, k), view(ws), 1.0)
        })
    })??;
    Tensor::from_vec(y, shape, x.device())
}

/// Prompt-sized products with a Q4_1 or Q8_0 weight and no kept dense copy: f32 activations
/// against the weight's rows dequantized a block of output columns at a time, into scratch
/// each thread reuses (`cpu::product_by_made_columns`). Dequantizing the whole weight per
/// pass wrote every projection's f32 copy into fresh pages: on Gemma 3 270M's prefill, a
/// fifth of the time went to the kernel zero-filling them.
fn quant_by_columns(
    x: &Tensor,
    q: &QTensor,
    kind: crate::kernels::Blocks,
) -> candle_core::Result<Tensor> {
    let dims = x.dims().to_vec();
    let k = *dims.last().expect("rank >= 1");
    let n = x.elem_count() / k.max(1);
    let out = q.shape().dims()[0];
    let bytes = q.data()?;
    let row_bytes = bytes.len() / out.max(1);
    let make = |j0: usize, nb: usize, dst: &mut [f32]| {
        crate::kernels::dequantize_rows(kind, &bytes[j0 * row_bytes..][..nb * row_bytes], dst);
    };
    let y = crate::cpu::with_f32(x, |xs| {
        crate::cpu::product_by_made_columns(n, out, k, crate::cpu::rm(xs, k), &make)
    })?;
    let mut shape = dims;
    *shape.last_mut().expect("rank >= 1") = out;
    Tensor::from_vec(y, shape, x.device())
}

/// Decode-sized products with Q4_1 or Q8_0 weights, through galley's SIMD kernels.
fn quant_forward(x: &Tensor, q: &QTensor, exact: bool) -> candle_core::Result<Tensor> {
    let dims = x.dims().to_vec();
    let k = *dims.last().expect("rank >= 1");
    let n = x.elem_count() / k;
    let rows = q.shape().dims()[0];
    let flat = x.flatten_all()?.to_vec1::<f32>()?;
    let bytes = q.data()?;
    let kind = crate::kernels::Blocks::of(q.dtype()).expect("checked by the caller");
    if exact && kind == crate::kernels::Blocks::Q8_0 {
        let out = crate::kernels::q8_0_matmul_f32(&flat, n, k, &bytes, rows);
        let mut shape = dims;
        *shape.last_mut().expect("rank >= 1") = rows;
        return Tensor::from_vec(out, shape, x.device());
    }
    let out = crate::kernels::quant_matmul(
        crate::kernels::Blocks::of(q.dtype()).expect("checked by the caller"),
        &flat,
        n,
        k,
        &bytes,
        rows,
    );
    let mut shape = dims;
    *shape.last_mut().expect("rank >= 1") = rows;
    Tensor::from_vec(out, shape, x.device())
}

/// Stacks projection weights row-wise. Quantized rows are independent runs of blocks, so
/// stacking same-type weights is a byte concatenation; mixed types fall back to f32.
fn stack(weights: Vec<LinearWeight>, dev: &Device) -> Result<LinearWeight> {
    let quant: Option<Vec<&QTensor>> = weights
        .iter()
        .map(|w| match w {
            LinearWeight::Quant(QMatMul::QTensor(q)) => Some(q.as_ref()),
            _ => None,
        })
        .collect();
    if let Some(qs) = quant
        && qs.windows(2).all(|p| {
            p[0].dtype() == p[1].dtype() && p[0].shape().dims()[1] == p[1].shape().dims()[1]
        })
    {
        let mut bytes = Vec::new();
        let mut rows = 0;
        for q in &qs {
            bytes.extend_from_slice(&q.data()?);
            rows += q.shape().dims()[0];
        }
        let cols = qs[0].shape().dims()[1];
        let qt = candle_core::quantized::ggml_file::qtensor_from_ggml(
            qs[0].dtype(),
            &bytes,
            vec![rows, cols],
            dev,
        )?;
        return Ok(LinearWeight::Quant(QMatMul::from_qtensor(qt)?));
    }
    let dense: Vec<Tensor> = weights
        .into_iter()
        .map(|w| match w {
            LinearWeight::Dense(t) => Ok(t),
            LinearWeight::Quant(QMatMul::QTensor(q)) => q.dequantize(dev),
            LinearWeight::Quant(QMatMul::Tensor(t)) => Ok(t),
            LinearWeight::Quant(QMatMul::TensorF16(t)) => t.to_dtype(candle_core::DType::F32),
        })
        .collect::<candle_core::Result<_>>()?;
    Ok(LinearWeight::Dense(Tensor::cat(&dense, 0)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn max_diff(a: Tensor, b: Tensor) -> f32 {
        let d = (a - b).unwrap().abs().unwrap().flatten_all().unwrap();
        d.max(0).unwrap().to_scalar().unwrap()
    }

    /// A prompt-sized product with a Q8_0 or Q4_1 weight, dequantized block by block of output
    /// columns into reused scratch, has the bits of the product with the whole weight
    /// dequantized by candle: output widths of one partial block, several blocks with a
    /// partial last one, and wider than one block's scratch holds (a vocabulary).
    #[test]
    fn quantized_prompt_products_made_by_column_blocks_equal_the_dequantized_weights() {
        use candle_core::quantized::GgmlDType;
        let dev = Device::Cpu;
        for (n, k, out) in [(40, 64, 50), (33, 96, 300), (64, 640, 2000)] {
            let x = Tensor::randn(0f32, 1.0, (1, n, k), &dev).unwrap();
            let w = Tensor::randn(0f32, 0.5, (out, k), &dev).unwrap();
            for ty in [GgmlDType::Q8_0, GgmlDType::Q4_1] {
                let q = QTensor::quantize(&w, ty).unwrap();
                let kind = crate::kernels::Blocks::of(ty).unwrap();
                let got = quant_by_columns(&x, &q, kind).unwrap();
                let deq = q.dequantize(&dev).unwrap();
                let want = x
                    .reshape((n, k))
                    .unwrap()
                    .matmul(&deq.t().unwrap())
                    .unwrap();
                let bits = |t: &Tensor| -> Vec<u32> {
                    let v = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                    v.iter().map(|f| f.to_bits()).collect()
                };
                assert_eq!(got.dims(), [1, n, out]);
                let (g, w) = (bits(&got), bits(&want));
                let same = g.iter().zip(&w).filter(|(a, b)| a == b).count();
                assert_eq!(same, g.len(), "{ty:?} ({n}, {k}) x ({out}, {k})");
            }
        }
    }

    /// A vocabulary-wide dense weight: few rows take the dot-product kernel, many rows the
    /// transposed copy (built once, reused); both equal candle's matmul of the original.
    #[test]
    fn a_wide_dense_weight_gives_the_same_products_through_its_transposed_copy() {
        let dev = Device::Cpu;
        let (out, k) = (TRANSPOSE_FROM_OUT + 5, 24);
        let w = Tensor::randn(0f32, 1.0, (out, k), &dev).unwrap();
        let lin = Linear::from_weight(LinearWeight::Dense(w.clone()));
        for rows in [3, SKINNY_ROWS + 1, 70] {
            let x = Tensor::randn(0f32, 1.0, (1, rows, k), &dev).unwrap();
            let got = lin.forward(&x).unwrap();
            let want = x.matmul(&w.t().unwrap().unsqueeze(0).unwrap()).unwrap();
            assert_eq!(got.dims(), &[1, rows, out]);
            let diff = max_diff(got, want);
            assert!(diff < 1e-4, "{rows} rows: {diff}");
            assert_eq!(lin.transposed.get().is_some(), rows > SKINNY_ROWS);
        }
    }

    /// A served quantized head keeps one f32 copy, stored transposed: batched products read
    /// it, give what the dequantized weight gives, and make no second (transposed) copy.
    #[test]
    fn a_wide_quantized_weight_keeps_one_dense_copy_for_batches() {
        use candle_core::quantized::GgmlDType;
        let dev = Device::Cpu;
        let (out, k) = (TRANSPOSE_FROM_OUT + 32, 64);
        let w = Tensor::randn(0f32, 1.0, (out, k), &dev).unwrap();
        let q = QTensor::quantize(&w, GgmlDType::Q8_0).unwrap();
        let dq = q.dequantize(&dev).unwrap();
        let mut lin = Linear::from_weight(LinearWeight::Quant(QMatMul::from_qtensor(q).unwrap()));
        let budget = lin.dense_copy_bytes();
        assert_eq!(lin.keep_dense().unwrap(), budget);
        assert_eq!(budget, out * k * 4);
        assert_eq!(lin.dense_copy_bytes(), 0);
        let rows = DENSE_CACHED_FROM_ROWS.max(SKINNY_ROWS + 1) + 3;
        let x = Tensor::randn(0f32, 1.0, (1, rows, k), &dev).unwrap();
        let got = lin.forward(&x).unwrap();
        let want = x.matmul(&dq.t().unwrap().unsqueeze(0).unwrap()).unwrap();
        assert_eq!(got.dims(), &[1, rows, out]);
        let diff = max_diff(got, want);
        assert!(diff < 1e-4, "{diff}");
        assert!(lin.transposed.get().is_none(), "a second copy was made");
        // Fewer rows, which gemm would multiply slowly through the transposed copy, stay on
        // the quantized kernel (activations rounded to 8 bits: close, not exact).
        let few = DENSE_CACHED_FROM_ROWS.max(SKINNY_ROWS);
        let x = x.narrow(1, 0, few).unwrap();
        let want = x.matmul(&dq.t().unwrap().unsqueeze(0).unwrap()).unwrap();
        let got = lin.forward(&x).unwrap();
        let diff = max_diff(got.clone(), want);
        assert!(diff > 1e-6 && diff < 1.0, "{diff}");
        let quantized = quant_forward(
            &x,
            match &lin.weight {
                LinearWeight::Quant(QMatMul::QTensor(q)) => q,
                _ => unreachable!(),
            },
            false,
        )
        .unwrap();
        assert_eq!(max_diff(got, quantized), 0.0);
    }

    /// A served projection's copy (not transposed) serves from `DENSE_CACHED_FROM_ROWS` rows
    /// through the f32 kernel: the dequantized weight's products; fewer rows stay quantized.
    #[test]
    fn a_projections_dense_copy_serves_batches_from_its_threshold() {
        use candle_core::quantized::GgmlDType;
        let dev = Device::Cpu;
        let (out, k) = (96, 64);
        let w = Tensor::randn(0f32, 1.0, (out, k), &dev).unwrap();
        let q = QTensor::quantize(&w, GgmlDType::Q4_1).unwrap();
        let dq = q.dequantize(&dev).unwrap();
        let mut lin = Linear::from_weight(LinearWeight::Quant(QMatMul::from_qtensor(q).unwrap()));
        lin.keep_dense().unwrap();
        assert!(!lin.copy_transposed);
        for rows in [DENSE_CACHED_FROM_ROWS - 1, DENSE_CACHED_FROM_ROWS] {
            let x = Tensor::randn(0f32, 1.0, (1, rows, k), &dev).unwrap();
            let want = x.matmul(&dq.t().unwrap().unsqueeze(0).unwrap()).unwrap();
            let diff = max_diff(lin.forward(&x).unwrap(), want);
            match rows >= DENSE_CACHED_FROM_ROWS {
                true => assert!(diff < 1e-4, "{rows} rows: {diff}"),
                false => assert!(diff > 1e-6, "{rows} rows: {diff} (expected 8-bit rounding)"),
            }
        }
    }
}
