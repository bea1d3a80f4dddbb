//! A tiny chat model made on the spot: a byte-level BPE tokenizer trained on a few sentences
//! (with ChatML special tokens), random Llama weights, and a ChatML template, written as an HF
//! checkpoint folder so it loads exactly like a downloaded one.

#![allow(dead_code)]

use galley_train::config::InitSection;
use galley_train::model::{TrainModel, init_weights};
use std::path::Path;

pub const CHATML: &str = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";

pub fn tiny_chat_model(dir: &Path) {
    let text: Vec<String> = (0..200)
        .map(|i| {
            format!(
                "the number {i} is {} and the answer is yes or no",
                i * 3 % 17
            )
        })
        .collect();
    let tok = galley_train::train_tokenizer(&[text.join("\n")], 300, 1).unwrap();
    let mut inner = tok.inner().clone();
    inner.add_special_tokens(&[
        tokenizers::AddedToken::from("<|im_start|>", true),
        tokenizers::AddedToken::from("<|im_end|>", true),
    ]);
    let vocab = inner.get_vocab_size(true);
    let eos = inner.token_to_id("<|im_end|>").unwrap();
    let init = InitSection {
        hidden_size: 32,
        intermediate_size: 64,
        num_layers: 2,
        num_heads: 4,
        num_kv_heads: 2,
        max_position_embeddings: 256,
        ..Default::default()
    };
    let cfg = TrainModel::init_config(&init, vocab, None, vec![eos]);
    let w = init_weights(&cfg, 0.02, 3).unwrap();
    galley_train::export::save_checkpoint_dir(w, &cfg, dir).unwrap();
    inner.save(dir.join("tokenizer.json"), false).unwrap();
    let tc = serde_json::json!({"chat_template": CHATML, "eos_token": "<|im_end|>"});
    std::fs::write(dir.join("tokenizer_config.json"), tc.to_string()).unwrap();
}

pub fn write_jsonl(path: &Path, lines: &[serde_json::Value]) {
    let text: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
    std::fs::write(path, text.join("\n") + "\n").unwrap();
}

pub fn chat(q: &str, a: &str) -> serde_json::Value {
    serde_json::json!({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]})
}
