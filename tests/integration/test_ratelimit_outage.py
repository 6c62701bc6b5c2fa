"""RedisCounter when Redis fails: RedisConnection's outage latch against a private
redis-server it kills, and the script reloaded after a SCRIPT FLUSH (Redis, Redis Cluster).
What every counter store must do is the contract suite's (tests/contract)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from testkit.servers import free_port, start_redis, stop

from node.cluster.redis import RedisConnection
from node.errors import BackendUnavailable
from plugins.ratelimit.algorithms import FIXED_WINDOW, Limit
from plugins.ratelimit.stores import Decision, RedisCounter

HOUR = 3600 * 1000 * 1000  # µs: a window no test here reaches the end of


def limit_of(n: int) -> Limit:
    return Limit(n, HOUR, n)


class PrivateRedis:
    """A redis-server of the test's own on a free port, to kill (by its pid) and restart."""

    def __init__(self, workdir: Path) -> None:
        self.workdir, self.port = workdir, free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = start_redis(self.port, workdir)
        self.connections: list[RedisConnection] = []

    def kill(self) -> None:
        if self.process is not None:
            stop(self.process)
            self.process = None

    async def knocked_out(self, **options: float) -> tuple[RedisCounter, float]:
        """A counter that worked, then Redis killed: its first failing hit and how long it took."""
        self.connections.append(RedisConnection(self.url, **options))
        counter = RedisCounter(self.connections[-1])
        assert (await hit(counter)).allowed
        self.kill()
        started = time.monotonic()
        with pytest.raises(BackendUnavailable):
            await hit(counter)
        return counter, time.monotonic() - started


@pytest.fixture
async def private_redis(tmp_path: Path) -> AsyncIterator[PrivateRedis]:
    server = PrivateRedis(tmp_path)
    yield server
    for connection in server.connections:
        await connection.close()
    server.kill()


async def hit(counter: RedisCounter) -> Decision:
    return await counter.hit(["sn:rl:{outage}:k"], FIXED_WINDOW, [limit_of(10**6)])


async def test_dead_redis_raises_backend_unavailable_fast(private_redis: PrivateRedis) -> None:
    """The first hit after Redis dies raises BackendUnavailable within 1.5 s."""
    counter, took = await private_redis.knocked_out()
    assert took < 1.5
    assert not counter.connection.available


async def test_while_down_hits_fail_fast_without_connecting(private_redis: PrivateRedis) -> None:
    """Latched down, hits fail in < 50 ms and never touch the port (a silent listener there)."""
    counter, _ = await private_redis.knocked_out(reconnect_interval=60.0)  # no reconnects now
    with socket.socket() as silent:  # completes TCP handshakes on the port, never answers
        silent.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        silent.bind(("127.0.0.1", private_redis.port))
        silent.listen(64)
        silent.setblocking(False)
        for _ in range(20):
            started = time.monotonic()
            with pytest.raises(BackendUnavailable):
                await hit(counter)
            assert time.monotonic() - started < 0.05
        with pytest.raises(BlockingIOError):
            silent.accept()  # nobody connected


async def test_recovers_within_two_seconds_of_a_restart(private_redis: PrivateRedis) -> None:
    """Redis back on the same port: hits succeed again within ~2 s (script reloaded too)."""
    counter, _ = await private_redis.knocked_out()
    private_redis.process = start_redis(private_redis.port, private_redis.workdir)
    restarted = time.monotonic()
    while True:
        with contextlib.suppress(BackendUnavailable):
            assert (await hit(counter)).allowed
            break
        assert time.monotonic() - restarted < 2.0, "still failing 2 s after the restart"
        await asyncio.sleep(0.05)
    assert counter.connection.available


@pytest.fixture(params=["private_redis", "cluster"])
def flushable(request: pytest.FixtureRequest) -> str:
    server = request.getfixturevalue(request.param)
    return getattr(server, "url", server)


async def test_hits_survive_a_script_flush(flushable: str) -> None:
    """SCRIPT FLUSH on the server: the next hit reloads the script (NOSCRIPT) and works."""
    connection = RedisConnection(flushable)
    counter = RedisCounter(connection)
    key = f"sn:rl:{{{uuid.uuid4().hex}}}:flush"
    try:
        assert (await counter.hit([key], FIXED_WINDOW, [limit_of(5)])).allowed
        await connection.client.script_flush()
        assert await connection.client.script_exists(counter.script.sha) == [False]
        decision = await counter.hit([key], FIXED_WINDOW, [limit_of(5)])
        assert decision.allowed and decision.verdicts[0].remaining == 3
        await connection.client.delete(key)
    finally:
        await connection.close()


async def test_one_tick_batch_of_mixed_requests_gets_each_its_own_verdicts() -> None:
    """Checks of one tick travel as one script call: one-key and two-key requests mixed,
    each client's key packed once and reused, each request gets its own slice of the reply."""
    connection = RedisConnection("redis://127.0.0.1:6379/0")
    counter = RedisCounter(connection)
    tag = uuid.uuid4().hex
    one, two = f"sn:rl:{{{tag}:a}}:fixed", [f"sn:rl:{{{tag}:b}}:w1", f"sn:rl:{{{tag}:b}}:w2"]
    try:
        for _ in range(2):  # the second round reuses the packed keys
            decisions = await asyncio.gather(
                counter.hit([one], FIXED_WINDOW, [limit_of(5)]),
                counter.hit(two, FIXED_WINDOW, [limit_of(3), limit_of(10)]),
                counter.hit([one], FIXED_WINDOW, [limit_of(5)]),
            )
        assert [d.allowed for d in decisions] == [True, True, True]
        assert [v.remaining for v in decisions[0].verdicts] == [2]
        assert [v.remaining for v in decisions[1].verdicts] == [1, 8]
        assert [v.remaining for v in decisions[2].verdicts] == [1]
        assert not counter.batch and not counter.key_parts and not counter.arg_parts
        assert set(counter.packed_keys) == {one}
        await connection.client.delete(one, *two)
    finally:
        await connection.close()
