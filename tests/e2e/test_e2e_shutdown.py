"""SIGTERM: stop accepting, let in-flight requests finish (up to node.drain_timeout), exit 0."""

from __future__ import annotations

import http.client
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from e2e_harness import in_flight, refuses_connections, request, wait_for

SLOW_CONFIG = """
[node]
name = "drainer"
drain_timeout = {drain_timeout}

[[routes]]
path = "/slow"
methods = ["GET"]
target = "handler:slow_app:slow"
"""


def test_sigterm_finishes_in_flight_request(start_node, write_config) -> None:
    """A 2 s request in flight at SIGTERM completes with 200; new connections are refused."""
    config = write_config(SLOW_CONFIG.format(drain_timeout=5))
    node = start_node("--config", str(config))
    with ThreadPoolExecutor(max_workers=1) as pool:
        started = time.monotonic()
        slow = pool.submit(request, node.port, "/slow?seconds=2", timeout=10.0)
        assert wait_for(lambda: in_flight(node.port, "/slow") >= 1, timeout=5.0)

        node.proc.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        assert wait_for(lambda: refuses_connections(node.port), timeout=1.0), (
            "still accepting connections 1 s after SIGTERM"
        )
        assert not slow.done(), "the slow request ended before new connections were refused"

        response = slow.result(timeout=10.0)
        finished = time.monotonic()
    assert response.status == 200
    assert response.json() == {"slept": 2.0}
    assert response.headers["x-node"] == "drainer"
    assert finished - started >= 2.0
    assert node.proc.wait(timeout=10.0) == 0
    assert time.monotonic() - signalled < 5.0
    assert "Traceback" not in node.stderr()


def test_sigterm_when_idle_exits_0_quickly(start_node, write_config) -> None:
    """With nothing in flight, SIGTERM exits 0 at once, not after drain_timeout."""
    config = write_config(SLOW_CONFIG.format(drain_timeout=10))
    node = start_node("--config", str(config))
    request(node.port, "/health")  # leaves no keep-alive connection open (Connection: close)
    signalled = time.monotonic()
    assert node.terminate(timeout=10.0) == 0
    assert time.monotonic() - signalled < 3.0
    assert "Traceback" not in node.stderr()


@pytest.mark.parametrize("drain", [1, 2])
def test_drain_timeout_bounds_the_whole_drain(start_node, write_config, drain) -> None:
    """A request longer than drain_timeout gets that long after SIGTERM, not twice it: exit 0."""
    config = write_config(SLOW_CONFIG.format(drain_timeout=drain))
    node = start_node("--config", str(config))
    with ThreadPoolExecutor(max_workers=1) as pool:
        slow = pool.submit(request, node.port, "/slow?seconds=30", timeout=15.0)
        assert wait_for(lambda: in_flight(node.port, "/slow") >= 1, timeout=5.0)
        signalled = time.monotonic()
        node.proc.send_signal(signal.SIGTERM)
        code = node.proc.wait(timeout=10.0)
        elapsed = time.monotonic() - signalled
        # The cut-off request ends one way or another (an error or a 5xx), never hangs.
        try:
            status = slow.result(timeout=5.0).status
        except (OSError, http.client.HTTPException):
            status = None
    assert code == 0
    assert 0.8 * drain <= elapsed < drain + 1.0, f"exited {elapsed:.2f} s, drain_timeout {drain}"
    assert status != 200
