import { evaluator } from "galley-sdk";

// 1.0 when the prediction equals a reference after trimming and lower-casing.
// Summary: the mean of each metric, plus `count`.
evaluator((prediction, references, metadata) => {
  const pred = prediction.trim().toLowerCase();
  return { exact_match: references.some((r) => r.trim().toLowerCase() === pred) ? 1.0 : 0.0 };
});
