//! Built-in grading, as lm-evaluation-harness computes it: `acc` and `acc_norm` (the
//! arg-max of log-likelihoods, raw and divided by the choice's length in characters),
//! `exact_match` with its options, the perplexities of `loglikelihood_rolling`; the response
//! filters (`regex` with `group_select` and `fallback`, `take_first`...); and the mean with its
//! standard error, pooled across tasks for a group.

use crate::task::{FilterStep, MetricSpec};
use regex::Regex;

pub const BUILT_IN: [&str; 7] = [
    "acc",
    "judge",
    "acc_norm",
    "exact_match",
    "word_perplexity",
    "byte_perplexity",
    "bits_per_byte",
];

/// Index of the largest value, the first on ties (numpy's `argmax`).
pub fn argmax(xs: &[f64]) -> usize {
    let mut best = 0;
    for (i, &x) in xs.iter().enumerate() {
        if x > xs[best] {
            best = i;
        }
    }
    best
}

/// `acc` and `acc_norm` of one multiple-choice question.
pub fn multiple_choice(lls: &[f64], choices: &[String], gold: usize) -> (f64, f64) {
    let acc = f64::from(u8::from(argmax(lls) == gold));
    // Python's len(): characters, not bytes.
    let norm: Vec<f64> = lls
        .iter()
        .zip(choices)
        .map(|(ll, c)| ll / c.chars().count() as f64)
        .collect();
    (acc, f64::from(u8::from(argmax(&norm) == gold)))
}

/// `exact_match`'s normalisation, compiled once per metric.
pub struct ExactMatch {
    ignore: Vec<Regex>,
    ignore_case: bool,
    ignore_punctuation: bool,
    ignore_numbers: bool,
}

impl ExactMatch {
    pub fn new(spec: &MetricSpec) -> Result<Self, String> {
        let ignore = spec
            .regexes_to_ignore
            .iter()
            .map(|r| Regex::new(r).map_err(|e| format!("regexes_to_ignore `{r}`: {e}")))
            .collect::<Result<_, _>>()?;
        Ok(Self {
            ignore,
            ignore_case: spec.ignore_case,
            ignore_punctuation: spec.ignore_punctuation,
            ignore_numbers: spec.ignore_numbers,
        })
    }

    fn normalize(&self, s: &str) -> String {
        let mut s = s.to_string();
        for r in &self.ignore {
            s = r.replace_all(&s, "").into_owned();
        }
        if self.ignore_case {
            s = s.to_lowercase();
        }
        if self.ignore_punctuation {
            // Python's string.punctuation: ASCII only.
            s.retain(|c| !c.is_ascii_punctuation());
        }
        if self.ignore_numbers {
            s.retain(|c| !c.is_ascii_digit());
        }
        s
    }

    pub fn score(&self, prediction: &str, reference: &str) -> f64 {
        f64::from(u8::from(
            self.normalize(prediction) == self.normalize(reference),
        ))
    }
}

/// One filter pipeline over a response.
pub struct Filter {
    pub name: String,
    steps: Vec<Step>,
}

enum Step {
    Regex {
        re: Regex,
        group_select: i64,
        fallback: String,
    },
    TakeFirst,
    Lower,
    Upper,
    RemoveWhitespace,
}

impl Filter {
    /// The harness's default when a task has no `filter_list`: the response as it is.
    pub fn none() -> Self {
        Self {
            name: "none".into(),
            steps: vec![Step::TakeFirst],
        }
    }

    pub fn new(name: &str, steps: &[FilterStep]) -> Result<Self, String> {
        let steps = steps
            .iter()
            .map(|s| {
                Ok(match s.function.as_str() {
                    "regex" => {
                        let p = s
                            .regex_pattern
                            .as_deref()
                            .unwrap_or(r"#### (\-?[0-9\.\,]+)");
                        Step::Regex {
                            re: Regex::new(p).map_err(|e| format!("regex `{p}`: {e}"))?,
                            group_select: s.group_select.unwrap_or(0),
                            fallback: s.fallback.clone().unwrap_or_else(|| "[invalid]".into()),
                        }
                    }
                    "take_first" => Step::TakeFirst,
                    "lowercase" => Step::Lower,
                    "uppercase" => Step::Upper,
                    "remove_whitespace" => Step::RemoveWhitespace,
                    other => return Err(format!("unknown filter `{other}`")),
                })
            })
            .collect::<Result<_, String>>()?;
        Ok(Self {
            name: name.into(),
            steps,
        })
    }

    pub fn apply(&self, response: &str) -> String {
        let mut s = response.to_string();
        for step in &self.steps {
            s = match step {
                Step::Regex {
                    re,
                    group_select,
                    fallback,
                } => regex_select(re, &s, *group_select).unwrap_or_else(|| fallback.clone()),
                Step::TakeFirst => s,
                Step::Lower => s.to_lowercase(),
                Step::Upper => s.to_uppercase(),
                Step::RemoveWhitespace => s.trim_start().to_string(),
            };
        }
        s
    }
}

