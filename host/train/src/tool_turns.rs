//! Rollouts with tools (TRL's `GRPOTrainer(tools=...)`): after the model ends a turn with
//! calls, read in its chat template's format, each call runs in a tool plugin (sandboxed, on
//! its time budget), the results enter as tool turns, and the model goes on from there, up
//! to `max_tool_calling_iterations` times. What a completion becomes is one token sequence —
//! the model's turns and the template's tool turns between them — with a mask that keeps the
//! tool turns out of the loss.
//!
//! The tool turns are token ids made here, never a re-tokenized conversation: the template is
//! rendered around the results (as TRL does, from a minimal conversation, the part after the
//! assistant's end-of-turn kept), its markup tokenized as markup and each result as plain
//! text. A result that spells `<|im_end|>` stays those characters, so a tool cannot end its
//! turn and speak as the assistant or the system.

use crate::error::{Result, TrainError};
use galley_core::{Environment, Episode, FunctionCall, Message, Tool, ToolCall};
use galley_model::answer::AnswerReader;
use galley_model::json_schema::Json;
use galley_model::{
    ChatTemplate, Completion, Finish, Kept, Llama, SamplingParams, Tokenizer, generate_resuming,
};

/// Private-use characters around an index: where a result goes in the rendered turn.
const OPEN: char = '\u{E000}';
const CLOSE: char = '\u{E001}';

/// Which plugin runs a function.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Runs {
    /// `tools[i]`.
    Tool(usize),
    /// The row's episode (of the environment its prompt picked).
    Episode,
}

/// What the run offers each prompt: the tools' functions, then those of the prompt's
/// environment (by its `environment` column where the run names several).
#[derive(Debug, Clone, Default)]
pub struct Offer {
    pub tools: Vec<serde_json::Value>,
    /// Each environment's name (none for the one `grpo.environment`) and functions.
    pub environments: Vec<(Option<String>, Vec<serde_json::Value>)>,
}

impl Offer {
    /// The environment a row's `environment` column picks, and every function it is
    /// offered; `Err`: what is wrong with the column.
    pub fn for_row(
        &self,
        column: Option<&str>,
    ) -> std::result::Result<(Option<usize>, Vec<serde_json::Value>), String> {
        let env = match (self.environments.as_slice(), column) {
            ([], _) => None,
            ([(None, _)], _) => Some(0),
            (named, Some(c)) => match named.iter().position(|(n, _)| n.as_deref() == Some(c)) {
                Some(i) => Some(i),
                None => {
                    return Err(format!(
                        "its `environment` column names `{c}`, not one of grpo.environments ({})",
                        self.names()
                    ));
                }
            },
            (_, None) => {
                return Err(format!(
                    "it has no `environment` column to pick one of grpo.environments ({})",
                    self.names()
                ));
            }
        };
        let mut all = self.tools.clone();
        if let Some(e) = env {
            all.extend(self.environments[e].1.iter().cloned());
        }
        Ok((env, all))
    }

