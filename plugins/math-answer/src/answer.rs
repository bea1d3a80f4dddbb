//! Final-answer extraction and comparison for math completions, in plain std Rust so the same
//! source runs inside the plugin and natively (the benchmark compares the two). The answer
//! is a slice of the completion wherever possible: allocation is what costs most in wasm.

use std::borrow::Cow;

/// Where an answer was found, strongest marker first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Marker {
    Boxed,
    Hashes,
    AnswerIs,
    LastNumber,
}

/// The final answer of `text`: the last `\boxed{..}`, else the last `#### ..` line, else the
/// last "the answer is .." / "final answer is .." / "answer: ..", else (if `fallback`) the
/// last number. One backward pass over the bytes finds every marker; plain byte loops run
/// at much the same speed natively and in wasm, where library string search does not.
pub fn extract(text: &str, fallback: bool) -> Option<(&str, Marker)> {
    let b = text.as_bytes();
    let (mut boxed, mut hashes, mut phrase_end) = (None, None, None);
    let mut i = b.len();
    while i > 0 {
        i -= 1;
        match b[i] {
            b'\\' if boxed.is_none() && b[i..].starts_with(b"\\boxed{") => boxed = Some(i + 7),
            b'#' if hashes.is_none() && b[i..].starts_with(b"####") => hashes = Some(i + 4),
            c if phrase_end.is_none() && c | 0x20 == b'a' => phrase_end = phrase_at(b, i),
            _ => {}
        }
    }
    if let Some(a) = boxed.and_then(|start| balanced(text, start)) {
        return Some((a, Marker::Boxed));
    }
    if let Some(start) = hashes {
        let line_end = b[start..]
            .iter()
            .position(|&c| c == b'\n')
            .map_or(b.len(), |p| start + p);
        // Markup after the answer (`#### 72</answer>`) is not part of it.
        let end = b[start..line_end]
            .iter()
            .position(|&c| c == b'<')
            .map_or(line_end, |p| start + p);
        let rest = text[start..end].trim();
        if !rest.is_empty() {
            return Some((rest, Marker::Hashes));
        }
    }
    if let Some(a) = phrase_end.and_then(|start| sentence(text, start)) {
        return Some((a, Marker::AnswerIs));
    }
    if fallback {
        return last_number(text).map(|n| (n, Marker::LastNumber));
    }
    None
}

/// The content of a `{...}` group whose body starts at `start`, braces balanced.
fn balanced(text: &str, start: usize) -> Option<&str> {
    let mut depth = 1usize;
    for (i, &c) in text.as_bytes()[start..].iter().enumerate() {
        match c {
            b'{' => depth += 1,
            b'}' => {
                depth -= 1;
                if depth == 0 {
                    return Some(text[start..start + i].trim());
                }
            }
            _ => {}
        }
    }
    None
}

fn eq_ignore_case(b: &[u8], at: usize, word: &[u8]) -> bool {
    b.len() >= at + word.len()
        && b[at..at + word.len()]
            .iter()
            .zip(word)
            .all(|(x, w)| x.to_ascii_lowercase() == *w)
}

/// Where the answer starts if `answer` at `i` is part of "the answer is", "final answer is",
/// "final answer:" or "answer:".
fn phrase_at(b: &[u8], i: usize) -> Option<usize> {
    if !eq_ignore_case(b, i, b"answer") {
        return None;
    }
    let after = i + 6;
    if b.get(after) == Some(&b':') {
        return Some(after + 1);
    }
    let preceded = (i >= 4 && eq_ignore_case(b, i - 4, b"the "))
        || (i >= 6 && eq_ignore_case(b, i - 6, b"final "));
    (preceded && eq_ignore_case(b, after, b" is")).then_some(after + 3)
}

/// The answer after a phrase: up to a newline, markup, or a period that ends the sentence
/// (not one inside a number).
fn sentence(text: &str, start: usize) -> Option<&str> {
    let b = text.as_bytes();
    let mut end = b.len();
    for i in start..b.len() {
        let c = b[i];
        if c == b'\n'
            || c == b'<'
            || (c == b'.' && !b.get(i + 1).is_some_and(|d| d.is_ascii_digit()))
        {
            end = i;
            break;
        }
    }
    let out = text[start..end].trim().trim_start_matches(':').trim();
    (!out.is_empty()).then_some(out)
}

