"""A loopback HTTP server that answers from a script, for the retry tests: it records each
request and answers with the next scripted (status, headers, body), the last one repeating."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["Reply", "Stub", "envelope", "stub_server"]


@dataclass
class Reply:
    status: int
    body: Any = None  # noqa: ANN401 - JSON, or bytes sent as they are
    headers: dict[str, str] = field(default_factory=dict)
    drop: bool = False  # close the connection without answering


def envelope(type_: str, message: str, param: str | None = None) -> dict[str, Any]:
    return {"error": {"type": type_, "message": message, "param": param}}


@dataclass
class Stub:
    url: str
    script: list[Reply]
    requests: list[dict[str, Any]] = field(default_factory=list)


@contextmanager
def stub_server(script: list[Reply]) -> Iterator[Stub]:
    stub = Stub(url="", script=list(script))
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            body = self.rfile.read(length) if length else b""
            with lock:
                n = len(stub.requests)
                stub.requests.append({"method": self.command, "path": self.path, "body": body,
                                      "headers": {k.lower(): v for k, v in self.headers.items()}})
                reply = stub.script[min(n, len(stub.script) - 1)]
            if reply.drop:
                self.close_connection = True
                self.connection.close()
                return
            data = reply.body if isinstance(reply.body, bytes) else json.dumps(reply.body).encode()
            self.send_response(reply.status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            for name, value in reply.headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_DELETE = _answer  # noqa: N815 - the stdlib's names

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002, ANN401 - quiet
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    stub.url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield stub
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
