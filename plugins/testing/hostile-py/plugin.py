"""TEST ONLY. A Python reward that attacks its host as its `mode` setting says; modes that
probe a capability return 1.0 when it was available (a sandbox hole) and 0.0 when denied."""

import os

from galley_sdk import reward


@reward
def hostile(completion, config, **_):
    mode = config.get("mode", "ok")
    if mode == "ok":
        return float(len(completion))
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
