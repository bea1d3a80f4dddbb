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


def messages_in(messages):
    return [{"role": m.role, "content": m.content} for m in messages]


def messages_out(messages):
    from wit_world.imports import types

    return [types.Message(m["role"], m["content"]) for m in messages]


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
