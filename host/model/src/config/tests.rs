//! The config readers against configs as they were published (transformers 4 and 5
//! layouts, Google's Gemma files, SmolLM3-3B's) and the keys galley refuses.

use super::*;

fn parse(json: &str) -> std::result::Result<LlamaConfig, String> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.json");
    std::fs::write(&path, json).unwrap();
    LlamaConfig::from_hf_json(&path).map_err(|e| e.to_string())
}

/// Gemma 3's config.json as transformers 4 wrote Google's checkpoints: `rope_theta`,
/// `rope_local_base_freq` and `rope_scaling` at the top, the sliding layers said by
/// `sliding_window_pattern` alone (every sixth layer global), two end-of-turn ids.
#[test]
fn a_transformers_4_gemma3_config_reads_its_window_pattern_and_rope_bases() {
    let c = parse(
        r#"{"architectures": ["Gemma3ForCausalLM"], "vocab_size": 262144,
        "hidden_size": 1152, "intermediate_size": 6912, "num_hidden_layers": 26,
        "num_attention_heads": 4, "num_key_value_heads": 1, "head_dim": 256,
        "rms_norm_eps": 1e-06, "rope_theta": 1000000.0, "rope_local_base_freq": 10000.0,
        "rope_scaling": {"rope_type": "linear", "factor": 8.0}, "sliding_window": 512,
        "sliding_window_pattern": 6, "query_pre_attn_scalar": 256,
        "hidden_activation": "gelu_pytorch_tanh", "final_logit_softcapping": null,
        "attn_logit_softcapping": null, "max_position_embeddings": 32768,
        "bos_token_id": 2, "eos_token_id": [1, 106]}"#,
    )
    .unwrap();
    assert_eq!(c.family, Family::Gemma3);
    assert!(c.qk_norm);
    let s = c.sliding.as_ref().unwrap();
    assert_eq!((s.window, s.rope_theta), (512, 10_000.0));
    let globals: Vec<usize> = (0..26).filter(|&i| !s.layers[i]).collect();
    assert_eq!(globals, [5, 11, 17, 23]);
    assert_eq!(c.window(0), Some(512));
    assert_eq!(c.window(5), None);
    assert_eq!(c.rope_theta, 1_000_000.0);
    assert_eq!(c.rope_scaling, RopeScaling::Linear { factor: 8.0 });
    assert_eq!(c.eos_token_ids, [1, 106]);
    assert_eq!(c.attn_scale(), 1.0 / 16.0);
}

