//! `galley serve` on loopback, called with the official `openai` Python client (PyPI, in the
//! tools venv scripts/fetch-data.sh makes): models, chat (logprobs, `n`, seeds), streaming
//! with usage, completions with `echo` + `logprobs` and token-id prompts, an adapter chosen
//! by model id, OpenAI's error codes (404, 400, 429 from a full queue), a client that
//! leaves mid-stream freeing its row, and the prompt cache (answers as without it).

mod served;

use galley_e2e::*;
use served::*;

#[test]
fn the_openai_client_chats_streams_completes_and_gets_openai_errors() {
    let tmp = setup();
    let d = tmp.path();
    let s = serve(d, &["-m", "model", "--adapter", "tuned=adapter"]);
    let script = format!(
        "{COMMON}{}",
        r#"
ids = [m.id for m in c.models.list().data]
check(ids == ["model", "tuned"], f"models {ids}")
msgs = [{"role": "user", "content": "the number 3 is"}]
r = c.chat.completions.create(model="model", messages=msgs, max_tokens=8, temperature=0,
                              logprobs=True, top_logprobs=3)
ch = r.choices[0]
check(isinstance(ch.message.content, str) and ch.message.role == "assistant", "message")
check(ch.finish_reason in ("stop", "length"), f"finish {ch.finish_reason}")
lp = ch.logprobs.content
check(len(lp) == r.usage.completion_tokens and r.usage.completion_tokens > 0, "one logprob per token")
check(all(len(t.top_logprobs) == 3 for t in lp), "top_logprobs")
# Greedy: the chosen token is the most likely one.
check(all(abs(t.logprob - t.top_logprobs[0].logprob) < 1e-5 for t in lp), "greedy = top")
check(r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens, "usage")

# Streaming gives the same greedy text, a finish reason, then usage.
chunks = list(c.chat.completions.create(model="model", messages=msgs, max_tokens=8, temperature=0,
                                         stream=True, stream_options={"include_usage": True}))
text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
check(text == ch.message.content, f"stream {text!r} vs {ch.message.content!r}")
check(any(ch.choices and ch.choices[0].finish_reason for ch in chunks), "stream finish")
check(chunks[-1].usage.completion_tokens == r.usage.completion_tokens, "stream usage")

# n samples, seeded: the same seed gives the same three, another seed others.
a = c.chat.completions.create(model="model", messages=msgs, max_tokens=12, n=3, seed=7, temperature=1)
b = c.chat.completions.create(model="model", messages=msgs, max_tokens=12, n=3, seed=7, temperature=1)
check([x.index for x in a.choices] == [0, 1, 2], "n indexes")
check([x.message.content for x in a.choices] == [x.message.content for x in b.choices], "seeded")

# Completions: echo with logprobs scores the prompt (lm-eval's local-completions does this).
e = c.completions.create(model="model", prompt="the number 3 is 9", max_tokens=0, echo=True,
                         logprobs=1, temperature=0)
lps = e.choices[0].logprobs
check(e.choices[0].text == "the number 3 is 9", f"echo {e.choices[0].text!r}")
check(lps.token_logprobs[0] is None and all(x < 0 for x in lps.token_logprobs[1:]), "prompt logprobs")
check("".join(lps.tokens) == "the number 3 is 9", "tokens")
ids = c.completions.create(model="model", prompt=[5, 6, 7], max_tokens=3, temperature=0)
check(ids.usage.prompt_tokens == 3 and ids.usage.completion_tokens == 3, "token-id prompt")

# The adapter is its own model id and changes the scores.
t = c.chat.completions.create(model="tuned", messages=msgs, max_tokens=8, temperature=0,
                              logprobs=True, top_logprobs=1)
check(abs(t.choices[0].logprobs.content[0].logprob - lp[0].logprob) > 1e-4 or
      t.choices[0].logprobs.content[0].token != lp[0].token, "adapter changes nothing")

# OpenAI's errors.
for call, err, what in [
    (lambda: c.chat.completions.create(model="nope", messages=msgs), openai.NotFoundError, "404"),
    (lambda: c.chat.completions.create(model="model", messages=msgs, max_tokens=5000),
     openai.BadRequestError, "context"),
    (lambda: c.chat.completions.create(model="model", messages=msgs, temperature=3),
     openai.BadRequestError, "temperature"),
    (lambda: c.completions.create(model="model", prompt=[10**9], max_tokens=1),
     openai.BadRequestError, "token id"),
]:
    try:
        call()
        check(False, what + " accepted")
    except err as ex:
        check(ex.body and "message" in ex.body, what + " body")
# A field of the wrong type is a 400 naming its key, also for the fields both endpoints share.
for body, key in [({"temperature": "hot"}, "temperature"), ({"cache_salt": 5}, "cache_salt"),
                  ({"max_tokens": "many"}, "max_tokens"), ({"stop": 3}, "stop")]:
    try:
        c.chat.completions.create(model="model", messages=msgs, extra_body=body)
        check(False, f"{body} accepted")
    except openai.BadRequestError as ex:
        check(f"`{key}`" in ex.body["message"] and ex.body["param"] == key, f"{body}: {ex.body}")
print("ok")
"#
    );
    assert_eq!(client(d, &s.url, &script).trim(), "ok");
}

