from galley_sdk import ConfigError, data_loader


@data_loader
def counting(config, seed):
    """`count` questions "What is N + 1?", with the answer in the metadata."""
    count = config.get("count", 10)
    if count < 0:
        raise ConfigError("`count` must not be negative")
    for n in range(count):
        yield {
            "id": f"count-{n}",
            "messages": [{"role": "user", "content": f"What is {n} + 1?"}],
            "metadata": {"answer": n + 1},
        }
