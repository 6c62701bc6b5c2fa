"""The job queue's brokers (plugins/queue/broker.py): MemoryBroker and RabbitBroker keep
the same contract. Each test gets a fresh queue; on RabbitMQ its queues are deleted after.
A broker from `brokers.node()` is one more worker's connection to the same queues."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from pathlib import Path

import aio_pika
import pytest
from testkit.rabbit import RabbitServer, rabbitmq_missing

from node.errors import BackendUnavailable
from plugins.queue.broker import (
    DELIVERY_LIMIT,
    Broker,
    Delivery,
    QueueFull,
    delay_ms,
    replayed_id,
)
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


@pytest.fixture(params=["memory", "rabbit"])
async def brokers(request: pytest.FixtureRequest) -> AsyncIterator[Brokers]:
    made = Brokers(request.param)
    try:
        yield made
    finally:
        await made.close()


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


async def test_publish_consume_ack_delivers_each_message_once(brokers: Brokers) -> None:
    """Published, consumed and acked: every message once, none redelivered."""
    broker = await brokers.node()
    for n in range(5):
        await broker.publish(brokers.queue, f"body {n}".encode(), f"m{n}")
    taker = Taker(ack=True)
    await broker.consume(brokers.queue, taker, prefetch=10)
    await until(lambda: len(taker.got) == 5)
    await asyncio.sleep(0.2)  # room for a duplicate to show up
    assert sorted(taker.ids()) == [f"m{n}" for n in range(5)]
    assert {d.body for d in taker.got} == {f"body {n}".encode() for n in range(5)}
    assert not any(d.redelivered for d in taker.got)
    stats = await broker.stats(brokers.queue)
    assert (stats.ready, stats.unacked, stats.dead, stats.delayed) == (0, 0, 0, 0)


async def test_concurrent_publishes_are_all_confirmed(brokers: Brokers) -> None:
    """Many publishes in flight at once (one channel over RabbitMQ): each one lands."""
    broker = await brokers.node(max_length=1000)
    ids = [f"m{n}" for n in range(200)]
    await asyncio.gather(*(broker.publish(brokers.queue, b"x", i) for i in ids))
    await until_stats(broker, brokers.queue, ready=200)


async def test_unacked_message_is_redelivered_after_its_worker_goes(brokers: Brokers) -> None:
    """A consumer that raises leaves its message unacked; when its broker closes, another
    worker gets it, marked redelivered."""
    first = await brokers.node()
    second = await brokers.node()
    await first.publish(brokers.queue, b"job", "m1")
    failed: list[Delivery] = []

    async def failing(delivery: Delivery) -> None:
        failed.append(delivery)
        raise RuntimeError("the worker fails mid-job")

    await first.consume(brokers.queue, failing, prefetch=1)
    await until(lambda: len(failed) == 1)
    assert (await first.stats(brokers.queue)).unacked == 1
    taker = Taker(ack=True)
    await second.consume(brokers.queue, taker, prefetch=1)
    await asyncio.sleep(0.1)
    assert taker.got == []  # held by the first worker
    await first.close()
    await until(lambda: len(taker.got) == 1)
    assert taker.got[0].message_id == "m1"
    assert taker.got[0].redelivered
    assert not failed[0].redelivered


async def test_delayed_message_waits_its_delay_without_blocking_others(brokers: Brokers) -> None:
    """delay=0.3: delivered no earlier than 0.3 s; a message published after it without
    delay arrives at once."""
    broker = await brokers.node(delays=[0.3, 5.0])
    began = time.monotonic()
    await broker.publish(brokers.queue, b"later", "slow", delay=0.3)
    await broker.publish(brokers.queue, b"much later", "slower", delay=5.0)
    await broker.publish(brokers.queue, b"now", "fast")
    arrived: dict[str, float] = {}

    async def take(delivery: Delivery) -> None:
        arrived[delivery.message_id] = time.monotonic() - began
        await delivery.ack()

    await broker.consume(brokers.queue, take, prefetch=10)
    await until(lambda: "fast" in arrived)
    assert arrived["fast"] < 0.25
    stats = await broker.stats(brokers.queue)
    assert (stats.ready, stats.delayed) == (0, 2)
    await until(lambda: "slow" in arrived)
    assert 0.29 <= arrived["slow"] < 2.0
    assert "slower" not in arrived
    assert (await broker.stats(brokers.queue)).delayed == 1


async def test_publish_with_an_undeclared_delay_is_refused(brokers: Brokers) -> None:
    """Only a declared delay has a delay queue."""
    broker = await brokers.node(delays=[0.3])
    with pytest.raises(ValueError, match="delay"):
        await broker.publish(brokers.queue, b"x", "m1", delay=0.7)


async def test_prefetch_bounds_unacked_deliveries(brokers: Brokers) -> None:
    """With prefetch 2, a consumer holds at most 2 unacked; an ack lets one more in."""
    broker = await brokers.node()
    for n in range(5):
        await broker.publish(brokers.queue, b"x", f"m{n}")
    taker = Taker()
    await broker.consume(brokers.queue, taker, prefetch=2)
    await until(lambda: len(taker.got) == 2)
    await asyncio.sleep(0.2)
    assert len(taker.got) == 2
    stats = await broker.stats(brokers.queue)
    assert (stats.ready, stats.unacked) == (3, 2)
    await taker.got[0].ack()
    await until(lambda: len(taker.got) == 3)
    await asyncio.sleep(0.1)
    assert len(taker.got) == 3
    assert taker.ids() == ["m0", "m1", "m2"]  # FIFO


async def test_ack_or_requeue_twice_is_an_error(brokers: Brokers) -> None:
    """A delivery is settled once."""
    broker = await brokers.node()
    await broker.publish(brokers.queue, b"x", "m1")
    taker = Taker()
    await broker.consume(brokers.queue, taker, prefetch=1)
    await until(lambda: len(taker.got) == 1)
    await taker.got[0].ack()
    with pytest.raises(RuntimeError):
        await taker.got[0].requeue()


async def test_dead_letters_are_counted_replayed_and_purged(brokers: Brokers) -> None:
    """publish_dead lands in the dead-letter queue; replay_dead moves it back; purge_dead
    drops the rest."""
    broker = await brokers.node()
    await broker.publish_dead(brokers.queue, b"dead job", "d1")
    await until_stats(broker, brokers.queue, dead=1)
    assert await broker.replay_dead(brokers.queue) == 1
    stats = await broker.stats(brokers.queue)
    assert (stats.ready, stats.dead) == (1, 0)
    taker = Taker(ack=True)
    await broker.consume(brokers.queue, taker, prefetch=1)
    await until(lambda: len(taker.got) == 1)
    # Marked as replayed: an operator's decision, which a worker honours (worker.py).
    assert (taker.got[0].message_id, taker.got[0].body) == ("replayed:d1", b"dead job")
    assert replayed_id(taker.got[0].message_id) == "replayed:d1"  # marked once
    assert not taker.got[0].redelivered  # replayed as a fresh message
    await broker.publish_dead(brokers.queue, b"a", "d2")
    await broker.publish_dead(brokers.queue, b"b", "d3")
    assert await broker.purge_dead(brokers.queue) == 2
    assert (await broker.stats(brokers.queue)).dead == 0


async def test_replay_dead_stops_when_the_queue_is_full(brokers: Brokers) -> None:
    """Replay moves what fits; the rest stay dead."""
    broker = await brokers.node(max_length=2)
    for n in range(3):
        await broker.publish_dead(brokers.queue, b"x", f"d{n}")
    assert await broker.replay_dead(brokers.queue) == 2
    await until_stats(broker, brokers.queue, ready=2, dead=1)


async def test_publish_beyond_max_length_raises_queue_full(brokers: Brokers) -> None:
    """max_length ready messages are taken; one more is refused, and nothing is lost."""
    broker = await brokers.node(max_length=3)
    for n in range(3):
        await broker.publish(brokers.queue, b"x", f"m{n}")
    with pytest.raises(QueueFull):
        await broker.publish(brokers.queue, b"x", "over")
    assert (await broker.stats(brokers.queue)).ready == 3


async def test_a_message_given_back_too_often_goes_dead(brokers: Brokers) -> None:
    """Requeued on every delivery, a message goes dead after DELIVERY_LIMIT + 1 deliveries
    instead of looping."""
    broker = await brokers.node()
    await broker.publish(brokers.queue, b"poison", "p1")
    seen: list[Delivery] = []

    async def give_back(delivery: Delivery) -> None:
        seen.append(delivery)
        await delivery.requeue()

    await broker.consume(brokers.queue, give_back, prefetch=1)
    await until_stats(broker, brokers.queue, dead=1)
    assert len(seen) == DELIVERY_LIMIT + 1
    assert all(d.redelivered for d in seen[1:])


async def test_stop_consuming_hands_back_and_another_worker_takes_over(brokers: Brokers) -> None:
    """After stop_consuming a broker takes nothing new; a message it holds can still be
    requeued, and then another worker gets it."""
    draining = await brokers.node()
    other = await brokers.node()
    await draining.publish(brokers.queue, b"x", "m0")
    held = Taker()
    await draining.consume(brokers.queue, held, prefetch=1)
    await until(lambda: len(held.got) == 1)
    await draining.stop_consuming()
    for n in range(1, 4):
        await draining.publish(brokers.queue, b"x", f"m{n}")
    await held.got[0].requeue()
    taker = Taker(ack=True)
    await other.consume(brokers.queue, taker, prefetch=10)
    await until(lambda: len(taker.got) == 4)
    await asyncio.sleep(0.1)
    assert held.ids() == ["m0"]
    assert sorted(taker.ids()) == ["m0", "m1", "m2", "m3"]
    assert [d.redelivered for d in taker.got if d.message_id == "m0"] == [True]
    await until_stats(draining, brokers.queue, consumers=1, ready=0)


async def test_stats_count_ready_consumers_and_dead(brokers: Brokers) -> None:
    """stats counts ready messages, consumers on every worker, dead letters. (`unacked`:
    RabbitBroker counts only its own deliveries, MemoryBroker every peer's.)"""
    first = await brokers.node()
    second = await brokers.node()
    for n in range(4):
        await first.publish(brokers.queue, b"x", f"m{n}")
    await first.publish_dead(brokers.queue, b"x", "d0")
    await until_stats(second, brokers.queue, ready=4, consumers=0, dead=1, unacked=0)
    await first.consume(brokers.queue, Taker(), prefetch=1)
    await second.consume(brokers.queue, Taker(), prefetch=1)
    await until_stats(first, brokers.queue, ready=2, consumers=2, dead=1)


async def until_stats(broker: Broker, queue: str, **expected: int) -> None:
    """Poll stats until the named counts match (RabbitMQ updates them asynchronously)."""
    deadline = time.monotonic() + 5
    while True:
        stats = await broker.stats(queue)
        seen = {name: getattr(stats, name) for name in expected}
        if seen == expected:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"stats {seen}, expected {expected}")
        await asyncio.sleep(0.02)


# RabbitMQ only: outages.


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # free once closed: nothing listens there


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