/// What galley cannot honour is refused by name (tools the model's template cannot show, a
/// JSON schema galley cannot enforce: both used to get plain text with a 200); OpenAI's
/// frequency and presence penalties change what is generated, deterministically; JSON mode
/// holds even a random model to one JSON object, ended as soon as it closes.
#[test]
fn unshowable_tools_and_json_output_are_refused_and_the_penalties_apply() {
    serve_and_run(
        r#"
msgs = [{"role": "user", "content": "the number 3 is"}]
tool = {"type": "function", "function": {"name": "add", "parameters": {"type": "object", "properties": {}}}}
for kw, key in [({"tools": [tool]}, "tools"),
                ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {}}}},
                 "response_format"),
                ({"frequency_penalty": 2.5}, "frequency_penalty"),
                ({"presence_penalty": -3}, "presence_penalty")]:
    try:
        c.chat.completions.create(model="model", messages=msgs, max_tokens=4, **kw)
        check(False, f"{kw} accepted")
    except openai.BadRequestError as ex:
        check(key in ex.body["message"], f"{kw}: {ex.body}")
# Asking for nothing passes.
c.chat.completions.create(model="model", messages=msgs, max_tokens=2, tools=[], tool_choice="none",
                          response_format={"type": "text"}, user="someone")

def tokens(**kw):
    r = c.chat.completions.create(model="model", messages=msgs, max_tokens=48, temperature=0,
                                  logprobs=True, **kw)
    return [t.token for t in r.choices[0].logprobs.content]
plain = tokens()
most = max(plain.count(t) for t in plain)
check(most >= 3, f"the greedy text should repeat itself: {plain}")
freq = tokens(frequency_penalty=2.0)
check(freq == tokens(frequency_penalty=2.0), "penalised greedy is deterministic")
check(freq != plain and max(freq.count(t) for t in freq) < most, f"frequency {freq} vs {plain}")
pres = tokens(presence_penalty=2.0)
check(pres != plain and max(pres.count(t) for t in pres) < most, f"presence {pres} vs {plain}")

# JSON mode on a random model: every answer opens an object, and every one that stopped is
# exactly one JSON object.
stopped = 0
for seed in range(12):
    r = c.chat.completions.create(model="model", messages=msgs, max_tokens=96, temperature=1.0,
                                  seed=seed, response_format={"type": "json_object"})
    ch = r.choices[0]
    check(ch.message.content.startswith("{"), f"json mode: {ch.message.content!r}")
    if ch.finish_reason == "stop":
        stopped += 1
        check(isinstance(json.loads(ch.message.content), dict), f"json mode: {ch.message.content!r}")
print(f"json mode: {stopped} of 12 closed their object", file=sys.stderr)
print("ok")
"#,
    );
}

/// `/v1/completions` streams (it used to refuse `stream`): each choice's pieces join to the
/// text, log-probabilities and finish reason of the same request without streaming, choices
/// indexed prompt by prompt, and usage comes last when asked.
#[test]
fn completions_stream_what_they_answer_without_streaming() {
    serve_and_run(
        r#"
prompts = ["the number 3 is", "the number 12 is 2 and"]
kw = dict(model="model", prompt=prompts, max_tokens=10, n=2, temperature=0.8, seed=5, logprobs=2)
whole = c.completions.create(**kw)
chunks = list(c.completions.create(stream=True, stream_options={"include_usage": True}, **kw))
check(all(ch.object == "text_completion" for ch in chunks), "object")
texts, lps, finish = {}, {}, {}
for ch in chunks:
    for x in ch.choices:
        texts[x.index] = texts.get(x.index, "") + x.text
        if x.logprobs:
            lps.setdefault(x.index, []).extend(x.logprobs.token_logprobs)
        if x.finish_reason:
            finish[x.index] = x.finish_reason
check(sorted(texts) == [0, 1, 2, 3], f"indexes {sorted(texts)}")
for w in whole.choices:
    check(texts[w.index] == w.text, f"{w.index}: {texts[w.index]!r} vs {w.text!r}")
    check(finish[w.index] == w.finish_reason, "finish")
    want = w.logprobs.token_logprobs
    check(len(lps[w.index]) == len(want) and all(abs(a - b) < 1e-5 for a, b in zip(lps[w.index], want)),
          f"logprobs {lps[w.index]} vs {want}")
check(chunks[-1].usage.prompt_tokens == whole.usage.prompt_tokens and
      chunks[-1].usage.completion_tokens == whole.usage.completion_tokens, f"usage {chunks[-1].usage}")
try:
    c.completions.create(model="model", prompt="x", echo=True, stream=True)
    check(False, "echo with stream accepted")
except openai.BadRequestError as ex:
    check(ex.body["param"] == "echo", f"{ex.body}")
print("ok")
"#,
    );
}

