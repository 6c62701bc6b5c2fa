"""What is cached and under which key: pure functions of the request and the origin's reply.

Cache-Control follows RFC 9111 for a shared cache: `no-store`, `private` and `no-cache`
(this cache does not revalidate) keep a reply out; `s-maxage` wins over `max-age`, which
wins over the route's `ttl`; its `stale-while-revalidate` and `stale-if-error` override
the route's.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache

from node.call import Call, Reply

MAX_KEY_LENGTH = 240  # characters; a longer key is kept readable up to here, then hashed
SEP = "\x1f"  # between key parts: no header value or path holds it unescaped
UNCACHEABLE = frozenset(("no-store", "private", "no-cache"))


def route_tag(route: str) -> str:
    """A short, stable digest of the route label: keys stay small whatever the label."""
    return hashlib.blake2b(route.encode(), digest_size=6).hexdigest()


@lru_cache(maxsize=4096)  # query strings repeat; sorting them need not
def canonical_query(query_string: str) -> str:
    """The query with its parameters sorted, so `?a=1&b=2` and `?b=2&a=1` share an entry."""
    return "&".join(sorted(query_string.split("&")))


class KeyBuilder:
    """Builds one route's keys: route, path, sorted query and the `vary` headers' values."""

    def __init__(self, route: str, vary: tuple[str, ...]) -> None:
        self.prefix = route_tag(route) + ":"
        self.vary = vary

    def of(self, call: Call) -> str:
        """The key of a call (its headers are read only when the route varies on some)."""
        query = call.query_string
        if not query and not self.vary:
            key = self.prefix + call.path
            if len(key) <= MAX_KEY_LENGTH:
                return key
        return self(call.path, query, call.headers if self.vary else {})

    def __call__(self, path: str, query_string: str, headers: Mapping[str, str]) -> str:
        key = self.prefix + path
        if query_string:
            key += "?" + canonical_query(query_string)
        if self.vary:
            key += SEP + SEP.join([headers.get(name, "") for name in self.vary])
        if len(key) > MAX_KEY_LENGTH:
            digest = hashlib.blake2b(key.encode(), digest_size=16).hexdigest()
            key = key[: MAX_KEY_LENGTH - 34] + "#" + digest
        return key


def parse_cache_control(value: str) -> dict[str, str | None]:
    """`max-age=60, no-transform` → {"max-age": "60", "no-transform": None}."""
    directives: dict[str, str | None] = {}
    for part in value.split(","):
        name, eq, argument = part.strip().partition("=")
        if name:
            directives[name.lower()] = argument.strip().strip('"') if eq else None
    return directives


def seconds(value: str | None) -> float | None:
    """A delta-seconds argument, or None when missing or malformed."""
    if value is None or not value.isdigit():
        return None
    return float(value)


@dataclass(frozen=True, slots=True)
class Lifetime:
    ttl: float
    stale_while_revalidate: float
    stale_if_error: float


def lifetime(
    cache_control: str | None, default: Lifetime, authorized: bool = False
) -> Lifetime | None:
    """How long a reply may be stored and served, or None when it must not be stored.

    `authorized`: the request carried Authorization, so only an explicitly shareable
    reply (`public` or `s-maxage`) is stored (RFC 9111 section 3.5)."""
    if not cache_control:
        return None if authorized else default
    directives = parse_cache_control(cache_control)
    if not UNCACHEABLE.isdisjoint(directives):
        return None
    if authorized and "public" not in directives and "s-maxage" not in directives:
        return None
    ttl = default.ttl
    for name in ("s-maxage", "max-age"):
        if name in directives:
            given = seconds(directives[name])
            if not given:  # max-age=0 or malformed: stale at once, so not worth storing
                return None
            ttl = given
            break
    swr = seconds(directives.get("stale-while-revalidate"))
    sie = seconds(directives.get("stale-if-error"))
    return Lifetime(
        ttl,
        default.stale_while_revalidate if swr is None else swr,
        default.stale_if_error if sie is None else sie,
    )


def varies_within(vary: str | None, keyed: frozenset[str]) -> bool:
    """True when the reply's `Vary` names only headers the key includes (never `*`)."""
    if not vary:
        return True
    names = {name.strip().lower() for name in vary.split(",") if name.strip()}
    return "*" not in names and names <= keyed


def storable(reply: Reply, statuses: frozenset[int], max_body: int) -> bool:
    """Status, size and shape allow storing: no stream, no Set-Cookie (as nginx)."""
    return (
        reply.stream is None
        and reply.status in statuses
        and len(reply.body) <= max_body
        and "Set-Cookie" not in reply.headers
        and "set-cookie" not in reply.headers
    )
