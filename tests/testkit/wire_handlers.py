"""Handlers whose replies exercise the node's HTTP framing (tests/integration/test_wire.py)."""

from __future__ import annotations

from multidict import CIMultiDict

from node.call import Call, Reply


async def no_content(call: Call) -> Reply:
    return Reply(204, b"", {"Content-Length": "0", "X-Kept": "yes"})


async def not_modified(call: Call) -> Reply:
    return Reply(304, b"", {"ETag": '"v1"', "Content-Length": "5"})


async def lying_length(call: Call) -> Reply:
    """A handler that names a wrong Content-Length: the node frames by the real body."""
    return Reply(200, b"twelve bytes", {"content-length": "999"}, "text/plain")


async def cookies(call: Call) -> Reply:
    headers = CIMultiDict([("Set-Cookie", "a=1"), ("Set-Cookie", "b=2")])
    return Reply(200, b"{}", headers, "application/json")


async def untyped(call: Call) -> Reply:
    return Reply(200, b"\x00\x01", {})


async def injected(call: Call) -> Reply:
    return Reply(200, b"x", {"X-Evil": "a\r\nSet-Cookie: stolen=1"})


async def nul_byte(call: Call) -> Reply:
    return Reply(200, b"x", {"X-Odd": "a\x00b"})


async def control_in_text(call: Call) -> Reply:
    """Non-ASCII, so the head takes the Python serializer: the same refusal."""
    return Reply(200, b"x", {"X-Odd": "café\x01"})


async def tab_and_text(call: Call) -> Reply:
    return Reply(200, b"x", {"X-Tab": "a\tb", "X-Text": "café"})
