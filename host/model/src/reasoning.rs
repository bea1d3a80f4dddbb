//! Reasoning ("thinking") in a model's answer: DeepSeek-R1, Qwen 3, SmolLM3 and their kin
//! write `<think>...</think>` before the answer, or their template opens the block in the
//! generation prompt and the model only closes it. A server hands the two apart, as vLLM's
//! `deepseek_r1` reasoning parser and llama.cpp's `--reasoning-format deepseek` do:
//! `reasoning_content` and `content`. [`split`] reads a finished answer, [`ThinkStream`] a
//! streamed one (holding back only what may be the start of a tag).

pub const OPEN: &str = "<think>";
pub const CLOSE: &str = "</think>";

/// Whether a chat template writes thinking blocks (so its model's answers hold one).
pub fn template_thinks(source: &str) -> bool {
    source.contains(CLOSE)
}

/// Whether a rendered prompt leaves a thinking block open (the template opened it for the
/// model: DeepSeek-R1's generation prompt ends `<think>\n`).
pub fn prompt_opens(prompt: &str) -> bool {
    match (prompt.rfind(OPEN), prompt.rfind(CLOSE)) {
        (Some(o), Some(c)) => o > c,
        (Some(_), None) => true,
        _ => false,
    }
}

/// A finished answer as (reasoning, content); `open`: the prompt left a block open. An
/// answer that never closes its block is all reasoning (it ran out of tokens thinking).
pub fn split(text: &str, open: bool) -> (Option<String>, String) {
    let t = text.trim_start();
    let body = match t.strip_prefix(OPEN) {
        Some(rest) => rest,
        None if open => text,
        None => return (None, text.to_string()),
    };
    match body.find(CLOSE) {
        Some(i) => (
            Some(body[..i].trim().to_string()),
            body[i + CLOSE.len()..].trim_start().to_string(),
        ),
        None => (Some(body.trim_start().to_string()), String::new()),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Nothing but blanks yet: the answer may still open a block.
    Start,
    Thinking,
    /// Just past `</think>`: blanks before the content are dropped.
    After,
    Content,
}

/// A streamed answer split as it comes: each piece gives what may be passed on now as
/// reasoning and as content.
#[derive(Debug)]
pub struct ThinkStream {
    phase: Phase,
    /// Text not passed on yet.
    held: String,
}

impl ThinkStream {
    /// `open`: the prompt left a block open.
    pub fn new(open: bool) -> Self {
        Self {
            phase: if open { Phase::Thinking } else { Phase::Start },
            held: String::new(),
        }
    }

    /// The next piece: (reasoning, content) to pass on now.
    pub fn push(&mut self, piece: &str) -> (String, String) {
        self.held.push_str(piece);
        let (mut reasoning, mut content) = (String::new(), String::new());
        loop {
            match self.phase {
                Phase::Start => {
                    let t = self.held.trim_start();
                    if let Some(rest) = t.strip_prefix(OPEN) {
                        self.held = rest.trim_start().to_string();
                        self.phase = Phase::Thinking;
                    } else if t.is_empty() || OPEN.starts_with(t) {
                        return (reasoning, content);
                    } else {
                        self.phase = Phase::Content;
                    }
                }
                Phase::Thinking => match self.held.find(CLOSE) {
                    Some(i) => {
                        reasoning.push_str(&self.held[..i]);
                        self.held = self.held[i + CLOSE.len()..].to_string();
                        self.phase = Phase::After;
                    }
                    None => {
                        let keep = (1..CLOSE.len())
                            .rev()
                            .find(|&n| self.held.ends_with(&CLOSE[..n]))
                            .unwrap_or(0);
                        let cut = self.held.len() - keep;
                        reasoning.push_str(&self.held[..cut]);
                        self.held.drain(..cut);
                        return (reasoning, content);
                    }
                },
                Phase::After => {
                    let t = self.held.trim_start();
                    if t.is_empty() {
                        self.held.clear();
                        return (reasoning, content);
                    }
                    self.held = t.to_string();
                    self.phase = Phase::Content;
                }
                Phase::Content => {
                    content.push_str(&self.held);
                    self.held.clear();
                    return (reasoning, content);
                }
            }
        }
    }

    /// The end: what was held back, as (reasoning, content).
    pub fn finish(self) -> (String, String) {
        match self.phase {
            Phase::Thinking => (self.held, String::new()),
            Phase::Start | Phase::Content => (String::new(), self.held),
            Phase::After => (String::new(), String::new()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_split_at_the_close_with_the_block_opened_by_either_side() {
        let r = |s: &str| Some(s.to_string());
        assert_eq!(
            split("<think>\nLet me see.\n</think>\n\nParis.", false),
            (r("Let me see."), "Paris.".into())
        );
        // DeepSeek-R1: the prompt opened the block.
        assert_eq!(
            split("Hmm, 2+2.\n</think>\n\n4", true),
            (r("Hmm, 2+2."), "4".into())
        );
        assert_eq!(split("Paris.", false), (None, "Paris.".into()));
        // Out of tokens while thinking: all reasoning.
        assert_eq!(
            split("<think>\nStill going", false),
            (r("Still going"), String::new())
        );
        assert!(prompt_opens("<｜Assistant｜><think>\n"));
        assert!(!prompt_opens(
            "<|im_start|>assistant\n<think>\n\n</think>\n\n"
        ));
        assert!(!prompt_opens("<|im_start|>assistant\n"));
    }

    fn stream(text: &str, open: bool) -> (String, String) {
        let mut s = ThinkStream::new(open);
        let (mut r, mut c) = (String::new(), String::new());
        for ch in text.chars() {
            let (a, b) = s.push(&ch.to_string());
            r += &a;
            c += &b;
        }
        let (a, b) = s.finish();
        (r + &a, c + &b)
    }

    #[test]
    fn streams_split_as_the_whole_answer_does() {
        for (text, open) in [
            ("<think>\nLet me see.\n</think>\n\nParis.", false),
            ("Hmm, 2+2.\n</think>\n\n4", true),
            ("Paris <think> is not a tag here.", false),
            ("  <thin", false),
            ("<think>\nStill </thi going", false),
        ] {
            let (r, c) = stream(text, open);
            let (wr, wc) = split(text, open);
            assert_eq!(r.trim(), wr.unwrap_or_default(), "{text:?}");
            assert_eq!(c.trim(), wc.trim(), "{text:?}");
        }
    }
}
