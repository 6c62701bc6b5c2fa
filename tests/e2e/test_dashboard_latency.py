"""The dashboard's latency quantiles against what a client measures from outside."""

from __future__ import annotations

import http.client
import math
import os
import random
import re
import shutil
import subprocess
import time

import pytest
from e2e_harness import request, wait_for

CONFIG = """
[[routes]]
path = "/slow"
methods = ["GET"]
target = "handler:slow_app:slow"
"""
# Sleeps in ms: mostly fast, a tail of slower ones (p50 ~1 ms, p95 ~5 ms, p99 ~20 ms).
SLEEPS_MS = [1.0] * 90 + [5.0] * 8 + [20.0] * 2


def client_latencies(port: int, count: int) -> list[float]:
    """`count` sequential requests on one keep-alive connection; each one's seconds."""
    rng = random.Random(5)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    out = []
    try:
        for _ in range(count):
            seconds = rng.choice(SLEEPS_MS) / 1000
            started = time.perf_counter()
            conn.request("GET", f"/slow?seconds={seconds}")
            conn.getresponse().read()
            out.append(time.perf_counter() - started)
    finally:
        conn.close()
    return sorted(out)


def test_route_quantiles_match_the_client_side_measure(start_node, write_config):
    """p50/p95/p99 of the route on the dashboard lie within the client's own view of the same
    requests, less what the client adds (loopback, HTTP parsing and the event loop's wait:
    up to 1 ms plus 20 % on a loaded test machine). Coarse buckets miss by far more: p50,
    p95 and p99 of 1, 5 and 20 ms all read 0.5 ms or one bound."""
    port = start_node("--config", str(write_config(CONFIG))).port
    measured = client_latencies(port, 600)  # about 2 s: all inside the 10 s window

    def route() -> dict:
        routes = request(port, "/dashboard/api/cluster").json()["cluster"]["routes"]
        found = [r for r in routes if r["route"] == "/slow"]
        return found[0] if found and sum(found[0]["status_rps"].values()) > 0 else {}

    assert wait_for(lambda: route().get("rps", 0) * 10 >= 590, 5)
    seen = route()
    summary = request(port, "/dashboard/api/cluster").json()["cluster"]
    for q, key in ((0.50, "p50"), (0.99, "p99")):
        client_ms = measured[math.ceil(q * len(measured)) - 1] * 1000
        assert within(seen[key], client_ms), (key, seen[key], client_ms)
    client_p95 = measured[math.ceil(0.95 * len(measured)) - 1] * 1000
    assert within(summary["p95"], client_p95), (summary["p95"], client_p95)


def within(node_ms: float, client_ms: float) -> bool:
    """The node's figure is the client's, less the client's own overhead, give or take a bucket."""
    return client_ms * 0.8 - 1.0 <= node_ms <= client_ms * 1.125  # a bucket is <= 12.5 % wide


HELLO = """
[[routes]]
path = "/hello"
methods = ["GET"]
target = "handler:node.demo:hello"
"""
WRK_CONNECTIONS = 48
WRK_SECONDS = 6


def wrk_quantiles(port: int, cpu: int) -> dict[str, float]:
    """wrk's own latency distribution (ms by percentile) over WRK_CONNECTIONS keep-alive
    connections to the node's /hello, wrk pinned to `cpu`."""
    wrk = shutil.which("wrk")
    if wrk is None:
        pytest.fail("the saturated-node latency test needs wrk: apt-get install -y wrk")
    argv = [wrk, "-t1", f"-c{WRK_CONNECTIONS}", f"-d{WRK_SECONDS}s", "--latency"]
    out = subprocess.run(
        [*argv, f"http://127.0.0.1:{port}/hello"],
        capture_output=True,
        text=True,
        timeout=WRK_SECONDS + 10,
        preexec_fn=lambda: os.sched_setaffinity(0, {cpu}),
        check=True,
    ).stdout
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}
    found = re.findall(r"^\s+(\d+)%\s+([\d.]+)(us|ms|s)\s*$", out, re.MULTILINE)
    assert found, out
    return {pct: float(value) * scale[unit] for pct, value, unit in found}


def test_quantiles_of_a_saturated_node_match_wrk(start_node, write_config):
    """A node on one core under wrk on another: its loop is always busy, so requests wait in
    the kernel's socket buffer before the node reads them (on this VM as long as the node
    then takes to answer). Timed from the read, the node's p50 was about 0.6x wrk's; timed
    from node.arrival's estimate it must be within -30 %/+25 % of it. p99 is checked from above
    only: wrk's tail also holds the scheduling of the other processes on a shared machine."""
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        pytest.skip("needs two cores: one for the node, one for wrk")
    node = start_node("--config", str(write_config(HELLO)))
    os.sched_setaffinity(node.pid, {cores[-1]})  # its event loop's thread
    client = wrk_quantiles(node.port, cores[0])
    row = request(node.port, "/dashboard/api/cluster").json()["nodes"][0]  # last 10 s
    seen = {key: round(row[key], 3) for key in ("p50", "p95", "p99")}
    assert 0.7 * client["50"] <= seen["p50"] <= 1.25 * client["50"], (seen, client)
    assert seen["p99"] <= 1.25 * client["99"], (seen, client)
