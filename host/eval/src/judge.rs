//! LLM-as-judge, with any engine as the judge. Pointwise: a rubric prompt, a score on a scale
//! (or pass/fail) and the judge's explanation. Pairwise: two answers compared in both orders,
//! so a judge that prefers whatever comes first cancels out (disagreeing orders are a tie).
//! Prompts are minijinja templates a user can replace (`judges/*.jinja` are the defaults).
//! A verdict is read from the judge's last `Score:` / `Verdict:` / `Winner:` line; an answer
//! without one, or with a score off the scale, is a failure — counted, never turned into a
//! score.

use galley_core::Message;
use galley_core::engine::{ChatRequest, Engine, EngineError, GenerateRequest};
use minijinja::{Environment, context};
use serde::Serialize;

pub const POINTWISE: &str = include_str!("../judges/pointwise.jinja");
pub const PAIRWISE: &str = include_str!("../judges/pairwise.jinja");

/// How a pointwise judge scores.
#[derive(Debug, Clone, PartialEq)]
pub enum Scale {
    /// Whole numbers from `min` to `max`.
    Range { min: i64, max: i64 },
    /// PASS (1) or FAIL (0).
    PassFail,
}

impl Scale {
    /// `MIN-MAX` (`1-10`) or `pass-fail`.
    pub fn parse(s: &str) -> Result<Scale, String> {
        if s.eq_ignore_ascii_case("pass-fail") {
            return Ok(Scale::PassFail);
        }
        let (a, b) = s
            .split_once('-')
            .ok_or_else(|| format!("`{s}`: give MIN-MAX (e.g. 1-10) or pass-fail"))?;
        let num = |x: &str, what: &str| {
            x.trim()
                .parse::<i64>()
                .map_err(|_| format!("`{s}`: {what} `{x}` is not a whole number"))
        };
        let (min, max) = (num(a, "MIN")?, num(b, "MAX")?);
        if min >= max {
            return Err(format!("`{s}`: {min} must be below {max}"));
        }
        Ok(Scale::Range { min, max })
    }
}

#[derive(Debug, Clone)]
pub struct JudgeOptions {
    /// The prompt template (a pointwise or pairwise default when none).
    pub template: Option<String>,
    pub scale: Scale,
    /// Tokens the judge may write.
    pub max_tokens: usize,
    /// Render the prompt as a user turn of the judge model's chat template.
    pub chat: bool,
}

impl Default for JudgeOptions {
    fn default() -> Self {
        Self {
            template: None,
            scale: Scale::Range { min: 1, max: 10 },
            max_tokens: 256,
            chat: true,
        }
    }
}

