"""A stored reply answered as the client's request asks: a 304 for its conditional headers
(RFC 9110 section 13, RFC 9111 section 4.3.2), a 206 or 416 for its Range (RFC 9110
section 14). Only replies the cache holds whole (200 with a body in hand) are shaped."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping

from multidict import CIMultiDict, istr

from node.call import Call, Reply
from plugins.cache.freshness import header, http_date

IF_NONE_MATCH = istr("If-None-Match")
IF_MODIFIED_SINCE = istr("If-Modified-Since")
IF_RANGE = istr("If-Range")
RANGE = istr("Range")
# Sent to the target instead of the client's own when the cache fetches a reply to store:
# it wants the whole reply, and answers these from it.
CLIENT_ONLY = (IF_NONE_MATCH, IF_MODIFIED_SINCE, IF_RANGE, RANGE)
ENTITY_TAG = re.compile(r'\s*(W/)?("[^"]*")\s*(?:,|$)')
BYTE_RANGE = re.compile(r"^\s*(\d*)\s*-\s*(\d*)\s*$")
MAX_RANGES = 16  # more parts than this and the Range is ignored (section 14.2 allows it)
# RFC 9110 section 15.4.5: a 304 carries what the 200 would, less its body's framing.
NOT_IN_304 = ("Content-Type", "Content-Length", "Content-Range")


def shaped(call: Call, reply: Reply) -> Reply:
    """`reply` (a full 200) as the client's conditional and Range headers ask."""
    headers = call.headers
    if reply.status != 200 or reply.stream is not None:
        return reply
    conditional = IF_NONE_MATCH in headers or IF_MODIFIED_SINCE in headers
    if conditional and not_modified(headers, reply.headers):
        return as_304(reply)
    if RANGE in headers and call.method == "GET":
        return ranged(headers, reply)
    return reply


def tags(value: str) -> list[tuple[bool, str]]:
    """The entity-tags of an If-None-Match / If-Match list: (weak, opaque-tag)."""
    return [(bool(m.group(1)), m.group(2)) for m in ENTITY_TAG.finditer(value)]


def not_modified(request: Mapping[str, str], stored: Mapping[str, str]) -> bool:
    """Section 13.2.2: If-None-Match (weak comparison) first; If-Modified-Since only
    without it, against Last-Modified or else Date (RFC 9111 section 4.3.2)."""
    none_match = ", ".join(request.getall(IF_NONE_MATCH, []))  # type: ignore[attr-defined]
    if none_match:
        if none_match.strip() == "*":
            return True
        etag = header(stored, "ETag")
        if etag is None:
            return False
        mine = tags(etag)
        return bool(mine) and any(tag == mine[0][1] for _, tag in tags(none_match))
    since = http_date(request.get(IF_MODIFIED_SINCE))
    if since is None:
        return False
    modified = http_date(header(stored, "Last-Modified") or header(stored, "Date"))
    return modified is not None and modified <= since


def as_304(reply: Reply) -> Reply:
    headers = CIMultiDict(reply.headers)
    for name in NOT_IN_304:
        headers.popall(name, None)
    return Reply(304, b"", headers)


def range_applies(request: Mapping[str, str], stored: Mapping[str, str]) -> bool:
    """If-Range (section 13.1.5): a strong match of the ETag, or exactly the Last-Modified."""
    condition = request.get(IF_RANGE)
    if condition is None:
        return True
    condition = condition.strip()
    if condition.startswith(('"', "W/")):
        etag = header(stored, "ETag")
        return etag is not None and not condition.startswith("W/") and etag.strip() == condition
    return condition == (header(stored, "Last-Modified") or "").strip()


def byte_ranges(value: str, length: int) -> list[tuple[int, int]] | None:
    """Section 14.1.2: the satisfiable (first, last) ranges of a `bytes=` Range, or None
    when it is not one to honour (another unit, bad syntax, too many parts)."""
    unit, eq, spec = value.partition("=")
    if not eq or unit.strip().lower() != "bytes":
        return None
    parts = spec.split(",")
    if len(parts) > MAX_RANGES:
        return None
    ranges = []
    for part in parts:
        match = BYTE_RANGE.match(part)
        if match is None or match.groups() == ("", ""):
            return None
        first, last = match.groups()
        if first == "":  # a suffix: the last `last` bytes
            if int(last) > 0 and length > 0:
                ranges.append((max(0, length - int(last)), length - 1))
            continue
        if last and int(last) < int(first):
            return None
        if int(first) < length:
            ranges.append((int(first), min(int(last), length - 1) if last else length - 1))
    return ranges


def ranged(request: Mapping[str, str], reply: Reply) -> Reply:
    """A 206 of one range or a multipart/byteranges of several; 416 if none is satisfiable."""
    if not range_applies(request, reply.headers):
        return reply
    body, length = reply.body, len(reply.body)
    ranges = byte_ranges(request.get(RANGE, ""), length)
    if ranges is None:
        return reply
    headers = CIMultiDict(reply.headers)
    headers.popall("Content-Length", None)
    if not ranges:
        headers.popall("Content-Type", None)
        headers["Content-Range"] = f"bytes */{length}"
        return Reply(416, b"", headers)
    content_type = headers.popall("Content-Type", [reply.content_type or ""])[0]
    if len(ranges) == 1:
        first, last = ranges[0]
        headers["Content-Range"] = f"bytes {first}-{last}/{length}"
        return Reply(206, body[first : last + 1], headers, content_type or None)
    boundary = os.urandom(12).hex()
    parts = []
    for first, last in ranges:
        head = f"--{boundary}\r\n"
        if content_type:
            head += f"Content-Type: {content_type}\r\n"
        head += f"Content-Range: bytes {first}-{last}/{length}\r\n\r\n"
        parts.append(head.encode() + body[first : last + 1] + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return Reply(206, b"".join(parts), headers, f"multipart/byteranges; boundary={boundary}")
