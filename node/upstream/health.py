"""Active health checks: a pool's background task that ejects and re-admits its members.

Every `interval` seconds each member gets `GET <path>`; a 2xx or 3xx within `timeout`
passes. `unhealthy` consecutive failures eject a member (the pool skips it), `healthy`
consecutive passes re-admit it. Passive ejection is the breaker's job.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable

import aiohttp
from aiohttp import web

from node.tasks import stop
from node.upstream.pool import Member, UpstreamPool
from node.upstream.settings import HealthSettings

log = logging.getLogger("scalenode.health")


class HealthChecker:
    def __init__(self, pool: UpstreamPool, settings: HealthSettings) -> None:
        self.pool = pool
        self.settings = settings
        self.streak = {member.url: 0 for member in pool.members}  # + passes, - failures
        self.ejections = 0

    async def run(self) -> None:
        timeout = aiohttp.ClientTimeout(total=self.settings.timeout)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while True:
                await asyncio.gather(*(self.check(session, m) for m in self.pool.members))
                await asyncio.sleep(self.settings.interval)

    async def check(self, session: aiohttp.ClientSession, member: Member) -> None:
        try:
            async with session.get(member.url + self.settings.path, allow_redirects=False) as r:
                passed = 200 <= r.status < 400
        except (aiohttp.ClientError, TimeoutError, OSError):
            passed = False
        self.observe(member, passed)

    def observe(self, member: Member, passed: bool) -> None:
        """Count a check's result; eject or re-admit once a streak reaches its threshold."""
        streak = self.streak[member.url]
        # A pass after failures (or a failure after passes) starts a new streak.
        streak = max(streak, 0) + 1 if passed else min(streak, 0) - 1
        self.streak[member.url] = streak
        settings = self.settings
        if member.healthy and -streak >= settings.unhealthy:
            member.healthy = False
            self.ejections += 1
            log.warning("upstream %s: %s ejected by health checks", self.pool.name, member.url)
        elif not member.healthy and streak >= settings.healthy:
            member.healthy = True
            log.warning("upstream %s: %s healthy again", self.pool.name, member.url)


def health_context(
    pools: dict[str, UpstreamPool],
) -> Callable[[web.Application], AsyncIterator[None]]:
    """An aiohttp cleanup context running one checker per pool that has `health`."""

    async def context(app: web.Application) -> AsyncIterator[None]:
        checkers = [
            HealthChecker(pool, pool.settings.health)
            for pool in pools.values()
            if pool.settings.health is not None
        ]
        checks = [asyncio.ensure_future(checker.run()) for checker in checkers]
        yield
        await stop(checks)

    return context
