"""An environment a model acts in during GRPO rollouts (`grpo.environment`): guess a number
from 1 to 100, each guess answered "higher", "lower" or "correct". galley makes one instance
of the class per rollout, as TRL's environment_factory does, so its state is one game."""

from galley_sdk import environment


@environment
class Guess:
    def reset(self, seed: int, secret: int = 0, **row):
        """Starts the game from the dataset row: its `secret` column, else a number drawn
        from the seed (every rollout of a prompt gets the same row and seed)."""
        self.secret = secret or seed % 100 + 1
        self.guesses = 0
        self.solved = False
        return " I am thinking of a number from 1 to 100: find it with `guess`."

    def guess(self, n: int) -> str:
        """Guess the secret number; answered higher, lower or correct.

        Args:
            n: Your guess, 1 to 100.
        """
        self.guesses += 1
        self.solved = self.solved or n == self.secret
        return "higher" if n < self.secret else "lower" if n > self.secret else "correct"

    def reward(self):
        """1 for a solve in one guess, less for more; 0 unsolved."""
        return 1.0 / self.guesses if self.solved else 0.0
