//! Gemma's sliding layers keep only the slots a later query can see (`Cache::trim_sliding`):
//! on the transformers-made Gemma 2 and 3 fixtures (window 4, max position 64), every step of
//! a long decode gives the logits of a full pass over the whole sequence while the sliding
//! layer holds under twice the window, and a trimmed cache survives what is done with caches
//! between passes: stacked with an untrimmed one into a left-padded batch (continuous
//! batching), a row taken out (a rollout's next turn), a row's tail sliced (the prompt
//! cache), the fixed-shape decoder continuing it.

use galley_model::{Cache, Llama, load};
use std::path::PathBuf;

mod common;
use common::{HEAVY, rel_err};

const WINDOW: usize = 4;

fn model(name: &str) -> Llama {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/tiny")
        .join(name);
    load(&dir, &galley_model::default_device()).unwrap().model
}

/// Token `i` of a made-up sequence (the fixtures' vocabulary is 128).
fn tok(seed: u32, i: usize) -> u32 {
    (seed * 31 + i as u32 * 17 + 3) % 128
}

/// The logits of the last position of `tokens`, from one pass over all of them (no trimming:
/// a pass attends from a fresh cache).
fn full_pass(m: &Llama, tokens: &[u32]) -> Vec<f32> {
    let mut cache = m.new_exact_cache(1, 64);
    let out = m
        .forward(&[tokens.to_vec()], None, &mut cache, true)
        .unwrap();
    out.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

/// One token per row through `cache`: each row's logits.
fn step(m: &Llama, cache: &mut Cache, ids: &[u32]) -> Vec<Vec<f32>> {
    let rows: Vec<Vec<u32>> = ids.iter().map(|&t| vec![t]).collect();
    let out = m.forward(&rows, None, cache, true).unwrap();
    out.squeeze(1).unwrap().to_vec2::<f32>().unwrap()
}

/// Slots the sliding layer (layer 0 in both fixtures) and the full one (layer 1) hold.
fn held(cache: &Cache) -> (usize, usize) {
    let len = cache.len();
    (
        len - cache.first_held(0).unwrap(),
        len - cache.first_held(1).unwrap(),
    )
}

#[test]
fn a_long_decode_matches_full_passes_with_the_sliding_layer_under_twice_its_window() {
    let _one = HEAVY.lock().unwrap_or_else(|e| e.into_inner());
    for name in ["gemma3", "gemma2"] {
        let m = model(name);
        let seq: Vec<u32> = (0..60).map(|i| tok(1, i)).collect();
        let mut cache = m.new_exact_cache(1, 64);
        m.forward(&[seq[..6].to_vec()], None, &mut cache, true)
            .unwrap();
        let mut most = 0;
        for n in 6..60 {
            let got = step(&m, &mut cache, &[seq[n]]).remove(0);
            let err = rel_err(&got, &full_pass(&m, &seq[..=n]));
            assert!(err < 1e-5, "{name}: position {n}: relative error {err}");
            let (sliding, full) = held(&cache);
            assert_eq!(full, n + 1, "{name}: the full layer holds every position");
            assert!(
                (WINDOW - 1..2 * WINDOW).contains(&sliding),
                "{name}: after position {n} the sliding layer holds {sliding} slots"
            );
            most = most.max(sliding);
        }
        println!("{name}: the sliding layer held at most {most} of 60 slots");
    }
}

#[test]
fn a_trimmed_cache_stacks_slices_and_continues_as_each_sequence_alone() {
    let _one = HEAVY.lock().unwrap_or_else(|e| e.into_inner());
    for name in ["gemma3", "gemma2"] {
        let m = model(name);
        // Sequence a: 20 positions decoded, its sliding layer trimmed. Sequence b: 3 prompt
        // tokens, nothing trimmed. Stacked, b is left-padded by 17 and holds every slot;
        // the sliding layer holds a's few, b's padded in front of them.
        let a: Vec<u32> = (0..40).map(|i| tok(2, i)).collect();
        let b: Vec<u32> = (0..40).map(|i| tok(3, i)).collect();
        let mut ca = m.new_exact_cache(1, 64);
        m.forward(&[a[..5].to_vec()], None, &mut ca, true).unwrap();
        for &t in &a[5..20] {
            step(&m, &mut ca, &[t]);
        }
        assert!(held(&ca).0 < 2 * WINDOW, "{name}: a was trimmed");
        // The prompt cache keeps a's 20 positions: the slice holds what the next token needs;
        // a prefix that ends before the sliding layer's slots cannot be sliced any more.
        let kept = ca.slice_row(0, 0, 20, 8).unwrap();
        let err = ca.slice_row(0, 0, 10, 8).err().unwrap().to_string();
        assert!(
            err.contains("layer 0 holds only positions"),
            "{name}: {err}"
        );
        let mut cb = m.new_exact_cache(1, 64);
        m.forward(&[b[..3].to_vec()], None, &mut cb, true).unwrap();
        let mut both = Cache::stack(vec![ca, cb]).unwrap();
        assert_eq!(both.len(), 20);
        let (mut na, mut nb) = (20, 3);
        for _ in 0..12 {
            let got = step(&m, &mut both, &[a[na], b[nb]]);
            let (ea, eb) = (
                rel_err(&got[0], &full_pass(&m, &a[..=na])),
                rel_err(&got[1], &full_pass(&m, &b[..=nb])),
            );
            assert!(ea < 1e-5 && eb < 1e-5, "{name}: stacked: {ea}, {eb}");
            (na, nb) = (na + 1, nb + 1);
        }
        // b taken out of the batch (its 17 slots of padding left behind) continues alone.
        let mut tb = both.take_row(1, 8).unwrap();
        assert_eq!(tb.len(), nb);
        for _ in 0..6 {
            let got = step(&m, &mut tb, &[b[nb]]).remove(0);
            let err = rel_err(&got, &full_pass(&m, &b[..=nb]));
            assert!(err < 1e-5, "{name}: b taken out, position {nb}: {err}");
            nb += 1;
        }
        // a's slice continues as a does, eagerly and in the fixed-shape decoder.
        let mut dec = galley_model::decode::Decoder::from_cache(&m, &kept, 40).unwrap();
        let mut kept = kept;
        for n in 20..26 {
            let want = full_pass(&m, &a[..=n]);
            let got = step(&m, &mut kept, &[a[n]]).remove(0);
            assert!(
                rel_err(&got, &want) < 1e-5,
                "{name}: the slice, position {n}"
            );
            let got = dec
                .step(&[a[n]])
                .unwrap()
                .to_vec2::<f32>()
                .unwrap()
                .remove(0);
            let err = rel_err(&got, &want);
            assert!(
                err < 1e-5,
                "{name}: the decoder from the slice, position {n}: {err}"
            );
        }
    }
}
