//! Group relative policy optimisation. Prompts come from a dataset in TRL's layout or
//! from any `DataSource` (a data-loader plugin such as `arith`), every column besides the
//! prompt travelling as metadata. Before each batch of steps the policy's current weights
//! (LoRA merged, in memory) become galley-model's inference engine, which samples
//! `num_generations` completions per prompt with its KV cache, all prompts of a step in one
//! batch. Reward functions (`RewardFn`: sandboxed plugins or built-ins) score each group in
//! one call; "no opinion" is left out of a completion's weighted sum, and a failure follows
//! `on_plugin_error` (`rewards`). Advantages and the clipped surrogate are `align`'s; the
//! loss weights the fused per-token NLL, so one backward pass trains the policy. With tools
//! (`tool_turns`), a completion goes on through its calls' results, which stay out of the
//! loss. Every completion is written to completions.jsonl with its rewards and advantage.

use crate::align::{self, Completion as Scored, Surrogate, Whole};
use crate::config::{DataSection, GrpoSection, OnBad, Truncation};
use crate::data::{Batch, Records, Sample, Skipped};
use crate::dataset::Content;
use crate::error::{Result, TrainError, file_err};
use crate::model::{Pass, TrainModel};
use crate::rewards;
use crate::tool_turns::{self, Asked, Exchange, ToolBox};

mod episodes;
use crate::trainer::{Extra, Micro, Task};
use candle_core::Tensor;
use galley_core::{Message, Metadata, RewardFn, RewardGroup};
use galley_model::answer::AnswerReader;
use galley_model::json_schema::Json;
use galley_model::{ChatTemplate, Llama, SamplingParams, Tokenizer, generate};
use std::borrow::Cow;
use std::cell::RefCell;
use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

/// A prompt, templated and tokenized, with the columns reward functions see.
#[derive(Debug, Clone)]
pub struct Prompt {
    pub at: String,
    pub messages: Vec<Message>,
    pub metadata: Metadata,
    pub ids: Vec<u32>,
    /// The tools the prompt offered (TRL's `tools` column), for reading calls back.
    pub tools: Option<Json>,
    /// The rendered prompt leaves a thinking block open for the answer.
    pub opens: bool,
    /// The environment its rollouts act in (an index of the run's), where the run has any.
    pub env: Option<usize>,
}

/// Tokenizes prompts as TRL's GRPO does: conversational ones through the chat template with
/// the generation prompt, standard ones as plain text. A `messages` conversation is a prompt
/// too (its trailing assistant turn, the reference answer, is dropped); a prompt-completion
/// record's completion is the reference, kept as the `completion` column. A prompt that
/// leaves fewer than `max_completion_length` tokens within `data.max_length` is skipped and
/// counted, or refused with `truncation: error`.
pub fn encode_prompts(
    tok: &Tokenizer,
    template: Option<&ChatTemplate>,
    recs: Records,
    data: &DataSection,
    max_completion: usize,
    offer: &tool_turns::Offer,
    skipped: &mut Skipped,
) -> Result<Vec<Prompt>> {
    let Records::Items(items) = recs else {
        return Err(TrainError::Config {
            file: "data.train".into(),
            msg: "GRPO reads prompts (a dataset file or a data-loader plugin), not plain text"
                .into(),
        });
    };
    let mut out = Vec::with_capacity(items.len());
    // Only whether the template thinks matters here; how it writes calls is the task's.
    let thinks = template.is_some_and(|t| galley_model::reasoning::template_thinks(&t.source));
    for r in items {
        let at = r.at.clone();
        let row_tools = r.tools();
        let (prompt, mut metadata) = match r.into_prompt() {
            Ok(p) => p,
            Err(msg) => {
                crate::data::bad_record(&at, msg, data.on_bad_example, skipped)?;
                continue;
            }
        };
        // With environments by name, the `environment` column picks the prompt's (a control
        // column: no reward function or `reset` sees it, as in TRL).
        let named = offer.environments.iter().any(|(n, _)| n.is_some());
        let column = named
            .then(|| metadata.remove("environment"))
            .flatten()
            .map(|v| v.as_text().unwrap_or_default());
        let (env, run) = match offer.for_row(column.as_deref()) {
            Ok(o) => o,
            Err(msg) => {
                crate::data::bad_record(&at, msg, data.on_bad_example, skipped)?;
                continue;
            }
        };
        // The run's tools (`grpo.tools`, then the prompt's environment's) are offered to the
        // prompt, before the row's own.
        let tools = tool_turns::offered_with(&run, row_tools);
        let (messages, text, special) = match prompt {
            Content::Chat(m) => {
                let text = match template {
                    // TRL's `tools` column: the template shows the model what it may call.
                    Some(t) if !m.is_empty() => t.render(&m, true, tools.as_ref())?,
                    // No template (a base model): the turns' text, one after another.
                    _ => m
                        .iter()
                        .map(|m| m.content.as_str())
                        .collect::<Vec<_>>()
                        .join("\n"),
                };
                let special = template.is_none();
                (m, text, special)
            }
            Content::Text(t) => (vec![Message::new("user", t.clone())], t, true),
        };
        if messages.is_empty() || text.is_empty() {
            skipped.empty += 1;
            skipped.report(&at, "the prompt is empty");
            continue;
        }
        let ids = tok.encode(&text, special)?;
        if ids.is_empty() || ids.len() + max_completion > data.max_length {
            let msg = format!(
                "the prompt's {} tokens leave no room for grpo.max_completion_length = {max_completion} within data.max_length = {}",
                ids.len(),
                data.max_length
            );
            if data.truncation == Truncation::Error || data.on_bad_example == OnBad::Error {
                return Err(TrainError::Data { at, msg });
            }
            skipped.too_long += 1;
            skipped.report(&at, &msg);
            continue;
        }
        let opens = !special && thinks && galley_model::reasoning::prompt_opens(&text);
        out.push(Prompt {
            at,
            messages,
            metadata,
            ids,
            tools,
            opens,
            env,
        });
    }
    Ok(out)
}

