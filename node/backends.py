"""Readiness probes for the configured backends: Redis, RabbitMQ and each PostgreSQL shard.

Load balancers poll /ready every few seconds from every node, so each probe's answer is
kept for `PROBE_CACHE_SECONDS` and concurrent polls share one probe in flight.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from node.config import Settings

PROBE_TIMEOUT = 2.0  # seconds; a backend slower than this is not ready
PROBE_CACHE_SECONDS = 1.0


async def ping_redis(url: str) -> None:
    import redis.asyncio as redis

    client = redis.from_url(url, socket_connect_timeout=PROBE_TIMEOUT)
    try:
        await client.ping()
    finally:
        await client.aclose()


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


def build_probes(settings: Settings) -> list[Probe]:
    """A probe per configured backend; embedded ones ("" URLs) need none."""
    probes = []
    redis_url, amqp_url = settings.backends.redis, settings.backends.amqp
    if redis_url:
        probes.append(Probe("redis", lambda: ping_redis(redis_url)))
    if amqp_url:
        probes.append(Probe("amqp", lambda: ping_amqp(amqp_url)))
    for set_name, shard_set in settings.shards.items():
        for member in shard_set.members:
            for i, dsn in enumerate((member.dsn, *member.replicas) if member.dsn else ()):
                label = f"postgres:{set_name}/{member.name}" + (f"/replica{i}" if i else "")
                probes.append(Probe(label, lambda dsn=dsn: ping_postgres(dsn)))
    return probes