/// `/tokenize` and `/detokenize` (vLLM's shape): a prompt's count is the `prompt_tokens`
/// completions bill, messages' the count chat bills, ids decode back to the prompt; bad
/// requests are OpenAI-shaped errors naming the key.
#[test]
fn tokenize_counts_what_completions_and_chat_bill_and_detokenize_reverses_it() {
    serve_and_run(
        r#"
import urllib.request, urllib.error
root = os.environ["URL"][:-len("/v1")]
def post(path, body):
    req = urllib.request.Request(root + path, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as e:
        return e.code, json.load(e)
prompt = "the number 7 is 4 and the answer"
st, t = post("/tokenize", {"model": "model", "prompt": prompt, "return_token_strs": True})
check(st == 200 and t["count"] == len(t["tokens"]) == len(t["token_strs"]) and t["max_model_len"] == 4096, f"{st} {t}")
done = c.completions.create(model="model", prompt=prompt, max_tokens=1)
check(done.usage.prompt_tokens == t["count"], f"{done.usage} vs {t['count']}")
st, d = post("/detokenize", {"tokens": t["tokens"]})
check(st == 200 and d["prompt"] == prompt, f"{st} {d}")
msgs = [{"role": "user", "content": "the number 3 is"}]
st, m = post("/tokenize", {"messages": msgs})
chat = c.chat.completions.create(model="model", messages=msgs, max_tokens=1)
check(st == 200 and chat.usage.prompt_tokens == m["count"], f"{chat.usage} vs {m}")
st, m2 = post("/tokenize", {"messages": msgs, "add_generation_prompt": False})
check(m2["count"] < m["count"] and m["tokens"][:m2["count"]] == m2["tokens"], "generation prompt")
for path, body, code, param in [
    ("/tokenize", {"prompt": "a", "messages": msgs}, 400, "prompt"),
    ("/tokenize", {}, 400, "prompt"),
    ("/tokenize", {"prompt": "a", "temperature": 1}, 400, None),
    ("/tokenize", {"model": "nope", "prompt": "a"}, 404, "model"),
    ("/detokenize", {"tokens": [1, 10**6]}, 400, "tokens"),
]:
    st, e = post(path, body)
    check(st == code and e["error"]["type"] == ("invalid_request_error" if code == 400 else e["error"]["type"]), f"{path} {body}: {st} {e}")
    check(param is None or e["error"]["param"] == param, f"{path} {body}: {e}")
st, e = post("/tokenize", {"prompt": "a", "temperature": 1})
check("temperature" in e["error"]["message"], f"{e}")
st, e = post("/detokenize", {"tokens": [1, 10**6]})
check("tokens[1]" in e["error"]["message"], f"{e}")
print("ok")
"#,
    );
}

/// `GET /metrics` (OpenMetrics text, `model` labels): after three completions and a streamed
/// chat, the token counters are what the responses billed and each histogram saw each
/// sequence once.
#[test]
fn metrics_count_what_the_responses_billed() {
    serve_and_run(
        r#"
import urllib.request, re
root = os.environ["URL"][:-len("/v1")]
billed_prompt = billed_gen = 0
for i in range(3):
    r = c.completions.create(model="model", prompt=f"the number {i} is", max_tokens=5 + i, temperature=0)
    billed_prompt += r.usage.prompt_tokens
    billed_gen += r.usage.completion_tokens
chunks = list(c.chat.completions.create(model="model", messages=[{"role": "user", "content": "the number 4 is"}],
                                        max_tokens=7, stream=True, stream_options={"include_usage": True}))
billed_prompt += chunks[-1].usage.prompt_tokens
billed_gen += chunks[-1].usage.completion_tokens
import time
def scrape():
    with urllib.request.urlopen(root + "/metrics") as r:
        return r.headers["Content-Type"], r.read().decode()
# The queue gauges are published at the end of the batcher's step, which may come just after
# the last answer reached us: wait for them to settle (the counters are final already).
for _ in range(100):
    ctype, text = scrape()
    if re.search(r'^galley_requests_running\{model="model"\} 0$', text, re.M):
        break
    time.sleep(0.1)
check(ctype.startswith("application/openmetrics-text"), ctype)
check(text.rstrip().endswith('# EOF'), text[-200:])
def value(name):
    m = re.search(r"^" + re.escape(name) + r'\{model="model"\} (\S+)$', text, re.M)
    check(m is not None, f"{name} missing in:\n{text}")
    return float(m.group(1))
check(value("galley_prompt_tokens_total") == billed_prompt, f"prompt {value('galley_prompt_tokens_total')} vs {billed_prompt}")
check(value("galley_generation_tokens_total") == billed_gen, f"generated {value('galley_generation_tokens_total')} vs {billed_gen}")
check(value("galley_sequences_finished_total") == 4, "finished")
check(value("galley_time_to_first_token_seconds_count") == 4, "ttft count")
check(value("galley_request_duration_seconds_count") == 4, "duration count")
check(value("galley_requests_running") == 0 and value("galley_requests_waiting") == 0, "idle")
check(0 < value("galley_time_to_first_token_seconds_sum") <= value("galley_request_duration_seconds_sum"), "ttft before the end")
print("ok")
"#,
    );
}

/// JSON mode on SmolLM2 (`response_format: json_object`): asked for an object, the model
/// answers greedily with Python code; in JSON mode the same request is one JSON object,
/// ended when it closes.
#[test]
fn json_mode_turns_smollm2s_answer_into_one_json_object() {
    serve_smollm2_and_run(
        r#"
msgs = [{"role": "user", "content": "Return a JSON object with a key fruits listing three fruits."}]
plain = c.chat.completions.create(model="smol", messages=msgs, max_tokens=200, temperature=0)
r = c.chat.completions.create(model="smol", messages=msgs, max_tokens=200, temperature=0,
                              response_format={"type": "json_object"})
text = r.choices[0].message.content
print("plain:", repr(plain.choices[0].message.content[:80]), file=sys.stderr)
print("json mode:", repr(text), file=sys.stderr)
check(r.choices[0].finish_reason == "stop", f"{r.choices[0].finish_reason}: {text!r}")
check(isinstance(json.loads(text), dict), text)
print("ok")
"#,
    );
}

/// Structured outputs on SmolLM2, as a Python user asks for them: the openai client's
/// `chat.completions.parse` with a pydantic model (the client writes the strict JSON schema:
/// `$defs` and `$ref` for the enum, every property required, no extra ones). The answer
/// parses into the model; a hand-written schema with limits holds the answer to them; and a
/// schema galley cannot enforce is a 400 naming the keyword.
#[test]
fn structured_outputs_parse_into_the_clients_pydantic_model() {
    serve_smollm2_and_run(
        r#"
import datetime, enum
from typing import Optional
from pydantic import BaseModel
class Color(str, enum.Enum):
    red = "red"
    green = "green"
    blue = "blue"
class City(BaseModel):
    name: str
    country: str
    population_millions: float
    capital: bool
    color: Color
    nickname: Optional[str]
    landmarks: list[str]
    founded: datetime.date
msgs = [{"role": "user", "content": "Describe Paris as a JSON object with its name, country, population in millions, whether it is a capital, a color, a nickname, two landmarks and when it was founded."}]
# A 135M model repeats itself inside an open list when greedy; a frequency penalty ends it.
r = c.chat.completions.parse(model="smol", messages=msgs, max_tokens=300, temperature=0,
                             frequency_penalty=0.5, response_format=City)
text = r.choices[0].message.content
print("parsed:", repr(text), file=sys.stderr)
check(r.choices[0].finish_reason == "stop", f"{r.choices[0].finish_reason}: {text!r}")
city = r.choices[0].message.parsed
check(isinstance(city, City), f"{city!r}")
check(list(json.loads(text)) == list(City.model_fields), f"keys in schema order: {text}")
# A discriminated union (oneOf + discriminator): the answer is one of the branches, whole.
from typing import Literal, Union
from pydantic import Field
class Cat(BaseModel):
    kind: Literal["cat"]
    meows: int
class Dog(BaseModel):
    kind: Literal["dog"]
    barks: bool
class Owner(BaseModel):
    name: str
    pet: Union[Cat, Dog] = Field(discriminator="kind")
r = c.chat.completions.parse(model="smol", messages=[{"role": "user", "content": "Describe a dog owner named Ann as JSON."}],
                             max_tokens=120, temperature=0, response_format=Owner)
owner = r.choices[0].message.parsed
print("owner:", repr(r.choices[0].message.content), file=sys.stderr)
check(isinstance(owner, Owner) and isinstance(owner.pet, (Cat, Dog)), f"{r.choices[0].message.content!r}")
# Limits: at most two short tags, an integer count.
schema = {"type": "object", "additionalProperties": False, "required": ["tags", "count"],
          "properties": {"tags": {"type": "array", "items": {"type": "string", "maxLength": 6}, "minItems": 1, "maxItems": 2},
                         "count": {"type": "integer"}}}
r = c.chat.completions.create(model="smol", messages=[{"role": "user", "content": "List tags for a blog post about cooking pasta, and how many."}],
                              max_tokens=200, temperature=0.7, seed=3,
                              response_format={"type": "json_schema", "json_schema": {"name": "tags", "schema": schema, "strict": True}})
doc = json.loads(r.choices[0].message.content)
print("limited:", doc, file=sys.stderr)
check(list(doc) == ["tags", "count"] and 1 <= len(doc["tags"]) <= 2, f"{doc}")
check(all(isinstance(t, str) and len(t) <= 6 for t in doc["tags"]) and isinstance(doc["count"], int), f"{doc}")
# The legacy endpoint takes it too (vLLM's extension), as a raw prompt's continuation.
r = c.completions.create(model="smol", prompt="Tags for a post about pasta, as JSON:", max_tokens=120,
                         temperature=0.7, seed=3, extra_body={"response_format": {"type": "json_schema",
                         "json_schema": {"name": "tags", "schema": schema}}})
doc = json.loads(r.choices[0].text)
check(list(doc) == ["tags", "count"] and 1 <= len(doc["tags"]) <= 2, f"completions: {doc}")
schema["properties"]["count"]["minimum"] = 0
try:
    c.chat.completions.create(model="smol", messages=msgs, max_tokens=5,
                              response_format={"type": "json_schema", "json_schema": {"name": "tags", "schema": schema}})
    check(False, "an unenforceable schema was accepted")
except openai.BadRequestError as ex:
    check(ex.body["param"] == "response_format" and "/properties/count/minimum" in ex.body["message"], f"{ex.body}")
print("ok")
"#,
    );
}

#[test]
fn a_full_queue_is_429_and_a_client_that_leaves_frees_its_row() {
    let tmp = setup();
    let d = tmp.path();
    let s = serve(d, &["-m", "model", "--max-batch", "1", "--queue", "1"]);
    let script = format!(
        "{COMMON}{}",
        r#"
import threading, time, urllib.request
msgs = [{"role": "user", "content": "the number 3 is"}]
# The end-of-turn token banned (OpenAI's logit_bias): generations run to max_tokens.
tok = json.load(open("model/tokenizer.json"))
eos = next(t["id"] for t in tok["added_tokens"] if t["content"] == "<|im_end|>")
ban = {str(eos): -100}
def health():
    with urllib.request.urlopen(os.environ["URL"][:-3] + "/health") as r:
        return json.load(r)["models"][0]

# One long generation decodes, one waits in the queue of one: the rest are refused with 429.
codes = []
def call():
    try:
        c.chat.completions.create(model="model", messages=msgs, max_tokens=3000, temperature=1,
                                  logit_bias=ban)
        codes.append(200)
    except openai.RateLimitError:
        codes.append(429)
threads = [threading.Thread(target=call) for _ in range(6)]
for t in threads:
    t.start()
for t in threads:
    t.join()
check(codes.count(429) >= 3 and codes.count(200) >= 1, f"codes {codes}")

# A stream left after two chunks: the server notices, drops the row, and is idle again.
before = health()
st = c.chat.completions.create(model="model", messages=msgs, max_tokens=3500, temperature=1,
                               logit_bias=ban, stream=True)
for i, _ in enumerate(st):
    if i == 2:
        break
st.close()
for _ in range(100):
    h = health()
    if h["running"] == 0:
        break
    time.sleep(0.05)
check(h["running"] == 0 and h["waiting"] == 0, f"still busy {h}")
check(h["cancelled"] == before["cancelled"] + 1, f"not cancelled {before} -> {h}")
check(h["finished"] == before["finished"], f"ran to the end {before} -> {h}")
check(h["failed"] == 0, f"failed {h}")
print("ok")
"#
    );
    assert_eq!(client(d, &s.url, &script).trim(), "ok");
}

/// A repeated request, a conversation's next turn and concurrent requests sharing a system
/// prompt: with the prompt cache (default) the server prefills only their new tokens, and its
/// answers are those of a server without it (`--prompt-cache-mib 0`): the same tokens, the
/// same log-probabilities within float rounding. A prompt kept under one `cache_salt` serves
/// only requests with that salt.
/// `--lookup N` (prompt-lookup decoding while a sequence decodes alone): the answers,
/// streamed or not, greedy or seeded, JSON mode included, are the same as without it, and
/// `/metrics` counts the drafted tokens and those kept.
#[test]
fn lookup_decoding_through_galley_serve_answers_as_without_it() {
    let tmp = setup();
    let d = tmp.path();
    let script = format!(
        "{COMMON}{}",
        r#"
import urllib.request, re
root = os.environ["URL"][:-len("/v1")]
tok = json.load(open("model/tokenizer.json"))
eos = next(t["id"] for t in tok["added_tokens"] if t["content"] == "<|im_end|>")
out = []
# Greedy (the random model loops: drafts kept), and sampled between two tokens made far more
# likely than the rest (drafts of their repeats kept or cut at random).
two = {str(eos): -100, "40": 9, "41": 9}
for temperature, seed, bias in [(0, None, {str(eos): -100}), (1.0, 3, two), (0.8, 5, two)]:
    msgs = [{"role": "user", "content": "the number 3 is 3 and the number 3 is 3 and the number 3 is"}]
    r = c.chat.completions.create(model="model", messages=msgs, max_tokens=24, temperature=temperature,
                                  seed=seed, logprobs=True, logit_bias=bias)
    out.append([[t.token, t.logprob] for t in r.choices[0].logprobs.content])
    chunks = c.chat.completions.create(model="model", messages=msgs, max_tokens=24, temperature=temperature,
                                       seed=seed, logit_bias=bias, stream=True)
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    check(text == r.choices[0].message.content, f"stream {text!r} vs {r.choices[0].message.content!r}")
j = c.chat.completions.create(model="model", messages=[{"role": "user", "content": "a list of 3 and 3"}],
                              max_tokens=20, temperature=0, response_format={"type": "json_object"})
out.append(j.choices[0].message.content)
with urllib.request.urlopen(root + "/metrics") as r:
    text = r.read().decode()
def value(name):
    m = re.search(r"^" + re.escape(name) + r'\{model="model"\} (\S+)$', text, re.M)
    check(m is not None, f"{name} missing")
    return float(m.group(1))
print(json.dumps({"answers": out, "drafted": value("galley_draft_tokens_total"),
                  "kept": value("galley_draft_tokens_accepted_total")}))
"#
    );
    let run = |args: &[&str]| -> serde_json::Value {
        let s = serve(d, &[&["-m", "model"], args].concat());
        let out = client(d, &s.url, &script);
        serde_json::from_str(out.trim().lines().last().unwrap()).unwrap()
    };
    let with = run(&["--lookup", "6"]);
    let without = run(&[]);
    assert_eq!(without["drafted"], 0.0);
    let (drafted, kept) = (
        with["drafted"].as_f64().unwrap(),
        with["kept"].as_f64().unwrap(),
    );
    println!("{kept} of {drafted} drafted tokens kept");
    assert!(
        kept > 0.0 && kept < drafted,
        "{kept} of {drafted} drafted tokens kept"
    );
    let (a, b) = (
        with["answers"].as_array().unwrap(),
        without["answers"].as_array().unwrap(),
    );
    assert_eq!(a[3], b[3], "JSON mode answers differ");
    for (i, (x, y)) in a[..3].iter().zip(&b[..3]).enumerate() {
        let (x, y) = (x.as_array().unwrap(), y.as_array().unwrap());
        assert_eq!(x.len(), y.len(), "answer {i}: lengths");
        for (p, q) in x.iter().zip(y) {
            assert_eq!(p[0], q[0], "answer {i}: tokens");
            let (lp, lq) = (p[1].as_f64().unwrap(), q[1].as_f64().unwrap());
            assert!(
                (lp - lq).abs() <= 1e-4 * (1.0 + lq.abs()),
                "answer {i}: {lp} vs {lq}"
            );
        }
    }
}

#[test]
fn the_prompt_cache_skips_shared_prompts_and_answers_as_without_it() {
    let tmp = setup();
    let d = tmp.path();
    let script = format!(
        "{COMMON}{}",
        r#"
import sys, threading, urllib.request
def health():
    with urllib.request.urlopen(os.environ["URL"][:-3] + "/health") as r:
        return json.load(r)["models"][0]
tok = json.load(open("model/tokenizer.json"))
eos = next(t["id"] for t in tok["added_tokens"] if t["content"] == "<|im_end|>")
def ask(msgs, **kw):
    r = c.chat.completions.create(model="model", messages=msgs, max_tokens=12, temperature=0,
                                  logprobs=True, logit_bias={str(eos): -100}, **kw)
    return [(t.token, t.logprob) for t in r.choices[0].logprobs.content], r.choices[0].message.content
system = {"role": "system", "content": "the number 1 is 3 and the answer is yes. " * 4}
first = [system, {"role": "user", "content": "the number 3 is"}]
out = [ask(first), ask(first)]
second = first + [{"role": "assistant", "content": out[0][1]},
                  {"role": "user", "content": "the number 5 is"}]
out.append(ask(second))
# Four at once, sharing the system prompt.
together = [None] * 4
def one(i):
    together[i] = ask([system, {"role": "user", "content": f"the number {i + 7} is"}])
threads = [threading.Thread(target=one, args=(i,)) for i in range(4)]
for t in threads: t.start()
for t in threads: t.join()
cache = health()["prompt_cache"]
# Salted (vLLM's cache_salt): a prompt kept unsalted or under another salt is not reused.
hits = []
for salt in ["alice", "alice", "bob"]:
    before = health()["prompt_cache"]["hits"]
    got = ask(first, extra_body={"cache_salt": salt})
    # A hit's last prompt token runs through the decode step: equal to rounding.
    same = got[1] == out[0][1] and all(
        a[0] == b[0] and abs(a[1] - b[1]) <= 1e-5 * (1 + abs(b[1])) for a, b in zip(got[0], out[0][0]))
    hits.append([health()["prompt_cache"]["hits"] - before, same])
try:
    ask(first, extra_body={"cache_salt": ""})
    hits.append("empty salt accepted")
except openai.BadRequestError as e:
    hits.append(e.body["param"])
print(json.dumps({"answers": out + together, "cache": cache, "salted": hits}))
"#
    );
    let run = |args: &[&str]| -> serde_json::Value {
        let s = serve(d, &[&["-m", "model"], args].concat());
        let out = client(d, &s.url, &script);
        serde_json::from_str(out.trim().lines().last().unwrap()).unwrap()
    };
    let with = run(&[]);
    let without = run(&["--prompt-cache-mib", "0"]);
    let cache = &with["cache"];
    // The repeat and the next turn hit (the four concurrent ones may or may not, by timing).
    assert!(cache["hits"].as_u64().unwrap() >= 2, "{cache}");
    assert!(cache["tokens"].as_u64().unwrap() >= 2 * 40, "{cache}");
    assert!(cache["bytes"].as_u64().unwrap() > 0, "{cache}");
    assert_eq!(without["cache"]["hits"], 0, "{}", without["cache"]);
    assert_eq!(without["cache"]["bytes"], 0, "{}", without["cache"]);
    let (a, b) = (
        with["answers"].as_array().unwrap(),
        without["answers"].as_array().unwrap(),
    );
    assert_eq!(a.len(), 7);
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert_eq!(x[1], y[1], "answer {i}: the texts differ");
        for (p, q) in x[0]
            .as_array()
            .unwrap()
            .iter()
            .zip(y[0].as_array().unwrap())
        {
            assert_eq!(p[0], q[0], "answer {i}");
            let (lp, lq) = (p[1].as_f64().unwrap(), q[1].as_f64().unwrap());
            assert!(
                (lp - lq).abs() <= 1e-4 * (1.0 + lq.abs()),
                "answer {i}: {lp} vs {lq}"
            );
        }
    }
    // The repeat (a hit) runs its prompt's last token through the decode step's attention,
    // the first through the prefill's: their sums are ordered differently, so the same text
    // with log-probabilities equal to rounding (1 ulp seen), not to the bit.
    assert_eq!(a[0][1], a[1][1], "the repeat answers as the first");
    for (p, q) in a[0][0]
        .as_array()
        .unwrap()
        .iter()
        .zip(a[1][0].as_array().unwrap())
    {
        assert_eq!(p[0], q[0], "the repeat's tokens");
        let (lp, lq) = (p[1].as_f64().unwrap(), q[1].as_f64().unwrap());
        assert!((lp - lq).abs() <= 1e-5 * (1.0 + lq.abs()), "{lp} vs {lq}");
    }
    // Salted: alice's first request misses (the prompt is kept unsalted), her repeat hits,
    // bob misses; the answers are the unsalted ones.
    let salted = serde_json::json!([[0, true], [1, true], [0, true], "cache_salt"]);
    assert_eq!(with["salted"], salted);
    let off = serde_json::json!([[0, true], [0, true], [0, true], "cache_salt"]);
    assert_eq!(without["salted"], off);
}

