"""The ratelimit plugin in a real node app (aiohttp TestServer), on Redis and embedded."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis
from aiohttp.test_utils import TestClient
from multidict import CIMultiDict
from redis.exceptions import RedisError
from testkit.node_server import NodeServer

from node.app import STATS, build_app
from node.call import Call, Reply
from node.cluster.redis import RedisConnection
from node.cluster.registry import NodeRegistry
from node.wire import header_items
from plugins.ratelimit.one_limit import OneLimitRateLimiter

from .ratelimit_helpers import (
    REDIS_URL,
    avoid_window_edge,
    delete_scope,
    end_task,
    forget_api_keys,
    get,
    metric,
    rl_settings,
    statuses,
    stop_heartbeat,
    unique,
)

STORES = ["redis", "embedded"]
TOKEN = "s3cret-admin-token"


class Nodes:
    """Starts nodes; remembers their scopes and admin-assigned API keys for clean-up."""

    def __init__(self) -> None:
        self.clients: list[TestClient] = []
        self.scopes: list[str] = []
        self.api_keys: list[str] = []
        self.redis: Any = None

    async def start(
        self, ratelimit: dict[str, Any], store: str = "embedded", node: dict | None = None
    ) -> TestClient:
        table = {"scope": unique("scope"), **ratelimit}
        if store == "redis":
            await self.connect()
            self.scopes.append(table["scope"])
        url = REDIS_URL if store == "redis" else ""
        settings = rl_settings(table, name=unique("node"), redis=url, node=node)
        client = TestClient(NodeServer(build_app(settings, "all"), host="127.0.0.1"))
        self.clients.append(client)
        await client.start_server()
        await avoid_window_edge(60)
        return client

    async def connect(self) -> None:
        """The test's own Redis client; a missing Redis fails the test, never skips it."""
        if self.redis is not None:
            return
        self.redis = aioredis.from_url(REDIS_URL, socket_connect_timeout=2)
        try:
            await self.redis.ping()
        except (RedisError, OSError) as exc:
            await self.redis.aclose()
            self.redis = None
            pytest.fail(f"these tests need Redis at {REDIS_URL}: {exc!r}")

    async def close(self) -> None:
        for client in self.clients:
            if client.server.app is not None:
                await stop_heartbeat(client)
            await client.close()
        if self.redis is not None:
            for scope in self.scopes:
                await delete_scope(self.redis, scope)
            await forget_api_keys(self.redis, self.api_keys)
            await self.redis.aclose()


@pytest.fixture
async def nodes() -> AsyncIterator[Nodes]:
    made = Nodes()
    yield made
    await made.close()


def tiers_table(pro_key: str, **extra: Any) -> dict[str, Any]:
    return {
        "key": "header:X-API-Key",
        "tiers": {"free": {"limit": 1, "window": 60}, "pro": {"limit": 3, "window": 60}},
        "api_keys": {pro_key: "pro"},
        **extra,
    }


@pytest.mark.parametrize("store", STORES)
async def test_allowed_reply_carries_ratelimit_headers(nodes: Nodes, store: str) -> None:
    """An allowed reply reports the limit, what remains and the seconds to the reset."""
    client = await nodes.start({"limit": 5, "window": 60}, store)
    status, headers, _ = await get(client)
    assert status == 200
    assert headers["RateLimit-Limit"] == "5"
    assert headers["RateLimit-Remaining"] == "4"
    assert 1 <= int(headers["RateLimit-Reset"]) <= 60
    assert "Retry-After" not in headers


@pytest.mark.parametrize("store", STORES)
async def test_bound_step_and_general_path_count_in_one_state(nodes: Nodes, store: str) -> None:
    """A one-limit route runs the plugin's bound step; its general path (`plugin(call, next)`)
    decides the same in the same state: alternating the two, Remaining falls one a time."""
    client = await nodes.start({"limit": 10, "window": 60}, store)
    plugin = next(p for _, p in client.server.app[STATS].plugins if p.name == "ratelimit")
    assert isinstance(plugin, OneLimitRateLimiter)

    async def target(call: Call) -> Reply:
        return Reply.text("ok")

    remaining = []
    for i in range(6):
        if i % 2:
            call = Call("GET", client="127.0.0.1")
            await plugin(call, target)
            assert call.added_headers is not None  # the adapter adds them to the reply
            remaining.append(dict(header_items(call.added_headers[1]))["RateLimit-Remaining"])
        else:
            remaining.append((await get(client))[1]["RateLimit-Remaining"])
    assert remaining == ["9", "8", "7", "6", "5", "4"]


