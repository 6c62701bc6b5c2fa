"""Slow clients (issue #18, case 3): a connection may take node.header_timeout to send its
first request head, node.body_timeout between two bytes of a body and node.keepalive_timeout
idle between requests; past node.max_connections a connection is refused at once. So a
slowloris cannot hold the node, and real clients keep being served."""

from __future__ import annotations

import asyncio
import re
import resource
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace

import aiohttp
import orjson
import pytest
from aiohttp import web
from aiohttp.http import HttpVersion11, RawRequestMessage
from aiohttp.streams import EMPTY_PAYLOAD
from e2e.e2e_harness import RUN_PY, free_port, node_env
from multidict import CIMultiDict, CIMultiDictProxy
from testkit.rawhttp import get, parse
from yarl import URL

from node.config import Settings
from node.edge import request_factory
from node.edge_stats import CAP_CEILING, FD_RESERVE, connection_cap
from node.errors import ConfigError
from node.schema import build

from .edge_node import Seen, ServeNode, close, read_all, serving, trickle

# A head that never ends: a byte every 0.1 s would take it 5 s.
SLOW_HEAD = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"s" * 30


@pytest.fixture
async def serve_node() -> AsyncIterator[ServeNode]:
    async with serving() as start:
        yield start


def reply(seen: Seen) -> tuple[str, dict[str, list[str]], dict]:
    status, headers, body = parse(seen.data)
    return status, headers, orjson.loads(body)


