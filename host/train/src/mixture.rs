//! Several training sources drawn into one: at each draw a source is picked with probability
//! `weight / sum of weights` (seeded), and its next example taken, as `datasets`'
//! `interleave_datasets` and Oumi's mixtures do. `first_exhausted` ends at the first source
//! that runs out; `all_exhausted` starts a finished source over until every one has finished
//! at least once. The whole stream is a function of the seed, so a resumed run trains on the
//! same mixture.

use crate::config::Stopping;
use rand::{RngExt, SeedableRng, rngs::StdRng};

/// The mixed stream of `sets` (none of them empty), `weights` one per set.
pub fn interleave<T: Clone>(
    sets: Vec<Vec<T>>,
    weights: &[f64],
    seed: u64,
    stopping: Stopping,
) -> Vec<T> {
    assert_eq!(sets.len(), weights.len(), "one weight per source");
    let total: f64 = weights.iter().sum();
    let mut rng = StdRng::seed_from_u64(galley_core::seed::derive_seed(
        seed,
        &[galley_core::seed::purpose::MIXTURE],
    ));
    let mut next = vec![0usize; sets.len()];
    let mut finished = vec![false; sets.len()];
    let mut out = Vec::new();
    if sets.iter().any(Vec::is_empty) {
        return out;
    }
    loop {
        let mut r = rng.random::<f64>() * total;
        let mut i = 0;
        while i + 1 < weights.len() && r >= weights[i] {
            r -= weights[i];
            i += 1;
        }
        if next[i] == sets[i].len() {
            finished[i] = true;
            if stopping == Stopping::FirstExhausted || finished.iter().all(|&f| f) {
                break;
            }
            next[i] = 0;
        }
        out.push(sets[i][next[i]].clone());
        next[i] += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sets() -> Vec<Vec<u32>> {
        vec![(0..300).collect(), (1000..1100).collect()]
    }

    #[test]
    fn draws_follow_the_weights_and_the_seed() {
        let a = interleave(sets(), &[3.0, 1.0], 7, Stopping::FirstExhausted);
        assert_eq!(
            a,
            interleave(sets(), &[3.0, 1.0], 7, Stopping::FirstExhausted)
        );
        assert_ne!(
            a,
            interleave(sets(), &[3.0, 1.0], 8, Stopping::FirstExhausted)
        );
        // Each source in its own order, none repeated before it runs out.
        let first: Vec<u32> = a.iter().copied().filter(|&x| x < 1000).collect();
        assert_eq!(first, (0..first.len() as u32).collect::<Vec<_>>());
        let share = first.len() as f64 / a.len() as f64;
        assert!(
            (0.65..0.85).contains(&share),
            "share of the weight-3 source: {share}"
        );
    }

    #[test]
    fn first_exhausted_stops_at_the_first_end_all_exhausted_goes_on() {
        let a = interleave(sets(), &[1.0, 1.0], 1, Stopping::FirstExhausted);
        // The 100-example source ends it, after all of its examples.
        assert_eq!(a.iter().filter(|&&x| x >= 1000).count(), 100);
        assert!(a.len() < 300);
        let b = interleave(sets(), &[1.0, 1.0], 1, Stopping::AllExhausted);
        // Every example of the larger source appears; the smaller one started over.
        assert!((0..300).all(|x| b.contains(&x)));
        assert!(b.iter().filter(|&&x| x >= 1000).count() > 100);
        assert!(
            interleave(
                vec![vec![1], vec![]],
                &[1.0, 1.0],
                1,
                Stopping::AllExhausted
            )
            .is_empty()
        );
    }
}
