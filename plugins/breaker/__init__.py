"""Circuit breaking per upstream member: the state machine, trips shared across nodes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from node.cluster.redis import RedisConnection
from node.errors import ConfigError
from node.pipeline import BuildContext
from node.resources import Resources
from node.schema import build, join
from plugins.breaker.admin import BreakerAdmin
from plugins.breaker.circuit import Circuit
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
    kind, _, name = ctx.route.target.partition(":")
    if kind != "upstream":
        raise ConfigError(f"{path}: guards upstream members; the target must be upstream:NAME")
    pool = ctx.pools[name]
    resources = ctx.resources
    guarded: dict[str, Guarded] = resources.shared("breaker.pools", dict)
    prior = guarded.get(name)
    if prior is not None:
        if prior.settings != settings:
            raise ConfigError(
                f"{path}: upstream {name!r} already has a breaker from {prior.path} with "
                "other settings; routes to one pool share its breakers, so give them one table"
            )
        return CircuitBreaker(pool, prior.circuits)
    shared = settings.shared if settings.shared is not None else resources.redis is not None
    redis = resources.redis
    if shared and redis is None:
        raise ConfigError(f"{join(path, 'shared')}: sharing trips needs backends.redis")
    circuits = guard_pool(pool, settings)
    guarded[name] = Guarded(settings, path, circuits)
    node = ctx.settings.node.name

    def make_admin() -> BreakerAdmin:
        made = BreakerAdmin(node)
        resources.admin_routes.extend(made.routes())
        return made

    resources.shared("breaker.admin", make_admin).pools[name] = circuits
    if shared and redis is not None:
        share_trips(circuits, resources, redis, node, trial_ttl=pool.settings.timeout + 1)
    return CircuitBreaker(pool, circuits)


def share_trips(
    circuits: list[Circuit],
    resources: Resources,
    redis: RedisConnection,
    node: str,
    trial_ttl: float,
) -> None:
    """Hand `circuits` to the node's one TripExchange (made, and tied to the app's life,
    on first use). `trial_ttl`: a trial token outlives the slowest trial call."""

    def make_exchange() -> TripExchange:
        made = TripExchange(node, redis, resources.bus)
        resources.on_start.append(made.load)
        resources.on_stop.append(made.stop)
        return made

    exchange = resources.shared("breaker.exchange", make_exchange)
    resources.tolerated.add("redis")  # an outage only unshares trips
    for circuit in circuits:
        exchange.register(circuit, trial_ttl)
