"""Request smuggling: the classic ambiguous framings, sent raw to a `python run.py` node
(one for the module, served as users run it) proxying `/api/...`.

A form RFC 9112 says to reject (or lets a server reject, and the node does) gets a 400, the
connection is closed, and the upstream receives nothing, not even the request smuggled in
after it. A form the RFC says to accept reaches the upstream as exactly one request, framed
by Content-Length alone, with the body the RFC's framing gives. The upstream parses what it
receives with llhttp in strict mode, so a request the node frames badly is caught there too.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import httptools
import pytest
from e2e.e2e_harness import NodeProcess
from testkit.wire_upstream import WireUpstream, running_node

NODE_NAME = "smuggling"
SMUGGLED = b"GET /api/smuggled HTTP/1.1\r\nHost: x\r\n\r\n"
REPLY_TIMEOUT = 3.0  # seconds for the node's reply (and its close, when waited for)


CONFIG = """
[node]
name = "{name}"

[upstreams.app]
targets = ["{upstream}"]

[[routes]]
path = "/api/{{tail:.*}}"
target = "upstream:app"
strip_prefix = "/api"
"""


@dataclass
class Served:
    wire: WireUpstream
    node: NodeProcess


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """One node for the module, proxying /api/... to a wire upstream."""
    wire = WireUpstream().start()
    config = CONFIG.format(name=NODE_NAME, upstream=wire.url)
    try:
        with running_node(config, tmp_path_factory.mktemp("smuggling")) as node:
            yield Served(wire, node)
    finally:
        wire.stop()


# ----- the client side: raw bytes in, one parsed reply out ----------------------------------


@dataclass
class Reply:
    status: int
    headers: dict[bytes, bytes]  # names lower-cased
    body: bytes
    closed: bool  # the node closed the connection after the reply


class _Response:
    def __init__(self) -> None:
        self.headers: dict[bytes, bytes] = {}
        self.body = b""
        self.complete = False
        self.parser = httptools.HttpResponseParser(self)

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.lower()] = value

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        self.complete = True


async def send(port: int, raw: bytes, *, wait_close: bool = False) -> Reply:
    """Send `raw` on a new connection; the first reply, and whether the node closed the
    connection after it (waited for, up to REPLY_TIMEOUT, only with `wait_close`)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    response = _Response()
    closed = False
    try:
        writer.write(raw)
        async with asyncio.timeout(REPLY_TIMEOUT):
            while not response.complete:
                data = await reader.read(65536)
                if not data:
                    closed = True
                    response.parser.feed_data(b"")  # a body ended by the close
                    break
                response.parser.feed_data(data)
        if wait_close and not closed:
            with contextlib.suppress(TimeoutError):
                closed = await asyncio.wait_for(reader.read(1), REPLY_TIMEOUT) == b""
    finally:
        writer.close()
    assert response.complete, f"no complete reply to {raw[:80]!r}"
    return Reply(response.parser.get_status_code(), response.headers, response.body, closed)


# ----- the forms -------------------------------------------------------------------------------


def post(head: bytes, body: bytes, version: bytes = b"1.1") -> bytes:
    """POST /api/form with the header lines `head` (CRLF-terminated) and the raw `body`."""
    return b"POST /api/form HTTP/" + version + b"\r\nHost: x\r\n" + head + b"\r\n" + body


CHUNKED = b"Transfer-Encoding: chunked\r\n"
ABC_CHUNKED = b"3\r\nabc\r\n0\r\n\r\n"


@dataclass(frozen=True)
class Refused:
    """400 (or one of `statuses`), the connection closed, nothing upstream."""

    why: str
    statuses: tuple[int, ...] = (400,)


@dataclass(frozen=True)
class Accepted:
    """Exactly one request upstream, Content-Length-framed, carrying `body`."""

    why: str
    body: bytes = b"abc"
    closes: bool = False  # the node must close the client connection after replying


@dataclass(frozen=True)
class Form:
    id: str
    raw: bytes
    outcome: Refused | Accepted


