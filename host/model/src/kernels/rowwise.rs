//! The exponentials around the products of a forward or backward pass, vectorized: the
//! causal softmax of attention rows (prefill, log-likelihood scoring, training), the SiLU gate
//! and its gradient, and the cross-entropy's log-sum-exp and softmax gradient over a
//! vocabulary. Written with `f32::exp` (a libm call per value: the loops stayed scalar) they
//! cost 13-15% of a 4 x 512 prefill (`perf`, `examples/prefill`), the attention softmax most
//! of it. Here they use [`softmax::exp`](super::softmax::exp) (within 2 ulp of the exact
//! value) in 16-lane loops compiled for AVX-512, AVX2 or portable code, the same bits on each.
//!
//! A row with a NaN or an infinity takes the scalar code the kernels replaced, so such values
//! spread as they did (a diverged training run still shows a NaN loss; the vectorized `exp`
//! alone gives NaN no weight, which is right for sampling and wrong here).

use super::softmax::{LANES, exp, fold_lanes};
use std::mem::MaybeUninit;

/// `if x > a` is x86's `max` instruction exactly; NaN never wins.
#[inline(always)]
fn larger(a: f32, x: f32) -> f32 {
    if x > a { x } else { a }
}

/// A lane group's flags as weights: 1 where kept, 0 elsewhere (arithmetic, not branches,
/// keeps the loops below vectorized; with `bool` selects LLVM left them scalar).
#[inline(always)]
fn weights(k: &[bool]) -> [f32; LANES] {
    let mut w = [0f32; LANES];
    for i in 0..LANES {
        w[i] = k[i] as u8 as f32;
    }
    w
}

/// The largest `x·scale` of the values `keep` selects (all when `keep` is empty), and whether
/// every value of `xs` is finite (the selected ones or not: a scalar fallback is always right).
#[inline(always)]
fn scaled_max(xs: &[f32], keep: &[bool], scale: f32) -> (f32, bool) {
    let mut acc = [f32::NEG_INFINITY; LANES];
    // x·0 is NaN exactly for NaN and the infinities: one lane sum tells if any came.
    let mut bad = [0f32; LANES];
    let mut chunks = xs.chunks_exact(LANES);
    if keep.is_empty() {
        for c in &mut chunks {
            for i in 0..LANES {
                acc[i] = larger(acc[i], c[i] * scale);
                bad[i] += c[i] * 0.0;
            }
        }
    } else {
        for (c, k) in (&mut chunks).zip(keep.chunks_exact(LANES)) {
            let w = weights(k);
            for i in 0..LANES {
                // A dropped value competes as -inf (finite - inf; a non-finite one is caught
                // by `bad` whatever it becomes).
                let v = c[i] * scale - (1.0 - w[i]) * f32::MAX * 2.0;
                acc[i] = larger(acc[i], v);
                bad[i] += c[i] * 0.0;
            }
        }
    }
    let done = xs.len() - chunks.remainder().len();
    for (i, &x) in chunks.remainder().iter().enumerate() {
        if keep.is_empty() || keep[done + i] {
            acc[i] = larger(acc[i], x * scale);
        }
        bad[i] += x * 0.0;
    }
    let finite = fold_lanes(bad, |a, b| a + b) == 0.0;
    (fold_lanes(acc, larger), finite)
}

