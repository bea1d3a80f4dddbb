"""Errors, logging and value conversion shared by every plugin kind."""

import json


class ConfigError(Exception):
    """The user's settings for the plugin are wrong."""


class InputError(Exception):
    """The input the host sent is wrong."""


class PluginFailure(Exception):
    """The plugin failed for its own reasons."""


_registered = {}


def register(kind, target):
    if kind in _registered:
        raise RuntimeError(f"a plugin exports one {kind}; found a second: {target!r}")
    _registered[kind] = target
    return target


def registered(kind):
    target = _registered.get(kind)
    if target is None:
        raise PluginFailure(f"no @{kind.replace('-', '_')} function or class in plugin.py")
    return target


def to_wit_error(exc):
    """Maps a Python exception to the WIT plugin-error, raised as componentize-py's Err."""
    from componentize_py_types import Err
    from wit_world.imports import types

    message = str(exc) or type(exc).__name__
    if isinstance(exc, ConfigError):
        return Err(types.PluginError_InvalidConfig(message))
    if isinstance(exc, InputError):
        return Err(types.PluginError_InvalidInput(message))
    if isinstance(exc, PluginFailure):
        return Err(types.PluginError_Failed(message))
    return Err(types.PluginError_Failed(f"{type(exc).__name__}: {message}"))


def parse_config(text):
    try:
        value = json.loads(text) if text.strip() else {}
    except json.JSONDecodeError as e:
        raise ConfigError(f"settings are not valid JSON: {e}")
    if not isinstance(value, dict):
        raise ConfigError("settings must be a JSON object")
    return value


def value_in(v):
    from wit_world.imports import types

    if isinstance(v, types.Value_Null):
        return None
    if isinstance(v, types.Value_Json):
        return json.loads(v.value)
    return v.value


def value_out(v):
    from wit_world.imports import types

    if v is None:
        return types.Value_Null()
    if isinstance(v, bool):
        return types.Value_Boolean(v)
    if isinstance(v, int):
        return types.Value_Integer(v)
    if isinstance(v, float):
        return types.Value_Number(v)
    if isinstance(v, str):
        return types.Value_Text(v)
    return types.Value_Json(json.dumps(v))


def metadata_in(entries):
    return {e.key: value_in(e.value) for e in entries}


def metadata_out(d):
    from wit_world.imports import types

    return [types.Entry(str(k), value_out(v)) for k, v in (d or {}).items()]


def _arguments_in(text):
    """A call's arguments as TRL's datasets hold them: a dict where the text is a JSON
    object, else the text as the model wrote it."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return text
    return value if isinstance(value, dict) else text


def message_in(m):
    """A WIT message as an OpenAI/TRL-style dict; optional keys only where present."""
    out = {"role": m.role, "content": m.content}
    if m.tool_calls:
        out["tool_calls"] = [
            {
                **({"id": c.id} if c.id is not None else {}),
                "type": "function",
                "function": {"name": c.name, "arguments": _arguments_in(c.arguments)},
            }
            for c in m.tool_calls
        ]
    if m.tool_call_id is not None:
        out["tool_call_id"] = m.tool_call_id
    if m.name is not None:
        out["name"] = m.name
    if m.reasoning is not None:
        out["reasoning_content"] = m.reasoning
    return out


def messages_in(messages):
    return [message_in(m) for m in messages]


def _tool_call_out(c, index):
    from wit_world.imports import types

    if not isinstance(c, dict):
        raise InputError(f"tool call {index} is not a dict")
    f = c.get("function", c)
    if not isinstance(f, dict) or not isinstance(f.get("name"), str):
        raise InputError(f"tool call {index} has no function name")
    args = f.get("arguments", {})
    args = args if isinstance(args, str) else json.dumps(args)
    call_id = c.get("id")
    return types.ToolCall(None if call_id is None else str(call_id), f["name"], args)


def messages_out(messages):
    """Message dicts (OpenAI/TRL style: `tool_calls` with arguments as a dict or JSON text,
    `tool_call_id`, `name`, `reasoning_content`) as WIT messages."""
    from wit_world.imports import types

    out = []
    for m in messages:
        calls = [_tool_call_out(c, i) for i, c in enumerate(m.get("tool_calls") or [])]
        opt = lambda k: None if m.get(k) is None else str(m[k])
        out.append(
            types.Message(
                m["role"],
                m.get("content") or "",
                calls,
                opt("tool_call_id"),
                opt("name"),
                opt("reasoning_content"),
            )
        )
    return out


def log(level, message):
    """Logs into the host's log; level is one of trace, debug, info, warn, error."""
    from wit_world.imports import log as wit_log

    levels = {
        "trace": wit_log.Level.TRACE,
        "debug": wit_log.Level.DEBUG,
        "info": wit_log.Level.INFO,
        "warn": wit_log.Level.WARN,
        "error": wit_log.Level.ERROR,
    }
    wit_log.log(levels.get(level, wit_log.Level.INFO), str(message))
