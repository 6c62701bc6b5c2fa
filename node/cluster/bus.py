"""Messages between the nodes of a cluster (cache invalidations, breaker trips).

Redis pub/sub when Redis is configured, an in-process loopback when embedded; both deliver
to every subscriber, this node included. Pub/sub keeps nothing for a disconnected node, so
after a reconnect each subscriber's `on_resync` runs: state that may have missed an update
must be dropped or re-read from its key.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis.asyncio as redis
from redis.exceptions import RedisError

from node import tasks
from node.cluster.redis import CLUSTER_SCHEME, COMMAND_TIMEOUT, OUTAGE_ERRORS, RedisConnection
from node.config import redact_url
from node.errors import BackendUnavailable

log = logging.getLogger("scalenode.bus")

Listener = Callable[[bytes], None]
RECONNECT_INTERVAL = 0.5
# A silent subscriber connection is pinged this often, so a half-open socket is noticed.
HEALTH_CHECK_INTERVAL = 5


@dataclass(frozen=True, slots=True)
class Subscription:
    channel: str
    listener: Listener
    on_resync: Callable[[], None] | None


class ClusterBus:
    """Publish bytes on a channel; every node's listeners for that channel receive them.

    Subscribe while the app is built, before `start()`; a listener runs on the event loop
    and must not block. Delivery is at most once (see the module docstring).
    """

    def __init__(self, connection: RedisConnection | None) -> None:
        self.connection = connection
        self.subscriptions: list[Subscription] = []
        self.connected = connection is None
        self._task: asyncio.Task[None] | None = None

    def subscribe(
        self, channel: str, listener: Listener, on_resync: Callable[[], None] | None = None
    ) -> None:
        if self._task is not None:
            raise RuntimeError("subscribe before the bus starts")
        self.subscriptions.append(Subscription(channel, listener, on_resync))

    async def publish(self, channel: str, payload: bytes) -> None:
        """Send `payload`; raises BackendUnavailable when Redis cannot take it."""
        if self.connection is None:
            self._dispatch(channel, payload)
            return
        await self.connection.run(lambda client: client.publish(channel, payload))

    async def start(self) -> None:
        if self.connection is not None and self.subscriptions:
            self._task = asyncio.ensure_future(self._listen(self.connection.url))

    async def stop(self) -> None:
        await tasks.stop(self._task)

    def _dispatch(self, channel: str, payload: bytes) -> None:
        for sub in self.subscriptions:
            if sub.channel == channel:
                try:
                    sub.listener(payload)
                except Exception:
                    log.exception("bus listener for %s failed", channel)

    def _resync(self) -> None:
        for sub in self.subscriptions:
            if sub.on_resync is not None:
                try:
                    sub.on_resync()
                except Exception:
                    log.exception("bus resync for %s failed", sub.channel)

    async def _listen(self, url: str) -> None:
        channels = sorted({sub.channel for sub in self.subscriptions})
        ever_connected = False
        while True:
            client = subscriber_client(url)
            pubsub = client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(*channels)
                self.connected = True
                if ever_connected:
                    log.warning("cluster bus at %s is back; resyncing", redact_url(url))
                    self._resync()
                ever_connected = True
                while True:
                    message = await pubsub.get_message(timeout=1.0)
                    if message is not None and message["type"] == "message":
                        channel = message["channel"]
                        self._dispatch(channel.decode(), message["data"])
            except (*OUTAGE_ERRORS, RedisError, BackendUnavailable) as exc:
                if self.connected:
                    log.warning(
                        "cluster bus at %s lost (%s); reconnecting",
                        redact_url(url),
                        type(exc).__name__,
                    )
                self.connected = False
            finally:
                await asyncio.shield(close_quietly(pubsub, client))
            await asyncio.sleep(RECONNECT_INTERVAL)


def subscriber_client(url: str) -> Any:
    """A client of its own for the subscriber connection, which blocks on reads.

    On Redis Cluster a PUBLISH reaches every node, so listening on the seed node suffices.
    """
    if url.startswith(CLUSTER_SCHEME):
        url = "redis://" + url[len(CLUSTER_SCHEME) :].split(",")[0]
    return redis.Redis.from_url(
        url,
        socket_connect_timeout=COMMAND_TIMEOUT,
        health_check_interval=HEALTH_CHECK_INTERVAL,
    )


async def close_quietly(pubsub: Any, client: Any) -> None:
    for closing in (pubsub.aclose, client.aclose):
        try:
            await closing()
        except (*OUTAGE_ERRORS, RedisError):
            pass
