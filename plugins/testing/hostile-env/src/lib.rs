//! TEST ONLY. An environment plugin that keeps a counter per episode and misbehaves the way
//! its `mode` setting says, so what the host promises about episodes is tested against real
//! compiled behaviour:
//!
//! - `ok`: `reset` shows the row's `tag` and the seed; `bump` adds one to the episode's
//!   counter and answers the count; `reward` is the count (isolation: an episode sees only
//!   its own bumps);
//! - `trap`: `bump` panics (that episode is over; the others go on);
//! - `loop`: `bump` spins forever (the time budget stops it);
//! - `grow`: `bump` allocates without end (the memory cap stops it);
//! - `hold`: each `bump` allocates 8 MiB more and keeps it (the episodes' shared budget stops
//!   them together);
//! - `huge`: `reset` returns 1 MiB to append to the prompt (refused);
//! - `nan`: `reward` returns NaN (refused).

use galley_sdk::environment::Environment;
use galley_sdk::serde_json::{Value, json};
use galley_sdk::{Config, Error, Function};
use std::hint::black_box;

struct Hostile {
    mode: String,
    count: u64,
    hoard: Vec<Vec<u8>>,
}

impl Environment for Hostile {
    fn new(config: &Config) -> Result<Self, Error> {
        Ok(Self {
            mode: config.get_str("mode").unwrap_or("ok").to_string(),
            count: 0,
            hoard: Vec::new(),
        })
    }

    fn functions(&self) -> Vec<Function> {
        vec![Function::new(
            "bump",
            "Adds one to this episode's counter and returns it.",
            json!({"type": "object", "properties": {}}),
        )]
    }

    fn reset(&mut self, row: &Value, seed: u64) -> Result<Option<String>, Error> {
        match self.mode.as_str() {
            "huge" => Ok(Some("x".repeat(1 << 20))),
            _ => Ok(row["tag"].as_str().map(|t| format!(" [{t} {seed}]"))),
        }
    }

    fn call(&mut self, _name: &str, _args: &Value) -> Result<String, Error> {
        match self.mode.as_str() {
            "trap" => panic!("hostile environment panicked on purpose"),
            "loop" => {
                let mut i = 0u64;
                loop {
                    i = black_box(i.wrapping_add(1));
                }
            }
            "grow" => loop {
                self.hoard.push(vec![1u8; 1 << 20]);
            },
            "hold" => {
                self.hoard.push(vec![1u8; 8 << 20]);
                self.count += 1;
                Ok(format!("holding {} MiB", self.count * 8))
            }
            _ => {
                self.count += 1;
                Ok(self.count.to_string())
            }
        }
    }

    fn reward(&mut self) -> Result<Option<f64>, Error> {
        match self.mode.as_str() {
            "nan" => Ok(Some(f64::NAN)),
            _ => Ok(Some(self.count as f64)),
        }
    }
}

galley_sdk::export_environment!(Hostile);
