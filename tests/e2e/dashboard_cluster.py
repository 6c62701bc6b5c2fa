"""Helpers of the dashboard e2e tests: a two-node cluster on a private Redis, and traffic."""

from __future__ import annotations

import http.client
import threading
import time
from pathlib import Path

REPO_ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"


def cluster_config(
    name: str,
    redis_url: str,
    upstream_port: int,
    dead_port: int | None = None,
    interval: float | None = None,
) -> str:
    """A node with a rate-limited handler route, an upstream pool behind a breaker and a cached
    route (so every tile has data); with `dead_port`, also a hash pool `shop` whose second
    member never answers, behind `/shop/` (its card shows retries, a trip and the ring);
    with `interval`, that dashboard.interval."""
    dashboard = "" if interval is None else f"\n[dashboard]\ninterval = {interval}\n"
    return (
        _base_config(name, redis_url, upstream_port)
        + ("" if dead_port is None else _shop_config(upstream_port, dead_port))
        + dashboard
    )


def _shop_config(upstream_port: int, dead_port: int) -> str:
    return f"""
[upstreams.shop]
targets = ["http://127.0.0.1:{upstream_port}", "http://127.0.0.1:{dead_port}"]
balance = "hash"
retries = 1

[[routes]]
path = "/shop/{{tail:.*}}"
target = "upstream:shop"
strip_prefix = "/shop"
breaker = {{ open_seconds = 30 }}
"""


def _base_config(name: str, redis_url: str, upstream_port: int) -> str:
    return f"""
[node]
name = "{name}"

[backends]
redis = "{redis_url}"

[upstreams.hello]
targets = ["http://127.0.0.1:{upstream_port}"]

[[routes]]
path = "/hello"
methods = ["GET"]
target = "handler:node.demo:hello"
ratelimit = {{ limit = 100000, window = 60 }}

[[routes]]
path = "/via/{{tail:.*}}"
target = "upstream:hello"
strip_prefix = "/via"
breaker = {{ open_seconds = 5 }}

[[routes]]
path = "/cached/{{tail:.*}}"
methods = ["GET"]
target = "upstream:hello"
strip_prefix = "/cached"
cache = {{ ttl = 1 }}
breaker = {{ open_seconds = 5 }}
"""


class Traffic:
    """A thread sending GET requests to `port` over one keep-alive connection until stopped,
    paced by the clock (request i is due at start + i / per_second), so a slow answer delays
    the next request but does not lower the offered rate while the client keeps up."""

    def __init__(self, port: int, path: str, per_second: float) -> None:
        self.port, self.path, self.pause = port, path, 1.0 / per_second
        self.sent = 0  # answered requests
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
        due = time.monotonic()
        while not self._stop.is_set():
            try:
                conn.request("GET", self.path)
                conn.getresponse().read()
                self.sent += 1
            except OSError:
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
            # Behind by more than a second (a stall): start afresh rather than burst.
            due = max(due + self.pause, time.monotonic() - 1.0)
            self._stop.wait(max(0.0, due - time.monotonic()))
        conn.close()

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
