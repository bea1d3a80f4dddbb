import math

from galley_sdk import recipe


@recipe
class Plan:
    """SFT, then GRPO until the mean reward reaches `target`, then evaluation."""

    def plan(self, config):
        self.target = config.get("target", 0.9)
        return [
            {"name": "sft", "kind": "sft", "config": {"epochs": 1}},
            {"name": "grpo", "kind": "grpo", "config": {"num_generations": 8}},
            {"name": "eval", "kind": "evaluate", "config": {}},
        ]

    def on_metrics(self, stage, step, metrics):
        if any(k.endswith("loss") and not math.isfinite(v) for k, v in metrics.items()):
            return ("stop", f"non-finite loss at step {step}")
        if stage == "grpo" and metrics.get("reward", 0.0) >= self.target:
            return "next-stage"
        return "proceed"