/// `xs[j] = exp(xs[j]·scale - m)` where `keep` selects (all when empty), else 0; returns
/// their sum. The values are finite and `m` at least each selected one's `x·scale`.
#[inline(always)]
fn exp_in_place(xs: &mut [f32], keep: &[bool], scale: f32, m: f32) -> f32 {
    let mut acc = [0f32; LANES];
    let n = xs.len();
    let mut chunks = xs.chunks_exact_mut(LANES);
    if keep.is_empty() {
        for c in &mut chunks {
            for i in 0..LANES {
                c[i] = exp(c[i].mul_add(scale, -m));
                acc[i] += c[i];
            }
        }
    } else {
        for (c, k) in (&mut chunks).zip(keep.chunks_exact(LANES)) {
            let w = weights(k);
            for i in 0..LANES {
                // exp is finite (at most e^88), so the weight 0 gives exactly 0.
                c[i] = exp(c[i].mul_add(scale, -m)) * w[i];
                acc[i] += c[i];
            }
        }
    }
    let rest = chunks.into_remainder();
    let done = n - rest.len();
    for (i, x) in rest.iter_mut().enumerate() {
        let seen = keep.is_empty() || keep[done + i];
        *x = if seen { exp(x.mul_add(scale, -m)) } else { 0.0 };
        acc[i] += *x;
    }
    fold_lanes(acc, |a, b| a + b)
}

#[inline(always)]
fn softmax_causal_impl(row: &mut [f32], at: usize, valid: &[bool], scale: f32) {
    let (seen, after) = row.split_at_mut(at + 1);
    after.fill(0.0);
    let keep = if valid.is_empty() {
        valid
    } else {
        &valid[..at]
    };
    let (before, me) = seen.split_at_mut(at);
    let me = &mut me[0];
    let (m, finite) = scaled_max(before, keep, scale);
    if !(finite && me.is_finite()) {
        return softmax_causal_scalar(seen, keep, scale);
    }
    let m = larger(m, *me * scale);
    *me = exp(me.mul_add(scale, -m));
    let sum = exp_in_place(before, keep, scale, m) + *me;
    let inv = 1.0 / sum;
    for v in seen.iter_mut() {
        *v *= inv;
    }
}

/// The code the vectorized softmax replaced, for rows holding NaN or an infinity: `f32::exp`
/// and `f32::max` spread them as they always did.
fn softmax_causal_scalar(seen: &mut [f32], keep: &[bool], scale: f32) {
    let at = seen.len() - 1;
    let sees = |j: usize| j == at || keep.is_empty() || keep[j];
    let m = (0..=at)
        .filter(|&j| sees(j))
        .fold(f32::NEG_INFINITY, |m, j| m.max(seen[j] * scale));
    let mut sum = 0f32;
    for (j, v) in seen.iter_mut().enumerate() {
        *v = if sees(j) { (*v * scale - m).exp() } else { 0.0 };
        sum += *v;
    }
    let inv = 1.0 / sum;
    for v in seen.iter_mut() {
        *v *= inv;
    }
}

vectorized!(
    /// softmax(scale·x) in place over the keys query position `at` sees: `j < at` where
    /// `valid[j]` (every `j < at` when `valid` is empty), and `at` itself; the rest of the row
    /// becomes 0. `row` holds at least `at + 1` scores.
    pub fn softmax_causal(row: &mut [f32], at: usize, valid: &[bool], scale: f32) = softmax_causal_impl
);

/// `s = 1 / (1 + e^-x)` with the vectorized `exp`; NaN stays NaN through `x·s`.
#[inline(always)]
fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp(-x))
}

/// A gated activation `act(x) = x·s(x)` given by `parts(x) = (s, k)`, where its derivative
/// is `s·(1 + x·(1 - s)·k)`: SiLU (s = σ(x), k = 1) and GELU's tanh form (s = σ(2z), k = 2z').
#[inline(always)]
fn gate_with(y: &mut [MaybeUninit<f32>], g: &[f32], u: &[f32], parts: impl Fn(f32) -> (f32, f32)) {
    for ((y, &g), &u) in y.iter_mut().zip(g).zip(u) {
        y.write(g * parts(g).0 * u);
    }
}

