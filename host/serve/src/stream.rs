//! Streaming answers as server-sent events, for both endpoints: each sequence's tokens as
//! they are decoded (chat deltas, or the completions endpoint's text pieces with its legacy
//! log-probabilities), each sequence's finish reason, the usage when asked, then `[DONE]`.
//! The sequences of one request interleave in the order their tokens come. With tools, chat
//! text that may open a tool call is held back ([`CallStream`]); a call comes as OpenAI
//! streams it, its name (with its id) as soon as it is written, then its arguments piece by
//! piece; what the end's parse finds that the stream did not give comes before the finish
//! reason. A thinking model's block comes as `delta.reasoning_content` ([`ThinkStream`]).

use crate::api::{AppState, chat_logprobs, finish_reason, legacy_logprobs, now};
use crate::batcher::Event;
use crate::tools::{ToolPlan, id_seed, limit};
use axum::response::sse::Event as SseEvent;
use futures_util::{Stream, StreamExt};
use galley_model::Finish;
use galley_model::reasoning::ThinkStream;
use galley_model::tool_calls::{CallDelta, CallStream};
use serde_json::{Value, json};
use std::convert::Infallible;
use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};

/// Which endpoint's chunks to write.
#[derive(Clone, Copy)]
pub(crate) enum Shape {
    /// `chat.completion.chunk`: a role delta first, then content deltas (and tool calls,
    /// read as `tools` says).
    Chat {
        logprobs: bool,
        tools: Option<ToolPlan>,
        /// A thinking block is split off (`Some(open)`: the prompt left one open).
        think: Option<bool>,
    },
    /// `text_completion`: text pieces.
    Text { logprobs: bool },
}

/// Per stream: the sequences' events as they come, sequences done, completion tokens, the
/// text offset of each sequence (for the legacy log-probabilities), and whether it ended.
struct State {
    rx: UnboundedReceiver<(usize, Event)>,
    completion: usize,
    offsets: Vec<usize>,
    over: bool,
    /// Each chat choice's tool-call reader, when the request has tools.
    calls: Vec<Option<CallStream>>,
    /// Each chat choice's thinking reader, when the model thinks.
    thinks: Vec<Option<ThinkStream>>,
    /// Whether a choice has streamed part of a call.
    called: Vec<bool>,
}

/// A call's part as OpenAI streams it: its first with the id, type and name, then pieces of
/// its arguments.
fn call_delta(s: &AppState, plan: &ToolPlan, choice: usize, d: CallDelta) -> Value {
    match d.name {
        Some(name) => json!({
            "index": d.index,
            "id": plan.format.call_id(id_seed(s, choice)),
            "type": "function",
            "function": {"name": name, "arguments": d.arguments},
        }),
        None => json!({"index": d.index, "function": {"arguments": d.arguments}}),
    }
}

