"""TEST ONLY. A TRL-style environment class, as `environment_factory` takes one, built with
galley's Python SDK: a counter per episode that the model moves with typed methods."""

from typing import Literal

from galley_sdk import InputError, environment


@environment
class Counter:
    def __init__(self, config):
        self.target = config.get("target", 10)

    def reset(self, seed, start: int = 0, **row):
        self.n = start
        self.moves = 0
        return f" The counter is at {start}; bring it to {self.target} (seed {seed})."

    def move(self, by: int, direction: Literal["up", "down"] = "up") -> str:
        """Moves the counter.

        Args:
            by: How far, at most 5.
            direction: Which way.
        """
        if by > 5:
            raise InputError("at most 5 at a time")
        self.n += by if direction == "up" else -by
        self.moves += 1
        return f"the counter is at {self.n}"

    def peek(self) -> int:
        """Reads the counter."""
        return self.n

    def _hidden(self):
        return "not a function the model may call"

    def get_reward(self):
        return 1.0 / self.moves if self.n == self.target else 0.0
