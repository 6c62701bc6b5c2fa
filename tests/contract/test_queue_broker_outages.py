"""RabbitBroker's outages (RabbitMQ only): down at start, up later, restarted under a
consumer; the last two on a private RabbitMQ node the test starts and stops."""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from testkit.rabbit import RabbitServer, rabbitmq_missing
from testkit.servers import closed_port

from node.errors import BackendUnavailable
from plugins.queue.broker import Broker, Delivery

from .queue_brokers import Brokers, Taker, rabbit, until


async def test_rabbit_down_at_start_fails_fast_and_remembers_the_topology() -> None:
    """A node starts while RabbitMQ is down: start() returns at once, declare is
    remembered, publishes and reads raise BackendUnavailable without waiting."""
    broker = rabbit(f"amqp://guest:secret@127.0.0.1:{closed_port()}/", "down")
    try:
        began = time.monotonic()
        await broker.start()
        await broker.declare("down", [1.0], 10)
        await broker.consume("down", Taker(), prefetch=1)
        for call in (
            broker.publish("down", b"x", "m1"),
            broker.publish_dead("down", b"x", "m1"),
            broker.stats("down"),
            broker.replay_dead("down"),
        ):
            with pytest.raises(BackendUnavailable) as raised:
                await call
            assert "secret" not in str(raised.value)
        assert time.monotonic() - began < 1.0
        assert not broker.connected
    finally:
        await broker.close()


@pytest.fixture
def private_rabbit() -> Iterator[RabbitServer]:
    """A RabbitMQ node of the test's own, to stop and start."""
    missing = rabbitmq_missing()
    if missing is not None:
        pytest.skip(f"no private RabbitMQ node can run on this machine: {missing}")
    with tempfile.TemporaryDirectory(prefix="scalenode-rabbit-") as workdir:
        server = RabbitServer(Path(workdir))
        try:
            yield server
        finally:
            server.kill()


async def test_rabbit_comes_up_after_the_node_started(private_rabbit: RabbitServer) -> None:
    """Started while RabbitMQ is down, the broker connects once it is up: the remembered
    queue is declared and the remembered consumer gets what is published."""
    brokers = Brokers("rabbit", private_rabbit.url)
    broker = rabbit(private_rabbit.url, brokers.queue)
    brokers.made.append(broker)
    try:
        await broker.start()
        await broker.declare(brokers.queue, [], 10)
        taker = Taker(ack=True)
        await broker.consume(brokers.queue, taker, prefetch=5)
        with pytest.raises(BackendUnavailable):
            await broker.publish(brokers.queue, b"x", "early")
        await asyncio.to_thread(private_rabbit.start)  # the broker keeps trying meanwhile
        await until(lambda: broker.connected, seconds=10)
        await broker.publish(brokers.queue, b"x", "m1")
        await until(lambda: taker.ids() == ["m1"])
    finally:
        await brokers.close()


async def test_rabbit_restart_keeps_confirmed_messages(private_rabbit: RabbitServer) -> None:
    """Messages confirmed before RabbitMQ stops are all consumed after it restarts (some
    redelivered: they were unacked when it stopped); publishing fails fast while it is
    down and works again after, the consumer too, by themselves."""
    private_rabbit.start()
    brokers = Brokers("rabbit", private_rabbit.url)
    try:
        broker = await brokers.node()
        before = [f"before-{n}" for n in range(20)]
        for message_id in before:
            await broker.publish(brokers.queue, b"x", message_id)
        taken: set[str] = set()
        gate = asyncio.Event()

        async def take(delivery: Delivery) -> None:
            await gate.wait()  # the first deliveries are still unacked when it stops
            with contextlib.suppress(BackendUnavailable):  # a delivery from before the stop
                await delivery.ack()
                taken.add(delivery.message_id)

        await broker.consume(brokers.queue, take, prefetch=5)
        await asyncio.sleep(0.2)
        stopping = asyncio.create_task(asyncio.to_thread(private_rabbit.stop))
        await until(lambda: not broker.connected)
        began = time.monotonic()
        with pytest.raises(BackendUnavailable):
            await broker.publish(brokers.queue, b"x", "during")
        assert time.monotonic() - began < 0.5
        await stopping
        await asyncio.to_thread(private_rabbit.start)
        await until(lambda: broker.connected, seconds=10)
        await until_published(broker, brokers.queue, "after")
        gate.set()
        await until(lambda: taken == {*before, "after"}, seconds=10)
    finally:
        await brokers.close()


async def until_published(broker: Broker, queue: str, message_id: str) -> None:
    """Publish once the robust connection has restored its channels (a few ms after the
    connection itself); each failed try raised BackendUnavailable, not hung."""
    deadline = time.monotonic() + 5
    while True:
        try:
            await broker.publish(queue, b"x", message_id)
            return
        except BackendUnavailable:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)