    fn names(&self) -> String {
        self.environments
            .iter()
            .filter_map(|(n, _)| n.as_deref())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// The run's tools and environments, and which one runs each function.
pub struct ToolBox {
    tools: Vec<Box<dyn Tool>>,
    /// Tool function name -> the tool.
    route: Vec<(String, usize)>,
    /// The tools' functions, as the OpenAI `tools` list a template renders.
    pub offered: Vec<serde_json::Value>,
    pub max_iterations: usize,
    /// `grpo.environment` (no name) or `grpo.environments` (by name).
    envs: Vec<(Option<String>, Box<dyn Environment>)>,
    /// The episodes of the rollouts under way, one per row (`start` to `end`), with their
    /// environment.
    episodes: Vec<Option<(usize, Box<dyn Episode>)>>,
}

impl ToolBox {
    /// `tools` in order; two offering the same function name is a config error naming both.
    pub fn new(tools: Vec<Box<dyn Tool>>, max_iterations: usize) -> Result<Self> {
        let mut route: Vec<(String, usize)> = Vec::new();
        let mut offered = Vec::new();
        for (i, t) in tools.iter().enumerate() {
            for f in t.functions() {
                if let Some((_, j)) = route.iter().find(|(n, _)| *n == f.name) {
                    return Err(TrainError::Config {
                        file: format!("grpo.tools[{i}]"),
                        msg: format!(
                            "{} and grpo.tools[{j}] ({}) both offer a function named `{}`",
                            t.name(),
                            tools[*j].name(),
                            f.name
                        ),
                    });
                }
                route.push((f.name.clone(), i));
                offered.push(f.openai());
            }
        }
        Ok(Self {
            tools,
            route,
            offered,
            max_iterations,
            envs: Vec::new(),
            episodes: Vec::new(),
        })
    }

    /// With an environment (`name`: its key in `grpo.environments`; none for
    /// `grpo.environment`): its functions are offered after the tools' to the prompts that
    /// pick it, and each call of one runs in the calling row's own episode. Two
    /// environments may share function names (a prompt sees one); a tool may not.
    pub fn with_environment(
        mut self,
        name: Option<String>,
        env: Box<dyn Environment>,
    ) -> Result<Self> {
        let key = match &name {
            Some(n) => format!("grpo.environments.{n}"),
            None => "grpo.environment".into(),
        };
        for f in env.functions() {
            if let Some((_, j)) = self.route.iter().find(|(n, _)| *n == f.name) {
                return Err(TrainError::Config {
                    file: key,
                    msg: format!(
                        "{} and grpo.tools[{j}] ({}) both offer a function named `{}`",
                        env.name(),
                        self.tools[*j].name(),
                        f.name
                    ),
                });
            }
        }
        self.envs.push((name, env));
        Ok(self)
    }

    /// Whether the run has an environment.
    pub fn has_environments(&self) -> bool {
        !self.envs.is_empty()
    }

    /// How many environments the run has.
    pub fn environments(&self) -> usize {
        self.envs.len()
    }

    /// Environment `e` as errors name it: its config key and plugin.
    pub fn describe(&self, e: usize) -> String {
        let (name, env) = &self.envs[e];
        match name {
            Some(n) => format!("grpo.environments.{n} ({})", env.name()),
            None => format!("grpo.environment ({})", env.name()),
        }
    }

    /// What each prompt is offered.
    pub fn offer(&self) -> Offer {
        Offer {
            tools: self.offered.clone(),
            environments: self
                .envs
                .iter()
                .map(|(n, e)| {
                    (
                        n.clone(),
                        e.functions().iter().map(|f| f.openai()).collect(),
                    )
                })
                .collect(),
        }
    }

    /// Starts `per` episodes for each of `starts` (an environment, a row and its seed), in
    /// order — the rollouts of one prompt alike — after ending any left over. Per start, the
    /// text to append to the prompt's last message; each must be the same for all `per`
    /// episodes (the start of a group's task must depend on its row and seed alone, or GRPO
    /// compares answers to different tasks). A start without an environment starts none.
    /// `at` names each start's prompt in errors.
    pub fn start(
        &mut self,
        starts: &[(Option<usize>, serde_json::Value, u64)],
        per: usize,
        at: &[&str],
    ) -> Result<Vec<Option<String>>> {
        self.episodes.clear();
        let mut shown = Vec::with_capacity(starts.len());
        for ((env, row, seed), at) in starts.iter().zip(at) {
            let Some(e) = *env else {
                self.episodes.extend((0..per).map(|_| None));
                shown.push(None);
                continue;
            };
            let (name, environment) = &mut self.envs[e];
            let key = match name {
                Some(n) => format!("grpo.environments.{n}"),
                None => "grpo.environment".into(),
            };
            let mut first: Option<Option<String>> = None;
            for _ in 0..per {
                let (episode, text) =
                    environment
                        .start(row, *seed)
                        .map_err(|err| TrainError::Data {
                            at: at.to_string(),
                            msg: format!("{key} could not start an episode: {err}"),
                        })?;
                match &first {
                    None => first = Some(text),
                    Some(f) if *f != text => {
                        return Err(TrainError::Data {
                            at: at.to_string(),
                            msg: format!(
                                "{key} ({}) started two rollouts of this prompt differently from the same row and seed: an environment's start must depend on its row and seed alone, or GRPO compares answers to different tasks",
                                environment.name()
                            ),
                        });
                    }
                    Some(_) => {}
                }
                self.episodes.push(Some((e, episode)));
            }
            shown.push(first.flatten());
        }
        Ok(shown)
    }

    /// Ends the episodes under way: per row, its environment and the episode's score (none
    /// for a row without an episode).
    #[allow(clippy::type_complexity)]
    pub fn end(
        &mut self,
    ) -> Vec<
        Option<(
            usize,
            std::result::Result<Option<f64>, galley_core::PluginError>,
        )>,
    > {
        std::mem::take(&mut self.episodes)
            .into_iter()
            .map(|e| e.map(|(env, mut e)| (env, e.reward())))
            .collect()
    }

    /// Runs a round's calls, each tool's in one batch; per call, the text the model reads
    /// (an error as `{"error": ...}`) and whether the call failed. A batch that fails as a
    /// whole (a trap, the time budget) is retried one call at a time, so only the calls that
    /// fail alone are answered with an error (the reward functions' skip policy).
    ///
    /// Each call comes with its row: an environment's function runs in that row's episode,
    /// the row's calls of one turn in one batch. An episode that fails as a whole (a trap,
    /// the time budget) is over: its calls, and any it is sent later, answer that error.
    pub fn run(&mut self, calls: &[(usize, ToolCall)]) -> Vec<(String, bool)> {
        let fail = |msg: &str| (serde_json::json!({ "error": msg }).to_string(), true);
        let mut out: Vec<(String, bool)> = calls
            .iter()
            .map(|(_, c)| fail(&format!("no tool named `{}`", c.name)))
            .collect();
        // A tool's function runs in the tool; else the row's environment's, in its episode.
        let runs = |row: usize, name: &str| {
            if let Some((_, i)) = self.route.iter().find(|(n, _)| n == name) {
                return Some(Runs::Tool(*i));
            }
            let (env, _) = self.episodes.get(row)?.as_ref()?;
            let offers = self.envs[*env].1.functions().iter().any(|f| f.name == name);
            offers.then_some(Runs::Episode)
        };
        let by: Vec<Option<Runs>> = calls.iter().map(|(row, c)| runs(*row, &c.name)).collect();
        // The environment's calls, row by row.
        let mut rows: Vec<usize> = calls
            .iter()
            .zip(&by)
            .filter(|(_, r)| **r == Some(Runs::Episode))
            .map(|((row, _), _)| *row)
            .collect();
        rows.dedup();
        for row in rows {
            let mine: Vec<usize> = (0..calls.len())
                .filter(|&k| calls[k].0 == row && by[k] == Some(Runs::Episode))
                .collect();
            let batch: Vec<FunctionCall> = mine
                .iter()
                .map(|&k| FunctionCall {
                    name: &calls[k].1.name,
                    arguments: &calls[k].1.arguments,
                })
                .collect();
            let (_, episode) = self.episodes[row]
                .as_mut()
                .expect("routed to an episode only where the row has one");
            let answers = episode.call(&batch);
            match answers {
                Ok(a) => {
                    for (&k, a) in mine.iter().zip(a) {
                        out[k] = match a {
                            Ok(text) => (text, false),
                            Err(e) => fail(&e.message),
                        };
                    }
                }
                Err(e) => {
                    tracing::warn!("{e}; the rollout's episode is over");
                    for &k in &mine {
                        out[k] = fail(&e.message);
                    }
                }
            }
        }
        for (t, tool) in self.tools.iter_mut().enumerate() {
            let mine: Vec<usize> = (0..calls.len())
                .filter(|&k| by[k] == Some(Runs::Tool(t)))
                .collect();
            if mine.is_empty() {
                continue;
            }
            let batch: Vec<FunctionCall> = mine
                .iter()
                .map(|&k| FunctionCall {
                    name: &calls[k].1.name,
                    arguments: &calls[k].1.arguments,
                })
                .collect();
            let answers = match tool.call(&batch) {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!("{e}; calling its {} calls one at a time", batch.len());
                    // Once one call alone runs out of time, the rest of the round is answered
                    // with that error uncalled: a tool that always hangs costs a round two
                    // time budgets, not one per call.
                    let mut hung: Option<galley_core::PluginError> = None;
                    batch
                        .iter()
                        .map(|c| {
                            if let Some(h) = &hung {
                                return Err(h.clone());
                            }
                            match tool.call(std::slice::from_ref(c)) {
                                Ok(mut one) if one.len() == 1 => one.remove(0),
                                Ok(_) => Err(e.clone()),
                                Err(e) => {
                                    if e.kind == galley_core::PluginErrorKind::Timeout {
                                        hung = Some(e.clone());
                                    }
                                    Err(e)
                                }
                            }
                        })
                        .collect()
                }
            };
            for (&k, a) in mine.iter().zip(answers) {
                out[k] = match a {
                    Ok(text) => (text, false),
                    Err(e) => {
                        tracing::debug!("{e}");
                        fail(&e.message)
                    }
                };
            }
        }
        out
    }
}

/// The tools a prompt is offered: the run's, then the row's own `tools` column (shown to the
/// model and read back, but with nothing to run them).
pub fn offered_with(run: &[serde_json::Value], row: Option<Json>) -> Option<Json> {
    if run.is_empty() {
        return row;
    }
    let mut all: Vec<Json> = run.iter().map(Json::from).collect();
    if let Some(Json::Array(more)) = row {
        all.extend(more);
    }
    Some(Json::Array(all))
}

/// What tool turns added to one completion (the completion itself, `galley_model`'s, holds
/// the whole token sequence, text and finish).
#[derive(Debug, Clone, Default)]
pub struct Exchange {
    /// Where tools ran: true where the model wrote the token (it enters the loss). `None`:
    /// no tool turn, every token is the model's.
    pub mask: Option<Vec<bool>>,
    /// The model's last turn as it wrote it, where tools ran (else the completion's text).
    pub last: String,
    /// The last turn's prompt left a thinking block open.
    pub last_opens: bool,
    /// The turns before the last: assistant turns with calls, and the tool turns answering.
    pub turns: Vec<Message>,
    pub calls: usize,
    pub failures: usize,
    /// Tokens the turns after tool results prefilled, and those they resumed from a kept
    /// cache instead (what the earlier turns had already seen).
    pub prefilled: usize,
    pub resumed: usize,
}

impl Exchange {
    /// The model's last turn, of `c`, the completion this exchange belongs to.
    pub fn last_turn<'a>(&'a self, c: &'a Completion) -> &'a str {
        if self.turns.is_empty() {
            &c.text
        } else {
            &self.last
        }
    }
}

/// What the loop needs of a prompt.
pub struct Asked<'a> {
    pub ids: &'a [u32],
    pub opens: bool,
    pub tools: Option<&'a Json>,
}