/// The events of `rxs` (choice `i` is `rxs[i]`) as `shape`'s chunks; `usage`: the request's
/// prompt tokens, when the client asked for a usage chunk at the end.
pub(crate) fn events(
    s: AppState,
    rxs: Vec<UnboundedReceiver<Event>>,
    id: String,
    model: String,
    shape: Shape,
    usage: Option<usize>,
    // The request's tools (what the template rendered), which type a text format's calls.
    tool_list: Option<galley_model::json_schema::Json>,
) -> impl Stream<Item = Result<SseEvent, Infallible>> {
    let (tx, rx) = unbounded_channel::<(usize, Event)>();
    let n = rxs.len();
    for (i, mut r) in rxs.into_iter().enumerate() {
        let tx = tx.clone();
        tokio::spawn(async move {
            while let Some(ev) = r.recv().await {
                let last = matches!(ev, Event::Done { .. } | Event::Error(_));
                if tx.send((i, ev)).is_err() || last {
                    break;
                }
            }
        });
    }
    drop(tx);
    let created = now();
    let object = match shape {
        Shape::Chat { .. } => "chat.completion.chunk",
        Shape::Text { .. } => "text_completion",
    };
    let chunk = move |choices: Value, usage: Option<Value>| {
        let mut c = json!({"id": id, "object": object, "created": created,
                           "model": model, "choices": choices});
        if let Some(u) = usage {
            c["usage"] = u;
        }
        SseEvent::default().data(c.to_string())
    };
    let first: Vec<Result<SseEvent, Infallible>> = match shape {
        Shape::Chat { .. } => (0..n)
            .map(|i| {
                Ok(chunk(
                    json!([{"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": null, "finish_reason": null}]),
                    None,
                ))
            })
            .collect(),
        Shape::Text { .. } => Vec::new(),
    };
    let (plan, think) = match shape {
        Shape::Chat { tools, think, .. } => (tools, think),
        Shape::Text { .. } => (None, None),
    };
    let state = State {
        rx,
        completion: 0,
        offsets: vec![0; n],
        over: false,
        calls: (0..n)
            .map(|_| {
                plan.map(|p| CallStream::new(p.format, p.forced).with_tools(tool_list.clone()))
            })
            .collect(),
        thinks: (0..n).map(|_| think.map(ThinkStream::new)).collect(),
        called: vec![false; n],
    };
    let rest = futures_util::stream::unfold(state, move |mut st| {
        let s = s.clone();
        let chunk = chunk.clone();
        async move {
            if st.over {
                return None;
            }
            loop {
                let Some((i, ev)) = st.rx.recv().await else {
                    // Every sequence done: usage (if asked), then the end marker.
                    let mut out = Vec::new();
                    if let Some(prompt) = usage {
                        let completion = st.completion;
                        out.push(chunk(
                            json!([]),
                            Some(
                                json!({"prompt_tokens": prompt, "completion_tokens": completion,
                                        "total_tokens": prompt + completion}),
                            ),
                        ));
                    }
                    out.push(SseEvent::default().data("[DONE]"));
                    st.over = true;
                    return Some((out, st));
                };
                let choice = match ev {
                    Event::Token {
                        id,
                        text,
                        logprob,
                        top,
                    } => {
                        st.completion += 1;
                        match shape {
                            Shape::Chat { logprobs, .. } => {
                                let (reasoning, text) = match st.thinks[i].as_mut() {
                                    Some(t) => t.push(&text),
                                    None => (String::new(), text),
                                };
                                let (text, deltas) = match st.calls[i].as_mut() {
                                    Some(c) => {
                                        let p = c.push(&text);
                                        (p.content, p.calls)
                                    }
                                    None => (text, Vec::new()),
                                };
                                // Calls' names and argument pieces as they come (only the
                                // first call without parallel calls).
                                let calls: Vec<Value> = match plan {
                                    Some(plan) => deltas
                                        .into_iter()
                                        .filter(|d| plan.parallel || d.index == 0)
                                        .map(|d| call_delta(&s, &plan, i, d))
                                        .collect(),
                                    None => Vec::new(),
                                };
                                let reading = st.calls[i].is_some() || st.thinks[i].is_some();
                                let said = !text.is_empty() || !reasoning.is_empty();
                                if !said && calls.is_empty() && reading {
                                    // Held: it may be a tag or a tool call.
                                    continue;
                                }
                                let mut out = Vec::new();
                                if said || calls.is_empty() {
                                    let lp = if logprobs {
                                        chat_logprobs(&s.tokenizer, &[(id, logprob, top)])
                                    } else {
                                        Value::Null
                                    };
                                    let delta = if reasoning.is_empty() {
                                        json!({"content": text})
                                    } else if text.is_empty() {
                                        json!({"reasoning_content": reasoning})
                                    } else {
                                        json!({"reasoning_content": reasoning, "content": text})
                                    };
                                    let c = json!({"index": i, "delta": delta, "logprobs": lp, "finish_reason": null});
                                    out.push(chunk(json!([c]), None));
                                }
                                if !calls.is_empty() {
                                    st.called[i] = true;
                                    let c = json!({"index": i, "delta": {"tool_calls": calls}, "logprobs": null, "finish_reason": null});
                                    out.push(chunk(json!([c]), None));
                                }
                                return Some((out, st));
                            }
                            Shape::Text { logprobs } => {
                                let lp = if logprobs {
                                    let row = [(id, Some(logprob), top)];
                                    legacy_logprobs(&s.tokenizer, &row, st.offsets[i])
                                } else {
                                    Value::Null
                                };
                                st.offsets[i] += text.len();
                                json!({"index": i, "text": text, "logprobs": lp, "finish_reason": null})
                            }
                        }
                    }
                    Event::Done { finish, .. } => {
                        let mut reason = finish_reason(finish);
                        let mut out = Vec::new();
                        let delta = |d: Value| {
                            let c = json!({"index": i, "delta": d, "logprobs": null, "finish_reason": null});
                            chunk(json!([c]), None)
                        };
                        // What the thinking and tool-call readers held back, then the calls.
                        let mut tail = String::new();
                        if let Some(t) = st.thinks[i].take() {
                            let (r, c) = t.finish();
                            if !r.is_empty() {
                                out.push(delta(json!({"reasoning_content": r})));
                            }
                            tail = c;
                        }
                        match (st.calls[i].take(), plan) {
                            (Some(mut c), Some(plan)) => {
                                let now = c.push(&tail);
                                if !now.content.is_empty() {
                                    out.push(delta(json!({"content": now.content})));
                                }
                                let mut end = c.finish();
                                limit(&plan, &mut end.parsed);
                                if let Some(text) =
                                    end.parsed.content.clone().filter(|t| !t.is_empty())
                                {
                                    out.push(delta(json!({"content": text})));
                                }
                                // What the stream still owes of each call: all of one it
                                // did not begin, the rest of one it did.
                                let mut owed = Vec::new();
                                for (k, call) in end.parsed.calls.iter().enumerate() {
                                    match end.owed(k) {
                                        None => owed.push(call_delta(
                                            &s,
                                            &plan,
                                            i,
                                            CallDelta {
                                                index: k,
                                                name: Some(call.name.clone()),
                                                arguments: call.arguments.clone(),
                                            },
                                        )),
                                        Some(rest) if !rest.is_empty() => {
                                            owed.push(json!({"index": k, "function": {"arguments": rest}}));
                                        }
                                        Some(_) => {}
                                    }
                                }
                                if !owed.is_empty() {
                                    out.push(delta(json!({"tool_calls": owed})));
                                }
                                let called = st.called[i] || !end.parsed.calls.is_empty();
                                if called && !matches!(finish, Finish::Length) {
                                    reason = "tool_calls";
                                }
                            }
                            _ if !tail.is_empty() => out.push(delta(json!({"content": tail}))),
                            _ => {}
                        }
                        let last = match shape {
                            Shape::Chat { .. } => {
                                json!({"index": i, "delta": {}, "logprobs": null, "finish_reason": reason})
                            }
                            Shape::Text { .. } => {
                                json!({"index": i, "text": "", "logprobs": null, "finish_reason": reason})
                            }
                        };
                        out.push(chunk(json!([last]), None));
                        return Some((out, st));
                    }
                    Event::Error(e) => {
                        let c = SseEvent::default().data(
                            json!({"error": {"message": e, "type": "server_error"}}).to_string(),
                        );
                        st.over = true;
                        return Some((vec![c], st));
                    }
                    Event::Prompt(_) => continue,
                };
                return Some((vec![chunk(json!([choice]), None)], st));
            }
        }
    });
    futures_util::stream::iter(first)
        .chain(rest.flat_map(|evs| futures_util::stream::iter(evs.into_iter().map(Ok))))
}