/// The gradients of `act(g)·u` given `dy`, `act` as in [`gate_with`].
#[inline(always)]
fn gate_grad_with(
    (dg, du): (&mut [MaybeUninit<f32>], &mut [MaybeUninit<f32>]),
    g: &[f32],
    u: &[f32],
    dy: &[f32],
    parts: impl Fn(f32) -> (f32, f32),
) {
    let n = dg
        .len()
        .min(du.len())
        .min(g.len())
        .min(u.len())
        .min(dy.len());
    for i in 0..n {
        let (x, (s, k)) = (g[i], parts(g[i]));
        du[i].write(dy[i] * x * s);
        dg[i].write(dy[i] * u[i] * s * (1.0 + x * (1.0 - s) * k));
    }
}

#[inline(always)]
fn silu_parts(x: f32) -> (f32, f32) {
    (sigmoid(x), 1.0)
}

#[inline(always)]
fn silu_gate_impl(y: &mut [MaybeUninit<f32>], g: &[f32], u: &[f32]) {
    gate_with(y, g, u, silu_parts)
}

vectorized!(
    /// `y = silu(g)·u` elementwise over the shortest of the three.
    pub fn silu_gate(y: &mut [MaybeUninit<f32>], g: &[f32], u: &[f32]) = silu_gate_impl
);

#[inline(always)]
fn silu_gate_grad_impl(
    dg: &mut [MaybeUninit<f32>],
    du: &mut [MaybeUninit<f32>],
    g: &[f32],
    u: &[f32],
    dy: &[f32],
) {
    gate_grad_with((dg, du), g, u, dy, silu_parts)
}

vectorized!(
    /// The gradients of `silu(g)·u` given `dy`: `du = dy·silu(g)`, `dg = dy·u·σ(g)(1 + g(1 - σ(g)))`.
    pub fn silu_gate_grad(dg: &mut [MaybeUninit<f32>], du: &mut [MaybeUninit<f32>], g: &[f32], u: &[f32], dy: &[f32]) = silu_gate_grad_impl
);

/// √(2/π), GELU's tanh approximation's constant.
const GELU_C: f32 = 0.797_884_6;

/// `(σ(2z), 2·dz/dx)` for GELU's tanh approximation at `x`, z = √(2/π)(x + 0.044715x³):
/// 0.5·(1 + tanh z) is σ(2z), so the vectorized `exp` serves (no libm `tanhf`).
#[inline(always)]
fn gelu_parts(x: f32) -> (f32, f32) {
    let x2 = x * x;
    let z2 = 2.0 * GELU_C * x * (1.0 + 0.044_715 * x2);
    (sigmoid(z2), 2.0 * GELU_C * (1.0 + 3.0 * 0.044_715 * x2))
}

#[inline(always)]
fn gelu_gate_impl(y: &mut [MaybeUninit<f32>], g: &[f32], u: &[f32]) {
    gate_with(y, g, u, gelu_parts)
}

vectorized!(
    /// `y = gelu_tanh(g)·u` elementwise over the shortest of the three.
    pub fn gelu_gate(y: &mut [MaybeUninit<f32>], g: &[f32], u: &[f32]) = gelu_gate_impl
);

#[inline(always)]
fn gelu_gate_grad_impl(
    dg: &mut [MaybeUninit<f32>],
    du: &mut [MaybeUninit<f32>],
    g: &[f32],
    u: &[f32],
    dy: &[f32],
) {
    gate_grad_with((dg, du), g, u, dy, gelu_parts)
}

vectorized!(
    /// The gradients of `gelu_tanh(g)·u` given `dy`: `du = dy·gelu_tanh(g)`, `dg = dy·u·(σ(2z)
    /// + g·σ(2z)(1 - σ(2z))·2z')`.
    pub fn gelu_gate_grad(dg: &mut [MaybeUninit<f32>], du: &mut [MaybeUninit<f32>], g: &[f32], u: &[f32], dy: &[f32]) = gelu_gate_grad_impl
);

/// `cap·tanh(x/cap)`, Gemma 2's soft-capping, through the vectorized `exp`: tanh y = 1 -
/// 2/(e^2y + 1) (e^2y past `exp`'s clamp gives 1 within f32's rounding). NaN stays NaN, as a
/// diverged score must.
#[inline(always)]
pub fn softcap(x: f32, cap: f32) -> f32 {
    let t = 1.0 - 2.0 / (exp(2.0 * x / cap) + 1.0);
    if x.is_nan() { x } else { cap * t }
}

