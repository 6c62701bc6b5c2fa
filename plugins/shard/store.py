"""The `store:NAME` target: a JSON document store by key over a shard set.

    PUT    /users/{key}   create or replace (If-Match, If-None-Match: *)   201 / 200, ETag
    GET    /users/{key}   the document (If-None-Match -> 304)              200, ETag
    PATCH  /users/{key}   a JSON merge patch, RFC 7396 (If-Match)          200, ETag
    DELETE /users/{key}   (If-Match)                                       204
    GET    /users         ?limit=&after=&prefix=&partial=  keys in order, from every member

Conditional requests follow RFC 9110 section 13 (strong comparison for If-Match, weak for
If-None-Match). Every reply names its member in X-Shard. A write's reply carries
X-Consistency-Token (member=LSN); a read that sends it back is served only by a copy that
has replayed that far (read-your-writes), else by the member's primary.
"""

from __future__ import annotations

import asyncio
import heapq
import time
from typing import Any

import orjson

from node.call import JSON_TYPE, Call, Reply
from node.errors import Rejected, ServiceUnavailable
from plugins.shard.buckets import bucket_of
from plugins.shard.documents import (
    Document,
    Fenced,
    NotFound,
    PreconditionFailed,
    ShardUnavailable,
    Written,
)
from plugins.shard.members import Member, MemberStats, ShardSet
from plugins.shard.store_stats import store_snapshot

MAX_KEY = 512  # bytes of a key (UTF-8)
MAX_LIMIT = 1000  # documents in one page of a list
DEFAULT_LIMIT = 100
RETRY_AFTER = "5"  # seconds, when a member does not answer
TOKEN = "X-Consistency-Token"
MERGE_PATCH = ("application/merge-patch+json", "application/json")
# A call that meets a bucket being moved waits for the move's switch and goes to the new
# owner (or back to the old one, if the move is rolled back): for at most FENCE_WAIT
# seconds (Vitess buffers as long, `buffer_window`), asking the members for the map every
# FENCE_RETRY seconds. A batch of 16 buckets switches in milliseconds to a second.
FENCE_WAIT = 10.0
FENCE_RETRY = 0.02


def etag_header(etag: str) -> str:
    return f'"{etag}"'


def listed_etags(value: str) -> list[str]:
    """The entity tags of an If-Match / If-None-Match value, without quotes or W/."""
    tags = []
    for part in value.split(","):
        tag = part.strip()
        if tag.startswith("W/"):
            tag = tag[2:]
        tags.append(tag.strip('"'))
    return tags


