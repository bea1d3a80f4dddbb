// TEST ONLY: two tools in JavaScript, whose schemas, results and errors the runtime tests
// check against the Python ones (tools-py).
import { tool } from "galley-sdk";

tool(
  {
    name: "multiply",
    description: "Multiplies two integers.",
    parameters: {
      type: "object",
      properties: {
        a: { type: "integer", description: "The first factor." },
        b: { type: "integer", description: "The second factor." },
      },
      required: ["a", "b"],
    },
  },
  ({ a, b }) => a * b,
);

tool(
  {
    name: "lookup",
    description: "Looks up the weather of a city.",
    parameters: {
      type: "object",
      properties: { city: { type: "string" }, units: { type: ["string", "null"] } },
      required: ["city"],
    },
  },
  ({ city, units }) => {
    if (city === "Atlantis") throw new Error("no such city");
    return { city, temperature: 21, units: units || "metric" };
  },
);
