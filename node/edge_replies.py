"""The node's JSON for the errors aiohttp would answer in text/plain: a request it could
not parse, a socket with no request to answer, a target no route can match. None of them
repeats what the client sent: aiohttp's parse errors quote the offending bytes."""

from __future__ import annotations

import orjson
from aiohttp import web
from aiohttp.helpers import rfc822_formatted_time
from aiohttp.http_exceptions import (
    BadHttpMethod,
    BadStatusLine,
    HttpProcessingError,
    InvalidHeader,
    InvalidURLError,
    LineTooLong,
    PayloadEncodingError,
)

from node.call import JSON_TYPE
from node.wire import CONTENT_LENGTH, CONTENT_TYPE, SERVER_NAME, STATUS_LINES_11

# Most specific first: BadHttpMethod is a BadStatusLine.
PARSE_ERRORS: tuple[tuple[type[HttpProcessingError], str], ...] = (
    (LineTooLong, "the request line or a header field is over the size limit"),
    (BadHttpMethod, "the request line has no valid method (or TLS came to a plain-HTTP port)"),
    (InvalidURLError, "the request target is not a valid URL"),
    (BadStatusLine, "the request line is malformed"),
    (InvalidHeader, "a header field is malformed"),
    (PayloadEncodingError, "the body does not match its framing or content encoding"),
)
MALFORMED_HEAD = "the request head is malformed (header syntax, framing or a missing Host)"

# aiohttp's own replies (web.HTTPException) to a target no route matches: CONNECT's
# authority-form, OPTIONS *, a path with a control character, a sub-app's miss.
ROUTER_ERRORS = {
    404: ("not_found", "no route serves this request target"),
    405: ("method_not_allowed", "the method is not allowed here; Allow lists those that are"),
    413: ("payload_too_large", "the request body is over the limit"),
}


def parse_error_detail(exc: HttpProcessingError) -> str:
    """What was wrong with an unparsable request, in the node's words: aiohttp's message
    quotes the request's bytes."""
    for kind, detail in PARSE_ERRORS:
        if isinstance(exc, kind):
            return detail
    return MALFORMED_HEAD


def refusal(status: int, code: str, detail: str, node: str, extra: str = "") -> bytes:
    """A whole HTTP/1.1 reply that closes the connection, for a socket with no request."""
    body = orjson.dumps({"error": code, "detail": detail})
    head = (
        f"{STATUS_LINES_11[status]}\r\nContent-Type: {JSON_TYPE}\r\n"
        f"Content-Length: {len(body)}\r\nDate: {rfc822_formatted_time()}\r\n"
        f"Server: {SERVER_NAME}\r\nX-Node: {node}\r\n{extra}Connection: close\r\n\r\n"
    )
    return head.encode() + body


async def json_errors(request: web.BaseRequest, response: web.StreamResponse) -> None:
    """The `on_response_prepare` hook that turns aiohttp's text/plain error replies into
    the node's JSON. Route replies (ReadyResponse) never pass here."""
    if response.status < 400 or not isinstance(response, web.HTTPException):
        return
    if response.content_type != "text/plain":  # a handler's own body: left as it is
        return
    reason = response.reason
    code, detail = ROUTER_ERRORS.get(response.status) or (
        reason.lower().replace(" ", "_"),
        reason,
    )
    body = orjson.dumps({"error": code, "detail": detail})
    response.body = body
    headers = response.headers
    headers[CONTENT_TYPE] = JSON_TYPE
    headers[CONTENT_LENGTH] = str(len(body))  # aiohttp counted the text before this hook
