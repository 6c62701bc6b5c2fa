"""An upstream that records each request as llhttp (strict) parsed it off the wire, and a
`python run.py` node started for a test module: what the security suites send through."""

from __future__ import annotations

import contextlib
import socketserver
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httptools
from e2e.e2e_harness import NodeProcess
from faults.fleet import Fleet

UPSTREAM_REPLY = b"HTTP/1.1 200 OK\r\nX-Upstream: wire\r\nContent-Length: 2\r\n\r\nok"


# ----- an upstream that records requests as parsed off the wire ------------------------------


@dataclass
class Forwarded:
    """One request as the upstream parsed it."""

    method: bytes
    target: bytes
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    body: bytes = b""

    def header(self, name: bytes) -> list[bytes]:
        return [value for key, value in self.headers if key.lower() == name.lower()]


class _Request:
    """httptools callbacks: collects one request at a time into `done`."""

    def __init__(self, done: list[Forwarded]) -> None:
        self.done = done
        self.current = Forwarded(b"", b"")
        self.parser = httptools.HttpRequestParser(self)

    def on_url(self, url: bytes) -> None:
        self.current.target += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.current.headers.append((name, value))

    def on_body(self, body: bytes) -> None:
        self.current.body += body

    def on_message_complete(self) -> None:
        self.current.method = self.parser.get_method()
        self.done.append(self.current)
        self.current = Forwarded(b"", b"")


class WireUpstream:
    """A TCP upstream on a free 127.0.0.1 port, one thread per connection: it parses what it
    receives as a strict HTTP/1.1 server would (llhttp through httptools), records each
    request in `requests` and answers it 200 with `X-Upstream: wire`; bytes it cannot parse
    go to `malformed` and the connection is closed. Usable from sync and async tests alike."""

    def __init__(self) -> None:
        self.requests: list[Forwarded] = []
        self.malformed: list[bytes] = []
        self._lock = threading.Lock()
        upstream = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                upstream.serve(self.request)

        self._server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._server.block_on_close = False
        self.port = self._server.server_address[1]
        # Polled every 50 ms for shutdown() (socketserver's default, 0.5 s, is each test's).
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> WireUpstream:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def count(self) -> int:
        with self._lock:
            return len(self.requests)

    def serve(self, sock) -> None:
        done: list[Forwarded] = []
        request = _Request(done)
        seen = b""
        while True:
            try:
                data = sock.recv(65536)
            except OSError:
                return
            if not data:
                return
            seen += data
            try:
                request.parser.feed_data(data)
            except httptools.HttpParserError:
                with self._lock:
                    self.malformed.append(seen)
                return
            while done:
                forwarded = done.pop(0)
                with self._lock:
                    self.requests.append(forwarded)
                reply = UPSTREAM_REPLY
                if forwarded.method == b"HEAD":
                    reply = reply[: -len(b"ok")]
                try:
                    sock.sendall(reply)
                except OSError:  # the node gave up on this connection
                    return


@contextlib.contextmanager
def running_node(config: str, workdir: Path) -> Iterator[NodeProcess]:
    """`python run.py` on `config` (TOML) on a free port, answering /health; stopped by pid
    after (stop it before its upstream: it keeps connections to it)."""
    fleet = Fleet(workdir)
    try:
        yield fleet.node("node", config)
    finally:
        fleet.stop()
