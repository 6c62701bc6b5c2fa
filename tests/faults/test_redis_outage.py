"""Redis killed and restarted under load, behind a rate limit in its default fail-open mode
(docs/plugins/ratelimit.md): no request fails, /ready stays 200 "degraded" so the load
balancer keeps the node, and once Redis is back the limit holds again within the node's
reconnect time."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter

import aiohttp
import orjson

from node.cluster.redis import COMMAND_TIMEOUT, RECONNECT_INTERVAL

from .fleet import Figures, Fleet, node_config
from .load import Load, failures

LIMIT = 20  # per client and minute: what the bursts below must find enforced
OUTAGE = 3.0  # seconds Redis stays down
# A reconnect attempt (a PING, given COMMAND_TIMEOUT) every RECONNECT_INTERVAL: the limit
# holds again at most this long after Redis answers.
RECOVERY = RECONNECT_INTERVAL + COMMAND_TIMEOUT
RATELIMIT = (
    f'ratelimit = {{ limit = {LIMIT}, window = 60, key = "header:X-Client", '
    'on_backend_error = "open" }'
)


def fresh() -> dict[str, str]:
    return {"X-Client": uuid.uuid4().hex}


async def burst(session: aiohttp.ClientSession, url: str, count: int) -> Counter[int]:
    """`count` concurrent requests of one new client: their statuses."""
    headers = fresh()

    async def one() -> int:
        async with session.get(url, headers=headers) as resp:
            return resp.status

    return Counter(await asyncio.gather(*(one() for _ in range(count))))


async def counted_by_redis(session: aiohttp.ClientSession, url: str) -> bool:
    """Was a new client's request decided by the shared counters (RateLimit-* headers)?
    In fail-open mode a request let through unlimited carries none."""
    async with session.get(url, headers=fresh()) as resp:
        return resp.status == 200 and "RateLimit-Limit" in resp.headers


async def test_redis_outage_fails_open_and_the_limit_returns(
    fleet: Fleet, redis_server, session: aiohttp.ClientSession, figures: Figures
) -> None:
    """Redis SIGKILLed for 3 s under 200 req/s: every request served, then enforced again."""
    member = fleet.member("m")
    node = fleet.node("rl", node_config("rl", [member], redis=redis_server.url, route=RATELIMIT))
    base = f"http://127.0.0.1:{node.port}"
    api = f"{base}/api/x"
    async with Load(session, [api], headers=fresh) as load:
        await asyncio.sleep(1.0)
        assert await burst(session, api, 2 * LIMIT) == {200: LIMIT, 429: LIMIT}
        redis_server.kill()
        killed = time.monotonic()
        await asyncio.sleep(OUTAGE / 2)
        assert await burst(session, api, 2 * LIMIT) == {200: 2 * LIMIT}  # let through
        async with session.get(f"{base}/ready") as resp:
            assert (resp.status, orjson.loads(await resp.read())["status"]) == (200, "degraded")
        await asyncio.sleep(killed + OUTAGE - time.monotonic())
        await asyncio.to_thread(redis_server.start)
        restarted = time.monotonic()
        while not await counted_by_redis(session, api):
            assert time.monotonic() - restarted < 2 * RECOVERY, "the limit never came back"
            await asyncio.sleep(0.02)
        enforced_after = time.monotonic() - restarted
        assert await burst(session, api, 2 * LIMIT) == {200: LIMIT, 429: LIMIT}
        await asyncio.sleep(0.5)
    assert not failures(load.samples), Counter(s.status for s in failures(load.samples))
    before = load.between(killed - 1.0, killed)
    during = load.between(killed, restarted)
    assert {s.status for s in during} == {200}
    rate_before, rate_during = len(before) / 1.0, len(during) / (restarted - killed)
    figures.append(("enforced_after_s", round(enforced_after, 3)))
    figures.append(("req_per_s_before", round(rate_before, 1)))
    figures.append(("req_per_s_during", round(rate_during, 1)))
    assert rate_during >= 0.8 * rate_before, (rate_before, rate_during)
    assert enforced_after <= RECOVERY, f"limit enforced {enforced_after:.2f} s after restart"