async def slow_connection(
    port: int, slow: bytes, every: float, wait: float, first: bytes = b""
) -> Seen:
    """Connect, send `first`, then `slow` a byte every `every` seconds; see what the node
    does in `wait` seconds."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(first)
    sending = asyncio.create_task(trickle(writer, slow, every))
    try:
        return await read_all(reader, wait)
    finally:
        sending.cancel()
        await close(writer)


@pytest.mark.parametrize("head", [b"", SLOW_HEAD], ids=["silent", "byte-by-byte"])
async def test_a_head_not_in_by_header_timeout_is_answered_408_and_closed(serve_node, head):
    """Nothing, or a head a byte at a time: a JSON 408 at header_timeout, then closed."""
    served = await serve_node()
    seen = await slow_connection(served.port, head, 0.05, wait=3.0)
    assert seen.closed and 0.4 < seen.after < 1.5, seen
    status, headers, body = reply(seen)
    assert status == "HTTP/1.1 408 Request Timeout"
    assert headers["content-type"] == ["application/json"]
    assert headers["connection"] == ["close"]
    assert body["error"] == "request_timeout"
    assert b"X-Slow" not in seen.data and b"health" not in seen.data
    assert served.edge.head_timeouts == 1


async def test_an_idle_kept_alive_connection_closes_after_keepalive_timeout(serve_node):
    """After a reply, an idle connection stays open keepalive_timeout (1 s), not 3630 s."""
    served = await serve_node()
    reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
    try:
        writer.write(get("/health"))
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 OK")
        length = int(head.lower().partition(b"content-length: ")[2].partition(b"\r\n")[0])
        await reader.readexactly(length)
        seen = await read_all(reader, 3.0)
    finally:
        await close(writer)
    assert seen.closed and seen.data == b"", seen  # closed quietly, as nginx does
    assert 0.9 < seen.after < 2.0, seen  # keepalive_timeout, not header_timeout (0.5 s)


async def test_body_timeout_is_time_between_bytes_not_in_all(serve_node):
    """A body that stops is answered 408 and closed; one that trickles on is served."""
    served = await serve_node()
    post = b"POST /echo/x HTTP/1.1\r\nHost: x\r\nContent-Length: 8\r\nConnection: close\r\n\r\n"
    stalled, steady = await asyncio.gather(
        slow_connection(served.port, b"", 0.0, wait=3.0, first=post + b"ab"),
        slow_connection(served.port, b"12345678", 0.15, wait=3.0, first=post),
    )
    assert stalled.closed and 0.4 < stalled.after < 1.5, stalled
    status, headers, body = reply(stalled)
    assert status == "HTTP/1.1 408 Request Timeout"
    assert headers["content-type"] == ["application/json"]
    assert headers["connection"] == ["close"]
    assert body == {"error": "request_timeout", "detail": "the request body sent nothing for 0.5 s"}
    # The steady one took over 1.5 s in all, 0.15 s between bytes: under body_timeout.
    status, _, body = reply(steady)
    assert status == "HTTP/1.1 200 OK" and body["body_bytes"] == 8
    assert served.edge.body_timeouts == 1


async def test_connections_over_the_cap_are_refused_with_a_503(serve_node):
    """Past max_connections a new connection gets a JSON 503 and is closed at once; when
    one closes there is room again, and /metrics counts the refusals."""
    served = await serve_node({"max_connections": 3, "header_timeout": 5, "keepalive_timeout": 5})
    held = [await asyncio.open_connection("127.0.0.1", served.port) for _ in range(3)]
    try:
        await until(lambda: served.edge.open == 3)
        refused = await slow_connection(served.port, get("/health"), 0.0, wait=2.0)
        assert refused.closed and refused.after < 0.3, refused
        status, headers, body = reply(refused)
        assert status == "HTTP/1.1 503 Service Unavailable"
        assert headers["content-type"] == ["application/json"]
        assert headers["retry-after"] == ["1"]
        assert body["error"] == "too_many_connections"
    finally:
        for _, writer in held:
            await close(writer)
    await until(lambda: served.edge.open == 0)
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{served.port}/metrics") as resp,
    ):
        metrics = await resp.text()
    assert 'scalenode_connections_refused_total{node="edge"} 1.0' in metrics
    assert 'scalenode_connections_max{node="edge"} 3.0' in metrics


async def test_a_slowloris_is_cut_at_header_timeout_while_clients_are_served(serve_node):
    """40 connections trickling a head are each answered 408 at header_timeout, not held
    for as long as they trickle (5 s); real clients get their 200s all along."""
    served = await serve_node()
    attack = [
        asyncio.create_task(slow_connection(served.port, SLOW_HEAD, 0.1, wait=3.0))
        for _ in range(40)
    ]
    statuses = []
    async with aiohttp.ClientSession() as session:
        for _ in range(15):
            async with session.get(f"http://127.0.0.1:{served.port}/health") as resp:
                statuses.append(resp.status)
            await asyncio.sleep(0.05)
    seen = await asyncio.gather(*attack)
    assert statuses == [200] * 15
    assert all(s.closed and s.after < 1.5 for s in seen), max(s.after for s in seen)
    assert {parse(s.data)[0] for s in seen} == {"HTTP/1.1 408 Request Timeout"}
    assert served.edge.head_timeouts == 40


# python -c SHIM run.py ARGS: run.py under an open-file limit of 256, as in the issue.
SHIM = (
    "import os, resource, sys; resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256)); "
    "os.execv(sys.executable, [sys.executable, *sys.argv[1:]])"
)


async def test_a_256_descriptor_node_outlasts_300_slow_connections(tmp_path: Path):
    """The issue's case: with 256 descriptors and no limits, slow connections used them all
    and real clients got nothing. The default cap (from the open-file limit) refuses the
    excess with 503s and header_timeout cuts the rest: all 15 clients are served within a
    second or so, while the slow connections would still be trickling for 5 s."""
    config = tmp_path / "node.toml"
    config.write_text('[node]\nname = "fd256"\nheader_timeout = 0.5\n')
    port = free_port()
    argv = [sys.executable, "-c", SHIM, str(RUN_PY), "--config", str(config), "--port", str(port)]
    log = (tmp_path / "stderr.log").open("wb")
    node = await asyncio.create_subprocess_exec(
        *argv, cwd=tmp_path, env=node_env(), stdout=log, stderr=log, start_new_session=True
    )
    try:
        async with aiohttp.ClientSession() as session:
            await until_served(session, port, 10.0)
            attack = [
                asyncio.create_task(slow_connection(port, SLOW_HEAD, 0.1, wait=3.0))
                for _ in range(300)
            ]
            await asyncio.sleep(0.2)
            served = await asyncio.gather(*(until_served(session, port, 2.0) for _ in range(15)))
            seen = await asyncio.gather(*attack)
    finally:
        node.terminate()
        await node.wait()
        log.close()
    assert all(served), served
    statuses = {parse(s.data)[0] for s in seen}
    assert statuses == {"HTTP/1.1 503 Service Unavailable", "HTTP/1.1 408 Request Timeout"}
    assert "connection cap of 64 reached" in (tmp_path / "stderr.log").read_text()  # (256-128)/2


async def until_served(session: aiohttp.ClientSession, port: int, seconds: float) -> bool:
    """GET /health on a new connection until a 200 (503s and refusals retried)."""
    deadline = asyncio.get_running_loop().time() + seconds
    while asyncio.get_running_loop().time() < deadline:
        try:
            async with session.get(
                f"http://127.0.0.1:{port}/health",
                headers={"Connection": "close"},
                timeout=aiohttp.ClientTimeout(total=0.5),
            ) as resp:
                if resp.status == 200:
                    return True
        except (aiohttp.ClientError, TimeoutError):
            pass
        await asyncio.sleep(0.05)
    return False


async def until(predicate, seconds: float = 2.0) -> None:
    deadline = asyncio.get_running_loop().time() + seconds
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


@pytest.mark.parametrize(
    ("node", "message"),
    [
        ({"header_timeout": 0}, "node.header_timeout: must be > 0"),
        ({"body_timeout": -1}, "node.body_timeout: must be > 0"),
        ({"keepalive_timeout": 0}, "node.keepalive_timeout: must be > 0"),
        ({"header_timeout": 80}, "node.header_timeout: must be <= keepalive_timeout (75)"),
        ({"max_connections": -1}, "node.max_connections: must be >= 0"),
    ],
)
def test_a_bad_limit_is_a_config_error_naming_the_key(node, message):
    """Each new [node] key is checked before the port binds, naming itself."""
    with pytest.raises(ConfigError, match="^" + re.escape(message)):
        build(Settings, {"node": node}, "")


def test_the_cap_defaults_to_what_the_open_file_limit_allows():
    """0 (the default) derives the cap from RLIMIT_NOFILE; a set value is kept as is."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert connection_cap(0) == min(CAP_CEILING, max(1, (soft - FD_RESERVE) // 2))
    assert connection_cap(123) == 123


def test_the_edge_builds_the_request_the_app_would():
    """node.edge replaces the app's request factory (for the body timer and the version
    check, at no extra cost): the request it builds must be the app's, with every limit
    aiohttp passes (an aiohttp upgrade that adds one fails here)."""
    app = web.Application(client_max_size=12345, client_max_fields=77)  # not the defaults
    loop = asyncio.new_event_loop()
    try:
        message = RawRequestMessage(
            "POST", "/x", HttpVersion11, CIMultiDictProxy(CIMultiDict()), (), False, None,
            False, False, URL("/x"),
        )  # fmt: skip
        protocol = SimpleNamespace(
            ssl_context=None, peername=("127.0.0.1", 1), sockname=None, body_timer=None
        )
        made = [
            factory(message, EMPTY_PAYLOAD, protocol, None, None)
            for factory in (app._make_request, request_factory(app, loop))
        ]
    finally:
        loop.close()
    assert type(made[0]) is type(made[1])
    by_app, by_edge = (dict(vars(request)) for request in made)
    assert by_edge.pop("_loop") is loop  # the app's is set when a runner starts it
    del by_app["_loop"]
    assert by_app == by_edge
    assert (by_edge["_client_max_size"], by_edge["_client_max_fields"]) == (12345, 77)
