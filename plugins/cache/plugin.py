"""The ResponseCache plugin: L1 hit on the hot path; on a miss, one fetch per key per node
(single-flight) and per cluster (the L2 fill lock); stale serving; write-through
invalidation."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from multidict import CIMultiDict

from node.call import Call, Handler, Reply
from node.errors import BackendUnavailable, BadGateway, GatewayTimeout, Rejected, ServiceUnavailable
from node.plugin import Plugin
from plugins.cache.admission import (
    SAFE,
    Admission,
    forwarded,
    invalidated_uris,
    untargeted,
    updated,
)
from plugins.cache.conditional import IF_MODIFIED_SINCE, IF_NONE_MATCH, RANGE, shaped
from plugins.cache.entry import (
    BYPASS,
    HIT_L1,
    HIT_L2,
    MISS,
    REVALIDATED,
    STALE,
    VARIANT,
    X_CACHE,
    Entry,
    decoded,
)
from plugins.cache.fill import Filler
from plugins.cache.freshness import Lifetime
from plugins.cache.lru import L1Cache
from plugins.cache.policy import KeyBuilder, storable
from plugins.cache.settings import CacheSettings

# Failures of the target that a stale entry may cover (stale_if_error): unreachable,
# timed out, its breaker open or overloaded.
TARGET_FAILURES = (BadGateway, GatewayTimeout, ServiceUnavailable)
# Counted in `counts`; hits_l1 (a plain attribute, on the hot path) and evictions (the
# LRU's) join them in snapshot(). The dashboard renders these names. `coalesced`: requests
# that waited for this node's in-flight fetch of the key from the target (not hits).
# `lookups`: GETs and HEADs that were not L1 hits on the hot path (hits_l1 adds the rest).
COUNTERS = (
    "hits_l2",
    "misses",
    "stale",
    "bypass",
    "coalesced",
    "lookups",
    "lock_waits",
    "lock_timeouts",
    "invalidations",
    "backend_errors",
)


def passing(exc: Rejected, label: str) -> None:
    """Label a Rejected passing through (it becomes the reply outside): X-Cache in its
    headers, copied first since its raiser may share that dict between raises."""
    exc.headers = {**exc.headers, X_CACHE: label}


def unrevalidated(exc: BadGateway, label: str) -> GatewayTimeout:
    """RFC 9111 section 5.2.2.2: a stale must-revalidate entry whose origin cannot be
    reached is not reused, and the cache says so with a 504, not the target's 502."""
    return GatewayTimeout(
        f"a stored reply must be revalidated and its origin failed: {exc.detail}",
        headers={**exc.headers, X_CACHE: label},
    )


def labelled(reply: Reply, label: str) -> Reply:
    """`reply` with X-Cache set, never mutating a headers object someone else may share."""
    headers = reply.headers
    if type(headers) is CIMultiDict:  # the proxy's, made for this reply alone
        headers[X_CACHE] = label
    elif type(headers) is dict:
        reply.headers = {**headers, X_CACHE: label}
    else:
        copied = CIMultiDict(headers)
        copied[X_CACHE] = label
        reply.headers = copied
    return reply


