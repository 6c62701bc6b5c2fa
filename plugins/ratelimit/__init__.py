"""Rate limiting: three algorithms, an embedded and a Redis store, keys, tiers, outage modes."""

from __future__ import annotations

from typing import Any

from node.plugin import BuildContext, PluginSpec
from node.schema import build
from plugins.ratelimit.keys import PREFIX
from plugins.ratelimit.one_limit import OneLimitRateLimiter
from plugins.ratelimit.plugin import Policy, RateLimiter
from plugins.ratelimit.settings import (
    RateLimitSettings,
    check_bucket_range,
    default_limits,
    tier_limits,
)
from plugins.ratelimit.stores import CounterStore, MemoryCounter, RedisCounter
from plugins.ratelimit.tiers import TierDirectory

# Routes sharing a scope share counters, so a store is one per node.
STORES = {
    "memory": lambda backend: MemoryCounter(),
    "redis": lambda backend: RedisCounter(backend.redis),
    "redis+cluster": lambda backend: RedisCounter(backend.redis),
}


def build_rate_limiter(table: dict[str, Any], path: str, ctx: BuildContext) -> RateLimiter:
    settings = build(RateLimitSettings, table, path)
    default, tiers = default_limits(settings, path), tier_limits(settings, path)
    for limits in (default or (), *tiers.values()):
        check_bucket_range(settings, limits, path)
    policy = Policy(settings, default, tiers, ctx.route.label)
    # Failing closed, the limiter cannot serve without its backend: /ready then says 503.
    required = settings.on_backend_error == "closed"
    store: CounterStore = ctx.store("redis", STORES, shared_as="ratelimit.store", required=required)
    directory = None
    if settings.tiers or settings.require_key:
        redis = ctx.backend("redis", required=required).redis

        def make_directory() -> TierDirectory:
            made = TierDirectory(redis, ctx.node_name)
            ctx.add_admin_routes(made.routes())
            return made

        directory = ctx.shared("ratelimit.tiers", make_directory)
        directory.known_tiers.update(settings.tiers)
    kind = (
        OneLimitRateLimiter if OneLimitRateLimiter.fits(policy, store, directory) else RateLimiter
    )
    return kind(policy, store, ctx.trusted, ctx.resources.registry.live_count, directory)


PLUGIN = PluginSpec(
    name="ratelimit",
    build=build_rate_limiter,
    before=("cache", "queue", "shard", "breaker"),
    keys=PREFIX,
    summary="limits per client, route or API key tier (RateLimit headers, 429)",
)
