"""Shared breaker trips across real `python run.py` nodes: with corroborate = 1, a trip on
one stops the other (test_breaker_quorum_cluster.py has the default, a quorum of two)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator

import pytest
from e2e_harness import request
from ratelimit_helpers import SHARED_REDIS, connect

from plugins.breaker.keys import BREAKER_PROBES, BREAKER_TRIPS

MIN_REQUESTS = 5


def gateway_config(name: str, origin_port: int) -> str:
    return (
        f'[node]\nname = "{name}"\n\n[backends]\nredis = "{SHARED_REDIS}"\n\n'
        f'[upstreams.app]\ntargets = ["http://127.0.0.1:{origin_port}"]\n\n'
        '[[routes]]\npath = "/api/{tail:.*}"\ntarget = "upstream:app"\nstrip_prefix = "/api"\n'
        f"breaker = {{ min_requests = {MIN_REQUESTS}, open_seconds = 30, corroborate = 1 }}\n"
    )


ORIGIN = '[[routes]]\npath = "/flaky"\ntarget = "handler:slow_app:flaky"\n'


@pytest.fixture
def origin_port(start_node, write_config) -> Iterator[int]:
    """A node serving /flaky (the upstream); its trip records are deleted afterwards."""
    port = start_node("--config", str(write_config(ORIGIN, "origin.toml"))).port
    yield port
    client = connect(SHARED_REDIS)
    name = f"app|127.0.0.1:{port}"
    client.delete(BREAKER_TRIPS + name, BREAKER_PROBES + name)
    client.close()


def origin_calls(port: int) -> int:
    """Requests the origin has answered on /flaky, from its /metrics."""
    text = request(port, "/metrics").body.decode()
    lines = [ln for ln in text.splitlines() if ln.startswith("scalenode_requests_total")]
    return sum(int(float(ln.rsplit(" ", 1)[1])) for ln in lines if 'route="/flaky"' in ln)


def test_a_trip_on_one_node_stops_the_other_within_100_ms(
    start_node: Callable[..., object], write_config: Callable[..., object], origin_port: int
) -> None:
    """With corroborate = 1, node A trips on the origin's 500s; within 100 ms node B
    answers 503 circuit_open (with Retry-After) and no longer calls the origin."""
    gateways = []
    for label in ("a", "b"):
        name = f"br-{label}-{uuid.uuid4().hex[:8]}"
        path = write_config(gateway_config(name, origin_port), f"{name}.toml")
        gateways.append(start_node("--config", str(path)).port)  # type: ignore[attr-defined]
    a, b = gateways
    assert request(b, "/api/flaky").status == 200  # B's pool works before the trip
    for _ in range(MIN_REQUESTS):
        assert request(a, "/api/flaky?status=500").status == 500
    tripped = time.monotonic()
    while (reply := request(b, "/api/flaky")).status != 503:
        assert time.monotonic() - tripped < 1.0, "B never opened the circuit"
    assert time.monotonic() - tripped < 0.1
    assert reply.json()["error"] == "circuit_open"
    assert 1 <= int(reply.headers["retry-after"]) <= 30
    before = origin_calls(origin_port)
    assert [request(b, "/api/flaky").status for _ in range(5)] == [503] * 5
    assert origin_calls(origin_port) == before