#[test]
fn galley_eval_through_galley_serve_scores_as_galley_eval_on_the_model() {
    // The remote engine (any OpenAI-compatible server) against galley's own server: the same
    // multiple-choice task, scored by echo log-probabilities over HTTP, gives the same numbers.
    let tmp = setup();
    let d = tmp.path();
    let mut rows = String::new();
    for i in 0..12 {
        let row = serde_json::json!({
            "question": format!("the number {i} is"),
            "choices": [format!("{}", i * 3 % 17), format!("{}", i + 7), "no"],
            "gold": i % 3,
        });
        rows.push_str(&format!("{row}\n"));
    }
    std::fs::write(d.join("mc.jsonl"), rows).unwrap();
    std::fs::write(
        d.join("mc.yaml"),
        "task: mc\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: mc.jsonl\n\
         output_type: multiple_choice\ntest_split: test\ndoc_to_text: \"{{question}}\"\n\
         doc_to_target: \"{{gold}}\"\ndoc_to_choice: \"{{choices}}\"\n\
         metric_list:\n  - metric: acc\n  - metric: acc_norm\n",
    )
    .unwrap();
    let s = serve(d, &["-m", "model"]);
    let eval = |args: &[&str]| -> serde_json::Value {
        let mut all = vec!["eval", "--tasks", "mc.yaml", "--json"];
        all.extend_from_slice(args);
        let o = galley(d, &all);
        assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
        serde_json::from_str(&stdout(&o)).unwrap()
    };
    let native = eval(&["-m", "model", "-o", "native"]);
    let url = format!("{}/v1", s.url);
    let remote = eval(&["--base-url", &url, "--model-id", "model", "-o", "remote"]);
    // Every choice's log-likelihood, to float tolerance (one batched pass vs one request each).
    let lls = |dir: &str| loglikelihoods(&d.join(dir));
    let (a, b) = (lls("native"), lls("remote"));
    assert_eq!(a.len(), 36);
    let worst = a
        .iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max);
    assert!(worst < 1e-3, "log-likelihoods differ by up to {worst}");
    assert_eq!(remote["results"]["mc"]["n"], 12);
    for k in ["acc,none", "acc_norm,none"] {
        assert_eq!(
            native["results"]["mc"][k], remote["results"]["mc"][k],
            "{k}"
        );
    }
    assert_eq!(remote["model"]["id"], "model");
}

