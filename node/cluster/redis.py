"""The node's one Redis client, shared by every plugin, with an outage latch.

When Redis stops answering, the first failure marks it down: callers then fail fast with
`BackendUnavailable` (no connection storm, no request waiting on a dead socket) while one
background task, never more, tries to reconnect; the first answer marks it up again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import redis.asyncio as redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import MaxConnectionsError, RedisClusterException, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from node import tasks
from node.cluster.autopipe import AutoPipeline
from node.config import redact_url
from node.errors import BackendUnavailable

log = logging.getLogger("scalenode.redis")

T = TypeVar("T")
CLUSTER_SCHEME = "redis+cluster://"
# A Redis command takes well under a millisecond; one that takes a second means trouble,
# and requests must not queue behind it.
COMMAND_TIMEOUT = 1.0
RECONNECT_INTERVAL = 0.5
POOL_SIZE = 64  # connections for commands outside the auto-pipeline (lookups, heartbeats)
# Errors that mean "Redis is unreachable", as opposed to a command Redis refused.
OUTAGE_ERRORS = (
    RedisConnectionError,
    RedisTimeoutError,
    RedisClusterException,
    OSError,
    TimeoutError,
)


def make_client(url: str, timeout: float = COMMAND_TIMEOUT, pool_size: int = POOL_SIZE) -> Any:
    """A client of `url` whose commands fail after `timeout` s, with `pool_size` connections."""
    # No retries: the outage latch below decides. The asyncio client takes the asyncio
    # Retry; redis-py 8.2 warns when handed redis.retry.Retry (the synchronous one).
    options: dict[str, Any] = {
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
        # RESP2, as the auto-pipeline speaks. redis-py 8 defaults to RESP3 and with it to
        # "maintenance notifications": two more round trips per new connection, and on a
        # server that announces maintenance, a 10 s relaxed timeout in place of ours.
        "protocol": 2,
    }
    if url.startswith(CLUSTER_SCHEME):
        return RedisCluster.from_url(
            "redis://" + url[len(CLUSTER_SCHEME) :], retry=Retry(NoBackoff(), 0), **options
        )
    # A burst of commands waits for a free connection (up to the command timeout) instead
    # of failing as if Redis were down.
    pool = redis.BlockingConnectionPool.from_url(
        url,
        max_connections=pool_size,
        timeout=timeout,
        retry=Retry(NoBackoff(), 0),
        **options,
    )
    return redis.Redis.from_pool(pool)


def is_backlog(exc: BaseException) -> bool:
    """Did the command fail for want of a free pooled connection (not for Redis)?

    redis-py's BlockingConnectionPool reports its wait running out as a plain
    ConnectionError with this message, not as MaxConnectionsError.
    """
    if isinstance(exc, MaxConnectionsError):
        return True
    return isinstance(exc, RedisConnectionError) and str(exc) == "No connection available."


class RedisConnection:
    def __init__(self, url: str, *, reconnect_interval: float = RECONNECT_INTERVAL) -> None:
        self.url = url
        self.client = make_client(url)
        # Commands issued in one loop tick share one write (not for Redis Cluster, where
        # redis-py routes each command to its slot's node).
        self.pipeline = (
            None if url.startswith(CLUSTER_SCHEME) else AutoPipeline(url, COMMAND_TIMEOUT)
        )
        self.available = True
        self._reconnect_interval = reconnect_interval
        self._reconnecting: asyncio.Task[None] | None = None

    async def run(self, operation: Callable[[Any], Awaitable[T]]) -> T:
        """Run `operation(client)`; raise BackendUnavailable if Redis is (or just went) down."""
        if not self.available:
            raise BackendUnavailable("redis is unreachable; reconnecting")
        try:
            return await operation(self.client)
        except (MaxConnectionsError, *OUTAGE_ERRORS, RedisError) as exc:
            raise self.failure(exc) from exc

    def failure(self, exc: BaseException) -> BackendUnavailable:
        """What a failed command means to its caller; an outage also marks Redis down."""
        if is_backlog(exc):  # our own backlog, not Redis's health
            return BackendUnavailable("too many redis commands in flight")
        if isinstance(exc, OUTAGE_ERRORS):
            self.went_down(exc)
            return BackendUnavailable(f"redis is unreachable: {type(exc).__name__}")
        return BackendUnavailable(f"redis refused the command: {exc}")

    def went_down(self, exc: BaseException) -> None:
        if not self.available:
            return
        self.available = False
        log.warning(
            "redis at %s unreachable (%s); failing fast and reconnecting",
            redact_url(self.url),
            type(exc).__name__,
        )
        self._reconnecting = asyncio.ensure_future(self._reconnect())

    async def _reconnect(self) -> None:
        while True:
            await asyncio.sleep(self._reconnect_interval)
            try:
                await asyncio.wait_for(self.client.ping(), COMMAND_TIMEOUT)
            except (*OUTAGE_ERRORS, RedisError):
                continue
            self.available = True
            log.warning("redis at %s answers again", redact_url(self.url))
            return

    async def close(self) -> None:
        await tasks.stop(self._reconnecting)
        if self.pipeline is not None:
            await self.pipeline.close()
        await self.client.aclose()
