"""Named pools of HTTP upstreams: members, balancing, and the client that talks to them.

The client sits behind the small `UpstreamClient` interface so a faster transport can
replace `AiohttpClient` without touching the proxy or the plugins.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import itertools
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from typing import Protocol
from urllib.parse import urlsplit

import aiohttp
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from node.call import Reply
from node.errors import BadGateway, GatewayTimeout, UpstreamUnreachable
from node.upstream.failover import Failover, MemberCircuit, member_snapshot
from node.upstream.ring import HashRing
from node.upstream.settings import UpstreamSettings

# Upstream responses up to this size are read whole (the fast path, and cacheable);
# longer or unsized ones are streamed through to the client chunk by chunk.
READ_WHOLE_LIMIT = 1024 * 1024
STREAM_CHUNK = 64 * 1024

HOP_BY_HOP = frozenset(
    h.lower()
    for h in (
        "Connection",
        "Keep-Alive",
        "Proxy-Authenticate",
        "Proxy-Authorization",
        "Proxy-Connection",
        "TE",
        "Trailer",
        "Trailers",
        "Transfer-Encoding",
        "Upgrade",
    )
)


# What a proxied reply loses: hop-by-hop headers, and its length (the node frames the body
# itself) except on HEAD, where it describes the GET body.
REPLY_DROP = HOP_BY_HOP | {"content-length"}
HEAD_REPLY_DROP = HOP_BY_HOP


# A request's header lines as an upstream client sends them, in order (the client adds
# Host and the body's framing).
RequestHeaders = list[tuple[str, str]]


def connection_named(headers: CIMultiDict[str] | CIMultiDictProxy[str]) -> set[str]:
    """The lower-case names the Connection header lists: hop-by-hop for this message only
    (RFC 9110 section 7.6.1)."""
    named = ",".join(headers.getall("Connection", ()))
    return {token.strip().lower() for token in named.split(",")}


def end_to_end(headers: Mapping[str, str], drop: frozenset[str] = HOP_BY_HOP) -> CIMultiDict[str]:
    """A copy of `headers` without the lower-case names in `drop` (hop-by-hop ones by default)
    nor those any Connection header names (RFC 9110 7.6.1). The copy and the removals run in
    multidict's C code: cheaper than a Python pass over every header."""
    copy = CIMultiDict(headers)
    if "Connection" in copy:
        drop = drop | connection_named(copy)
    for name in drop:
        copy.popall(name, None)
    return copy


class Member:
    __slots__ = (
        "circuit",
        "failures",
        "healthy",
        "in_flight",
        "name",
        "requests",
        "retries",
        "timeouts",
        "url",
    )

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")
        self.name = urlsplit(self.url).netloc  # host:port, as ketama rings name servers
        self.in_flight = 0
        self.requests = 0
        self.failures = 0  # answered 502: refused, reset, broken response
        self.timeouts = 0  # answered 504
        self.retries = 0  # retries sent here after another member failed
        self.healthy = True  # False while active health checks eject it
        self.circuit: MemberCircuit | None = None  # its breaker, when a route has one

    def done(self) -> None:
        self.in_flight -= 1


class UpstreamClient(Protocol):
    async def send(
        self, member: Member, method: str, path: str, headers: RequestHeaders, body: bytes
    ) -> Reply:
        """Send one request to `member`; raise BadGateway or GatewayTimeout on failure."""
        ...

    async def close(self) -> None: ...