# What each form tests and what the RFC says of it. Every refused form ends with SMUGGLED:
# nothing after a refused head may reach the upstream either.
FORMS = [
    Form(
        "cl-te",
        post(b"Content-Length: %d\r\n" % len(b"0\r\n\r\n" + SMUGGLED) + CHUNKED, b"0\r\n\r\n")
        + SMUGGLED,
        Refused("CL.TE: RFC 9112 6.1 lets a server reject both framings at once; it must"),
    ),
    Form(
        "te-cl",
        post(CHUNKED + b"Content-Length: 3\r\n", b"8\r\nSMUGGLED\r\n0\r\n\r\n") + SMUGGLED,
        Refused("TE.CL, the same headers in the other order"),
    ),
    Form(
        "two-cl-differing",
        post(b"Content-Length: 3\r\nContent-Length: 45\r\n", b"abc") + SMUGGLED,
        Refused("RFC 9112 6.3 (5): differing lengths are unrecoverable, 400"),
    ),
    Form(
        "two-cl-equal",
        post(b"Content-Length: 3\r\nContent-Length: 3\r\n", b"abc") + SMUGGLED,
        Refused("RFC 9110 8.6: a recipient may reject duplicated lengths; the node does"),
    ),
    Form(
        "cl-list-differing",
        post(b"Content-Length: 3, 45\r\n", b"abc") + SMUGGLED,
        Refused("RFC 9112 6.3 (5): a list of differing lengths is invalid"),
    ),
    Form(
        "cl-signed",
        post(b"Content-Length: +3\r\n", b"abc") + SMUGGLED,
        Refused("Content-Length = 1*DIGIT (RFC 9110 8.6): no sign"),
    ),
    Form(
        "obs-fold-te",
        post(b"Content-Length: 3\r\nTransfer-Encoding:\r\n chunked\r\n", b"abc") + SMUGGLED,
        Refused("RFC 9112 5.2: obs-fold is rejected (400) or replaced by SP; a folded TE"),
    ),
    Form(
        "obs-fold-plain",
        post(b"X-A: a\r\n b\r\nContent-Length: 3\r\n", b"abc") + SMUGGLED,
        Refused("RFC 9112 5.2: the node rejects obs-fold rather than unfolding it"),
    ),
    Form(
        "chunk-size-negative",
        post(CHUNKED, b"-3\r\nabc\r\n0\r\n\r\n") + SMUGGLED,
        Refused("chunk-size = 1*HEXDIG (RFC 9112 7.1): no sign"),
    ),
    Form(
        "chunk-size-overflow",
        post(CHUNKED, b"10000000000000003\r\nabc\r\n0\r\n\r\n") + SMUGGLED,
        Refused("2**64 + 3: a parser that wraps reads 3; RFC 9112 7.1 says guard overflow"),
    ),
    Form(
        "chunk-size-non-hex",
        post(CHUNKED, b"3g\r\nabc\r\n0\r\n\r\n") + SMUGGLED,
        Refused("chunk-size = 1*HEXDIG: `g` is no hex digit"),
    ),
    Form(
        "chunk-size-0x",
        post(CHUNKED, b"0x3\r\nabc\r\n0\r\n\r\n") + SMUGGLED,
        Refused("a 0x prefix is no chunk-size (strtol would read 0 or 3)"),
    ),
    Form(
        "chunk-data-overrun",
        post(CHUNKED, b"3\r\nabcdef\r\n0\r\n\r\n") + SMUGGLED,
        Refused("chunk data longer than its size: no CRLF where the size ends it"),
    ),
    Form(
        "chunk-ext-quoted-crlf",
        post(CHUNKED, b'3;a="b\r\nc"\r\nabc\r\n0\r\n\r\n') + SMUGGLED,
        Refused("a quoted-string holds no CR or LF (RFC 9110 5.6.4): the line ends at CRLF"),
    ),
    Form(
        "chunk-ext-bare-lf",
        post(CHUNKED, b"3;a\nxyz\r\nabc\r\n0\r\n\r\n") + SMUGGLED,
        Refused("a chunk line ended by a bare LF (lenient parsers end it there)"),
    ),
    Form(
        "chunk-ext-nul",
        post(CHUNKED, b"3;a=\x00\r\nabc\r\n0\r\n\r\n") + SMUGGLED,
        Refused("NUL is neither token nor quoted-string in a chunk extension"),
    ),
    Form(
        "te-chunked-identity",
        post(b"Transfer-Encoding: chunked, identity\r\n", ABC_CHUNKED) + SMUGGLED,
        Refused("RFC 9112 6.3 (4): chunked not the final coding of a request: 400"),
    ),
    Form(
        "te-xchunked",
        post(b"Transfer-Encoding: xchunked\r\n", ABC_CHUNKED) + SMUGGLED,
        Refused("RFC 9112 6.3 (4): the final coding is not chunked: 400"),
    ),
    Form(
        "te-chunked-twice",
        post(CHUNKED + CHUNKED, ABC_CHUNKED) + SMUGGLED,
        Refused("RFC 9112 7: chunked is never applied twice; read once, the body is wrong"),
    ),
    Form(
        "te-space-before-colon",
        post(b"Content-Length: 3\r\nTransfer-Encoding : chunked\r\n", b"abc") + SMUGGLED,
        Refused("RFC 9112 5.1: whitespace between name and colon MUST get 400"),
    ),
    Form(
        "te-vertical-tab",
        post(b"Content-Length: 3\r\nTransfer-Encoding:\x0bchunked\r\n", b"abc") + SMUGGLED,
        Refused("VT is no OWS (RFC 9110 5.6.3): not a field value"),
    ),
    Form(
        "te-gzip-chunked",
        post(b"Transfer-Encoding: gzip, chunked\r\n", ABC_CHUNKED) + SMUGGLED,
        Refused(
            "RFC 9112 6.1: a coding the server does not apply SHOULD get 501; forwarded, the"
            " upstream gets still-coded bytes with their coding dropped",
            statuses=(501, 400),
        ),
    ),
    Form(
        "bare-lf-in-head",
        post(b"X-A: a\nContent-Length: 3\r\n", b"abc") + SMUGGLED,
        Refused("RFC 9112 2.2 lets a server take a bare LF as a line end; the node refuses"),
    ),
    Form(
        "bare-cr-in-head",
        post(b"X-A: a\rContent-Length: 3\r\n", b"abc") + SMUGGLED,
        Refused("RFC 9112 2.2: a bare CR is invalid (or replaced by SP)"),
    ),
    Form(
        "nul-in-value",
        post(b"X-A: a\x00b\r\nContent-Length: 3\r\n", b"abc") + SMUGGLED,
        Refused("RFC 9110 5.5: NUL in a field value is rejected (or replaced by SP)"),
    ),
    Form(
        "space-in-name",
        post(b"Content-Length: 3\r\nTransfer Encoding: chunked\r\n", b"abc") + SMUGGLED,
        Refused("a field name is a token (RFC 9110 5.1): no space"),
    ),
    Form(
        "te-case-insensitive",
        post(b"Transfer-Encoding: CHUNKED\r\n", ABC_CHUNKED),
        Accepted("coding names are case-insensitive (RFC 9112 7)"),
    ),
    Form(
        "te-leading-tab",
        post(b"Transfer-Encoding:\tchunked\r\n", ABC_CHUNKED),
        Accepted("OWS before a field value may be HTAB (RFC 9110 5.6.3)"),
    ),
    Form(
        "te-identity-chunked",
        post(b"Transfer-Encoding: identity, chunked\r\n", ABC_CHUNKED),
        Accepted("chunked is final; identity codes nothing, so the body is whole"),
    ),
    Form(
        "cl-leading-zeros",
        post(b"Content-Length: 003\r\n", b"abc"),
        Accepted("1*DIGIT: 003 is 3"),
    ),
    Form(
        "chunk-size-leading-zeros",
        post(CHUNKED, b"0003\r\nabc\r\n0\r\n\r\n"),
        Accepted("1*HEXDIG: 0003 is 3"),
    ),
    Form(
        "chunk-ext-valid",
        post(CHUNKED, b'3;a=b;flag;q="x;\\"y"\r\nabc\r\n0\r\n\r\n'),
        Accepted("RFC 9112 7.1.1: unknown extensions are ignored, a quoted `;` is no separator"),
    ),
    Form(
        "chunk-ext-1mib",
        post(CHUNKED, b"3;" + b"e" * (1 << 20) + b"\r\nabc\r\n0\r\n\r\n"),
        Accepted("a 1 MiB extension: none of it reaches the body"),
    ),
    Form(
        "chunk-trailer",
        post(CHUNKED, b"3\r\nabc\r\n0\r\nX-Trailer: v\r\n\r\n"),
        Accepted("a trailer section ends the body (RFC 9112 7.1.2)"),
    ),
    Form(
        "http10-te-chunked",
        post(CHUNKED, ABC_CHUNKED, version=b"1.0"),
        Accepted(
            "RFC 9112 6.1: TE in HTTP/1.0 is faulty framing: processed, then the connection"
            " MUST close",
            closes=True,
        ),
    ),
]


