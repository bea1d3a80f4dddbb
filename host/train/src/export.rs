//! What a run leaves for the ecosystem: LoRA adapters in PEFT's layout (adapter_config.json +
//! adapter_model.safetensors, PEFT's key names and config fields, so `PeftModel.from_pretrained`
//! loads them) and a merged model as an HF checkpoint (model.safetensors, config.json,
//! tokenizer.json, tokenizer_config.json with the chat template) that `galley infer` and
//! transformers load.

use crate::config::PeftSection;
use crate::error::{Result, file_err};
use crate::model::TrainModel;
use candle_core::Tensor;
use galley_model::{ChatTemplate, LlamaConfig, RopeScaling, TextLayout, Tokenizer};
use serde_json::json;
use std::collections::HashMap;
use std::path::Path;

/// The adapter_config.json PEFT writes for a LoRA on a causal LM. Over a multimodal base
/// the targets are a pattern that only the language model's modules match: PEFT matches a
/// list of names in the vision tower too, and would add LoRA modules galley never trained.
pub fn adapter_config(
    peft: &PeftSection,
    base: &str,
    targets: &[String],
    layout: TextLayout,
) -> serde_json::Value {
    let mut targets = targets.to_vec();
    targets.sort();
    let targets = match layout {
        TextLayout::CausalLm | TextLayout::Bare => json!(targets),
        _ => json!(format!(
            r"model\.language_model\.layers\.\d+\.(self_attn|mlp)\.({})",
            targets.join("|")
        )),
    };
    json!({
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base,
        "r": peft.r,
        "lora_alpha": peft.lora_alpha,
        "lora_dropout": peft.lora_dropout,
        "target_modules": targets,
        "bias": "none",
        "fan_in_fan_out": false,
        "inference_mode": true,
        "init_lora_weights": true,
        "use_rslora": false,
        "use_dora": false,
        "modules_to_save": null,
        "layers_to_transform": null,
        "layers_pattern": null,
        "rank_pattern": {},
        "alpha_pattern": {},
        "revision": null,
        "auto_mapping": null,
    })
}

/// Writes the adapters of `model` into `dir` in PEFT's layout, keyed as PEFT names the
/// modules of `base` (a multimodal base's language model sits at `model.language_model.`,
/// where transformers 5 builds it, whichever spelling its files use).
pub fn save_adapter(
    model: &TrainModel,
    peft: &PeftSection,
    (base, layout): (&str, TextLayout),
    dir: &Path,
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| file_err(dir, e))?;
    // PEFT's keys are `base_model.model.` and the module name transformers 5 builds.
    let key = |name: &str| match (layout, name.strip_prefix("base_model.model.")) {
        (TextLayout::CausalLm, _) | (_, None) => name.to_string(),
        // PEFT over a bare base model (`AutoModel`) names its modules without `model.`.
        (TextLayout::Bare, Some(module)) => {
            format!("base_model.model.{}", TextLayout::Bare.file_name(module))
        }
        (_, Some(module)) => format!(
            "base_model.model.{}",
            TextLayout::ModelFirst.file_name(module)
        ),
    };
    let tensors: HashMap<String, Tensor> = model
        .trainable
        .iter()
        .filter(|p| p.name.contains(".lora_"))
        .map(|p| (key(&p.name), p.var.as_tensor().clone()))
        .collect();
    let path = dir.join("adapter_model.safetensors");
    candle_core::safetensors::save(&tensors, &path).map_err(|e| file_err(&path, e))?;
    let cfg = adapter_config(peft, base, &peft.target_modules, layout);
    let cpath = dir.join("adapter_config.json");
    std::fs::write(&cpath, serde_json::to_string_pretty(&cfg).expect("json"))
        .map_err(|e| file_err(&cpath, e))
}