class AiohttpClient:
    """One aiohttp ClientSession per pool: keep-alive, a connection cap, no auto-decompression."""

    def __init__(self, settings: UpstreamSettings) -> None:
        self._settings = settings
        # sock_connect, not connect: it bounds opening a connection only, so a request that
        # reuses a kept-alive one arms no extra timer (~10 % of a proxied request's CPU).
        self._timeout = aiohttp.ClientTimeout(
            total=settings.timeout, sock_connect=settings.connect_timeout
        )
        self._session: aiohttp.ClientSession | None = None

    def _open(self) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(limit=self._settings.max_connections, ttl_dns_cache=60)
        return aiohttp.ClientSession(
            connector=connector,
            timeout=self._timeout,
            auto_decompress=False,
            # Forward what the client sent, and nothing aiohttp would add on its own.
            skip_auto_headers=("User-Agent", "Accept-Encoding", "Accept", "Content-Type"),
            cookie_jar=aiohttp.DummyCookieJar(),
        )

    async def send(
        self, member: Member, method: str, path: str, headers: RequestHeaders, body: bytes
    ) -> Reply:
        session = self._session or self._ensure_session()
        # aiohttp warns on large raw bytes bodies; a file-like object streams them.
        data = io.BytesIO(body) if len(body) > READ_WHOLE_LIMIT else (body or None)
        try:
            resp = await session.request(
                method,
                URL(member.url + path, encoded=True),  # the path and query as the client sent them
                headers=headers,
                data=data,
                allow_redirects=False,
            )
        except TimeoutError:
            raise GatewayTimeout(f"upstream {member.url} did not answer in time") from None
        except aiohttp.ClientConnectorError as exc:
            raise UpstreamUnreachable(
                f"upstream {member.url} failed: {type(exc).__name__}"
            ) from exc
        except aiohttp.ClientError as exc:
            raise BadGateway(f"upstream {member.url} failed: {type(exc).__name__}") from exc
        reply_headers = end_to_end(
            resp.headers, HEAD_REPLY_DROP if method == "HEAD" else REPLY_DROP
        )
        length = resp.content_length
        if (length is not None and length <= READ_WHOLE_LIMIT) or method == "HEAD":
            try:
                data = await resp.read()
            except TimeoutError:
                raise GatewayTimeout(f"upstream {member.url} stalled mid-response") from None
            except aiohttp.ClientError as exc:
                raise BadGateway(f"upstream {member.url} broke off: {type(exc).__name__}") from exc
            finally:
                resp.release()
            return Reply(resp.status, data, reply_headers)
        if length is not None:
            reply_headers["Content-Length"] = str(length)
        return Reply(resp.status, b"", reply_headers, stream=BodyStream(resp))

    def _ensure_session(self) -> aiohttp.ClientSession:
        self._session = self._open()
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


class BodyStream:
    """An upstream body passed through chunk by chunk. The adapter always closes it, even
    when it never read it (the client left), which frees the upstream connection."""

    def __init__(self, resp: aiohttp.ClientResponse) -> None:
        self.resp = resp
        self.on_close: Callable[[], None] | None = None
        self._closed = False

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._chunks()

    async def _chunks(self) -> AsyncIterator[bytes]:
        origin = self.resp.url.origin()
        try:
            async for chunk in self.resp.content.iter_chunked(STREAM_CHUNK):
                yield chunk
        except TimeoutError:
            raise GatewayTimeout(f"upstream {origin} stalled mid-response") from None
        except aiohttp.ClientError as exc:
            raise BadGateway(f"upstream {origin} broke off: {type(exc).__name__}") from exc

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.resp.release()
        if self.on_close is not None:
            self.on_close()


