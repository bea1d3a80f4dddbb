"""The WIT export classes componentize-py binds to. The build imports the one for the
plugin's kind into the generated entry module; authors never see these."""

import inspect

from ._core import (
    InputError,
    message_in,
    metadata_in,
    metadata_out,
    messages_in,
    messages_out,
    parse_config,
    registered,
    to_wit_error,
)
from ._kinds import _accepts, environment_functions, schema

_state = {}


class Reward:
    def init(self, config):
        try:
            fn = registered("reward")
            names, var = _accepts(fn)
            _state["reward"] = (fn, names, var, parse_config(config))
        except Exception as e:
            raise to_wit_error(e)

    def score(self, groups):
        try:
            fn, names, var, config = _state["reward"]
            out = []
            for g in groups:
                columns = metadata_in(g.metadata)
                extra = {k: v for k, v in columns.items() if var or k in names}
                if var or "prompt" in names:
                    extra["prompt"] = messages_in(g.prompt)
                if var or "config" in names:
                    extra["config"] = config
                for c in g.completions:
                    if var or "message" in names:
                        extra["message"] = message_in(c.message)
                    if var or "truncated" in names:
                        extra["truncated"] = c.truncated
                    s = fn(c.text, **extra)
                    out.append(None if s is None else float(s))
            return out
        except Exception as e:
            raise to_wit_error(e)


def _example_out(ex, index):
    from wit_world.imports import types

    if not isinstance(ex, dict) or "messages" not in ex:
        raise InputError(f"example {index} must be a dict with `messages`")
    return types.Example(str(ex.get("id", index)), messages_out(ex["messages"]), metadata_out(ex.get("metadata")))


class DataLoader:
    def init(self, config, seed):
        try:
            fn = registered("data-loader")
            _state["loader"] = iter(fn(parse_config(config), seed))
            _state["made"] = 0
        except Exception as e:
            raise to_wit_error(e)

    def next_page(self, max):
        try:
            page = []
            it = _state["loader"]
            while len(page) < max:
                try:
                    ex = next(it)
                except StopIteration:
                    break
                page.append(_example_out(ex, _state["made"]))
                _state["made"] += 1
            return page
        except Exception as e:
            raise to_wit_error(e)


def _mean_by_name(scores):
    sums, counts = {}, {}
    for metrics in scores:
        for name, value in metrics.items():
            sums[name] = sums.get(name, 0.0) + value
            counts[name] = counts.get(name, 0) + 1
    out = {name: sums[name] / counts[name] for name in sums}
    out["count"] = float(len(scores))
    return out


class Evaluator:
    def init(self, config):
        try:
            registered("evaluator")
            _state["eval_config"] = parse_config(config)
        except Exception as e:
            raise to_wit_error(e)

    def score(self, batch):
        from wit_world.imports import types

        try:
            fn, _ = registered("evaluator")
            out = []
            for p in batch:
                metrics = fn(p.prediction, list(p.references), **metadata_in(p.metadata))
                out.append([types.Metric(str(k), float(v)) for k, v in metrics.items()])
            return out
        except Exception as e:
            raise to_wit_error(e)

    def aggregate(self, scores):
        from wit_world.imports import types

        try:
            _, agg = registered("evaluator")
            dicts = [{m.name: m.value for m in ms} for ms in scores]
            result = (agg or _mean_by_name)(dicts)
            return [types.Metric(str(k), float(v)) for k, v in result.items()]
        except Exception as e:
            raise to_wit_error(e)


