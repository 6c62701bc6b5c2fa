"""What goes to the target and what comes back into the cache: the request a storing fetch
sends (its validators, not the client's), the entry a reply becomes, a stored entry
refreshed by a 304, and the URIs an unsafe request invalidates. Pure functions."""

from __future__ import annotations

from email.utils import formatdate
from urllib.parse import urljoin, urlsplit

from multidict import CIMultiDict

from node.call import Call, Reply
from plugins.cache.conditional import CLIENT_ONLY, IF_MODIFIED_SINCE, IF_NONE_MATCH
from plugins.cache.entry import Entry, stored_headers
from plugins.cache.freshness import (
    TARGETED,
    Lifetime,
    assess,
    header,
    list_items,
    normalised,
)

MAX_TAGS = 16  # Cache-Tag values kept per entry: each is an index write on a miss
# RFC 9110 section 9.2.1; any other method, unknown ones included, invalidates (9111 4.4).
SAFE = frozenset(("GET", "HEAD", "OPTIONS", "TRACE"))
# Fields of a 304 that never replace the stored ones (RFC 9111 section 3.2): the stored
# body's framing stays its own.
NOT_UPDATED = frozenset(("content-length", "content-range", "transfer-encoding"))


class Admission:
    """One route's storing rules: which replies become entries and how they are keyed."""

    def __init__(self, default: Lifetime, statuses: frozenset[int], keyed: frozenset[str]) -> None:
        self.default = default
        self.statuses = statuses
        self.keyed = keyed  # lower-case names the key already holds (the route's `vary`)

    def entry(self, call: Call, reply: Reply, request_time: float, now: float) -> Entry | None:
        """The entry `reply` becomes, or None when a shared cache must not store it."""
        headers = reply.headers
        authorized = "Authorization" in call.headers
        assessment = assess(headers, reply.status, self.default, authorized, request_time, now)
        if assessment is None:
            return None
        varies = [name.lower() for name in list_items(headers, "Vary")]
        if "*" in varies:  # RFC 9111 section 4.1: `Vary: *` never matches; not worth storing
            return None
        selects = tuple(
            (name, normalised(call.headers, name))
            for name in dict.fromkeys(varies)
            if name not in self.keyed
        )
        times = assessment.times()
        if times[4] <= now:
            return None
        hidden = assessment.hidden  # section 5.2.2.7: `private="name"` fields stay out
        pairs = [(k, v) for k, v in headers.items() if k.lower() not in hidden]
        if header(headers, "Date") is None:  # RFC 9110 6.6.1: a cached reply gets one
            pairs.append(("Date", formatdate(now, usegmt=True)))
        tags = tuple((header(headers, "Cache-Tag") or "").replace(",", " ").split())
        return Entry(
            reply.status,
            reply.body,
            stored_headers(pairs),
            reply.content_type,
            call.path,
            tags[:MAX_TAGS],
            times,
            selects,
            assessment.must_revalidate,
        )


def forwarded(call: Call, stale: Entry | None) -> Call:
    """The call a storing fetch sends: without the client's conditional and Range headers
    (the cache wants the whole reply and answers those itself), with the stale entry's
    validators (RFC 9111 section 4.3.1) when it has some."""
    headers = call.headers
    validating = stale is not None and (stale.etag or stale.last_modified)
    if not validating and not any(name in headers for name in CLIENT_ONLY):
        return call
    sent_headers = CIMultiDict(headers)
    for name in CLIENT_ONLY:
        sent_headers.popall(name, None)
    if stale is not None:
        if stale.etag:
            sent_headers[IF_NONE_MATCH] = stale.etag
        if stale.last_modified:
            sent_headers[IF_MODIFIED_SINCE] = stale.last_modified
    sent = Call(
        call.method,
        call.path,
        call.raw_path,
        call.route,
        call.params,
        call.query_string,
        sent_headers,
        call.body,
        call.client,
        call.scheme,
        call.host,
        call.shard,
    )
    sent.peer = call.peer
    sent.added_headers = call.added_headers
    sent._request_id = call.request_id  # one id in the log for both
    return sent


def updated(stale: Entry, not_modified: Reply) -> Reply:
    """The stored reply with the 304's header fields in place of its own (section 4.3.4)."""
    headers: CIMultiDict[str] = CIMultiDict(stale.headers)
    fresh = not_modified.headers
    for name in {k.lower() for k in fresh} - NOT_UPDATED:
        headers.popall(name, None)
    for name, value in fresh.items():
        if name.lower() not in NOT_UPDATED:
            headers.add(name, value)
    return Reply(stale.status, stale.body, headers, stale.content_type)


def untargeted(reply: Reply) -> Reply:
    """`reply` without the fields meant for this cache alone: RFC 9213 section 2.2 (and the
    issue's own Scalenode-Cache-Control) have them used here, not forwarded."""
    headers = reply.headers
    if any(header(headers, name) is not None for name in TARGETED):
        copied: CIMultiDict[str] = CIMultiDict(headers)
        for name in TARGETED:
            copied.popall(name, None)
        reply.headers = copied
    return reply


def invalidated_uris(call: Call, reply: Reply) -> list[str]:
    """The paths an unsafe request's success invalidates (RFC 9111 section 4.4): its own,
    and its reply's Location and Content-Location when they name the same origin."""
    paths = [call.path]
    base = f"{call.scheme}://{call.host}{call.path}"
    origin = urlsplit(base)[:2]
    for name in ("Location", "Content-Location"):
        value = header(reply.headers, name)
        if not value:
            continue
        target = urlsplit(urljoin(base, value.strip()))
        if target[:2] == origin and target.path not in paths:
            paths.append(target.path)
    return paths
