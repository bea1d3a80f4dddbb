//! Prompt-lookup decoding (`SamplingParams::lookup`) changes how many passes generation
//! takes, never what it generates: the same tokens, text, stream, finish and (within float
//! noise) log-probabilities as decoding one token a step, greedy and sampled with the same
//! seed, under a stop string and a budget, for prompts alone and as a batch (whose last
//! sequence drafts once the others are done), on tiny random models of three families
//! (Gemma's sliding layers trimmed while drafts come and go); and the caches rows keep resume
//! a next turn as plain decoding's do.

use galley_model::{
    Completion, Finish, SamplingParams, generate, generate_resuming, generate_sharing, load,
};
use std::path::PathBuf;

mod common;
use common::{HEAVY, rel_err};

fn tiny(name: &str) -> galley_model::LoadedModel {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny");
    load(&dir.join(name), &galley_model::default_device()).unwrap()
}

fn same(what: &str, plain: &[Completion], got: &[Completion]) {
    for (r, (a, b)) in plain.iter().zip(got).enumerate() {
        assert_eq!(a.tokens, b.tokens, "{what}: row {r}: tokens");
        assert_eq!(a.text, b.text, "{what}: row {r}: text");
        assert_eq!(a.finish, b.finish, "{what}: row {r}: finish");
        let err = rel_err(&b.logprobs, &a.logprobs);
        assert!(err < 1e-4, "{what}: row {r}: log-probabilities {err}");
    }
}

#[test]
fn lookup_decoding_generates_what_plain_decoding_does() {
    let _one = HEAVY.lock().unwrap_or_else(|e| e.into_inner());
    for name in ["llama-gqa-tied", "gemma3", "gemma2"] {
        let m = tiny(name);
        let enc = |s: &str| m.tokenizer.encode(s, false).unwrap();
        // Prompts that repeat themselves (and random models that loop), so drafts are found;
        // of different lengths, so rows draft different lengths in one pass. The tiny models
        // take 64 positions.
        let prompts: Vec<Vec<u32>> = [
            "the cat. the cat. the",
            "1 2 3 1 2 3 1",
            "Q: dog? A: dog. Q:",
        ]
        .iter()
        .map(|p| enc(p))
        .collect();
        assert!(
            prompts.iter().all(|p| p.len() + 24 <= 64),
            "{name}: prompts too long"
        );
        let (mut drafted, mut accepted) = (0, 0);
        for (temperature, seed, stop) in [
            (0.0, 0, None),
            (0.9, 7, None),
            (0.3, 5, None),
            (0.5, 3, Some("at")),
            (0.15, 9, None),
            (0.2, 2, None),
        ] {
            let base = SamplingParams {
                temperature,
                seed,
                top_k: 0,
                top_p: 1.0,
                min_p: 0.0,
                max_tokens: 24,
                stop: stop.map(String::from).into_iter().collect(),
                ..SamplingParams::default()
            };
            // Each prompt alone, then the three as one batch.
            let mut batches: Vec<Vec<Vec<u32>>> = prompts.iter().map(|p| vec![p.clone()]).collect();
            batches.push(prompts.clone());
            for (bi, batch) in batches.iter().enumerate() {
                let plain = generate(&m.model, &m.tokenizer, batch, &base, &mut |_, _| {}).unwrap();
                for lookup in [1, 3, 8] {
                    let p = SamplingParams {
                        lookup,
                        ..base.clone()
                    };
                    let mut streamed = vec![String::new(); batch.len()];
                    let got = generate(&m.model, &m.tokenizer, batch, &p, &mut |i, t| {
                        streamed[i].push_str(t)
                    })
                    .unwrap();
                    let what = format!(
                        "{name}: batch {bi}, temperature {temperature}, stop {stop:?}, lookup {lookup}"
                    );
                    same(&what, &plain, &got);
                    for (r, c) in got.iter().enumerate() {
                        assert_eq!(streamed[r], c.text, "{what}: row {r}: streamed text");
                        assert!(c.accepted <= c.drafted);
                        drafted += c.drafted;
                        accepted += c.accepted;
                    }
                }
            }
        }
        // Both ways a draft goes were taken: kept in part, and cut short.
        println!("{name}: {accepted} of {drafted} drafted tokens kept");
        assert!(
            accepted > 0 && drafted > accepted,
            "{name}: {accepted} of {drafted}"
        );
    }
}

#[test]
fn caches_kept_under_lookup_decoding_resume_the_next_turn() {
    let _one = HEAVY.lock().unwrap_or_else(|e| e.into_inner());
    for name in ["llama-gqa-tied", "gemma3"] {
        let m = tiny(name);
        let enc = |s: &str| m.tokenizer.encode(s, false).unwrap();
        let params = SamplingParams {
            temperature: 0.0,
            max_tokens: 12,
            lookup: 4,
            ..SamplingParams::default()
        };
        for prompt in ["a b a b a b", "the mat. the mat. the"] {
            // One sequence a turn: drafts run while a sequence decodes alone.
            let first = vec![enc(prompt)];
            let keep_all = |_: usize, _: &str, _: Finish| true;
            let (done, kept) = generate_resuming(
                &m.model,
                &m.tokenizer,
                &first,
                vec![],
                &params,
                &keep_all,
                &mut |_, _| {},
            )
            .unwrap();
            let c = &done[0];
            assert!(
                c.accepted > 0,
                "{name}: {prompt:?}: nothing drafted and kept"
            );
            let mut seen = first[0].clone();
            seen.extend(&c.tokens[..c.tokens.len() - 1]);
            let k = kept[0].as_ref().expect("kept");
            assert_eq!(k.ids(), seen.as_slice(), "{name}: {prompt:?}: kept ids");
            let second = vec![[first[0].clone(), c.tokens.clone(), enc(" b a b")].concat()];
            let (resumed, _) = generate_resuming(
                &m.model,
                &m.tokenizer,
                &second,
                kept,
                &params,
                &|_, _, _| false,
                &mut |_, _| {},
            )
            .unwrap();
            let plain = SamplingParams {
                lookup: 0,
                ..params.clone()
            };
            let whole = generate_sharing(
                &m.model,
                &m.tokenizer,
                &second,
                &plain,
                usize::MAX,
                &mut |_, _| {},
            )
            .unwrap();
            same(&format!("{name}: {prompt:?}: resumed"), &whole, &resumed);
            assert!(resumed[0].cached_tokens > 0 && resumed[0].accepted > 0);
        }
    }
}
