"""A killed node (SIGKILL: no chance to deregister) leaves the registry when its TTL runs out."""

from __future__ import annotations

import signal
import time

import redis
from dashboard_cluster import cluster_config
from e2e_harness import free_port, request, wait_for

from node.cluster.keys import NODE_INFO
from node.cluster.registry import HEARTBEAT_TTL


def cluster_nodes(port: int) -> list[str]:
    return [n["name"] for n in request(port, "/dashboard/api/cluster").json()["nodes"]]


def test_killed_node_expires_with_its_ttl(start_node, write_config, redis_server):
    """After SIGKILL the record stays until its TTL (~5 s), then the survivor sees 1 node."""
    port1, port2 = free_port(), free_port()
    config1 = write_config(cluster_config("keep", redis_server.url, port2), "keep.toml")
    config2 = write_config(cluster_config("doomed", redis_server.url, port1), "doomed.toml")
    start_node("--config", str(config1), port=port1)
    doomed = start_node("--config", str(config2), port=port2)
    assert wait_for(lambda: sorted(cluster_nodes(port1)) == ["doomed", "keep"], 5)

    client = redis.Redis(port=redis_server.port)
    doomed.proc.send_signal(signal.SIGKILL)
    doomed.proc.wait(timeout=5)
    killed = time.monotonic()
    assert client.exists(NODE_INFO + "doomed")  # no goodbye from a killed node
    assert wait_for(lambda: not client.exists(NODE_INFO + "doomed"), HEARTBEAT_TTL + 2)
    gone_after = time.monotonic() - killed
    assert HEARTBEAT_TTL - 1.5 <= gone_after <= HEARTBEAT_TTL + 2
    assert wait_for(lambda: cluster_nodes(port1) == ["keep"], 2)
    client.close()