@pytest.mark.parametrize("store", STORES)
async def test_rejected_reply_is_429_json_with_retry_after(nodes: Nodes, store: str) -> None:
    """Over the limit: 429, JSON rate_limited, Retry-After and RateLimit-Remaining 0."""
    client = await nodes.start({"limit": 2, "window": 60}, store)
    assert await statuses(client, 2) == [200, 200]
    status, headers, body = await get(client)
    assert status == 429
    assert headers["Content-Type"].startswith("application/json")
    assert body["error"] == "rate_limited"
    assert headers["RateLimit-Limit"] == "2"
    assert headers["RateLimit-Remaining"] == "0"
    assert 1 <= int(headers["Retry-After"]) <= 61  # the window end, plus 1 µs


async def test_custom_status_replaces_429(nodes: Nodes) -> None:
    """`status = 503` answers over-limit requests with 503, still JSON rate_limited."""
    client = await nodes.start({"limit": 1, "window": 60, "status": 503}, "redis")
    status, headers, body = (await get(client), await get(client))[1]
    assert (status, body["error"]) == (503, "rate_limited")
    assert "Retry-After" in headers


@pytest.mark.parametrize("store", STORES)
async def test_dry_run_never_rejects_but_counts(nodes: Nodes, store: str) -> None:
    """dry_run lets every request through and counts the would-be rejections."""
    client = await nodes.start({"limit": 2, "window": 60, "dry_run": True}, store)
    assert await statuses(client, 5) == [200] * 5
    assert await metric(client, "scalenode_ratelimit_dry_run_total") == 3
    assert await metric(client, "scalenode_ratelimit_limited_total") == 0


@pytest.mark.parametrize("store", STORES)
async def test_metrics_count_allowed_and_limited(nodes: Nodes, store: str) -> None:
    """/metrics counts allowed and limited requests per route."""
    client = await nodes.start({"limit": 2, "window": 60}, store)
    assert await statuses(client, 5) == [200, 200, 429, 429, 429]
    assert await metric(client, "scalenode_ratelimit_allowed_total") == 2
    assert await metric(client, "scalenode_ratelimit_limited_total") == 3


async def test_ip_key_ignores_forwarded_for_from_untrusted_peer(nodes: Nodes) -> None:
    """Without trusted proxies X-Forwarded-For is ignored: the peer address is the key."""
    client = await nodes.start({"limit": 1, "window": 60, "key": "ip"}, "redis")
    assert (await get(client, {"X-Forwarded-For": "1.1.1.1"}))[0] == 200
    assert (await get(client, {"X-Forwarded-For": "2.2.2.2"}))[0] == 429


async def test_ip_key_is_rightmost_untrusted_hop(nodes: Nodes) -> None:
    """From a trusted proxy, the right-most X-Forwarded-For hop that is not trusted is the key."""
    trusted = {"trusted_proxies": ["127.0.0.1/32", "10.0.0.0/8"]}
    client = await nodes.start({"limit": 1, "window": 60, "key": "ip"}, "redis", trusted)
    chains = ["9.9.9.9, 2.2.2.2", "8.8.8.8, 2.2.2.2", "2.2.2.2, 10.1.1.1", "2.2.2.2, 3.3.3.3"]
    got = [(await get(client, {"X-Forwarded-For": chain}))[0] for chain in chains]
    assert got == [200, 429, 429, 200]


async def test_a_forged_forwarded_for_line_does_not_change_the_client(nodes: Nodes) -> None:
    """Two X-Forwarded-For lines, a forged one first (what HAProxy's option forwardfor
    leaves when the client sent its own): the balancer's hop is still the client, so ten
    requests with ten forged addresses pass a limit of five only five times."""
    trusted = {"trusted_proxies": ["127.0.0.1/32"]}
    client = await nodes.start({"limit": 5, "window": 60, "key": "ip"}, "redis", trusted)
    got = []
    for i in range(10):
        lines = CIMultiDict([("X-Forwarded-For", f"6.6.6.{i}"), ("X-Forwarded-For", "2.2.2.2")])
        got.append((await get(client, lines))[0])
    assert got == [200] * 5 + [429] * 5


async def test_header_key_separates_clients(nodes: Nodes) -> None:
    """key = header:NAME counts each header value apart."""
    client = await nodes.start({"limit": 1, "window": 60, "key": "header:X-API-Key"}, "redis")
    got = [(await get(client, {"X-API-Key": k}))[0] for k in ("a", "a", "b")]
    assert got == [200, 429, 200]


