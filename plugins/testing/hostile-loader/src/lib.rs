//! TEST ONLY. A data loader that misbehaves as its `mode` setting says. In `escape` mode it
//! reports, as metadata, which paths it could read: only `/data/...` may succeed.

use galley_sdk::data_loader::DataLoader;
use galley_sdk::{Config, Error, Example, Message, ToolCall, Value};

struct Hostile {
    mode: String,
}

impl DataLoader for Hostile {
    fn new(config: &Config, _seed: u64) -> Result<Self, Error> {
        let mode = config.get_str("mode").unwrap_or("ok").to_string();
        if mode == "trap-init" {
            panic!("hostile loader panicked in init on purpose");
        }
        Ok(Self { mode })
    }

    fn next_page(&mut self, max: usize) -> Result<Vec<Example>, Error> {
        let one = |id: String| Example {
            id,
            messages: vec![Message::new("user", "hi")],
            ..Default::default()
        };
        match self.mode.as_str() {
            "ok" => Ok((0..max.min(3)).map(|i| one(format!("ok-{i}"))).collect()),
            "huge-string" => {
                // A 1 GiB string, returned to the host.
                let s = "x".repeat(1 << 30);
                Ok(vec![one(s)])
            }
            // Tool calls (galley:plugin@0.2) whose identifiers would forge a log line or run
            // on for megabytes, beside arguments that are not JSON.
            "forged-calls" => {
                let mut ex = one("forged-calls".into());
                let mut m = Message::new("assistant", "");
                m.tool_calls.push(ToolCall {
                    id: Some(format!("call\n{}", "9".repeat(1 << 20))),
                    name: format!("get\x1b[2J\nINFO galley: forged{}", "x".repeat(10_000)),
                    arguments: "{\"city\": ".into(),
                });
                m.reasoning = Some("\x1b[31mthinking".into());
                ex.messages.push(m);
                let mut t = Message::new("tool", "22");
                t.tool_call_id = Some("\r\u{202e}c1".into());
                t.name = Some("n".repeat(5000));
                ex.messages.push(t);
                Ok(vec![ex])
            }
            "too-many" => Ok((0..max + 5).map(|i| one(format!("extra-{i}"))).collect()),
            "trap-next" => panic!("hostile loader panicked in next-page on purpose"),
            "escape" => {
                let mut ex = one("escape".into());
                for (key, path) in [
                    ("granted", "/data/secret.txt"),
                    ("dotdot", "/data/../../../../etc/passwd"),
                    ("absolute", "/etc/passwd"),
                    ("relative", "../etc/passwd"),
                ] {
                    let v = match std::fs::read_to_string(path) {
                        Ok(s) => Value::Text(s),
                        Err(e) => Value::Text(format!("denied: {e}")),
                    };
                    ex.metadata.insert(key, v);
                }
                // Writing into a read-only grant must fail too.
                let wrote = std::fs::write("/data/pwned.txt", b"pwned").is_ok();
                ex.metadata.insert("wrote", Value::Bool(wrote));
                Ok(vec![ex])
            }
            // Opening a FIFO for reading blocks until a writer comes: the host must refuse it.
            "fifo" => {
                let mut ex = one("fifo".into());
                let v = match std::fs::read_to_string("/data/fifo") {
                    Ok(s) => Value::Text(s),
                    Err(e) => Value::Text(format!("denied: {e}")),
                };
                ex.metadata.insert("fifo", v);
                let plain = std::fs::read_to_string("/data/secret.txt").unwrap_or_default();
                ex.metadata.insert("plain", Value::Text(plain));
                Ok(vec![ex])
            }
            other => Err(Error::config(format!("unknown mode `{other}`"))),
        }
    }
}

galley_sdk::export_data_loader!(Hostile);
