// galley-sdk for JavaScript: write galley plugins as plain functions and classes.
//
// `galley plugin build` puts this file in front of your plugin.js and componentizes the
// result with componentize-js, so `reward`, `dataLoader`, `evaluator`, `recipe`, `log`,
// `ConfigError` and `InputError` are in scope (an `import ... from "galley-sdk"` line is
// accepted and removed). Nothing of the WIT shows in plugin code.
//
//   reward((completion, { answer, prompt, config }) => completion.includes(String(answer)) ? 1 : 0);
//
// reward(fn):     fn(completion, columns) -> number | null; `completion` is the text;
//                 `columns` holds every metadata column of the example plus `prompt` (message
//                 objects), `message` (the completion read as an assistant turn: {role,
//                 content}, with `tool_calls` ([{id, type, function: {name, arguments}}],
//                 arguments an object where they parse) and `reasoning_content` where the
//                 model wrote them), `truncated` and `config`.
// dataLoader(fn): fn(config, seed) is a generator (or returns an iterable) of
//                 {messages, metadata, id} objects (messages as TRL writes them, tool_calls
//                 and tool turns included).
// evaluator(fn, {aggregate}): fn(prediction, references, metadata) -> {metric: value};
//                 aggregate(listOfDicts) -> dict defaults to the mean of each metric.
// recipe(Class):  new Class() with plan(config) -> [{name, kind, config}] and optional
//                 onMetrics(stage, step, metrics) -> "proceed" | "next-stage" | ["stop", why].
// tool({name, description, parameters}, fn): a function a model may call during GRPO
//                 rollouts (galley:plugin@0.3.0; call tool() once per function):
//                 `parameters` is its arguments' JSON Schema, fn(args) returns the text the
//                 model reads (anything else is sent as JSON).
// Throw ConfigError for bad settings and InputError for bad input; anything else thrown is
// reported as the plugin's failure.

import { log as __galleyLog } from "galley:plugin/log@0.2.0";

class ConfigError extends Error {}
class InputError extends Error {}

const __galley = { registered: {}, state: {} };

function __register(kind, value) {
  if (__galley.registered[kind]) throw new Error(`a plugin exports one ${kind}`);
  __galley.registered[kind] = value;
  return value;
}

function reward(fn) { return __register("reward", fn); }
function dataLoader(fn) { return __register("data-loader", fn); }
function evaluator(fn, options = {}) { return __register("evaluator", { fn, aggregate: options.aggregate }); }
function recipe(cls) { return __register("recipe", cls); }
function tool(spec, fn) {
  const tools = (__galley.registered.tool ||= []);
  if (!spec || typeof spec.name !== "string") throw new Error("tool(spec, fn): spec needs a name");
  if (tools.some((t) => t.name === spec.name)) throw new Error(`two tools are named ${spec.name}`);
  tools.push({ ...spec, fn });
  return fn;
}

function log(level, message) {
  const levels = ["trace", "debug", "info", "warn", "error"];
  __galleyLog(levels.includes(level) ? level : "info", String(message));
}

function __registered(kind) {
  const v = __galley.registered[kind];
  if (!v) throw new Error(`no ${kind} registered in plugin.js`);
  return v;
}

function __witError(e) {
  const message = (e && e.message) || String(e);
  if (e instanceof ConfigError) return { tag: "invalid-config", val: message };
  if (e instanceof InputError) return { tag: "invalid-input", val: message };
  return { tag: "failed", val: `${(e && e.name) || "Error"}: ${message}` };
}

function __guard(f) {
  try {
    return f();
  } catch (e) {
    throw __witError(e);
  }
}

function __parseConfig(text) {
  let v;
  try {
    v = text.trim() ? JSON.parse(text) : {};
  } catch (e) {
    throw new ConfigError(`settings are not valid JSON: ${e.message}`);
  }
  if (v === null || typeof v !== "object" || Array.isArray(v)) throw new ConfigError("settings must be a JSON object");
  return v;
}

function __valueIn(v) {
  switch (v.tag) {
    case "null": return null;
    case "json": return JSON.parse(v.val);
    case "integer": return Number(v.val);
    default: return v.val;
  }
}

function __valueOut(v) {
  if (v === null || v === undefined) return { tag: "null" };
  if (typeof v === "boolean") return { tag: "boolean", val: v };
  if (typeof v === "number") return Number.isInteger(v) ? { tag: "integer", val: BigInt(v) } : { tag: "number", val: v };
  if (typeof v === "bigint") return { tag: "integer", val: v };
  if (typeof v === "string") return { tag: "text", val: v };
  return { tag: "json", val: JSON.stringify(v) };
}

function __argumentsIn(text) {
  try {
    const v = JSON.parse(text);
    return v !== null && typeof v === "object" && !Array.isArray(v) ? v : text;
  } catch (e) {
    return text;
  }
}

function __messageIn(m) {
  const out = { role: m.role, content: m.content };
  if (m.toolCalls && m.toolCalls.length) {
    out.tool_calls = m.toolCalls.map((c) => ({
      ...(c.id !== undefined && c.id !== null ? { id: c.id } : {}),
      type: "function",
      function: { name: c.name, arguments: __argumentsIn(c.arguments) },
    }));
  }
  if (m.toolCallId !== undefined && m.toolCallId !== null) out.tool_call_id = m.toolCallId;
  if (m.name !== undefined && m.name !== null) out.name = m.name;
  if (m.reasoning !== undefined && m.reasoning !== null) out.reasoning_content = m.reasoning;
  return out;
}

function __optText(v) {
  return v === undefined || v === null ? undefined : String(v);
}