async def test_missing_header_falls_back_to_client_address(nodes: Nodes) -> None:
    """No key header: the client's address is the key (apart from a header of the same text)."""
    trusted = {"trusted_proxies": ["127.0.0.1/32"]}
    rl = {"limit": 1, "window": 60, "key": "header:X-API-Key"}
    client = await nodes.start(rl, "redis", trusted)
    sent = [
        {"X-Forwarded-For": "1.1.1.1"},
        {"X-Forwarded-For": "1.1.1.1"},
        {"X-Forwarded-For": "2.2.2.2"},
        {"X-Forwarded-For": "1.1.1.1", "X-API-Key": "1.1.1.1"},
    ]
    assert [(await get(client, h))[0] for h in sent] == [200, 429, 200, 200]


async def test_global_key_shares_one_counter(nodes: Nodes) -> None:
    """key = global: every client draws on one counter."""
    trusted = {"trusted_proxies": ["127.0.0.1/32"]}
    client = await nodes.start({"limit": 2, "window": 60, "key": "global"}, "redis", trusted)
    sent = [{"X-Forwarded-For": f"1.1.1.{i}", "X-API-Key": str(i)} for i in range(3)]
    assert [(await get(client, h))[0] for h in sent] == [200, 200, 429]


async def test_key_list_combines_its_parts(nodes: Nodes) -> None:
    """key = [header, ip]: the same API key from two addresses counts as two clients."""
    trusted = {"trusted_proxies": ["127.0.0.1/32"]}
    rl = {"limit": 1, "window": 60, "key": ["header:X-API-Key", "ip"]}
    client = await nodes.start(rl, "redis", trusted)
    sent = [("k", "1.1.1.1"), ("k", "1.1.1.1"), ("k", "2.2.2.2"), ("j", "1.1.1.1")]
    got = [(await get(client, {"X-API-Key": k, "X-Forwarded-For": ip}))[0] for k, ip in sent]
    assert got == [200, 429, 200, 200]


async def test_overlong_key_header_is_400_json(nodes: Nodes) -> None:
    """A key header over 256 characters is a 400 JSON key_too_long; 256 is fine."""
    client = await nodes.start({"limit": 5, "window": 60, "key": "header:X-API-Key"}, "redis")
    status, _, body = await get(client, {"X-API-Key": "k" * 257})
    assert (status, body["error"]) == (400, "key_too_long")
    assert (await get(client, {"X-API-Key": "k" * 256}))[0] == 200


@pytest.mark.parametrize("store", STORES)
async def test_config_api_key_gets_its_tier(nodes: Nodes, store: str) -> None:
    """An API key listed in api_keys is limited by its tier's limits."""
    pro = unique("pro")
    client = await nodes.start(tiers_table(pro, default_tier="free"), store)
    status, headers, _ = await get(client, {"X-API-Key": pro})
    assert (status, headers["RateLimit-Limit"]) == (200, "3")
    assert await statuses(client, 3, {"X-API-Key": pro}) == [200, 200, 429]


@pytest.mark.parametrize("store", STORES)
async def test_unknown_api_key_gets_default_tier(nodes: Nodes, store: str) -> None:
    """An API key no tier lists is limited by default_tier."""
    client = await nodes.start(tiers_table(unique("pro"), default_tier="free"), store)
    status, headers, _ = await get(client, {"X-API-Key": unique("stranger")})
    assert (status, headers["RateLimit-Limit"]) == (200, "1")


@pytest.mark.parametrize("api_key", [None, "unknown-key"])
async def test_require_key_rejects_missing_or_unknown_key_with_401(
    nodes: Nodes, api_key: str | None
) -> None:
    """require_key: a missing or unknown API key is a 401 JSON unauthorized."""
    client = await nodes.start(tiers_table(unique("pro"), require_key=True), "redis")
    status, headers, body = await get(client, {"X-API-Key": api_key} if api_key else {})
    assert (status, body["error"]) == (401, "unauthorized")
    assert headers["Content-Type"].startswith("application/json")


