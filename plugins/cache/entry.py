"""A stored reply: the ready body and headers, its freshness deadlines, and its L2 encoding.

A hit copies the headers and sets `X-Cache` and `Age`: nothing else is built per hit.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

import orjson
from multidict import CIMultiDict, istr

from node.call import Reply, wire_bytes
from plugins.cache.freshness import header, normalised

X_CACHE = istr("X-Cache")  # istr: aiohttp skips case-folding these names
AGE = istr("Age")
CONTENT_TYPE = istr("Content-Type")
HIT_L1, HIT_L2, MISS, STALE, BYPASS = "HIT-L1", "HIT-L2", "MISS", "STALE", "BYPASS"
REVALIDATED = "REVALIDATED"  # a stale entry the target confirmed with a 304
# `Age` values as ready strings: formatting a number on every hit costs more than a lookup.
AGES = tuple(str(age) for age in range(3600))
# Headers a stored reply never repeats: per-exchange, recomputed on every hit, or meant for
# this cache alone (RFC 9213's targeted fields). The origin's Date is kept (RFC 9110 6.6.1).
NOT_STORED = frozenset(
    (
        "age",
        "x-cache",
        "connection",
        "keep-alive",
        "set-cookie",
        "scalenode-cache-control",
        "cdn-cache-control",
    )
)
ENTRY_OVERHEAD = 256  # bytes of bookkeeping counted per L1 entry besides body and headers


class Entry:
    __slots__ = (
        "body",
        "content_type",
        "fresh_until",
        "headers",
        "hit_headers",
        "hit_until",
        "keep_until",
        "l1_until",
        "must_revalidate",
        "path",
        "selects",
        "size",
        "stale_error_until",
        "stale_until",
        "status",
        "stored_at",
        "tags",
    )

    def __init__(
        self,
        status: int,
        body: bytes,
        headers: dict[str, str] | CIMultiDict[str],
        content_type: str | None,
        path: str,
        tags: tuple[str, ...],
        times: tuple[float, float, float, float, float] | list[float],
        selects: tuple[tuple[str, str | None], ...] = (),
        must_revalidate: bool = False,
    ) -> None:
        self.status = status
        self.body = body
        self.headers = headers
        self.content_type = content_type
        self.path = path
        self.tags = tags
        # Wall-clock seconds: when its age was 0 (RFC 9111 4.2.3: the time received less
        # the corrected initial age, so Age = now - stored_at), fresh until, servable stale
        # until (while revalidating), servable stale until when the target fails, kept until.
        (
            self.stored_at,
            self.fresh_until,
            self.stale_until,
            self.stale_error_until,
            self.keep_until,
        ) = times
        # Section 4.1: the request headers its Vary names (beyond the key's) and their
        # normalised values when it was stored; () for most replies.
        self.selects = selects
        # Section 5.2.2.2: once stale, an origin out of reach means a 504, not this copy.
        self.must_revalidate = must_revalidate
        self.l1_until = self.hit_until = 0.0  # set when L1 takes it
        self.size = ENTRY_OVERHEAD + len(body) + sum(len(k) + len(v) for k, v in headers.items())
        # An L1 hit's headers, ready but for Age: one copy and one store per hit.
        self.hit_headers = headers.copy()
        if content_type is not None:
            self.hit_headers[CONTENT_TYPE] = content_type
        self.hit_headers[X_CACHE] = HIT_L1

    @property
    def expires(self) -> float:
        return self.keep_until

    @property
    def etag(self) -> str | None:
        """Its validators, read when it is revalidated (never on a hit)."""
        return header(self.headers, "ETag")

    @property
    def last_modified(self) -> str | None:
        return header(self.headers, "Last-Modified")

    def fits(self, headers: Mapping[str, str]) -> bool:
        """The request's selecting headers match those it was stored for (section 4.1)."""
        return all(normalised(headers, name) == value for name, value in self.selects)

    def variant_for(self, key: str, headers: Mapping[str, str]) -> str:
        """The key under which the variant a request with `headers` selects is stored,
        by the names this entry's Vary gave (RFC 9111 section 4.1: a cache may keep
        several variants). Each variant is stored under its own key and, the latest one,
        under `key` too, where a request learns which names select."""
        return variant_key(key, [normalised(headers, name) for name, _ in self.selects])

    def own_variant(self, key: str) -> str:
        """The key of this entry's own variant."""
        return variant_key(key, [value for _, value in self.selects])

    def reply(self, label: str, now: float) -> Reply:
        headers = self.headers.copy()
        headers[X_CACHE] = label
        age = int(now - self.stored_at)
        headers[AGE] = AGES[age] if 0 <= age < 3600 else str(max(age, 0))
        return Reply(self.status, self.body, headers, self.content_type)

    def hit(self, now: float) -> Reply:
        """The L1 hit's reply (the hot path): Content-Type is in the headers already."""
        headers = self.hit_headers.copy()
        age = int(now - self.stored_at)
        headers[AGE] = AGES[age] if 0 <= age < 3600 else str(max(age, 0))
        return Reply(self.status, self.body, headers)

    def encode(self) -> bytes:
        """For L2: a JSON line of metadata, then the body as it is."""
        meta = [
            self.status,
            self.content_type,
            list(self.headers.items()),
            self.path,
            self.tags,
            [
                self.stored_at,
                self.fresh_until,
                self.stale_until,
                self.stale_error_until,
                self.keep_until,
            ],
            self.selects,
            self.must_revalidate,
        ]
        return orjson.dumps(meta) + b"\n" + self.body

    @classmethod
    def decode(cls, blob: bytes) -> Entry:
        """Raises ValueError on a blob this version did not write."""
        meta, newline, body = blob.partition(b"\n")
        if not newline:
            raise ValueError("not a cache entry")
        # ValueError (unpacking) on a blob of another version, whose list is another length
        status, content_type, pairs, path, tags, times, selects, strict = orjson.loads(meta)
        # Filtered when stored: only a repeated name needs more than a dict.
        headers: dict[str, str] | CIMultiDict[str] = {istr(k): v for k, v in pairs}
        if len(headers) < len(pairs):
            headers = CIMultiDict((istr(k), v) for k, v in pairs)
        selecting = tuple(map(tuple, selects)) if selects else ()
        return cls(status, body, headers, content_type, path, tuple(tags), times, selecting, strict)


VARIANT = "\x1fv:"  # between a key and its variant's digest (\x1f: see policy.SEP)


def variant_key(key: str, values: list[str | None]) -> str:
    """`key` and a digest of the selecting values (None, a header absent, differs from "")."""
    text = "\x00".join("\x01" if value is None else value for value in values)
    return key + VARIANT + hashlib.blake2b(wire_bytes(text), digest_size=8).hexdigest()


def decoded(blob: bytes | None) -> Entry | None:
    if blob is None:
        return None
    try:
        return Entry.decode(blob)
    except ValueError:  # written by another version: a miss
        return None


def stored_headers(pairs: list[tuple[str, str]] | list[list[str]]) -> dict[str, str] | CIMultiDict:
    """A plain dict (cheapest to copy per hit) unless a name repeats."""
    kept = [(istr(k), v) for k, v in pairs if k.lower() not in NOT_STORED]
    names = {k.lower() for k, _ in kept}
    if len(names) == len(kept):
        return dict(kept)
    return CIMultiDict(kept)
