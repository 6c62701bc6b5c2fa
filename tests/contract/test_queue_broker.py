"""The job queue's brokers (plugins/queue/broker.py): MemoryBroker and RabbitBroker keep
the same contract. Each test gets a fresh queue; on RabbitMQ its queues are deleted after.
A broker from `brokers.node()` is one more worker's connection to the same queues. RabbitMQ's
outages are in test_queue_broker_outages.py, the helpers in queue_brokers.py."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from plugins.queue.broker import (
    DELIVERY_LIMIT,
    Broker,
    Delivery,
    QueueFull,
    replayed_id,
)

from .queue_brokers import Brokers, Taker, until


@pytest.fixture(params=["memory", "rabbit"])
async def brokers(request: pytest.FixtureRequest) -> AsyncIterator[Brokers]:
    made = Brokers(request.param)
    try:
        yield made
    finally:
        await made.close()


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
