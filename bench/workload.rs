//! The benchmarks' shared workload: GSM8K-shaped completions for the math-answer reward.

use galley_core::{Message, RewardFn, RewardGroup, RewardInput, Value};
use std::time::{Duration, Instant};

/// `prompts` GSM8K-shaped problems with `per` completions each (~330 characters of chain of
/// thought), in every answer format the reward understands, half of them right. With
/// `per` = 8 this is a GRPO batch; with `per` = 1 every completion has its own prompt.
pub fn workload(prompts: usize, per: usize) -> Vec<RewardInput> {
    let endings = [
        "#### {}",
        "So the answer is {}.",
        "The final answer is \\boxed{{}}.",
        "Therefore we get {} in total.",
    ];
    let mut out = Vec::new();
    for p in 0..prompts {
        let a = 12 + p as i64 * 7;
        let b = 3 + (p as i64 % 11);
        let truth = a * b;
        let prompt = vec![Message::new(
            "user",
            format!("{a} boxes of {b} items: how many items?"),
        )];
        let mut metadata = galley_core::Metadata::new();
        metadata.insert("answer".into(), Value::Text(truth.to_string()));
        metadata.insert("source".into(), Value::Text("bench".into()));
        for k in 0..per {
            let i = p * per + k;
            let said = if i.is_multiple_of(2) {
                truth
            } else {
                truth + 1
            };
            let steps = format!(
                "First, {name} buys {a} boxes. Each box holds {b} items, so we multiply {a} by {b}. \
                 {a} * {b} = {truth}. Let me double-check: {b} * {a} = {truth}, and adding the 0 \
                 spare items changes nothing. Counting again in groups of ten gives the same total of \
                 {said_fmt} items, which matches the earlier result once commas are ignored.\n",
                name = ["Ada", "Ben", "Chloe"][i % 3],
                said_fmt = group(said)
            );
            let ending = endings[i % endings.len()].replace("{}", &group(said));
            out.push(RewardInput {
                prompt: prompt.clone(),
                completion: steps + &ending,
                metadata: metadata.clone(),
                ..Default::default()
            });
        }
    }
    out
}

pub fn group(n: i64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Items scored per second over at least `min` of wall time, in calls of `batch` items.
pub fn throughput(r: &mut dyn RewardFn, items: &[RewardInput], batch: usize, min: Duration) -> f64 {
    // Grouped once, outside the timing: the trainer hands groups over as they are.
    let calls: Vec<(Vec<RewardGroup<'_>>, usize)> = items
        .chunks(batch)
        .map(|c| (RewardInput::groups(c), c.len()))
        .collect();
    let mut scored = 0usize;
    let start = Instant::now();
    while start.elapsed() < min {
        for (groups, n) in &calls {
            let s = r.score(groups).expect("score");
            assert_eq!(s.len(), *n);
            scored += n;
        }
    }
    scored as f64 / start.elapsed().as_secs_f64()
}
