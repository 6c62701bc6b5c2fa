"""Under which key a reply is cached, and whether its shape allows storing it at all;
how long it stays fresh is plugins.cache.freshness's (RFC 9111)."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from functools import lru_cache

from node.call import Call, Reply, wire_bytes

MAX_KEY_LENGTH = 240  # characters; a longer key is kept readable up to here, then hashed
SEP = "\x1f"  # between key parts: no header value or path holds it unescaped
# Never stored whatever `statuses` says: a 206 is part of a reply (this cache answers ranges
# from whole ones), a 304 has no body of its own.
NEVER_STORED = frozenset((206, 304))


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
            digest = hashlib.blake2b(wire_bytes(key), digest_size=16).hexdigest()
            key = key[: MAX_KEY_LENGTH - 34] + "#" + digest
        return key


def storable(reply: Reply, statuses: frozenset[int], max_body: int) -> bool:
    """Status, size and shape allow storing: no stream, no Set-Cookie (as nginx)."""
    return (
        reply.stream is None
        and reply.status in statuses
        and reply.status not in NEVER_STORED
        and len(reply.body) <= max_body
        and "Set-Cookie" not in reply.headers
        and "set-cookie" not in reply.headers
    )
