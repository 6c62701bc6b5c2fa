"""Invalidation: drop entries from L2, and from every node's L1 through the cluster bus.

One Invalidator per node serves all cached routes. It listens on `CACHE_EVENTS`; after a
bus reconnect (messages may have been missed) it empties every L1, which then refills
from L2. The admin endpoints (`/admin/cache/...`) invalidate by path, prefix or tag.
"""

from __future__ import annotations

import contextlib
import logging
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web

from node.cluster.bus import ClusterBus
from node.errors import BackendUnavailable
from node.wire import json_response
from plugins.cache.keys import CACHE_EVENTS
from plugins.cache.stores import L2Store

if TYPE_CHECKING:
    from plugins.cache.plugin import ResponseCache

log = logging.getLogger("scalenode.cache")

KINDS = ("path", "prefix", "tag")
MAX_VALUE = 2048  # characters of a path, prefix or tag in an admin call


def matcher(kind: str, value: str) -> Any:
    if kind == "path":
        return lambda entry: entry.path == value
    if kind == "prefix":
        return lambda entry: entry.path.startswith(value)
    return lambda entry: value in entry.tags


class Invalidator:
    def __init__(self, l2: L2Store, bus: ClusterBus, node: str) -> None:
        self.l2 = l2
        self.bus = bus
        self.node = node
        self.caches: list[tuple[str, ResponseCache]] = []  # (route label, plugin)
        bus.subscribe(CACHE_EVENTS, self.on_message, self.on_resync)

    def drop_local(self, kind: str, value: str) -> int:
        match = matcher(kind, value)
        return sum(cache.l1.drop_where(match) for _, cache in self.caches)

    async def drop_everywhere(self, kind: str, value: str) -> int:
        """Entries dropped from L2; raises BackendUnavailable when L2 or the bus is down."""
        self.drop_local(kind, value)
        dropped = await getattr(self.l2, f"drop_{kind}")(value)
        await self.bus.publish(CACHE_EVENTS, orjson.dumps({"kind": kind, "value": value}))
        return dropped

    async def after_write(self, kind: str, value: str) -> None:
        """A write through a cached route: never an error, whatever Redis does (L1 entries
        elsewhere then live out their short l1_ttl, or go at the bus's resync)."""
        with contextlib.suppress(BackendUnavailable):
            await self.drop_everywhere(kind, value)

    def on_message(self, payload: bytes) -> None:
        message = orjson.loads(payload)
        if message.get("kind") in KINDS and isinstance(message.get("value"), str):
            self.drop_local(message["kind"], message["value"])

    def on_resync(self) -> None:
        for _, cache in self.caches:
            cache.l1.clear()

    def routes(self) -> list[web.RouteDef]:
        return [
            web.post("/cache/invalidate", self.handle_invalidate),
            web.get("/cache", self.handle_summary),
        ]

    async def handle_invalidate(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except ValueError:
            body = None
        given = [k for k in KINDS if isinstance(body, dict) and k in body]
        value = body.get(given[0]) if len(given) == 1 else None  # type: ignore[union-attr]
        if not isinstance(value, str) or not 0 < len(value) <= MAX_VALUE:
            detail = 'send JSON with one of {"path": ...}, {"prefix": ...}, {"tag": ...}'
            return json_response({"error": "bad_request", "detail": detail}, 400, self.node)
        kind = given[0]
        local = self.drop_local(kind, value)
        try:
            dropped = await self.drop_everywhere(kind, value)
        except BackendUnavailable as exc:
            return json_response(
                {"error": "backend_unavailable", "detail": str(exc), "l1_dropped": local},
                503,
                self.node,
            )
        log.info("cache: invalidated %s %r (%d L2 entries)", kind, value, dropped)
        return json_response({kind: value, "dropped": dropped, "l1_dropped": local}, 200, self.node)

    async def handle_summary(self, request: web.Request) -> web.Response:
        routes = {label: cache.snapshot() for label, cache in self.caches}
        return json_response({"routes": routes}, 200, self.node)
