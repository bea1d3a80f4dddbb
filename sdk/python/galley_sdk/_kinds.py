"""The decorators plugin authors use, one per plugin kind."""

import inspect

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