/// One answer to grade.
#[derive(Debug, Clone)]
pub struct PointItem {
    pub question: String,
    pub answer: String,
    pub reference: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PointVerdict {
    /// The score on the scale (PASS = 1, FAIL = 0); `None` when the judge's answer did not parse.
    pub score: Option<f64>,
    pub explanation: String,
    /// Why the answer did not parse.
    pub failure: Option<String>,
    pub raw: String,
}

/// Two answers to compare.
#[derive(Debug, Clone)]
pub struct PairItem {
    pub question: String,
    pub answer_a: String,
    pub answer_b: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Winner {
    A,
    B,
    Tie,
}

#[derive(Debug, Clone, Serialize)]
pub struct PairVerdict {
    /// `None` when either order's answer did not parse.
    pub winner: Option<Winner>,
    /// The verdicts as the judge gave them: A-then-B order, then B-then-A (in its own labels).
    pub orders: [Option<Winner>; 2],
    pub failure: Option<String>,
    pub raw: [String; 2],
}

#[derive(Debug, thiserror::Error)]
pub enum JudgeError {
    #[error("judge prompt template: {0}")]
    Template(String),
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// A judge input file or row is wrong (names the file and item).
    #[error("{0}")]
    Input(String),
}

fn template_err(e: minijinja::Error) -> JudgeError {
    JudgeError::Template(e.to_string().replace('\n', " "))
}

fn env(template: &str) -> Result<Environment<'static>, JudgeError> {
    let mut env = Environment::new();
    env.set_syntax(
        minijinja::syntax::SyntaxConfig::builder()
            .keep_trailing_newline(true)
            .build()
            .expect("default delimiters"),
    );
    env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
    env.add_template_owned("judge", template.to_string())
        .map_err(template_err)?;
    Ok(env)
}

fn ask(
    engine: &mut dyn Engine,
    prompts: Vec<String>,
    o: &JudgeOptions,
) -> Result<Vec<String>, JudgeError> {
    if o.chat {
        // Through the engine's chat: a local model's template, or a remote chat API.
        let requests: Vec<ChatRequest> = prompts
            .into_iter()
            .map(|p| ChatRequest {
                messages: vec![Message::new("user", p)],
                until: vec![],
                max_tokens: o.max_tokens,
                temperature: 0.0,
                seed: 0,
                json_schema: None,
                tools: None,
            })
            .collect();
        return Ok(engine
            .chat(&requests, &mut |_| {})?
            .into_iter()
            .map(|g| g.text)
            .collect());
    }
    let requests: Vec<GenerateRequest> = prompts
        .into_iter()
        .map(|prompt| GenerateRequest {
            prompt,
            until: vec![],
            max_tokens: o.max_tokens,
            temperature: 0.0,
            seed: 0,
            json_schema: None,
        })
        .collect();
    Ok(engine
        .generate(&requests, &mut |_| {})?
        .into_iter()
        .map(|g| g.text)
        .collect())
}

/// The value after the last `label:` in `text` (case-insensitive), trimmed of `*`, `[`, `]`.
fn last_field<'t>(text: &'t str, label: &str) -> Option<&'t str> {
    let lower = text.to_ascii_lowercase();
    let at = lower.rfind(&format!("{}:", label.to_ascii_lowercase()))?;
    let rest = &text[at + label.len() + 1..];
    let line = rest.lines().next().unwrap_or("");
    Some(
        line.trim().trim_matches(|c: char| {
            c == '*' || c == '[' || c == ']' || c == '.' || c.is_whitespace()
        }),
    )
}

/// Reads a pointwise verdict.
pub fn parse_point(text: &str, scale: &Scale) -> Result<f64, String> {
    match scale {
        Scale::PassFail => match last_field(text, "verdict")
            .map(str::to_ascii_uppercase)
            .as_deref()
        {
            Some("PASS") => Ok(1.0),
            Some("FAIL") => Ok(0.0),
            Some(other) => Err(format!("verdict `{other}` is neither PASS nor FAIL")),
            None => Err("no `Verdict:` line".into()),
        },
        Scale::Range { min, max } => {
            let v = last_field(text, "score").ok_or("no `Score:` line")?;
            // "7", "7/10": the number before any slash.
            let n = v.split('/').next().unwrap_or("").trim();
            let n: i64 = n
                .parse()
                .map_err(|_| format!("score `{v}` is not a whole number"))?;
            if n < *min || n > *max {
                return Err(format!("score {n} is off the scale {min}..{max}"));
            }
            Ok(n as f64)
        }
    }
}

/// Reads a pairwise verdict.
pub fn parse_pair(text: &str) -> Result<Winner, String> {
    match last_field(text, "winner")
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        Some("a") => Ok(Winner::A),
        Some("b") => Ok(Winner::B),
        Some("tie") => Ok(Winner::Tie),
        Some(other) => Err(format!("winner `{other}` is not A, B or tie")),
        None => Err("no `Winner:` line".into()),
    }
}

