"""What the benchmarks that start servers on loopback share: a free port to give a server.
Standard library only."""

import socket


def free_port():
    """A TCP port on 127.0.0.1 nothing listens on now (the server started next takes it)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p
