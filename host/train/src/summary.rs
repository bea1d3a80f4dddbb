//! The few lines a finished training run ends with: steps and examples, the loss (or, for
//! GRPO, the reward) at the start and the end, throughput, and where its outputs are.

use crate::Outcome;
use std::fmt::Write;
use std::path::Path;

impl Outcome {
    /// The closing summary of `galley train`; `grpo` puts the reward first (the surrogate
    /// loss of an on-policy step is ~0 by construction: the reward is the news).
    pub fn summary_text(&self, grpo: bool) -> String {
        let (s, mut t) = (&self.summary, String::new());
        let f = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.4}"));
        let _ = writeln!(
            t,
            "trained {} steps ({} examples, {} held out; {} skipped) on {} trainable parameters",
            s.steps,
            self.train_examples,
            self.val_examples,
            self.skipped.total(),
            self.trainable_params
        );
        if let Some(r) = s.resumed_from {
            let _ = writeln!(t, "resumed from step {r}");
        }
        let speed = s.tokens_per_s;
        if grpo {
            let rewards = reward_summary(&self.out_dir.join("metrics.jsonl"));
            let _ = writeln!(t, "{rewards}   {speed:.0} tokens/s");
        } else {
            let (a, b) = (f(s.first_loss), f(s.last_loss));
            let (c, d) = (f(s.first_eval_loss), f(s.last_eval_loss));
            let _ = writeln!(
                t,
                "loss {a} -> {b}   validation {c} -> {d}   {speed:.0} tokens/s"
            );
        }
        let _ = writeln!(t, "run folder  {}", self.out_dir.display());
        if let Some(a) = &self.adapter {
            let _ = writeln!(t, "adapter     {}", a.display());
        }
        if let Some(m) = &self.model {
            let m = m.display();
            let _ = writeln!(t, "model       {m}  (galley infer -m {m})");
        }
        let _ = writeln!(t, "plot        {}", self.plot.display());
        if grpo {
            let png = self.out_dir.join("reward.png");
            let all = self.out_dir.join("completions.jsonl");
            let (png, all) = (png.display(), all.display());
            let _ = writeln!(t, "rewards     {png}  (every completion: {all})");
        }
        t
    }
}

/// GRPO's headline: the mean reward of the first and last ten steps (single steps are noisy)
/// and the held-out reward at the first and last evaluation.
fn reward_summary(metrics: &Path) -> String {
    let text = std::fs::read_to_string(metrics).unwrap_or_default();
    let rows: Vec<serde_json::Value> = text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let series = |k: &str| -> Vec<f64> { rows.iter().filter_map(|r| r.get(k)?.as_f64()).collect() };
    let mean = |xs: &[f64]| xs.iter().sum::<f64>() / xs.len().max(1) as f64;
    let r = series("reward");
    let w = r.len().min(10);
    let mut s = format!(
        "reward {:.3} (first {w} steps) -> {:.3} (last {w})",
        mean(&r[..w]),
        mean(&r[r.len() - w..])
    );
    let e = series("eval_reward");
    if let (Some(a), Some(b)) = (e.first(), e.last()) {
        s.push_str(&format!("   held-out reward {a:.3} -> {b:.3}"));
    }
    s
}