class StoreTarget:
    """One route's view of a shard set: its members, their bucket map, the route's key."""

    name = "store"

    def __init__(
        self,
        set_name: str,
        shard_set: ShardSet,
        key_param: str | None,
        *,
        timeout: float,
        fan_out: int,
    ) -> None:
        self.set_name = set_name
        self.shard_set = shard_set
        self.members = shard_set.members
        # This route's own counts per member (the members, and their pools, are the set's).
        self.stats = {member.name: MemberStats() for member in self.members}
        self.buckets = shard_set.buckets
        self.key_param = key_param  # None: the route is the collection (a list)
        self.timeout = timeout
        self.fan_out = asyncio.Semaphore(fan_out)
        self.partial_lists = 0

    async def __call__(self, call: Call) -> Reply:
        refusal = self.shard_set.refusal
        if refusal is not None:
            raise ServiceUnavailable(refusal, code="shard_layout_changed")
        if self.key_param is None:
            if call.method not in ("GET", "HEAD"):
                raise Rejected(
                    "a collection is read with GET",
                    status=405,
                    code="method_not_allowed",
                    headers={"Allow": "GET, HEAD"},
                )
            return await self.list(call)
        key = call.params.get(self.key_param, "")
        if not key or len(key.encode()) > MAX_KEY:
            raise Rejected(f"the key must be 1 to {MAX_KEY} bytes", code="bad_key")
        bucket = bucket_of(key, self.buckets)
        started = time.perf_counter()
        deadline = 0.0
        while True:
            member = self.shard_set.owner(bucket)
            if member is None:
                raise ServiceUnavailable(
                    f"shard set {self.set_name}: the bucket map is not known yet",
                    code="shard_unavailable",
                    headers={"Retry-After": RETRY_AFTER},
                )
            try:
                reply = await self.at_member(call, member, bucket, key)
                break
            except Fenced:
                # A rebalance moves this bucket (or has moved it): read the map again.
                self.stats[member.name].fenced += 1
                now = time.perf_counter()
                deadline = deadline or now + FENCE_WAIT
                if now > deadline:
                    raise ServiceUnavailable(
                        f"bucket {bucket} of {self.set_name} is being moved",
                        code="shard_moving",
                        headers={"Retry-After": "1", "X-Shard": member.name},
                    ) from None
                await self.shard_set.refresh()
                if self.shard_set.owner(bucket) is member:
                    await asyncio.sleep(FENCE_RETRY)
        self.shard_set.timings[member.name].took(time.perf_counter() - started)
        reply.headers["X-Shard"] = member.name  # type: ignore[index]
        return reply

    async def at_member(self, call: Call, member: Member, bucket: int, key: str) -> Reply:
        try:
            if member.name not in self.shard_set.confirmed:
                await self.confirmed(member)
            return await self.by_key(call, member, bucket, key)
        except Rejected as exc:
            exc.headers.setdefault("X-Shard", member.name)
            raise
        except ShardUnavailable as exc:
            self.stats[member.name].unavailable += 1
            raise ServiceUnavailable(
                f"shard {member.name} of {self.set_name} does not answer: {exc}",
                code="shard_unavailable",
                headers={"Retry-After": RETRY_AFTER, "X-Shard": member.name},
            ) from None

    async def confirmed(self, member: Member) -> None:
        """A member down at start is checked on its first call, before any data moves."""
        await self.shard_set.confirm(member)
        refusal = self.shard_set.refusal
        if refusal is not None:
            raise ServiceUnavailable(refusal, code="shard_layout_changed")

    async def by_key(self, call: Call, member: Member, bucket: int, key: str) -> Reply:
        method = call.method
        if method in ("GET", "HEAD"):
            self.stats[member.name].reads += 1
            return await self.get(call, member, bucket, key)
        self.stats[member.name].writes += 1
        if_match = call.headers.get("If-Match")
        expected = None
        if if_match is not None and if_match.strip() != "*":
            tags = listed_etags(if_match)
            if len(tags) != 1:
                raise Rejected("If-Match takes one entity tag here", code="bad_precondition")
            expected = tags[0]
        try:
            if method == "PUT":
                written = await self.put(call, member, bucket, key, expected)
            elif method == "PATCH":
                written = await self.patch(call, member, bucket, key, expected)
            elif method == "DELETE":
                written = await member.primary.delete(bucket, key, if_match=expected)
            else:
                raise Rejected(
                    f"{method} is not allowed on a document",
                    status=405,
                    code="method_not_allowed",
                    headers={"Allow": "GET, HEAD, PUT, PATCH, DELETE"},
                )
        except PreconditionFailed as exc:
            detail = str(exc) or "the precondition failed"
            raise Rejected(detail, status=412, code="precondition_failed") from None
        except NotFound:
            raise Rejected(f"no document {key!r}", status=404, code="not_found") from None
        return self.written_reply(call, member, written)

    async def put(
        self, call: Call, member: Member, bucket: int, key: str, expected: str | None
    ) -> Written:
        body = parse_json(call.body)[1]
        if_none_match = call.headers.get("If-None-Match", "").strip() == "*"
        if call.headers.get("If-Match", "").strip() == "*":
            current = await member.primary.get(bucket, key)  # If-Match: * needs a document
            if current is None:
                raise PreconditionFailed("If-Match: * and there is no document")
            expected = current.etag
        return await member.primary.put(
            bucket, key, body, if_match=expected, if_none_match=if_none_match
        )

    async def patch(
        self, call: Call, member: Member, bucket: int, key: str, expected: str | None
    ) -> Written:
        kind = (call.headers.get("Content-Type") or JSON_TYPE).split(";")[0].strip().lower()
        if kind not in MERGE_PATCH:
            raise Rejected(
                f"PATCH takes application/merge-patch+json, got {kind}",
                status=415,
                code="unsupported_media_type",
            )
        return await member.primary.patch(bucket, key, parse_json(call.body)[0], if_match=expected)

    def written_reply(self, call: Call, member: Member, written: Written) -> Reply:
        headers: dict[str, str] = {}
        if written.lsn is not None:
            headers[TOKEN] = f"{member.name}={written.lsn}"
        document = written.document
        if document is None:
            return Reply(204, b"", headers)
        headers["ETag"] = etag_header(document.etag)
        if written.created:
            headers["Location"] = call.raw_path
        return Reply(201 if written.created else 200, document.body, headers, JSON_TYPE)

    async def get(self, call: Call, member: Member, bucket: int, key: str) -> Reply:
        document = await self.read(call, member, bucket, key)
        if document is None:
            raise Rejected(f"no document {key!r}", status=404, code="not_found")
        headers = {"ETag": etag_header(document.etag)}
        wanted = call.headers.get("If-None-Match")
        if wanted is not None and (wanted.strip() == "*" or document.etag in listed_etags(wanted)):
            return Reply(304, b"", headers)  # RFC 9110 13.1.2: weak comparison
        return Reply(200, document.body, headers, JSON_TYPE)

    async def read(self, call: Call, member: Member, bucket: int, key: str) -> Document | None:
        """From a replica that is recent enough (and has replayed the client's token), else
        from the primary; with the primary down, from any replica that answers."""
        lag = member.lag
        if lag is None:
            return await member.primary.get(bucket, key)
        choice = await lag.pick(token_lsn(call, member.name))
        if choice is None:
            self.stats[member.name].fallbacks += 1
        else:
            try:
                document = await member.replicas[choice].get(bucket, key)
            except (ShardUnavailable, Fenced):
                pass  # the primary answers instead (a replica behind a move's switch too)
            else:
                self.stats[member.name].replica_reads += 1
                return document
        try:
            return await member.primary.get(bucket, key)
        except ShardUnavailable:
            for replica in member.replicas:  # stale beats nothing for a plain read
                if token_lsn(call, member.name) is not None:
                    break  # but never for a read that asked to see its write
                try:
                    return await replica.get(bucket, key)
                except (ShardUnavailable, Fenced):
                    continue
            raise

    async def list(self, call: Call) -> Reply:
        query = call.query
        try:
            limit = int(query.get("limit", DEFAULT_LIMIT))
        except ValueError:
            limit = -1
        if not 1 <= limit <= MAX_LIMIT:
            raise Rejected(f"limit must be 1 to {MAX_LIMIT}", code="bad_limit")
        after, prefix = query.get("after"), query.get("prefix")
        partial_ok = query.get("partial", "").lower() in ("1", "true", "yes")
        # One map version for every member, so no bucket is listed twice or missed.
        owned = self.shard_set.owned()
        tasks = [
            self.scan_member(member, owned[member.name], after, prefix, limit)
            for member in self.members
            if owned[member.name]
        ]
        results = await asyncio.gather(*tasks)
        pages = [page for _, page in results if page is not None]
        missing = [name for name, page in results if page is None]
        if missing and not partial_ok:
            raise ServiceUnavailable(
                f"shard(s) {', '.join(missing)} of {self.set_name} do not answer; "
                "ask with partial=true for the others' documents",
                code="shard_unavailable",
                headers={"Retry-After": RETRY_AFTER},
            )
        merged = list(heapq.merge(*pages, key=lambda document: document.key))[:limit]
        # A partial page gives no cursor: the missing members' keys before it would be
        # skipped for good (../shared/reference/sharding.md §6).
        following = merged[-1].key if len(merged) == limit and not missing else None
        if missing:
            self.partial_lists += 1
        body = {
            "items": [
                {"key": d.key, "etag": d.etag, "doc": orjson.Fragment(d.body)} for d in merged
            ],
            "next": following,
            "partial": bool(missing),
            "missing_shards": missing,
        }
        return Reply(200, orjson.dumps(body), {}, JSON_TYPE)

    async def scan_member(
        self,
        member: Member,
        buckets: list[int],
        after: str | None,
        prefix: str | None,
        limit: int,
    ) -> tuple[str, list[Document] | None]:
        async with self.fan_out:
            try:
                if member.name not in self.shard_set.confirmed:
                    await self.shard_set.confirm(member)
                    if self.shard_set.refusal is not None:
                        return member.name, None
                page = await asyncio.wait_for(
                    member.primary.scan(buckets, after=after, prefix=prefix, limit=limit),
                    self.timeout,
                )
            except (ShardUnavailable, TimeoutError):
                self.stats[member.name].unavailable += 1
                return member.name, None
        return member.name, page

    def snapshot(self) -> dict[str, Any]:
        return store_snapshot(self.set_name, self.shard_set, self.stats, self.partial_lists)


def parse_json(body: bytes) -> tuple[Any, bytes]:
    """The body parsed, and as the compact JSON the store keeps."""
    if not body:
        raise Rejected("the body must be a JSON document; it is empty", code="bad_json")
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise Rejected(f"the body is not JSON: {exc}", code="bad_json") from None
    compact = orjson.dumps(parsed)
    if b"\\u0000" in compact:  # PostgreSQL's jsonb cannot hold U+0000
        raise Rejected("the body holds U+0000 in a string, which cannot be stored", code="bad_json")
    return parsed, compact


def token_lsn(call: Call, member: str) -> str | None:
    """The LSN the client's X-Consistency-Token names for `member`, if any."""
    token = call.headers.get(TOKEN)
    if not token:
        return None
    name, _, lsn = token.partition("=")
    return lsn if name == member and lsn else None
