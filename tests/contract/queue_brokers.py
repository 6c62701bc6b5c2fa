"""The job queue brokers' contract tests' helpers (test_queue_broker.py and
test_queue_broker_outages.py): brokers on a fresh queue, a consumer that keeps what it gets."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Sequence

import aio_pika
import pytest

from plugins.queue.broker import Broker, Delivery, delay_ms
from plugins.queue.memory import MemoryBroker
from plugins.queue.rabbit import RabbitBroker
from plugins.queue.topology import dead_name, delay_name, main_name

SHARED_RABBIT = "amqp://guest:guest@127.0.0.1:5672/"
TIMEOUT = 2.0  # seconds: a broker round trip here, and the private node's reconnect pace
RECONNECT = 0.2  # seconds between a test broker's connection attempts


async def until(predicate: Callable[[], bool], seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {seconds} s")
        await asyncio.sleep(0.01)


def rabbit(url: str, name: str) -> RabbitBroker:
    return RabbitBroker(
        url, connection_name=f"contract {name}", timeout=TIMEOUT, reconnect_interval=RECONNECT
    )


async def delete_queues(url: str, queue: str, delays: Sequence[float]) -> None:
    connection = await aio_pika.connect(url)
    try:
        channel = await (await connection.channel()).get_underlay_channel()
        for name in [main_name(queue), dead_name(queue)]:
            await channel.queue_delete(name)
        for delay in delays:
            await channel.queue_delete(delay_name(queue, delay_ms(delay)))
    finally:
        await connection.close()


class Brokers:
    """One backend's brokers in a test, all on one fresh queue."""

    def __init__(self, backend: str, url: str = SHARED_RABBIT) -> None:
        self.backend = backend
        self.url = url
        self.queue = f"contract-{uuid.uuid4().hex[:12]}"
        self.delays: set[float] = set()
        self.made: list[Broker] = []
        self.memory: MemoryBroker | None = None  # the first: every other is its peer

    async def node(self, delays: Sequence[float] = (), max_length: int = 100) -> Broker:
        """One more worker's broker, started, with the test's queue declared."""
        broker: Broker
        if self.backend == "memory":
            if self.memory is None:
                broker = self.memory = MemoryBroker()
            else:
                broker = self.memory.peer()
        else:
            broker = rabbit(self.url, self.queue)
        self.made.append(broker)
        await broker.start()
        if isinstance(broker, RabbitBroker) and not broker.connected:
            pytest.fail(f"RabbitMQ is not running at {self.url} (see README: test set-up)")
        self.delays |= set(delays)
        await broker.declare(self.queue, delays, max_length)
        return broker

    async def close(self) -> None:
        for broker in self.made:  # before deleting: a live consumer would declare it again
            await broker.close()
        if self.backend == "rabbit":
            await delete_queues(self.url, self.queue, sorted(self.delays))


class Taker:
    """A consumer that keeps every delivery; acks each at once if `ack`."""

    def __init__(self, *, ack: bool = False) -> None:
        self.ack = ack
        self.got: list[Delivery] = []

    async def __call__(self, delivery: Delivery) -> None:
        self.got.append(delivery)
        if self.ack:
            await delivery.ack()

    def ids(self) -> list[str]:
        return [delivery.message_id for delivery in self.got]
