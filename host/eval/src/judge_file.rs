//! `galley judge` over a JSON-lines file: each row (`question` and `answer`, or `answer_a`
//! and `answer_b` when pairwise; `prompt`, `completion` and `response` accepted as the
//! common aliases) judged, written back with its verdict under `judge`, and summarised —
//! unparseable verdicts counted as failures, never as scores.

use crate::judge::{self, JudgeError, JudgeOptions, PairItem, PointItem, Winner};
use serde::Deserialize;
use serde_json::{Value, json};
use std::io::Write;
use std::path::Path;

#[derive(Deserialize)]
struct Row {
    #[serde(alias = "prompt")]
    question: String,
    #[serde(default, alias = "completion", alias = "response")]
    answer: Option<String>,
    #[serde(default)]
    reference: Option<String>,
    #[serde(default)]
    answer_a: Option<String>,
    #[serde(default)]
    answer_b: Option<String>,
}

/// Every row with its verdict, and the summary (`n`, failures, and the mean score with its
/// standard error, or A / B wins and ties).
pub struct Judged {
    pub rows: Vec<Value>,
    pub summary: Value,
    pub pairwise: bool,
}

fn bad(name: &str, i: usize, msg: impl std::fmt::Display) -> JudgeError {
    JudgeError::Input(format!("{name}: item {}: {msg}", i + 1))
}

/// A judge input file, read and checked (before any model loads).
pub struct JudgeInput {
    rows: Vec<Value>,
    items: Items,
}

enum Items {
    Point(Vec<PointItem>),
    Pair(Vec<PairItem>),
}

impl JudgeInput {
    /// Reads the rows of `path`; each must have what `pairwise` (or pointwise) judging needs.
    pub fn read(path: &Path, pairwise: bool) -> Result<Self, JudgeError> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path)
            .map_err(|e| JudgeError::Input(format!("{name}: cannot read: {e}")))?;
        let rows: Vec<Value> = galley_core::jsonl::parse(&text, &name, "judge input")
            .map_err(|e| JudgeError::Input(e.to_string()))?;
        let (mut points, mut pairs) = (Vec::new(), Vec::new());
        for (i, r) in rows.iter().enumerate() {
            let r: Row = serde_json::from_value(r.clone()).map_err(|e| bad(&name, i, e))?;
            let question = r.question;
            match (pairwise, r.answer, r.answer_a, r.answer_b) {
                (true, _, Some(answer_a), Some(answer_b)) => pairs.push(PairItem {
                    question,
                    answer_a,
                    answer_b,
                }),
                (true, ..) => {
                    return Err(bad(&name, i, "--pairwise needs `answer_a` and `answer_b`"));
                }
                (false, Some(answer), ..) => points.push(PointItem {
                    question,
                    answer,
                    reference: r.reference,
                }),
                (false, None, ..) => {
                    let msg = "needs `answer` (or --pairwise with answer_a/answer_b)";
                    return Err(bad(&name, i, msg));
                }
            }
        }
        let items = match pairwise {
            true => Items::Pair(pairs),
            false => Items::Point(points),
        };
        Ok(Self { rows, items })
    }

    /// Judges every row with `engine`.
    pub fn judge(
        self,
        engine: &mut dyn galley_core::Engine,
        opts: &JudgeOptions,
    ) -> Result<Judged, JudgeError> {
        let with = |rows: Vec<Value>, verdicts: Vec<Value>| -> Vec<Value> {
            rows.into_iter()
                .zip(verdicts)
                .map(|(mut r, v)| {
                    r["judge"] = v;
                    r
                })
                .collect()
        };
        let (summary, verdicts, pairwise) = match &self.items {
            Items::Pair(items) => {
                let verdicts = judge::pairwise(engine, items, opts)?;
                let count = |w: Winner| verdicts.iter().filter(|v| v.winner == Some(w)).count();
                let summary = json!({
                    "n": verdicts.len(),
                    "a_wins": count(Winner::A),
                    "b_wins": count(Winner::B),
                    "ties": count(Winner::Tie),
                    "failures": verdicts.iter().filter(|v| v.winner.is_none()).count(),
                });
                (summary, verdicts.iter().map(|v| json!(v)).collect(), true)
            }
            Items::Point(items) => {
                let verdicts = judge::pointwise(engine, items, opts)?;
                let scores: Vec<f64> = verdicts.iter().filter_map(|v| v.score).collect();
                let (mean, stderr) = crate::metrics::mean_stderr(&scores);
                let summary = json!({
                    "n": verdicts.len(),
                    "scored": scores.len(),
                    "failures": verdicts.len() - scores.len(),
                    "mean": (!scores.is_empty()).then_some(mean),
                    "stderr": stderr,
                });
                (summary, verdicts.iter().map(|v| json!(v)).collect(), false)
            }
        };
        Ok(Judged {
            rows: with(self.rows, verdicts),
            summary,
            pairwise,
        })
    }
}

impl Judged {
    /// Writes each input row with its verdict, as JSON lines.
    pub fn write(&self, out: &Path) -> std::io::Result<()> {
        let mut f = std::io::BufWriter::new(std::fs::File::create(out)?);
        for r in &self.rows {
            serde_json::to_writer(&mut f, r)?;
            f.write_all(b"\n")?;
        }
        f.flush()
    }

    /// The one-line summary.
    pub fn summary_line(&self) -> String {
        let s = &self.summary;
        if self.pairwise {
            return format!(
                "{} pairs: A wins {}, B wins {}, ties {}, unparseable {}",
                s["n"], s["a_wins"], s["b_wins"], s["ties"], s["failures"]
            );
        }
        let mean = s["mean"]
            .as_f64()
            .map(|m| format!("{m:.3}"))
            .unwrap_or_else(|| "none".into());
        format!(
            "{} answers: mean score {mean} over {} parsed verdicts; {} unparseable (not scored)",
            s["n"], s["scored"], s["failures"]
        )
    }
}