class Recipe:
    def _obj(self):
        if "recipe" not in _state:
            _state["recipe"] = registered("recipe")()
        return _state["recipe"]

    def plan(self, config):
        import json

        from wit_world.exports import recipe as r

        try:
            stages = self._obj().plan(parse_config(config))
            return [r.Stage(s["name"], s["kind"], json.dumps(s.get("config", {}))) for s in stages]
        except Exception as e:
            raise to_wit_error(e)

    def on_metrics(self, stage, step, metrics):
        from wit_world.exports import recipe as r

        try:
            obj = self._obj()
            if not hasattr(obj, "on_metrics"):
                return r.Decision_Proceed()
            d = obj.on_metrics(stage, step, {m.name: m.value for m in metrics})
            if d in (None, "proceed"):
                return r.Decision_Proceed()
            if d == "next-stage":
                return r.Decision_NextStage()
            if isinstance(d, tuple) and d[0] == "stop":
                return r.Decision_Stop(str(d[1]))
            raise InputError(f"on_metrics returned {d!r}; expected 'proceed', 'next-stage' or ('stop', reason)")
        except Exception as e:
            raise to_wit_error(e)


class Tool:
    def init(self, config):
        try:
            _state["tool"] = {f.__name__: f for f in registered("tool")}
            parse_config(config)
        except Exception as e:
            raise to_wit_error(e)

    def functions(self):
        import json

        from wit_world.exports import tool as t

        try:
            out = []
            for name, fn in _state["tool"].items():
                description, params = schema(fn)
                out.append(t.Function(name, description, json.dumps(params)))
            return out
        except Exception as e:
            raise to_wit_error(e)

    def call(self, calls):
        return _call(_state["tool"], calls)


def _call(fns, calls):
    """Each call run on `fns[name]` with its arguments as keywords: a result, or the error."""
    import json

    from componentize_py_types import Ok

    out = []
    for c in calls:
        try:
            fn = fns[c.name]
            args = json.loads(c.arguments)
            if not isinstance(args, dict):
                raise InputError("the arguments must be a JSON object")
            names, var = _accepts(fn)
            unknown = sorted(set(args) - names)
            if unknown and not var:
                raise InputError(f"{c.name} takes no argument {', '.join(unknown)}")
            missing = [
                p.name
                for p in inspect.signature(fn).parameters.values()
                if p.default is p.empty and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name not in args
            ]
            if missing:
                raise InputError(f"{c.name} needs {', '.join(missing)}")
            result = fn(**args)
            out.append(Ok(result if isinstance(result, str) else json.dumps(result)))
        except Exception as e:
            out.append(to_wit_error(e))
    return out


class Environment:
    """One instance per episode (galley instantiates the component per rollout)."""

    def init(self, config):
        try:
            cls = registered("environment")
            settings = parse_config(config)
            # A class without an __init__ of its own takes nothing (object's signature says
            # *args, **kwargs, but passes nothing on).
            takes = False
            if cls.__init__ is not object.__init__:
                names, var = _accepts(cls.__init__)
                takes = var or "config" in names
            obj = cls(config=settings) if takes else cls()
            # The functions are looked up on the first call, not here: an episode starts per
            # rollout, and most are asked for no function before their first call.
            _state["environment"] = [obj, None]
        except Exception as e:
            raise to_wit_error(e)

    @staticmethod
    def _functions():
        s = _state["environment"]
        if s[1] is None:
            s[1] = environment_functions(s[0])
        return s[1]

    def functions(self):
        import json

        from wit_world.exports import environment as e

        try:
            out = []
            for name, fn in self._functions().items():
                description, params = schema(fn)
                out.append(e.Function(name, description, json.dumps(params)))
            return out
        except Exception as e:
            raise to_wit_error(e)

    def reset(self, row, seed):
        import json

        try:
            obj, _ = _state["environment"]
            columns = json.loads(row)
            names, var = _accepts(obj.reset)
            columns["seed"] = seed
            shown = obj.reset(**{k: v for k, v in columns.items() if var or k in names})
            return None if shown is None else str(shown)
        except Exception as e:
            raise to_wit_error(e)

    def call(self, calls):
        return _call(self._functions(), calls)

    def reward(self):
        try:
            obj, _ = _state["environment"]
            score = getattr(obj, "reward", None) or getattr(obj, "get_reward", None)
            if score is None:
                return None
            v = score()
            return None if v is None else float(v)
        except Exception as e:
            raise to_wit_error(e)
