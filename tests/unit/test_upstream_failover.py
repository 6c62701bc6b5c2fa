"""node/upstream/failover.py through UpstreamPool: skipping open and ejected members, CircuitOpen,
retries on another member within the budget, hash picks and X-Shard."""

from __future__ import annotations

import time
from collections import Counter

import pytest
from multidict import CIMultiDict

from node.call import Reply
from node.errors import BadGateway, CircuitOpen, GatewayTimeout, ServiceUnavailable
from node.upstream.failover import MIN_RETRIES_PER_SECOND, RetryBudget
from node.upstream.health import HealthChecker
from node.upstream.pool import UpstreamPool
from node.upstream.settings import HealthSettings, UpstreamSettings
from plugins.breaker.circuit import OPEN
from plugins.breaker.plugin import guard_pool
from plugins.breaker.settings import BreakerSettings

URLS = ("http://a:1", "http://b:1", "http://c:1")


class ScriptedClient:
    """Answers per member: an exception to raise or a status to reply with (default 200)."""

    def __init__(self, script: dict[str, Exception | int] | None = None) -> None:
        self.script = script or {}
        self.sent: list[str] = []

    async def send(self, member, method, path, headers, body) -> Reply:
        self.sent.append(member.url)
        outcome = self.script.get(member.url, 200)
        if isinstance(outcome, Exception):
            raise outcome
        return Reply(outcome, b"", CIMultiDict())

    async def close(self) -> None:
        pass


def make_pool(client: ScriptedClient, **settings: object) -> UpstreamPool:
    return UpstreamPool("app", UpstreamSettings(targets=URLS, **settings), client)  # type: ignore[arg-type]


async def send(pool: UpstreamPool, method: str = "GET", key: str | None = None) -> Reply:
    return await pool.send(method, "/x", [], b"", key)


async def test_plain_pool_keeps_its_plain_send() -> None:
    """A pool with nothing to guard sends without the failover path."""
    pool = make_pool(ScriptedClient())
    assert pool.send == pool._send_plain


async def test_open_member_is_skipped() -> None:
    """With b's circuit open, round robin sends to a and c only."""
    client = ScriptedClient()
    pool = make_pool(client)
    guard_pool(pool, BreakerSettings())
    pool.members[1].circuit.open_for(0, 1e9, 0)  # type: ignore[union-attr]
    for _ in range(6):
        await send(pool)
    assert Counter(client.sent) == {URLS[0]: 3, URLS[2]: 3}
    assert pool.members[1].circuit.rejections >= 1  # type: ignore[union-attr]


async def test_all_open_is_circuit_open_with_retry_after_and_no_upstream_call() -> None:
    """Every circuit open: 503 CircuitOpen, Retry-After = time to the first half-open."""
    client = ScriptedClient()
    pool = make_pool(client)
    circuits = guard_pool(pool, BreakerSettings())
    for seconds, circuit in zip((30, 7.2, 50), circuits, strict=True):
        circuit.open_for(pool_now(), seconds, 0)
    with pytest.raises(CircuitOpen) as caught:
        await send(pool)
    assert caught.value.status == 503
    assert caught.value.headers["Retry-After"] in ("7", "8")
    assert client.sent == []
    assert pool.snapshot()["rejected"] == 1


def pool_now() -> float:
    return time.monotonic()


async def test_failures_trip_the_member_and_calls_move_on() -> None:
    """A member failing every call trips after min_requests; the others take its share."""
    client = ScriptedClient({URLS[0]: 500})
    pool = make_pool(client)
    guard_pool(pool, BreakerSettings(min_requests=3))
    for _ in range(30):
        await send(pool)
    member = pool.members[0]
    assert member.circuit.state == OPEN  # type: ignore[union-attr]
    assert client.sent.count(URLS[0]) == 3
    snapshot = pool.snapshot()["members"][0]  # type: ignore[index]
    assert (snapshot["state"], snapshot["trips"]) == ("open", 1)


async def test_timeouts_alone_trip_the_member() -> None:
    """A member that never fails outright but always times out (504) trips after
    min_requests like a failing one; nothing else counts against it."""
    client = ScriptedClient({URLS[0]: GatewayTimeout("no answer in time")})
    pool = make_pool(client)
    guard_pool(pool, BreakerSettings(min_requests=4))
    timeouts = 0
    for _ in range(30):
        try:
            await send(pool)
        except GatewayTimeout:
            timeouts += 1
    assert timeouts == client.sent.count(URLS[0]) == 4
    snapshot = pool.snapshot()["members"][0]  # type: ignore[index]
    assert (snapshot["state"], snapshot["trips"]) == ("open", 1)
    assert (snapshot["timeouts"], snapshot["failures"]) == (4, 0)


@pytest.mark.parametrize("error", [BadGateway("refused"), GatewayTimeout("slow"), 503])
async def test_idempotent_call_is_retried_on_another_member(error: Exception | int) -> None:
    """A GET failing on a dead member is answered by the next one, and counted as a retry."""
    client = ScriptedClient({URLS[0]: error})
    pool = make_pool(client, retries=1)
    reply = await send(pool)
    assert reply.status == 200
    assert client.sent == [URLS[0], URLS[1]]
    assert pool.members[1].retries == 1
    assert pool.snapshot()["retries"] == 1


