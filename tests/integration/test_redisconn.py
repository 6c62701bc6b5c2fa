"""The node's Redis connection: a full pool is a backlog, not an outage."""

from __future__ import annotations

import asyncio

import pytest

from node.cluster.redis import RedisConnection
from node.errors import BackendUnavailable


async def test_a_full_pool_fails_the_command_but_keeps_redis_up(redis_server):
    """A burst beyond the pool waits its turn and then fails alone: Redis is not marked
    down, so the next command runs (an outage would fail every command for a while)."""
    connection = RedisConnection(redis_server.url)
    pool = connection.client.connection_pool
    pool.max_connections, pool.timeout = 1, 0.1
    try:
        holder = asyncio.ensure_future(connection.run(lambda c: c.blpop(["nothing"], 0.5)))
        await asyncio.sleep(0.05)  # the one connection is now busy
        with pytest.raises(BackendUnavailable, match="too many redis commands in flight"):
            await connection.run(lambda c: c.ping())
        assert connection.available
        await holder
        assert await connection.run(lambda c: c.ping())
    finally:
        await connection.close()
