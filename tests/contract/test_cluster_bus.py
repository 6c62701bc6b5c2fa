"""One contract for the cluster bus: the embedded loopback, Redis pub/sub and Redis Cluster
pub/sub (backends.py) deliver what one node publishes to every node's listeners."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable

from node.cluster.bus import ClusterBus

from .backends import Nodes


class Ears:
    """What one node's listeners heard, per channel, in order."""

    def __init__(self, bus: ClusterBus, *channels: str) -> None:
        self.bus = bus
        self.heard: list[tuple[str, bytes]] = []
        for channel in channels:
            bus.subscribe(channel, self.listener(channel))

    def listener(self, channel: str) -> Callable[[bytes], None]:
        return lambda payload: self.heard.append((channel, payload))

    def payloads(self) -> list[bytes]:
        return [payload for _, payload in self.heard]


async def eventually(check: Callable[[], bool], within: float = 3.0) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "not within the deadline"
        await asyncio.sleep(0.01)


def channel() -> str:
    return f"sn:test:{uuid.uuid4().hex[:10]}"


async def started(*nodes: Ears) -> None:
    for node in nodes:
        await node.bus.start()
    for node in nodes:
        await eventually(lambda node=node: node.bus.connected)


async def test_a_subscriber_hears_what_is_published(buses: Nodes[ClusterBus]) -> None:
    """A message published on a channel reaches its subscriber, and only that channel's."""
    wanted, other = channel(), channel()
    node = Ears(await buses.node(), wanted, other)
    await started(node)
    await node.bus.publish(wanted, b"drop /a")
    await eventually(lambda: node.heard == [(wanted, b"drop /a")])
    await asyncio.sleep(0.05)
    assert node.heard == [(wanted, b"drop /a")]


async def test_a_failing_listener_does_not_stop_the_others(buses: Nodes[ClusterBus]) -> None:
    """An exception in one listener is logged; the next message still reaches everyone."""
    name = channel()
    node = Ears(await buses.node(), name)

    def broken(payload: bytes) -> None:
        raise ValueError("listener bug")

    node.bus.subscribe(name, broken)
    await started(node)
    await node.bus.publish(name, b"1")
    await node.bus.publish(name, b"2")
    await eventually(lambda: node.payloads() == [b"1", b"2"])


async def test_every_node_hears_what_any_node_publishes(buses: Nodes[ClusterBus]) -> None:
    """Two nodes on one backend: a message from either reaches both, the sender included."""
    name = channel()
    a, b = Ears(await buses.node(), name), Ears(await buses.node(), name)
    await started(a, b)
    await a.bus.publish(name, b"trip m1")
    await b.bus.publish(name, b"close m1")
    for node in (a, b):
        await eventually(lambda node=node: sorted(node.payloads()) == [b"close m1", b"trip m1"])


async def test_messages_arrive_in_order_and_byte_for_byte(buses: Nodes[ClusterBus]) -> None:
    """50 binary messages published one after another reach the other node unchanged, in order."""
    name = channel()
    a, b = Ears(await buses.node(), name), Ears(await buses.node(), name)
    await started(a, b)
    sent = [bytes([i, 0, 255]) + b"\r\n" * i for i in range(50)]
    for payload in sent:
        await a.bus.publish(name, payload)
    await eventually(lambda: len(b.heard) >= len(sent))
    assert b.payloads() == sent
