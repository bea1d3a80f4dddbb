"""TEST ONLY. One tool-calling conversation in TRL's shape (arguments as a dict, then as
JSON text), so a test can check what the Python SDK hands the host."""

from galley_sdk import data_loader


@data_loader
def conversations(config, seed):
    yield {
        "id": "weather",
        "messages": [
            {"role": "user", "content": "Weather in Paris?"},
            {
                "role": "assistant",
                "content": None,
                "reasoning_content": "Ask the tool.",
                "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}},
                    {"type": "function", "function": {"name": "get_time", "arguments": "{\"zone\": \"CET\"}"}},
                ],
            },
            {"role": "tool", "tool_call_id": "c1", "name": "get_weather", "content": "22"},
            {"role": "assistant", "content": "22 degrees."},
        ],
        "metadata": {"tools": [{"type": "function", "function": {"name": "get_weather"}}]},
    }
