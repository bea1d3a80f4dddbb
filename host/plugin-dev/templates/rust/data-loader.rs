use galley_sdk::data_loader::DataLoader;
use galley_sdk::{Config, Error, Example, Message, Value};

/// `count` questions "What is N + 1?", with the answer in the metadata.
struct Counting {
    next: i64,
    count: i64,
}

impl DataLoader for Counting {
    fn new(config: &Config, _seed: u64) -> Result<Self, Error> {
        let count = config.get_f64("count").unwrap_or(10.0);
        if count < 0.0 {
            return Err(Error::config("`count` must not be negative"));
        }
        Ok(Self { next: 0, count: count as i64 })
    }

    fn next_page(&mut self, max: usize) -> Result<Vec<Example>, Error> {
        let mut page = Vec::new();
        while page.len() < max && self.next < self.count {
            let n = self.next;
            self.next += 1;
            let mut ex = Example {
                id: format!("count-{n}"),
                messages: vec![Message::new("user", format!("What is {n} + 1?"))],
                ..Default::default()
            };
            ex.metadata.insert("answer", Value::Int(n + 1));
            page.push(ex);
        }
        Ok(page)
    }
}

galley_sdk::export_data_loader!(Counting);