/// The reference GRPO's KL penalty is measured against.
pub enum Reference {
    /// beta = 0: no reference pass at all.
    None,
    /// The policy with its LoRA adapters switched off (no second copy).
    AdaptersOff,
    /// A frozen copy of the starting model.
    Copy(Box<TrainModel>),
}

/// One sampled completion and everything the update needs of it.
struct Row {
    /// Its prompt, in the step's `Rollouts::asked`.
    prompt: usize,
    tokens: Vec<u32>,
    /// Where tools ran: true where the model wrote the token (tool turns stay out of the
    /// loss). `None`: every token is the model's.
    mask: Option<Vec<bool>>,
    advantage: f64,
    /// Enters the loss: it has tokens, and is not a cut completion masked by
    /// `mask_truncated_completions`.
    in_loss: bool,
    old_logp: Option<Vec<f64>>,
    ref_logp: Option<Vec<f64>>,
}

/// The rollouts of one data step, split by micro-batch.
struct Rollouts<'a> {
    key: usize,
    /// The step's prompts, one per group, as the model was asked them (an environment's
    /// start appended).
    asked: Vec<Cow<'a, Prompt>>,
    micros: Vec<Vec<Row>>,
    whole: Whole,
    metrics: Extra,
    next: usize,
}

pub struct GrpoTask<'a> {
    pub prompts: &'a [Prompt],
    pub val: &'a [Prompt],
    pub cfg: GrpoSection,
    pub tokenizer: &'a Tokenizer,
    /// One per `cfg.rewards`, in order.
    pub rewards: RefCell<Vec<Box<dyn RewardFn>>>,
    pub reference: Reference,
    pub seed: u64,
    pub pad: u32,
    pub out_dir: PathBuf,
    /// Each function's name in metrics and completions.jsonl (a repeated one gets `#2`...).
    labels: Vec<String>,
    weights: Vec<f64>,
    state: RefCell<Option<Rollouts<'a>>>,
    /// How completions are read as assistant turns for reward functions (`None`: no chat
    /// template, so a completion is its text).
    reader: Option<AnswerReader>,
    /// The run's tools and the template their turns are rendered with (`grpo.tools`).
    tools: Option<(RefCell<ToolBox>, &'a ChatTemplate)>,
    max_length: usize,
}

impl Row {
    /// Positions in `tokens` that enter the loss.
    fn trained(&self) -> Vec<usize> {
        match &self.mask {
            None => (0..self.tokens.len()).collect(),
            Some(m) => (0..self.tokens.len()).filter(|&t| m[t]).collect(),
        }
    }
}