@pytest.mark.parametrize("form", FORMS, ids=[form.id for form in FORMS])
async def test_an_ambiguous_framing_is_refused_or_forwarded_once(served: Served, form: Form):
    """Refused forms: 400, closed, nothing upstream; accepted: one CL-framed request."""
    wire, outcome = served.wire, form.outcome
    before, malformed = wire.count(), len(wire.malformed)
    refused = isinstance(outcome, Refused)
    reply = await send(served.node.port, form.raw, wait_close=refused or outcome.closes)
    await asyncio.sleep(0.1)  # anything the node wrongly forwards has arrived by now
    assert wire.malformed[malformed:] == [], "the upstream could not parse what it got"
    forwarded = wire.requests[before:]
    if refused:
        assert reply.status in outcome.statuses, (reply.status, reply.body, outcome.why)
        assert reply.closed, "a refused framing must close the connection (RFC 9112 6.3)"
        assert forwarded == [], f"reached the upstream: {forwarded}"
        return
    assert reply.status == 200, (reply.status, reply.body, outcome.why)
    assert reply.headers[b"x-upstream"] == b"wire"
    assert reply.closed == outcome.closes
    [request] = forwarded
    assert (request.method, request.target, request.body) == (b"POST", b"/form", outcome.body)
    assert request.header(b"Content-Length") == [b"%d" % len(outcome.body)]
    assert request.header(b"Transfer-Encoding") == []
