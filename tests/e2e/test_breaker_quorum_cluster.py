"""Corroborated shared trips and the ejection cap, on three real `python run.py` gateways
sharing Redis, with the breaker's defaults (corroborate = 2, max_ejection_percent = 50).

The upstream members run in the test's own loop, so the test decides whom they fail: a
member answers 500 to the calls a given gateway forwards (known by the X-Forwarded-Host the
gateway sets: its own host:port), as if that gateway's path to it were bad, or to every
call during a blip.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import pytest
from aiohttp import web
from ratelimit_helpers import SHARED_REDIS, connect

from plugins.breaker.keys import BREAKER_PROBES, BREAKER_TRIPS

MIN_REQUESTS = 5


class Member:
    """One upstream member: fails calls from the gateways in `sick_for`, or all in a blip."""

    def __init__(self) -> None:
        self.sick_for: set[int] = set()
        self.blip = False
        self.calls: Counter[int] = Counter()  # by gateway port
        self.port = 0
        self.runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/{tail:.*}", self.handle)
        self.runner = web.AppRunner(app, shutdown_timeout=0.5)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def handle(self, request: web.Request) -> web.Response:
        gateway = int(request.headers["X-Forwarded-Host"].rpartition(":")[2])
        self.calls[gateway] += 1
        failing = self.blip or gateway in self.sick_for
        return web.json_response({"member": self.port}, status=500 if failing else 200)


@pytest.fixture
async def members() -> AsyncIterator[Callable[[int], Awaitable[list[Member]]]]:
    """Starts upstream members; afterwards stops them and deletes their breaker records."""
    started: list[Member] = []

    async def start(count: int) -> list[Member]:
        made = [Member() for _ in range(count)]
        for member in made:
            await member.start()
        started.extend(made)
        return made

    yield start
    client = connect(SHARED_REDIS)
    for member in started:
        name = f"app|127.0.0.1:{member.port}"
        client.delete(BREAKER_TRIPS + name, BREAKER_PROBES + name)
        if member.runner is not None:
            await member.runner.cleanup()
    client.close()


def gateways(
    start_node: Callable[..., object], write_config: Callable[..., object], pool: list[Member]
) -> list[int]:
    """Three gateways, A, B and C, with one pool of `pool` behind /api; their ports."""
    targets = ", ".join(f'"{member.url}"' for member in pool)
    ports = []
    for label in "abc":
        name = f"q-{label}-{uuid.uuid4().hex[:8]}"
        config = (
            f'[node]\nname = "{name}"\n\n[backends]\nredis = "{SHARED_REDIS}"\n\n'
            f"[upstreams.app]\ntargets = [{targets}]\n\n"
            '[[routes]]\npath = "/api/{tail:.*}"\ntarget = "upstream:app"\n'
            'strip_prefix = "/api"\n'
            f"breaker = {{ min_requests = {MIN_REQUESTS}, open_seconds = 30 }}\n"
        )
        path = write_config(config, f"{name}.toml")
        ports.append(start_node("--config", str(path)).port)  # type: ignore[attr-defined]
    return ports


async def statuses(session: aiohttp.ClientSession, port: int, count: int) -> list[int]:
    replies = []
    for _ in range(count):
        async with session.get(f"http://127.0.0.1:{port}/api/x") as response:
            await response.read()
            replies.append(response.status)
    return replies


async def series(session: aiohttp.ClientSession, port: int, name: str) -> list[str]:
    """The gateway's /metrics lines of the family `name`."""
    async with session.get(f"http://127.0.0.1:{port}/metrics") as response:
        text = await response.text()
    return [line for line in text.splitlines() if line.startswith(name + "{")]


async def metric(session: aiohttp.ClientSession, port: int, name: str) -> float:
    """The value of the route's series `name` (0 when absent)."""
    lines = await series(session, port, name)
    return float(lines[0].rsplit(" ", 1)[1]) if lines else 0.0


