"""`ReadyResponse`: a reply whose body is already bytes, written in one go.

aiohttp's `web.Response` prepares itself through ~10 coroutine frames and a page of header
bookkeeping in Python (prepare, _start, _prepare_headers, the prepare hook, _write_headers,
two write_eofs): about a tenth of a hello-world request, measured with callgrind. A reply
in hand needs one header mapping, one serialized head and one write, with aiohttp's
framing rules kept (`frame`): the real Content-Length, no body on HEAD, 204, 304 and 1xx,
Date, Server, and Connection as the HTTP version needs. The serializer refuses control
characters (CR, LF and the others but HTAB) in headers, as aiohttp's does; such a reply is
logged and answered with a 500 JSON instead.
node.fastpath sends route replies through the same two functions.

aiohttp's RequestHandler asks a response for `prepare`, `write_eof` and `keep_alive`; its
access logger for `status`, `body_length` and `headers`. That is this class's whole surface.
"""

from __future__ import annotations

import asyncio
import logging
import re
from http import HTTPStatus

import orjson
from aiohttp import hdrs, web
from aiohttp.helpers import rfc822_formatted_time
from aiohttp.http import HttpVersion10, HttpVersion11
from aiohttp.http_writer import _serialize_headers as serialize_headers
from multidict import CIMultiDict, istr

from node.call import JSON_TYPE, Reply

# Statuses whose reply never has a body; of them, these never carry a Content-Length
# (RFC 9110 sections 6.4.1, 8.6): a 304 may repeat the length of what it stands for.
NO_BODY = frozenset((204, 304, *range(100, 200)))
NO_LENGTH = frozenset((204, *range(100, 200)))
REASONS = {status.value: status.phrase for status in HTTPStatus}
STATUS_LINES_11 = {code: f"HTTP/1.1 {code} {reason}" for code, reason in REASONS.items()}

CONTENT_LENGTH = hdrs.CONTENT_LENGTH  # istr: multidict skips case-folding them
CONTENT_TYPE = hdrs.CONTENT_TYPE
CONNECTION = hdrs.CONNECTION
DATE = hdrs.DATE
SERVER = hdrs.SERVER
DEFAULT_TYPE = "application/octet-stream"
X_NODE = istr("X-Node")
# The product only: a version in Server tells an attacker which advisories apply
# (RFC 9110 section 10.2.4 warns of it); aiohttp's own names Python and aiohttp with theirs.
SERVER_NAME = "scalenode"
UNSENDABLE_BODY = orjson.dumps(
    {"error": "internal", "detail": "the reply held a header that cannot be sent; see the log"}
)
# The control characters a header may not hold besides CR and LF, which the line count
# catches (HTAB is allowed: RFC 9110 section 5.5).
OTHER_CONTROLS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
log = logging.getLogger("scalenode.http")


def status_line(version: tuple[int, int], status: int) -> str:
    if version == HttpVersion11:
        line = STATUS_LINES_11.get(status)
        if line is not None:
            return line
    return f"HTTP/{version[0]}.{version[1]} {status} {REASONS.get(status, '')}"


def unsendable(sent: CIMultiDict[str]) -> CIMultiDict[str]:
    """The headers of the 500 that replaces a reply whose headers cannot be sent: the
    framing ones the node made, none of the reply's own."""
    headers = CIMultiDict(
        {CONTENT_TYPE: "application/json", CONTENT_LENGTH: str(len(UNSENDABLE_BODY))}
    )
    for name in (DATE, SERVER, CONNECTION, X_NODE):
        if name in sent:
            headers[name] = sent[name]
    return headers


def header_items(lines: bytes) -> list[tuple[str, str]]:
    """Serialized header lines (node.call.AddedHeaders' end of a head) as (name, value)."""
    pairs = (line.partition(": ") for line in lines.decode("latin-1").split("\r\n") if line)
    return [(name, value) for name, _, value in pairs]


def frame(
    headers: CIMultiDict[str],
    status: int,
    body: bytes,
    method: str,
    version: tuple[int, int],
    keep_alive: bool,
) -> bytes:
    """aiohttp's framing rules on a whole reply's headers (changed in place): the real
    Content-Length, none on 204 and 1xx, Date, Server, Connection as the version needs.
    Returns the body to send (none for HEAD, 204, 304 and 1xx). Both ways a route's reply
    leaves (ReadyResponse, node.fastpath) frame it here."""
    if status in NO_BODY or method == "HEAD":
        if status in NO_LENGTH:
            headers.popall(CONTENT_LENGTH, None)
        elif body:  # a HEAD answered from a whole reply (a cache hit): its length
            headers[CONTENT_LENGTH] = str(len(body))
        # else: a HEAD's reply from the target keeps the length the target gave
        body = b""
    else:
        headers[CONTENT_LENGTH] = str(len(body))  # the truth, whatever a header said
        if body and CONTENT_TYPE not in headers:
            headers[CONTENT_TYPE] = DEFAULT_TYPE
    if DATE not in headers:
        headers[DATE] = rfc822_formatted_time()
    if SERVER not in headers:
        headers[SERVER] = SERVER_NAME
    if CONNECTION not in headers:
        if not keep_alive:
            if version == HttpVersion11:
                headers[CONNECTION] = "close"
        elif version == HttpVersion10:
            headers[CONNECTION] = "keep-alive"
    return body


