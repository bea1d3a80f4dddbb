from galley_sdk import reward


@reward
def contains_answer(completion, message, answer=None, **columns):
    """1.0 when the answer contains the example's `answer` column, else 0.0.

    `completion` is the text as the model wrote it; `message` the same read as an assistant
    turn (`content` without the reasoning, `tool_calls`, `reasoning_content`), so a thinking
    model's reasoning does not count as its answer. Metadata columns arrive as keyword
    arguments (as in TRL); `prompt`, `truncated` and `config` too, if the function asks for
    them. Return None for "no opinion".
    """
    if answer is None:
        return None
    return 1.0 if str(answer) in message["content"] else 0.0
