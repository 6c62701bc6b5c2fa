"""Rate limiting: three algorithms, an embedded and a Redis store, keys, tiers, outage modes."""

from __future__ import annotations

from typing import Any

from node.pipeline import BuildContext
from node.schema import build
from plugins.ratelimit.plugin import OneLimitRateLimiter, Policy, RateLimiter
from plugins.ratelimit.settings import (
    RateLimitSettings,
    check_bucket_range,
    default_limits,
    tier_limits,
)
from plugins.ratelimit.stores import CounterStore, MemoryCounter, RedisCounter
from plugins.ratelimit.tiers import TierDirectory


def build_rate_limiter(table: dict[str, Any], path: str, ctx: BuildContext) -> RateLimiter:
    settings = build(RateLimitSettings, table, path)
    default, tiers = default_limits(settings, path), tier_limits(settings, path)
    for limits in (default or (), *tiers.values()):
        check_bucket_range(settings, limits, path)
    policy = Policy(settings, default, tiers, ctx.route.label)
    resources = ctx.resources
    redis = resources.redis
    store: CounterStore
    if redis is None:
        # Routes sharing a scope share counters, so the embedded store is one per node.
        store = resources.shared("ratelimit.memory", MemoryCounter)
    else:
        store = resources.shared("ratelimit.redis", lambda: RedisCounter(redis))
        if settings.on_backend_error == "closed":
            resources.required.add("redis")
        else:
            resources.tolerated.add("redis")
    directory = None
    if settings.tiers or settings.require_key:

        def make_directory() -> TierDirectory:
            made = TierDirectory(redis, ctx.settings.node.name)
            resources.admin_routes.extend(made.routes())
            return made

        directory = resources.shared("ratelimit.tiers", make_directory)
        directory.known_tiers.update(settings.tiers)
    kind = (
        OneLimitRateLimiter if OneLimitRateLimiter.fits(policy, store, directory) else RateLimiter
    )
    return kind(policy, store, resources.trusted, resources.registry.live_count, directory)
