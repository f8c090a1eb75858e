"""Running the app with uvicorn on a socket bound first (a busy port is one clear error, port 0 picks a
free one): in the foreground for ``tcllava serve``, or on a thread for tests and benchmarks."""

from __future__ import annotations

import ipaddress
import socket
import threading
import time
from typing import Any


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port``; OSError (port in use, unknown host) is the caller's."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(256)
    except OSError:
        sock.close()
        raise
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def make_server(app: Any, graceful: float = 5.0):
    """uvicorn quietly (the app logs its own line per request); at exit, open streams get ``graceful`` s."""
    import uvicorn

    config = uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=graceful)
    return uvicorn.Server(config)


class BackgroundServer:
    """``with BackgroundServer(app) as url:`` serves ``app`` on a free local port from a thread."""

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0) -> None:
        self.app = app
        self.host = host
        self.port = port

    def __enter__(self) -> str:
        sock = bind(self.host, self.port)
        self.server = make_server(self.app, graceful=1.0)
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [sock]}, name="tcllava-serve-http", daemon=True
        )
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.02)
        return url_of(sock)

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(15)
