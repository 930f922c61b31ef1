//! The one pseudo-random generator of the crate (SplitMix64): the history
//! generator, the trainer's initialisation and shuffles, the benchmarks'
//! synthetic data and the tests all draw from it. Small, fast and the same
//! on every platform and with every crate version, so that a seed always
//! means the same world, the same network and the same benchmark input. Not
//! for anything secret (pseudonyms use HMAC, see `privacy`).

/// A seeded SplitMix64 stream.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// The stream whose state starts at `state` exactly (a user that wants
    /// streams of nearby seeds decorrelated mixes the seed first, as
    /// [`Rng::new`] does).
    pub const fn from_state(state: u64) -> Self {
        Rng(state)
    }

    /// A stream for `seed`, decorrelated from the streams of nearby seeds.
    pub fn new(seed: u64) -> Self {
        let mut r = Rng(seed ^ 0x5eed_5e65_7265_616d);
        r.next_u64();
        r
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        mix(self.0)
    }

    /// Uniform in [0, 1), 53 bits.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in [0, 1) as `f32`, 24 bits.
    pub fn unit_f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }

    /// Uniform in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            return 0;
        }
        (self.next_u64() % n as u64) as usize
    }

    /// Uniform in [lo, hi).
    pub fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.unit()
    }

    /// Standard normal (Box–Muller).
    pub fn normal(&mut self) -> f64 {
        let u1 = self.unit().max(1e-12);
        let u2 = self.unit();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }

    /// Standard normal as `f32` (Box–Muller on 24-bit uniforms).
    pub fn normal_f32(&mut self) -> f32 {
        let u1 = self.unit_f32().max(1e-7);
        let u2 = self.unit_f32();
        (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
    }

    /// Exponential with the given mean.
    pub fn exponential(&mut self, mean: f64) -> f64 {
        -mean * (1.0 - self.unit()).max(1e-12).ln()
    }

    /// Log-normal with the given median and log-space spread.
    pub fn log_normal(&mut self, median: f64, sigma: f64) -> f64 {
        median * (sigma * self.normal()).exp()
    }

    /// 1 + a geometric count with the given mean (at least 1, at most 64).
    pub fn count(&mut self, mean: f64) -> usize {
        let extra = (mean - 1.0).max(0.0);
        let p = 1.0 / (1.0 + extra);
        let mut n = 1;
        while n < 64 && !self.chance(p) {
            n += 1;
        }
        n
    }

    /// An index drawn with probability proportional to `weights`.
    pub fn weighted(&mut self, weights: &[f64]) -> usize {
        let total: f64 = weights.iter().sum();
        let mut x = self.unit() * total;
        for (i, w) in weights.iter().enumerate() {
            if x < *w {
                return i;
            }
            x -= w;
        }
        weights.len().saturating_sub(1)
    }

    /// Fisher–Yates shuffle.
    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = (self.next_u64() % (i as u64 + 1)) as usize;
            v.swap(i, j);
        }
    }
}

/// The SplitMix64 finaliser: a good 64-bit hash of an integer.
pub fn mix(x: u64) -> u64 {
    let mut z = x;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_are_fixed_by_their_seed() {
        // SplitMix64's published first output for state 0.
        assert_eq!(Rng::from_state(0).next_u64(), 0xe220_a839_7b1d_cdaf);
        let (mut a, mut b) = (Rng::new(7), Rng::new(7));
        assert!((0..100).all(|_| a.next_u64() == b.next_u64()));
        assert_ne!(Rng::new(7).next_u64(), Rng::new(8).next_u64());
    }

    #[test]
    fn draws_stay_in_their_ranges() {
        let mut r = Rng::new(1);
        for _ in 0..10_000 {
            assert!((0.0..1.0).contains(&r.unit()));
            assert!((0.0..1.0).contains(&r.unit_f32()));
            assert!(r.below(3) < 3);
            assert!((1..=64).contains(&r.count(5.0)));
            assert!(r.weighted(&[0.0, 1.0, 0.0]) == 1);
        }
        let mut v: Vec<u32> = (0..50).collect();
        r.shuffle(&mut v);
        v.sort_unstable();
        assert_eq!(v, (0..50).collect::<Vec<_>>());
    }
}
