import { dataLoader, ConfigError } from "galley-sdk";

// `count` questions "What is N + 1?", with the answer in the metadata.
dataLoader(function* counting(config, seed) {
  const count = config.count ?? 10;
  if (count < 0) throw new ConfigError("`count` must not be negative");
  for (let n = 0; n < count; n++) {
    yield { id: `count-${n}`, messages: [{ role: "user", content: `What is ${n} + 1?` }], metadata: { answer: n + 1 } };
  }
});
