//! Final-answer extraction and comparison for math completions, in plain std Rust so the same
//! source runs inside the plugin and natively (the benchmark compares the two).

/// Where an answer was found, strongest marker first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Marker {
    Boxed,
    Hashes,
    AnswerIs,
    LastNumber,
}

/// The final answer of `text`: the last `\boxed{..}`, else the last `#### ..` line, else the
/// last "the answer is .." / "answer: ..", else (if `fallback`) the last number.
pub fn extract(text: &str, fallback: bool) -> Option<(String, Marker)> {
    if let Some(a) = last_boxed(text) {
        return Some((a, Marker::Boxed));
    }
    if let Some(pos) = text.rfind("####") {
        let rest = text[pos + 4..].lines().next().unwrap_or("");
        // Markup after the answer (`#### 72</answer>`) is not part of it.
        let rest = rest.split('<').next().unwrap_or("").trim();
        if !rest.is_empty() {
            return Some((rest.to_string(), Marker::Hashes));
        }
    }
    if let Some(a) = after_answer_phrase(text) {
        return Some((a, Marker::AnswerIs));
    }
    if fallback {
        return last_number(text).map(|n| (n, Marker::LastNumber));
    }
    None
}

fn last_boxed(text: &str) -> Option<String> {
    let start = text.rfind("\\boxed{")? + "\\boxed{".len();
    let mut depth = 1usize;
    for (i, c) in text[start..].char_indices() {
        match c {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    return Some(text[start..start + i].trim().to_string());
                }
            }
            _ => {}
        }
    }
    None
}

fn after_answer_phrase(text: &str) -> Option<String> {
    let lower = text.to_ascii_lowercase();
    let mut best: Option<usize> = None;
    for phrase in ["the answer is", "final answer is", "final answer:", "answer:"] {
        if let Some(p) = lower.rfind(phrase) {
            let end = p + phrase.len();
            if best.is_none_or(|b| end > b) {
                best = Some(end);
            }
        }
    }
    let rest = text[best?..].split('<').next().unwrap_or("");
    // The answer runs to the end of the sentence: a newline, or a period not inside a number.
    let mut out = String::new();
    let chars: Vec<char> = rest.chars().collect();
    for (i, &c) in chars.iter().enumerate() {
        if c == '\n' {
            break;
        }
        if c == '.' && !chars.get(i + 1).is_some_and(|d| d.is_ascii_digit()) {
            break;
        }
        out.push(c);
    }
    let out = out.trim().trim_start_matches(':').trim();
    (!out.is_empty()).then(|| out.to_string())
}

fn last_number(text: &str) -> Option<String> {
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
    Some(text[start..end].to_string())
}

/// A canonical form of an answer: LaTeX wrappers, `$`, units of thousands separators, a
/// trailing period and surrounding space removed.
pub fn normalize(answer: &str) -> String {
    let mut s = answer.trim().to_string();
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
    let s = s
        .replace("\\dfrac", "\\frac")
        .replace("\\tfrac", "\\frac")
        .replace("\\!", "")
        .replace("\\,", "")
        .replace("\\$", "")
        .replace(['$', '€', '£'], "")
        .replace('\u{2212}', "-");
    let s = s.trim().trim_end_matches('.').trim();
    let s = s.strip_prefix('+').unwrap_or(s);
    // "1,000" is one thousand; a comma elsewhere (a list) is kept.
    let bytes: Vec<char> = s.chars().collect();
    let mut out = String::with_capacity(s.len());
    for (i, &c) in bytes.iter().enumerate() {
        let digit_before = i > 0 && bytes[i - 1].is_ascii_digit();
        let three_after = bytes.len() >= i + 4
            && bytes[i + 1..i + 4].iter().all(|d| d.is_ascii_digit())
            && !bytes.get(i + 4).is_some_and(|d| d.is_ascii_digit());
        if c == ',' && digit_before && three_after {
            continue;
        }
        out.push(c);
    }
    out.trim().to_string()
}

/// The numeric value of a normalized answer: integers, decimals, `a/b`, `\frac{a}{b}`, `-`
/// signs, a trailing `%` (kept as the number before it), a leading unit-free number.
pub fn numeric(answer: &str) -> Option<f64> {
    let s = answer.trim().trim_end_matches('%').trim();
    if let Some(rest) = s.strip_prefix("\\frac{").or_else(|| s.strip_prefix("-\\frac{")) {
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
    match (numeric(&p), numeric(&t)) {
        (Some(a), Some(b)) => (a - b).abs() <= 1e-6 * b.abs().max(1.0),
        (None, None) => {
            let squash = |s: &str| s.chars().filter(|c| !c.is_whitespace()).collect::<String>().to_lowercase();
            squash(&p) == squash(&t)
        }
        _ => false,
    }
}

/// The ground truth of an example: GSM8K stores the worked solution ending in `#### 72`.
pub fn truth_of(raw: &str) -> String {
    match raw.rfind("####") {
        Some(p) => raw[p + 4..].trim().to_string(),
        None => raw.trim().to_string(),
    }
}

/// The whole reward: `Some(correct)` / `Some(incorrect)`, or `None` without a ground truth.
pub fn score(completion: &str, truth: Option<&str>, fallback: bool) -> Option<bool> {
    let truth = truth_of(truth?);
    if truth.is_empty() {
        return None;
    }
    Some(match extract(completion, fallback) {
        Some((answer, _)) => same_answer(&answer, &truth),
        None => false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_in_priority_order() {
        assert_eq!(extract("so 3 + 4 = 7\n#### 7", true).unwrap(), ("7".into(), Marker::Hashes));
        assert_eq!(extract("we get \\boxed{\\frac{1}{2}}.", true).unwrap().0, "\\frac{1}{2}");
        assert_eq!(extract("Thus the answer is 1,234.5.", true).unwrap().0, "1,234.5");
        assert_eq!(extract("I think 12 then 13", true).unwrap(), ("13".into(), Marker::LastNumber));
        assert_eq!(extract("I think 12 then 13", false), None);
        assert_eq!(extract("it costs -5 dollars", true).unwrap().0, "-5");
        assert_eq!(extract("<answer>#### 72</answer>", true).unwrap().0, "72");
        assert_eq!(extract("<answer>The answer is 72</answer>", true).unwrap().0, "72");
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
        assert_eq!(score("#### 72", Some("Natalia sold 48/2 = 24...\n#### 72"), true), Some(true));
        assert_eq!(score("The answer is 71.", Some("72"), true), Some(false));
        assert_eq!(score("no digits here", Some("72"), true), Some(false));
        assert_eq!(score("#### 72", None, true), None);
    }
}