/// Grades each item.
pub fn pointwise(
    engine: &mut dyn Engine,
    items: &[PointItem],
    o: &JudgeOptions,
) -> Result<Vec<PointVerdict>, JudgeError> {
    let env = env(o.template.as_deref().unwrap_or(POINTWISE))?;
    let t = env.get_template("judge").expect("added");
    let (min, max, pass_fail) = match o.scale {
        Scale::Range { min, max } => (min, max, false),
        Scale::PassFail => (0, 1, true),
    };
    let prompts = items
        .iter()
        .map(|i| {
            t.render(context! {
                question => &i.question, answer => &i.answer, reference => &i.reference,
                min => min, max => max, pass_fail => pass_fail,
            })
            .map_err(template_err)
        })
        .collect::<Result<Vec<_>, _>>()?;
    let answers = ask(engine, prompts, o)?;
    Ok(answers
        .into_iter()
        .map(|raw| {
            let label = if pass_fail { "verdict:" } else { "score:" };
            let explanation = match raw.to_ascii_lowercase().rfind(label) {
                Some(at) => raw[..at].trim().to_string(),
                None => raw.trim().to_string(),
            };
            match parse_point(&raw, &o.scale) {
                Ok(s) => PointVerdict {
                    score: Some(s),
                    explanation,
                    failure: None,
                    raw,
                },
                Err(e) => PointVerdict {
                    score: None,
                    explanation,
                    failure: Some(e),
                    raw,
                },
            }
        })
        .collect())
}

/// Compares each pair in both orders.
pub fn pairwise(
    engine: &mut dyn Engine,
    items: &[PairItem],
    o: &JudgeOptions,
) -> Result<Vec<PairVerdict>, JudgeError> {
    let env = env(o.template.as_deref().unwrap_or(PAIRWISE))?;
    let t = env.get_template("judge").expect("added");
    let mut prompts = Vec::with_capacity(items.len() * 2);
    for i in items {
        for (a, b) in [(&i.answer_a, &i.answer_b), (&i.answer_b, &i.answer_a)] {
            prompts.push(
                t.render(context! { question => &i.question, answer_a => a, answer_b => b })
                    .map_err(template_err)?,
            );
        }
    }
    let answers = ask(engine, prompts, o)?;
    Ok(answers
        .chunks(2)
        .map(|two| {
            let first = parse_pair(&two[0]);
            let second = parse_pair(&two[1]);
            // The second order's labels are swapped back.
            let swapped = second.as_ref().ok().map(|w| match w {
                Winner::A => Winner::B,
                Winner::B => Winner::A,
                Winner::Tie => Winner::Tie,
            });
            let (winner, failure) = match (&first, swapped) {
                (Ok(x), Some(y)) if *x == y => (Some(y), None),
                (Ok(_), Some(_)) => (Some(Winner::Tie), None),
                (Err(e), _) => (None, Some(format!("A-then-B order: {e}"))),
                (_, None) => (
                    None,
                    Some(format!("B-then-A order: {}", second.clone().unwrap_err())),
                ),
            };
            PairVerdict {
                winner,
                orders: [first.ok(), second.ok()],
                failure,
                raw: [two[0].clone(), two[1].clone()],
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts_parse_or_fail_never_guess() {
        let s = Scale::Range { min: 1, max: 10 };
        assert_eq!(parse_point("Good answer.\nScore: 7", &s), Ok(7.0));
        assert_eq!(parse_point("**Score:** [8/10]", &s), Ok(8.0));
        assert_eq!(parse_point("Score: 3 at first... Score: 9", &s), Ok(9.0));
        assert!(
            parse_point("Score: 11", &s)
                .unwrap_err()
                .contains("off the scale")
        );
        assert!(parse_point("I like it, a 7", &s).is_err());
        assert!(parse_point("Score: seven", &s).is_err());
        assert_eq!(parse_point("Verdict: pass", &Scale::PassFail), Ok(1.0));
        assert!(parse_point("Verdict: maybe", &Scale::PassFail).is_err());
        assert_eq!(parse_pair("A is better.\nWinner: A"), Ok(Winner::A));
        assert_eq!(parse_pair("Winner: Tie"), Ok(Winner::Tie));
        assert!(parse_pair("Both fine").is_err());
    }

    #[test]
    fn default_prompts_render() {
        let e = env(POINTWISE).unwrap();
        let p = e
            .get_template("judge")
            .unwrap()
            .render(context! { question => "q?", answer => "a", reference => "r", min => 1, max => 10, pass_fail => false })
            .unwrap();
        assert!(
            p.contains("[Reference answer]\nr") && p.contains("from 1 to 10"),
            "{p}"
        );
    }
}