/// Whether a turn (its text, whether its prompt left a thinking block open, how it ended)
/// calls tools: such turns, and only those, go on to a tool round.
fn calls_tools(
    reader: AnswerReader,
    text: &str,
    opens: bool,
    tools: Option<&Json>,
    finish: Finish,
) -> Option<Message> {
    let read = (finish == Finish::Eos).then(|| reader.read(text, opens, tools))?;
    (!read.tool_calls.is_empty()).then_some(read)
}

/// The first turn of every row of `asked` (`inputs[i]`: row i's prompt), keeping the caches
/// of the turns that call tools, which [`roll`] then continues without prefilling them again.
pub fn first_turn(
    engine: &Llama,
    tok: &Tokenizer,
    reader: AnswerReader,
    asked: &[Asked<'_>],
    inputs: &[Vec<u32>],
    sampling: &SamplingParams,
) -> Result<(Vec<Completion>, Vec<Option<Kept>>)> {
    let keep_if = |i: usize, text: &str, finish: Finish| {
        let a = &asked[i];
        calls_tools(reader, text, a.opens, a.tools, finish).is_some()
    };
    let noop = &mut |_: usize, _: &str| {};
    Ok(generate_resuming(
        engine,
        tok,
        inputs,
        vec![],
        sampling,
        &keep_if,
        noop,
    )?)
}

/// Continues each of `outs` (the first turn of `asked[i]`'s completion) through its tool
/// calls, in place: a completion that went on holds the whole exchange (tokens, text, the
/// tool tokens' log-probabilities as 0, the last turn's finish). `budget`: the completion's
/// tokens in all, as `max_completion_length`. `kept[i]`, where given, is what row i's last
/// turn has seen ([`first_turn`]): its next turn prefills only the tool results.
#[allow(clippy::too_many_arguments)]
pub fn roll(
    toolbox: &mut ToolBox,
    engine: &Llama,
    tok: &Tokenizer,
    template: &ChatTemplate,
    reader: AnswerReader,
    asked: &[Asked<'_>],
    outs: &mut [Completion],
    mut kept: Vec<Option<Kept>>,
    sampling: &SamplingParams,
    budget: usize,
) -> Result<Vec<Exchange>> {
    let mut ex: Vec<Exchange> = asked
        .iter()
        .map(|a| Exchange {
            last_opens: a.opens,
            ..Exchange::default()
        })
        .collect();
    kept.resize(outs.len(), None);
    for round in 0..toolbox.max_iterations {
        // Rows whose last turn ended by the model's own choice with calls in it.
        let mut asking: Vec<(usize, Message)> = Vec::new();
        for (i, (c, e)) in outs.iter().zip(&ex).enumerate() {
            let text = e.last_turn(c);
            match calls_tools(reader, text, e.last_opens, asked[i].tools, c.finish) {
                Some(read) => asking.push((i, read)),
                // Its exchange is over: what it has seen is not needed again.
                None => kept[i] = None,
            }
        }
        // Every call of the round, each tool's in one batch.
        let all: Vec<(usize, ToolCall)> = asking
            .iter()
            .flat_map(|(i, m)| m.tool_calls.iter().map(|c| (*i, c.clone())))
            .collect();
        let mut answers = toolbox.run(&all).into_iter();
        let (mut going, mut inputs): (Vec<usize>, Vec<Vec<u32>>) = (Vec::new(), Vec::new());
        for (i, read) in asking {
            let (c, e) = (&mut outs[i], &mut ex[i]);
            let mut results = Vec::with_capacity(read.tool_calls.len());
            for call in &read.tool_calls {
                let (content, failed) = answers.next().expect("one answer per call");
                e.calls += 1;
                e.failures += failed as usize;
                let mut m = Message::new("tool", content);
                m.name = Some(call.name.clone());
                m.tool_call_id = call.id.clone();
                results.push(m);
            }
            let end = *c.tokens.last().expect("an ended turn has its end token");
            let (suffix, opens) = tool_suffix(tok, template, asked[i].tools, &results, end)?;
            // A result that leaves no room: the completion ends at its calls (as TRL rolls
            // back a result past max_completion_length).
            if c.tokens.len() + suffix.len() >= budget {
                kept[i] = None;
                continue;
            }
            let mask = e.mask.get_or_insert_with(|| vec![true; c.tokens.len()]);
            mask.extend(std::iter::repeat_n(false, suffix.len()));
            c.text.push_str(&tok.decode(&[end], false)?);
            c.text.push_str(&tok.decode(&suffix, false)?);
            c.tokens.extend(&suffix);
            c.logprobs.extend(std::iter::repeat_n(0.0, suffix.len()));
            e.turns.push(read);
            e.turns.extend(results);
            e.last_opens = opens;
            let mut ids = asked[i].ids.to_vec();
            ids.extend(&c.tokens);
            going.push(i);
            inputs.push(ids);
        }
        if going.is_empty() {
            break;
        }
        // One batch for every row that goes on; each is cut to its own budget after.
        let room = going
            .iter()
            .map(|&i| budget - outs[i].tokens.len())
            .max()
            .unwrap_or(0);
        let params = SamplingParams {
            max_tokens: room,
            seed: galley_core::seed::derive_seed(
                sampling.seed,
                &[galley_core::seed::purpose::TOOL, round as u64],
            ),
            ..sampling.clone()
        };
        let from: Vec<Option<Kept>> = going.iter().map(|&i| kept[i].take()).collect();
        let keep_if = |j: usize, text: &str, finish: Finish| {
            let i = going[j];
            calls_tools(reader, text, ex[i].last_opens, asked[i].tools, finish).is_some()
        };
        let noop = &mut |_: usize, _: &str| {};
        let (turns, seen) = generate_resuming(engine, tok, &inputs, from, &params, &keep_if, noop)?;
        for ((i, mut t), seen) in going.into_iter().zip(turns).zip(seen) {
            let (c, e) = (&mut outs[i], &mut ex[i]);
            let left = budget - c.tokens.len();
            kept[i] = seen;
            e.resumed += t.cached_tokens;
            e.prefilled += t.prompt_tokens - t.cached_tokens;
            if t.tokens.len() > left {
                t.tokens.truncate(left);
                t.logprobs.truncate(left);
                t.text = tok.decode(&t.tokens, true)?;
                t.finish = Finish::Length;
                kept[i] = None;
            }
            if let Some(mask) = &mut e.mask {
                mask.extend(std::iter::repeat_n(true, t.tokens.len()));
            }
            c.tokens.extend(&t.tokens);
            c.logprobs.extend(&t.logprobs);
            c.text.push_str(&t.text);
            e.last = t.text;
            c.finish = t.finish;
        }
    }
    Ok(ex)
}

/// The tokens that follow an assistant turn ending in `end` (its end-of-turn token) when
/// `results` answer its calls: the template's tool turns and the next generation prompt.
/// Also whether that prompt leaves a thinking block open.
pub fn tool_suffix(
    tok: &Tokenizer,
    template: &ChatTemplate,
    tools: Option<&Json>,
    results: &[Message],
    end: u32,
) -> Result<(Vec<u32>, bool)> {
    let bad = |msg: String| TrainError::Config {
        file: "model.chat_template".into(),
        msg,
    };
    // A minimal conversation whose assistant turn calls the first result's function (some
    // templates name a tool turn after the call it answers).
    let call = ToolCall {
        id: results[0].tool_call_id.clone(),
        name: results[0].name.clone().unwrap_or_default(),
        arguments: "{}".into(),
    };
    let mut asking = Message::new("assistant", "");
    asking.tool_calls = vec![call];
    let dummy = vec![Message::new("user", "dummy"), asking];
    let before = template.render(&dummy, false, tools)?;
    let marked: Vec<Message> = results
        .iter()
        .enumerate()
        .map(|(k, m)| Message {
            content: format!("{OPEN}{k}{CLOSE}"),
            ..m.clone()
        })
        .collect();
    let after = template.render(&[dummy, marked].concat(), true, tools)?;
    // Cut after the assistant's end-of-turn, which the model's own tokens already hold.
    let end_text = tok.decode(&[end], false)?;
    let cut = match before.rfind(&end_text) {
        Some(at) if !end_text.is_empty() => at + end_text.len(),
        _ => before.len(),
    };
    let Some(rest) = after.strip_prefix(&before[..cut]) else {
        return Err(bad(
            "the chat template renders a conversation with tool results in a way that does not continue the one without them, so tool turns cannot follow the model's tokens".into(),
        ));
    };
    let mut ids = Vec::new();
    let mut text = rest;
    while let Some(open) = text.find(OPEN) {
        ids.extend(tok.encode(&text[..open], false)?);
        let after_open = &text[open + OPEN.len_utf8()..];
        let close = after_open
            .find(CLOSE)
            .ok_or_else(|| bad("the chat template cut a tool result's marker".into()))?;
        let k: usize = after_open[..close]
            .parse()
            .map_err(|_| bad("the chat template changed a tool result's marker".into()))?;
        let result = results
            .get(k)
            .ok_or_else(|| bad("the chat template changed a tool result's marker".into()))?;
        ids.extend(tok.encode_plain(&result.content)?);
        text = &after_open[close + CLOSE.len_utf8()..];
    }
    ids.extend(tok.encode(text, false)?);
    let opens = galley_model::reasoning::prompt_opens(&after);
    Ok((ids, opens))
}

#[cfg(test)]
mod tests;
