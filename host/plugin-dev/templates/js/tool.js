// A tool a model may call while it answers (GRPO rollouts with `grpo.tools`): counts the
// words of a text. The model is shown the name, the description and the JSON Schema of the
// arguments; what the function returns is the tool's turn.
import { tool, InputError } from "galley-sdk";

tool(
  {
    name: "count_words",
    description: "Counts the words of a text.",
    parameters: {
      type: "object",
      properties: { text: { type: "string", description: "The text" } },
      required: ["text"],
    },
  },
  ({ text }) => {
    // An input error is shown to the model, which can then correct its call.
    if (typeof text !== "string") throw new InputError("`text` must be a string");
    return String(text.split(/\s+/).filter(Boolean).length);
  },
);
