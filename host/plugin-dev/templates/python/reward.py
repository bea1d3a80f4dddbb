from galley_sdk import reward


@reward
def contains_answer(completion, answer=None, **columns):
    """1.0 when the completion contains the example's `answer` column, else 0.0.

    Metadata columns arrive as keyword arguments (as in TRL); `prompt` and `config` too,
    if the function asks for them. Return None for "no opinion".
    """
    if answer is None:
        return None
    return 1.0 if str(answer) in completion else 0.0