def serialize_head(
    version: tuple[int, int], status: int, headers: CIMultiDict[str], added: bytes = b""
) -> bytes | None:
    """The status line and headers as bytes, ended by `added` (the lines a plugin made and
    the blank line, see node.call.AddedHeaders) or a blank line. None if a name or value
    holds a control character but HTAB (RFC 9110 section 5.5; aiohttp refuses them too):
    a CR or LF would end a line the reply did not mean to end.

    An all-ASCII head (nearly every one) goes through aiohttp's own serializer, in C: a
    third of the Python way's time. Any other keeps the Python way, which sends values
    as the bytes they were decoded from (node.call.wire_bytes), where aiohttp's drops the
    surrogates that stand for a client's non-UTF-8 bytes."""
    line = status_line(version, status)
    try:
        ascii_only = "".join(headers.values()).isascii() and "".join(headers).isascii()
    except TypeError:  # a value that is not a str (a handler's int): formatted below
        ascii_only = False
    if ascii_only:
        try:
            head = serialize_headers(line, headers)
        except ValueError:  # a control character
            return None
        # `added` ends the head itself: its lines and the blank line.
        return head[:-2] + added if added else head
    lines = [f"{name}: {value}\r\n" for name, value in headers.items()]
    text = "".join(lines)
    if (
        text.count("\n") != len(lines)
        or text.count("\r") != len(lines)
        or OTHER_CONTROLS.search(text)
    ):
        return None
    try:
        head = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return None
    return b"".join((line.encode(), b"\r\n", head, added or b"\r\n"))


def encode(
    status: int,
    headers: CIMultiDict[str],
    body: bytes,
    added: bytes,
    method: str,
    version: tuple[int, int],
    keep_alive: bool,
    path: str,
) -> tuple[int, CIMultiDict[str], bytes, int]:
    """A whole reply framed (`frame`, headers changed in place) and serialized: the status
    and headers sent, the bytes to write and the body's length in them. A head that cannot
    be sent (a CR or LF in a header) is logged and replaced by a 500 JSON."""
    body = frame(headers, status, body, method, version, keep_alive)
    head = serialize_head(version, status, headers, added)
    if head is None:  # nothing is written yet
        log.error(
            "reply to %s %s held a header with a control character; answered 500", method, path
        )
        status, headers = 500, unsendable(headers)
        body = b"" if method == "HEAD" else UNSENDABLE_BODY
        head = serialize_head(version, 500, headers)
        assert head is not None  # the node's own headers
    return status, headers, head + body, len(body)


class ReadyResponse:
    """Status, headers (this response's own copy) and the whole body; sent by `prepare`."""

    __slots__ = ("added", "body", "body_length", "headers", "keep_alive", "status")

    def __init__(
        self, status: int, headers: CIMultiDict[str], body: bytes, added: bytes = b""
    ) -> None:
        self.status = status
        self.headers = headers
        self.body = body
        self.added = added  # the head's end, serialized by a plugin (node.call.AddedHeaders)
        self.keep_alive: bool | None = None
        self.body_length = 0

    async def prepare(self, request: web.BaseRequest) -> None:
        keep_alive = self.keep_alive = request.keep_alive
        self.status, self.headers, data, self.body_length = encode(
            self.status,
            self.headers,
            self.body,
            self.added,
            request.method,
            request.version,
            keep_alive,
            request.path,
        )
        await request.writer.write_eof(data)  # one write: aiohttp sends the bytes as given

    async def write_eof(self, data: bytes = b"") -> None:
        """Nothing left: `prepare` wrote the whole reply."""


def write_interim(request: web.BaseRequest, status: int, headers: list[tuple[str, str]]) -> None:
    """write_interim_to for a request served by aiohttp (node.http's RequestCall)."""
    writer = request.writer
    started = bool(writer.output_size or writer._headers_buf)  # type: ignore[attr-defined]
    write_interim_to(request.transport, request.version, started, status, headers)


def write_interim_to(
    transport: asyncio.BaseTransport | None,
    version: tuple[int, int],
    started: bool,
    status: int,
    headers: list[tuple[str, str]],
) -> None:
    """An interim (1xx) reply on the client's connection, ahead of the final one (RFC 9110
    section 15.2). Not to an HTTP/1.0 client, not once any of the final reply is out or
    queued (`started`: a late 1xx would land inside it or before the next request's
    reply), and not with a CR or LF in a line: each case drops it, and the final reply
    goes as ever."""
    if version < HttpVersion11 or started or transport is None or transport.is_closing():
        return
    head = serialize_head(version, status, CIMultiDict(headers))
    if head is not None:
        transport.write(head)  # type: ignore[attr-defined]


def identify(node: str):
    """The `on_response_prepare` hook that names the node (X-Node) and the product (Server)
    on every reply aiohttp prepares: system routes, the dashboard, admin, streams.
    ReadyResponse, the routes' own, sets both itself."""

    async def stamp(request: web.BaseRequest, response: web.StreamResponse) -> None:
        headers = response.headers
        if X_NODE not in headers:
            headers[X_NODE] = node
        headers[SERVER] = SERVER_NAME

    return stamp


def json_response(
    data: object, status: int, node: str, headers: dict[str, str] | None = None
) -> web.Response:
    reply = Reply.json(data, status, headers)
    response = web.Response(body=reply.body, status=status, headers=reply.headers or None)
    response.headers[CONTENT_TYPE] = JSON_TYPE
    response.headers[X_NODE] = node
    return response
