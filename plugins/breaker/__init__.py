"""Circuit breaking per upstream member: the state machine, trips shared across nodes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from node.cluster.redis import RedisConnection
from node.errors import ConfigError
from node.plugin import BuildContext, PluginSpec
from node.schema import build, join
from plugins.breaker.admin import BreakerAdmin
from plugins.breaker.circuit import Circuit
from plugins.breaker.keys import PREFIX
from plugins.breaker.plugin import CircuitBreaker, guard_pool
from plugins.breaker.settings import BreakerSettings
from plugins.breaker.shared import TripExchange


@dataclass(frozen=True, slots=True)
class Guarded:
    """A pool already given circuits, by the route at `path`."""

    settings: BreakerSettings
    path: str
    circuits: list[Circuit]


def build_circuit_breaker(table: dict[str, Any], path: str, ctx: BuildContext) -> CircuitBreaker:
    """Routes sharing a pool share its members' circuits, so they must agree on the settings."""
    settings = build(BreakerSettings, table, path)
    pool = ctx.upstream_pool(path)
    name = pool.name
    guarded: dict[str, Guarded] = ctx.shared("breaker.pools", dict)
    prior = guarded.get(name)
    if prior is not None:
        if prior.settings != settings:
            raise ConfigError(
                f"{path}: upstream {name!r} already has a breaker from {prior.path} with "
                "other settings; routes to one pool share its breakers, so give them one table"
            )
        return CircuitBreaker(pool, prior.circuits)
    shared = settings.shared if settings.shared is not None else ctx.has_backend("redis")
    if shared and not ctx.has_backend("redis"):
        raise ConfigError(f"{join(path, 'shared')}: sharing trips needs backends.redis")
    circuits = guard_pool(pool, settings)
    guarded[name] = Guarded(settings, path, circuits)
    node = ctx.node_name

    def make_admin() -> BreakerAdmin:
        made = BreakerAdmin(node)
        ctx.add_admin_routes(made.routes())
        return made

    ctx.shared("breaker.admin", make_admin).pools[name] = circuits
    if shared:
        # An outage of Redis only unshares trips: tolerated.
        redis = ctx.backend("redis", required=False).redis
        assert redis is not None
        share_trips(circuits, ctx, redis, trial_ttl=pool.settings.timeout + 1)
    return CircuitBreaker(pool, circuits)


def share_trips(
    circuits: list[Circuit], ctx: BuildContext, redis: RedisConnection, trial_ttl: float
) -> None:
    """Hand `circuits` to the node's one TripExchange (made, and tied to the app's life,
    on first use). `trial_ttl`: a trial token outlives the slowest trial call."""

    def make_exchange() -> TripExchange:
        made = TripExchange(ctx.node_name, redis, ctx.resources.bus)
        ctx.on_start(made.load)
        ctx.on_stop(made.stop)
        return made

    exchange = ctx.shared("breaker.exchange", make_exchange)
    for circuit in circuits:
        exchange.register(circuit, trial_ttl)


PLUGIN = PluginSpec(
    name="breaker",
    build=build_circuit_breaker,
    after=("ratelimit", "cache", "queue", "shard"),
    keys=PREFIX,
    summary="circuit breaking per upstream member, trips shared across nodes",
)
