"""The dashboard on a busy machine: a CPU hog on every core while two nodes serve paced
traffic. Sampled through /dashboard/api/cluster every half second, the cluster must never
show a live node as gone, nor a request rate the traffic did not have."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from typing import Any

from dashboard_cluster import Traffic, cluster_config
from e2e_harness import free_port, request, wait_for

RATE = 60.0  # requests per second offered to each node
HOG_SECONDS = 12.0
SAMPLE_EVERY = 0.5
# How far the cluster's req/s (a 10 s window per node, summed) may stray from what the
# clients achieved over the same 10 s: the windows' edges are up to a heartbeat and an
# aggregation late (2 s), which moves a steady rate by nothing and a ramp by 20 % at most.
TOLERANCE = 0.2


def start_hogs() -> list[subprocess.Popen[bytes]]:
    """One busy-looping process per core: the machine is as busy as it gets."""
    return [
        subprocess.Popen([sys.executable, "-c", "while True: pass"])
        for _ in range(os.cpu_count() or 1)
    ]


def stop_hogs(hogs: list[subprocess.Popen[bytes]]) -> None:
    for hog in hogs:
        with contextlib.suppress(ProcessLookupError):
            os.kill(hog.pid, signal.SIGKILL)
        hog.wait()


def frame(port: int) -> dict[str, Any]:
    return request(port, "/dashboard/api/cluster", timeout=10).json()


def test_busy_machine_shows_no_gone_node_and_no_phantom_rate(
    start_node, write_config, redis_server
):
    port1, port2 = free_port(), free_port()
    config1 = write_config(cluster_config("node-1", redis_server.url, port2), "n1.toml")
    config2 = write_config(cluster_config("node-2", redis_server.url, port1), "n2.toml")
    start_node("--config", str(config1), port=port1)
    start_node("--config", str(config2), "--role", "gateway", port=port2)
    assert wait_for(lambda: len(frame(port1)["nodes"]) == 2, 10)

    traffic = [Traffic(port1, "/hello", RATE), Traffic(port2, "/hello", RATE)]
    offered = 2 * RATE
    sent: list[tuple[float, int]] = []  # (monotonic time, requests answered so far)
    samples: list[dict[str, Any]] = []
    with traffic[0], traffic[1]:
        # Each node's req/s is over its last 10 s: full once 10 s of traffic are in it.
        assert wait_for(lambda: frame(port1)["cluster"]["rps"] >= offered * 0.9, 15)
        started = time.monotonic()
        sent.append((started, sum(t.sent for t in traffic)))
        hogs = start_hogs()
        try:
            hog_start = time.time()
            while time.monotonic() - started < HOG_SECONDS:
                samples.append(frame(port1))
                sent.append((time.monotonic(), sum(t.sent for t in traffic)))
                time.sleep(SAMPLE_EVERY)
        finally:
            stop_hogs(hogs)
        final = frame(port1)

    # The clients kept their pace through the hogging (else the rate moved for real).
    achieved = (sent[-1][1] - sent[0][1]) / (sent[-1][0] - sent[0][0])
    assert achieved >= offered * 0.9, achieved

    states = [{row["name"]: row["state"] for row in s["nodes"]} for s in samples]
    assert all(set(s) == {"node-1", "node-2"} for s in states), states
    assert all(set(s.values()) <= {"up", "stale"} for s in states), states

    low, high = offered * (1 - TOLERANCE), offered * (1 + TOLERANCE)
    totals = [s["cluster"]["rps"] for s in samples if not s["cluster"]["partial"]]
    assert totals, "every sample had a stale node"
    assert all(low <= rps <= high for rps in totals), (offered, totals)
    for s in samples:  # a node out of the totals is said to be, and has no share in them
        stale = [row["name"] for row in s["nodes"] if row["state"] == "stale"]
        assert s["cluster"]["partial"] == bool(stale)
        assert sorted(s["cluster"]["states"]["stale"]) == sorted(stale)

    # Charts: a missing point is a gap (None), never a zero or a jump.
    history = final["history"]
    during = [i for i, t in enumerate(history["t"]) if t >= hog_start]
    assert len(during) >= HOG_SECONDS / 2
    for i in during:
        rps = history["rps"][i]
        assert rps is None or low <= rps <= high, (i, rps, offered)
        for name in ("node-1", "node-2"):
            value = history["nodes"][name][i]
            assert value is None or value >= RATE * (1 - TOLERANCE), (name, i, value)