#[test]
fn galley_judge_through_galley_serve_gives_the_local_judges_verdicts() {
    // A remote judge (the common case) through the server's chat API: greedy, the same
    // template server-side, so the same raw verdicts as the model judging locally.
    let tmp = setup();
    let d = tmp.path();
    let items: String = (0..3)
        .map(|i| {
            format!(
                "{}\n",
                serde_json::json!({"question": format!("the number {i} is"), "answer": format!("{}", i * 3)})
            )
        })
        .collect();
    std::fs::write(d.join("answers.jsonl"), items).unwrap();
    let s = serve(d, &["-m", "model"]);
    let url = format!("{}/v1", s.url);
    let judge = |out: &str, extra: &[&str]| -> Vec<serde_json::Value> {
        let mut all = vec![
            "judge",
            "answers.jsonl",
            "-m",
            "model",
            "--max-tokens",
            "12",
            "-o",
            out,
        ];
        all.extend_from_slice(extra);
        let o = galley(d, &all);
        assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
        std::fs::read_to_string(d.join(out))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["judge"].clone())
            .collect()
    };
    let local = judge("local.jsonl", &[]);
    let remote = judge("remote.jsonl", &["--base-url", &url]);
    assert_eq!(local.len(), 3);
    // The tiny model's verdicts are text of its own (unparseable), but real text.
    assert!(
        local
            .iter()
            .all(|v| !v["raw"].as_str().unwrap_or_default().is_empty()),
        "{local:?}"
    );
    assert_eq!(local, remote);
}

