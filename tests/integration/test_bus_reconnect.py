"""The cluster bus across a Redis restart: it reconnects and resyncs by itself. What every
bus must deliver is the contract suite's (tests/contract/test_cluster_bus.py)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable

import pytest
from testkit.servers import RedisServer

from node.cluster.bus import ClusterBus
from node.cluster.redis import RedisConnection
from node.errors import BackendUnavailable


async def eventually(check: Callable[[], bool], within: float = 3.0) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "not within the deadline"
        await asyncio.sleep(0.01)


async def test_reconnects_and_resyncs_after_a_redis_restart(redis_server: RedisServer) -> None:
    """Redis killed: publish fails fast; restarted: the bus resyncs, then delivers again."""
    name = f"sn:test:{uuid.uuid4().hex[:10]}"
    heard: list[bytes] = []
    resyncs: list[None] = []
    connection = RedisConnection(redis_server.url)
    bus = ClusterBus(connection)
    bus.subscribe(name, heard.append, lambda: resyncs.append(None))
    try:
        await bus.start()
        await eventually(lambda: bus.connected)
        redis_server.kill()
        await eventually(lambda: not bus.connected)
        with pytest.raises(BackendUnavailable):
            await bus.publish(name, b"lost")
        redis_server.start()
        await eventually(lambda: bus.connected and len(resyncs) == 1, within=5.0)
        await eventually(lambda: connection.available)
        await bus.publish(name, b"after")
        await eventually(lambda: b"after" in heard)
    finally:
        await bus.stop()
        await connection.close()
