"""The queue's AMQP publisher (plugins/queue/publisher.py): its hand-built frames are the
ones pamqp marshals; against real RabbitMQ, a big body arrives whole and a message for no
queue fails; against a broker that never confirms, publishes time out and a dropped
connection fails what was in flight, then comes back by itself."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Callable

import aio_pika
import pytest
from pamqp import commands, frame
from pamqp.body import ContentBody
from pamqp.header import ContentHeader

from node.errors import BackendUnavailable
from plugins.queue.publisher import AmqpPublisher, publish_frames

AMQP = "amqp://guest:guest@127.0.0.1:5672/"
FRAME_MAX = 4096


def pamqp_frames(routing_key: str, message_id: str, body: bytes, frame_max: int) -> bytes:
    properties = commands.Basic.Properties(message_id=message_id, delivery_mode=2)
    parts = [
        frame.marshal(commands.Basic.Publish(routing_key=routing_key, mandatory=True), 1),
        frame.marshal(ContentHeader(0, len(body), properties), 1),
    ]
    step = frame_max - 8
    parts += [frame.marshal(ContentBody(body[i : i + step]), 1) for i in range(0, len(body), step)]
    return b"".join(parts)


@pytest.mark.parametrize("size", [0, 1, FRAME_MAX - 8, FRAME_MAX - 7, 3 * FRAME_MAX])
def test_publish_frames_are_the_ones_pamqp_marshals(size: int) -> None:
    """Method frame, content header (persistent, message id), body split at frame_max."""
    body = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
    ours = publish_frames(b"sn.q.reports", b"f" * 32, body, FRAME_MAX)
    assert ours == pamqp_frames("sn.q.reports", "f" * 32, body, FRAME_MAX)


async def until(predicate: Callable[[], bool], seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, f"not true within {seconds} s"
        await asyncio.sleep(0.01)


@pytest.fixture
async def publisher() -> AsyncIterator[AmqpPublisher]:
    made = AmqpPublisher(AMQP, connection_name="test publisher", timeout=2, reconnect_interval=0.1)
    await made.connect()
    yield made
    await made.close()


async def test_a_big_body_arrives_whole_and_confirmed(publisher: AmqpPublisher) -> None:
    """A body over RabbitMQ's frame_max (128 KiB) goes in several frames, arrives whole."""
    queue, body = f"pub-{uuid.uuid4().hex[:12]}", uuid.uuid4().bytes * 20_000
    connection = await aio_pika.connect(AMQP)
    try:
        channel = await connection.channel()
        declared = await channel.declare_queue(queue, durable=True)
        await publisher.publish(queue, body, "big-1")
        message = await declared.get(timeout=5)
        assert (message.body, message.message_id, message.delivery_mode) == (body, "big-1", 2)
        await message.ack()
    finally:
        with contextlib.suppress(Exception):
            await channel.queue_delete(queue)
        await connection.close()


async def test_a_message_for_no_queue_fails_and_others_are_confirmed(
    publisher: AmqpPublisher,
) -> None:
    """Mandatory: RabbitMQ returns it, the publish raises; the channel goes on."""
    with pytest.raises(BackendUnavailable, match="no queue"):
        await publisher.publish(f"no-such-queue-{uuid.uuid4().hex}", b"x", "m-1")
    assert publisher.connected


class SilentBroker:
    """Just enough of an AMQP server to open a confirming channel, then never confirm."""

    def __init__(self) -> None:
        self.server: asyncio.Server | None = None
        self.writers: list[asyncio.StreamWriter] = []
        self.published = 0

    @property
    def url(self) -> str:
        assert self.server is not None
        port = self.server.sockets[0].getsockname()[1]
        return f"amqp://guest:guest@127.0.0.1:{port}/"

    async def start(self) -> None:
        self.server = await asyncio.start_server(self.serve, "127.0.0.1", 0)

    async def close(self) -> None:
        for writer in self.writers:
            writer.close()
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()

    def drop_connections(self) -> None:
        for writer in self.writers:
            writer.transport.abort()
        self.writers.clear()

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.append(writer)
        answers = {
            commands.Connection.StartOk: (commands.Connection.Tune(0, 131072, 0), 0),
            commands.Connection.Open: (commands.Connection.OpenOk(), 0),
            commands.Channel.Open: (commands.Channel.OpenOk(), 1),
            commands.Confirm.Select: (commands.Confirm.SelectOk(), 1),
            commands.Connection.Close: (commands.Connection.CloseOk(), 0),
        }
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            await reader.readexactly(8)  # the protocol header
            writer.write(frame.marshal(commands.Connection.Start(), 0))
            while True:
                head = await reader.readexactly(7)
                rest = await reader.readexactly(int.from_bytes(head[3:7], "big") + 1)
                got = frame.unmarshal(head + rest)[2]
                self.published += isinstance(got, commands.Basic.Publish)
                answer = answers.get(type(got))
                if answer is not None:
                    writer.write(frame.marshal(*answer))


@pytest.fixture
async def silent() -> AsyncIterator[SilentBroker]:
    broker = SilentBroker()
    await broker.start()
    yield broker
    await broker.close()


async def test_no_confirm_in_time_fails_the_publish(silent: SilentBroker) -> None:
    """Each publish waits at most its timeout for the confirm, then BackendUnavailable."""
    publisher = AmqpPublisher(silent.url, connection_name="t", timeout=0.3, reconnect_interval=0.1)
    await publisher.connect()
    try:
        began = time.monotonic()
        results = await asyncio.gather(
            *(publisher.publish("q", b"x", f"m{n}") for n in range(5)), return_exceptions=True
        )
        assert all(isinstance(result, BackendUnavailable) for result in results), results
        assert 0.25 < time.monotonic() - began < 1.5
        assert silent.published == 5  # written in one go, each once
    finally:
        await publisher.close()


async def test_a_dropped_connection_fails_what_is_in_flight_then_reconnects(
    silent: SilentBroker,
) -> None:
    """In-flight publishes fail at once with the connection; then publishes fail fast
    until the publisher has reconnected by itself."""
    publisher = AmqpPublisher(silent.url, connection_name="t", timeout=5, reconnect_interval=0.1)
    await publisher.connect()
    try:
        await until(lambda: bool(silent.writers))
        in_flight = publisher.publish("q", b"x", "m1")
        await asyncio.sleep(0.05)
        silent.drop_connections()
        with pytest.raises(BackendUnavailable):
            await asyncio.wait_for(in_flight, 1)
        assert not publisher.connected
        with pytest.raises(BackendUnavailable):
            publisher.publish("q", b"x", "m2")
        await until(lambda: publisher.connected)
    finally:
        await publisher.close()
