"""Confirmed publishes to RabbitMQ at a few microseconds each: a connection of its own, the
publishes of one loop iteration written at once as hand-built AMQP 0-9-1 frames, each
waiting for the broker's confirm by its delivery tag (aio-pika spends ~100 us a message)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import struct
from dataclasses import dataclass
from typing import Any

from pamqp import commands, frame
from pamqp.header import ContentHeader, ProtocolHeader
from yarl import URL

from node import tasks
from node.errors import BackendUnavailable

log = logging.getLogger("scalenode.queue")

METHOD, HEADER, BODY, HEARTBEAT = 1, 2, 3, 8  # frame types
FRAME_END = 0xCE
FRAME_HEAD = struct.Struct(">BHI")  # type, channel, payload size
OVERHEAD = FRAME_HEAD.size + 1  # a frame's bytes around its payload
CHANNEL = 1  # the connection's one channel
# Basic.Publish (class 60, method 40), reserved ticket 0, the default exchange ("").
PUBLISH_METHOD = struct.pack(">HHHB", 60, 40, 0, 0)
MANDATORY = b"\x01"  # a message no queue takes comes back (Basic.Return), not dropped
# Content header: class 60, weight 0, body size, property flags for delivery-mode (bit 12)
# and message-id (bit 7), then delivery-mode 2 (persistent); the message id follows.
CONTENT_HEAD = struct.Struct(">HHQHB")
PERSISTENT_WITH_ID = 0x1080
ACK, NACK = (60, 80), (60, 120)  # Basic.Ack / Basic.Nack: delivery tag (u64), bits (u8)
CONFIRM = struct.Struct(">HHQB")
HEARTBEAT_FRAME = FRAME_HEAD.pack(HEARTBEAT, 0, 0) + bytes((FRAME_END,))
NO_FRAME_MAX = 1 << 20  # a broker that sets no frame_max: bodies still go in 1 MiB frames


class Nacked(Exception):
    """The broker refused the message (a queue with reject-publish overflow is full)."""


def publish_frames(routing_key: bytes, message_id: bytes, body: bytes, frame_max: int) -> bytes:
    """One persistent, mandatory message to the default exchange as wire bytes: the
    Basic.Publish method frame, the content header, the body in frames of `frame_max`."""
    if len(routing_key) > 255 or len(message_id) > 255:
        raise ValueError("routing key and message id are AMQP short strings: 255 bytes")
    method = b"%s%c%s%s" % (PUBLISH_METHOD, len(routing_key), routing_key, MANDATORY)
    header = b"%s%c%s" % (
        CONTENT_HEAD.pack(60, 0, len(body), PERSISTENT_WITH_ID, 2),
        len(message_id),
        message_id,
    )
    parts = [
        FRAME_HEAD.pack(METHOD, CHANNEL, len(method)),
        method,
        b"\xce",
        FRAME_HEAD.pack(HEADER, CHANNEL, len(header)),
        header,
        b"\xce",
    ]
    step = frame_max - OVERHEAD
    for start in range(0, len(body), step):
        chunk = body[start : start + step]
        parts += (FRAME_HEAD.pack(BODY, CHANNEL, len(chunk)), chunk, b"\xce")
    return b"".join(parts)


@dataclass(slots=True, eq=False)
class _Pending:
    future: asyncio.Future[None]
    routing_key: str
    message_id: str
    deadline: float  # loop time
    returned: bool = False


class _Connection(asyncio.Protocol):
    """One TCP connection with channel 1 in confirm mode. Handshake frames go to
    `next_method()`; after it, confirms and returns settle the pending publishes."""

    def __init__(self, timeout: float, on_lost: asyncio.Future[None]) -> None:
        self.loop = asyncio.get_running_loop()
        self.timeout = timeout
        self.on_lost = on_lost  # done when the connection is gone, for the reconnects
        self.transport: asyncio.Transport | None = None
        self.ready = False
        self.frame_max = NO_FRAME_MAX
        self.tag = 0  # the last delivery tag given: the broker counts from 1 per channel
        self.pending: dict[int, _Pending] = {}  # by tag, so oldest first
        self.out: list[bytes] = []  # frames to write at the end of this loop iteration
        self.timer: asyncio.TimerHandle | None = None  # for the oldest pending deadline
        self.beat: asyncio.TimerHandle | None = None
        self.heard = self.loop.time()
        self.buffer = bytearray()
        self.methods: asyncio.Queue[object] = asyncio.Queue()  # handshake and close frames
        self.returning: _Pending | bool | None = False  # False: no Basic.Return under way
        self.lost_reason = "the connection to RabbitMQ was lost"

    # -- asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's: not a subclass

    def connection_lost(self, exc: Exception | None) -> None:
        self.ready = False
        self.transport = None
        for handle in (self.timer, self.beat):
            if handle is not None:
                handle.cancel()
        self.fail_all(self.lost_reason)
        self.methods.put_nowait(None)  # wakes a handshake waiting for a frame
        if not self.on_lost.done():
            self.on_lost.set_result(None)

    def data_received(self, data: bytes) -> None:
        self.heard = self.loop.time()
        buffer = self.buffer
        buffer += data
        start, size = 0, len(buffer)
        while size - start >= OVERHEAD:
            kind, _, length = FRAME_HEAD.unpack_from(buffer, start)
            end = start + FRAME_HEAD.size + length + 1
            if end > size:
                break
            if buffer[end - 1] != FRAME_END:
                self.abort("RabbitMQ sent a malformed frame")
                return
            self.received(kind, buffer, start, end)
            start = end
        del buffer[:start]

    # -- frames in
    def received(self, kind: int, buffer: bytearray, start: int, end: int) -> None:
        payload = start + FRAME_HEAD.size
        if kind == METHOD:
            method = struct.unpack_from(">HH", buffer, payload)
            if method in (ACK, NACK):
                _, _, tag, bits = CONFIRM.unpack_from(buffer, payload)
                self.settle(tag, multiple=bool(bits & 1), nacked=method == NACK)
                return
            self.on_method(frame.unmarshal(bytes(buffer[start:end]))[2])
        elif kind == HEADER and self.returning is not False:
            header = frame.unmarshal(bytes(buffer[start:end]))[2]
            assert isinstance(header, ContentHeader)
            self.on_returned(header.properties.message_id or "")
        # Heartbeats only count as heard; returned bodies are not needed.

    def on_method(self, method: object) -> None:
        if isinstance(method, commands.Basic.Return):
            self.returning = None  # its content header names the message
        elif isinstance(method, commands.Connection.Close):
            self.lost_reason = f"RabbitMQ closed the connection: {method.reply_text}"
            self.write_now(commands.Connection.CloseOk(), 0)
            self.close_transport()
        elif isinstance(method, commands.Channel.Close):
            # Nothing this module sends should close the channel; start over.
            self.lost_reason = f"RabbitMQ closed the channel: {method.reply_text}"
            self.write_now(commands.Channel.CloseOk(), CHANNEL)
            self.close_transport()
        else:
            self.methods.put_nowait(method)

    def on_returned(self, message_id: str) -> None:
        """A mandatory message no queue took: its confirm (an ack) follows; fail it now."""
        self.returning = False
        for pending in self.pending.values():
            if pending.message_id == message_id and not pending.returned:
                pending.returned = True
                if not pending.future.done():
                    pending.future.set_exception(
                        BackendUnavailable(f"RabbitMQ has no queue {pending.routing_key}")
                    )
                return

    def settle(self, tag: int, *, multiple: bool, nacked: bool) -> None:
        pending = self.pending
        tags = [tag]
        if multiple:  # every tag up to this one; the dict is in tag order
            tags = []
            for known in pending:
                if known > tag:
                    break
                tags.append(known)
        for known in tags:
            settled = pending.pop(known, None)
            if settled is None or settled.future.done():  # timed out, or returned
                continue
            if nacked:
                settled.future.set_exception(
                    Nacked(f"RabbitMQ refused a message for {settled.routing_key}")
                )
            else:
                settled.future.set_result(None)

    # -- frames out
    def publish(self, routing_key: str, body: bytes, message_id: str) -> asyncio.Future[None]:
        frames = publish_frames(routing_key.encode(), message_id.encode(), body, self.frame_max)
        self.tag += 1
        future = self.loop.create_future()
        self.pending[self.tag] = _Pending(
            future, routing_key, message_id, self.loop.time() + self.timeout
        )
        out = self.out
        out.append(frames)
        if len(out) == 1:  # the first of this iteration: write them all once it ends
            self.loop.call_soon(self.flush)
        if self.timer is None:
            self.arm()
        return future

    def flush(self) -> None:
        if self.transport is not None and self.out:
            self.transport.write(b"".join(self.out))
        self.out.clear()

    def write_now(self, method: object, channel: int) -> None:
        if self.transport is not None:
            self.transport.write(frame.marshal(method, channel))  # type: ignore[arg-type]

    # -- timers, failures
    def arm(self) -> None:
        """One timer for the oldest pending publish, not one per publish."""
        for oldest in self.pending.values():
            self.timer = self.loop.call_at(oldest.deadline, self.expire)
            return

    def expire(self) -> None:
        self.timer = None
        now, pending = self.loop.time(), self.pending
        while pending:
            tag, oldest = next(iter(pending.items()))
            if oldest.deadline > now:
                break
            del pending[tag]
            if not oldest.future.done():
                oldest.future.set_exception(
                    BackendUnavailable(f"RabbitMQ: no confirm in {self.timeout} s")
                )
        self.arm()

    def heartbeat(self, seconds: float) -> None:
        """Ours every half of the negotiated `seconds` (as RabbitMQ sends its own); nothing
        heard for two whole periods means a dead connection."""
        if self.loop.time() - self.heard > 2 * seconds:
            self.abort("RabbitMQ missed its heartbeats")
            return
        if self.transport is not None:
            self.transport.write(HEARTBEAT_FRAME)
        self.beat = self.loop.call_later(seconds / 2, self.heartbeat, seconds)

    def fail_all(self, reason: str) -> None:
        pending, self.pending = self.pending, {}
        self.out.clear()
        for entry in pending.values():
            if not entry.future.done():
                entry.future.set_exception(BackendUnavailable(reason))

    def abort(self, reason: str) -> None:
        self.lost_reason = reason
        if self.transport is not None:
            self.transport.abort()

    def close_transport(self) -> None:
        self.ready = False
        if self.transport is not None:
            self.transport.close()

    async def next_method(self) -> object:
        method = await self.methods.get()
        if method is None:
            raise BackendUnavailable(self.lost_reason)
        return method


class AmqpPublisher:
    """Confirmed, persistent, mandatory publishes to the default exchange (a queue by
    name). `publish` raises BackendUnavailable when not connected, on a return (no such
    queue), a lost connection or no confirm within `timeout`; Nacked on a nack. After a
    lost connection it reconnects by itself every `reconnect_interval` seconds."""

    def __init__(
        self, url: str, *, connection_name: str, timeout: float, reconnect_interval: float
    ) -> None:
        self._url = URL(url)
        self._name = connection_name
        self._timeout = timeout
        self._reconnect_interval = reconnect_interval
        self._connection: _Connection | None = None
        self._reconnecting: asyncio.Task[None] | None = None
        self._closed = False

    @property
    def connected(self) -> bool:
        return self._connection is not None and self._connection.ready

    def publish(self, routing_key: str, body: bytes, message_id: str) -> asyncio.Future[None]:
        """A future done once the broker confirmed the message (or failed, as above)."""
        connection = self._connection
        if connection is None or not connection.ready:
            raise BackendUnavailable("not connected to RabbitMQ")
        return connection.publish(routing_key, body, message_id)

    async def connect(self) -> None:
        """Raises BackendUnavailable when RabbitMQ cannot be reached or refuses us."""
        lost = asyncio.get_running_loop().create_future()
        connection = _Connection(self._timeout, lost)
        try:
            async with asyncio.timeout(self._timeout):
                await self._open(connection)
        except (OSError, TimeoutError, BackendUnavailable) as exc:
            connection.close_transport()
            raise BackendUnavailable(f"cannot connect a publisher to RabbitMQ: {exc!r}") from exc
        self._connection = connection
        lost.add_done_callback(self._on_lost)

    async def close(self) -> None:
        self._closed = True
        await tasks.stop(self._reconnecting)
        connection, self._connection = self._connection, None
        if connection is None or connection.transport is None:
            return
        connection.ready = False
        connection.flush()
        connection.write_now(commands.Connection.Close(200, "closing", 0, 0), 0)
        with contextlib.suppress(TimeoutError, BackendUnavailable):
            async with asyncio.timeout(self._timeout):
                while not isinstance(await connection.next_method(), commands.Connection.CloseOk):
                    pass
        connection.lost_reason = "the publisher was closed"
        connection.close_transport()

    async def _open(self, connection: _Connection) -> None:
        url, loop = self._url, asyncio.get_running_loop()
        secure = url.scheme == "amqps"
        await loop.create_connection(
            lambda: connection,
            url.host or "localhost",
            url.port or (5671 if secure else 5672),
            ssl=ssl.create_default_context() if secure else None,
        )
        assert connection.transport is not None
        connection.transport.write(ProtocolHeader().marshal())
        await self._expect(connection, commands.Connection.Start)
        properties = {
            "connection_name": self._name,
            "product": "scalenode",
            "capabilities": {"publisher_confirms": True, "basic.nack": True},
        }
        user, password = url.user or "guest", url.password or "guest"
        connection.write_now(
            commands.Connection.StartOk(properties, "PLAIN", f"\0{user}\0{password}"), 0
        )
        tune = await self._expect(connection, commands.Connection.Tune)
        connection.frame_max = tune.frame_max or NO_FRAME_MAX
        connection.write_now(
            commands.Connection.TuneOk(tune.channel_max, tune.frame_max, tune.heartbeat), 0
        )
        connection.write_now(commands.Connection.Open(url.path[1:] or "/"), 0)
        await self._expect(connection, commands.Connection.OpenOk)
        connection.write_now(commands.Channel.Open(), CHANNEL)
        await self._expect(connection, commands.Channel.OpenOk)
        connection.write_now(commands.Confirm.Select(), CHANNEL)
        await self._expect(connection, commands.Confirm.SelectOk)
        if tune.heartbeat:
            connection.heartbeat(tune.heartbeat)
        connection.ready = True

    @staticmethod
    async def _expect(connection: _Connection, kind: type) -> Any:
        method = await connection.next_method()
        if not isinstance(method, kind):
            raise BackendUnavailable(f"RabbitMQ answered {method!r}, not {kind.__name__}")
        return method

    def _on_lost(self, _: asyncio.Future[None]) -> None:
        if not self._closed and self._reconnecting is None:
            self._reconnecting = asyncio.ensure_future(self._reconnect())

    async def _reconnect(self) -> None:
        try:
            while not self._closed:
                await asyncio.sleep(self._reconnect_interval)
                try:
                    await self.connect()
                    log.info("publisher reconnected to RabbitMQ")
                    return
                except BackendUnavailable as exc:
                    log.warning("publisher still not connected to RabbitMQ: %s", exc)
        finally:
            self._reconnecting = None
