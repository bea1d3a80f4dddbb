import { recipe } from "galley-sdk";

// SFT, then GRPO until the mean reward reaches `target`, then evaluation.
recipe(class Plan {
  plan(config) {
    this.target = config.target ?? 0.9;
    return [
      { name: "sft", kind: "sft", config: { epochs: 1 } },
      { name: "grpo", kind: "grpo", config: { num_generations: 8 } },
      { name: "eval", kind: "evaluate", config: {} },
    ];
  }
  onMetrics(stage, step, metrics) {
    if (Object.entries(metrics).some(([k, v]) => k.endsWith("loss") && !Number.isFinite(v))) return ["stop", `non-finite loss at step ${step}`];
    if (stage === "grpo" && (metrics["reward"] ?? 0) >= this.target) return "next-stage";
    return "proceed";
  }
});