#[inline(always)]
fn softcap_row_impl(row: &mut [f32], cap: f32) {
    for x in row {
        *x = softcap(*x, cap);
    }
}

vectorized!(
    /// [`softcap`] over a row, in place.
    pub fn softcap_row(row: &mut [f32], cap: f32) = softcap_row_impl
);

#[inline(always)]
fn finite_max_impl(row: &[f32]) -> (f32, bool) {
    scaled_max(row, &[], 1.0)
}

vectorized!(
    /// The row's largest value, and whether every value is finite.
    fn finite_max(row: &[f32]) -> (f32, bool) = finite_max_impl
);

/// `ln Σ e^x` over a row (a NaN or an infinity in it gives what `f32::exp` gives).
///
/// The sum is the sampler's ([`softmax::exp_sum`](super::softmax::exp_sum): lanes within
/// 256-value blocks, blocks added in f64). Running f32 sums over a whole vocabulary drop the
/// tail's small terms against a large total: on logits drawn with a standard deviation of 4
/// (49,152 of them) 16 running lane sums underestimate the log-sum-exp by 3.8e-6 on average and
/// a single running sum by 7.2e-5, where blocks stay within 1e-7
/// (`log_sum_exp_has_no_bias_over_a_vocabulary`).
pub fn log_sum_exp(row: &[f32]) -> f32 {
    let (m, finite) = finite_max(row);
    if !finite {
        let m = row.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
        let sum: f32 = row.iter().map(|&v| (v - m).exp()).sum();
        return m + sum.ln();
    }
    (m as f64 + super::softmax::exp_sum(row, m, 1.0).ln()) as f32
}

#[inline(always)]
fn scaled_exp_impl(row: &mut [f32], shift: f32, g: f32) {
    for z in row.iter_mut() {
        *z = g * exp(*z - shift);
    }
}

/// `x = g·e^(x - shift)` in place: a softmax gradient's first term from `shift`, the row's
/// [`log_sum_exp`]. A NaN or a +inf in the row makes that non-finite, and then `f32::exp`
/// spreads them as before (a -inf gives 0 either way).
pub fn scaled_exp(row: &mut [f32], shift: f32, g: f32) {
    if !shift.is_finite() {
        row.iter_mut().for_each(|z| *z = g * (*z - shift).exp());
        return;
    }
    scaled_exp_checked(row, shift, g)
}

vectorized!(
    fn scaled_exp_checked(row: &mut [f32], shift: f32, g: f32) = scaled_exp_impl
);

#[cfg(test)]
mod tests {
    use super::*;

    /// The scalar definitions these kernels replace.
    fn softmax_ref(row: &[f32], at: usize, valid: &[bool], scale: f32) -> Vec<f64> {
        let sees = |j: usize| j == at || (j < at && (valid.is_empty() || valid[j]));
        let m = (0..row.len())
            .filter(|&j| sees(j))
            .map(|j| row[j] as f64 * scale as f64)
            .fold(f64::NEG_INFINITY, f64::max);
        let e: Vec<f64> = (0..row.len())
            .map(|j| {
                if sees(j) {
                    (row[j] as f64 * scale as f64 - m).exp()
                } else {
                    0.0
                }
            })
            .collect();
        let s: f64 = e.iter().sum();
        e.into_iter().map(|x| x / s).collect()
    }

    fn scores(n: usize) -> Vec<f32> {
        (0..n)
            .map(|i| (i * 7919 % 1013) as f32 / 50.0 - 10.0)
            .collect()
    }

