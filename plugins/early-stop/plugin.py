"""`early-stop`: supervised fine-tuning that ends when the held-out loss stops improving,
then evaluation. A first-party recipe written in Python, to show that authoring a recipe
needs no Rust: `galley plugin build plugins/early-stop` makes it a sandboxed component like
any other.

Settings: `epochs` (3), `eval_steps` (10: how often the held-out loss is measured),
`patience` (2: evaluations without improvement before SFT ends), `min_delta` (0.0: the
improvement that counts). The data and tasks are the run config's (`defaults.sft`, with a
`validation` set or `validation_split`, and `defaults.evaluate`).
"""

import math

from galley_sdk import ConfigError, recipe

SETTINGS = {"epochs": 3, "eval_steps": 10, "patience": 2, "min_delta": 0.0}


@recipe
class EarlyStop:
    def plan(self, config):
        unknown = sorted(set(config) - set(SETTINGS))
        if unknown:
            raise ConfigError(f"unknown setting `{unknown[0]}` (use: {', '.join(SETTINGS)})")
        s = {**SETTINGS, **config}
        if int(s["patience"]) < 1:
            raise ConfigError("`patience` must be at least 1")
        self.patience = int(s["patience"])
        self.min_delta = float(s["min_delta"])
        self.best = math.inf
        self.bad = 0
        return [
            {
                "name": "sft",
                "kind": "sft",
                "config": {"epochs": int(s["epochs"]), "eval_steps": int(s["eval_steps"])},
            },
            {"name": "eval", "kind": "evaluate", "config": {}},
        ]

    def on_metrics(self, stage, step, metrics):
        for name, value in metrics.items():
            if name.endswith("loss") and not math.isfinite(value):
                return ("stop", f"{name} is {value} at step {step} of `{stage}`")
        if stage != "sft" or "eval_loss" not in metrics:
            return "proceed"
        loss = metrics["eval_loss"]
        if loss < self.best - self.min_delta:
            self.best, self.bad = loss, 0
            return "proceed"
        self.bad += 1
        return "next-stage" if self.bad >= self.patience else "proceed"
