import { reward } from "galley-sdk";

// 1.0 when the answer contains the example's `answer` column, else 0.0; null (no opinion)
// without one. `completion` is the text as written; `columns` holds every metadata column,
// `message` (the completion read as an assistant turn: `content` without the reasoning,
// `tool_calls`, `reasoning_content`), `truncated`, `prompt` and `config`.
reward((completion, { answer, message }) => {
  if (answer === undefined || answer === null) return null;
  return message.content.includes(String(answer)) ? 1.0 : 0.0;
});
