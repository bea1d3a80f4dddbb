//! Building the trainable model: from checkpoint weights (trained or frozen projections,
//! LoRA adapters initialised as PEFT does, QLoRA's frozen weights kept in GGUF blocks, the
//! frozen q|k|v and gate|up weights stacked for the CPU's fused products), or from random
//! initial weights for pre-training.

use super::*;

/// How to build the model.
pub struct Build<'a> {
    pub tuning: Tuning,
    pub peft: &'a PeftSection,
    pub seed: u64,
}

fn quant_dtype(q: QuantKind) -> GgmlDType {
    match q {
        QuantKind::Q4_0 => GgmlDType::Q4_0,
        QuantKind::Q4_1 => GgmlDType::Q4_1,
        QuantKind::Q8_0 => GgmlDType::Q8_0,
    }
}

/// Builds the trainable model from checkpoint weights.
pub struct Loader<'a> {
    w: &'a Weights,
    build: &'a Build<'a>,
    dev: &'a Device,
    trainable: Vec<Trainable>,
    rng: StdRng,
}

impl Loader<'_> {
    fn var(&mut self, name: &str, t: Tensor) -> Result<Trainable> {
        let var = Var::from_tensor(&t.to_dtype(DType::F32)?)?;
        // The fused CPU ops write gradients into this buffer; on a GPU the optimizer keeps
        // autograd's gradient tensors instead.
        let n = if self.dev.is_cpu() {
            var.elem_count()
        } else {
            0
        };
        let tr = Trainable {
            name: name.to_string(),
            grad: crate::grad::Grad::zeros(n),
            var,
        };
        self.trainable.push(tr.clone());
        Ok(tr)
    }

    fn param(&mut self, name: &str, shape: &[usize]) -> Result<Param> {
        let t = self.w.tensor(name, shape, self.dev)?;
        Ok(if self.build.tuning == Tuning::Full {
            Param::Trained(self.var(name, t)?)
        } else {
            Param::Fixed(t)
        })
    }

    fn proj(
        &mut self,
        prefix: &str,
        module: &str,
        out: usize,
        inp: usize,
        bias: bool,
    ) -> Result<Proj> {
        let name = format!("{prefix}.{module}.weight");
        let bname = format!("{prefix}.{module}.bias");
        if self.build.tuning == Tuning::Full {
            let w = self.w.tensor(&name, &[out, inp], self.dev)?;
            let w = self.var(&name, w)?;
            let bias = match bias {
                true => {
                    let b = self.w.tensor(&bname, &[out], self.dev)?;
                    Some(self.var(&bname, b)?.var)
                }
                false => None,
            };
            return Ok(Proj::Trained { w, bias });
        }
        let frozen = match (self.build.tuning, self.w.linear(&name, out, inp, self.dev)?) {
            (Tuning::Qlora, LinearWeight::Quant(QMatMul::QTensor(q))) => Frozen::Quant(q),
            (Tuning::Qlora, LinearWeight::Dense(t)) if inp.is_multiple_of(32) => Frozen::Quant(
                Arc::new(QTensor::quantize(&t, quant_dtype(self.build.peft.quant))?),
            ),
            (_, LinearWeight::Dense(t)) => Frozen::Dense(t),
            (_, LinearWeight::Quant(QMatMul::QTensor(q))) => Frozen::Dense(q.dequantize(self.dev)?),
            (_, LinearWeight::Quant(QMatMul::Tensor(t) | QMatMul::TensorF16(t))) => {
                Frozen::Dense(t.to_dtype(DType::F32)?)
            }
        };
        let bias = match bias {
            true => Some(self.w.tensor(&bname, &[out], self.dev)?),
            false => None,
        };
        let lora = if self.build.peft.target_modules.iter().any(|m| m == module) {
            let r = self.build.peft.r;
            // PEFT's default init: A Kaiming-uniform (bound 1/sqrt(in)), B zeros, so training
            // starts from the base model exactly.
            let bound = 1.0 / (inp as f64).sqrt();
            let a: Vec<f32> = (0..r * inp)
                .map(|_| ((self.rng.random::<f64>() * 2.0 - 1.0) * bound) as f32)
                .collect();
            let a = Tensor::from_vec(a, (r, inp), self.dev)?;
            let b = Tensor::zeros((out, r), DType::F32, self.dev)?;
            let pre = format!("base_model.model.{prefix}.{module}");
            Some(Lora {
                a: self.var(&format!("{pre}.lora_A.weight"), a)?,
                b: self.var(&format!("{pre}.lora_B.weight"), b)?,
                scale: self.build.peft.lora_alpha / r as f64,
                dropout: self.build.peft.lora_dropout,
            })
        } else {
            None
        };
        Ok(Proj::Frozen {
            w: frozen,
            bias,
            lora,
        })
    }
}

