"""galley-sdk for Python: write galley plugins as plain functions and classes.

A galley plugin runs as a sandboxed WebAssembly component (built by ``galley plugin build``
with componentize-py). Write ``plugin.py`` beside a ``galley.toml`` manifest and decorate one
function or class; the SDK turns it into the ``galley:plugin@0.2.0`` interface (tools: ``@0.3.0``), so nothing of
the WIT shows in plugin code.

Reward (``kind = "reward"``)::

    from galley_sdk import reward

    @reward
    def ends_with_period(completion, **columns):
        return 1.0 if completion.rstrip().endswith(".") else 0.0

The function is called once per completion with the completion's text as its first argument
and, as keyword arguments TRL users know, every metadata column of the example
(``answer=...``), plus, when the function accepts them: ``prompt`` (a list of message dicts),
``message`` (the completion read as an assistant turn: ``{"role", "content"}`` with
``tool_calls`` (``[{"id", "type": "function", "function": {"name", "arguments"}}]``, the
arguments a dict where they parse) and ``reasoning_content`` where the model wrote them),
``truncated`` (the token budget cut the completion) and ``config`` (the user's settings).
Return a float, or ``None`` for "no opinion".

Data loader (``kind = "data-loader"``): a generator function of ``(config, seed)`` yielding
``{"messages": [...], "metadata": {...}, "id": ...}`` dicts (messages as TRL writes them,
``tool_calls`` and ``tool`` turns included)::

    from galley_sdk import data_loader

    @data_loader
    def counting(config, seed):
        for n in range(config.get("count", 10)):
            yield {"messages": [{"role": "user", "content": f"After {n}?"}], "metadata": {"answer": n + 1}}

Evaluator (``kind = "evaluator"``): a function of ``(prediction, references, **metadata)``
returning ``{metric: value}``; ``aggregate`` defaults to the mean of each metric::

    from galley_sdk import evaluator

    @evaluator
    def exact(prediction, references, **_):
        return {"exact_match": float(prediction.strip() in references)}

Recipe (``kind = "recipe"``): a class with ``plan(self, config)`` returning stage dicts
(``{"name", "kind", "config"}``) and optionally ``on_metrics(self, stage, step, metrics)``
returning ``"proceed"``, ``"next-stage"`` or ``("stop", reason)``.

Tool (``kind = "tool"``, ``galley:plugin@0.3.0``): plain functions a model may call during
GRPO rollouts, as TRL takes them — the name, the docstring and the type hints are what the
model is shown; the return value is what it reads back::

    from galley_sdk import tool

    @tool
    def multiply(a: int, b: int) -> int:
        '''Multiplies two integers.

        Args:
            a: The first factor.
            b: The second factor.
        '''
        return a * b

Environment (``kind = "environment"``, ``galley:plugin@0.4.0``): a class as TRL's
``environment_factory`` takes one — galley makes one instance per GRPO rollout, so its state
is one episode's. ``reset(self, **row)`` gets the dataset row's columns (``prompt``, and
``seed`` where it accepts one) and returns text appended to the prompt; the other public
methods are the functions the model may call; ``reward(self)`` (or ``get_reward``) scores
the episode::

    from galley_sdk import environment

    @environment
    class Counter:
        def reset(self, start: int = 0, **row):
            self.n = start
            return f" The counter is at {start}."

        def bump(self, by: int) -> int:
            '''Adds to the counter.

            Args:
                by: How much to add.
            '''
            self.n += by
            return self.n

        def reward(self):
            return float(self.n == 10)

Raise ``ConfigError`` for bad settings and ``InputError`` for bad input; any other exception
is reported to the host as the plugin's failure, with its message.
"""

from ._core import ConfigError, InputError, PluginFailure, log
from ._kinds import data_loader, environment, evaluator, recipe, reward, tool

__all__ = [
    "reward",
    "data_loader",
    "evaluator",
    "recipe",
    "tool",
    "environment",
    "ConfigError",
    "InputError",
    "PluginFailure",
    "log",
]
