"""The cluster bus: one suite over the embedded loopback and real Redis pub/sub, then a
Redis restart (reconnect and resync by itself)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from testkit.servers import RedisServer

from node.cluster.bus import ClusterBus
from node.cluster.redis import RedisConnection
from node.errors import BackendUnavailable

REDIS_URL = "redis://127.0.0.1:6379/0"


class Node:
    """One node's view of the bus: what it heard, per channel."""

    def __init__(self, url: str, channels: list[str]) -> None:
        self.connection = RedisConnection(url) if url else None
        self.bus = ClusterBus(self.connection)
        self.heard: list[tuple[str, bytes]] = []
        self.resyncs = 0
        for channel in channels:
            self.bus.subscribe(channel, self.listener(channel), self.resynced)

    def listener(self, channel: str) -> Callable[[bytes], None]:
        return lambda payload: self.heard.append((channel, payload))

    def resynced(self) -> None:
        self.resyncs += 1

    async def close(self) -> None:
        await self.bus.stop()
        if self.connection is not None:
            await self.connection.close()


async def eventually(check: Callable[[], bool], within: float = 3.0) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "not within the deadline"
        await asyncio.sleep(0.01)


@pytest.fixture
async def nodes() -> AsyncIterator[Callable[..., Node]]:
    made: list[Node] = []

    def make(url: str, *channels: str) -> Node:
        made.append(Node(url, list(channels)))
        return made[-1]

    yield make
    for node in made:
        await node.close()


@pytest.fixture(params=["embedded", "redis"])
def url(request: pytest.FixtureRequest) -> str:
    return "" if request.param == "embedded" else REDIS_URL


def channel() -> str:
    return f"sn:test:{uuid.uuid4().hex[:10]}"


async def started(node: Node) -> Node:
    await node.cluster.bus.start()
    await eventually(lambda: node.cluster.bus.connected)
    return node


async def test_a_subscriber_hears_what_is_published(url: str, nodes: Callable[..., Node]) -> None:
    """A message published on a channel reaches its subscriber, and only that channel's."""
    wanted, other = channel(), channel()
    node = await started(nodes(url, wanted, other))
    await node.cluster.bus.publish(wanted, b"drop /a")
    await eventually(lambda: node.heard == [(wanted, b"drop /a")])
    await asyncio.sleep(0.05)
    assert node.heard == [(wanted, b"drop /a")]


async def test_a_failing_listener_does_not_stop_the_others(
    url: str, nodes: Callable[..., Node]
) -> None:
    """An exception in one listener is logged; the next message still reaches everyone."""
    name = channel()
    node = nodes(url, name)

    def broken(payload: bytes) -> None:
        raise ValueError("listener bug")

    node.cluster.bus.subscribe(name, broken)
    await started(node)
    await node.cluster.bus.publish(name, b"1")
    await node.cluster.bus.publish(name, b"2")
    await eventually(lambda: [p for _, p in node.heard] == [b"1", b"2"])


async def test_every_node_hears_a_publish(nodes: Callable[..., Node]) -> None:
    """Two nodes on one Redis: a message from one reaches both."""
    name = channel()
    a, b = await started(nodes(REDIS_URL, name)), await started(nodes(REDIS_URL, name))
    await a.bus.publish(name, b"trip m1")
    await eventually(lambda: (name, b"trip m1") in a.heard and (name, b"trip m1") in b.heard)


async def test_reconnects_and_resyncs_after_a_redis_restart(
    tmp_path: Path, nodes: Callable[..., Node]
) -> None:
    """Redis killed: publish fails fast; restarted: the bus resyncs, then delivers again."""
    server = RedisServer(tmp_path)
    server.start()
    try:
        name = channel()
        node = await started(nodes(server.url, name))
        server.kill()
        await eventually(lambda: not node.cluster.bus.connected)
        with pytest.raises(BackendUnavailable):
            await node.cluster.bus.publish(name, b"lost")
        server.start()
        await eventually(lambda: node.cluster.bus.connected and node.resyncs == 1, within=5.0)
        await eventually(lambda: node.connection is not None and node.connection.available)
        await node.cluster.bus.publish(name, b"after")
        await eventually(lambda: (name, b"after") in node.heard)
    finally:
        server.kill()
