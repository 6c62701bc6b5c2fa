"""Raw HTTP/1.1 over a socket, for tests of what the node writes on the wire: send bytes,
read every byte back, split a reply into status line, headers and body."""

from __future__ import annotations

import asyncio

from aiohttp.test_utils import TestClient


async def exchange(client: TestClient, raw: bytes, then: bytes | None = None) -> bytes:
    """Send `raw` (and `then` on the same connection once the first reply is in); all bytes
    the node sent until it closed or went quiet."""
    reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
    try:
        writer.write(raw)
        received = b""
        while True:
            try:
                chunk = await asyncio.wait_for(reader.read(65536), 0.5)
            except TimeoutError:
                if then is None:
                    break
                writer.write(then)
                then = None
                continue
            if not chunk:
                break
            received += chunk
        return received
    finally:
        writer.close()


def parse(raw: bytes) -> tuple[str, dict[str, list[str]], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    status, *lines = head.decode().split("\r\n")
    headers: dict[str, list[str]] = {}
    for line in lines:
        name, _, value = line.partition(": ")
        headers.setdefault(name.lower(), []).append(value)
    return status, headers, body


def get(path: str, method: str = "GET", version: str = "1.1", extra: str = "") -> bytes:
    return f"{method} {path} HTTP/{version}\r\nHost: node\r\n{extra}\r\n".encode()