/// Python's `re.findall(s)[group_select]`: each match is the whole match (no groups), its one
/// group, or — several groups — the first non-empty one; then `.strip()`.
fn regex_select(re: &Regex, s: &str, group_select: i64) -> Option<String> {
    let groups = re.captures_len() - 1;
    let found: Vec<String> = re
        .captures_iter(s)
        .map(|c| match groups {
            0 => c.get(0).map_or("", |m| m.as_str()).to_string(),
            1 => c.get(1).map_or("", |m| m.as_str()).to_string(),
            _ => (1..=groups)
                .filter_map(|g| c.get(g).map(|m| m.as_str()))
                .find(|m| !m.is_empty())
                .unwrap_or("")
                .to_string(),
        })
        .collect();
    if found.is_empty() {
        return None;
    }
    let i = if group_select < 0 {
        found
            .len()
            .checked_sub(group_select.unsigned_abs() as usize)?
    } else {
        group_select as usize
    };
    let m = found.get(i)?;
    if groups > 1 && m.is_empty() {
        return None;
    }
    Some(m.trim().to_string())
}

/// Mean and the standard error of the mean (sample standard deviation / sqrt(n)), as the
/// harness reports them; no error for fewer than two values.
pub fn mean_stderr(xs: &[f64]) -> (f64, Option<f64>) {
    let n = xs.len();
    if n == 0 {
        return (f64::NAN, None);
    }
    let mean = xs.iter().sum::<f64>() / n as f64;
    if n < 2 {
        return (mean, None);
    }
    let var = xs.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / (n - 1) as f64;
    (mean, Some((var / n as f64).sqrt()))
}

/// A group's standard error from its members' (the harness's `pooled_sample_stderr`).
pub fn pooled_stderr(stderrs: &[f64], sizes: &[usize]) -> Option<f64> {
    let total: usize = sizes.iter().sum();
    if stderrs.len() != sizes.len() || total <= sizes.len() {
        return None;
    }
    let var: f64 = stderrs
        .iter()
        .zip(sizes)
        .map(|(s, &n)| (n as f64 - 1.0) * s * s * n as f64)
        .sum::<f64>()
        / (total - sizes.len()) as f64;
    Some((var / total as f64).sqrt())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acc_norm_divides_by_characters() {
        let choices = vec!["ab".to_string(), "abcdef".to_string()];
        // Raw: the first wins; per character: the second (-3/6 > -2/2).
        assert_eq!(multiple_choice(&[-2.0, -3.0], &choices, 1), (0.0, 1.0));
        // Ties go to the first, as numpy's argmax.
        assert_eq!(argmax(&[1.0, 1.0]), 0);
    }

    #[test]
    fn gsm8k_filters_and_match() {
        let strict = Filter::new(
            "strict-match",
            &[FilterStep {
                function: "regex".into(),
                regex_pattern: Some(r"#### (\-?[0-9\.\,]+)".into()),
                group_select: None,
                fallback: None,
            }],
        )
        .unwrap();
        let flexible = Filter::new(
            "flexible-extract",
            &[FilterStep {
                function: "regex".into(),
                regex_pattern: Some(r"(-?[$0-9.,]{2,})|(-?[0-9]+)".into()),
                group_select: Some(-1),
                fallback: None,
            }],
        )
        .unwrap();
        let resp = "She has 16 - 3 = 13 eggs, sells them for $26.\n#### 26";
        assert_eq!(strict.apply(resp), "26");
        assert_eq!(flexible.apply(resp), "26");
        assert_eq!(strict.apply("no answer"), "[invalid]");
        assert_eq!(flexible.apply("the answer is 7 or $1,000."), "$1,000.");
        let spec = MetricSpec {
            metric: Some("exact_match".into()),
            plugin: None,
            settings: None,
            on_error: None,
            aggregation: None,
            higher_is_better: None,
            ignore_case: true,
            ignore_punctuation: false,
            ignore_numbers: false,
            regexes_to_ignore: vec![
                ",".into(),
                "\\$".into(),
                "(?s).*#### ".into(),
                "\\.$".into(),
            ],
        };
        let em = ExactMatch::new(&spec).unwrap();
        assert_eq!(em.score("$1,000.", "Work...\n#### 1000"), 1.0);
        assert_eq!(em.score("999", "#### 1000"), 0.0);
    }

    #[test]
    fn stderr_of_the_mean_and_pooled() {
        let (m, se) = mean_stderr(&[1.0, 0.0, 1.0, 0.0]);
        assert_eq!(m, 0.5);
        assert!((se.unwrap() - (1.0f64 / 3.0 / 4.0).sqrt()).abs() < 1e-12);
        // Pooling two equal halves gives the same as the whole (close to it: the harness's formula).
        let whole = mean_stderr(&[1.0, 0.0, 1.0, 0.0, 1.0, 0.0, 1.0, 0.0])
            .1
            .unwrap();
        let half = mean_stderr(&[1.0, 0.0, 1.0, 0.0]).1.unwrap();
        let pooled = pooled_stderr(&[half, half], &[4, 4]).unwrap();
        assert!((pooled - whole).abs() < 0.02, "{pooled} vs {whole}");
    }
}
