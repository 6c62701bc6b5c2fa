"""aio-pika as the Broker protocol sees it: its errors as BackendUnavailable, and one
delivered message with ack / requeue (plugins/queue/rabbit.py's consumers hand these over)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from aio_pika.abc import AbstractIncomingMessage, AbstractRobustConnection
from aio_pika.exceptions import AMQPError, ChannelInvalidStateError

from node.errors import BackendUnavailable

# aio-pika, aiormq and the socket raise these; ChannelInvalidStateError is a RuntimeError.
DRIVER_ERRORS = (AMQPError, ChannelInvalidStateError, OSError)


@contextlib.contextmanager
def wrapped(doing: str) -> Iterator[None]:
    """Driver errors as BackendUnavailable, the driver's error chained."""
    try:
        yield
    except DRIVER_ERRORS as exc:
        raise BackendUnavailable(f"RabbitMQ failed {doing}: {exc!r}") from exc


def is_up(connection: AbstractRobustConnection | None) -> bool:
    return connection is not None and connection.connected.is_set()


class RabbitDelivery:
    """One message handed to a RabbitBroker consumer."""

    __slots__ = ("_message", "_settled", "_unsettled", "body", "message_id", "redelivered")

    def __init__(self, message: AbstractIncomingMessage, unsettled: set[RabbitDelivery]) -> None:
        self.body = message.body
        self.message_id = message.message_id or ""
        self.redelivered = bool(message.redelivered)
        self._message = message
        self._unsettled = unsettled
        self._settled = False
        unsettled.add(self)

    async def ack(self) -> None:
        self._settle()
        message = self._message
        assert message.delivery_tag is not None  # consumed with acks (no_ack=False)
        with wrapped("acking a message"):
            # Handed to the connection's writer, not waited for until written (aio-pika's
            # ack waits: a future and a wake-up a job). An ack lost with the connection is
            # a redelivery, which finds the job's result stored and does not run it again.
            await message.channel.basic_ack(message.delivery_tag, wait=False)

    async def requeue(self) -> None:
        self._settle()
        with wrapped("requeueing a message"):
            await self._message.nack(requeue=True)

    def held(self) -> bool:
        """Still unacked at the broker: its channel is open (a closed one gave it back)."""
        try:
            return not self._message.channel.is_closed
        except ChannelInvalidStateError:
            return False

    def _settle(self) -> None:
        if self._settled:
            raise RuntimeError(f"message {self.message_id} was already acked or requeued")
        self._settled = True
        self._unsettled.discard(self)
