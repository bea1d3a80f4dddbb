//! A vocabulary's worth of exponentials, maxima and top-k candidates per generated token:
//! softmax denominators (log-probabilities), the sampling weights of a draw over the whole
//! vocabulary, and the few logits a top-k cut keeps. With `f64::exp` per logit a row of
//! SmolLM2's 49,152 logits cost ~0.2 ms — at 32 sequences a step, more than the serving
//! batcher spent on anything but the model. Here `exp` is a polynomial the compiler
//! vectorizes (Cephes' `expf`: a degree-6 polynomial on `x - n·ln2`, times `2^n` set in the
//! exponent bits; within 2 ulp of `f32::exp`), summed in 16 f32 lanes per block of 256 and the
//! blocks in f64. Every instruction-set path computes the same lanes in the same order, so
//! the sums are the same bits on every machine.

/// Logits per block: lane sums stay short (f32 error ~1e-7 relative), blocks add in f64.
pub const BLOCK: usize = 256;
/// Lanes of the vectorizable loops (one AVX-512 register of f32).
pub(super) const LANES: usize = 16;

/// `acc`'s lanes folded pairwise in a fixed order (halves, then quarters, ...), so every
/// instruction set combines them alike.
#[inline(always)]
pub(super) fn fold_lanes(mut acc: [f32; LANES], f: impl Fn(f32, f32) -> f32) -> f32 {
    let mut w = LANES;
    while w > 1 {
        w /= 2;
        for i in 0..w {
            acc[i] = f(acc[i], acc[i + w]);
        }
    }
    acc[0]
}

/// `exp(x)`: 0 below -87 (where f32's normal range ends) and for NaN; clamped at 88.
#[inline(always)]
#[allow(clippy::manual_clamp)] // `clamp` keeps NaN, which the integer conversion must not see
pub fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // ln 2 split in two so that n·C1 is exact.
    const C1: f32 = 0.693_359_4;
    const C2: f32 = -2.121_944_4e-4;
    // Round to nearest without a rounding instruction (SSE2 has none): 1.5·2^23.
    const ROUND: f32 = 12_582_912.0;
    // `max`/`min` drop NaN (it becomes -87, masked to 0 below), unlike `clamp`.
    let xc = x.max(-87.0).min(88.0);
    // Fused multiply-adds: one instruction with FMA (AVX2, AVX-512, ARM), the same bits
    // everywhere (a CPU without them computes the fused result in software).
    let n = xc.mul_add(LOG2E, ROUND) - ROUND;
    let r = n.mul_add(-C2, n.mul_add(-C1, xc));
    let mut p = 1.987_569_1e-4f32;
    p = p.mul_add(r, 1.398_2e-3);
    p = p.mul_add(r, 8.333_452e-3);
    p = p.mul_add(r, 4.166_579_6e-2);
    p = p.mul_add(r, 1.666_666_5e-1);
    p = p.mul_add(r, 0.5);
    let e = (p * r).mul_add(r, r) + 1.0;
    // SAFETY: n is a whole number in [-126, 127] (xc in [-87, 88]), within i32's range: a
    // plain conversion (`as` adds saturation checks that keep the loop from vectorizing).
    let n = unsafe { n.to_int_unchecked::<i32>() };
    let scaled = e * f32::from_bits(((n + 127) as u32) << 23);
    // `x >= -87` is false for NaN: NaN logits weigh nothing.
    if x >= -87.0 { scaled } else { 0.0 }
}

/// `Σ exp((x - shift) · scale)` over one block, in lanes.
#[inline(always)]
fn block_sum(xs: &[f32], shift: f32, scale: f32) -> f32 {
    let mut acc = [0f32; LANES];
    let mut chunks = xs.chunks_exact(LANES);
    for c in &mut chunks {
        for i in 0..LANES {
            acc[i] += exp((c[i] - shift) * scale);
        }
    }
    for (i, &x) in chunks.remainder().iter().enumerate() {
        acc[i] += exp((x - shift) * scale);
    }
    fold_lanes(acc, |a, b| a + b)
}

#[inline(always)]
fn block_sums_impl(xs: &[f32], shift: f32, scale: f32, out: &mut Vec<f32>) -> f64 {
    out.clear();
    let mut total = 0f64;
    for b in xs.chunks(BLOCK) {
        let s = block_sum(b, shift, scale);
        out.push(s);
        total += s as f64;
    }
    total
}

