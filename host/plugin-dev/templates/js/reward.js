import { reward } from "galley-sdk";

// 1.0 when the completion contains the example's `answer` column, else 0.0; null (no
// opinion) without one. `columns` holds every metadata column, `prompt` and `config`.
reward((completion, { answer }) => {
  if (answer === undefined || answer === null) return null;
  return completion.includes(String(answer)) ? 1.0 : 0.0;
});
