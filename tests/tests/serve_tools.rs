//! Tool calling and thinking models through `galley serve`, called with the official
//! `openai` Python client: required and named calls held to the tools, streamed as OpenAI
//! streams them, earlier calls rendered back; `auto` calls held once opened; a real template
//! that writes XML calls; thinking split into `reasoning_content`, `chat_template_kwargs`,
//! JSON held from the end of thinking.

mod served;

use galley_e2e::*;
use served::*;

/// Tool calling through the openai client: `tool_choice` required or named holds even a
/// random model to a call of one of the tools whose arguments validate, streamed or not (the
/// same call for the same seed); a conversation's earlier call and its result reach the
/// template as the model was trained to read them (`--chat-template` given as a path
/// relative to where galley runs); the model's own template, which shows no tools, gets
/// `auto` refused with what to do.
#[test]
fn tool_choice_required_and_named_return_calls_that_validate_streamed_or_not() {
    let tmp = setup();
    let d = tmp.path();
    std::fs::write(d.join("tools.jinja"), TOOLS_TEMPLATE).unwrap();
    let s = serve(d, &["-m", "model", "--chat-template", "tools.jinja"]);
    let plain = serve(d, &["-m", "model"]);
    let script = format!(
        "{COMMON}PLAIN = {:?} + '/v1'\n{}",
        plain.url,
        r#"
import urllib.request
tools = [
  {"type": "function", "function": {"name": "get_weather", "description": "The weather in a city",
   "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 12},
                  "unit": {"type": "string", "enum": ["c", "f"]}}, "required": ["city", "unit"]}}},
  {"type": "function", "function": {"name": "add", "parameters": {"type": "object",
   "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}, "required": ["a", "b"]}}},
]
msgs = [{"role": "user", "content": "the number 3 is"}]
def valid(call):
    args = json.loads(call.function.arguments)
    if call.function.name == "get_weather":
        return list(args) == ["city", "unit"] and len(args["city"]) <= 12 and args["unit"] in ("c", "f")
    return call.function.name == "add" and list(args) == ["a", "b"] and all(type(v) is int for v in args.values())

seen, finished = set(), 0
for seed in range(8):
    kw = dict(model="model", messages=msgs, tools=tools, tool_choice="required", max_tokens=160, seed=seed)
    r = c.chat.completions.create(**kw)
    ch = r.choices[0]
    if ch.finish_reason == "length":
        continue
    check(ch.finish_reason == "tool_calls" and ch.message.content is None, f"{seed}: {ch}")
    check(len(ch.message.tool_calls) == 1 and valid(ch.message.tool_calls[0]), f"{seed}: {ch.message}")
    call = ch.message.tool_calls[0]
    check(call.type == "function" and call.id.startswith("call_"), f"{call}")
    seen.add(call.function.name)
    finished += 1
    # Streamed: the name first (with the id), then the arguments piece by piece, as OpenAI
    # streams them; joined, the same call.
    parts, finish, content = {}, None, ""
    for chunk in c.chat.completions.create(stream=True, **kw):
        for d in chunk.choices:
            content += d.delta.content or ""
            for tc in d.delta.tool_calls or []:
                parts.setdefault(tc.index, []).append(tc)
            finish = d.finish_reason or finish
    check(content == "" and finish == "tool_calls" and list(parts) == [0], f"{seed}: {parts} {finish} {content!r}")
    first, rest = parts[0][0], parts[0][1:]
    check(first.id.startswith("call_") and first.function.name == call.function.name, f"{seed}: {first}")
    check(len(rest) >= 2 and all(p.id is None and p.function.name is None for p in rest), f"{seed}: {rest}")
    joined = "".join(p.function.arguments or "" for p in parts[0])
    check(joined == call.function.arguments, f"{seed}: streamed {joined!r} vs {call.function.arguments!r}")
    # The openai client's own stream helper puts them together the same way.
    with c.chat.completions.stream(**kw) as st:
        final = st.get_final_completion().choices[0].message.tool_calls[0]
    check((final.function.name, final.function.arguments) == (call.function.name, call.function.arguments), f"{final}")
# Strings are bounded and the tiny model's numbers end: most answers close their call.
check(finished >= 6 and seen == {"get_weather", "add"}, f"{finished} of 8 calls closed: {seen}")

for seed in range(3):
    r = c.chat.completions.create(model="model", messages=msgs, tools=tools, max_tokens=160, seed=seed,
                                  tool_choice={"type": "function", "function": {"name": "add"}})
    ch = r.choices[0]
    if ch.finish_reason != "length":
        check(ch.message.tool_calls[0].function.name == "add" and valid(ch.message.tool_calls[0]), f"{ch}")

# An earlier call and its result, as the client sends them back, through the template.
turns = msgs + [
    {"role": "assistant", "content": None, "tool_calls": [{"id": "call_1", "type": "function",
      "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\", \"unit\": \"c\"}"}}]},
    {"role": "tool", "tool_call_id": "call_1", "content": "{\"temp\": 21}"},
]
root = os.environ["URL"][:-len("/v1")]
def post(path, body):
    req = urllib.request.Request(root + path, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req) as r:
        return json.load(r)
ids = post("/tokenize", {"messages": turns, "tools": tools})["tokens"]
text = post("/detokenize", {"tokens": ids})["prompt"]
for want in ['{"type": "function", "function": {"name": "get_weather", "description": "The weather in a city", "parameters": {"type": "object", "properties": {"city"',
             '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": "c"}}\n</tool_call>',
             '<tool_response>\n{"temp": 21}\n</tool_response>']:
    check(want in text, f"{want!r} not in {text!r}")
r = c.chat.completions.create(model="model", messages=turns, tools=tools, max_tokens=8)
check(r.choices[0].finish_reason in ("stop", "length", "tool_calls"), f"{r}")
check(r.usage.prompt_tokens == len(ids), f"{r.usage} vs {len(ids)}")

# The model's own template shows no tools: auto is refused, saying what would work; a
# forced call still works (one bare JSON object).
p = openai.OpenAI(base_url=PLAIN, api_key="none", max_retries=0)
try:
    p.chat.completions.create(model="model", messages=msgs, tools=tools, max_tokens=4)
    check(False, "auto accepted without a template that shows tools")
except openai.BadRequestError as ex:
    check(ex.body["param"] == "tools" and "--chat-template" in ex.body["message"], f"{ex.body}")
r = p.chat.completions.create(model="model", messages=msgs, tools=tools, tool_choice="required",
                              max_tokens=160, seed=1)
ch = r.choices[0]
check(ch.finish_reason == "length" or valid(ch.message.tool_calls[0]), f"{ch}")
# The openai client's strict tools from pydantic models, parsed back into them.
import pydantic
class Add(pydantic.BaseModel):
    a: int
    b: int
r = c.chat.completions.parse(model="model", messages=msgs, tools=[openai.pydantic_function_tool(Add)],
                             tool_choice="required", max_tokens=160, seed=3)
ch = r.choices[0]
check(isinstance(ch.message.tool_calls[0].function.parsed_arguments, Add), f"{ch}")
for kw, param in [({"tools": [{"type": "function", "function": {"name": "a b"}}]}, "tools[0].function.name"),
                  ({"tools": tools, "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
                  ({"functions": [{"name": "f"}]}, "functions")]:
    try:
        c.chat.completions.create(model="model", messages=msgs, max_tokens=4, **kw)
        check(False, f"{kw} accepted")
    except openai.BadRequestError as ex:
        check(ex.body["param"] == param, f"{kw}: {ex.body}")
print("ok")
"#
    );
    assert_eq!(client(d, &s.url, &script).trim(), "ok");
}

/// `tool_choice: "auto"` holds each call the model opens to the tools (llama.cpp's lazy
/// grammar), and leaves the answer free around it: a random model whose vocabulary has
/// `<tool_call>` as one token (as Qwen's has), pushed to write it by `logit_bias`, writes
/// call after call, each of which parses and validates; streamed, the same text.
#[test]
fn auto_tool_calls_are_held_to_the_tools_once_opened() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    tiny_model(d, &["<tool_call>"]);
    std::fs::write(d.join("tools.jinja"), TOOLS_TEMPLATE).unwrap();
    let s = serve(d, &["-m", "model", "--chat-template", "tools.jinja"]);
    let script = format!(
        "{COMMON}{}",
        r#"
ids = [one_token("<tool_call>")]
tools = [{"type": "function", "function": {"name": "add", "parameters": {"type": "object",
          "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}, "required": ["a", "b"]}}},
         {"type": "function", "function": {"name": "pick", "parameters": {"type": "object",
          "properties": {"unit": {"enum": ["c", "f"]}}, "required": ["unit"]}}}]
msgs = [{"role": "user", "content": "the number 3 is"}]
calls = 0
for seed in range(4):
    kw = dict(model="model", messages=msgs, tools=tools, max_tokens=400, seed=seed, logit_bias={str(ids[0]): 100})
    r = c.chat.completions.create(**kw).choices[0]
    m = r.message
    if m.tool_calls:
        segs = [json.dumps({"name": t.function.name, "arguments": json.loads(t.function.arguments)}) for t in m.tool_calls]
    else:
        # Out of tokens inside the last call: the answer comes back as text, each call
        # before the last one whole.
        check(r.finish_reason == "length" and m.content.startswith("<tool_call>"), f"{r}")
        segs = m.content.split("<tool_call>")[1:-1]
    check(len(segs) >= 2, f"{seed}: {m}")
    for seg in segs:
        call = json.loads(seg)
        args = call["arguments"]
        ok = (call["name"] == "add" and list(args) == ["a", "b"] and all(type(v) is int for v in args.values())) or \
             (call["name"] == "pick" and args == {"unit": args["unit"]} and args["unit"] in ("c", "f"))
        check(ok, f"{seed}: {seg!r}")
        calls += 1
    streamed = ""
    for chunk in c.chat.completions.create(stream=True, **kw):
        for ch in chunk.choices:
            streamed += ch.delta.content or ""
    if not m.tool_calls:
        check(streamed == m.content, f"{seed}: streamed {streamed!r} vs {m.content!r}")
print("ok")
"#
    );
    assert_eq!(client(d, &s.url, &script).trim(), "ok");
}

/// A real template whose calls are not JSON (Qwen3-Coder's XML, from llama.cpp's test
/// templates): galley finds the format by rendering a call with it, `auto` is read (not held),
/// and a required call is held to the tools as one bare JSON object.
#[test]
fn a_template_that_writes_xml_calls_serves_auto_and_required() {
    let tmp = setup();
    let d = tmp.path();
    let tmpl = repo_root().join(".cache/chat-templates/Qwen3-Coder.jinja");
    assert!(
        tmpl.exists(),
        "{} is missing: run scripts/fetch-data.sh",
        tmpl.display()
    );
    let s = serve(
        d,
        &["-m", "model", "--chat-template", tmpl.to_str().unwrap()],
    );
    let script = format!(
        "{COMMON}{}",
        r#"
tools = [{"type": "function", "function": {"name": "add", "description": "Adds two numbers", "parameters": {"type": "object",
          "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}, "required": ["a", "b"]}}}]
msgs = [{"role": "user", "content": "the number 3 is"}]
ids = post_json("/tokenize", {"messages": msgs, "tools": tools})["tokens"]
prompt = post_json("/detokenize", {"tokens": ids})["prompt"]
check("<name>add</name>" in prompt and "Adds two numbers" in prompt, prompt)
r = c.chat.completions.create(model="model", messages=msgs, tools=tools, max_tokens=8, seed=1).choices[0]
check(r.finish_reason in ("stop", "length") and r.message.tool_calls is None, f"{r}")
r = c.chat.completions.create(model="model", messages=msgs, tools=tools, tool_choice="required",
                              max_tokens=120, seed=2).choices[0]
check(r.finish_reason == "tool_calls", f"{r}")
args = json.loads(r.message.tool_calls[0].function.arguments)
check(r.message.tool_calls[0].function.name == "add" and sorted(args) == ["a", "b"], f"{r}")
print("ok")
"#
    );
    assert_eq!(client(d, &s.url, &script).trim(), "ok");
}

/// A thinking template (DeepSeek-R1's way: the generation prompt opens `<think>`; Qwen 3's
/// `enable_thinking: false` closes it empty), written for these tests.
const THINK_TEMPLATE: &str = "{% for m in messages %}<|im_start|>{{ m.role }}\n{% if m.reasoning_content %}<think>\n{{ m.reasoning_content }}\n</think>\n\n{% endif %}{{ m.content }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n{% else %}<think>\n{% endif %}{% endif %}";

/// Thinking models' answers: with a template that opens a `<think>` block, what the model
/// writes before closing it comes back as `reasoning_content` (streamed as
/// `delta.reasoning_content`, the same text for the same seed), `chat_template_kwargs`
/// reach the template (`enable_thinking: false` leaves no block open: all is content), an
/// earlier turn's `reasoning_content` is rendered back, and `--reasoning-format none`
/// leaves everything in `content`.
#[test]
fn thinking_comes_back_as_reasoning_content_and_template_kwargs_reach_the_template() {
    let tmp = setup();
    let d = tmp.path();
    std::fs::write(d.join("think.jinja"), THINK_TEMPLATE).unwrap();
    let s = serve(d, &["-m", "model", "--chat-template", "think.jinja"]);
    let raw = serve(
        d,
        &[
            "-m",
            "model",
            "--chat-template",
            "think.jinja",
            "--reasoning-format",
            "none",
        ],
    );
    let script = format!(
        "{COMMON}RAW = {:?} + '/v1'\n{}",
        raw.url,
        r#"
import urllib.request
msgs = [{"role": "user", "content": "the number 3 is"}]
kw = dict(model="model", messages=msgs, max_tokens=12, seed=5, temperature=1.0)
r = c.chat.completions.create(**kw).choices[0]
thought = r.message.model_extra.get("reasoning_content")
# A random model never closes the block: all it wrote is thinking, out of tokens.
check(r.finish_reason == "length" and thought and r.message.content == "", f"{r}")
reasoning, content = "", ""
for chunk in c.chat.completions.create(stream=True, **kw):
    for ch in chunk.choices:
        reasoning += (ch.delta.model_extra or {}).get("reasoning_content") or ""
        content += ch.delta.content or ""
check((reasoning, content) == (thought, ""), f"streamed {reasoning!r} {content!r} vs {thought!r}")
# Thinking turned off through the template: the answer is content.
off = c.chat.completions.create(extra_body={"chat_template_kwargs": {"enable_thinking": False}}, **kw).choices[0]
check(off.message.model_extra.get("reasoning_content") is None and off.message.content, f"{off}")
# The same answer from a server that leaves thinking in the text.
plain = openai.OpenAI(base_url=RAW, api_key="none", max_retries=0).chat.completions.create(**kw).choices[0]
check(plain.message.content == thought and plain.message.model_extra.get("reasoning_content") is None,
      f"{plain} vs {thought!r}")
# An earlier turn's thinking is rendered back where the template puts it.
root = os.environ["URL"][:-len("/v1")]
body = {"messages": msgs + [{"role": "assistant", "content": "9", "reasoning_content": "3 times 3"}],
        "add_generation_prompt": False}
req = urllib.request.Request(root + "/tokenize", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
ids = json.load(urllib.request.urlopen(req))["tokens"]
req = urllib.request.Request(root + "/detokenize", data=json.dumps({"tokens": ids}).encode(), headers={"Content-Type": "application/json"})
text = json.load(urllib.request.urlopen(req))["prompt"]
check("<|im_start|>assistant\n<think>\n3 times 3\n</think>\n\n9<|im_end|>" in text, text)
try:
    c.chat.completions.create(extra_body={"chat_template_kwargs": {"messages": []}}, **kw)
    check(False, "chat_template_kwargs replaced messages")
except openai.BadRequestError as ex:
    check(ex.body["param"] == "chat_template_kwargs", f"{ex.body}")
print("ok")
"#
    );
    assert_eq!(client(d, &s.url, &script).trim(), "ok");
}

/// JSON asked of a thinking model whose prompt opened a block is held from the block's end
/// (the thinking stays free): a random model with `</think>` as one token, pushed to write
/// it, answers with reasoning apart and content that is one JSON object, ended when it
/// closes.
#[test]
fn json_from_a_thinking_model_is_held_from_the_end_of_its_thinking() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    tiny_model(d, &["</think>"]);
    std::fs::write(d.join("think.jinja"), THINK_TEMPLATE).unwrap();
    let s = serve(d, &["-m", "model", "--chat-template", "think.jinja"]);
    let script = format!(
        "{COMMON}{}",
        r#"
close = [one_token("</think>")]
msgs = [{"role": "user", "content": "the number 3 is"}]
closed = 0
for seed in range(6):
    # The block is closed at once (bias), then the answer must be an object.
    r = c.chat.completions.create(model="model", messages=msgs, max_tokens=96, seed=seed,
                                  logit_bias={close[0]: 100}, response_format={"type": "json_object"}).choices[0]
    check(r.message.model_extra.get("reasoning_content") == "" and r.message.content.startswith("{"), f"{seed}: {r}")
    if r.finish_reason == "stop":
        check(isinstance(json.loads(r.message.content), dict), f"{seed}: {r.message.content!r}")
        closed += 1
check(closed >= 1, f"no object closed in 6 answers")
# Without the push the model thinks freely, and the object never starts: all reasoning.
r = c.chat.completions.create(model="model", messages=msgs, max_tokens=16, seed=1,
                              response_format={"type": "json_object"}).choices[0]
check(r.message.model_extra.get("reasoning_content") and r.message.content == "", f"{r}")
print("ok")
"#
    );
    assert_eq!(client(d, &s.url, &script).trim(), "ok");
}
