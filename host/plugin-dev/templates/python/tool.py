"""A tool a model may call while it answers (GRPO rollouts with `grpo.tools`): counts the
words of a text. What the model is shown is read from the function itself, as TRL reads a
tool: its name, the docstring, the type hints. What it returns is the tool's turn."""

from galley_sdk import InputError, tool


@tool
def count_words(text: str) -> int:
    """Counts the words of a text.

    Args:
        text: The text.
    """
    if not isinstance(text, str):
        # An input error is shown to the model, which can then correct its call.
        raise InputError("`text` must be a string")
    return len(text.split())