impl TrainModel {
    /// Builds from checkpoint weights (dequantized unless QLoRA keeps the blocks).
    pub fn load(w: &Weights, config: LlamaConfig, build: &Build, dev: &Device) -> Result<Self> {
        if build.tuning != Tuning::Full {
            for m in &build.peft.target_modules {
                if !MODULES.contains(&m.as_str()) {
                    return Err(TrainError::UnknownTarget {
                        module: m.clone(),
                        known: MODULES.join(", "),
                    });
                }
            }
        }
        let c = &config;
        let (d, hd) = (c.hidden_size, c.head_dim);
        let gemma = c.family.is_gemma();
        let mut l = Loader {
            w,
            build,
            dev,
            trainable: Vec::new(),
            rng: StdRng::seed_from_u64(galley_core::seed::derive_seed(
                build.seed,
                &[galley_core::seed::purpose::LORA_INIT],
            )),
        };
        let embed = l.param("model.embed_tokens.weight", &[c.vocab_size, d])?;
        let mut layers = Vec::with_capacity(c.num_layers);
        for i in 0..c.num_layers {
            let p = format!("model.layers.{i}");
            let attn = format!("{p}.self_attn");
            let mlp = format!("{p}.mlp");
            layers.push(Layer {
                input_norm: l.param(&format!("{p}.input_layernorm.weight"), &[d])?,
                q: l.proj(&attn, "q_proj", c.num_heads * hd, d, c.qkv_bias)?,
                k: l.proj(&attn, "k_proj", c.num_kv_heads * hd, d, c.qkv_bias)?,
                v: l.proj(&attn, "v_proj", c.num_kv_heads * hd, d, c.qkv_bias)?,
                o: l.proj(&attn, "o_proj", d, c.num_heads * hd, c.o_bias)?,
                q_norm: match c.qk_norm {
                    true => Some(l.param(&format!("{attn}.q_norm.weight"), &[hd])?),
                    false => None,
                },
                k_norm: match c.qk_norm {
                    true => Some(l.param(&format!("{attn}.k_norm.weight"), &[hd])?),
                    false => None,
                },
                attn_out_norm: match gemma {
                    true => Some(l.param(&format!("{p}.post_attention_layernorm.weight"), &[d])?),
                    false => None,
                },
                post_norm: l.param(
                    &format!(
                        "{p}.{}.weight",
                        match gemma {
                            true => "pre_feedforward_layernorm",
                            false => "post_attention_layernorm",
                        }
                    ),
                    &[d],
                )?,
                mlp_out_norm: match gemma {
                    true => Some(l.param(&format!("{p}.post_feedforward_layernorm.weight"), &[d])?),
                    false => None,
                },
                gate: l.proj(&mlp, "gate_proj", c.intermediate_size, d, c.mlp_bias)?,
                up: l.proj(&mlp, "up_proj", c.intermediate_size, d, c.mlp_bias)?,
                down: l.proj(&mlp, "down_proj", d, c.intermediate_size, c.mlp_bias)?,
                qkv_stack: None,
                gate_up_stack: None,
            });
            if dev.is_cpu() {
                let layer = layers.last_mut().expect("just pushed");
                layer.qkv_stack = stack_frozen(&mut [&mut layer.q, &mut layer.k, &mut layer.v])?;
                layer.gate_up_stack = stack_frozen(&mut [&mut layer.gate, &mut layer.up])?;
            }
        }
        let norm = l.param("model.norm.weight", &[d])?;
        let lm_head = if c.tie_word_embeddings {
            None
        } else {
            let name = "lm_head.weight";
            let t = w.tensor(name, &[c.vocab_size, d], dev)?;
            Some(if build.tuning == Tuning::Full {
                Proj::Trained {
                    w: l.var(name, t)?,
                    bias: None,
                }
            } else {
                Proj::Frozen {
                    w: Frozen::Dense(t),
                    bias: None,
                    lora: None,
                }
            })
        };
        let rope = RopeTables::new(
            &galley_model::layers::rotary::inv_freq(c),
            c.max_position_embeddings,
            dev,
        )?;
        let rope_local = match &c.sliding {
            Some(s) => Some(RopeTables::new(
                &galley_model::layers::rotary::inv_freq(&LlamaConfig {
                    rope_theta: s.rope_theta,
                    rope_scaling: galley_model::RopeScaling::None,
                    ..c.clone()
                }),
                c.max_position_embeddings,
                dev,
            )?),
            None => None,
        };
        // Zero frequencies: every angle 0, a rotation that leaves q and k as they are.
        let rope_none = match &c.no_rope {
            Some(_) => Some(RopeTables::new(
                &vec![0.0; c.head_dim / 2],
                c.max_position_embeddings,
                dev,
            )?),
            None => None,
        };
        Ok(Self {
            kernels: match dev {
                Device::Cpu => Kernels::Fused,
                Device::Cuda(_) if cfg!(feature = "cuda") => Kernels::Cuda,
                _ => Kernels::Reference,
            },
            compute: if dev.is_cpu() {
                DType::F32
            } else {
                DType::BF16
            },
            config,
            embed,
            layers,
            norm,
            lm_head,
            rope,
            rope_local,
            rope_none,
            trainable: l.trainable,
            device: dev.clone(),
        })
    }

