// TEST ONLY. A JavaScript reward that attacks its host as its `mode` setting says.
import { reward } from "galley-sdk";

reward((completion, { config, message, truncated }) => {
  const mode = config.mode || "ok";
  if (mode === "ok") return completion.length;
  if (mode === "reading") {
    // Not an attack: what the SDK hands over, as one number the tests compare across languages.
    const calls = message.tool_calls || [];
    const keys = calls.reduce((n, c) => n + (typeof c.function.arguments === "object" ? Object.keys(c.function.arguments).length : 0), 0);
    return 1000 * calls.length + 100 * keys + (message.reasoning_content || "").length + (truncated ? 0.5 : 0);
  }
  if (mode === "loop") { for (;;) {} }
  if (mode === "memory-bomb") {
    const hoard = [];
    for (;;) hoard.push(new Uint8Array(16 << 20).fill(1));
  }
  if (mode === "read-file") {
    // No fs module exists in the sandbox; probing for one is the attack.
    try { return typeof require === "function" || typeof process !== "undefined" ? 1 : 0; } catch { return 0; }
  }
  if (mode === "throw") throw new Error("hostile js plugin threw on purpose");
  throw new Error(`unknown mode ${mode}`);
});