fn last_number(text: &str) -> Option<&str> {
    let bytes = text.as_bytes();
    let mut end = None;
    for i in (0..bytes.len()).rev() {
        if bytes[i].is_ascii_digit() {
            end = Some(i + 1);
            break;
        }
    }
    let end = end?;
    let mut start = end;
    while start > 0 {
        let b = bytes[start - 1];
        let inner = start - 1 > 0 && bytes[start - 2].is_ascii_digit();
        if b.is_ascii_digit() || ((b == b',' || b == b'.' || b == b'/') && inner) {
            start -= 1;
        } else {
            break;
        }
    }
    if start > 0 && bytes[start - 1] == b'-' {
        start -= 1;
    }
    Some(&text[start..end])
}

/// A canonical form of an answer: LaTeX wrappers, `$`, thousands separators, a trailing
/// period and surrounding space removed. Borrows when there is nothing to change, which is
/// the common case (a bare number).
pub fn normalize(answer: &str) -> Cow<'_, str> {
    let trimmed = answer.trim();
    let plain = |c: &u8| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'/' | b' ' | b'.' | b'%');
    if trimmed.as_bytes().iter().all(plain) && !trimmed.ends_with('.') {
        return Cow::Borrowed(trimmed);
    }
    let mut s = trimmed.to_string();
    if s.contains('\\') {
        for wrapper in ["\\text{", "\\mathrm{", "\\textbf{", "\\boxed{"] {
            while let Some(p) = s.find(wrapper) {
                let inner_start = p + wrapper.len();
                match s[inner_start..].find('}') {
                    Some(q) => {
                        let inner = s[inner_start..inner_start + q].to_string();
                        s.replace_range(p..inner_start + q + 1, &inner);
                    }
                    None => break,
                }
            }
        }
        for (from, to) in [
            ("\\dfrac", "\\frac"),
            ("\\tfrac", "\\frac"),
            ("\\!", ""),
            ("\\,", ""),
            ("\\$", ""),
        ] {
            if s.contains(from) {
                s = s.replace(from, to);
            }
        }
    }
    // One pass for the single characters: currency signs go, the Unicode minus becomes '-',
    // and a comma between a digit and exactly three digits (1,000) is a thousands separator.
    let trimmed = s.trim().trim_end_matches('.').trim();
    let trimmed = trimmed.strip_prefix('+').unwrap_or(trimmed);
    let b = trimmed.as_bytes();
    let mut out = String::with_capacity(trimmed.len());
    for (i, c) in trimmed.char_indices() {
        match c {
            '$' | '\u{20ac}' | '\u{a3}' => continue,
            '\u{2212}' => out.push('-'),
            ',' => {
                let digit_before = i > 0 && b[i - 1].is_ascii_digit();
                let three_after = b.len() >= i + 4
                    && b[i + 1..i + 4].iter().all(|d| d.is_ascii_digit())
                    && !b.get(i + 4).is_some_and(|d| d.is_ascii_digit());
                if !(digit_before && three_after) {
                    out.push(',');
                }
            }
            c => out.push(c),
        }
    }
    let t = out.trim();
    Cow::Owned(if t.len() == out.len() {
        out
    } else {
        t.to_string()
    })
}

/// The numeric value of a normalized answer: integers, decimals, `a/b`, `\frac{a}{b}`, `-`
/// signs, a trailing `%` (kept as the number before it), a leading unit-free number.
pub fn numeric(answer: &str) -> Option<f64> {
    let s = answer.trim().trim_end_matches('%').trim();
    if let Some(rest) = s
        .strip_prefix("\\frac{")
        .or_else(|| s.strip_prefix("-\\frac{"))
    {
        let negative = s.starts_with('-');
        let (num, rest) = rest.split_once('}')?;
        let den = rest.strip_prefix('{')?.strip_suffix('}')?;
        let v = num.trim().parse::<f64>().ok()? / den.trim().parse::<f64>().ok()?;
        return Some(if negative { -v } else { v });
    }
    if let Some((a, b)) = s.split_once('/') {
        let v = a.trim().parse::<f64>().ok()? / b.trim().parse::<f64>().ok()?;
        return v.is_finite().then_some(v);
    }
    s.parse::<f64>().ok().filter(|v| v.is_finite())
}

