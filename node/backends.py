"""The node's backends, chosen by URL, and their readiness probes.

`[backends]` names a URL per kind: "" or `memory://` is the embedded backend (in-process,
per node), `redis://` / `rediss://` / `unix://` a Redis server, `redis+cluster://` a Redis
Cluster, `amqp://` RabbitMQ. A plugin asks its BuildContext for a backend and gets it
ready-made (`Backend`), with the client the node shares; its stores are picked by the
backend's scheme, the ones each store claims (node/plugin.py: BuildContext.store).

Load balancers poll /ready every few seconds from every node, so each probe's answer is
kept for `PROBE_CACHE_SECONDS` and concurrent polls share one probe in flight. The Redis
probe pings with the very client the stores use (a cluster client for a cluster).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from node.config import Settings

if TYPE_CHECKING:
    from node.cluster.redis import RedisConnection

PROBE_TIMEOUT = 2.0  # seconds; a backend slower than this is not ready
PROBE_CACHE_SECONDS = 1.0
MEMORY = "memory"
# URL schemes by the store family that serves them.
SCHEMES = {
    "": MEMORY,
    "memory": MEMORY,
    "redis": "redis",
    "rediss": "redis",
    "unix": "redis",
    "amqps": "amqp",
}


def scheme_of(url: str) -> str:
    """The backend family of a [backends] URL: memory, redis, redis+cluster, amqp, ..."""
    scheme = urlsplit(url).scheme if url else ""
    return SCHEMES.get(scheme, scheme)


@dataclass(frozen=True, slots=True)
class Backend:
    """One configured backend, ready for a plugin's stores."""

    kind: str  # its key in [backends]: "redis", "amqp"
    url: str
    scheme: str  # "memory", "redis", "redis+cluster", "amqp"
    redis: RedisConnection | None = None  # the node's one connection, for redis schemes

    @property
    def embedded(self) -> bool:
        return self.scheme == MEMORY


async def ping_redis(connection: RedisConnection) -> None:
    await connection.client.ping()


async def ping_amqp(url: str) -> None:
    import aio_pika

    connection = await aio_pika.connect(url, timeout=PROBE_TIMEOUT)
    await connection.close()


async def ping_postgres(dsn: str) -> None:
    import asyncpg

    connection = await asyncpg.connect(dsn, timeout=PROBE_TIMEOUT)
    try:
        await connection.fetchval("SELECT 1")
    finally:
        await connection.close()


class Probe:
    """One backend's readiness, cached briefly; `check()` returns None or the failure reason."""

    def __init__(self, name: str, ping: Callable[[], Awaitable[None]]) -> None:
        self.name = name
        self._ping = ping
        self._checked_at = -PROBE_CACHE_SECONDS
        self._failure: str | None = None
        self._running: asyncio.Task[str | None] | None = None

    async def _run(self) -> str | None:
        try:
            await asyncio.wait_for(self._ping(), PROBE_TIMEOUT)
        except TimeoutError:
            return f"no answer in {PROBE_TIMEOUT:g} s"
        except Exception as exc:  # any driver error means "not ready", with its reason
            return f"{type(exc).__name__}: {exc}"[:200]
        return None

    async def check(self) -> str | None:
        if time.monotonic() - self._checked_at < PROBE_CACHE_SECONDS:
            return self._failure
        if self._running is None:
            self._running = asyncio.ensure_future(self._run())
        try:
            self._failure = await asyncio.shield(self._running)
            self._checked_at = time.monotonic()
        finally:
            if self._running is not None and self._running.done():
                self._running = None
        return self._failure


def build_probes(settings: Settings, redis: RedisConnection | None) -> list[Probe]:
    """A probe per configured backend; embedded ones need none."""
    probes = []
    amqp_url = settings.backends.amqp
    if redis is not None:
        probes.append(Probe("redis", lambda: ping_redis(redis)))
    if scheme_of(amqp_url) != MEMORY:
        probes.append(Probe("amqp", lambda: ping_amqp(amqp_url)))
    for set_name, shard_set in settings.shards.items():
        for member in shard_set.members:
            for i, dsn in enumerate((member.dsn, *member.replicas) if member.dsn else ()):
                label = f"postgres:{set_name}/{member.name}" + (f"/replica{i}" if i else "")
                probes.append(Probe(label, lambda dsn=dsn: ping_postgres(dsn)))
    return probes
