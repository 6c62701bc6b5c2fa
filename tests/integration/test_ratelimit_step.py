"""The one-limit rate limit's Redis step (OneLimitRateLimiter.redis_step) on the local Redis:
its fast path (keys packed per peer, batches of one tick settled by `Settle`) must answer
exactly what the general path and the embedded store answer: the same verdicts, the same
RateLimit header lines, byte for byte, and the same 429."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from multidict import CIMultiDict

from node.call import Call, Reply
from node.cluster.redis import RedisConnection
from node.errors import RateLimited, ServiceUnavailable
from node.forwarding import TrustedProxies
from node.schema import build
from plugins.ratelimit.algorithms import FIXED_WINDOW, Limit
from plugins.ratelimit.one_limit import OneLimitRateLimiter
from plugins.ratelimit.plugin import LIMIT_LINES, Policy, header_lines
from plugins.ratelimit.settings import RateLimitSettings, default_limits
from plugins.ratelimit.stores import BATCHED, MAX_BATCH, RedisCounter

from .ratelimit_helpers import REDIS_URL, avoid_window_edge


async def ok(call: Call) -> Reply:
    return Reply(200, b"{}", {}, "application/json")


@pytest.fixture
async def connection() -> AsyncIterator[RedisConnection]:
    made = RedisConnection(REDIS_URL)
    yield made
    await made.close()


def limiter(
    connection: RedisConnection, limit: int, key: str = "ip", on_backend_error: str = "open"
) -> tuple[OneLimitRateLimiter, Any]:
    table = {"limit": limit, "window": 60, "key": key, "scope": uuid.uuid4().hex}
    table["on_backend_error"] = on_backend_error
    settings = build(RateLimitSettings, table, "ratelimit")
    policy = Policy(settings, default_limits(settings, "ratelimit"), {}, "test")
    store = RedisCounter(connection)
    assert BATCHED in store.capabilities
    made = OneLimitRateLimiter(policy, store, TrustedProxies(()), lambda: 1)
    assert made.peer_is_client == (key == "ip")
    return made, made.bind(ok)


def call_from(peer: object, headers: dict[str, str] | None = None) -> Call:
    call = Call("GET", "/", headers=CIMultiDict(headers or {}))
    call.peer = peer
    return call


def lines(limit: int, remaining: int, seconds: int) -> bytes:
    return header_lines(LIMIT_LINES % limit, remaining, seconds * 1_000_000)


async def test_one_tick_of_peers_is_one_batch_each_with_its_own_headers(
    connection: RedisConnection,
) -> None:
    await avoid_window_edge(60)
    made, step = limiter(connection, 10)
    peers = [(f"127.0.0.{i + 1}", 40000 + i) for i in range(3)]  # three addresses: clients
    checks: dict[object, int] = dict.fromkeys(peers, 0)
    for _ in range(3):  # the first round packs each peer's key, the others reuse it
        calls = [call_from(peer) for peer in peers] + [call_from(peers[0])]
        replies = await asyncio.gather(*(step(call) for call in calls))
        assert [reply.status for reply in replies] == [200] * 4
        # Each address is its own client; the checks of one tick count in the calls' order.
        remaining = []
        for call in calls:
            checks[call.peer] += 1
            remaining.append(10 - checks[call.peer])
        for call, left in zip(calls, remaining, strict=True):
            names, added = call.added_headers  # type: ignore[misc]
            assert [str(n) for n in names] == [
                "RateLimit-Limit",
                "RateLimit-Remaining",
                "RateLimit-Reset",
            ]
            seconds = int(added.rsplit(b"RateLimit-Reset: ", 1)[1].split(b"\r\n")[0])
            assert 0 < seconds <= 60
            assert added == lines(10, left, seconds)
    store: RedisCounter = made.store  # type: ignore[assignment]
    assert not store.batch and not store.key_parts and not store.arg_parts
    assert made.counters.allowed == 12


async def script_calls(connection: RedisConnection) -> int:
    stats = await connection.client.info("commandstats")
    return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))


async def test_a_tick_of_more_than_a_batch_goes_in_batches_and_stays_exact(
    connection: RedisConnection,
) -> None:
    """A tick's checks leave in batches of MAX_BATCH (Redis runs one while the node goes
    on), and one client's checks still count in the calls' order: the limit holds to the
    request, the remaining counts down one by one, the rest are 429s."""
    await avoid_window_edge(60)
    count = 2 * MAX_BATCH + 8
    made, step = limiter(connection, count - 5)
    peer = ("10.0.0.7", 5000)
    assert (await step(call_from(peer))).status == 200  # packs the peer's key
    before = await script_calls(connection)
    calls = [call_from(peer) for _ in range(count)]
    outcomes = await asyncio.gather(*(step(call) for call in calls), return_exceptions=True)
    assert await script_calls(connection) - before == 3  # 16 + 16 + 8, not one per request
    allowed = count - 6
    assert [getattr(o, "status", None) for o in outcomes[:allowed]] == [200] * allowed
    assert all(isinstance(o, RateLimited) for o in outcomes[allowed:])
    remaining = [
        int(call.added_headers[1].split(b"RateLimit-Remaining: ")[1].split(b"\r\n")[0])  # type: ignore[index]
        for call in calls
    ]
    assert remaining == [*range(allowed - 1, -1, -1), *[0] * 6]
    store: RedisCounter = made.store  # type: ignore[assignment]
    assert not store.batch and not store.key_parts and not store.arg_parts


async def test_the_stores_own_batches_are_bounded_too(connection: RedisConnection) -> None:
    """RedisCounter.hit (the general path, tiers and multi-limit policies) batches the same."""
    counter = RedisCounter(connection)
    key = f"sn:rl:{{{uuid.uuid4().hex}}}:bounded"
    limit = Limit(100, 3_600_000_000, 100)  # an hour: no window edge within the test
    await counter.hit([key], FIXED_WINDOW, [limit])  # loads the script
    before = await script_calls(connection)
    decisions = await asyncio.gather(
        *(counter.hit([key], FIXED_WINDOW, [limit]) for _ in range(MAX_BATCH + 1))
    )
    assert await script_calls(connection) - before == 2
    assert [d.verdicts[0].remaining for d in decisions] == list(range(98, 98 - MAX_BATCH - 1, -1))
    await connection.client.delete(key)


async def test_over_the_limit_is_a_429_with_its_headers(connection: RedisConnection) -> None:
    await avoid_window_edge(60)
    made, step = limiter(connection, 2)
    peer = ("10.0.0.9", 5000)
    for _ in range(2):  # a batch of one each (the reply is the request's own)
        assert (await step(call_from(peer))).status == 200
    call = call_from(peer)
    with pytest.raises(RateLimited) as raised:
        await step(call)
    assert raised.value.status == 429
    assert 1 <= int(raised.value.headers["Retry-After"]) <= 60
    added = call.added_headers[1]  # type: ignore[index]
    assert added.startswith(b"RateLimit-Limit: 2\r\nRateLimit-Remaining: 0\r\n")
    assert made.counters.allowed == 2 and made.counters.limited == 1


async def test_clients_named_by_a_header_take_the_same_path(connection: RedisConnection) -> None:
    """key = header: the client is not the peer; its key is packed once all the same."""
    await avoid_window_edge(60)
    _, step = limiter(connection, 5, key="header:X-Api-Key")
    peer = ("127.0.0.1", 40001)  # one connection, two clients on it (by their key)
    for n in range(2):
        calls = [call_from(peer, {"X-Api-Key": "a"}), call_from(peer, {"X-Api-Key": "b"})]
        await asyncio.gather(*(step(call) for call in calls))
        for call in calls:
            assert b"RateLimit-Remaining: %d\r\n" % (4 - n) in call.added_headers[1]  # type: ignore[index]


async def test_the_step_and_the_general_path_agree(connection: RedisConnection) -> None:
    """`__call__` (through RedisCounter.hit, ints) and the step (digits spliced as they
    come) give the same header lines for the same client."""
    await avoid_window_edge(60)
    made, step = limiter(connection, 7)
    peer = ("192.0.2.1", 1234)
    first, second = call_from(peer), call_from(peer)
    await step(first)
    await made(second, ok)
    seconds = int(first.added_headers[1].rsplit(b": ", 1)[1].split(b"\r\n")[0])  # type: ignore[index]
    assert first.added_headers[1] == lines(7, 6, seconds)  # type: ignore[index]
    assert second.added_headers[1].startswith(b"RateLimit-Limit: 7\r\nRateLimit-Remaining: 5\r\n")  # type: ignore[index]


@pytest.mark.parametrize("mode", ["open", "closed"])
async def test_redis_marked_down_takes_on_backend_error(
    connection: RedisConnection, mode: str
) -> None:
    """A known peer (key packed) while Redis is marked down: no check is queued, and
    `on_backend_error` answers as on the general path."""
    made, step = limiter(connection, 5, on_backend_error=mode)
    peer = ("192.0.2.7", 1)
    await step(call_from(peer))  # packs the peer's key
    connection.available = False  # as RedisConnection.went_down marks it
    call = call_from(peer)
    if mode == "closed":
        with pytest.raises(ServiceUnavailable) as raised:
            await step(call)
        assert raised.value.headers == {"Retry-After": "1"}
    else:
        assert (await step(call)).status == 200
        assert call.added_headers is None and made.counters.unlimited_by_outage == 1
    store: RedisCounter = made.store  # type: ignore[assignment]
    assert not store.batch and not store.key_parts and made.counters.backend_errors == 1
