"""API key → tier: from each route's config and from the backend, where operators add keys
without a restart through `/admin/ratelimit/keys`.

Keys are stored as SHA-256 digests, never in clear. Each node caches lookups for
`CACHE_SECONDS`, so a key changed on one node takes effect on the others within that time
(at once on the node that took the admin call).
"""

from __future__ import annotations

import hashlib
import time
from typing import Any

from aiohttp import web

from node.call import wire_bytes
from node.cluster.redis import RedisConnection
from node.errors import BackendUnavailable
from node.wire import json_response
from plugins.ratelimit.keys import API_KEY_TIERS
from plugins.ratelimit.settings import MAX_KEY_LENGTH

CACHE_SECONDS = 5.0
CACHE_MAX = 50_000


def digest(api_key: str) -> str:
    return hashlib.sha256(wire_bytes(api_key)).hexdigest()


class TierDirectory:
    def __init__(self, redis: RedisConnection | None, node: str) -> None:
        self.redis = redis
        self.node = node
        self.known_tiers: set[str] = set()  # every tier some route defines
        self._embedded: dict[str, str] = {}  # digest → tier, when there is no Redis
        self._cache: dict[str, tuple[str | None, float]] = {}

    async def lookup(self, api_key: str) -> str | None:
        """The tier assigned through the backend, or None (the route's config decides then)."""
        key = digest(api_key)
        now = time.monotonic()
        cached = self._cache.get(key)
        if cached is not None and cached[1] > now:
            return cached[0]
        if self.redis is None:
            tier = self._embedded.get(key)
        else:
            try:
                raw = await self.redis.run(lambda c: c.hget(API_KEY_TIERS, key))
            except BackendUnavailable:
                return cached[0] if cached is not None else None  # stale beats nothing
            tier = raw.decode() if raw is not None else None
        if len(self._cache) >= CACHE_MAX:
            self._cache.clear()
        self._cache[key] = (tier, now + CACHE_SECONDS)
        return tier

    async def assign(self, api_key: str, tier: str | None) -> None:
        key = digest(api_key)
        self._cache.pop(key, None)
        if self.redis is None:
            if tier is None:
                self._embedded.pop(key, None)
            else:
                self._embedded[key] = tier
            return
        if tier is None:
            await self.redis.run(lambda c: c.hdel(API_KEY_TIERS, key))
        else:
            await self.redis.run(lambda c: c.hset(API_KEY_TIERS, key, tier))

    async def count(self) -> int:
        if self.redis is None:
            return len(self._embedded)
        return int(await self.redis.run(lambda c: c.hlen(API_KEY_TIERS)))

    def routes(self) -> list[web.RouteDef]:
        return [
            web.put("/ratelimit/keys", self.handle_assign),
            web.delete("/ratelimit/keys", self.handle_revoke),
            web.get("/ratelimit/keys", self.handle_summary),
        ]

    async def _read(
        self, request: web.Request
    ) -> tuple[dict[str, Any] | None, web.Response | None]:
        try:
            body = await request.json()
        except ValueError:
            body = None
        api_key = body.get("key") if isinstance(body, dict) else None
        if not isinstance(api_key, str) or not 0 < len(api_key) <= MAX_KEY_LENGTH:
            detail = f'send JSON {{"key": "<api key, 1-{MAX_KEY_LENGTH} chars>", ...}}'
            return None, json_response({"error": "bad_request", "detail": detail}, 400, self.node)
        return body, None

    async def handle_assign(self, request: web.Request) -> web.Response:
        body, error = await self._read(request)
        if error is not None or body is None:
            return error  # type: ignore[return-value]
        tier = body.get("tier")
        if tier not in self.known_tiers:
            known = ", ".join(sorted(self.known_tiers)) or "none"
            detail = f"unknown tier {tier!r} (known: {known})"
            return json_response({"error": "bad_request", "detail": detail}, 400, self.node)
        return await self._apply(body["key"], tier)

    async def handle_revoke(self, request: web.Request) -> web.Response:
        body, error = await self._read(request)
        if error is not None or body is None:
            return error  # type: ignore[return-value]
        return await self._apply(body["key"], None)

    async def _apply(self, api_key: str, tier: str | None) -> web.Response:
        try:
            await self.assign(api_key, tier)
        except BackendUnavailable as exc:
            return json_response(
                {"error": "backend_unavailable", "detail": str(exc)}, 503, self.node
            )
        return json_response({"key_sha256": digest(api_key), "tier": tier}, 200, self.node)

    async def handle_summary(self, request: web.Request) -> web.Response:
        try:
            count = await self.count()
        except BackendUnavailable as exc:
            return json_response(
                {"error": "backend_unavailable", "detail": str(exc)}, 503, self.node
            )
        return json_response({"keys": count, "tiers": sorted(self.known_tiers)}, 200, self.node)