/// config.json for `c` as transformers writes a LlamaForCausalLM (Qwen2/3 and Mistral map to
/// their own architectures).
pub fn hf_config(c: &LlamaConfig) -> serde_json::Value {
    use galley_model::Family;
    let (arch, model_type) = match c.family {
        Family::Qwen2 => ("Qwen2ForCausalLM", "qwen2"),
        Family::Qwen3 => ("Qwen3ForCausalLM", "qwen3"),
        Family::Mistral => ("MistralForCausalLM", "mistral"),
        Family::Gemma3 => ("Gemma3ForCausalLM", "gemma3_text"),
        Family::Gemma2 => ("Gemma2ForCausalLM", "gemma2"),
        Family::SmolLM3 => ("SmolLM3ForCausalLM", "smollm3"),
        _ => ("LlamaForCausalLM", "llama"),
    };
    let mut v = json!({
        "architectures": [arch],
        "model_type": model_type,
        "vocab_size": c.vocab_size,
        "hidden_size": c.hidden_size,
        "intermediate_size": c.intermediate_size,
        "num_hidden_layers": c.num_layers,
        "num_attention_heads": c.num_heads,
        "num_key_value_heads": c.num_kv_heads,
        "head_dim": c.head_dim,
        "rms_norm_eps": c.rms_norm_eps,
        "rope_theta": c.rope_theta,
        "max_position_embeddings": c.max_position_embeddings,
        "tie_word_embeddings": c.tie_word_embeddings,
        "attention_bias": c.qkv_bias,
        "mlp_bias": c.mlp_bias,
        "hidden_act": "silu",
        "torch_dtype": "float32",
        "bos_token_id": c.bos_token_id,
        "eos_token_id": if c.eos_token_ids.len() == 1 { json!(c.eos_token_ids[0]) } else { json!(c.eos_token_ids) },
    });
    // A GGUF's per-frequency factors, said as the Llama 3.1 settings that give them.
    let fitted;
    let scaling = match &c.rope_scaling {
        RopeScaling::Factors(f) => {
            fitted = galley_model::layers::rotary::llama3_from_factors(c, f);
            fitted.as_ref().unwrap_or(&c.rope_scaling)
        }
        other => other,
    };
    if c.family.is_gemma() {
        // transformers 4's keys, which transformers 5 reads into `rope_parameters` too.
        let obj = v.as_object_mut().expect("an object");
        obj.remove("hidden_act");
        obj.remove("mlp_bias");
        obj.insert("hidden_activation".into(), json!("gelu_pytorch_tanh"));
        // An integer where it is one: transformers 5 validates the field as `int` and refuses
        // `24.0`.
        let scalar = c.query_pre_attn_scalar.unwrap_or(c.head_dim as f64);
        obj.insert(
            "query_pre_attn_scalar".into(),
            match scalar.fract() == 0.0 && scalar > 0.0 {
                true => json!(scalar as u64),
                false => json!(scalar),
            },
        );
        if let Some(s) = &c.sliding {
            let types: Vec<&str> = s
                .layers
                .iter()
                .map(|&x| {
                    if x {
                        "sliding_attention"
                    } else {
                        "full_attention"
                    }
                })
                .collect();
            obj.insert("sliding_window".into(), json!(s.window));
            obj.insert("layer_types".into(), json!(types));
            if c.family == Family::Gemma3 {
                obj.insert("rope_local_base_freq".into(), json!(s.rope_theta));
            }
        }
        if c.family == Family::Gemma2 {
            // Both written, `null` where off: transformers turns an absent cap on.
            obj.insert("attn_logit_softcapping".into(), json!(c.attn_softcap));
            obj.insert("final_logit_softcapping".into(), json!(c.final_softcap));
        }
    }
    if let Some(n) = &c.no_rope {
        // transformers' form: 1 where a layer rotates.
        let flags: Vec<u8> = n.iter().map(|&none| u8::from(!none)).collect();
        v["no_rope_layers"] = json!(flags);
        v["use_sliding_window"] = json!(false);
        // transformers defaults SmolLM3's padding id to 128004, past a smaller vocabulary
        // (where it refuses to build the embeddings); a full one keeps the default.
        if c.vocab_size <= 128_004 {
            v["pad_token_id"] = serde_json::Value::Null;
        }
    }
    match scaling {
        RopeScaling::None => {}
        RopeScaling::Linear { factor } => {
            v["rope_scaling"] = json!({"rope_type": "linear", "factor": factor});
        }
        RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position_embeddings,
        } => {
            v["rope_scaling"] = json!({
                "rope_type": "llama3", "factor": factor, "low_freq_factor": low_freq_factor,
                "high_freq_factor": high_freq_factor,
                "original_max_position_embeddings": original_max_position_embeddings,
            });
        }
        // Per-frequency factors no Llama 3.1 settings give: config.json has no way to say
        // them (`save_checkpoint_dir` refuses before anything is written).
        RopeScaling::Factors(_) => {}
    }
    v
}

