"""App-wide objects that plugins share: the Redis connection, the node registry, the
cluster bus, admin routes, and one slot per plugin for what its routes share. Built with
the app (no I/O), started and closed by the app's cleanup context."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from aiohttp import web

from node.backends import MEMORY, Backend, scheme_of
from node.cluster.bus import ClusterBus
from node.cluster.redis import RedisConnection
from node.cluster.registry import NodeRegistry
from node.config import Settings
from node.errors import ConfigError
from node.forwarding import TrustedProxies
from node.roles import ROLE_COMPONENTS, WORKER

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
    # Run on SIGTERM, while in-flight requests finish, with the seconds the drain may take.
    on_drain: list[Callable[[float], Awaitable[None]]] = field(default_factory=list)
    # Routes a plugin serves outside the configured ones, at a path the node reserves.
    public_routes: list[web.RouteDef] = field(default_factory=list)
    runs_jobs: bool = False  # the node's role consumes queued jobs (worker, all)
    _shared: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def build(cls, settings: Settings, role: str) -> Resources:
        url = settings.backends.redis
        redis = None if scheme_of(url) == MEMORY else RedisConnection(url)
        node = settings.node
        registry = NodeRegistry(
            node.name,
            role,
            f"{node.host}:{node.port}",
            redis,
            retention=node.down_retention,
            version=VERSION,
        )
        trusted = TrustedProxies(node.trusted_proxies)
        made = cls(settings, redis, registry, trusted, ClusterBus(redis))
        made.runs_jobs = WORKER in ROLE_COMPONENTS[role]
        return made

    def has_backend(self, kind: str) -> bool:
        return scheme_of(getattr(self.settings.backends, kind)) != MEMORY

    def use_backend(self, kind: str, *, required: bool) -> Backend:
        """The backend of `kind`, noted as one a route's plugin uses: `required` if that
        plugin fails without it, else tolerated (/ready: 503 versus "degraded")."""
        url = getattr(self.settings.backends, kind)
        scheme = scheme_of(url)
        if scheme not in (MEMORY, kind) and not (kind == "redis" and scheme == "redis+cluster"):
            raise ConfigError(f"backends.{kind}: {scheme}:// is not a {kind} backend")
        backend = Backend(kind, url, scheme, self.redis if kind == "redis" else None)
        if not backend.embedded:
            (self.required if required else self.tolerated).add(kind)
        return backend

    def find_shared(self, name: str) -> Any:
        """The shared object called `name`, or None if no plugin made it."""
        return self._shared.get(name)

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


RESOURCES = web.AppKey("resources", Resources)