class UpstreamPool:
    """A named set of members and the policy that picks one per call.

    A plain pool sends with `_send_plain`; breakers, health checks, retries or a hash ring
    switch it to its `Failover`, so a pool that needs none of them pays for none.
    """

    def __init__(self, name: str, settings: UpstreamSettings, client: UpstreamClient) -> None:
        self.name = name
        self.settings = settings
        self.client = client
        self.members = [Member(url) for url in settings.targets]
        self._cycle = itertools.cycle(self.members)
        self._turn = 0  # least_conn: whose turn it is among the least busy
        self.pick = self._least_conn if settings.balance == "least_conn" else self._round_robin
        self.ring: HashRing | None = None
        if settings.balance == "hash":
            self.ring = HashRing(
                [m.name for m in self.members],
                settings.weights or None,
                points=settings.ring_points,
            )
        self.failover = Failover(self)
        self.send = self._send_plain
        if self.ring is not None or settings.retries or settings.health is not None:
            self.guard()

    def guard(self) -> None:
        """Send through the failover path from now on (built once, before serving)."""
        self.send = self.failover.send  # type: ignore[assignment]

    def guard_members(
        self,
        circuit_for: Callable[[Member], MemberCircuit],
        failure_statuses: frozenset[int],
        slow_seconds: float | None = None,
    ) -> list[MemberCircuit]:
        """The hook for a plugin that guards this pool's members (a circuit breaker),
        called once before serving: each member gets `circuit_for(member)`, which the pool
        asks before it picks the member and tells of each try's outcome: a reply whose
        status is in `failure_statuses`, or slower than `slow_seconds`, is a failure.
        Returns the circuits, in the members' order."""
        circuits = []
        for member in self.members:
            member.circuit = circuit_for(member)
            circuits.append(member.circuit)
        self.failover.failure_statuses = failure_statuses
        self.failover.slow_seconds = slow_seconds
        self.guard()
        return circuits

    def _round_robin(self) -> Member:
        return next(self._cycle)

    def turns(self, count: int) -> Iterator[Member]:
        """The next `count` round-robin picks, taken one at a time as they are used."""
        return itertools.islice(self._cycle, count)

    def _least_conn(self) -> Member:
        # Among the least busy members, take turns, so ties spread evenly.
        fewest = min(member.in_flight for member in self.members)
        idle = [member for member in self.members if member.in_flight == fewest]
        turn = self._turn
        self._turn = turn + 1
        return idle[turn % len(idle)]

    async def _send_plain(
        self,
        method: str,
        path: str,
        headers: RequestHeaders,
        body: bytes,
        key: str | None = None,
    ) -> Reply:
        member = self.pick()
        try:
            return await self.send_to(member, method, path, headers, body)
        except UpstreamUnreachable:
            # Nothing reached it: the others may take any request, each once.
            for other in self.members:
                if other is not member:
                    with contextlib.suppress(UpstreamUnreachable):
                        return await self.send_to(other, method, path, headers, body)
            raise

    async def send_to(
        self, member: Member, method: str, path: str, headers: RequestHeaders, body: bytes
    ) -> Reply:
        member.in_flight += 1
        member.requests += 1
        try:
            reply = await self.client.send(member, method, path, headers, body)
        except GatewayTimeout:
            member.in_flight -= 1
            member.timeouts += 1
            raise
        except BaseException as exc:
            member.in_flight -= 1
            if isinstance(exc, BadGateway):
                member.failures += 1
            raise
        if reply.stream is not None:
            reply.stream.on_close = member.done  # type: ignore[attr-defined]  # busy until the body has gone through
        else:
            member.in_flight -= 1
        return reply

    def snapshot(self) -> dict[str, object]:
        ring = self.ring
        shares = ring.shares() if ring is not None else None
        failover = self.failover
        return {
            "balance": self.settings.balance,
            "retries": sum(m.retries for m in self.members),
            "budget_exhausted": failover.budget.exhausted,
            "rejected": failover.rejected,
            "rerouted": failover.rerouted,
            # hash pools: the worst member's distance from its fair share, which is in
            # proportion to its weight (0.06 = 6 % off)
            "ring_max_deviation": (
                max(abs(share / fair - 1) for share, fair in zip(shares, ring.fair, strict=True))
                if shares and ring is not None
                else None
            ),
            "members": [
                member_snapshot(m, shares[i] if shares else None)
                for i, m in enumerate(self.members)
            ],
        }

    async def close(self) -> None:
        await self.client.close()


async def close_pools(pools: dict[str, UpstreamPool]) -> None:
    await asyncio.gather(*(pool.close() for pool in pools.values()))
