//! Test support for this crate's and other crates' tests (hidden from the docs): a tiny chat
//! model made on the spot — a byte-level BPE tokenizer trained on a few sentences (with
//! ChatML special tokens), random Llama weights and a ChatML template — written as an HF
//! checkpoint folder so it loads exactly like a downloaded one.

use crate::config::InitSection;
use crate::model::{TrainModel, init_weights};
use std::path::Path;

pub const CHATML: &str = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";

/// Writes the tiny chat model into `dir`, its tokenizer trained on `text` lines.
pub fn tiny_chat_model_from(dir: &Path, text: &[String]) {
    tiny_chat_model_with(dir, text, &[]);
}

/// [`tiny_chat_model_from`] with `added` as whole tokens of the vocabulary (not special:
/// they are text, as Qwen's `<tool_call>` is).
pub fn tiny_chat_model_with(dir: &Path, text: &[String], added: &[&str]) {
    let tok = crate::train_tokenizer(&[text.join("\n")], 300, 1).expect("tokenizer trains");
    let mut inner = tok.inner().clone();
    inner.add_special_tokens(&[
        tokenizers::AddedToken::from("<|im_start|>", true),
        tokenizers::AddedToken::from("<|im_end|>", true),
    ]);
    let added: Vec<_> = added
        .iter()
        .map(|t| tokenizers::AddedToken::from(t.to_string(), false))
        .collect();
    inner.add_tokens(&added);
    let tc = serde_json::json!({"chat_template": CHATML, "eos_token": "<|im_end|>"});
    tiny_model_with_tokenizer(dir, &inner, None, "<|im_end|>", &tc);
}

/// Writes a tiny random model for `tokenizer` (its embeddings as many rows as it has tokens)
/// into `dir`, with `tokenizer_config` (chat template, special tokens) beside it.
pub fn tiny_model_with_tokenizer(
    dir: &Path,
    tokenizer: &tokenizers::Tokenizer,
    bos: Option<&str>,
    eos: &str,
    tokenizer_config: &serde_json::Value,
) {
    let vocab = tokenizer.get_vocab_size(true);
    let eos = tokenizer
        .token_to_id(eos)
        .expect("the EOS token is in the vocabulary");
    let init = InitSection {
        hidden_size: 32,
        intermediate_size: 64,
        num_layers: 2,
        num_heads: 4,
        num_kv_heads: 2,
        max_position_embeddings: 256,
        ..Default::default()
    };
    let bos = bos.map(|b| {
        tokenizer
            .token_to_id(b)
            .expect("the BOS token is in the vocabulary")
    });
    let cfg = TrainModel::init_config(&init, vocab, bos, vec![eos]);
    let w = init_weights(&cfg, 0.02, 3).expect("weights");
    crate::export::save_checkpoint_dir(w, &cfg, dir).expect("checkpoint written");
    tokenizer
        .save(dir.join("tokenizer.json"), false)
        .expect("tokenizer written");
    std::fs::write(
        dir.join("tokenizer_config.json"),
        tokenizer_config.to_string(),
    )
    .expect("config written");
}

/// The tiny chat model with a tokenizer trained on short number sentences.
pub fn tiny_chat_model(dir: &Path) {
    let text: Vec<String> = (0..200)
        .map(|i| {
            format!(
                "the number {i} is {} and the answer is yes or no",
                i * 3 % 17
            )
        })
        .collect();
    tiny_chat_model_from(dir, &text);
}

/// A Hermes-style tool template (as Qwen 2.5's writes calls) whose assistant turn begins as
/// its generation prompt ends (`assistant\n`), so what SFT teaches is what sampling continues.
pub const HERMES_TEMPLATE: &str = r#"{%- if tools %}<|im_start|>system
You may call these functions:
<tools>
{%- for tool in tools %}
{{ tool | tojson }}
{%- endfor %}
</tools><|im_end|>
{% endif %}
{%- for m in messages %}
{%- if m.role == "tool" %}<|im_start|>user
<tool_response>
{{ m.content }}
</tool_response><|im_end|>
{% elif m.tool_calls %}<|im_start|>assistant
{% for c in m.tool_calls %}<tool_call>
{"name": "{{ c.function.name }}", "arguments": {{ c.function.arguments | tojson }}}
</tool_call>{% endfor %}<|im_end|>
{% else %}<|im_start|>{{ m.role }}
{{ m.content }}<|im_end|>
{% endif %}
{%- endfor %}
{%- if add_generation_prompt %}<|im_start|>assistant
{% endif %}"#;