class ResponseCache(Plugin):
    """One route's cache. Times are wall-clock seconds (`clock`): entries, their Age and
    freshness travel between nodes through L2, so a monotonic clock would not do."""

    name = "cache"

    def __init__(
        self,
        settings: CacheSettings,
        route: str,
        filler: Filler,
        invalidate: Callable[[str, str], Any],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.key = KeyBuilder(route, settings.vary)
        self.l1 = L1Cache(settings.l1_ttl, settings.l1_max_entries, settings.l1_max_bytes)
        self.entries = self.l1.entries  # read directly on the hot path
        self.filler = filler
        self.invalidate = invalidate  # async (kind, value): L2 and every node's L1
        self.clock = clock
        self.statuses = frozenset(settings.statuses)
        self.admission = Admission(
            Lifetime(settings.ttl, settings.stale_while_revalidate, settings.stale_if_error),
            self.statuses,
            frozenset(name.lower() for name in settings.vary),
        )
        self.flights: dict[str, asyncio.Future[tuple[Entry | None, str]]] = {}
        self.refreshing: set[str] = set()
        self.tasks: set[asyncio.Task[None]] = set()
        self.counts = dict.fromkeys(COUNTERS, 0)
        self.hits_l1 = 0  # the hot path's counter, a plain attribute

    async def __call__(self, call: Call, next: Handler) -> Reply:
        method = call.method
        if method == "GET" or method == "HEAD":
            key = self.key.of(call)
            now = self.clock()
            entry = self.entries.get(key)
            if entry is not None and entry.selects and not entry.fits(call.headers):
                # Another variant is the latest under `key`: this request's may be stored
                # under its own (section 4.1).
                key = entry.variant_for(key, call.headers)
                entry = self.entries.get(key)
                if entry is not None and not entry.fits(call.headers):
                    entry = None
            if entry is not None and now < entry.hit_until:
                self.entries.move_to_end(key)
                self.hits_l1 += 1
                headers = call.headers
                if IF_NONE_MATCH in headers or IF_MODIFIED_SINCE in headers or RANGE in headers:
                    return shaped(call, entry.hit(now))
                return entry.hit(now)
            reply = await self.lookup(call, next, key, self.l1.get(key, now))
            headers = call.headers
            if IF_NONE_MATCH in headers or IF_MODIFIED_SINCE in headers or RANGE in headers:
                return shaped(call, reply)
            return reply
        if method not in SAFE:
            return await self.write_through(call, next)
        self.counts["bypass"] += 1
        try:
            reply = await next(call)
        except Rejected as exc:
            passing(exc, BYPASS)
            raise
        return labelled(reply, BYPASS)

    async def lookup(self, call: Call, next: Handler, key: str, stale: Entry | None) -> Reply:
        """Concurrent misses of `key` on this node share the first one's outcome."""
        counts = self.counts
        counts["lookups"] += 1
        flight = self.flights.get(key)
        if flight is not None:
            counts["lock_waits"] += 1
            entry, label = await asyncio.shield(flight)
            if entry is not None and entry.fits(call.headers):
                # Counted as what the first one did: a fetch from the target shared is no
                # hit (it would inflate the hit ratio on every cold key), an L2 read is.
                if label == STALE:
                    counts["stale"] += 1
                    return entry.reply(STALE, self.clock())
                counts["hits_l2" if label == HIT_L2 else "coalesced"] += 1
                return entry.reply(HIT_L1, self.clock())
            return (await self.fetch(call, next, key, stale, MISS, store=False))[0]
        flight = self.flights[key] = asyncio.get_running_loop().create_future()
        outcome: tuple[Entry | None, str] = (None, MISS)
        try:
            reply, entry, label = await self.resolve(call, next, key, stale)
            outcome = (entry, label)
            return reply
        finally:
            del self.flights[key]
            flight.set_result(outcome)

    async def resolve(
        self, call: Call, next: Handler, key: str, stale: Entry | None
    ) -> tuple[Reply, Entry | None, str]:
        found, l2_up = await self.read_l2(key)
        headers = call.headers
        if found is not None and found.selects and not found.fits(headers):  # section 4.1
            # Another variant is the latest under `key`; this request's has its own key.
            key = found.variant_for(key, headers)
            found, l2_up = await self.read_l2(key)
            if found is not None and not found.fits(headers):
                found = None
        now = self.clock()
        if stale is not None and stale.selects and not stale.fits(headers):
            stale = None
        if found is not None and now < found.fresh_until:
            self.l1.put(key, found, now)
            self.counts["hits_l2"] += 1
            return found.reply(HIT_L2, now), found, HIT_L2
        if found is not None and (stale is None or found.stored_at > stale.stored_at):
            stale = found
        if stale is not None and now < stale.stale_until and call.method == "GET":
            self.counts["stale"] += 1
            self.refresh_later(call, next, key, stale)
            return stale.reply(STALE, now), stale, STALE
        if not l2_up:
            return await self.fetch(call, next, key, stale, BYPASS, store=True)
        if call.method == "HEAD":  # a HEAD reply has no body to store for GET
            return await self.fetch(call, next, key, stale, MISS, store=False)
        return await self.filler.fill(self, call, next, key, stale)

    async def read_l2(self, key: str) -> tuple[Entry | None, bool]:
        """(the L2 entry or None, whether L2 answered)."""
        if not self.filler.l2.available:
            return None, False
        try:
            blob = await self.filler.l2.get(key)
        except BackendUnavailable:
            self.counts["backend_errors"] += 1
            return None, False
        return decoded(blob), True

    async def fetch(
        self, call: Call, next: Handler, key: str, stale: Entry | None, label: str, store: bool
    ) -> tuple[Reply, Entry | None, str]:
        """Ask the target (revalidating `stale` when storing); store what may be stored;
        cover its failure with `stale`."""
        request_time = self.clock()
        storing = store and call.method == "GET"
        sent = forwarded(call, stale) if storing else call
        try:
            reply = await next(sent)
        except TARGET_FAILURES as exc:
            if stale is not None and self.clock() < stale.stale_error_until:
                self.counts["stale"] += 1
                return stale.reply(STALE, self.clock()), None, STALE
            if stale is not None and stale.must_revalidate and isinstance(exc, BadGateway):
                raise unrevalidated(exc, label) from exc
            passing(exc, label)
            raise
        except Rejected as exc:
            passing(exc, label)
            raise
        now = self.clock()
        if reply.status >= 500 and stale is not None and now < stale.stale_error_until:
            self.counts["stale"] += 1
            return stale.reply(STALE, now), None, STALE
        self.counts["misses" if label == MISS else "bypass"] += 1
        if reply.status == 304 and stale is not None and sent is not call:
            # RFC 9111 section 4.3.4: the stored reply, freshened by the 304's fields.
            reply = updated(stale, reply)
            label = REVALIDATED if label == MISS else label
        entry = self.admit(call, reply, request_time, now) if storing else None
        if entry is None:
            return labelled(untargeted(reply), label), None, label
        await self.keep(key, entry, now)
        return entry.reply(label, now), entry, label

    async def keep(self, key: str, entry: Entry, now: float) -> None:
        """In L1 and L2 under `key`; a variant (its reply had Vary) also under its own key,
        so that several variants stay stored side by side (RFC 9111 section 4.1)."""
        primary = key.partition(VARIANT)[0]
        self.l1.put(primary, entry, now)
        await self.filler.store(primary, entry, now)
        if entry.selects:
            variant = entry.own_variant(primary)
            self.l1.put(variant, entry, now)
            await self.filler.store(variant, entry, now)

    def admit(self, call: Call, reply: Reply, request_time: float, now: float) -> Entry | None:
        """The entry to store for `reply`, or None when it must not be stored."""
        if not storable(reply, self.statuses, self.settings.max_body):
            return None
        return self.admission.entry(call, reply, request_time, now)

    def refresh_later(self, call: Call, next: Handler, key: str, stale: Entry) -> None:
        """One background refresh per key per node; the fill lock makes it one per cluster."""
        if key in self.refreshing:
            return
        self.refreshing.add(key)
        task = asyncio.ensure_future(self.refresh(call, next, key, stale))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def refresh(self, call: Call, next: Handler, key: str, stale: Entry) -> None:
        try:
            await self.filler.refresh(self, call, next, key, stale)
        except (Rejected, BackendUnavailable):
            pass  # the stale entry keeps serving until its window closes
        finally:
            self.refreshing.discard(key)

    async def write_through(self, call: Call, next: Handler) -> Reply:
        """A method not known to be safe: the target answers, then the entries of its path
        (and of its reply's same-origin Location / Content-Location) go everywhere."""
        try:
            reply = await next(call)
        except Rejected as exc:
            passing(exc, BYPASS)
            raise
        if reply.status < 400:  # RFC 9111 section 4.4: only a non-error status invalidates
            for path in invalidated_uris(call, reply):
                self.counts["invalidations"] += 1
                await self.invalidate("path", path)
        self.counts["bypass"] += 1
        return labelled(reply, BYPASS)

    def snapshot(self) -> dict[str, Any]:
        counters = {"hits_l1": self.hits_l1, **self.counts, "evictions": self.l1.evictions}
        lookups = counters["lookups"] = self.hits_l1 + self.counts["lookups"]
        # Hits are answers from a stored fresh entry; stale answers and coalesced waits
        # count as lookups only (docs/plugins/cache.md).
        hits = counters["hits_l1"] + counters["hits_l2"]
        return {
            "counters": counters,
            "gauges": {
                "l1_entries": len(self.l1.entries),
                "l1_bytes": self.l1.bytes,
                "hit_ratio": round(hits / lookups, 4) if lookups else 0.0,
                "backend_available": int(self.filler.l2.available),
            },
        }
