"""TEST ONLY. A Python reward that attacks its host as its `mode` setting says; modes that
probe a capability return 1.0 when it was available (a sandbox hole) and 0.0 when denied."""

import os

from galley_sdk import reward


@reward
def hostile(completion, config, message, truncated, **_):
    mode = config.get("mode", "ok")
    if mode == "ok":
        return float(len(completion))
    if mode == "reading":
        # Not an attack: what the SDK hands over, as one number the tests compare across
        # languages (calls, the keys of the calls' parsed arguments, reasoning, truncation).
        calls = message.get("tool_calls", [])
        keys = sum(len(c["function"]["arguments"]) for c in calls if isinstance(c["function"]["arguments"], dict))
        return 1000.0 * len(calls) + 100.0 * keys + len(message.get("reasoning_content") or "") + (0.5 if truncated else 0.0)
    if mode == "loop":
        while True:
            pass
    if mode == "memory-bomb":
        hoard = []
        while True:
            hoard.append(bytearray(16 << 20))
    if mode == "read-file":
        for path in ("/etc/passwd", "/proc/self/environ", "../../etc/passwd"):
            try:
                with open(path, "rb") as f:
                    f.read(1)
                return 1.0
            except OSError:
                pass
        return 0.0
    if mode == "env":
        return 1.0 if os.environ else 0.0
    if mode == "raise":
        raise ValueError("hostile python plugin raised on purpose")
    raise ValueError(f"unknown mode {mode}")
