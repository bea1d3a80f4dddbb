//! What the kernel tests share: the element types galley's kernels come in (f32 and bf16,
//! with the rounding a bf16 store does), deterministic inputs, and a tolerance check that
//! names the element that is off.

use crate::Buf;
use half::bf16;

/// The element type a kernel instance runs in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ty {
    F32,
    Bf16,
}

impl Ty {
    pub const ALL: [Ty; 2] = [Ty::F32, Ty::Bf16];

    /// The suffix galley's kernels carry (`attend_f32`, `attend_bf16`).
    pub fn suffix(self) -> &'static str {
        match self {
            Ty::F32 => "f32",
            Ty::Bf16 => "bf16",
        }
    }

    /// `x` as a store of this type keeps it (bf16: round to nearest even).
    pub fn round(self, x: f32) -> f32 {
        match self {
            Ty::F32 => x,
            Ty::Bf16 => bf16::from_f32(x).to_f32(),
        }
    }

    pub fn buf(self, x: &[f32]) -> Buf {
        match self {
            Ty::F32 => Buf::from_slice(x),
            Ty::Bf16 => Buf::from_slice(&x.iter().map(|&v| bf16::from_f32(v)).collect::<Vec<_>>()),
        }
    }

    pub fn uninit(self, n: usize) -> Buf {
        match self {
            Ty::F32 => Buf::uninit::<f32>(n),
            Ty::Bf16 => Buf::uninit::<bf16>(n),
        }
    }

    pub fn read(self, b: &Buf) -> Vec<f32> {
        match self {
            Ty::F32 => b.to_vec::<f32>(),
            Ty::Bf16 => b.to_vec::<bf16>().iter().map(|v| v.to_f32()).collect(),
        }
    }

    /// `n` inputs in [-1, 1) as the kernel sees them (already rounded to this type).
    pub fn input(self, n: usize, seed: u64) -> Vec<f32> {
        vals(n, seed).into_iter().map(|v| self.round(v)).collect()
    }

    /// Relative tolerance for one kernel's arithmetic on this type's data.
    pub fn tol(self) -> f32 {
        match self {
            Ty::F32 => 1e-5,
            Ty::Bf16 => 1e-2,
        }
    }
}

/// Deterministic values in [-1, 1) (a linear congruential generator; no dependency).
pub fn vals(n: usize, seed: u64) -> Vec<f32> {
    let step = |s: u64| {
        s.wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407)
    };
    let mut s = step(seed);
    (0..n)
        .map(|_| {
            s = step(s);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// Panics naming the first element where `|got - want| > tol * (1 + |want|)`.
pub fn assert_close(got: &[f32], want: &[f32], tol: f32, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= tol * (1.0 + w.abs()),
            "{what}[{i}]: got {g}, want {w}"
        );
    }
}
