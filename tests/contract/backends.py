"""The backends the contract suites run against, and the one place their stores are built.

A backend is a URL: memory:// (the embedded store, in-process), a real Redis, or the
session's real 3-master Redis Cluster. Each store fixture is parametrised by the backends
its store claims to run on and yields `Nodes`: every `node()` is one more node's store on
that one backend, so a test sees what two nodes sharing it see. Over Redis each node has
a connection of its own. The embedded store lives in one process, so only callers in that
process share it: there every node gets the same store (the registry excepted, one a node).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Generic, TypeVar

import pytest

from node.cluster.bus import ClusterBus
from node.cluster.redis import RedisConnection
from node.cluster.registry import NodeRegistry
from plugins.breaker.shared import TripExchange
from plugins.cache.stores import L2Store, MemoryL2, RedisL2
from plugins.queue.jobs import JobStore, MemoryJobs
from plugins.queue.redis_jobs import RedisJobs
from plugins.ratelimit.stores import CounterStore, MemoryCounter, RedisCounter

S = TypeVar("S")
MEMORY = "memory://"
SHARED_REDIS = "redis://127.0.0.1:6379/0"
EVERY = ["memory", "redis", "redis-cluster"]
SHARED = ["redis", "redis-cluster"]  # the backends several nodes share
REGISTRY_INTERVAL = 0.1  # seconds between heartbeats here; a node's default is 1 s
REGISTRY_TTL = 0.5  # seconds a heartbeat record lives here; a node's default is 5 s


def backend_url(request: pytest.FixtureRequest, name: str, *, private: bool = False) -> str:
    """The URL of backend `name`. `private`: Redis is a fresh server of the test's own, for
    stores whose keys are the same for every test (the node registry's)."""
    if name == "memory":
        return MEMORY
    if name == "redis":
        return request.getfixturevalue("redis_server").url if private else SHARED_REDIS
    return request.getfixturevalue("cluster")


class Backend:
    """One backend the nodes of a test share, and every connection made to it."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.connections: list[RedisConnection] = []
        self.markers: list[str] = []

    @property
    def embedded(self) -> bool:
        return self.url == MEMORY

    async def connect(self) -> RedisConnection | None:
        """One more node's connection; None on the embedded backend."""
        if self.embedded:
            return None
        connection = RedisConnection(self.url)
        self.connections.append(connection)
        await connection.client.ping()  # a cluster client maps the slots on its first command
        return connection

    def forget_after(self, marker: str) -> None:
        """At the end, delete every key holding `marker` (a test's unique path or name)."""
        self.markers.append(marker)

    async def close(self) -> None:
        try:
            connection = await self.connect() if self.markers else None
            for marker in self.markers if connection is not None else ():
                async for key in connection.client.scan_iter(match=f"*{marker}*", count=500):
                    await connection.client.delete(key)
        finally:
            for made in self.connections:
                await made.close()


class Nodes(Generic[S]):
    """One backend's store as the nodes sharing it see it; `node(*args)` makes one more.

    `make(connection, *args)` builds a node's store (connection None: embedded);
    `shares_embedded`: on memory:// every node gets the first node's store. `stop` ends
    each store made, before its connection closes.
    """

    def __init__(
        self,
        backend: Backend,
        make: Callable[..., S],
        *,
        shares_embedded: bool = True,
        stop: Callable[[S], Awaitable[None]] | None = None,
    ) -> None:
        self.backend = backend
        self.make = make
        self.shares_embedded = shares_embedded
        self.stop = stop
        self.made: list[S] = []

    async def node(self, *args: Any) -> S:
        if self.backend.embedded and self.shares_embedded and self.made:
            return self.made[0]
        self.made.append(self.make(await self.backend.connect(), *args))
        return self.made[-1]

    async def close(self) -> None:
        if self.stop is not None:
            for made in self.made:
                await self.stop(made)


@contextlib.asynccontextmanager
async def nodes_on(url: str, make: Callable[..., S], **options: Any) -> AsyncIterator[Nodes[S]]:
    backend = Backend(url)
    nodes = Nodes(backend, make, **options)
    try:
        yield nodes
    finally:
        try:
            await nodes.close()
        finally:
            await backend.close()


def make_counter(connection: RedisConnection | None) -> CounterStore:
    return MemoryCounter() if connection is None else RedisCounter(connection)


def make_l2(connection: RedisConnection | None) -> L2Store:
    return MemoryL2() if connection is None else RedisL2(connection)


def make_jobs(connection: RedisConnection | None) -> JobStore:
    return MemoryJobs() if connection is None else RedisJobs(connection)


def make_registry(connection: RedisConnection | None, name: str) -> NodeRegistry:
    return NodeRegistry(
        name, "gateway", f"{name}:1", connection, interval=REGISTRY_INTERVAL, ttl=REGISTRY_TTL
    )


async def stop_bus(bus: ClusterBus) -> None:
    await bus.stop()


async def stop_registry(registry: NodeRegistry) -> None:
    await registry.stop()


def make_trip_exchange(connection: RedisConnection, name: str) -> TripExchange:
    """A node's exchange with a bus of its own, which the test starts once its circuits
    are registered (the order a node follows)."""
    return TripExchange(name, connection, ClusterBus(connection))


async def stop_trip_exchange(exchange: TripExchange) -> None:
    await exchange.stop()
    await exchange.bus.stop()


@pytest.fixture(params=EVERY)
async def counter_stores(request: pytest.FixtureRequest) -> AsyncIterator[Nodes[CounterStore]]:
    """Rate-limit counters (plugins/ratelimit/stores.py)."""
    async with nodes_on(backend_url(request, request.param), make_counter) as nodes:
        yield nodes


@pytest.fixture(params=EVERY)
async def l2_stores(request: pytest.FixtureRequest) -> AsyncIterator[Nodes[L2Store]]:
    """The cache's L2 and its fill lock (plugins/cache/stores.py)."""
    async with nodes_on(backend_url(request, request.param), make_l2) as nodes:
        yield nodes


@pytest.fixture(params=EVERY)
async def job_stores(request: pytest.FixtureRequest) -> AsyncIterator[Nodes[JobStore]]:
    """The job queue's job state (plugins/queue/jobs.py)."""
    async with nodes_on(backend_url(request, request.param), make_jobs) as nodes:
        yield nodes


@pytest.fixture(params=EVERY)
async def buses(request: pytest.FixtureRequest) -> AsyncIterator[Nodes[ClusterBus]]:
    """The cluster bus (node/cluster/bus.py); embedded, the in-process loopback."""
    async with nodes_on(backend_url(request, request.param), ClusterBus, stop=stop_bus) as nodes:
        yield nodes


@pytest.fixture(params=EVERY)
async def registries(request: pytest.FixtureRequest) -> AsyncIterator[Nodes[NodeRegistry]]:
    """The node registry (node/cluster/registry.py); embedded, each node knows only itself."""
    url = backend_url(request, request.param, private=True)
    options = {"shares_embedded": False, "stop": stop_registry}
    async with nodes_on(url, make_registry, **options) as nodes:
        yield nodes


@pytest.fixture(params=SHARED)
async def shared_registries(request: pytest.FixtureRequest) -> AsyncIterator[Nodes[NodeRegistry]]:
    """The node registry on the backends where nodes see each other."""
    url = backend_url(request, request.param, private=True)
    async with nodes_on(url, make_registry, stop=stop_registry) as nodes:
        yield nodes


@pytest.fixture(params=SHARED)
async def trip_exchanges(request: pytest.FixtureRequest) -> AsyncIterator[Nodes[TripExchange]]:
    """The breaker's shared trips (plugins/breaker/shared.py): Redis and the bus."""
    url = backend_url(request, request.param)
    async with nodes_on(url, make_trip_exchange, stop=stop_trip_exchange) as nodes:
        yield nodes
