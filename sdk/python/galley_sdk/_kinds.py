"""The decorators plugin authors use, one per plugin kind."""

import inspect
import typing

from ._core import register


def _accepts(fn):
    """Which keyword arguments `fn` takes: (names, takes **kwargs)."""
    sig = inspect.signature(fn)
    names = {p.name for p in sig.parameters.values() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    var = any(p.kind == p.VAR_KEYWORD for p in sig.parameters.values())
    return names, var


def reward(fn):
    """Registers `fn(completion, **columns) -> float | None` as the plugin's reward."""
    register("reward", fn)
    return fn


def data_loader(fn):
    """Registers a generator function `fn(config, seed)` yielding example dicts."""
    register("data-loader", fn)
    return fn


def evaluator(fn=None, *, aggregate=None):
    """Registers `fn(prediction, references, **metadata) -> {metric: value}`; `aggregate`,
    when given, folds a list of such dicts into one (default: the mean of each metric)."""

    def wrap(f):
        register("evaluator", (f, aggregate))
        return f

    return wrap(fn) if fn is not None else wrap


def recipe(cls):
    """Registers a recipe class with `plan(self, config)` and optional `on_metrics`."""
    register("recipe", cls)
    return cls


def tool(fn):
    """Registers `fn(**arguments)` as a function of the plugin's tool (several may be). The
    model sees its name, the docstring's text before ``Args:`` as its description, and the
    JSON Schema of its parameters read from the type hints and the docstring's ``Args:``
    lines (``name: what it is``), as TRL reads a tool function. It returns the text the
    model reads (anything else is sent as JSON)."""
    register_tool(fn)
    return fn


def environment(cls):
    """Registers an environment class, as TRL's ``environment_factory`` takes one: galley
    makes one instance per rollout. ``reset(self, **row)`` starts the episode from the dataset
    row's columns (``prompt`` among them, and ``seed`` where it accepts one) and returns the
    text to append to the prompt, or None; every other public method is a function the model
    may call (its name, docstring and type hints are what the model is shown); ``reward(self)``
    (or TRL's ``get_reward``), where defined, scores the episode. ``__init__`` may take
    ``config``, the user's settings."""
    if not callable(getattr(cls, "reset", None)):
        raise RuntimeError(f"environment {cls.__name__} needs a reset method")
    register("environment", cls)
    return cls


_NOT_FUNCTIONS = ("reset", "reward", "get_reward")


def environment_functions(obj):
    """The bound methods of an environment instance the model may call, by name."""
    return {
        name: getattr(obj, name)
        for name, _ in inspect.getmembers(type(obj), predicate=inspect.isfunction)
        if not name.startswith("_") and name not in _NOT_FUNCTIONS
    }


def register_tool(fn):
    from ._core import _registered

    fns = _registered.setdefault("tool", [])
    if any(f.__name__ == fn.__name__ for f in fns):
        raise RuntimeError(f"two tool functions are named {fn.__name__}")
    fns.append(fn)


_JSON_TYPES = {int: "integer", float: "number", str: "string", bool: "boolean", list: "array", dict: "object"}


def _json_type(hint):
    """The JSON Schema of a type hint (``{}``, any value, where it says nothing JSON can)."""
    if hint in _JSON_TYPES:
        return {"type": _JSON_TYPES[hint]}
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (list, tuple):
        item = _json_type(args[0]) if args else {}
        return {"type": "array", "items": item} if item else {"type": "array"}
    if origin is dict:
        return {"type": "object"}
    if origin is typing.Literal:
        return {"enum": list(args)}
    if args and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        if len(rest) == 1:
            inner = _json_type(rest[0])
            if "type" in inner:
                inner["type"] = [inner["type"], "null"]
            return inner
    return {}


def _doc(fn):
    """(description, {argument: description}) from a Google-style docstring."""
    text = inspect.getdoc(fn) or ""
    head, _, rest = text.partition("Args:")
    described = {}
    current = None
    for line in rest.splitlines():
        if not line.strip():
            continue
        if line.strip() in ("Returns:", "Raises:", "Yields:"):
            break
        indent = len(line) - len(line.lstrip())
        name, sep, desc = line.strip().partition(":")
        if sep and _same_indent(described, indent) and name.split(" (")[0].isidentifier():
            current = name.split(" (")[0]
            described[current] = (indent, desc.strip())
        elif current is not None:
            i, d = described[current]
            described[current] = (i, f"{d} {line.strip()}".strip())
    return " ".join(head.split()), {k: d for k, (_, d) in described.items()}


def _same_indent(described, indent):
    """An argument line is indented as the first one was (deeper lines continue it)."""
    if not described:
        return True
    first = next(iter(described.values()))[0]
    return indent <= first


def schema(fn):
    """`fn`'s parameters as a JSON Schema object."""
    description, args = _doc(fn)
    hints = typing.get_type_hints(fn)
    props, required = {}, []
    for p in inspect.signature(fn).parameters.values():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        s = _json_type(hints.get(p.name, typing.Any))
        if p.name in args:
            s["description"] = args[p.name]
        props[p.name] = s
        if p.default is p.empty:
            required.append(p.name)
    return description, {"type": "object", "properties": props, "required": required}
