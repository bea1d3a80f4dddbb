//! galley's side of `bench/tool_turns_parity.py`: the token ids of the tool turns GRPO puts
//! after an assistant turn's calls (`galley_train::tool_turns::tool_suffix`), for each line
//! of stdin (`{"results": [tool messages]}`), with MODEL's tokenizer and TEMPLATE.
//!
//! Run: `tool-turns-parity MODEL TEMPLATE < cases.jsonl` (one `{"ids": [...]}` line out per
//! line in).

use galley_core::Message;
use galley_model::ChatTemplate;
use std::io::BufRead;
use std::path::PathBuf;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, model, template] = &args[..] else {
        panic!("usage: tool-turns-parity MODEL TEMPLATE < cases.jsonl");
    };
    let ck = galley_model::open(&PathBuf::from(model), Default::default()).expect("model");
    let tok = ck.tokenizer;
    let source = std::fs::read_to_string(template).expect("template");
    let end_text = "<|im_end|>";
    let end = tok.token_to_id(end_text).expect("a ChatML vocabulary");
    let t = ChatTemplate::new(&source, template, "", end_text).expect("template parses");
    for line in std::io::stdin().lock().lines() {
        let case: serde_json::Value = serde_json::from_str(&line.unwrap()).unwrap();
        let results: Vec<Message> = serde_json::from_value(case["results"].clone()).unwrap();
        let (ids, _) =
            galley_train::tool_turns::tool_suffix(&tok, &t, None, &results, end).expect("suffix");
        println!("{}", serde_json::json!({ "ids": ids }));
    }
}
