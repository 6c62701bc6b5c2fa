"""L1: a node's in-process copy of entries, bounded by count and bytes, least recently used
out first; each entry also leaves at its `l1_until` so a node is only briefly stale."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

from plugins.cache.entry import Entry


class L1Cache:
    def __init__(self, ttl: float, max_entries: int, max_bytes: int) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.entries: OrderedDict[str, Entry] = OrderedDict()
        self.bytes = 0
        self.evictions = 0

    def get(self, key: str, now: float) -> Entry | None:
        entry = self.entries.get(key)
        if entry is None:
            return None
        if entry.l1_until <= now:
            self.discard(key)
            return None
        self.entries.move_to_end(key)
        return entry

    def put(self, key: str, entry: Entry, now: float) -> None:
        """Keep `entry` for at most `ttl` seconds (and never past its own expiry)."""
        if self.ttl <= 0 or entry.size > self.max_bytes:
            return
        self.discard(key)
        entry.l1_until = min(now + self.ttl, entry.expires)
        entry.hit_until = min(entry.l1_until, entry.fresh_until)
        self.entries[key] = entry
        self.bytes += entry.size
        while len(self.entries) > self.max_entries or self.bytes > self.max_bytes:
            _, oldest = self.entries.popitem(last=False)
            self.bytes -= oldest.size
            self.evictions += 1

    def discard(self, key: str) -> None:
        entry = self.entries.pop(key, None)
        if entry is not None:
            self.bytes -= entry.size

    def drop_where(self, predicate: Callable[[Entry], bool]) -> int:
        """Drop every entry `predicate` matches (invalidations: a scan of at most max_entries)."""
        doomed = [key for key, entry in self.entries.items() if predicate(entry)]
        for key in doomed:
            self.discard(key)
        return len(doomed)

    def clear(self) -> None:
        self.entries.clear()
        self.bytes = 0
