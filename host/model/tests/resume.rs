//! Generation that resumes from what finished sequences have seen (`generate_resuming`, a
//! rollout's next turn after its tool results): it must decode exactly what prefilling the
//! whole sequence again decodes, for a batch mixing resumed rows, rows with nothing kept,
//! stale caches and a group of identical prompts, on tiny random models of three families (Gemma 3's with a sliding window).

use galley_model::{Finish, Kept, SamplingParams, generate_resuming, generate_sharing, load};
use std::path::PathBuf;

mod common;
use common::{HEAVY, rel_err};

fn tiny(name: &str) -> galley_model::LoadedModel {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny");
    load(&dir.join(name), &galley_model::default_device()).unwrap()
}

fn check(name: &str) {
    let m = tiny(name);
    let enc = |s: &str| m.tokenizer.encode(s, false).unwrap();
    let params = SamplingParams {
        temperature: 0.0,
        max_tokens: 6,
        ..SamplingParams::default()
    };
    // Turn one: four prompts, two of them the same (a GRPO group), every row kept.
    let first: Vec<Vec<u32>> = [
        "Q: cat? A:",
        "Q: the dog ran to the? A:",
        "Q: cat? A:",
        "Q: mat? A:",
    ]
    .iter()
    .map(|q| enc(q))
    .collect();
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
    for (i, (c, k)) in done.iter().zip(&kept).enumerate() {
        let k = k.as_ref().unwrap_or_else(|| panic!("row {i} kept nothing"));
        let mut seen = first[i].clone();
        seen.extend(&c.tokens[..c.tokens.len() - 1]);
        assert_eq!(
            k.ids(),
            seen.as_slice(),
            "row {i}: the prompt and all but the last token"
        );
        assert!(k.bytes() > 0);
    }
    // Turn two: each row's whole sequence and a "tool result" of its own length.
    let results = [
        " Tool: 4. A:",
        " Tool: none at all here. A:",
        " Tool: 5. A:",
        " T:",
    ];
    let second: Vec<Vec<u32>> = (0..4)
        .map(|i| [first[i].clone(), done[i].tokens.clone(), enc(results[i])].concat())
        .collect();
    // Row 1 resumes from nothing, row 3 from a cache it does not continue (another row's):
    // both are prefilled whole.
    let mut from: Vec<Option<Kept>> = kept.clone();
    from[1] = None;
    from[3] = kept[0].clone();
    let (resumed, again) = generate_resuming(
        &m.model,
        &m.tokenizer,
        &second,
        from,
        &params,
        &|i, _, _| i == 2,
        &mut |_, _| {},
    )
    .unwrap();
    let whole = generate_sharing(
        &m.model,
        &m.tokenizer,
        &second,
        &params,
        usize::MAX,
        &mut |_, _| {},
    )
    .unwrap();
    for i in 0..4 {
        assert_eq!(resumed[i].tokens, whole[i].tokens, "{name}: row {i}");
        assert_eq!(resumed[i].text, whole[i].text, "{name}: row {i}");
        assert_eq!(resumed[i].prompt_tokens, second[i].len());
        // Rows 1 and 3 were prefilled whole; rows 0 and 2 (the group) from their caches.
        let cached = if i % 2 == 0 {
            kept[i].as_ref().unwrap().ids().len()
        } else {
            0
        };
        assert_eq!(resumed[i].cached_tokens, cached, "{name}: row {i}");
        assert_eq!(whole[i].cached_tokens, 0);
        assert!(
            rel_err(&resumed[i].logprobs, &whole[i].logprobs) < 1e-4,
            "{name}: row {i}: {:?} vs {:?}",
            resumed[i].logprobs,
            whole[i].logprobs
        );
    }
    // Only the row `keep_if` picked kept its cache.
    assert!(again[2].is_some() && again.iter().filter(|k| k.is_some()).count() == 1);
    // A third turn resumes from the second's cache.
    let third = vec![[second[2].clone(), resumed[2].tokens.clone(), enc(" Ok.")].concat()];
    let (on, _) = generate_resuming(
        &m.model,
        &m.tokenizer,
        &third,
        vec![again[2].clone()],
        &params,
        &|_, _, _| false,
        &mut |_, _| {},
    )
    .unwrap();
    let whole = generate_sharing(
        &m.model,
        &m.tokenizer,
        &third,
        &params,
        usize::MAX,
        &mut |_, _| {},
    )
    .unwrap();
    assert_eq!(on[0].tokens, whole[0].tokens, "{name}: third turn");
    assert!(rel_err(&on[0].logprobs, &whole[0].logprobs) < 1e-4);
}

#[test]
fn resumed_turns_decode_as_the_whole_sequence_prefilled_again() {
    let _one = HEAVY.lock().unwrap_or_else(|e| e.into_inner());
    check("llama-gqa-tied");
    check("qwen3-qk-norm");
    // A sliding window (4 tokens) that counts tokens, not the padding a batch puts between
    // a resumed prefix and its new tokens.
    check("gemma3");
    // And soft-capped scores and logits (Gemma 2).
    check("gemma2");
    // A layer without RoPE (SmolLM3).
    check("smollm3");
}

#[test]
fn kept_caches_must_match_the_prompts() {
    let _one = HEAVY.lock().unwrap_or_else(|e| e.into_inner());
    let m = tiny("llama-gqa-tied");
    let p = vec![m.tokenizer.encode("Q: cat? A:", false).unwrap()];
    let err = generate_resuming(
        &m.model,
        &m.tokenizer,
        &p,
        vec![None, None],
        &SamplingParams::greedy(2),
        &|_, _, _| true,
        &mut |_, _| {},
    )
    .err()
    .expect("two caches for one prompt");
    assert!(
        err.to_string().contains("2 kept caches for 1 prompts"),
        "{err}"
    );
}