async def state(session: aiohttp.ClientSession, port: int, member: Member) -> str:
    """The member's breaker state on the gateway at `port`."""
    for line in await series(session, port, "scalenode_upstream_breaker_state"):
        if f'member="{member.url}"' in line and line.endswith(" 1.0"):
            return line.split('state="', 1)[1].split('"', 1)[0]
    raise AssertionError(f"no breaker state for {member.url} on :{port}")


async def reported(member: Member) -> None:
    """Wait (1 s at most) until a trip of `member` is recorded in Redis, which its node does
    just after publishing it, then for the other nodes to hear it (milliseconds)."""
    client = connect(SHARED_REDIS)
    try:
        deadline = time.monotonic() + 1.0
        while not client.exists(f"{BREAKER_TRIPS}app|127.0.0.1:{member.port}"):
            assert time.monotonic() < deadline, "the trip was never recorded"
            await asyncio.sleep(0.01)
    finally:
        client.close()
    await asyncio.sleep(0.1)


async def test_a_member_failing_for_one_node_stays_in_service_on_the_others(
    start_node: Callable[..., object],
    write_config: Callable[..., object],
    members: Callable[[int], Awaitable[list[Member]]],
    session: aiohttp.ClientSession,
) -> None:
    """Only A's calls to the member fail: A opens it, B and C hear A's trip and keep
    sending it their calls, which it answers."""
    (member,) = await members(1)
    a, b, c = gateways(start_node, write_config, [member])
    member.sick_for = {a}
    assert await statuses(session, a, MIN_REQUESTS) == [500] * MIN_REQUESTS
    assert await statuses(session, a, 1) == [503]  # circuit_open on A
    await reported(member)
    for port in (b, c):
        assert await statuses(session, port, 3) == [200] * 3
        assert member.calls[port] == 3
        assert await state(session, port, member) == "closed"
        assert await metric(session, port, "scalenode_breaker_doubts_total") == 1
    assert await state(session, a, member) == "open"


async def test_a_member_failing_for_two_nodes_opens_on_the_third_within_100_ms(
    start_node: Callable[..., object],
    write_config: Callable[..., object],
    members: Callable[[int], Awaitable[list[Member]]],
    session: aiohttp.ClientSession,
) -> None:
    """A trips the member; B, doubting it, trips on its first failure there; the second
    report opens it on C within 100 ms, and C no longer calls it."""
    (member,) = await members(1)
    a, b, c = gateways(start_node, write_config, [member])
    member.sick_for = {a, b}
    assert await statuses(session, a, MIN_REQUESTS) == [500] * MIN_REQUESTS
    await reported(member)
    assert await statuses(session, b, 2) == [500, 503]  # one failure was enough
    tripped = time.monotonic()
    while await state(session, c, member) != "open":
        assert time.monotonic() - tripped < 1.0, "C never opened the member"
    assert time.monotonic() - tripped < 0.1
    assert await statuses(session, c, 3) == [503] * 3
    assert member.calls[c] == 0


async def test_a_blip_on_every_member_ejects_at_most_half_of_the_pool(
    start_node: Callable[..., object],
    write_config: Callable[..., object],
    members: Callable[[int], Awaitable[list[Member]]],
    session: aiohttp.ClientSession,
) -> None:
    """Every member fails every call for a while, on every gateway: each opens at most two
    of the four (50 %), the others' trips are capped, and once the blip is over every
    gateway's requests are answered at once."""
    pool = await members(4)
    ports = gateways(start_node, write_config, pool)
    for member in pool:
        member.blip = True
    for port in ports:
        assert set(await statuses(session, port, 6 * MIN_REQUESTS)) == {500}
    for member in pool:
        member.blip = False
    capped = 0.0
    for port in ports:
        assert await statuses(session, port, 8) == [200] * 8
        assert await metric(session, port, "scalenode_breaker_open_members") == 2
        capped += await metric(session, port, "scalenode_breaker_capped_total")
    assert capped >= len(ports)