/// Writes tokenizer.json and tokenizer_config.json (with the chat template, if any).
pub fn save_tokenizer(tok: &Tokenizer, template: Option<&ChatTemplate>, dir: &Path) -> Result<()> {
    let path = dir.join("tokenizer.json");
    tok.inner()
        .save(&path, false)
        .map_err(|e| file_err(&path, e))?;
    let name = |id: Option<u32>| id.and_then(|i| tok.id_to_token(i));
    let mut tc = json!({
        "bos_token": name(tok.bos),
        "eos_token": name(tok.eos.first().copied()),
        "add_bos_token": tok.add_bos,
        "tokenizer_class": "PreTrainedTokenizerFast",
    });
    if let Some(t) = template {
        tc["chat_template"] = json!(t.source);
    }
    let cpath = dir.join("tokenizer_config.json");
    std::fs::write(&cpath, serde_json::to_string_pretty(&tc).expect("json"))
        .map_err(|e| file_err(&cpath, e))
}

/// Writes `named` tensors and `config` as an HF checkpoint folder.
pub fn save_checkpoint_dir(
    named: Vec<(String, Tensor)>,
    config: &LlamaConfig,
    dir: &Path,
) -> Result<()> {
    if let RopeScaling::Factors(f) = &config.rope_scaling
        && galley_model::layers::rotary::llama3_from_factors(config, f).is_none()
    {
        return Err(file_err(
            dir,
            "the model's rope_freqs factors match no Llama 3.1 rope_scaling, so config.json cannot say them",
        ));
    }
    std::fs::create_dir_all(dir).map_err(|e| file_err(dir, e))?;
    // Gemma's norms are held as `1 + weight` (galley's and llama.cpp's form): HF's is `weight`.
    let gemma = config.family.is_gemma();
    let mut map: HashMap<String, Tensor> = HashMap::with_capacity(named.len());
    for (name, t) in named {
        let t = match gemma && name.ends_with("norm.weight") {
            true => (t - 1.0)?,
            false => t,
        };
        map.insert(name, t);
    }
    let path = dir.join("model.safetensors");
    candle_core::safetensors::save(&map, &path).map_err(|e| file_err(&path, e))?;
    let cpath = dir.join("config.json");
    std::fs::write(
        &cpath,
        serde_json::to_string_pretty(&hf_config(config)).expect("json"),
    )
    .map_err(|e| file_err(&cpath, e))
}

/// The merged model (adapters folded into the weights) with its tokenizer.
pub fn save_merged(
    model: &TrainModel,
    tok: &Tokenizer,
    template: Option<&ChatTemplate>,
    dir: &Path,
) -> Result<()> {
    save_checkpoint_dir(model.merged_tensors()?, &model.config, dir)?;
    save_tokenizer(tok, template, dir)
}

/// Folds the PEFT adapters in `adapters` (in order) into the model at `base` and writes the
/// merged model (an HF folder with its tokenizer) to `dir`, for tools that load no adapters.
pub fn merge_adapter(base: &Path, adapters: &[std::path::PathBuf], dir: &Path) -> Result<()> {
    let dev = candle_core::Device::Cpu;
    let opts = galley_model::LoadOptions {
        dequantize: true,
        ..Default::default()
    };
    let ck = galley_model::open_adapted(base, adapters, opts, &dev)?;
    let peft = PeftSection::default();
    let build = crate::model::Build {
        tuning: crate::config::Tuning::Full,
        peft: &peft,
        seed: 0,
    };
    let model = TrainModel::load(&ck.weights, ck.config, &build, &dev)?;
    save_merged(&model, &ck.tokenizer, ck.template.as_ref(), dir)
}
