//! Text that came from a plugin, made safe to show. A plugin's error message, log line,
//! output tail or stop reason ends up on a terminal, where control characters are commands:
//! ESC sequences clear the screen or retitle the window, a carriage return overwrites a line
//! with a fake "ALL TESTS PASSED", a newline forges a log line of someone else's, and bidi
//! overrides reorder what the reader sees. `untrusted` escapes all of them (as `\n`, `\r`,
//! `\t`, `\u{1b}`...) and caps the length, so what is printed is exactly what the plugin
//! said, visibly, on one line.

use std::fmt::Write;

/// Whether `c` changes how a terminal shows what follows rather than being shown itself.
fn is_control(c: char) -> bool {
    c.is_control() // C0, DEL and C1 (including the 8-bit CSI, U+009B)
        || matches!(c,
            '\u{200e}' | '\u{200f}'           // left-to-right / right-to-left marks
            | '\u{202a}'..='\u{202e}'         // bidi embeddings and overrides
            | '\u{2066}'..='\u{2069}'         // bidi isolates
            | '\u{2028}' | '\u{2029}'         // line and paragraph separators
            | '\u{feff}')
}

/// `s` with every control character escaped, cut to at most `max_bytes` bytes of output
/// (on a character boundary, with ` [... N more bytes]` after the cut).
pub fn untrusted(s: &str, max_bytes: usize) -> String {
    let mut out = String::with_capacity(s.len().min(max_bytes) + 16);
    for (i, c) in s.char_indices() {
        let before = out.len();
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if is_control(c) => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
        if out.len() > max_bytes {
            out.truncate(before);
            let _ = write!(out, " [... {} more bytes]", s.len() - i);
            break;
        }
    }
    out
}

/// Whether `s` holds anything `untrusted` would escape.
pub fn has_control(s: &str) -> bool {
    s.chars()
        .any(|c| c == '\n' || c == '\r' || c == '\t' || is_control(c))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_what_a_terminal_would_obey() {
        let attack =
            "ok\x1b[2J\x1b]0;owned\x07\rALL TESTS PASSED\nINFO forged\u{202e}txt.exe\u{9b}31m";
        let shown = untrusted(attack, 1 << 10);
        assert!(!has_control(&shown), "{shown:?}");
        assert_eq!(
            shown,
            "ok\\u{1b}[2J\\u{1b}]0;owned\\u{7}\\rALL TESTS PASSED\\nINFO forged\\u{202e}txt.exe\\u{9b}31m"
        );
    }

    #[test]
    fn keeps_plain_text_and_unicode() {
        assert_eq!(untrusted("naïve 日本語 ✓", 100), "naïve 日本語 ✓");
    }

    #[test]
    fn caps_on_a_character_boundary() {
        let s = "é".repeat(100);
        let shown = untrusted(&s, 11);
        assert_eq!(shown, format!("{} [... 190 more bytes]", "é".repeat(5)));
        assert_eq!(untrusted(&"\n".repeat(10), 5), "\\n\\n [... 8 more bytes]");
    }
}