@pytest.mark.parametrize("store", STORES)
async def test_admin_put_assigns_tier_without_restart(nodes: Nodes, store: str) -> None:
    """PUT /admin/ratelimit/keys moves an API key to another tier on the running node."""
    client = await nodes.start(tiers_table(unique("pro"), default_tier="free"), store)
    api_key = unique("promoted")
    nodes.api_keys.append(api_key)
    assert (await get(client, {"X-API-Key": api_key}))[1]["RateLimit-Limit"] == "1"
    async with client.put("/admin/ratelimit/keys", json={"key": api_key, "tier": "pro"}) as resp:
        assert resp.status == 200, await resp.text()
        assert (await resp.json())["tier"] == "pro"
    status, headers, _ = await get(client, {"X-API-Key": api_key})
    assert (status, headers["RateLimit-Limit"]) == (200, "3")


async def test_admin_token_is_required_when_set(nodes: Nodes) -> None:
    """With node.admin_token, the admin PUT is 401 without the bearer and 200 with it."""
    table = tiers_table(unique("pro"), default_tier="free")
    client = await nodes.start(table, "redis", {"admin_token": TOKEN})
    api_key = unique("admin")
    nodes.api_keys.append(api_key)
    body = {"key": api_key, "tier": "pro"}
    async with client.put("/admin/ratelimit/keys", json=body) as resp:
        assert resp.status == 401
        assert (await resp.json())["error"] == "unauthorized"
    auth = {"Authorization": f"Bearer {TOKEN}"}
    async with client.put("/admin/ratelimit/keys", json=body, headers=auth) as resp:
        assert resp.status == 200, await resp.text()


async def test_admin_put_rejects_unknown_tier(nodes: Nodes) -> None:
    """PUT /admin/ratelimit/keys with a tier no route defines is a 400 JSON."""
    client = await nodes.start(tiers_table(unique("pro"), default_tier="free"), "redis")
    body = {"key": unique("k"), "tier": "platinum"}
    async with client.put("/admin/ratelimit/keys", json=body) as resp:
        assert resp.status == 400
        assert (await resp.json())["error"] == "bad_request"


@pytest.mark.parametrize("store", STORES)
async def test_tightest_of_several_limits_is_reported(nodes: Nodes, store: str) -> None:
    """With several limits the headers show the one with the fewest requests remaining."""
    limits = [{"limit": 10, "window": 60}, {"limit": 3, "window": 1}]
    client = await nodes.start({"limits": limits}, store)
    await avoid_window_edge(1, margin=0.4)
    replies = [await get(client) for _ in range(4)]
    assert [r[0] for r in replies] == [200, 200, 200, 429]
    assert [r[1]["RateLimit-Limit"] for r in replies] == ["3"] * 4
    assert [r[1]["RateLimit-Remaining"] for r in replies] == ["2", "1", "0", "0"]
    assert replies[3][1]["Retry-After"] == "1"


@pytest.mark.parametrize("store", STORES)
async def test_token_bucket_allows_burst_then_one_per_interval(nodes: Nodes, store: str) -> None:
    """token_bucket with burst 3 of 10 per 60 s: 3 at once, then wait 6 s for the next."""
    rl = {"limit": 10, "window": 60, "burst": 3, "algorithm": "token_bucket"}
    client = await nodes.start(rl, store)
    replies = [await get(client) for _ in range(4)]
    assert [r[0] for r in replies] == [200, 200, 200, 429]
    assert replies[3][1]["Retry-After"] == "6"


@pytest.mark.parametrize("store", STORES)
async def test_concurrent_requests_never_exceed_limit(nodes: Nodes, store: str) -> None:
    """100 concurrent requests for one key: exactly the limit (20) pass, the rest get 429."""
    client = await nodes.start({"limit": 20, "window": 60, "key": "global"}, store)
    got = await asyncio.gather(*(get(client) for _ in range(100)))
    assert Counter(status for status, _, _ in got) == {200: 20, 429: 80}


async def test_registry_stop_ends_a_heartbeat_in_flight(nodes: Nodes) -> None:
    """NodeRegistry.stop() returns even when it lands during a heartbeat (20 tries)."""
    await nodes.connect()
    connection = RedisConnection(REDIS_URL)
    hung = 0
    try:
        for i in range(20):
            registry = NodeRegistry(unique("stop-probe"), "all", "-", connection, interval=0.001)
            await registry.start()
            await asyncio.sleep(0.0005 * (i % 5))
            stopping = asyncio.ensure_future(registry.stop())
            done, _ = await asyncio.wait({stopping}, timeout=0.5)
            if not done:
                hung += 1
                await end_task(registry._task)  # unstick it so this test ends cleanly
                await stopping
    finally:
        await connection.close()
    assert hung == 0, f"NodeRegistry.stop() hung {hung} of 20 times"