/// Values per run in [`block_max`]: the k-th largest run maximum bounds the k-th largest
/// value from below (k runs each hold a value at least that large).
pub const RUN: usize = 64;

#[inline(always)]
fn block_max_impl(xs: &[f32], out: &mut Vec<f32>) {
    out.clear();
    for run in xs.chunks(RUN) {
        let mut acc = [f32::NEG_INFINITY; LANES];
        let mut chunks = run.chunks_exact(LANES);
        // `if x > a` (false for NaN: NaN is skipped) is x86's `max` instruction exactly;
        // `f32::max`'s NaN rules kept the loop scalar.
        let larger = |a: f32, x: f32| if x > a { x } else { a };
        for c in &mut chunks {
            for i in 0..LANES {
                acc[i] = larger(acc[i], c[i]);
            }
        }
        for (i, &x) in chunks.remainder().iter().enumerate() {
            acc[i] = larger(acc[i], x);
        }
        out.push(fold_lanes(acc, larger));
    }
}

vectorized!(
    /// `exp((x - shift) · scale)` summed per [`BLOCK`] into `out`; returns the total.
    pub fn block_sums(xs: &[f32], shift: f32, scale: f32, out: &mut Vec<f32>) -> f64 = block_sums_impl
);

/// `Σ exp((x - shift) · scale)`.
pub fn exp_sum(xs: &[f32], shift: f32, scale: f32) -> f64 {
    let mut blocks = Vec::with_capacity(xs.len().div_ceil(BLOCK));
    block_sums(xs, shift, scale, &mut blocks)
}

/// The largest value (NaN ignored; -inf for none) and the first index holding it.
pub fn argmax(xs: &[f32]) -> (usize, f32) {
    let mut runs = Vec::with_capacity(xs.len().div_ceil(RUN));
    block_max(xs, &mut runs);
    let max = runs.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    // Only the first run holding the maximum is searched.
    let at = runs
        .iter()
        .position(|&m| m == max)
        .and_then(|r| {
            let start = r * RUN;
            let end = (start + RUN).min(xs.len());
            xs[start..end]
                .iter()
                .position(|&x| x == max)
                .map(|i| start + i)
        })
        .unwrap_or(0);
    (at, max)
}

vectorized!(
    /// Maxima of consecutive runs of [`RUN`] values.
    fn block_max(xs: &[f32], out: &mut Vec<f32>) = block_max_impl
);

/// Indices of the `k` largest values, largest first (ties by index, NaN last): candidates are
/// only the values at least the k-th largest maximum of [`RUN`]-value runs, in the runs that
/// reach it, so the selection sorts a few hundred, not a whole vocabulary.
pub fn top_k(xs: &[f32], k: usize) -> Vec<u32> {
    if k == 0 {
        return Vec::new();
    }
    let mut maxima = Vec::with_capacity(xs.len().div_ceil(RUN));
    block_max(xs, &mut maxima);
    let floor = if k < xs.len() && k <= maxima.len() {
        let mut sorted = maxima.clone();
        let (_, kth, _) = sorted.select_nth_unstable_by(k - 1, |a, b| b.total_cmp(a));
        *kth
    } else {
        f32::NEG_INFINITY
    };
    let mut cand = in_runs_reaching(xs, &maxima, floor);
    if cand.len() < k {
        // Fewer than k numbers (NaN): every index is a candidate, NaN ranked last.
        cand = (0..xs.len() as u32).collect();
    }
    if cand.len() > k {
        cand.select_nth_unstable_by(k - 1, |a, b| descending(xs, a, b));
        cand.truncate(k);
    }
    cand.sort_unstable_by(|a, b| descending(xs, a, b));
    cand
}

/// Indices of the values at least `floor`, largest first (ties by index), found run by run
/// as [`top_k`]'s: what min-p sampling can draw, without sorting a whole vocabulary.
pub fn at_least(xs: &[f32], floor: f32) -> Vec<u32> {
    let mut maxima = Vec::with_capacity(xs.len().div_ceil(RUN));
    block_max(xs, &mut maxima);
    let mut cand = in_runs_reaching(xs, &maxima, floor);
    cand.sort_unstable_by(|a, b| descending(xs, a, b));
    cand
}

