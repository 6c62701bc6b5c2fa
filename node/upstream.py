"""Named pools of HTTP upstreams: members, balancing, and the client that talks to them.

The client sits behind the small `UpstreamClient` interface so a faster transport can
replace `AiohttpClient` without touching the proxy or the plugins.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from typing import Protocol

import aiohttp
from multidict import CIMultiDict

from node.call import Reply
from node.config import UpstreamSettings
from node.errors import BadGateway, GatewayTimeout

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


def strip_hop_by_hop(headers: CIMultiDict[str], extra: frozenset[str] = frozenset()) -> None:
    """Remove hop-by-hop headers, including those the Connection header names (RFC 9110 7.6.1)."""
    named = headers.get("Connection")
    drop = set(HOP_BY_HOP | extra)
    if named:
        drop.update(token.strip().lower() for token in named.split(","))
    for name in list(headers):
        if name.lower() in drop:
            del headers[name]


class Member:
    __slots__ = ("failures", "in_flight", "requests", "timeouts", "url")

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")
        self.in_flight = 0
        self.requests = 0
        self.failures = 0  # answered 502: refused, reset, broken response
        self.timeouts = 0  # answered 504


class UpstreamClient(Protocol):
    async def send(
        self, member: Member, method: str, path: str, headers: CIMultiDict[str], body: bytes
    ) -> Reply:
        """Send one request to `member`; raise BadGateway or GatewayTimeout on failure."""
        ...

    async def close(self) -> None: ...


class AiohttpClient:
    """One aiohttp ClientSession per pool: keep-alive, a connection cap, no auto-decompression."""

    def __init__(self, settings: UpstreamSettings) -> None:
        self._settings = settings
        self._timeout = aiohttp.ClientTimeout(
            total=settings.timeout, connect=settings.connect_timeout
        )
        self._session: aiohttp.ClientSession | None = None

    def _open(self) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(limit=self._settings.max_connections, ttl_dns_cache=60)
        return aiohttp.ClientSession(
            connector=connector,
            timeout=self._timeout,
            auto_decompress=False,
            skip_auto_headers=("User-Agent", "Accept-Encoding", "Accept"),
            cookie_jar=aiohttp.DummyCookieJar(),
        )

    async def send(
        self, member: Member, method: str, path: str, headers: CIMultiDict[str], body: bytes
    ) -> Reply:
        session = self._session or self._ensure_session()
        try:
            resp = await session.request(
                method,
                member.url + path,
                headers=headers,
                data=body or None,
                allow_redirects=False,
            )
        except TimeoutError:
            raise GatewayTimeout(f"upstream {member.url} did not answer in time") from None
        except aiohttp.ClientError as exc:
            raise BadGateway(f"upstream {member.url} failed: {type(exc).__name__}") from exc
        reply_headers = CIMultiDict(resp.headers)
        strip_hop_by_hop(reply_headers, frozenset({"content-length"}))
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
        return Reply(resp.status, b"", reply_headers, stream=stream_body(resp))

    def _ensure_session(self) -> aiohttp.ClientSession:
        self._session = self._open()
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


async def stream_body(resp: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
    try:
        async for chunk in resp.content.iter_chunked(STREAM_CHUNK):
            yield chunk
    except TimeoutError:
        raise GatewayTimeout(f"upstream {resp.url.origin()} stalled mid-response") from None
    except aiohttp.ClientError as exc:
        raise BadGateway(f"upstream {resp.url.origin()} broke off: {type(exc).__name__}") from exc
    finally:
        resp.release()


class UpstreamPool:
    """A named set of members and the policy that picks one per call."""

    def __init__(self, name: str, settings: UpstreamSettings, client: UpstreamClient) -> None:
        self.name = name
        self.settings = settings
        self.client = client
        self.members = [Member(url) for url in settings.targets]
        self._cycle = itertools.cycle(self.members)
        self.pick = self._least_conn if settings.balance == "least_conn" else self._round_robin

    def _round_robin(self) -> Member:
        return next(self._cycle)

    def _least_conn(self) -> Member:
        # Ties go round robin, so an idle pool still spreads its calls.
        start = next(self._cycle)
        best = start
        for member in self.members:
            if member.in_flight < best.in_flight:
                best = member
        return best

    async def send(self, method: str, path: str, headers: CIMultiDict[str], body: bytes) -> Reply:
        member = self.pick()
        member.in_flight += 1
        member.requests += 1
        try:
            return await self.client.send(member, method, path, headers, body)
        except GatewayTimeout:
            member.timeouts += 1
            raise
        except BadGateway:
            member.failures += 1
            raise
        finally:
            member.in_flight -= 1

    def snapshot(self) -> dict[str, object]:
        return {
            "balance": self.settings.balance,
            "members": [
                {
                    "url": m.url,
                    "in_flight": m.in_flight,
                    "requests": m.requests,
                    "failures": m.failures,
                    "timeouts": m.timeouts,
                }
                for m in self.members
            ],
        }

    async def close(self) -> None:
        await self.client.close()


async def close_pools(pools: dict[str, UpstreamPool]) -> None:
    await asyncio.gather(*(pool.close() for pool in pools.values()))
