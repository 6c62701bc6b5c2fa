"""The auto-pipeline against real Redis: ordering, errors, handshake, dead and silent peers."""

from __future__ import annotations

import asyncio
import socket
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import hiredis
import pytest
import redis.asyncio as redis
import uvloop
from testkit.servers import free_port, start_redis, stop

from node.cluster.autopipe import AutoPipeline, ReplyError, pack

URL = "redis://127.0.0.1:6379/0"


@pytest.fixture
async def pipeline() -> AsyncIterator[AutoPipeline]:
    pipe = AutoPipeline(URL, timeout=1.0)
    yield pipe
    await pipe.close()


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[tuple[int, object]]:
    port = free_port()
    process = start_redis(port, tmp_path, "--requirepass", "s3cret")
    yield port, process
    stop(process)


async def test_concurrent_commands_get_their_own_replies(pipeline: AutoPipeline) -> None:
    """500 concurrent ECHOs, sent in shared writes, each get back their own payload."""
    payloads = [uuid.uuid4().hex.encode() for _ in range(500)]
    replies = await asyncio.gather(*(pipeline.execute(pack(b"ECHO", p)) for p in payloads))
    assert replies == payloads


async def test_error_reply_raises_and_the_connection_stays_usable(pipeline: AutoPipeline) -> None:
    """A command Redis refuses raises ReplyError; the next command still works."""
    key = f"test:autopipe:{uuid.uuid4().hex}".encode()
    await pipeline.execute(pack(b"SET", key, b"text"))
    try:
        with pytest.raises(ReplyError, match="WRONGTYPE"):
            await pipeline.execute(pack(b"HGET", key, b"field"))
        assert await pipeline.execute(pack(b"GET", key)) == b"text"
    finally:
        await pipeline.execute(pack(b"DEL", key))


async def test_url_database_is_selected() -> None:
    """redis://.../3 writes into database 3."""
    key = f"test:autopipe:{uuid.uuid4().hex}"
    pipe = AutoPipeline("redis://127.0.0.1:6379/3", timeout=1.0)
    check = redis.from_url("redis://127.0.0.1:6379/3")
    try:
        await pipe.execute(pack(b"SET", key.encode(), b"3"))
        assert await check.get(key) == b"3"
    finally:
        await check.delete(key)
        await check.aclose()
        await pipe.close()


async def test_password_handshake(private_redis: tuple[int, object]) -> None:
    """The URL's password authenticates; a wrong one fails to connect with a clear error."""
    port, _ = private_redis
    good = AutoPipeline(f"redis://:s3cret@127.0.0.1:{port}/0", timeout=1.0)
    bad = AutoPipeline(f"redis://:wrong@127.0.0.1:{port}/0", timeout=1.0)
    try:
        assert await good.execute(pack(b"PING")) == b"PONG"
        with pytest.raises(ConnectionError, match="refused the handshake"):
            await bad.execute(pack(b"PING"))
    finally:
        await good.close()
        await bad.close()


async def test_dead_server_fails_pending_commands(private_redis: tuple[int, object]) -> None:
    """Killing Redis fails the commands waiting on it at once, then reconnects when it is back."""
    port, process = private_redis
    pipe = AutoPipeline(f"redis://:s3cret@127.0.0.1:{port}/0", timeout=1.0)
    try:
        assert await pipe.execute(pack(b"PING")) == b"PONG"
        blocked = asyncio.ensure_future(pipe.execute(pack(b"BLPOP", b"nothing", b"5")))
        await asyncio.sleep(0.1)
        stop(process)  # type: ignore[arg-type]
        started = time.monotonic()
        with pytest.raises(ConnectionError):
            await blocked
        assert time.monotonic() - started < 1.0
        with pytest.raises(OSError):
            await pipe.execute(pack(b"PING"))
    finally:
        await pipe.close()


async def test_silent_server_times_out() -> None:
    """A peer that accepts but never answers fails the command after the timeout."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        port = silent.getsockname()[1]
        pipe = AutoPipeline(f"redis://127.0.0.1:{port}/0", timeout=0.3)
        try:
            started = time.monotonic()
            with pytest.raises(ConnectionError, match="TimeoutError"):
                await pipe.execute(pack(b"PING"))
            assert 0.25 < time.monotonic() - started < 1.5
        finally:
            await pipe.close()


def test_a_connection_closed_under_a_write_fails_its_callers() -> None:
    """The transport closes between two ticks (Redis died, the reader has not seen it yet):
    the next write fails its commands at once instead of leaving them waiting. On uvloop,
    the node's loop, such a write raises (asyncio's own loop drops it quietly)."""

    async def scenario() -> None:
        pipe = AutoPipeline(URL, timeout=5.0)
        try:
            assert await pipe.execute(pack(b"PING")) == b"PONG"
            pipe._writer.close()  # type: ignore[union-attr]
            await asyncio.sleep(0)  # uvloop has closed the handle; the reader has not seen it
            reply = pipe.submit(pack(b"PING"))
            pipe.flush()
            with pytest.raises(ConnectionError):
                await asyncio.wait_for(reply, 0.5)
            assert not pipe.connected
        finally:
            await pipe.close()

    uvloop.run(scenario())


class Receiver:
    """A submit_to receiver that keeps what it is handed."""

    def __init__(self) -> None:
        self.results: list[object] = []
        self.errors: list[BaseException] = []

    def done(self) -> bool:
        return False

    def set_result(self, reply: object) -> None:
        self.results.append(reply)

    def set_exception(self, error: BaseException) -> None:
        self.errors.append(error)


async def test_submit_to_hands_replies_to_receivers_in_order(pipeline: AutoPipeline) -> None:
    """Receivers get their own replies (an error reply as a result), in order with futures."""
    assert await pipeline.execute(pack(b"PING")) == b"PONG"  # connected
    first, second = Receiver(), Receiver()
    pipeline.submit_to(pack(b"ECHO", b"one"), first)
    between = pipeline.submit(pack(b"ECHO", b"two"))
    pipeline.submit_to(pack(b"NOSUCHCOMMAND"), second)
    assert await asyncio.wait_for(between, 1.0) == b"two"
    await asyncio.wait_for(pipeline.execute(pack(b"PING")), 1.0)  # replies come in order
    assert first.results == [b"one"] and not first.errors
    assert len(second.results) == 1 and isinstance(second.results[0], hiredis.ReplyError)


async def test_submit_to_receivers_learn_of_a_lost_connection(pipeline: AutoPipeline) -> None:
    assert await pipeline.execute(pack(b"PING")) == b"PONG"
    receiver = Receiver()
    pipeline.submit_to(pack(b"BLPOP", uuid.uuid4().hex.encode(), b"5"), receiver)
    await pipeline.close()
    assert not receiver.results
    assert [type(e) for e in receiver.errors] == [ConnectionError]
