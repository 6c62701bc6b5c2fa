"""The embedded broker: in-process queues with RabbitBroker's semantics, not durable.

Brokers made by `peer()` share one set of queues, as the nodes of a RabbitMQ cluster share
its queues: each is another worker's connection, with consumers and a close of its own.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from node.errors import BackendUnavailable
from plugins.queue.broker import (
    DELIVERY_LIMIT,
    Consumer,
    QueueFull,
    QueueStats,
    delay_ms,
    replayed_id,
)

log = logging.getLogger("scalenode.queue")

# A delayed message whose queue is full waits this long before it tries again. (RabbitMQ's
# at-least-once dead-lettering keeps it too, but retries only minutes later.)
FULL_RETRY = 0.1


@dataclass(slots=True, eq=False)
class _Message:
    body: bytes
    message_id: str
    delivered: bool = False  # handed to a consumer before: the next delivery is a redelivery
    returns: int = 0  # given back after a delivery, for DELIVERY_LIMIT


@dataclass(slots=True, eq=False)
class _Queue:
    max_length: int
    delays: set[int]  # milliseconds
    ready: deque[_Message] = field(default_factory=deque)
    dead: deque[_Message] = field(default_factory=deque)
    timers: set[asyncio.TimerHandle] = field(default_factory=set)  # one per delayed message
    consumers: list[_Consumer] = field(default_factory=list)
    unacked: int = 0

    def dispatch(self) -> None:
        """Hand ready messages round-robin to the consumers with room under their prefetch."""
        handed = True
        while self.ready and handed:
            handed = False
            for consumer in tuple(self.consumers):
                if self.ready and consumer.has_room():
                    consumer.hand(self.ready.popleft())
                    handed = True

    def give_back(self, message: _Message) -> None:
        """A delivered message returned unfinished: to the head, or dead past the limit."""
        self.unacked -= 1
        message.returns += 1
        if message.returns > DELIVERY_LIMIT:
            self.dead.append(message)
        else:
            self.ready.appendleft(message)
        self.dispatch()

    def release(self, message: _Message) -> None:
        """A delayed message whose delay has passed: to the tail, once there is room."""
        if len(self.ready) >= self.max_length:
            self.wait(FULL_RETRY, message)
            return
        self.ready.append(message)
        self.dispatch()

    def wait(self, delay: float, message: _Message) -> None:
        def fire() -> None:
            self.timers.discard(handle)
            self.release(message)

        handle = asyncio.get_running_loop().call_later(delay, fire)
        self.timers.add(handle)


class MemoryDelivery:
    """One message handed to a MemoryBroker consumer."""

    __slots__ = ("_consumer", "_message", "_settled", "body", "message_id", "redelivered")

    def __init__(self, message: _Message, consumer: _Consumer) -> None:
        self.body = message.body
        self.message_id = message.message_id
        self.redelivered = message.delivered
        self._message = message
        self._consumer = consumer
        self._settled = False

    async def ack(self) -> None:
        self._settle()
        self._consumer.queue.unacked -= 1
        self._consumer.queue.dispatch()

    async def requeue(self) -> None:
        self._settle()
        self._consumer.queue.give_back(self._message)

    def _settle(self) -> None:
        if self._settled:
            raise RuntimeError(f"message {self.message_id} was already acked or requeued")
        if self._consumer.closed:
            # As over RabbitMQ, where the channel is gone: the message went back already.
            raise BackendUnavailable("the memory broker holding this delivery was closed")
        self._settled = True
        self._consumer.unsettled.discard(self)


class _Consumer:
    def __init__(self, queue: _Queue, callback: Consumer, prefetch: int) -> None:
        self.queue = queue
        self.callback = callback
        self.prefetch = prefetch
        self.unsettled: set[MemoryDelivery] = set()
        self.tasks: set[asyncio.Task[None]] = set()
        self.stopped = False
        self.closed = False

    def has_room(self) -> bool:
        return not self.stopped and len(self.unsettled) < self.prefetch

    def hand(self, message: _Message) -> None:
        delivery = MemoryDelivery(message, self)
        message.delivered = True
        self.unsettled.add(delivery)
        self.queue.unacked += 1
        task = asyncio.get_running_loop().create_task(self.run(delivery))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def run(self, delivery: MemoryDelivery) -> None:
        try:
            await self.callback(delivery)
        except Exception:
            # Left unacked, as a RabbitMQ consumer's would be, until this broker closes.
            log.exception("queue consumer failed on message %s", delivery.message_id)

    def stop(self) -> None:
        self.stopped = True
        if self in self.queue.consumers:
            self.queue.consumers.remove(self)

    def close(self) -> None:
        """The connection went away: every unsettled message goes back (redelivered)."""
        self.stop()
        self.closed = True
        for task in self.tasks:
            task.cancel()
        for delivery in self.unsettled:
            self.queue.give_back(delivery._message)
        self.unsettled.clear()


@dataclass(slots=True, eq=False)
class _Hub:
    queues: dict[str, _Queue] = field(default_factory=dict)
    open_brokers: int = 0


class MemoryBroker:
    """The Broker protocol in-process (plugins/queue/broker.py). Publishes are confirmed at
    once; everything is lost with the process."""

    def __init__(self, hub: _Hub | None = None) -> None:
        self._hub = hub if hub is not None else _Hub()
        self._hub.open_brokers += 1
        self._consumers: list[_Consumer] = []
        self._closed = False

    def peer(self) -> MemoryBroker:
        """Another broker on the same queues: a second worker's connection."""
        return MemoryBroker(self._hub)

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for consumer in self._consumers:
            consumer.close()
        self._consumers.clear()
        self._hub.open_brokers -= 1
        if self._hub.open_brokers == 0:  # the last one: nobody is left to take them
            for queue in self._hub.queues.values():
                for timer in queue.timers:
                    timer.cancel()
                queue.timers.clear()

    async def declare(self, queue: str, delays: Sequence[float], max_length: int) -> None:
        ms = {delay_ms(delay) for delay in delays if delay > 0}
        known = self._hub.queues.get(queue)
        if known is None:
            self._hub.queues[queue] = _Queue(max_length, ms)
        else:
            known.max_length = max_length
            known.delays |= ms

    async def publish(
        self, queue: str, body: bytes, message_id: str, *, delay: float = 0.0
    ) -> None:
        declared = self._queue(queue)
        message = _Message(body, message_id)
        if delay > 0:
            if delay_ms(delay) not in declared.delays:
                raise ValueError(f"queue {queue!r} has no delay of {delay} s declared")
            declared.wait(delay, message)
            return
        if len(declared.ready) >= declared.max_length:
            raise QueueFull(f"queue {queue!r} holds {declared.max_length} ready messages")
        declared.ready.append(message)
        declared.dispatch()

    async def publish_dead(self, queue: str, body: bytes, message_id: str) -> None:
        self._queue(queue).dead.append(_Message(body, message_id))

    async def consume(self, queue: str, consumer: Consumer, prefetch: int) -> None:
        if prefetch < 1:
            raise ValueError("prefetch must be >= 1")
        declared = self._queue(queue)
        made = _Consumer(declared, consumer, prefetch)
        self._consumers.append(made)
        declared.consumers.append(made)
        declared.dispatch()

    async def stop_consuming(self) -> None:
        """Stop handing out. Nothing is prefetched here beyond what consumers were handed,
        so nothing needs giving back; messages being handled are still acked as usual."""
        for consumer in self._consumers:
            consumer.stop()

    async def stats(self, queue: str) -> QueueStats:
        """Exact counts, over every broker sharing these queues."""
        declared = self._queue(queue)
        return QueueStats(
            ready=len(declared.ready),
            unacked=declared.unacked,
            consumers=len(declared.consumers),
            dead=len(declared.dead),
            delayed=len(declared.timers),
        )

    async def replay_dead(self, queue: str) -> int:
        """Stops early when `queue` is full; the rest stay dead."""
        declared = self._queue(queue)
        moved = 0
        while declared.dead and len(declared.ready) < declared.max_length:
            dead = declared.dead.popleft()
            declared.ready.append(_Message(dead.body, replayed_id(dead.message_id)))  # a fresh one
            moved += 1
        declared.dispatch()
        return moved

    async def purge_dead(self, queue: str) -> int:
        declared = self._queue(queue)
        dropped = len(declared.dead)
        declared.dead.clear()
        return dropped

    def _queue(self, queue: str) -> _Queue:
        if self._closed:
            raise BackendUnavailable("the memory broker is closed")
        declared = self._hub.queues.get(queue)
        if declared is None:
            raise ValueError(f"queue {queue!r} was not declared")
        return declared
