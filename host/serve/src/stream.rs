//! Streaming answers as server-sent events, for both endpoints: each sequence's tokens as
//! they are decoded (chat deltas, or the completions endpoint's text pieces with its legacy
//! log-probabilities), each sequence's finish reason, the usage when asked, then `[DONE]`.
//! The sequences of one request interleave in the order their tokens come.

use crate::api::{AppState, chat_logprobs, finish_reason, legacy_logprobs, now};
use crate::batcher::Event;
use axum::response::sse::Event as SseEvent;
use futures_util::{Stream, StreamExt};
use serde_json::{Value, json};
use std::convert::Infallible;
use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};

/// Which endpoint's chunks to write.
#[derive(Clone, Copy)]
pub(crate) enum Shape {
    /// `chat.completion.chunk`: a role delta first, then content deltas.
    Chat { logprobs: bool },
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
    let state = State {
        rx,
        completion: 0,
        offsets: vec![0; n],
        over: false,
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
                            Shape::Chat { logprobs } => {
                                let lp = if logprobs {
                                    chat_logprobs(&s.tokenizer, &[(id, logprob, top)])
                                } else {
                                    Value::Null
                                };
                                json!({"index": i, "delta": {"content": text}, "logprobs": lp, "finish_reason": null})
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
                        let reason = finish_reason(finish);
                        match shape {
                            Shape::Chat { .. } => {
                                json!({"index": i, "delta": {}, "logprobs": null, "finish_reason": reason})
                            }
                            Shape::Text { .. } => {
                                json!({"index": i, "text": "", "logprobs": null, "finish_reason": reason})
                            }
                        }
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