#[test]
fn galley_infer_through_galley_serve_answers_as_galley_infer_on_the_model() {
    // `--base-url` makes the model a server's: one prompt and a JSONL batch through its chat
    // API, greedy, so the same text as the model answering locally.
    let tmp = setup();
    let d = tmp.path();
    std::fs::write(
        d.join("in.jsonl"),
        "{\"prompt\": \"the number 4 is\", \"id\": 1}\n{\"messages\": [{\"role\": \"user\", \"content\": \"the number 9 is\"}]}\n",
    )
    .unwrap();
    let s = serve(d, &["-m", "model"]);
    let url = format!("{}/v1", s.url);
    let infer = |extra: &[&str]| -> String {
        let mut all = vec![
            "infer",
            "-m",
            "model",
            "-s",
            "temperature=0",
            "-s",
            "max_tokens=10",
        ];
        all.extend_from_slice(extra);
        let o = galley(d, &all);
        assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
        stdout(&o)
    };
    let local = infer(&["-p", "the number 3 is"]);
    let remote = infer(&["-p", "the number 3 is", "--base-url", &url]);
    assert_eq!(local, remote);
    // A schema goes to the server as `response_format`, properties in their order: the same
    // object as the model held to it locally.
    let schema = r#"{"type": "object", "required": ["z", "a"], "properties": {
        "z": {"enum": ["yes", "no"]}, "a": {"type": "string", "maxLength": 8}}}"#;
    let local = infer(&[
        "-p",
        "the number 3 is",
        "-j",
        schema,
        "-s",
        "max_tokens=300",
    ]);
    let remote = infer(&[
        "-p",
        "the number 3 is",
        "-j",
        schema,
        "-s",
        "max_tokens=300",
        "--base-url",
        &url,
    ]);
    assert_eq!(local, remote);
    let v: serde_json::Value =
        serde_json::from_str(local.trim()).unwrap_or_else(|e| panic!("{e}: {local:?}"));
    assert!(
        local.find("\"z\"") < local.find("\"a\"") && v["z"].is_string(),
        "{local}"
    );
    let completions = |f: &str| -> Vec<(serde_json::Value, String)> {
        std::fs::read_to_string(d.join(f))
            .unwrap()
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                (
                    v["id"].clone(),
                    v["completion"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    };
    infer(&["-i", "in.jsonl", "-o", "local.jsonl"]);
    infer(&["-i", "in.jsonl", "-o", "remote.jsonl", "--base-url", &url]);
    let done = completions("local.jsonl");
    assert!(done.iter().all(|(_, c)| !c.is_empty()), "{done:?}");
    assert_eq!(done, completions("remote.jsonl"));
    assert_eq!(
        completions("remote.jsonl")[0].0,
        1,
        "the input's columns are kept"
    );
    // What a server cannot honour is refused, not dropped.
    let o = galley(
        d,
        &[
            "infer",
            "-m",
            "model",
            "-p",
            "x",
            "-s",
            "top_k=5",
            "--base-url",
            &url,
        ],
    );
    assert!(!o.status.success());
    assert!(
        one_line_error(&o).contains("sampling.top_k"),
        "{}",
        stderr(&o)
    );
}