async def test_post_is_not_retried() -> None:
    """A POST is sent once: the upstream may have acted on it."""
    client = ScriptedClient({URLS[0]: BadGateway("reset")})
    pool = make_pool(client, retries=2)
    with pytest.raises(BadGateway):
        await send(pool, "POST")
    assert client.sent == [URLS[0]]


async def test_retries_stop_at_the_budget() -> None:
    """With every member failing, retries stop once the budget's minimum is spent."""
    client = ScriptedClient({url: BadGateway("down") for url in URLS})
    pool = make_pool(client, retries=2, retry_budget=0.0)
    for _ in range(5):
        with pytest.raises(BadGateway):
            await send(pool)
    assert len(client.sent) <= 5 + MIN_RETRIES_PER_SECOND * 2  # a second boundary may pass
    assert pool.snapshot()["budget_exhausted"] >= 1


def test_retry_budget_is_a_ratio_of_requests_with_a_floor() -> None:
    """20 % of 100 requests a second may be retries; a quiet second still allows 3."""
    budget = RetryBudget(0.2)
    for _ in range(100):
        budget.request(10.5)
    assert sum(budget.allow() for _ in range(30)) == 20
    budget.request(11.0)  # the next second remembers the last one's traffic
    assert sum(budget.allow() for _ in range(30)) == 20
    budget.request(20.0)
    assert sum(budget.allow() for _ in range(30)) == MIN_RETRIES_PER_SECOND
    assert budget.exhausted == 10 + 10 + 27


async def test_dead_member_of_three_costs_no_client_errors() -> None:
    """One dead member, retries = 1 and a breaker: every call is answered 200, and the
    breaker soon stops the calls to the dead member (so retries stop too)."""
    client = ScriptedClient({URLS[1]: BadGateway("refused")})
    pool = make_pool(client, retries=1, retry_budget=0.5)
    guard_pool(pool, BreakerSettings(min_requests=5))
    statuses = [(await send(pool)).status for _ in range(60)]
    assert statuses == [200] * 60
    assert client.sent.count(URLS[1]) == 5


async def test_ejected_member_is_skipped_and_all_ejected_is_503() -> None:
    """Health-ejected members get no calls; with none left the pool answers 503."""
    client = ScriptedClient()
    pool = make_pool(client, health=HealthSettings())
    pool.members[0].healthy = False
    for _ in range(4):
        await send(pool)
    assert URLS[0] not in client.sent
    for member in pool.members:
        member.healthy = False
    with pytest.raises(ServiceUnavailable) as caught:
        await send(pool)
    assert not isinstance(caught.value, CircuitOpen)


def test_health_streaks_eject_and_readmit() -> None:
    """3 failures in a row eject a member, 2 passes in a row bring it back."""
    pool = make_pool(ScriptedClient(), health=HealthSettings(unhealthy=3, healthy=2))
    checker = HealthChecker(pool, pool.settings.health)  # type: ignore[arg-type]
    member = pool.members[0]
    for passed in (False, False, True, False, False):
        checker.observe(member, passed)
    assert member.healthy
    checker.observe(member, False)
    assert not member.healthy
    checker.observe(member, True)
    assert not member.healthy
    checker.observe(member, True)
    assert member.healthy
    assert checker.ejections == 1


async def test_hash_pool_sends_a_key_to_its_ring_owner_and_names_it() -> None:
    """balance = "hash": one key always reaches one member; X-Shard names it."""
    client = ScriptedClient()
    pool = make_pool(client, balance="hash")
    replies = [await send(pool, key="user-42") for _ in range(5)]
    assert len(set(client.sent)) == 1
    assert pool.snapshot()["rerouted"] == 0
    owner = pool.members[pool.ring.lookup("user-42")]  # type: ignore[union-attr]
    assert client.sent[0] == owner.url
    assert {r.headers["X-Shard"] for r in replies} == {owner.name}


async def test_hash_pool_passes_an_open_owners_keys_to_the_next_member() -> None:
    """A key whose owner is open goes to the next member on the ring, consistently."""
    client = ScriptedClient()
    pool = make_pool(client, balance="hash")
    guard_pool(pool, BreakerSettings())
    owner = pool.ring.lookup("k")  # type: ignore[union-attr]
    pool.members[owner].circuit.open_for(pool_now(), 60, 0)  # type: ignore[union-attr]
    await send(pool, key="k")
    fallback = list(pool.ring.walk("k"))[1]  # type: ignore[union-attr]
    assert client.sent == [pool.members[fallback].url]
    assert pool.snapshot()["rerouted"] == 1


async def test_bounded_load_moves_keys_off_a_busy_owner() -> None:
    """With load_factor, a key whose owner carries more than its share goes elsewhere."""
    client = ScriptedClient()
    pool = make_pool(client, balance="hash", load_factor=1.25)
    owner = pool.ring.lookup("k")  # type: ignore[union-attr]
    pool.members[owner].in_flight = 10
    await send(pool, key="k")
    assert client.sent[0] != pool.members[owner].url
    assert pool.snapshot()["rerouted"] == 1


async def test_least_conn_spreads_an_open_members_share_by_load() -> None:
    """least_conn with an idle but open member: calls go to the least busy of the others."""
    client = ScriptedClient()
    pool = make_pool(client, balance="least_conn")
    guard_pool(pool, BreakerSettings())
    pool.members[0].circuit.open_for(pool_now(), 60, 0)  # type: ignore[union-attr]
    pool.members[1].in_flight = 5
    await send(pool)
    assert client.sent == [URLS[2]]
