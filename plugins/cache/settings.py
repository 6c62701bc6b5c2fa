"""The `cache` route table, validated into frozen settings (errors name the key path)."""

from __future__ import annotations

from dataclasses import dataclass

from node.schema import join, require

MiB = 1024 * 1024
MAX_L1_TTL = 60.0  # seconds; L1 is only briefly stale by design, a longer one defeats that
MAX_LOCK_TIMEOUT = 60.0  # seconds a cold request may wait for another node's fetch


@dataclass(frozen=True, slots=True)
class CacheSettings:
    # seconds a heuristically cacheable reply that declares no freshness is fresh; 0: only
    # the origin's headers (and the Last-Modified heuristic) decide, RFC 9111 alone
    ttl: float = 30.0
    l1_ttl: float = 5.0  # seconds a node keeps its in-process copy; 0 turns L1 off
    l1_max_entries: int = 10_000
    l1_max_bytes: int = 64 * MiB
    max_body: int = MiB  # larger bodies are passed through, never stored
    vary: tuple[str, ...] = ()  # request headers whose values are part of the key
    statuses: tuple[int, ...] = (200, 301, 404)  # as Kong's proxy-cache
    stale_while_revalidate: float = 0.0  # seconds a stale entry is served while one refresh runs
    stale_if_error: float = 0.0  # seconds a stale entry is served when the target fails
    lock_timeout: float = 5.0  # seconds others wait for the one fetch, as nginx's cache lock

    def check(self, path: str) -> None:
        require(self.ttl >= 0, join(path, "ttl"), "must be >= 0 seconds")
        require(
            0 <= self.l1_ttl <= MAX_L1_TTL,
            join(path, "l1_ttl"),
            f"must be between 0 (L1 off) and {MAX_L1_TTL:g} seconds",
        )
        require(self.l1_max_entries > 0, join(path, "l1_max_entries"), "must be > 0")
        require(self.l1_max_bytes > 0, join(path, "l1_max_bytes"), "must be > 0")
        require(self.max_body > 0, join(path, "max_body"), "must be > 0")
        for i, name in enumerate(self.vary):
            require(
                bool(name.strip()) and ":" not in name,
                join(join(path, "vary"), i),
                f"must be a header name, got {name!r}",
            )
        require(bool(self.statuses), join(path, "statuses"), "must name at least one status")
        for i, status in enumerate(self.statuses):
            require(100 <= status <= 599, join(join(path, "statuses"), i), "must be an HTTP status")
        for key in ("stale_while_revalidate", "stale_if_error"):
            require(getattr(self, key) >= 0, join(path, key), "must be >= 0 seconds")
        require(
            0 < self.lock_timeout <= MAX_LOCK_TIMEOUT,
            join(path, "lock_timeout"),
            f"must be > 0 and <= {MAX_LOCK_TIMEOUT:g} seconds",
        )