    #[test]
    fn causal_softmax_matches_f64_and_is_the_same_bits_on_every_instruction_set() {
        for n in [1usize, 2, 15, 16, 17, 64, 100, 513] {
            for at in [0, n / 2, n - 1] {
                let valid: Vec<bool> = (0..n).map(|j| j % 7 != 3).collect();
                for (keep, scale) in [(&[][..], 1.0f32), (&valid[..], 0.125)] {
                    let mut fast = scores(n);
                    let mut portable = fast.clone();
                    let want = softmax_ref(&fast, at, keep, scale);
                    softmax_causal(&mut fast, at, keep, scale);
                    softmax_causal_impl(&mut portable, at, keep, scale);
                    assert_eq!(
                        fast.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                        portable.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                        "n {n} at {at}"
                    );
                    for (j, (&g, &w)) in fast.iter().zip(&want).enumerate() {
                        assert!(
                            (g as f64 - w).abs() <= 1e-6 * w.max(1e-3),
                            "n {n} at {at} key {j}: {g} vs {w}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn a_nan_score_spreads_through_its_row_as_before() {
        let mut row = scores(40);
        row[5] = f32::NAN;
        softmax_causal(&mut row, 30, &[], 1.0);
        assert!(row[..=30].iter().all(|x| x.is_nan()), "{row:?}");
        assert!(row[31..].iter().all(|&x| x == 0.0));
        // A NaN in padding the query does not see weighs nothing, as before.
        let mut row = scores(40);
        row[5] = f32::NAN;
        let mut valid = vec![true; 40];
        valid[5] = false;
        softmax_causal(&mut row, 30, &valid, 1.0);
        assert!(row.iter().all(|x| x.is_finite()), "{row:?}");
        assert_eq!(row[5], 0.0);
        let mut row = scores(40);
        row[2] = f32::NAN;
        assert!(log_sum_exp(&row).is_nan());
        let mut row = scores(40);
        row[2] = f32::INFINITY;
        assert!(!log_sum_exp(&row).is_finite());
    }

    #[test]
    fn silu_gate_and_its_gradient_match_the_scalar_definitions() {
        let n = 1000;
        let g: Vec<f32> = (0..n).map(|i| (i as f32 - 500.0) / 25.0).collect();
        let u: Vec<f32> = (0..n).map(|i| ((i * 31 % 17) as f32 - 8.0) / 3.0).collect();
        let dy: Vec<f32> = (0..n).map(|i| ((i * 13 % 11) as f32 - 5.0) / 7.0).collect();
        let mut y = vec![MaybeUninit::new(0f32); n];
        silu_gate(&mut y, &g, &u);
        let (mut dg, mut du) = (
            vec![MaybeUninit::new(0f32); n],
            vec![MaybeUninit::new(0f32); n],
        );
        silu_gate_grad(&mut dg, &mut du, &g, &u, &dy);
        for i in 0..n {
            let (x, u, dy) = (g[i] as f64, u[i] as f64, dy[i] as f64);
            let s = 1.0 / (1.0 + (-x).exp());
            // SAFETY: every element was initialised above.
            let (y, dg, du) =
                unsafe { (y[i].assume_init(), dg[i].assume_init(), du[i].assume_init()) };
            let close = |a: f32, b: f64| (a as f64 - b).abs() <= 1e-6 * (1.0 + b.abs());
            assert!(close(y, x * s * u), "y at {x}");
            assert!(close(du, dy * x * s), "du at {x}");
            assert!(close(dg, dy * u * s * (1.0 + x * (1.0 - s))), "dg at {x}");
        }
        let mut y = [MaybeUninit::new(0f32)];
        silu_gate(&mut y, &[f32::NAN], &[1.0]);
        // SAFETY: written above.
        assert!(unsafe { y[0].assume_init() }.is_nan());
    }

    /// Gemma's gate against PyTorch's formula in f64 (0.5·x·(1 + tanh(√(2/π)(x + 0.044715x³)))
    /// and its derivative), across the range where tanh bends and saturates.
    #[test]
    fn gelu_gate_and_its_gradient_match_the_tanh_definitions() {
        let n = 1000;
        let g: Vec<f32> = (0..n).map(|i| (i as f32 - 500.0) / 60.0).collect();
        let u: Vec<f32> = (0..n).map(|i| ((i * 31 % 17) as f32 - 8.0) / 3.0).collect();
        let dy: Vec<f32> = (0..n).map(|i| ((i * 13 % 11) as f32 - 5.0) / 7.0).collect();
        let mut y = vec![MaybeUninit::new(0f32); n];
        gelu_gate(&mut y, &g, &u);
        let (mut dg, mut du) = (
            vec![MaybeUninit::new(0f32); n],
            vec![MaybeUninit::new(0f32); n],
        );
        gelu_gate_grad(&mut dg, &mut du, &g, &u, &dy);
        let c = (2.0 / std::f64::consts::PI).sqrt();
        for i in 0..n {
            let (x, u, dy) = (g[i] as f64, u[i] as f64, dy[i] as f64);
            let t = (c * (x + 0.044715 * x.powi(3))).tanh();
            let gelu = 0.5 * x * (1.0 + t);
            let d = 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * c * (1.0 + 3.0 * 0.044715 * x * x);
            // SAFETY: every element was initialised above.
            let (y, dg, du) =
                unsafe { (y[i].assume_init(), dg[i].assume_init(), du[i].assume_init()) };
            let close = |a: f32, b: f64| (a as f64 - b).abs() <= 2e-6 * (1.0 + b.abs());
            assert!(close(y, gelu * u), "y at {x}: {y} vs {}", gelu * u);
            assert!(close(du, dy * gelu), "du at {x}");
            assert!(close(dg, dy * u * d), "dg at {x}: {dg} vs {}", dy * u * d);
        }
    }

    /// Logits of a vocabulary's width drawn with a wide spread (a trained head's tail): the
    /// mean error over rows must be far below the per-row f32 rounding, since a training
    /// loss averages thousands of rows and a bias does not average out.
    #[test]
    fn log_sum_exp_has_no_bias_over_a_vocabulary() {
        use rand::{RngExt, SeedableRng, rngs::StdRng};
        let mut rng = StdRng::seed_from_u64(7);
        let rows = 64;
        let mut bias = 0f64;
        for _ in 0..rows {
            let row: Vec<f32> = (0..49_152)
                .map(|_| {
                    let (u1, u2): (f64, f64) = (rng.random::<f64>().max(1e-12), rng.random());
                    let normal = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
                    (4.0 * normal) as f32
                })
                .collect();
            let m = row.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
            let exact = m + row.iter().map(|&x| (x as f64 - m).exp()).sum::<f64>().ln();
            let got = log_sum_exp(&row) as f64;
            assert!((got - exact).abs() < 4e-6, "{got} vs {exact}");
            bias += got - exact;
        }
        let bias = bias / rows as f64;
        // 16 running lane sums gave -3.8e-6 here, one running sum -7.2e-5.
        assert!(bias.abs() < 5e-7, "mean error {bias:e}");
    }

    #[test]
    fn log_sum_exp_and_the_softmax_gradient_match_f64() {
        for n in [1usize, 7, 16, 49_152] {
            let row: Vec<f32> = (0..n)
                .map(|i| (i * 7919 % 1013) as f32 / 37.0 - 14.0)
                .collect();
            let m = row.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
            let want = m + row.iter().map(|&x| (x as f64 - m).exp()).sum::<f64>().ln();
            let got = log_sum_exp(&row);
            assert!(
                (got as f64 - want).abs() <= 1e-5 * want.abs().max(1.0),
                "n {n}: {got} vs {want}"
            );
            let mut grad = row.clone();
            scaled_exp(&mut grad, got, 0.5);
            for (i, &x) in row.iter().enumerate() {
                let w = 0.5 * (x as f64 - got as f64).exp();
                assert!(
                    (grad[i] as f64 - w).abs() <= 1e-6 * w.max(1e-6),
                    "n {n} at {i}"
                );
            }
        }
    }
}