function __messageOut(m) {
  const calls = (m.tool_calls || []).map((c, i) => {
    const f = (c && c.function) || c;
    if (!f || typeof f.name !== "string") throw new InputError(`tool call ${i} has no function name`);
    const args = f.arguments === undefined ? {} : f.arguments;
    return { id: __optText(c.id), name: f.name, arguments: typeof args === "string" ? args : JSON.stringify(args) };
  });
  return {
    role: String(m.role),
    content: m.content === undefined || m.content === null ? "" : String(m.content),
    toolCalls: calls,
    toolCallId: __optText(m.tool_call_id),
    name: __optText(m.name),
    reasoning: __optText(m.reasoning_content),
  };
}

function __metadataIn(entries) {
  const out = {};
  for (const e of entries) out[e.key] = __valueIn(e.value);
  return out;
}

function __metadataOut(obj) {
  return Object.entries(obj || {}).map(([key, value]) => ({ key, value: __valueOut(value) }));
}

function __meanByName(scores) {
  const sums = {}, counts = {};
  for (const m of scores) for (const [k, v] of Object.entries(m)) { sums[k] = (sums[k] || 0) + v; counts[k] = (counts[k] || 0) + 1; }
  const out = {};
  for (const k of Object.keys(sums)) out[k] = sums[k] / counts[k];
  out.count = scores.length;
  return out;
}

const __rewardExport = {
  init(config) {
    __guard(() => { __registered("reward"); __galley.state.config = __parseConfig(config); });
  },
  score(groups) {
    return __guard(() => {
      const fn = __registered("reward");
      const out = [];
      for (const g of groups) {
        const columns = __metadataIn(g.metadata);
        columns.prompt = g.prompt.map(__messageIn);
        columns.config = __galley.state.config;
        for (const c of g.completions) {
          columns.message = __messageIn(c.message);
          columns.truncated = c.truncated;
          const s = fn(c.text, columns);
          out.push(s === null || s === undefined ? undefined : Number(s));
        }
      }
      return out;
    });
  },
};

const __dataLoaderExport = {
  init(config, seed) {
    __guard(() => {
      const fn = __registered("data-loader");
      __galley.state.iter = fn(__parseConfig(config), seed)[Symbol.iterator]();
      __galley.state.made = 0;
    });
  },
  nextPage(max) {
    return __guard(() => {
      const page = [];
      while (page.length < max) {
        const { value, done } = __galley.state.iter.next();
        if (done) break;
        if (!value || !Array.isArray(value.messages)) throw new InputError(`example ${__galley.state.made} needs a messages array`);
        page.push({
          id: String(value.id ?? __galley.state.made),
          messages: value.messages.map(__messageOut),
          metadata: __metadataOut(value.metadata),
        });
        __galley.state.made += 1;
      }
      return page;
    });
  },
};

const __evaluatorExport = {
  init(config) {
    __guard(() => { __registered("evaluator"); __galley.state.config = __parseConfig(config); });
  },
  score(batch) {
    return __guard(() => {
      const { fn } = __registered("evaluator");
      return batch.map((p) =>
        Object.entries(fn(p.prediction, p.references, __metadataIn(p.metadata))).map(([name, value]) => ({ name, value: Number(value) })));
    });
  },
  aggregate(scores) {
    return __guard(() => {
      const { aggregate } = __registered("evaluator");
      const dicts = scores.map((ms) => Object.fromEntries(ms.map((m) => [m.name, m.value])));
      return Object.entries((aggregate || __meanByName)(dicts)).map(([name, value]) => ({ name, value: Number(value) }));
    });
  },
};

function __recipeObject() {
  if (!__galley.state.recipe) __galley.state.recipe = new (__registered("recipe"))();
  return __galley.state.recipe;
}

const __recipeExport = {
  plan(config) {
    return __guard(() =>
      __recipeObject().plan(__parseConfig(config)).map((s) => ({ name: s.name, kind: s.kind, config: JSON.stringify(s.config || {}) })));
  },
  onMetrics(stage, step, metrics) {
    return __guard(() => {
      const obj = __recipeObject();
      if (!obj.onMetrics) return { tag: "proceed" };
      const d = obj.onMetrics(stage, Number(step), Object.fromEntries(metrics.map((m) => [m.name, m.value])));
      if (d === undefined || d === null || d === "proceed") return { tag: "proceed" };
      if (d === "next-stage") return { tag: "next-stage" };
      if (Array.isArray(d) && d[0] === "stop") return { tag: "stop", val: String(d[1]) };
      throw new InputError(`onMetrics returned ${JSON.stringify(d)}`);
    });
  },
};

const __toolExport = {
  init(config) {
    __guard(() => { __registered("tool"); __parseConfig(config); });
  },
  functions() {
    return __guard(() => __registered("tool").map((t) => ({
      name: t.name,
      description: t.description || "",
      parameters: JSON.stringify(t.parameters || { type: "object", properties: {} }),
    })));
  },
  // One result per call: a call's error is its own, the others still answer.
  call(calls) {
    const tools = __registered("tool");
    return calls.map((c) => {
      try {
        const t = tools.find((x) => x.name === c.name);
        if (!t) throw new InputError(`no function named ${c.name}`);
        let args;
        try { args = JSON.parse(c.arguments); } catch (e) { throw new InputError(`the arguments are not JSON: ${e.message}`); }
        const r = t.fn(args);
        return { tag: "ok", val: typeof r === "string" ? r : JSON.stringify(r) };
      } catch (e) {
        return { tag: "err", val: __witError(e) };
      }
    });
  },
};
