"""The rebalance command against running nodes (`python run.py` processes, embedded members
in one data directory): the dry run moves nothing, --apply moves a third of the keys while
the nodes serve, and both nodes answer from the new owners within a second."""

from __future__ import annotations

import http.client
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

from e2e_harness import REPO, node_env, request

KEYS = 120


def config(data_dir: Path, members: int) -> str:
    listed = ", ".join(f'{{ name = "s{i}", dsn = "" }}' for i in range(members))
    return (
        f'[shards.users]\nmembers = [{listed}]\ndata_dir = "{data_dir}"\n\n'
        '[[routes]]\npath = "/users/{key}"\ntarget = "store:users"\n'
    )


def put(port: int, key: str, body: dict) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=15)
    try:
        conn.request("PUT", f"/users/{key}", body=json.dumps(body))
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


def rebalance(path: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "run.py", "--role", "rebalance", "--config", str(path), *flags],
        cwd=REPO,
        env=node_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_rebalance_moves_a_third_online_and_every_node_follows(tmp_path, write_config, start_node):
    """Dry run, then --apply during writes; both nodes serve every key from its new owner."""
    data = tmp_path / "data"
    first = start_node("--config", str(write_config(config(data, 2), "two.toml")))
    for i in range(KEYS):
        assert put(first.port, f"k{i}", {"i": i}) == 201
    first.stop()
    three = write_config(config(data, 3), "three.toml")
    nodes = [start_node("--config", str(three)) for _ in range(2)]
    planned = rebalance(three)
    assert planned.returncode == 0, planned.stderr
    assert "move 341/1024 buckets (33.30%; ideal 33.33% = 1/3)" in planned.stdout
    assert "dry run: nothing moved" in planned.stdout

    acked: dict[str, int] = {}
    stop = threading.Event()

    def writer() -> None:
        n = 0
        while not stop.is_set():
            key = f"k{n % KEYS}"
            assert put(nodes[n % 2].port, key, {"i": n}) == 200
            acked[key] = n
            n += 1

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        applied = rebalance(three, "--apply")
    finally:
        stop.set()
        thread.join()
    assert applied.returncode == 0, applied.stdout + applied.stderr
    assert "verified: 341 buckets, row counts and checksums equal" in applied.stdout
    assert "keys moved:" in applied.stdout
    time.sleep(1.0)  # MAP_POLL is 0.5 s
    for node in nodes:
        shards = []
        for i in range(KEYS):
            reply = request(node.port, f"/users/k{i}")
            assert reply.status == 200
            assert reply.json() == {"i": acked.get(f"k{i}", i)}
            shards.append(reply.headers["x-shard"])
        assert abs(shards.count("s2") - KEYS / 3) < 20, shards.count("s2")
    again = rebalance(three)
    assert "balanced: nothing to move" in again.stdout
