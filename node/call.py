"""The call model: what plugins and targets see instead of aiohttp's request and response."""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import parse_qsl

import orjson
from multidict import CIMultiDict, CIMultiDictProxy, MultiDict

from node.trace import traceparent_for

JSON_TYPE = "application/json"


def wire_bytes(text: str) -> bytes:
    """The bytes a client sent for `text` (a header value, say). aiohttp decodes header bytes
    as UTF-8 with surrogateescape, so a byte that is not UTF-8 arrives as a lone surrogate,
    which a plain .encode() refuses: a client's stray byte would be a 500."""
    return text.encode("utf-8", "surrogateescape")


# Longest client-supplied X-Request-Id that is forwarded as is; a longer one is replaced.
MAX_REQUEST_ID = 128


# A request id is this process's random prefix and a counter: unique across nodes and
# processes (64 random bits), and a tenth of the cost of fresh random bytes per request.
_ID_PREFIX = os.urandom(8).hex()
_id_counter = itertools.count(1)


# Headers a plugin adds to whatever reply its route gives, error replies included (the
# rate limit's): their names, before which the reply's own headers of those names give
# way, and the end of the reply's head, already serialized: their lines (b"Name: value\r\n"
# each) and the blank line, which the adapter sends as they are. Only for values a plugin
# made itself (numbers), never for anything a client sent. Serialized because building and
# checking three headers per request cost a third of a rate limit's work (callgrind).
AddedHeaders = tuple[tuple[str, ...], bytes]


def new_request_id() -> str:
    return f"{_ID_PREFIX}{next(_id_counter):08x}"


class Call:
    """One request on its way through a route's pipeline.

    `path` is the URL path (decoded), `raw_path` as the client sent it, `params` the
    route's `{name}` matches, `query_string` the raw query (`query` parses it on first
    use), `client` the peer's address. `peer` is the peer as the transport names it, the
    same for all of a connection's requests and cheap to hash (the rate limit remembers
    clients by it); `client` is derived from it. `added_headers`: see AddedHeaders. The
    request id is made on first use.
    The adapter builds a subclass that reads path, query, client, scheme and host from
    the HTTP request only when asked: most routes never look at most of them.
    """

    __slots__ = (
        "_host",
        "_path",
        "_query",
        "_query_string",
        "_raw_path",
        "_request_id",
        "_scheme",
        "_traceparent",
        "added_headers",
        "body",
        "headers",
        "method",
        "params",
        "peer",
        "route",
        "shard",
    )
    # The node's shared services (node.resources.Resources) for handler code that needs
    # them (plugins.cache.node_cache); a call the node serves over HTTP has them.
    resources: Any = None

    def __init__(
        self,
        method: str,
        path: str = "/",
        raw_path: str = "",
        route: str = "",
        params: Mapping[str, str] | None = None,
        query_string: str = "",
        headers: CIMultiDictProxy[str] | CIMultiDict[str] | None = None,
        body: bytes = b"",
        client: str = "",
        scheme: str = "http",
        host: str = "",
        shard: str | None = None,
    ) -> None:
        self.method = method
        self.route = route
        self.params = params if params is not None else {}
        self.headers = headers if headers is not None else CIMultiDict()
        self.body = body
        self.shard = shard
        self.added_headers: AddedHeaders | None = None
        self.peer: object = client
        self._path = path
        self._raw_path = raw_path or path
        self._query_string = query_string
        self._scheme = scheme
        self._host = host
        self._request_id: str | None = None
        self._traceparent: str | None = None
        self._query: MultiDict[str] | None = None

    @property
    def path(self) -> str:
        return self._path  # type: ignore[return-value]

    @property
    def raw_path(self) -> str:
        return self._raw_path  # type: ignore[return-value]

    @property
    def query_string(self) -> str:
        return self._query_string  # type: ignore[return-value]

    @property
    def client(self) -> str:
        """The peer's address: `peer` as the transport names it ((host, port) or (host,
        port, flow, scope); a path on a Unix socket), or the address given."""
        peer = self.peer
        return peer[0] if type(peer) is tuple else (peer or "")  # type: ignore[return-value]

    @property
    def scheme(self) -> str:
        return self._scheme  # type: ignore[return-value]

    @property
    def host(self) -> str:
        return self._host  # type: ignore[return-value]

    @property
    def query(self) -> MultiDict[str]:
        if self._query is None:
            self._query = MultiDict(parse_qsl(self.query_string, keep_blank_values=True))
        return self._query

    @property
    def request_id(self) -> str:
        if self._request_id is None:
            given = self.headers.get("X-Request-Id")
            if given and len(given) <= MAX_REQUEST_ID:
                self._request_id = given
            else:
                self._request_id = new_request_id()
        return self._request_id

    @property
    def traceparent(self) -> str:
        """The W3C traceparent this call goes on with: the client's when valid (forwarded
        unchanged), else a new trace's, made on first use (node.trace)."""
        if self._traceparent is None:
            self._traceparent = traceparent_for(self.headers.get("traceparent"))
        return self._traceparent

    def json(self) -> Any:
        """The body parsed as JSON (raises `orjson.JSONDecodeError`, a `ValueError`)."""
        return orjson.loads(self.body)

    def __repr__(self) -> str:
        return f"<Call {self.method} {self.path} route={self.route!r}>"


class InterimSink(Protocol):
    """Where the target's interim (1xx) replies go, ahead of the final reply (RFC 9110
    section 15.2: a proxy forwards them). A call served over HTTP is one; the upstream
    client finds it through node.trace.CURRENT_CALL, set by the HTTP adapter per request."""

    def send_interim(self, status: int, headers: list[tuple[str, str]]) -> None: ...


class ByteStream(Protocol):
    """A body too large to hold: iterated once by the adapter, then always closed."""

    def __aiter__(self) -> AsyncIterator[bytes]: ...

    async def aclose(self) -> None: ...


@dataclass(slots=True)
class Reply:
    """What a target or plugin answers: status, headers, and a body or a byte stream."""

    status: int = 200
    body: bytes = b""
    headers: Mapping[str, str] | CIMultiDict[str] = field(default_factory=dict)
    content_type: str | None = None
    stream: ByteStream | None = None

    @classmethod
    def json(cls, data: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> Reply:
        try:
            body = orjson.dumps(data)
        except orjson.JSONEncodeError:
            # orjson refuses lone surrogates (a client's non-UTF-8 bytes echoed back, see
            # wire_bytes); the json module writes them as \u escapes, which JSON allows.
            body = json.dumps(data, separators=(",", ":")).encode()
        return cls(status, body, headers or {}, JSON_TYPE)

    @classmethod
    def text(cls, text: str, status: int = 200, headers: Mapping[str, str] | None = None) -> Reply:
        return cls(status, text.encode(), headers or {}, "text/plain; charset=utf-8")


Handler = Callable[[Call], Awaitable[Reply]]