/// What galley does not compute is refused by key, not run wrongly; a file that is not
/// JSON says where.
#[test]
fn gemma_keys_galley_does_not_implement_are_refused_by_name() {
    let e = parse("{\"architectures\": [\"Gemma3ForCausalLM\"],\n  \"vocab_size\": }").unwrap_err();
    assert!(e.contains("line 2"), "{e}");
    let base = r#""architectures": ["Gemma3ForCausalLM"], "vocab_size": 64, "hidden_size": 32,
        "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2"#;
    for (extra, key) in [
        (
            r#""final_logit_softcapping": 30.0"#,
            "final_logit_softcapping",
        ),
        (
            r#""attn_logit_softcapping": 50.0"#,
            "attn_logit_softcapping",
        ),
        (r#""hidden_activation": "silu""#, "hidden_activation"),
        (
            r#""layer_types": ["sliding_attention", "chunked"]"#,
            "layer_types[1]",
        ),
    ] {
        let e = parse(&format!("{{{base}, {extra}}}")).unwrap_err();
        assert!(e.contains(key) && e.contains("config.json"), "{key}: {e}");
    }
    // EmbeddingGemma's attention both ways is read (embeddings only), no longer refused.
    let c = parse(&format!(
        r#"{{{base}, "num_key_value_heads": 1, "use_bidirectional_attention": true}}"#
    ))
    .unwrap();
    assert!(c.bidirectional);
    // In a multimodal config, the same keys are named where they are.
    let e = parse(
        r#"{"architectures": ["Gemma3ForConditionalGeneration"],
        "text_config": {"final_logit_softcapping": 30.0}}"#,
    )
    .unwrap_err();
    assert!(e.contains("`text_config.final_logit_softcapping`"), "{e}");
    // Another family without its required keys, and a multimodal config without its
    // language model's.
    let e = parse(r#"{"architectures": ["LlamaForCausalLM"], "vocab_size": 64}"#).unwrap_err();
    assert!(e.contains("key `num_attention_heads` is missing"), "{e}");
    let e = parse(r#"{"architectures": ["Gemma3ForConditionalGeneration"]}"#).unwrap_err();
    assert!(e.contains("key `text_config` is missing"), "{e}");
    let e = parse(
        "{\"architectures\": [\"Gemma3ForConditionalGeneration\"],\n\"text_config\": {\n\"hidden_size\": \"wide\"}}",
    )
    .unwrap_err();
    assert!(e.contains("line 3") && e.contains("config.json"), "{e}");
    let e = parse(r#"{"architectures": ["PaliGemmaForConditionalGeneration"]}"#).unwrap_err();
    assert!(e.contains("Gemma3ForConditionalGeneration"), "{e}");
}

/// gemma-2-2b-it's config.json as transformers 4.42 wrote it: even layers slide, both
/// rotate with one base, scores capped at 50 and logits at 30; `null` turns a cap off,
/// and an absent one is on at transformers' default.
#[test]
fn gemma2_configs_read_their_caps_and_alternating_windows() {
    let base = r#""architectures": ["Gemma2ForCausalLM"], "attention_bias": false,
        "bos_token_id": 2, "cache_implementation": "hybrid", "eos_token_id": [1, 107],
        "head_dim": 256, "hidden_act": "gelu_pytorch_tanh",
        "hidden_activation": "gelu_pytorch_tanh", "hidden_size": 2304,
        "intermediate_size": 9216, "max_position_embeddings": 8192, "model_type": "gemma2",
        "num_attention_heads": 8, "num_hidden_layers": 26, "num_key_value_heads": 4,
        "pad_token_id": 0, "query_pre_attn_scalar": 256, "rms_norm_eps": 1e-06,
        "rope_theta": 10000.0, "sliding_window": 4096, "vocab_size": 256000"#;
    let c = parse(&format!(
        r#"{{{base}, "attn_logit_softcapping": 50.0, "final_logit_softcapping": 30.0}}"#
    ))
    .unwrap();
    assert_eq!(c.family, Family::Gemma2);
    assert!(!c.qk_norm && c.tie_word_embeddings);
    assert_eq!((c.attn_softcap, c.final_softcap), (Some(50.0), Some(30.0)));
    let s = c.sliding.as_ref().unwrap();
    assert_eq!((s.window, s.rope_theta), (4096, 10_000.0));
    let sliding: Vec<usize> = (0..26).filter(|&i| s.layers[i]).collect();
    assert_eq!(sliding, (0..26).step_by(2).collect::<Vec<_>>());
    assert_eq!(c.attn_scale(), 1.0 / 16.0);
    assert_eq!(c.eos_token_ids, [1, 107]);
    let c = parse(&format!(
        r#"{{{base}, "attn_logit_softcapping": null, "final_logit_softcapping": 30.0}}"#
    ))
    .unwrap();
    assert_eq!((c.attn_softcap, c.final_softcap), (None, Some(30.0)));
    let c = parse(&format!("{{{base}}}")).unwrap();
    assert_eq!((c.attn_softcap, c.final_softcap), (Some(50.0), Some(30.0)));
    let e = parse(&format!(r#"{{{base}, "final_logit_softcapping": -1.0}}"#)).unwrap_err();
    assert!(
        e.contains("final_logit_softcapping") && e.contains("positive"),
        "{e}"
    );
}

/// SmolLM3-3B's config.json: its NoPE layers listed (every fourth), or said by the
/// interval alone; a sliding window or a flag other than 0/1 refused by key.
#[test]
fn smollm3_configs_say_which_layers_go_without_rope() {
    let flags: Vec<String> = (0..36)
        .map(|i| if (i + 1) % 4 == 0 { "0" } else { "1" }.to_string())
        .collect();
    let base = r#""architectures": ["SmolLM3ForCausalLM"], "attention_bias": false,
        "bos_token_id": null, "eos_token_id": 128012, "hidden_act": "silu",
        "hidden_size": 2048, "intermediate_size": 11008, "max_position_embeddings": 65536,
        "max_window_layers": 28, "mlp_bias": false, "model_type": "smollm3",
        "num_attention_heads": 16, "num_hidden_layers": 36, "num_key_value_heads": 4,
        "pad_token_id": 128004, "rms_norm_eps": 1e-06, "rope_scaling": null,
        "rope_theta": 5000000.0, "sliding_window": null, "tie_word_embeddings": true,
        "vocab_size": 128256"#;
    let listed = parse(&format!(
        r#"{{{base}, "no_rope_layer_interval": 4, "use_sliding_window": false,
        "no_rope_layers": [{}]}}"#,
        flags.join(",")
    ))
    .unwrap();
    assert_eq!(listed.family, Family::SmolLM3);
    let nope: Vec<usize> = (0..36).filter(|&i| !listed.rotates(i)).collect();
    assert_eq!(nope, (3..36).step_by(4).collect::<Vec<_>>());
    assert_eq!(listed.bos_token_id, None);
    let by_interval = parse(&format!("{{{base}}}")).unwrap();
    assert_eq!(by_interval.no_rope, listed.no_rope);
    let e = parse(&format!(r#"{{{base}, "use_sliding_window": true}}"#)).unwrap_err();
    assert!(e.contains("use_sliding_window"), "{e}");
    let e = parse(&format!(r#"{{{base}, "no_rope_layers": [1, 2]}}"#)).unwrap_err();
    assert!(e.contains("no_rope_layers[1]"), "{e}");
    let e = parse(&format!(r#"{{{base}, "no_rope_layers": [1, 0]}}"#)).unwrap_err();
    assert!(
        e.contains("no_rope_layers") && e.contains("36 layers"),
        "{e}"
    );
}

/// gemma-3-4b-it's config.json as Google published it: six keys under `text_config`,
/// everything else from transformers' `Gemma3TextConfig` defaults, the end-of-turn ids at
/// the top.
#[test]
fn gemma3_4b_multimodal_config_reads_transformers_defaults() {
    let c = parse(
        r#"{"architectures": ["Gemma3ForConditionalGeneration"],
        "boi_token_index": 255999, "eoi_token_index": 256000, "eos_token_id": [1, 106],
        "image_token_index": 262144, "initializer_range": 0.02, "mm_tokens_per_image": 256,
        "model_type": "gemma3",
        "text_config": {"hidden_size": 2560, "intermediate_size": 10240,
            "model_type": "gemma3_text", "num_hidden_layers": 34,
            "rope_scaling": {"factor": 8.0, "rope_type": "linear"}, "sliding_window": 1024},
        "torch_dtype": "bfloat16", "transformers_version": "4.50.0.dev0",
        "vision_config": {"hidden_size": 1152, "image_size": 896, "intermediate_size": 4304,
            "model_type": "siglip_vision_model", "num_attention_heads": 16,
            "num_hidden_layers": 27, "patch_size": 14, "vision_use_head": false}}"#,
    )
    .unwrap();
    assert_eq!(c.family, Family::Gemma3);
    assert_eq!(
        (
            c.vocab_size,
            c.hidden_size,
            c.intermediate_size,
            c.num_layers
        ),
        (262_208, 2560, 10240, 34)
    );
    assert_eq!((c.num_heads, c.num_kv_heads, c.head_dim), (8, 4, 256));
    assert_eq!(c.max_position_embeddings, 131_072);
    assert!(c.tie_word_embeddings);
    assert_eq!(
        (c.bos_token_id, c.eos_token_ids.clone()),
        (Some(2), vec![1, 106])
    );
    assert_eq!(c.rope_theta, 1_000_000.0);
    assert_eq!(c.rope_scaling, RopeScaling::Linear { factor: 8.0 });
    let s = c.sliding.as_ref().unwrap();
    assert_eq!((s.window, s.rope_theta), (1024, 10_000.0));
    let globals: Vec<usize> = (0..34).filter(|&i| !s.layers[i]).collect();
    assert_eq!(globals, [5, 11, 17, 23, 29]);
    assert_eq!(c.attn_scale(), 1.0 / 16.0);
}