/// Whether two answers agree: numerically within 1e-6 relative, else as normalized text
/// ignoring case and spaces.
pub fn same_answer(predicted: &str, truth: &str) -> bool {
    let (p, t) = (normalize(predicted), normalize(truth));
    // Integers, the common case, compare exactly and without float parsing (whose 128-bit
    // arithmetic is slow on 32-bit wasm).
    if let (Ok(a), Ok(b)) = (p.parse::<i64>(), t.parse::<i64>()) {
        return a == b;
    }
    match (numeric(&p), numeric(&t)) {
        (Some(a), Some(b)) => (a - b).abs() <= 1e-6 * b.abs().max(1.0),
        (None, None) => {
            let squash = |s: &str| {
                s.chars()
                    .filter(|c| !c.is_whitespace())
                    .collect::<String>()
                    .to_lowercase()
            };
            squash(&p) == squash(&t)
        }
        _ => false,
    }
}

/// The ground truth of an example: GSM8K stores the worked solution ending in `#### 72`.
pub fn truth_of(raw: &str) -> &str {
    let b = raw.as_bytes();
    match (0..b.len().saturating_sub(3))
        .rev()
        .find(|&i| b[i..].starts_with(b"####"))
    {
        Some(p) => raw[p + 4..].trim(),
        None => raw.trim(),
    }
}

/// The whole reward: `Some(correct)` / `Some(incorrect)`, or `None` without a ground truth.
pub fn score(completion: &str, truth: Option<&str>, fallback: bool) -> Option<bool> {
    let truth = truth_of(truth?);
    if truth.is_empty() {
        return None;
    }
    Some(match extract(completion, fallback) {
        Some((answer, _)) => same_answer(answer, truth),
        None => false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_in_priority_order() {
        assert_eq!(
            extract("so 3 + 4 = 7\n#### 7", true).unwrap(),
            ("7", Marker::Hashes)
        );
        assert_eq!(
            extract("we get \\boxed{\\frac{1}{2}}.", true).unwrap().0,
            "\\frac{1}{2}"
        );
        assert_eq!(
            extract("Thus the answer is 1,234.5.", true).unwrap().0,
            "1,234.5"
        );
        assert_eq!(
            extract("I think 12 then 13", true).unwrap(),
            ("13", Marker::LastNumber)
        );
        assert_eq!(extract("I think 12 then 13", false), None);
        assert_eq!(extract("it costs -5 dollars", true).unwrap().0, "-5");
        assert_eq!(extract("<answer>#### 72</answer>", true).unwrap().0, "72");
        assert_eq!(
            extract("<answer>The answer is 72</answer>", true)
                .unwrap()
                .0,
            "72"
        );
    }

    #[test]
    fn comparison_handles_formats() {
        assert!(same_answer("1,000", "1000"));
        assert!(same_answer("$18", "18"));
        assert!(same_answer("3.50", "3.5"));
        assert!(same_answer("\\frac{1}{2}", "0.5"));
        assert!(same_answer("1/4", "0.25"));
        assert!(same_answer("-\\dfrac{3}{4}", "-0.75"));
        assert!(same_answer("\u{2212}7", "-7"));
        assert!(same_answer("+7.", "7"));
        assert!(same_answer("\\text{Paris}", "paris"));
        assert!(!same_answer("7", "-7"));
        assert!(!same_answer("1,2", "12"));
    }

    #[test]
    fn whole_reward() {
        assert_eq!(
            score("#### 72", Some("Natalia sold 48/2 = 24...\n#### 72"), true),
            Some(true)
        );
        assert_eq!(score("The answer is 71.", Some("72"), true), Some(false));
        assert_eq!(score("no digits here", Some("72"), true), Some(false));
        assert_eq!(score("#### 72", None, true), None);
    }
}