    /// A config for a model trained from scratch.
    pub fn init_config(
        init: &InitSection,
        vocab: usize,
        bos: Option<u32>,
        eos: Vec<u32>,
    ) -> LlamaConfig {
        LlamaConfig {
            family: Family::Llama,
            vocab_size: vocab,
            hidden_size: init.hidden_size,
            intermediate_size: init.intermediate_size,
            num_layers: init.num_layers,
            num_heads: init.num_heads,
            num_kv_heads: init.num_kv_heads,
            head_dim: init.hidden_size / init.num_heads,
            rms_norm_eps: 1e-5,
            rope_theta: init.rope_theta,
            rope_scaling: RopeScaling::None,
            max_position_embeddings: init.max_position_embeddings,
            tie_word_embeddings: init.tie_word_embeddings,
            qkv_bias: false,
            o_bias: false,
            mlp_bias: false,
            qk_norm: false,
            bos_token_id: bos,
            eos_token_ids: eos,
            sliding: None,
            query_pre_attn_scalar: None,
            attn_softcap: None,
            final_softcap: None,
            no_rope: None,
            bidirectional: false,
        }
    }
}

/// Frozen dense f32 weights of one input's projections stacked into one tensor, each
/// projection's weight becoming a view of its rows (no second copy): the fused product's
/// operand as it is. None (nothing changed) unless every one is frozen, dense and f32.
fn stack_frozen(projs: &mut [&mut Proj]) -> Result<Option<Tensor>> {
    let dense: Option<Vec<Tensor>> = projs
        .iter()
        .map(|p| match p {
            Proj::Frozen {
                w: Frozen::Dense(t),
                bias: None,
                ..
            } if t.dtype() == DType::F32 => Some(t.clone()),
            _ => None,
        })
        .collect();
    let Some(dense) = dense else {
        return Ok(None);
    };
    let stacked = Tensor::cat(&dense, 0)?;
    let mut at = 0;
    for (p, t) in projs.iter_mut().zip(&dense) {
        let rows = t.dim(0)?;
        if let Proj::Frozen { w, .. } = &mut **p {
            *w = Frozen::Dense(stacked.narrow(0, at, rows)?);
        }
        at += rows;
    }
    Ok(Some(stacked))
}

/// Random initial weights for pre-training, by HF name (GPT-2/Llama style: normal(0, std)
/// projections and embeddings, output projections scaled down by depth, norms at one).
pub fn init_weights(c: &LlamaConfig, std: f64, seed: u64) -> Result<Vec<(String, Tensor)>> {
    let mut rng = StdRng::seed_from_u64(seed);
    let dev = Device::Cpu;
    let mut normal = |shape: (usize, usize), s: f64| -> Result<Tensor> {
        let v: Vec<f32> = (0..shape.0 * shape.1)
            .map(|_| {
                // Box-Muller: rand 0.10 without rand_distr.
                let (u1, u2): (f64, f64) = (rng.random::<f64>().max(1e-12), rng.random());
                ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos() * s) as f32
            })
            .collect();
        Ok(Tensor::from_vec(v, shape, &dev)?)
    };
    let (d, hd, f) = (c.hidden_size, c.head_dim, c.intermediate_size);
    let out_std = std / (2.0 * c.num_layers as f64).sqrt();
    let mut w = vec![(
        "model.embed_tokens.weight".to_string(),
        normal((c.vocab_size, d), std)?,
    )];
    for i in 0..c.num_layers {
        let p = format!("model.layers.{i}");
        let ones = Tensor::ones(d, DType::F32, &dev)?;
        w.push((format!("{p}.input_layernorm.weight"), ones.clone()));
        w.push((format!("{p}.post_attention_layernorm.weight"), ones));
        w.push((
            format!("{p}.self_attn.q_proj.weight"),
            normal((c.num_heads * hd, d), std)?,
        ));
        w.push((
            format!("{p}.self_attn.k_proj.weight"),
            normal((c.num_kv_heads * hd, d), std)?,
        ));
        w.push((
            format!("{p}.self_attn.v_proj.weight"),
            normal((c.num_kv_heads * hd, d), std)?,
        ));
        w.push((
            format!("{p}.self_attn.o_proj.weight"),
            normal((d, c.num_heads * hd), out_std)?,
        ));
        w.push((format!("{p}.mlp.gate_proj.weight"), normal((f, d), std)?));
        w.push((format!("{p}.mlp.up_proj.weight"), normal((f, d), std)?));
        w.push((
            format!("{p}.mlp.down_proj.weight"),
            normal((d, f), out_std)?,
        ));
    }
    w.push((
        "model.norm.weight".into(),
        Tensor::ones(d, DType::F32, &dev)?,
    ));
    if !c.tie_word_embeddings {
        w.push(("lm_head.weight".into(), normal((c.vocab_size, d), std)?));
    }
    Ok(w)
}
