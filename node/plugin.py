"""The plugin contract: what a plugin is, how it declares itself, what it may use to build.

A plugin takes part in a call one way: `bind(next) -> handler`, its step with the rest of
the route's chain bound in, built once at start-up. `Plugin` adapts the plain form,
`async __call__(call, next) -> Reply`, to it; a hot plugin overrides `bind` itself (one
coroutine frame a request instead of two), and a plugin that acts elsewhere and only
reports (the breaker, inside the upstream pool) returns `next` unchanged.

A plugin declares itself once, with a `PluginSpec`: its name (the key of its table in a
route), where it goes in the chain relative to others, its factory, and the prefix of the
Redis keys it owns. node/catalogue.py finds the specs (entry points, `[plugins] load`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from aiohttp import web

from node.call import Call, Handler, Reply
from node.errors import ConfigError

if TYPE_CHECKING:
    from node.backends import Backend
    from node.config import RouteSettings, Settings
    from node.forwarding import TrustedProxies
    from node.resources import Resources
    from node.upstream.pool import UpstreamPool

T = TypeVar("T")


class Plugin:
    """Base of a route's plugin: override `__call__` (or `bind`) and `snapshot`."""

    name: str = ""

    def bind(self, next: Handler) -> Handler:
        """This plugin's step with `next` bound: what the route's chain calls."""
        run = self.__call__

        async def step(call: Call) -> Reply:
            return await run(call, next)

        step.__qualname__ = f"{self.name}_step"
        return step

    async def __call__(self, call: Call, next: Handler) -> Reply:
        """Answer early, wrap `await next(call)`, or annotate the call and pass it on."""
        return await next(call)

    def snapshot(self) -> dict[str, Any]:
        """JSON-safe stats for the heartbeat, the dashboard's card and /metrics:
        `{"counters": {...}, "gauges": {...}}` plus any descriptive keys."""
        return {}


class TargetFactory(Protocol):
    def __call__(self, spec: str, path: str, ctx: BuildContext) -> Handler:
        """The handler of a `kind:spec` target a plugin provides (store:NAME): validate
        `spec` (raise ConfigError naming `path`) and build it; no I/O."""
        ...


class PluginFactory(Protocol):
    def __call__(self, table: dict[str, Any], path: str, ctx: BuildContext) -> Plugin:
        """Validate `table` (raise ConfigError naming `path`) and build the plugin; no I/O."""
        ...


@dataclass(frozen=True, slots=True)
class PluginSpec:
    """A plugin's one declaration.

    `after` / `before` name plugins this one runs after / before, when a route has both
    (names not loaded are ignored); ties keep the order the specs were found in, the
    built-in ones first. `keys` is the Redis key prefix the plugin owns ("sn:rl:"): no
    other plugin's prefix may overlap it.
    """

    name: str
    build: PluginFactory
    after: tuple[str, ...] = ()
    before: tuple[str, ...] = ()
    keys: str = ""
    summary: str = ""  # one line for --check-config and the docs
    # Target kinds the plugin provides besides its route step ("store" for store:NAME).
    targets: Mapping[str, TargetFactory] = field(default_factory=dict)
    # One-off commands run as `run.py --role NAME ...` instead of a node: the command gets
    # the other arguments and returns the exit code ("rebalance" for shard sets).
    commands: Mapping[str, Callable[[list[str]], int]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class BuildContext:
    """What a plugin factory may use while it builds: the settings, its route, and the
    node's shared services (backends, the cluster bus, the registry, admin routes)."""

    settings: Settings
    route: RouteSettings
    path: str  # e.g. "routes[2]"
    resources: Resources
    pools: Mapping[str, UpstreamPool] = field(default_factory=dict)

    @property
    def node_name(self) -> str:
        return self.settings.node.name

    @property
    def trusted(self) -> TrustedProxies:
        """The one judge of a call's client address (X-Forwarded-For from trusted proxies)."""
        return self.resources.trusted

    def shared(self, name: str, make: Callable[[], T]) -> T:
        """The one object called `name` every route's plugin shares, made on first use."""
        return self.resources.shared(name, make)

    def has_backend(self, kind: str) -> bool:
        """Is a real (not embedded) backend of `kind` configured?"""
        return self.resources.has_backend(kind)

    def backend(self, kind: str, *, required: bool) -> Backend:
        """The node's backend of `kind` ("redis"), declared as used by this route:
        `required` if the plugin cannot serve without it (its outage makes /ready 503),
        else tolerated (its outage only makes /ready "degraded")."""
        return self.resources.use_backend(kind, required=required)

    def store(
        self,
        kind: str,
        makers: Mapping[str, Callable[[Backend], T]],
        *,
        shared_as: str,
        required: bool = False,
    ) -> T:
        """The store this plugin keeps on the node's `kind` backend, made by the maker
        for that backend's scheme ("memory", "redis", "redis+cluster": the schemes the
        store claims) and shared by every route under `shared_as`."""
        backend = self.backend(kind, required=required)
        make = makers.get(backend.scheme)
        if make is None:
            raise ConfigError(
                f"{self.path}: this plugin's store does not run on {backend.scheme}:// "
                f"(backends.{kind}; it runs on {', '.join(makers)})"
            )
        return self.shared(shared_as, lambda: make(backend))

    def tolerate_outage(self, probe: str) -> None:
        """The node serves on while the backend `probe` names (a /ready probe, e.g.
        "postgres:users/s0") is down: /ready says "degraded", naming it, not 503."""
        self.resources.tolerated.add(probe)

    def upstream_pool(self, path: str) -> UpstreamPool:
        """The pool of the route's `upstream:NAME` target: a plugin that guards upstream
        members does so through the pool's hooks (`UpstreamPool.guard_members`)."""
        kind, _, name = self.route.target.partition(":")
        if kind != "upstream":
            raise ConfigError(f"{path}: guards upstream members; the target must be upstream:NAME")
        return self.pools[name]

    @property
    def runs_jobs(self) -> bool:
        """Does this node's role consume queued jobs (roles worker and all)?"""
        return self.resources.runs_jobs

    def add_public_routes(self, routes: list[web.RouteDef]) -> None:
        """Serve `routes` (no token) at paths the node reserves, which no configured route
        may take (/jobs/...)."""
        self.resources.public_routes.extend(routes)

    def on_drain(self, drain: Callable[[float], Awaitable[None]]) -> None:
        """Run on SIGTERM with the seconds the drain may take: stop taking work, finish."""
        self.resources.on_drain.append(drain)

    def add_admin_routes(self, routes: list[web.RouteDef]) -> None:
        """Serve `routes` under /admin, behind node.admin_token."""
        self.resources.admin_routes.extend(routes)

    def on_start(self, start: Callable[[], Awaitable[None]]) -> None:
        """Run once the node's backends and cluster bus are up."""
        self.resources.on_start.append(start)

    def on_stop(self, stop: Callable[[], Awaitable[None]]) -> None:
        """Run before the cluster bus and the backends close."""
        self.resources.on_stop.append(stop)
