"""RedisL2's Lua scripts on a Redis that has never seen them; what every L2 store must do
is the contract suite's (tests/contract/test_cache_l2.py)."""

from __future__ import annotations

from pathlib import Path

from testkit.servers import RedisServer

from node.cluster.redis import RedisConnection
from plugins.cache.stores import RedisL2


async def test_scripts_load_themselves_on_a_fresh_redis(tmp_path: Path) -> None:
    """A Redis that never saw the scripts (NOSCRIPT) still indexes, locks and releases."""
    server = RedisServer(tmp_path)
    server.start()
    connection = RedisConnection(server.url)
    try:
        store = RedisL2(connection)
        await store.put("r:/a", b"1", 5.0, "/a", ("t",))
        assert await store.lock("r:/a", "me", 5.0)
        await store.unlock("r:/a", "me")
        assert not await store.locked("r:/a")
        assert await store.drop_tag("t") == 1
    finally:
        await connection.close()
        server.kill()
