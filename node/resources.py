"""App-wide objects that plugins share: the Redis connection, the node registry, the
cluster bus, admin routes, and one slot per plugin for what its routes share. Built with
the app (no I/O), started and closed by the app's cleanup context."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from aiohttp import web

from node.cluster.bus import ClusterBus
from node.cluster.redis import RedisConnection
from node.cluster.registry import NodeRegistry
from node.config import Settings
from node.forwarding import TrustedProxies

T = TypeVar("T")
VERSION = "0.1.0"


@dataclass
class Resources:
    settings: Settings
    redis: RedisConnection | None
    registry: NodeRegistry
    trusted: TrustedProxies
    bus: ClusterBus
    admin_routes: list[web.RouteDef] = field(default_factory=list)
    # Backends whose outage every user degrades through (fail open, local share): their
    # failure marks /ready "degraded" but keeps it 200, so the balancer keeps the node.
    tolerated: set[str] = field(default_factory=set)
    # Backends some user cannot do without (a rate limit that fails closed): their outage
    # makes /ready 503 even if other users tolerate it.
    required: set[str] = field(default_factory=set)
    # Run once the bus is started / before it stops: what a plugin shares must load or let go.
    on_start: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    on_stop: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    _shared: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def build(cls, settings: Settings, role: str) -> Resources:
        redis = RedisConnection(settings.backends.redis) if settings.backends.redis else None
        node = settings.node
        registry = NodeRegistry(node.name, role, f"{node.host}:{node.port}", redis, version=VERSION)
        trusted = TrustedProxies(node.trusted_proxies)
        return cls(settings, redis, registry, trusted, ClusterBus(redis))

    def shared(self, name: str, make: Callable[[], T]) -> T:
        """The one object called `name` that every route's plugin shares, made on first use."""
        if name not in self._shared:
            self._shared[name] = make()
        return self._shared[name]

    async def lifespan(self, app: web.Application) -> AsyncIterator[None]:
        await self.registry.start()
        await self.bus.start()
        for start in self.on_start:
            await start()
        yield
        for stop in self.on_stop:
            await stop()
        await self.bus.stop()
        await self.registry.stop()
        if self.redis is not None:
            await self.redis.close()
