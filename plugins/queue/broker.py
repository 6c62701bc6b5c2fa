"""What the job queue needs of a message broker: durable queues with delayed retries and a
dead-letter queue, confirmed publishes, consumers with a prefetch. `MemoryBroker`
(plugins/queue/memory.py) is the embedded one, in-process and not durable; `RabbitBroker`
(plugins/queue/rabbit.py) the real one, on RabbitMQ through aio-pika."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

# A message given back more often than this (requeued, or held by a consumer that went
# away) is dead-lettered instead of looping forever: RabbitMQ's x-delivery-limit, and the
# embedded broker's.
DELIVERY_LIMIT = 20


# A message moved back from the dead-letter queue by replay_dead has its id prefixed so:
# an operator's decision to run it, which a worker honours even when the job has no record
# (worker.py: a message with no record is otherwise not run).
REPLAYED = "replayed:"


def replayed_id(message_id: str) -> str:
    return message_id if message_id.startswith(REPLAYED) else REPLAYED + message_id


def delay_ms(delay: float) -> int:
    """A delay as whole milliseconds: the key of its delay queue, on both brokers."""
    return round(delay * 1000)


@dataclass(frozen=True, slots=True)
class QueueStats:
    ready: int  # messages waiting in the queue (retries waiting out their delay excluded)
    unacked: int  # delivered, not yet acknowledged (RabbitMQ: this node's consumers only)
    consumers: int  # consumers attached, on every node
    dead: int  # messages in the dead-letter queue
    delayed: int  # retries waiting out their delay


class Delivery(Protocol):
    """One message handed to a consumer. Exactly one of ack / requeue, once."""

    body: bytes
    message_id: str
    redelivered: bool  # the broker delivered it before (a consumer died holding it)

    async def ack(self) -> None:
        """Done with it: the broker forgets it."""
        ...

    async def requeue(self) -> None:
        """Give it back unstarted (a draining worker): another consumer gets it."""
        ...


Consumer = Callable[[Delivery], Awaitable[None]]


class Broker(Protocol):
    async def start(self) -> None:
        """Connect. Later outages are recovered by the broker itself (reconnects)."""
        ...

    async def close(self) -> None: ...

    async def declare(self, queue: str, delays: Sequence[float], max_length: int) -> None:
        """Make `queue` (durable), one delay queue per distinct delay in `delays` that hands
        its messages back to `queue` when the delay has passed, and `queue`'s dead-letter
        queue. Beyond `max_length` ready messages, publish fails with QueueFull.
        Idempotent: every node declares the same."""
        ...

    async def publish(
        self, queue: str, body: bytes, message_id: str, *, delay: float = 0.0
    ) -> None:
        """Persist `body` on `queue` (after `delay` seconds: one of the declared delays)
        and return once the broker confirmed it. Raises node.errors.BackendUnavailable
        when the broker is away or did not confirm, QueueFull when the queue is full."""
        ...

    async def publish_dead(self, queue: str, body: bytes, message_id: str) -> None:
        """Persist `body` on `queue`'s dead-letter queue (confirmed, as publish)."""
        ...

    async def consume(self, queue: str, consumer: Consumer, prefetch: int) -> None:
        """Start handing `queue`'s messages to `consumer`, at most `prefetch` unacked at a
        time. A consumer that raises leaves its message unacked (requeued on reconnect)."""
        ...

    async def stop_consuming(self) -> None:
        """Stop taking new messages on every queue this broker consumes; messages already
        prefetched but not yet handed to the consumer are given back. Returns at once:
        messages being handled still get acked by their consumer."""
        ...

    async def stats(self, queue: str) -> QueueStats: ...

    async def replay_dead(self, queue: str) -> int:
        """Move every dead-letter message of `queue` back onto `queue` (its message id
        marked: `replayed_id`); how many."""
        ...

    async def purge_dead(self, queue: str) -> int:
        """Drop every dead-letter message of `queue`; how many."""
        ...


class QueueFull(Exception):
    """The queue holds max_length ready messages: the publisher must back off."""
