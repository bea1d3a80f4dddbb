//! `arith`: arithmetic word problems made on the fly, each with its answer in the metadata
//! (`answer`, an integer), so a GRPO run can train against `math-answer` with no dataset.
//! Settings: `min`/`max` operand range (1..100), `ops` (any of "+", "-", "*", "/"), `count`
//! (omit for an endless stream), `words` (true: a short story; false: "12 + 7 = ?"),
//! `system` (an optional system prompt), `solutions` (true: each example ends with the
//! assistant's worked answer, `12 + 7 = 19. #### 19`, for an SFT warm-up). The run's seed
//! fixes the sequence.

use galley_sdk::data_loader::DataLoader;
use galley_sdk::{Config, Error, Example, Message, Value};
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct Settings {
    min: i64,
    max: i64,
    ops: Vec<String>,
    count: Option<u64>,
    words: bool,
    system: Option<String>,
    solutions: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            min: 1,
            max: 100,
            ops: vec!["+".into(), "-".into(), "*".into()],
            count: None,
            words: true,
            system: None,
            solutions: false,
        }
    }
}

struct Arith {
    s: Settings,
    rng: u64,
    made: u64,
}

const NAMES: &[&str] = &[
    "Ada", "Ben", "Chloe", "Dev", "Emma", "Farid", "Grace", "Hiro", "Ines", "Jonas",
];
const THINGS: &[&str] = &[
    "apples", "marbles", "stickers", "books", "coins", "shells", "pencils", "cards",
];

impl Arith {
    fn next(&mut self) -> u64 {
        // splitmix64: tiny, fast, and the same on every platform.
        self.rng = self.rng.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn range(&mut self, lo: i64, hi: i64) -> i64 {
        lo + (self.next() % ((hi - lo + 1) as u64)) as i64
    }

    fn pick<'a>(&mut self, items: &'a [&'a str]) -> &'a str {
        items[(self.next() % items.len() as u64) as usize]
    }

    fn problem(&mut self) -> Example {
        let k = (self.next() % self.s.ops.len() as u64) as usize;
        let op = self.s.ops[k].clone();
        let (lo, hi) = (self.s.min, self.s.max);
        let (mut a, mut b) = (self.range(lo, hi), self.range(lo, hi));
        let answer = match op.as_str() {
            "+" => a + b,
            "-" => {
                if b > a {
                    std::mem::swap(&mut a, &mut b);
                }
                a - b
            }
            "*" => a * b,
            _ => {
                // Division with an exact answer: a = b * q.
                let b2 = b.max(1);
                let q = self.range(lo.max(1), hi.max(1));
                a = b2 * q;
                b = b2;
                q
            }
        };
        let (name, thing) = (self.pick(NAMES), self.pick(THINGS));
        let question = if !self.s.words {
            format!("What is {a} {op} {b}? End your answer with `#### <number>`.")
        } else {
            let story = match op.as_str() {
                "+" => format!(
                    "{name} has {a} {thing} and gets {b} more. How many {thing} does {name} have now?"
                ),
                "-" => {
                    format!("{name} has {a} {thing} and gives away {b}. How many {thing} are left?")
                }
                "*" => format!(
                    "{name} fills {a} boxes with {b} {thing} each. How many {thing} is that in total?"
                ),
                _ => format!(
                    "{name} shares {a} {thing} equally among {b} friends. How many {thing} does each friend get?"
                ),
            };
            format!("{story} End your answer with `#### <number>`.")
        };
        let mut messages = Vec::new();
        if let Some(sys) = &self.s.system {
            messages.push(Message::new("system", sys.clone()));
        }
        messages.push(Message::new("user", question));
        if self.s.solutions {
            messages.push(Message::new(
                "assistant",
                format!("{a} {op} {b} = {answer}. #### {answer}"),
            ));
        }
        let mut ex = Example {
            id: format!("arith-{}", self.made),
            messages,
            ..Default::default()
        };
        ex.metadata.insert("answer", Value::Int(answer));
        ex.metadata.insert("operation", Value::Text(op));
        ex.metadata
            .insert("operands", Value::Json(format!("[{a},{b}]")));
        ex
    }
}

impl DataLoader for Arith {
    fn new(config: &Config, seed: u64) -> Result<Self, Error> {
        let s: Settings = config.parse_into()?;
        if s.min > s.max {
            return Err(Error::config(format!(
                "`min` ({}) is greater than `max` ({})",
                s.min, s.max
            )));
        }
        if s.min < -1_000_000_000 || s.max > 1_000_000_000 {
            return Err(Error::config("operands must be within ±1e9"));
        }
        if s.ops.is_empty() {
            return Err(Error::config("`ops` is empty"));
        }
        if let Some(bad) = s
            .ops
            .iter()
            .find(|o| !["+", "-", "*", "/"].contains(&o.as_str()))
        {
            return Err(Error::config(format!(
                "`ops`: unknown operation `{bad}` (use +, -, *, /)"
            )));
        }
        Ok(Self {
            s,
            rng: seed ^ 0x5eed_a417,
            made: 0,
        })
    }

    fn next_page(&mut self, max: usize) -> Result<Vec<Example>, Error> {
        let mut page = Vec::with_capacity(max);
        while page.len() < max && self.s.count.is_none_or(|c| self.made < c) {
            let ex = self.problem();
            self.made += 1;
            page.push(ex);
        }
        Ok(page)
    }
}

galley_sdk::export_data_loader!(Arith);
