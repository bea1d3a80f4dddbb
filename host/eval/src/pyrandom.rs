//! Python's `random.Random`, as far as few-shot sampling needs it: the Mersenne Twister
//! seeded from an integer the way CPython seeds it (`init_by_array` over the seed's 32-bit
//! words), `getrandbits`, `_randbelow` and `sample`. lm-evaluation-harness draws few-shot
//! examples with `Random(1234).sample(docs, k)`, one document after another; doing the same
//! draws here is what makes a 5-shot prompt — and so the score — identical to the harness's.

const N: usize = 624;
const M: usize = 397;

pub struct PyRandom {
    mt: [u32; N],
    index: usize,
}

impl PyRandom {
    /// `random.Random(seed)` for a non-negative integer seed.
    pub fn new(seed: u64) -> Self {
        let mut key: Vec<u32> = vec![seed as u32];
        if seed >> 32 != 0 {
            key.push((seed >> 32) as u32);
        }
        let mut r = Self {
            mt: [0; N],
            index: N,
        };
        r.init_genrand(19650218);
        let (mut i, mut j) = (1usize, 0usize);
        for _ in 0..N.max(key.len()) {
            let prev = r.mt[i - 1] ^ (r.mt[i - 1] >> 30);
            r.mt[i] = (r.mt[i] ^ prev.wrapping_mul(1664525))
                .wrapping_add(key[j])
                .wrapping_add(j as u32);
            i += 1;
            j += 1;
            if i >= N {
                r.mt[0] = r.mt[N - 1];
                i = 1;
            }
            if j >= key.len() {
                j = 0;
            }
        }
        for _ in 0..N - 1 {
            let prev = r.mt[i - 1] ^ (r.mt[i - 1] >> 30);
            r.mt[i] = (r.mt[i] ^ prev.wrapping_mul(1566083941)).wrapping_sub(i as u32);
            i += 1;
            if i >= N {
                r.mt[0] = r.mt[N - 1];
                i = 1;
            }
        }
        r.mt[0] = 0x8000_0000;
        r
    }

    fn init_genrand(&mut self, s: u32) {
        self.mt[0] = s;
        for i in 1..N {
            self.mt[i] = 1812433253u32
                .wrapping_mul(self.mt[i - 1] ^ (self.mt[i - 1] >> 30))
                .wrapping_add(i as u32);
        }
        self.index = N;
    }

    fn next_u32(&mut self) -> u32 {
        if self.index >= N {
            for k in 0..N {
                let y = (self.mt[k] & 0x8000_0000) | (self.mt[(k + 1) % N] & 0x7fff_ffff);
                let mut v = self.mt[(k + M) % N] ^ (y >> 1);
                if y & 1 != 0 {
                    v ^= 0x9908_b0df;
                }
                self.mt[k] = v;
            }
            self.index = 0;
        }
        let mut y = self.mt[self.index];
        self.index += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^ (y >> 18)
    }

    /// `getrandbits(k)` for k <= 64.
    fn getrandbits(&mut self, k: u32) -> u64 {
        if k <= 32 {
            return u64::from(self.next_u32() >> (32 - k));
        }
        // CPython fills 32-bit words from the least significant; the last word is shifted.
        let lo = u64::from(self.next_u32());
        let hi = u64::from(self.next_u32() >> (64 - k));
        lo | (hi << 32)
    }

    /// `_randbelow(n)`: rejection sampling over `n.bit_length()` bits.
    fn randbelow(&mut self, n: usize) -> usize {
        let k = usize::BITS - n.leading_zeros();
        loop {
            let r = self.getrandbits(k) as usize;
            if r < n {
                return r;
            }
        }
    }

    /// `sample(range(n), k)`: k distinct indices, in CPython's order.
    pub fn sample(&mut self, n: usize, k: usize) -> Vec<usize> {
        assert!(k <= n, "sample larger than population");
        let mut setsize = 21usize;
        if k > 5 {
            // 4 ** ceil(log(3k, 4))
            let e = ((3.0 * k as f64).ln() / 4f64.ln()).ceil() as u32;
            setsize += 4usize.pow(e);
        }
        let mut out = Vec::with_capacity(k);
        if n <= setsize {
            let mut pool: Vec<usize> = (0..n).collect();
            for i in 0..k {
                let j = self.randbelow(n - i);
                out.push(pool[j]);
                pool[j] = pool[n - i - 1];
            }
        } else {
            let mut seen = std::collections::HashSet::new();
            for _ in 0..k {
                let mut j = self.randbelow(n);
                while !seen.insert(j) {
                    j = self.randbelow(n);
                }
                out.push(j);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::PyRandom;

    // Values printed by CPython 3.11: `r = random.Random(1234); [r.getrandbits(32) for _ in
    // range(3)]` and `random.Random(1234).sample(range(1000), 5)` / `(range(10), 5)`.
    #[test]
    fn matches_cpython_streams() {
        let mut r = PyRandom::new(1234);
        let got: Vec<u32> = (0..3).map(|_| r.next_u32()).collect();
        assert_eq!(got, PY_BITS);
        assert_eq!(PyRandom::new(1234).sample(1000, 5), PY_SAMPLE_1000);
        assert_eq!(PyRandom::new(1234).sample(10, 5), PY_SAMPLE_10);
        let mut r = PyRandom::new(1234);
        assert_eq!(r.sample(7473, 6), PY_STREAM[0]);
        assert_eq!(r.sample(7473, 6), PY_STREAM[1]);
    }

    const PY_BITS: [u32; 3] = [4150886329, 3342196574, 1892932127];
    const PY_SAMPLE_1000: [usize; 5] = [989, 796, 451, 119, 7];
    const PY_SAMPLE_10: [usize; 5] = [7, 1, 0, 9, 4];
    // `r = random.Random(1234); [r.sample(range(7473), 6) for _ in range(2)]`: a stream.
    const PY_STREAM: [[usize; 6]; 2] = [
        [6374, 3610, 957, 61, 742, 7462],
        [6610, 4769, 286, 5501, 5677, 687],
    ];
}