/// The indices of values at least `floor`, looked for only in the [`RUN`]-value runs whose
/// maximum (`maxima`, from `block_max`) reaches it.
fn in_runs_reaching(xs: &[f32], maxima: &[f32], floor: f32) -> Vec<u32> {
    let mut cand = Vec::new();
    for (r, &m) in maxima.iter().enumerate() {
        if m >= floor {
            let start = r * RUN;
            let end = (start + RUN).min(xs.len());
            cand.extend((start..end).filter(|&i| xs[i] >= floor).map(|i| i as u32));
        }
    }
    cand
}

/// The candidates' order: NaN after everything (-inf included), then larger first, then by
/// index.
fn descending(xs: &[f32], a: &u32, b: &u32) -> std::cmp::Ordering {
    let (x, y) = (xs[*a as usize], xs[*b as usize]);
    (x.is_nan().cmp(&y.is_nan()))
        .then(y.total_cmp(&x))
        .then(a.cmp(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Logits with ties, NaN, infinities and a tail shorter than a lane group.
    fn row(n: usize) -> Vec<f32> {
        let mut v: Vec<f32> = (0..n)
            .map(|i| ((i * 7919 % 1013) as f32 / 37.0 - 14.0) * if i % 5 == 0 { 3.0 } else { 1.0 })
            .collect();
        v[3] = f32::NAN;
        v[n / 2] = f32::NEG_INFINITY;
        v[n - 2] = 100.0;
        v[n / 3] = 100.0;
        v
    }

    #[test]
    fn exp_is_within_two_ulp_of_the_exact_value_and_zero_outside_f32s_range() {
        let mut x = -87.0f32;
        while x < 88.0 {
            let exact = (x as f64).exp();
            let got = exp(x) as f64;
            assert!(
                (got - exact).abs() <= 2.5e-7 * exact,
                "exp({x}) = {got}, not {exact}"
            );
            x += 0.0137;
        }
        assert_eq!(exp(0.0), 1.0);
        for x in [-87.5, -100.0, f32::NEG_INFINITY, f32::NAN] {
            assert_eq!(exp(x), 0.0, "exp({x})");
        }
        assert!(exp(88.0).is_finite());
    }

    #[test]
    fn sums_are_the_same_bits_on_every_instruction_set_and_close_to_f64() {
        for n in [1, 15, 17, 255, 256, 257, 49_152, 49_155] {
            let v: Vec<f32> = row(n.max(4)).into_iter().take(n).collect();
            let (_, max) = argmax(&v);
            let (mut a, mut b) = (Vec::new(), Vec::new());
            let fast = block_sums(&v, max, 0.7, &mut a);
            let portable = block_sums_impl(&v, max, 0.7, &mut b);
            assert_eq!(fast.to_bits(), portable.to_bits(), "n {n}");
            assert_eq!(a, b);
            let exact: f64 = v
                .iter()
                .filter(|x| !x.is_nan())
                .map(|&x| ((x - max) as f64 * 0.7f32 as f64).exp())
                .sum();
            assert!(
                (fast - exact).abs() <= 1e-6 * exact,
                "n {n}: {fast} vs {exact}"
            );
        }
    }

    #[test]
    fn argmax_is_the_first_largest_ignoring_nan() {
        let v = row(1000);
        assert_eq!(argmax(&v), (333, 100.0));
        assert_eq!(argmax(&[f32::NAN, 1.0, 2.0, 2.0]), (2, 2.0));
        assert_eq!(argmax(&[]).1, f32::NEG_INFINITY);
    }

    #[test]
    fn top_k_is_a_full_sorts_first_k() {
        for n in [5, 64, 65, 1000, 49_152] {
            let v = row(n);
            let mut all: Vec<u32> = (0..n as u32).filter(|&i| !v[i as usize].is_nan()).collect();
            all.sort_by(|&a, &b| v[b as usize].total_cmp(&v[a as usize]).then(a.cmp(&b)));
            for k in [1, 2, 3, 40, 64, 100, n - 1, n] {
                if k > n {
                    continue;
                }
                let got = top_k(&v, k);
                let mut want: Vec<u32> = all.iter().copied().take(k).collect();
                // NaN ranks last.
                if want.len() < k {
                    want.push(3);
                }
                assert_eq!(got, want, "n {n} k {k}");
            }
        }
        assert!(top_k(&[1.0, 2.0], 0).is_empty());
        assert_eq!(top_k(&[1.0, 2.0], 5), vec![1, 0]);
    }
}