/// The mean and standard deviation of the totals no function failed on.
fn known_mean_std(totals: &[f64], failed: &[bool]) -> (f64, f64) {
    let kept: Vec<f64> = totals
        .iter()
        .zip(failed)
        .filter(|(_, f)| !**f)
        .map(|(r, _)| *r)
        .collect();
    align::mean_std(&kept)
}

impl<'a> GrpoTask<'a> {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        prompts: &'a [Prompt],
        val: &'a [Prompt],
        cfg: GrpoSection,
        tokenizer: &'a Tokenizer,
        rewards: Vec<Box<dyn RewardFn>>,
        reference: Reference,
        seed: u64,
        pad: u32,
        out_dir: PathBuf,
    ) -> Self {
        // The environment's own score is the last function (TRL appends `get_reward`).
        let mut specs = cfg.rewards.clone();
        // One per environment, labelled by its name where the run names them.
        for (name, _, e) in cfg.environment_specs() {
            specs.push(crate::config::RewardSpec {
                plugin: Some(name.unwrap_or_else(|| e.plugin.clone())),
                weight: e.reward_weight,
                ..Default::default()
            });
        }
        let labels = rewards::labels(&specs);
        let weights = specs.iter().map(|r| r.weight).collect();
        Self {
            prompts,
            val,
            cfg,
            tokenizer,
            rewards: RefCell::new(rewards),
            reference,
            seed,
            pad,
            out_dir,
            labels,
            weights,
            state: RefCell::new(None),
            reader: None,
            tools: None,
            max_length: usize::MAX,
        }
    }

    /// The longest prompt plus completion (`data.max_length`), which a prompt grown by an
    /// environment's start must still keep.
    pub fn within(mut self, max_length: usize) -> Self {
        self.max_length = max_length;
        self
    }

    /// Runs `toolbox`'s functions when the model calls them, their turns rendered by
    /// `template` (whose calls the reader must be able to read).
    pub fn with_tools(mut self, toolbox: ToolBox, template: &'a ChatTemplate) -> Result<Self> {
        if self.reader.is_none_or(|r| r.tool_format.is_none()) {
            let key = if !self.cfg.tools.is_empty() {
                "grpo.tools"
            } else if self.cfg.environment.is_some() {
                "grpo.environment"
            } else {
                "grpo.environments"
            };
            return Err(TrainError::Config {
                file: key.into(),
                msg: "the chat template does not show the model tools in a format galley reads calls back from (Hermes <tool_call>, Llama 3 JSON, Mistral [TOOL_CALLS], Qwen3-Coder XML...); set model.chat_template to one that does".into(),
            });
        }
        self.tools = Some((RefCell::new(toolbox), template));
        Ok(self)
    }

    /// Reads completions as assistant turns (reasoning and tool calls apart) with `reader`
    /// before they are scored: the chat template's reading.
    pub fn reading_answers(mut self, reader: Option<AnswerReader>) -> Self {
        self.reader = reader;
        self
    }

    /// Each completion of `groups` read as an assistant turn, in order (`None` where there is
    /// no reader or it could take nothing out: the completion is then its text).
    /// Where tools ran (`exchanges`), the model's last turn is read.
    fn read(
        &self,
        groups: &[(usize, &[galley_model::Completion])],
        set: &[Cow<'_, Prompt>],
        exchanges: &[Exchange],
    ) -> Vec<Option<Message>> {
        let mut ex = exchanges.iter();
        groups
            .iter()
            .flat_map(|(p, outs)| {
                let p = &set[*p];
                let reader = self.reader.filter(|r| r.reads(p.tools.is_some()));
                outs.iter().map(move |c| (p, reader, c))
            })
            .map(|(p, reader, c)| {
                let (text, opens) = match ex.next() {
                    Some(e) => (e.last_turn(c), e.last_opens),
                    None => (c.text.as_str(), p.opens),
                };
                reader.map(|r| r.read(text, opens, p.tools.as_ref()))
            })
            .collect()
    }

    /// Samples the completions of `asked` (`per` a prompt) and takes each through its tool
    /// calls, where the run has tools; the completions then hold the whole exchange. A turn
    /// with calls keeps its cache, so the next turn prefills only the tools' results.
    fn sample_turns(
        &self,
        engine: &Llama,
        asked: &[Cow<'_, Prompt>],
        per: usize,
        sampling: &SamplingParams,
    ) -> Result<(Vec<galley_model::Completion>, Vec<Exchange>, f64)> {
        let inputs: Vec<Vec<u32>> = asked
            .iter()
            .flat_map(|p| std::iter::repeat_n(p.ids.clone(), per))
            .collect();
        let (Some((toolbox, template)), Some(reader)) = (&self.tools, self.reader) else {
            let outs = generate(engine, self.tokenizer, &inputs, sampling, &mut |_, _| {})?;
            return Ok((outs, Vec::new(), 0.0));
        };
        let asked: Vec<Asked> = asked
            .iter()
            .flat_map(|p| std::iter::repeat_n(p, per))
            .map(|p| Asked {
                ids: &p.ids,
                opens: p.opens,
                tools: p.tools.as_ref(),
            })
            .collect();
        let tok = self.tokenizer;
        let (mut outs, kept) =
            tool_turns::first_turn(engine, tok, reader, &asked, &inputs, sampling)?;
        let t = Instant::now();
        let exchanges = tool_turns::roll(
            &mut toolbox.borrow_mut(),
            engine,
            tok,
            template,
            reader,
            &asked,
            &mut outs,
            kept,
            sampling,
            self.cfg.max_completion_length,
        )?;
        Ok((outs, exchanges, t.elapsed().as_secs_f64()))
    }

    fn completions_path(&self) -> PathBuf {
        self.out_dir.join("completions.jsonl")
    }

    /// The inference engine over the policy's current weights (adapters merged), in memory.
    fn engine(&self, model: &TrainModel) -> Result<Llama> {
        let w = model.engine_weights("the policy being trained")?;
        Ok(Llama::load(&w, model.config.clone(), &model.device)?)
    }

    /// Scores completions grouped by prompt (`set[p]` and its completions), every group of
    /// the step in one call per function, under the run's failure policy.
    fn score(
        &self,
        step: usize,
        groups: &[(usize, &[galley_model::Completion])],
        read: &[Option<Message>],
        set: &[Cow<'_, Prompt>],
    ) -> Result<rewards::Scored> {
        let mut read = read.iter();
        let batch: Vec<RewardGroup<'_>> = groups
            .iter()
            .map(|(p, outs)| RewardGroup {
                prompt: &set[*p].messages,
                metadata: &set[*p].metadata,
                completions: outs
                    .iter()
                    .map(|c| galley_core::Completion {
                        text: &c.text,
                        message: read.next().and_then(Option::as_ref),
                        truncated: c.finish == galley_model::Finish::Length,
                    })
                    .collect(),
            })
            .collect();
        let mut fns = self.rewards.borrow_mut();
        rewards::score_all(&mut fns, &batch, self.cfg.on_plugin_error, step).map_err(|e| {
            TrainError::Reward(format!(
                "{e} (on_plugin_error: stop, so the run stops here)"
            ))
        })
    }

    /// Per-token log-probabilities of each row's completion under `model` (no gradient).
    fn logps(
        &self,
        model: &TrainModel,
        rows: &[&Row],
        asked: &[Cow<'_, Prompt>],
        adapters: bool,
    ) -> Result<Vec<Vec<f64>>> {
        let samples: Vec<Sample> = rows.iter().map(|r| self.sample(r, asked)).collect();
        let refs: Vec<&Sample> = samples.iter().collect();
        let b = Batch::from_samples(&refs, self.pad);
        let pass = Pass {
            adapters,
            ..Pass::eval(model)
        };
        let nll = model
            .batch_losses(&b, &pass, self.cfg.temperature)?
            .detach()
            .to_vec1::<f32>()?;
        Ok(rows
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let start = asked[r.prompt].ids.len() - 1;
                r.trained()
                    .into_iter()
                    .map(|t| -(nll[i * b.t + start + t] as f64))
                    .collect()
            })
            .collect())
    }

    fn sample(&self, r: &Row, asked: &[Cow<'_, Prompt>]) -> Sample {
        let p = &asked[r.prompt].ids;
        let mut ids = p.clone();
        ids.extend(&r.tokens);
        let mut train = vec![false; p.len()];
        match &r.mask {
            None => train.extend(std::iter::repeat_n(true, r.tokens.len())),
            Some(m) => train.extend(m),
        }
        Sample { ids, train }
    }

    fn sampling(&self, seed: u64, greedy: bool) -> SamplingParams {
        SamplingParams {
            temperature: if greedy {
                0.0
            } else {
                self.cfg.temperature as f32
            },
            top_k: self.cfg.top_k,
            top_p: self.cfg.top_p as f32,
            min_p: 0.0,
            repetition_penalty: 1.0,
            frequency_penalty: 0.0,
            presence_penalty: 0.0,
            seed,
            max_tokens: self.cfg.max_completion_length,
            stop: Vec::new(),
            stop_token_ids: Vec::new(),
            lookup: 0,
        }
    }

    /// Samples, scores and prepares the rollouts of data step `key`.
    fn rollout(
        &self,
        model: &TrainModel,
        step: usize,
        key: usize,
        micros: &[Vec<usize>],
    ) -> Result<Rollouts<'a>> {
        let g = self.cfg.num_generations;
        let t0 = Instant::now();
        let engine = self.engine(model)?;
        let build_s = t0.elapsed().as_secs_f64();
        let order: Vec<usize> = micros.iter().flatten().copied().collect();
        let asked = self.ask(self.prompts, &order, g, key as u64)?;
        let seed = galley_core::seed::derive_seed(
            self.seed,
            &[galley_core::seed::purpose::ROLLOUT, key as u64],
        );
        let t1 = Instant::now();
        let sampling = self.sampling(seed, false);
        let (outs, exchanges, tools_s) = self.sample_turns(&engine, &asked, g, &sampling)?;
        let gen_s = t1.elapsed().as_secs_f64() - tools_s;
        drop(engine);
        let groups: Vec<(usize, &[galley_model::Completion])> =
            outs.chunks(g).enumerate().collect();
        let read = self.read(&groups, &asked, &exchanges);
        let t_env = Instant::now();
        let ended = self.end_episodes(outs.len());
        let env_s = t_env.elapsed().as_secs_f64();
        let mut scored = self.score(step + 1, &groups, &read, &asked)?;
        if let Some(ended) = ended {
            self.add_episode_scores(&mut scored, ended, step + 1, &asked, g)?;
            scored.secs.push(env_s);
        }
        let rewards::Scored {
            scores,
            failed,
            failures,
            secs,
        } = scored;
        let reward_s: f64 = secs.iter().sum();
        let totals = align::total_rewards(&scores, &self.weights);
        let known: Vec<bool> = failed.iter().map(|f| !f).collect();
        let adv = align::advantages_known(&totals, &known, g, self.cfg.scale_rewards);
        let truncated: Vec<bool> = outs
            .iter()
            .map(|c| c.finish == galley_model::Finish::Length)
            .collect();
        let mut rows: Vec<Row> = outs
            .iter()
            .enumerate()
            .map(|(i, c)| Row {
                prompt: i / g,
                tokens: c.tokens.clone(),
                mask: exchanges.get(i).and_then(|e| e.mask.clone()),
                advantage: adv[i],
                in_loss: !(c.tokens.is_empty()
                    || self.cfg.mask_truncated_completions && truncated[i]),
                old_logp: None,
                ref_logp: None,
            })
            .collect();
        // Log-probs before any update: the old policy (reused rollouts) and the reference.
        let t2 = Instant::now();
        let per_micro = micros.first().map_or(1, Vec::len) * g;
        let by_micro = |rows: &[Row], m: &TrainModel, adapters: bool| -> Result<Vec<Vec<f64>>> {
            let mut out = Vec::with_capacity(rows.len());
            for chunk in rows.chunks(per_micro) {
                let r: Vec<&Row> = chunk.iter().collect();
                out.extend(self.logps(m, &r, &asked, adapters)?);
            }
            Ok(out)
        };
        if self.cfg.num_iterations > 1 {
            let old = by_micro(&rows, model, true)?;
            rows.iter_mut()
                .zip(old)
                .for_each(|(row, l)| row.old_logp = Some(l));
        }
        let reference = match &self.reference {
            Reference::None => None,
            Reference::Copy(c) => Some((&**c, true)),
            Reference::AdaptersOff => Some((model, false)),
        };
        if let Some((m, adapters)) = reference {
            let refs = by_micro(&rows, m, adapters)?;
            rows.iter_mut()
                .zip(refs)
                .for_each(|(row, l)| row.ref_logp = Some(l));
        }
        let logp_s = t2.elapsed().as_secs_f64();
        // Metrics of the rollouts.
        let mut m = Extra::new();
        let (rm, rs) = known_mean_std(&totals, &failed);
        m.insert("reward".into(), rm);
        m.insert("reward_std".into(), rs);
        for (f, label) in self.labels.iter().enumerate() {
            let vals: Vec<f64> = scores[f].iter().flatten().copied().collect();
            let (fm, fs) = align::mean_std(&vals);
            m.insert(format!("rewards/{label}/mean"), fm);
            m.insert(format!("rewards/{label}/std"), fs);
            if failures[f] > 0 {
                m.insert(format!("rewards/{label}/failures"), failures[f] as f64);
            }
        }
        let zero_std = totals
            .chunks(g)
            .filter(|c| c.iter().all(|r| *r == c[0]))
            .count();
        m.insert(
            "frac_reward_zero_std".into(),
            zero_std as f64 / (totals.len() / g) as f64,
        );
        // The model's tokens: tool turns are not generated (TRL counts the same).
        let gen_tokens: usize = rows.iter().map(|r| r.trained().len()).sum();
        m.insert(
            "completions/mean_length".into(),
            gen_tokens as f64 / outs.len() as f64,
        );
        if self.tools.is_some() {
            let calls: usize = exchanges.iter().map(|e| e.calls).sum();
            let failures: usize = exchanges.iter().map(|e| e.failures).sum();
            m.insert(
                "tools/call_frequency".into(),
                calls as f64 / outs.len() as f64,
            );
            m.insert(
                "tools/failure_frequency".into(),
                if calls > 0 {
                    failures as f64 / calls as f64
                } else {
                    0.0
                },
            );
            m.insert("tools_s".into(), tools_s);
            // What the turns after tool results prefilled, and what they took from the
            // caches their earlier turns left (as a server's prefix-cache hit rate).
            let prefilled: usize = exchanges.iter().map(|e| e.prefilled).sum();
            let resumed: usize = exchanges.iter().map(|e| e.resumed).sum();
            m.insert("tools/prefill_tokens".into(), prefilled as f64);
            m.insert("tools/resumed_tokens".into(), resumed as f64);
        }
        m.insert(
            "completions/clipped_ratio".into(),
            truncated.iter().filter(|t| **t).count() as f64 / outs.len() as f64,
        );
        m.insert("rollout_s".into(), gen_s);
        m.insert("engine_build_s".into(), build_s);
        m.insert(
            "rollout_tokens_per_s".into(),
            gen_tokens as f64 / gen_s.max(1e-9),
        );
        m.insert("reward_s".into(), reward_s);
        m.insert("logp_s".into(), logp_s);
        self.write_completions(
            step + 1,
            &asked,
            &rows,
            &outs,
            &read,
            &exchanges,
            &scores,
            &totals,
            &failed,
        )?;
        let whole = Whole {
            sequences: rows.len(),
            tokens: rows
                .iter()
                .filter(|r| r.in_loss)
                .map(|r| r.trained().len())
                .sum(),
        };
        let mut micro_rows = Vec::with_capacity(micros.len());
        let mut it = rows.into_iter();
        for items in micros {
            micro_rows.push(it.by_ref().take(items.len() * g).collect());
        }
        Ok(Rollouts {
            key,
            asked,
            micros: micro_rows,
            whole,
            metrics: m,
            next: 0,
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn write_completions(
        &self,
        step: usize,
        asked: &[Cow<'_, Prompt>],
        rows: &[Row],
        outs: &[galley_model::Completion],
        read: &[Option<Message>],
        exchanges: &[Exchange],
        scores: &[Vec<Option<f64>>],
        totals: &[f64],
        failed: &[bool],
    ) -> Result<()> {
        let path = self.completions_path();
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| file_err(&path, e))?;
        let keep = self.cfg.log_completions.unwrap_or(usize::MAX);
        for (i, (row, c)) in rows.iter().zip(outs).enumerate().take(keep) {
            let p = &asked[row.prompt];
            let per: serde_json::Map<String, serde_json::Value> = self
                .labels
                .iter()
                .enumerate()
                .map(|(k, l)| (l.clone(), scores[k][i].into()))
                .collect();
            let mut line = serde_json::json!({
                "step": step,
                "prompt": p.messages.last().map(|m| m.content.clone()),
                "at": p.at,
                "metadata": p.metadata,
                "completion": c.text,
                "tokens": c.tokens.len(),
                "finish": format!("{:?}", c.finish).to_lowercase(),
                "rewards": per,
                "reward": totals[i],
                "advantage": row.advantage,
                "failed": failed[i],
            });
            // The reading reward functions saw, where it took something out of the text (or
            // the text is a whole exchange with tools, and this its last turn).
            let tools_ran = exchanges.get(i).is_some_and(|e| !e.turns.is_empty());
            if let Some(Some(m)) = read.get(i)
                && (!m.tool_calls.is_empty() || m.reasoning_content.is_some() || tools_ran)
            {
                line["message"] = serde_json::to_value(m).expect("a message serializes");
            }
            // Where tools ran: the turns before the last, and the model's share of the tokens.
            if let Some(e) = exchanges.get(i).filter(|e| !e.turns.is_empty()) {
                line["turns"] = serde_json::to_value(&e.turns).expect("messages serialize");
                line["tool_calls"] = e.calls.into();
                line["tool_failures"] = e.failures.into();
                line["model_tokens"] = row.trained().len().into();
            }
            writeln!(f, "{line}").map_err(|e| file_err(&path, e))?;
        }
        Ok(())
    }
}

impl Task for GrpoTask<'_> {
    fn len(&self) -> usize {
        self.prompts.len()
    }
    fn item_len(&self, i: usize) -> usize {
        self.prompts[i].ids.len()
    }
    fn batch_items(&self, batch_size: usize) -> usize {
        batch_size / self.cfg.num_generations
    }
    fn data_step(&self, step: usize) -> usize {
        step / self.cfg.num_iterations
    }
    fn norm(&self, _micro: &[Vec<usize>]) -> f64 {
        // The surrogate normalises over the whole step itself (`align::Whole`).
        1.0
    }
    fn start(&self, step: usize) -> Result<()> {
        // A fresh run starts an empty log; a resumed one drops what followed its checkpoint.
        crate::trainer::truncate_jsonl(&self.completions_path(), step)
    }
    fn prepare_step(
        &self,
        model: &TrainModel,
        step: usize,
        micros: &[Vec<usize>],
    ) -> Result<Extra> {
        let key = self.data_step(step);
        let mut state = self.state.borrow_mut();
        if state.as_ref().is_none_or(|s| s.key != key) {
            *state = Some(self.rollout(model, step, key, micros)?);
        }
        let s = state.as_mut().expect("rollouts made above");
        s.next = 0;
        Ok(s.metrics.clone())
    }
    fn micro(&self, model: &TrainModel, items: &[usize], _norm: f64, pass: &Pass) -> Result<Micro> {
        let t0 = Instant::now();
        let mut state = self.state.borrow_mut();
        let s = state
            .as_mut()
            .expect("prepare_step ran before the micro-batches");
        let rows = &s.micros[s.next];
        s.next += 1;
        debug_assert_eq!(rows.len(), items.len() * self.cfg.num_generations);
        let samples: Vec<Sample> = rows.iter().map(|r| self.sample(r, &s.asked)).collect();
        let refs: Vec<&Sample> = samples.iter().collect();
        let b = Batch::from_samples(&refs, self.pad);
        let nll = model.batch_losses(&b, pass, self.cfg.temperature)?;
        let values = nll.detach().to_vec1::<f32>()?;
        let logp: Vec<Vec<f64>> = rows
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let start = s.asked[r.prompt].ids.len() - 1;
                if !r.in_loss {
                    return Vec::new();
                }
                r.trained()
                    .into_iter()
                    .map(|t| -(values[i * b.t + start + t] as f64))
                    .collect()
            })
            .collect();
        // Rows out of the loss have no tokens here: their stored log-probs are cut to match.
        let batch: Vec<Scored> = rows
            .iter()
            .zip(&logp)
            .map(|(r, lp)| Scored {
                logp: lp,
                // On-policy (one iteration): the old policy is the current one, ratio 1.
                old_logp: r.old_logp.as_deref().map_or(lp, |v| &v[..lp.len()]),
                ref_logp: r.ref_logp.as_deref().map_or(lp, |v| &v[..lp.len()]),
                advantage: r.advantage,
            })
            .collect();
        let surrogate = Surrogate {
            epsilon: self.cfg.epsilon,
            epsilon_high: self.cfg.epsilon_high.unwrap_or(self.cfg.epsilon),
            beta: if matches!(self.reference, Reference::None) {
                0.0
            } else {
                self.cfg.beta
            },
            loss: self.cfg.loss_type,
            max_completion_length: self.cfg.max_completion_length,
        };
        let out = align::grpo_part(&batch, surrogate, s.whole);
        // loss = Σ d·logp = Σ -d·nll: the derivatives weight the per-position NLL.
        let mut coef = vec![0f32; b.b * b.t];
        for (i, r) in rows.iter().enumerate() {
            let start = s.asked[r.prompt].ids.len() - 1;
            for (t, d) in r.trained().into_iter().zip(&out.d_logp[i]) {
                coef[i * b.t + start + t] = -(*d as f32);
            }
        }
        let coef = Tensor::from_vec(coef, b.b * b.t, nll.device())?;
        let grads = (nll * coef)?.sum_all()?.backward()?;
        let whole_tokens = s.whole.tokens.max(1) as f64;
        let mut extra = Extra::from([
            ("clip_ratio".to_string(), out.clipped as f64 / whole_tokens),
            ("update_tokens".to_string(), b.real_tokens() as f64),
            ("update_s".to_string(), t0.elapsed().as_secs_f64()),
        ]);
        if surrogate.beta > 0.0 {
            extra.insert("kl".into(), out.kl_sum / whole_tokens);
        }
        Ok(Micro {
            loss: out.loss,
            tokens: b.real_tokens(),
            extra,
            grads,
        })
    }
    fn finish_step(&self, extra: &mut Extra) {
        if let (Some(t), Some(s)) = (extra.get("update_tokens"), extra.get("update_s")) {
            let rate = t / s.max(1e-9);
            extra.insert("update_tokens_per_s".into(), rate);
        }
    }
    fn evaluate(&self, model: &TrainModel, _batch: usize) -> Result<Option<(Option<f64>, Extra)>> {
        if self.val.is_empty() {
            return Ok(None);
        }
        // One greedy completion per held-out prompt, scored by the run's reward functions.
        let engine = self.engine(model)?;
        let order: Vec<usize> = (0..self.val.len()).collect();
        // Held-out episodes start alike at every evaluation (one seed stream for them all).
        let asked = self.ask(self.val, &order, 1, u64::MAX)?;
        let sampling = self.sampling(0, true);
        let (outs, exchanges, _) = self.sample_turns(&engine, &asked, 1, &sampling)?;
        drop(engine);
        let groups: Vec<(usize, &[galley_model::Completion])> =
            outs.chunks(1).enumerate().collect();
        let read = self.read(&groups, &asked, &exchanges);
        let ended = self.end_episodes(outs.len());
        let mut scored = self.score(0, &groups, &read, &asked)?;
        if let Some(ended) = ended {
            self.add_episode_scores(&mut scored, ended, 0, &asked, 1)?;
        }
        let rewards::Scored { scores, failed, .. } = scored;
        let totals = align::total_rewards(&scores, &self.weights);
        let mut extra = Extra::new();
        extra.insert("eval_reward".into(), known_mean_std(&totals, &failed).0);
        for (f, label) in self.labels.iter().enumerate() {
            let vals: Vec<f64> = scores[f].iter().flatten().copied().collect();
            extra.insert(
                format!("eval_rewards/{label}/mean"),
                align::mean_std(&vals).0,
            );
        }
        let n: usize = outs.iter().map(|c| c.tokens.len()).sum();
        extra.insert(
            "eval_completions/mean_length".into(),
            n as f64 / outs.len() as f64,
        );
        Ok(Some((None, extra)))
    }
}
