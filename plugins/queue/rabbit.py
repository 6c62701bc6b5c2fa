"""The real broker: RabbitMQ through aio-pika. Quorum queues, one TTL queue per retry delay,
a dead-letter queue per queue; confirmed, persistent publishes; one channel per consumer."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import aio_pika
from aio_pika.abc import (
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustChannel,
    AbstractRobustConnection,
)
from pamqp.commands import Basic

from node import tasks
from node.config import redact_url
from node.errors import BackendUnavailable
from plugins.queue.broker import Consumer, QueueFull, QueueStats, delay_ms, replayed_id
from plugins.queue.publisher import AmqpPublisher, Nacked
from plugins.queue.rabbit_driver import DRIVER_ERRORS, RabbitDelivery, is_up, wrapped
from plugins.queue.topology import (
    DEAD_ARGUMENTS,
    DLX,
    dead_name,
    delay_arguments,
    delay_name,
    main_arguments,
    main_name,
)

log = logging.getLogger("scalenode.queue")


@dataclass(slots=True)
class _Topology:
    max_length: int
    delays: set[int]  # milliseconds


@dataclass(slots=True, eq=False)
class _Consumer:
    queue: str
    callback: Consumer
    prefetch: int
    stopped: bool = False
    amqp_queue: AbstractQueue | None = None
    tag: str | None = None  # None: not started on the current connection yet


class RabbitBroker:
    """The Broker protocol (plugins/queue/broker.py) on RabbitMQ.

    `start()` never fails for an unreachable broker: it tries once, then keeps connecting
    in the background every `reconnect_interval` seconds, so a node starts while RabbitMQ
    is down. Until connected, publishes and reads raise BackendUnavailable at once;
    `declare` and `consume` are remembered and applied on connecting. Once connected,
    aio-pika's robust connections reconnect and restore channels, queues and consumers.
    `timeout` bounds the connect and every round trip, a publish's confirm included.

    Three connections, publishing apart from consuming as RabbitMQ advises, so that neither
    a flow-controlled publisher nor a consumer whose queue has no leader yet holds up the
    other, in operation or while reconnecting: the publisher's own (AmqpPublisher, which
    reconnects by itself: aio-pika's publish costs ~10x its CPU), the control connection
    (declares, counts, the dead-letter queue's gets) and the consumers'.

    Quorum queues bound `max_length` loosely: concurrent publishers can overshoot it, and
    once full a queue refuses publishes until it drains to 80 % (RabbitMQ 3.10).
    """

    def __init__(
        self,
        url: str,
        *,
        connection_name: str,
        timeout: float = 5.0,
        reconnect_interval: float = 5.0,
    ) -> None:
        self._url = url
        self._shown_url = redact_url(url)
        self._name = connection_name
        self._timeout = timeout
        self._reconnect_interval = reconnect_interval
        self._topology: dict[str, _Topology] = {}
        self._declared: dict[str, dict[str, Any]] = {}  # queue name: its arguments
        self._consumers: list[_Consumer] = []
        self._unsettled: dict[str, set[RabbitDelivery]] = {}
        self._publisher = AmqpPublisher(
            url,
            connection_name=connection_name,
            timeout=timeout,
            reconnect_interval=reconnect_interval,
        )
        self._controlling: AbstractRobustConnection | None = None
        self._consuming: AbstractRobustConnection | None = None
        self._control: AbstractRobustChannel | None = None  # declares, counts, dead queue
        # One per consume(). aio-pika keeps its channels in a WeakSet: these hold them.
        self._channels: list[AbstractRobustChannel] = []
        self._connecting: asyncio.Task[None] | None = None
        self._setup = asyncio.Lock()  # connecting vs. declare/consume registering
        self._closed = False

    @property
    def connected(self) -> bool:
        """Able to publish right now (for health checks and tests)."""
        return self._control_up() and self._publisher.connected

    def _control_up(self) -> bool:
        return not self._closed and is_up(self._controlling)

    async def start(self) -> None:
        try:
            await self._connect()
        except BackendUnavailable as exc:
            log.warning(
                "RabbitMQ at %s unreachable (%s); connecting in the background every %s s",
                self._shown_url,
                exc,
                self._reconnect_interval,
            )
            self._connecting = asyncio.create_task(self._keep_connecting())

    async def close(self) -> None:
        """Closing the connections closes their channels: RabbitMQ requeues what they held."""
        self._closed = True
        await tasks.stop(self._connecting)
        await self._publisher.close()
        await self._drop(self._controlling, self._consuming)

    async def declare(self, queue: str, delays: Sequence[float], max_length: int) -> None:
        """Declared at once when connected (errors raise), else on connecting."""
        async with self._setup:
            topology = self._topology.setdefault(queue, _Topology(max_length, set()))
            topology.max_length = max_length
            topology.delays |= {delay_ms(delay) for delay in delays if delay > 0}
            if self._control_up():
                async with self._round_trip(f"declaring queue {queue!r}"):
                    await self._declare(queue, topology)

    async def publish(
        self, queue: str, body: bytes, message_id: str, *, delay: float = 0.0
    ) -> None:
        topology = self._topology_of(queue)
        if delay <= 0:
            await self._publish(main_name(queue), body, message_id, bounded=True)
            return
        if delay_ms(delay) not in topology.delays:
            raise ValueError(f"queue {queue!r} has no delay of {delay} s declared")
        await self._publish(delay_name(queue, delay_ms(delay)), body, message_id)

    async def publish_dead(self, queue: str, body: bytes, message_id: str) -> None:
        self._topology_of(queue)
        await self._publish(dead_name(queue), body, message_id)

    async def consume(self, queue: str, consumer: Consumer, prefetch: int) -> None:
        """Started at once when connected (errors raise), else on connecting."""
        if prefetch < 1:
            raise ValueError("prefetch must be >= 1")
        self._topology_of(queue)
        record = _Consumer(queue, consumer, prefetch)
        async with self._setup:
            if not self._closed and is_up(self._consuming):
                with wrapped(f"consuming {queue!r}"):
                    async with asyncio.timeout(self._timeout):
                        await self._start_consumer(record)
            self._consumers.append(record)

    async def stop_consuming(self) -> None:
        """Cancel every consumer of this broker. aio-pika hands each delivery straight to
        its callback, so nothing waits in a client-side buffer; a delivery that arrives
        after the cancel (sent before the broker saw it) is requeued instead of handed
        over. Channels stay open, so messages being handled can still be acked."""
        records, self._consumers = self._consumers, []
        for record in records:
            record.stopped = True
        for record in records:
            if record.amqp_queue is None or record.tag is None:
                continue
            try:
                async with asyncio.timeout(self._timeout):
                    await record.amqp_queue.cancel(record.tag)
            except (*DRIVER_ERRORS, TimeoutError) as exc:
                # The channel is gone, and with it the consumer: RabbitMQ requeued its
                # messages already, and the robust channel will not restore it.
                log.warning("cancelling a consumer of %r failed: %r", record.queue, exc)

    async def stats(self, queue: str) -> QueueStats:
        """`ready`, `consumers`, `dead` and `delayed` are RabbitMQ's counts over every
        node; `unacked` counts only this broker's deliveries, as AMQP reports no unacked
        count (the management API does). A delayed message waiting for room in a full
        queue counts nowhere."""
        topology = self._topology_of(queue)
        async with self._round_trip(f"counting queue {queue!r}"):
            channel = await self._control_channel()
            main = await channel.queue_declare(main_name(queue), passive=True)
            dead = await channel.queue_declare(dead_name(queue), passive=True)
            delayed = 0
            for ms in sorted(topology.delays):
                declared = await channel.queue_declare(delay_name(queue, ms), passive=True)
                delayed += declared.message_count or 0
        unsettled = self._unsettled.get(queue, set())
        return QueueStats(
            ready=main.message_count or 0,
            unacked=sum(1 for delivery in unsettled if delivery.held()),
            consumers=main.consumer_count or 0,
            dead=dead.message_count or 0,
            delayed=delayed,
        )

    async def replay_dead(self, queue: str) -> int:
        """Takes the dead messages one at a time and acks each only once its copy on
        `queue` is confirmed. Moves at most as many as were dead when called (so messages
        that die again meanwhile do not loop); stops early when `queue` is full."""
        self._topology_of(queue)
        async with self._round_trip(f"counting dead messages of {queue!r}"):
            channel = await self._control_channel()
            waiting = (await channel.queue_declare(dead_name(queue), passive=True)).message_count
        moved = 0
        for _ in range(waiting or 0):
            async with self._round_trip(f"taking a dead message of {queue!r}"):
                got = await channel.basic_get(dead_name(queue), no_ack=False)
            if isinstance(got.delivery, Basic.GetEmpty):
                break
            tag = got.delivery.delivery_tag
            message_id = replayed_id(got.header.properties.message_id or "")
            try:
                await self._publish(main_name(queue), got.body, message_id, bounded=True)
            except BaseException as exc:
                with contextlib.suppress(*DRIVER_ERRORS):
                    await channel.basic_nack(tag, requeue=True)  # it stays dead
                if isinstance(exc, QueueFull):
                    break
                raise
            async with self._round_trip(f"acking a replayed message of {queue!r}"):
                await channel.basic_ack(tag)
            moved += 1
        return moved

    async def purge_dead(self, queue: str) -> int:
        self._topology_of(queue)
        async with self._round_trip(f"purging the dead messages of {queue!r}"):
            channel = await self._control_channel()
            purged = await channel.queue_purge(dead_name(queue))
        return purged.message_count or 0

    async def _publish(
        self, routing_key: str, body: bytes, message_id: str, *, bounded: bool = False
    ) -> None:
        """Publish and wait for the broker's confirm (many may be in flight)."""
        if not self.connected:
            raise BackendUnavailable(f"not connected to RabbitMQ at {self._shown_url}")
        try:
            await self._publisher.publish(routing_key, body, message_id)
        except Nacked as exc:
            if bounded:  # the one nack of a queue with reject-publish overflow
                raise QueueFull(f"queue {routing_key} is full") from exc
            raise BackendUnavailable(f"RabbitMQ refused a message for {routing_key}") from exc

    @contextlib.asynccontextmanager
    async def _round_trip(self, doing: str) -> AsyncIterator[None]:
        """Fail at once while not connected; bound the call by the timeout; wrap errors."""
        if not self._control_up():
            raise BackendUnavailable(f"not connected to RabbitMQ at {self._shown_url}")
        try:
            async with asyncio.timeout(self._timeout):
                with wrapped(doing):
                    yield
        except TimeoutError as exc:
            raise BackendUnavailable(f"RabbitMQ: no answer in {self._timeout} s {doing}") from exc

    async def _control_channel(self) -> Any:
        """aiormq's channel under the control channel: passive declares, gets and purges
        through it leave nothing for aio-pika to restore."""
        assert self._control is not None  # set whenever connected
        return await self._control.get_underlay_channel()

    async def _connect(self) -> None:
        controlling = consuming = None
        try:
            controlling = await self._open(f"{self._name} (control)")
            consuming = await self._open(f"{self._name} (consumers)")
        except (*DRIVER_ERRORS, TimeoutError) as exc:
            await self._drop(controlling, consuming)
            raise BackendUnavailable(f"cannot connect to RabbitMQ at {self._shown_url}") from exc
        try:
            async with self._setup, asyncio.timeout(self._timeout):
                with wrapped("setting up"):
                    await self._set_up(controlling, consuming)
                await self._publisher.connect()
        except BaseException as exc:
            self._controlling = self._consuming = self._control = None
            await self._drop(controlling, consuming)
            if isinstance(exc, TimeoutError):
                raise BackendUnavailable("RabbitMQ: setting up timed out") from exc
            raise
        log.info("connected to RabbitMQ at %s as %r", self._shown_url, self._name)

    async def _open(self, name: str) -> AbstractRobustConnection:
        return await aio_pika.connect_robust(
            self._url,
            timeout=self._timeout,
            reconnect_interval=self._reconnect_interval,
            client_properties={"connection_name": name},
        )

    async def _set_up(
        self, controlling: AbstractRobustConnection, consuming: AbstractRobustConnection
    ) -> None:
        """Channels, the remembered topology and consumers on new connections; connected
        only once all are there (and the publisher)."""
        self._declared.clear()
        self._control = await controlling.channel(publisher_confirms=False)
        await self._control.declare_exchange(DLX, aio_pika.ExchangeType.DIRECT, durable=True)
        for queue, topology in self._topology.items():
            await self._declare(queue, topology)
        self._consuming = consuming
        for record in self._consumers:
            record.tag = None  # of an earlier attempt's connection, if any
            await self._start_consumer(record)
        self._controlling = controlling
        controlling.reconnect_callbacks.add(self._on_reconnect)
        consuming.reconnect_callbacks.add(self._on_reconnect)

    async def _on_reconnect(self, connection: AbstractRobustConnection) -> None:
        """aio-pika restored what it knew; add what was asked for while disconnected."""
        log.info("reconnected to RabbitMQ at %s", self._shown_url)
        try:
            async with self._setup, asyncio.timeout(self._timeout):
                if connection is self._controlling:
                    for queue, topology in self._topology.items():
                        await self._declare(queue, topology)
                else:
                    for record in self._consumers:
                        if record.tag is None:
                            await self._start_consumer(record)
        except (*DRIVER_ERRORS, TimeoutError):
            log.exception("RabbitMQ: catching up after a reconnect failed")

    async def _keep_connecting(self) -> None:
        while not self._closed:
            await asyncio.sleep(self._reconnect_interval)
            try:
                await self._connect()
                return
            except BackendUnavailable as exc:
                log.warning("RabbitMQ at %s still unreachable: %s", self._shown_url, exc)

    async def _drop(self, *connections: AbstractRobustConnection | None) -> None:
        for connection in connections:
            if connection is None:
                continue
            with contextlib.suppress(*DRIVER_ERRORS, TimeoutError):
                async with asyncio.timeout(self._timeout):
                    await connection.close()

    async def _declare(self, queue: str, topology: _Topology) -> None:
        """Declare what this broker has not declared yet. Through the robust control
        channel, so aio-pika declares it again on reconnecting to a broker that lost it."""
        assert self._control is not None
        wanted = [(dead_name(queue), DEAD_ARGUMENTS)]
        wanted.append((main_name(queue), main_arguments(queue, topology.max_length)))
        wanted += [(delay_name(queue, ms), delay_arguments(queue, ms)) for ms in topology.delays]
        for name, arguments in wanted:
            if self._declared.get(name) == arguments:
                continue
            declared = await self._control.declare_queue(name, durable=True, arguments=arguments)
            if name == dead_name(queue):
                await declared.bind(DLX, routing_key=name)
            self._declared[name] = arguments

    async def _start_consumer(self, record: _Consumer) -> None:
        """A channel of its own: its QoS is this consumer's prefetch, and aio-pika restores
        that QoS with the consumer after a reconnect."""
        assert self._consuming is not None
        channel = await self._consuming.channel(publisher_confirms=False)
        self._channels.append(channel)
        await channel.set_qos(prefetch_count=record.prefetch)
        # Declared, not passive: aio-pika declares it again before restoring the consumer.
        arguments = main_arguments(record.queue, self._topology[record.queue].max_length)
        name = main_name(record.queue)
        record.amqp_queue = await channel.declare_queue(name, durable=True, arguments=arguments)
        on_message = partial(self._on_message, record)
        record.tag = await record.amqp_queue.consume(on_message, no_ack=False)

    async def _on_message(self, record: _Consumer, message: AbstractIncomingMessage) -> None:
        if record.stopped:
            with contextlib.suppress(*DRIVER_ERRORS):
                await message.nack(requeue=True)
            return
        delivery = RabbitDelivery(message, self._unsettled.setdefault(record.queue, set()))
        try:
            await record.callback(delivery)
        except Exception:
            # Left unacked: RabbitMQ gives it back when this channel closes.
            log.exception("queue consumer failed on message %s", delivery.message_id)

    def _topology_of(self, queue: str) -> _Topology:
        topology = self._topology.get(queue)
        if topology is None:
            raise ValueError(f"queue {queue!r} was not declared")
        return topology
