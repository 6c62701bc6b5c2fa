"""A killed node (SIGKILL: no chance to deregister) goes stale, then down, and stays listed
as down on the survivor's dashboard; a stopped one (SIGTERM) says it left."""

from __future__ import annotations

import signal
import time

from dashboard_cluster import cluster_config
from e2e_harness import free_port, request, wait_for

from dashboard.aggregate import DOWN_AFTER
from node.cluster.registry import HEARTBEAT_INTERVAL


def states(port: int) -> dict[str, str]:
    frame = request(port, "/dashboard/api/cluster").json()
    return {n["name"]: n["state"] for n in frame["nodes"]}


def test_killed_node_is_down_and_stays_listed(start_node, write_config, redis_server):
    """After SIGKILL the survivor lists the node as down within DOWN_AFTER + a frame, and
    still lists it later; live totals count one node."""
    port1, port2 = free_port(), free_port()
    config1 = write_config(cluster_config("keep", redis_server.url, port2), "keep.toml")
    config2 = write_config(cluster_config("doomed", redis_server.url, port1), "doomed.toml")
    start_node("--config", str(config1), port=port1)
    doomed = start_node("--config", str(config2), port=port2)
    assert wait_for(lambda: states(port1) == {"doomed": "up", "keep": "up"}, 5)

    doomed.proc.send_signal(signal.SIGKILL)
    doomed.proc.wait(timeout=5)
    killed = time.monotonic()
    assert wait_for(lambda: states(port1).get("doomed") == "down", DOWN_AFTER + 2)
    down_after = time.monotonic() - killed
    assert DOWN_AFTER - HEARTBEAT_INTERVAL - 0.5 <= down_after <= DOWN_AFTER + 1.5
    time.sleep(2)
    frame = request(port1, "/dashboard/api/cluster").json()
    assert states(port1) == {"doomed": "down", "keep": "up"}
    assert (frame["cluster"]["reporting"], frame["cluster"]["nodes"]) == (1, 2)
    newest = frame["events"][0]
    assert (newest["node"], newest["kind"]) == ("doomed", "down")


def test_stopped_node_left(start_node, write_config, redis_server):
    """SIGTERM: the node deregisters as left, at once, and is out of the totals."""
    port1, port2 = free_port(), free_port()
    config1 = write_config(cluster_config("keep", redis_server.url, port2), "keep.toml")
    config2 = write_config(cluster_config("going", redis_server.url, port1), "going.toml")
    start_node("--config", str(config1), port=port1)
    going = start_node("--config", str(config2), port=port2)
    assert wait_for(lambda: states(port1) == {"going": "up", "keep": "up"}, 5)
    assert going.terminate() == 0
    assert wait_for(lambda: states(port1).get("going") == "left", 3)
    frame = request(port1, "/dashboard/api/cluster").json()
    assert frame["cluster"]["nodes"] == 1
    assert ("going", "left") in [(e["node"], e["kind"]) for e in frame["events"]]
